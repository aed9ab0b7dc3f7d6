"""Image headers: the format sniffed from the first bytes, the size, and structural checks
(truncation, layouts OpenCV would misread), all before anything is decoded.

Truncation is detected structurally, because libjpeg only warns and fills the rest with grey
(OpenCV returns that image from ``imread``): a PNG must reach its IEND chunk, a JPEG its
end-of-image marker (marker segments and entropy-coded scans are walked, so the marker of an EXIF
thumbnail does not count), a TIFF's strips or tiles must lie inside the file, a WebP must be as
long as its RIFF header says and an uncompressed BMP as long as its rows need.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Header:
    format: str
    width: int
    height: int
    gray_source: bool = False  # a gray PNG that OpenCV expands to BGRA when it has alpha
    premultiplied: bool = False  # colour stored multiplied by alpha (TIFF associated alpha)
    patch: tuple[int, bytes] | None = None  # (offset, bytes) to overwrite before decoding


class HeaderProblem(Exception):
    """A header problem; ``read_image`` prefixes the file name."""


def sniff(data: bytes) -> str | None:
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM":
        return "BMP"
    return None


def _png_header(data: bytes) -> Header:
    pos, size = len(PNG_SIGNATURE), len(data)
    header = None
    while True:
        if pos + 12 > size:
            raise HeaderProblem("truncated PNG file (it ends before the IEND chunk)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > size:
            raise HeaderProblem("truncated PNG file (it ends before the IEND chunk)")
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise HeaderProblem("corrupt PNG file (it does not start with an IHDR chunk)")
            width, height, depth, color = struct.unpack_from(">IIBB", data, pos + 8)
            if depth not in (1, 2, 4, 8, 16) or color not in (0, 2, 3, 4, 6):
                raise HeaderProblem(f"corrupt PNG file (bit depth {depth}, colour type {color})")
            header = Header("PNG", width, height, gray_source=color in (0, 4))
        if kind == b"IEND":
            return header
        pos = end


# SOFn markers (baseline, extended, progressive, lossless; Huffman or arithmetic); C4, C8, CC are not.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_TRUNCATED_JPEG = "truncated JPEG file (no end-of-image marker)"


def _skip_scan(data: bytes, pos: int) -> int:
    """Position of the first marker after the entropy-coded data starting at ``pos``.

    In scan data 0xFF is followed by 0x00 (a stuffed byte) or 0xD0-0xD7 (a restart marker);
    anything else starts the next marker.
    """
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise HeaderProblem(_TRUNCATED_JPEG)
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
            continue
        return pos


def _jpeg_header(data: bytes) -> Header:
    pos, size = 2, len(data)
    header = None
    while True:
        if pos >= size:
            raise HeaderProblem(_TRUNCATED_JPEG)
        if data[pos] != 0xFF:
            raise HeaderProblem(f"corrupt JPEG file (no marker at byte {pos})")
        while pos < size and data[pos] == 0xFF:  # 0xFF fill bytes may precede a marker
            pos += 1
        if pos >= size:
            raise HeaderProblem(_TRUNCATED_JPEG)
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            if header is None:
                raise HeaderProblem("corrupt JPEG file (no frame header)")
            return header
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # parameterless
            continue
        if pos + 2 > size:
            raise HeaderProblem(_TRUNCATED_JPEG)
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise HeaderProblem("corrupt JPEG file (bad segment length)")
        if pos + length > size:
            raise HeaderProblem(_TRUNCATED_JPEG)
        if marker in _JPEG_SOF and header is None:
            precision, height, width = struct.unpack_from(">BHH", data, pos + 2)
            if precision != 8:
                raise HeaderProblem(f"{precision}-bit JPEG is not supported (only 8-bit)")
            if height == 0:
                raise HeaderProblem("JPEG with the height in a DNL marker is not supported")
            header = Header("JPEG", width, height)
        pos += length
        if marker == 0xDA:
            if header is None:
                raise HeaderProblem("corrupt JPEG file (scan before the frame header)")
            pos = _skip_scan(data, pos)


# TIFF field type -> struct code.
_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}
_TIFF_TAGS = frozenset({256, 257, 258, 262, 273, 277, 279, 284, 324, 325, 338, 339})
_TIFF_PHOTOMETRIC = {0: "gray", 1: "gray", 2: "RGB", 3: "palette", 6: "YCbCr"}
_TRUNCATED_TIFF = "truncated TIFF file (image data runs past the end of the file)"


def _tiff_tags(data: bytes) -> tuple[str, dict[int, tuple[int, ...]], dict[int, int]]:
    """The byte order, the values of the tags in :data:`_TIFF_TAGS` from the first IFD, and the
    file offset of each value (classic and BigTIFF)."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    offset_code, count_code = ("Q", "Q") if big else ("I", "H")
    entry_size, inline = (20, 8) if big else (12, 4)
    size = len(data)
    try:
        (ifd,) = struct.unpack_from(order + offset_code, data, 8 if big else 4)
        (entries,) = struct.unpack_from(order + count_code, data, ifd)
        first = ifd + struct.calcsize(count_code)
        if first + entries * entry_size > size:
            raise HeaderProblem(_TRUNCATED_TIFF)
        tags: dict[int, tuple[int, ...]] = {}
        where_is: dict[int, int] = {}
        for k in range(entries):
            e = first + k * entry_size
            tag, kind = struct.unpack_from(order + "HH", data, e)
            if tag not in _TIFF_TAGS or kind not in _TIFF_TYPES:
                continue
            (count,) = struct.unpack_from(order + offset_code, data, e + 4)
            nbytes = count * struct.calcsize(_TIFF_TYPES[kind])
            where = e + 4 + inline
            if nbytes > inline:
                (where,) = struct.unpack_from(order + offset_code, data, where)
            if where + nbytes > size:
                raise HeaderProblem(_TRUNCATED_TIFF)
            tags[tag] = struct.unpack_from(f"{order}{count}{_TIFF_TYPES[kind]}", data, where)
            where_is[tag] = where
    except struct.error:
        raise HeaderProblem(_TRUNCATED_TIFF) from None
    return order, tags, where_is


def _tiff_header(data: bytes) -> Header:
    order, tags, where_is = _tiff_tags(data)
    size = len(data)
    if 256 not in tags or 257 not in tags:
        raise HeaderProblem("corrupt TIFF file (no image width or height)")
    bits = tags.get(258, (1,))
    sample_format = set(tags.get(339, (1,)))
    if sample_format != {1}:
        kind = {2: "signed integer", 3: "floating-point"}.get(max(sample_format), "unknown-format")
        raise HeaderProblem(f"{bits[0]}-bit {kind} TIFF samples are not supported (only 8 and 16-bit unsigned integers)")
    if len(set(bits)) != 1 or bits[0] not in (1, 8, 16):
        raise HeaderProblem(f"{bits[0]}-bit TIFF samples are not supported (only 1, 8 and 16-bit)")
    spp = tags.get(277, (1,))[0]
    photometric = tags.get(262, (1 if spp == 1 else 2,))[0]
    if photometric not in _TIFF_PHOTOMETRIC:
        raise HeaderProblem(f"TIFF photometric interpretation {photometric} (e.g. CMYK or Lab) is not supported")
    if spp == 2:
        raise HeaderProblem("gray+alpha TIFF is not supported (OpenCV misreads it); save it as PNG")
    if spp not in (1, 3, 4):
        raise HeaderProblem(f"TIFF with {spp} samples per pixel is not supported")
    if spp > 1 and bits[0] == 16 and tags.get(284, (1,))[0] == 2:
        raise HeaderProblem("16-bit TIFF with separate colour planes is not supported (OpenCV misreads it)")
    offsets = tags.get(273) or tags.get(324)
    counts = tags.get(279) or tags.get(325)
    if not offsets or not counts or len(offsets) != len(counts):
        raise HeaderProblem("corrupt TIFF file (no strip or tile table)")
    if max(o + c for o, c in zip(offsets, counts, strict=True)) > size:
        raise HeaderProblem(_TRUNCATED_TIFF)
    header = Header("TIFF", tags[256][0], tags[257][0])
    extra = tags.get(338, ())
    if spp == 4 and extra in ((1,), (2,)):
        header.premultiplied = extra == (1,)
        # Tagged associated, libtiff passes the samples through instead of premultiplying them.
        header.patch = (where_is[338], struct.pack(order + "H", 1))
    return header


def _webp_header(data: bytes) -> Header:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if len(data) < 8 + riff_size or len(data) < 30:
        raise HeaderProblem("truncated WebP file (shorter than its RIFF header says)")
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif chunk == b"VP8L":
        if data[20] != 0x2F:
            raise HeaderProblem("corrupt WebP file (bad lossless signature)")
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderProblem("corrupt WebP file (bad lossy frame start code)")
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    else:
        raise HeaderProblem(f"corrupt WebP file (unknown first chunk {chunk!r})")
    return Header("WebP", width, height)


def _bmp_header(data: bytes) -> Header:
    (pixel_offset, info_size) = struct.unpack_from("<II", data, 10)
    if info_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    else:
        width, height, _, bpp, compression = struct.unpack_from("<iiHHI", data, 18)
    height = abs(height)  # negative: rows stored top-down
    if compression in (0, 3) and bpp in (1, 4, 8, 16, 24, 32):  # uncompressed: the size is known
        row_bytes = (width * bpp + 31) // 32 * 4
        if len(data) < pixel_offset + row_bytes * height:
            raise HeaderProblem("truncated BMP file (shorter than its rows need)")
    return Header("BMP", width, height)


HEADER_PARSERS = {"PNG": _png_header, "JPEG": _jpeg_header, "TIFF": _tiff_header, "WebP": _webp_header,
                   "BMP": _bmp_header}
