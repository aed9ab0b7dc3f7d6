"""Image files in and out, the RGB model boundary, and input/pair discovery for ``tlc restore``/``eval``.

Decoding and encoding are OpenCV's (``opencv-python-headless``: libpng, libjpeg-turbo, libtiff and
libwebp, with 16-bit PNG and TIFF kept whole, which Pillow cannot do for RGB). Around it this module
adds what OpenCV leaves out, so that a bad file is an :class:`ImageError` with a one-line message
naming it, never a ``None``, a library traceback or a silently wrong image:

- The format is sniffed from the first bytes (not the suffix) and the header is parsed here, so
  the pixel limit (:data:`DEFAULT_MAX_PIXELS`, against decompression bombs) is checked before
  anything is decoded, and layouts OpenCV would misread (float, signed or 12-bit samples,
  gray+alpha, CMYK or 16-bit planar TIFF) are refused by name.
- Truncation is detected structurally, because libjpeg only warns and fills the rest with grey
  (OpenCV returns that image from ``imread``): a PNG must reach its IEND chunk, a JPEG its
  end-of-image marker (marker segments and entropy-coded scans are walked, so the marker of an
  EXIF thumbnail does not count), a TIFF's strips or tiles must lie inside the file, a WebP must
  be as long as its RIFF header says and an uncompressed BMP as long as its rows need. libpng,
  libtiff and libwebp fail on short data as well.
- TIFF alpha keeps its stored values: straight (unassociated) alpha is handed to libtiff tagged
  as associated, because its RGBA interface, which OpenCV uses for 8-bit samples, would otherwise
  premultiply the colour; truly associated alpha is divided out, so ``pixels`` is always straight.

Pixels are float32 in [0, 1]: ``uint8 / 255`` or ``uint16 / 65535``; writing rounds
``clamp(x, 0, 1) * 255`` (or 65535) half to even, so 8 and 16-bit PNG/TIFF round trips are exact.
Channels are RGB order throughout (OpenCV's BGR is swapped at the boundary). JPEG EXIF orientation
is applied, as viewers show the photo; other formats are returned as stored.
"""

from __future__ import annotations

import glob
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from ._util import exists_error, one_line, write_atomically

Mode = Literal["gray", "rgb", "gray+alpha", "rgba"]
PathLike = str | os.PathLike

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "MAX_PIXELS_ENV",
    "Image",
    "ImageError",
    "PairedSet",
    "collect_inputs",
    "find_pairs",
    "from_model_output",
    "read_image",
    "to_model_input",
    "write_image",
]

DEFAULT_MAX_PIXELS = 200_000_000
MAX_PIXELS_ENV = "TLC_MAX_PIXELS"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"})
# (input folder, target folder) names of paired datasets, in the order they are tried.
LAYOUTS: tuple[tuple[str, str], ...] = (("input", "target"), ("blur", "sharp"), ("lq", "gt"))

_WRITE_FORMATS = {
    ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP", ".bmp": "BMP"
}
_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
_JPEG_QUALITY = 95
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_LISTED = 10


class ImageError(ValueError):
    """An image file that cannot be read, written or paired as asked; the message is one line naming it."""


@dataclass(frozen=True, eq=False)
class Image:
    """A decoded image.

    Attributes:
        pixels: (H, W, C) float32 in [0, 1], C = 1 (gray) or 3 (RGB).
        alpha: (H, W) float32 in [0, 1] (1 = opaque), or None.
        bit_depth: 8 or 16, the sample depth of the file (1, 2 and 4-bit PNGs are read as 8).
        mode: "gray", "rgb", "gray+alpha" or "rgba".
        path: the file it was read from.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    mode: Mode
    path: Path | None = None

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


@dataclass
class PairedSet:
    """Input/target pairs found by :func:`find_pairs`.

    Attributes:
        pairs: (name, input path, target path), sorted by name; the name is the file stem, or
            "scene/stem" in the nested layout.
        layout: the folder layout found, e.g. "input/target" or "*/blur/sharp" (nested scenes).
        unmatched_inputs: input files with no target of the same stem.
        unmatched_targets: target files with no input of the same stem.
    """

    pairs: list[tuple[str, Path, Path]]
    layout: str
    unmatched_inputs: list[Path] = field(default_factory=list)
    unmatched_targets: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)


# ----------------------------------------------------------------------------------------------
# Headers: format, size and structural checks, before anything is decoded


@dataclass
class _Header:
    format: str
    width: int
    height: int
    gray_source: bool = False  # a gray PNG that OpenCV expands to BGRA when it has alpha
    premultiplied: bool = False  # colour stored multiplied by alpha (TIFF associated alpha)
    patch: tuple[int, bytes] | None = None  # (offset, bytes) to overwrite before decoding


class _Bad(Exception):
    """A header problem; ``read_image`` prefixes the file name."""


def _sniff(data: bytes) -> str | None:
    if data.startswith(_PNG_SIGNATURE):
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


def _png_header(data: bytes) -> _Header:
    pos, size = len(_PNG_SIGNATURE), len(data)
    header = None
    while True:
        if pos + 12 > size:
            raise _Bad("truncated PNG file (it ends before the IEND chunk)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > size:
            raise _Bad("truncated PNG file (it ends before the IEND chunk)")
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise _Bad("corrupt PNG file (it does not start with an IHDR chunk)")
            width, height, depth, color = struct.unpack_from(">IIBB", data, pos + 8)
            if depth not in (1, 2, 4, 8, 16) or color not in (0, 2, 3, 4, 6):
                raise _Bad(f"corrupt PNG file (bit depth {depth}, colour type {color})")
            header = _Header("PNG", width, height, gray_source=color in (0, 4))
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
            raise _Bad(_TRUNCATED_JPEG)
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
            continue
        return pos


def _jpeg_header(data: bytes) -> _Header:
    pos, size = 2, len(data)
    header = None
    while True:
        if pos >= size:
            raise _Bad(_TRUNCATED_JPEG)
        if data[pos] != 0xFF:
            raise _Bad(f"corrupt JPEG file (no marker at byte {pos})")
        while pos < size and data[pos] == 0xFF:  # 0xFF fill bytes may precede a marker
            pos += 1
        if pos >= size:
            raise _Bad(_TRUNCATED_JPEG)
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            if header is None:
                raise _Bad("corrupt JPEG file (no frame header)")
            return header
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # parameterless
            continue
        if pos + 2 > size:
            raise _Bad(_TRUNCATED_JPEG)
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise _Bad("corrupt JPEG file (bad segment length)")
        if pos + length > size:
            raise _Bad(_TRUNCATED_JPEG)
        if marker in _JPEG_SOF and header is None:
            precision, height, width = struct.unpack_from(">BHH", data, pos + 2)
            if precision != 8:
                raise _Bad(f"{precision}-bit JPEG is not supported (only 8-bit)")
            if height == 0:
                raise _Bad("JPEG with the height in a DNL marker is not supported")
            header = _Header("JPEG", width, height)
        pos += length
        if marker == 0xDA:
            if header is None:
                raise _Bad("corrupt JPEG file (scan before the frame header)")
            pos = _skip_scan(data, pos)


# TIFF field type -> struct code.
_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}
_TIFF_TAGS = frozenset({256, 257, 258, 262, 273, 277, 279, 284, 324, 325, 338, 339})
_TIFF_PHOTOMETRIC = {0: "gray", 1: "gray", 2: "RGB", 3: "palette", 6: "YCbCr"}
_TRUNCATED_TIFF = "truncated TIFF file (image data runs past the end of the file)"


def _tiff_header(data: bytes) -> _Header:
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
            raise _Bad(_TRUNCATED_TIFF)
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
                raise _Bad(_TRUNCATED_TIFF)
            tags[tag] = struct.unpack_from(f"{order}{count}{_TIFF_TYPES[kind]}", data, where)
            where_is[tag] = where
    except struct.error:
        raise _Bad(_TRUNCATED_TIFF) from None
    if 256 not in tags or 257 not in tags:
        raise _Bad("corrupt TIFF file (no image width or height)")
    bits = tags.get(258, (1,))
    sample_format = set(tags.get(339, (1,)))
    if sample_format != {1}:
        kind = {2: "signed integer", 3: "floating-point"}.get(max(sample_format), "unknown-format")
        raise _Bad(f"{bits[0]}-bit {kind} TIFF samples are not supported (only 8 and 16-bit unsigned integers)")
    if len(set(bits)) != 1 or bits[0] not in (1, 8, 16):
        raise _Bad(f"{bits[0]}-bit TIFF samples are not supported (only 1, 8 and 16-bit)")
    spp = tags.get(277, (1,))[0]
    photometric = tags.get(262, (1 if spp == 1 else 2,))[0]
    if photometric not in _TIFF_PHOTOMETRIC:
        raise _Bad(f"TIFF photometric interpretation {photometric} (e.g. CMYK or Lab) is not supported")
    if spp == 2:
        raise _Bad("gray+alpha TIFF is not supported (OpenCV misreads it); save it as PNG")
    if spp not in (1, 3, 4):
        raise _Bad(f"TIFF with {spp} samples per pixel is not supported")
    if spp > 1 and bits[0] == 16 and tags.get(284, (1,))[0] == 2:
        raise _Bad("16-bit TIFF with separate colour planes is not supported (OpenCV misreads it)")
    offsets = tags.get(273) or tags.get(324)
    counts = tags.get(279) or tags.get(325)
    if not offsets or not counts or len(offsets) != len(counts):
        raise _Bad("corrupt TIFF file (no strip or tile table)")
    if max(o + c for o, c in zip(offsets, counts, strict=True)) > size:
        raise _Bad(_TRUNCATED_TIFF)
    header = _Header("TIFF", tags[256][0], tags[257][0])
    extra = tags.get(338, ())
    if spp == 4 and extra in ((1,), (2,)):
        header.premultiplied = extra == (1,)
        # Tagged associated, libtiff passes the samples through instead of premultiplying them.
        header.patch = (where_is[338], struct.pack(order + "H", 1))
    return header


def _webp_header(data: bytes) -> _Header:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if len(data) < 8 + riff_size or len(data) < 30:
        raise _Bad("truncated WebP file (shorter than its RIFF header says)")
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif chunk == b"VP8L":
        if data[20] != 0x2F:
            raise _Bad("corrupt WebP file (bad lossless signature)")
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _Bad("corrupt WebP file (bad lossy frame start code)")
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    else:
        raise _Bad(f"corrupt WebP file (unknown first chunk {chunk!r})")
    return _Header("WebP", width, height)


def _bmp_header(data: bytes) -> _Header:
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
            raise _Bad("truncated BMP file (shorter than its rows need)")
    return _Header("BMP", width, height)


_HEADER_PARSERS = {"PNG": _png_header, "JPEG": _jpeg_header, "TIFF": _tiff_header, "WebP": _webp_header,
                   "BMP": _bmp_header}


# ----------------------------------------------------------------------------------------------
# Reading


def _max_pixels(max_pixels: int | None) -> int:
    if max_pixels is not None:
        if max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {max_pixels}")
        return max_pixels
    value = os.environ.get(MAX_PIXELS_ENV)
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a number of pixels, got {value!r}") from None
    if limit <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV} must be positive, got {value!r}")
    return limit


# cv2.setLogLevel up to 4.10, cv2.utils.logging.setLogLevel since; level 0 is LOG_LEVEL_SILENT.
_CV_LOGGING = getattr(getattr(cv2, "utils", None), "logging", None) or cv2


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log lines: every failure is reported as an ImageError instead."""
    previous = _CV_LOGGING.getLogLevel()
    _CV_LOGGING.setLogLevel(0)
    try:
        yield
    finally:
        _CV_LOGGING.setLogLevel(previous)


def read_image(path: PathLike, *, max_pixels: int | None = None) -> Image:
    """Read a PNG, JPEG, TIFF, WebP or BMP file (the format is taken from the content).

    Args:
        path: the file.
        max_pixels: refuse images with more pixels than this (checked from the header, before
            decoding). Default: the ``TLC_MAX_PIXELS`` environment variable, else
            :data:`DEFAULT_MAX_PIXELS` (200 megapixels).

    Returns:
        An :class:`Image`: pixels (H, W, 1 or 3) float32 in [0, 1], alpha (H, W) or None.

    Raises:
        ImageError: missing file, a folder, empty, not an image, truncated or corrupt, an
            unsupported sample format (float, signed or 12-bit), or over the pixel limit.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a folder, not an image file")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise ImageError(f"{p}: cannot read it ({err.strerror or err})") from None
    if not data:
        raise ImageError(f"{p}: empty file (0 bytes)")
    fmt = _sniff(data)
    if fmt is None:
        raise ImageError(f"{p}: not a PNG, JPEG, TIFF, WebP or BMP image (unrecognised content)")
    try:
        header = _HEADER_PARSERS[fmt](data)
    except _Bad as err:
        raise ImageError(f"{p}: {err}") from None
    except (struct.error, IndexError):
        raise ImageError(f"{p}: truncated or corrupt {fmt} header") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageError(f"{p}: corrupt {fmt} file (size {header.width} x {header.height})")
    limit = _max_pixels(max_pixels)
    count = header.width * header.height
    if count > limit:
        raise ImageError(
            f"{p}: {header.width} x {header.height} = {count / 1e6:.1f} megapixels is over the limit of "
            f"{limit / 1e6:g} megapixels (a guard against decompression bombs); raise it with "
            f"read_image(..., max_pixels=N) or the {MAX_PIXELS_ENV} environment variable"
        )
    # JPEG has no alpha, so it can take the flags under which OpenCV applies EXIF orientation.
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if fmt == "JPEG" else cv2.IMREAD_UNCHANGED
    if header.patch is not None:
        at, replacement = header.patch
        data = data[:at] + replacement + data[at + len(replacement) :]
    try:
        with _quiet_opencv():
            decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
            if decoded is None and fmt == "TIFF" and header.patch is None:
                # OpenCV 4.13+ fails on uncompressed tiled 8-bit TIFF from memory, not from a file.
                decoded = cv2.imread(str(p), flags)
    except cv2.error as err:
        raise ImageError(f"{p}: cannot decode this {fmt} file ({one_line(err, last=True)})") from None
    if decoded is None:
        raise ImageError(f"{p}: corrupt or unsupported {fmt} file (the decoder failed)")
    return _to_image(decoded, header, p)


def _to_image(decoded: np.ndarray, header: _Header, path: Path) -> Image:
    """Normalise OpenCV's uint8/uint16 (H, W[, C]) BGR(A) array into an :class:`Image`."""
    shape = decoded.shape[:2]
    expected = (header.height, header.width)
    if shape != expected and not (header.format == "JPEG" and shape == expected[::-1]):
        raise ImageError(f"{path}: decoded size {shape[1]} x {shape[0]} differs from the header's "
                         f"{header.width} x {header.height}")
    if decoded.dtype == np.uint8:
        bit_depth, scale = 8, 255.0
    elif decoded.dtype == np.uint16:
        bit_depth, scale = 16, 65535.0
    else:
        raise ImageError(f"{path}: {decoded.dtype} samples are not supported (only 8 and 16-bit unsigned)")
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    channels = decoded.shape[2]
    alpha = None
    if channels == 1:
        color, mode = decoded, "gray"
    elif channels == 2:
        color, alpha, mode = decoded[:, :, :1], decoded[:, :, 1], "gray+alpha"
    elif channels == 3:
        color, mode = decoded[:, :, ::-1], "rgb"
    elif channels == 4 and header.gray_source:  # OpenCV expands gray+alpha PNG to B = G = R
        color, alpha, mode = decoded[:, :, :1], decoded[:, :, 3], "gray+alpha"
    elif channels == 4:
        color, alpha, mode = decoded[:, :, 2::-1], decoded[:, :, 3], "rgba"
    else:
        raise ImageError(f"{path}: {channels}-channel images are not supported")
    pixels = np.array(color, dtype=np.float32, order="C")
    pixels /= np.float32(scale)
    if alpha is not None:
        alpha = np.array(alpha, dtype=np.float32, order="C")
        alpha /= np.float32(scale)
        if header.premultiplied:
            with np.errstate(divide="ignore", invalid="ignore"):
                straight = np.where(alpha[:, :, None] > 0, pixels / alpha[:, :, None], 0.0)
            pixels = np.minimum(straight, 1.0).astype(np.float32)
    return Image(pixels=pixels, alpha=alpha, bit_depth=bit_depth, mode=mode, path=path)


# ----------------------------------------------------------------------------------------------
# Writing


def _as_hwc(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as (H, W, C) floating, C in (1, 3); rejects integer arrays (0..255 is not [0, 1])."""
    a = np.asarray(pixels)
    if a.dtype.kind != "f":
        raise TypeError(f"pixels must be a floating-point array in [0, 1], got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3) or 0 in a.shape[:2]:
        raise ValueError(f"pixels must be H x W x 3, H x W x 1 or H x W, got shape {a.shape}")
    return a


def _quantize(x: np.ndarray, bit_depth: int, name: str) -> np.ndarray:
    """round-half-to-even(clamp(x, 0, 1) * peak) as uint8/uint16, in float64 a band of rows at a time."""
    if np.isnan(x).any():
        raise ValueError(f"{name} contain NaN")
    peak, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    out = np.empty(x.shape, dtype=dtype)
    rows = max(1, (1 << 22) // max(1, x[0].size))
    for r in range(0, x.shape[0], rows):
        band = np.clip(x[r : r + rows], 0.0, 1.0, dtype=np.float64)
        out[r : r + rows] = np.rint(band * peak)
    return out


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode_png_gray_alpha(gray: np.ndarray, alpha: np.ndarray) -> bytes:
    """A gray+alpha PNG (colour type 4, 8 or 16-bit): OpenCV encodes 1, 3 or 4 channels only.

    Every row uses the Sub filter (each byte minus the byte one pixel to its left, mod 256).
    """
    height, width = gray.shape
    depth = 16 if gray.dtype == np.uint16 else 8
    samples = np.stack([gray, alpha], axis=-1).astype(">u2" if depth == 16 else np.uint8)
    raw = np.ascontiguousarray(samples).reshape(height, -1).view(np.uint8)
    step = 2 * depth // 8
    filtered = raw.copy()
    filtered[:, step:] -= raw[:, :-step]
    scanlines = np.concatenate([np.ones((height, 1), dtype=np.uint8), filtered], axis=1)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 4, 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
            + _png_chunk(b"IEND", b""))


def _encode(path: Path, fmt: str, color: np.ndarray, alpha: np.ndarray | None, quality: int | None) -> bytes:
    """Encode quantized (H, W, C) RGB/gray samples and optional (H, W) alpha into file bytes."""
    if alpha is not None and color.shape[2] == 1 and fmt == "PNG":
        return _encode_png_gray_alpha(color[:, :, 0], alpha)
    if color.shape[2] == 1 and alpha is not None:  # no gray+alpha in OpenCV's TIFF/WebP/BMP writers
        color = np.repeat(color, 3, axis=2)
    if color.shape[2] == 1:
        array = color[:, :, 0]
    elif alpha is None:
        array = color[:, :, ::-1]
    else:
        array = np.concatenate([color[:, :, ::-1], alpha[:, :, None]], axis=2)
    params: list[int] = []
    if fmt == "JPEG":
        params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY if quality is None else quality]
    elif fmt == "WebP":  # quality above 100 is OpenCV's lossless mode
        params = [cv2.IMWRITE_WEBP_QUALITY, 101 if quality is None else quality]
    try:
        with _quiet_opencv():
            ok, buffer = cv2.imencode(path.suffix.lower(), np.ascontiguousarray(array), params)
    except cv2.error as err:
        raise ImageError(f"{path}: cannot encode {fmt} ({one_line(err, last=True)})") from None
    if not ok:
        raise ImageError(f"{path}: cannot encode {fmt} (the encoder failed)")
    return buffer.tobytes()


def write_image(
    path: PathLike,
    pixels: np.ndarray,
    *,
    bit_depth: int = 8,
    alpha: np.ndarray | None = None,
    overwrite: bool = False,
    quality: int | None = None,
) -> Path:
    """Write an image atomically; the format follows the suffix.

    Formats: .png and .tif/.tiff (8 or 16-bit), .jpg/.jpeg, .webp and .bmp (8-bit). Gray+alpha is
    stored as such in PNG and as RGBA (gray repeated) in TIFF, WebP and BMP; WebP stores gray as
    RGB. JPEG cannot store alpha and is refused rather than dropping it. The file is encoded in
    memory, written to a temporary file in the same folder and moved into place, so a failure
    leaves nothing behind and a reader never sees a partial file. Parent folders are created.

    Args:
        path: the output file.
        pixels: (H, W), (H, W, 1) or (H, W, 3) RGB floating array; values are clamped to [0, 1].
        bit_depth: 8 or 16; samples are round-half-to-even(clamp(x, 0, 1) * 255 or 65535).
        alpha: (H, W) or (H, W, 1) floating array in [0, 1], or None.
        overwrite: replace an existing file; otherwise an existing file raises FileExistsError.
        quality: JPEG quality 1..100 (default 95) or WebP quality 1..100 (default lossless);
            ignored by the lossless formats.

    Returns:
        ``path`` as a Path.

    Raises:
        ImageError: unknown suffix, 16-bit or alpha in a format that cannot store it, a folder in
            the way, or an encoder failure.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        TypeError, ValueError: pixels or alpha of the wrong dtype, shape or with NaN.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = _WRITE_FORMATS.get(suffix)
    if fmt is None:
        raise ImageError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                         f"use one of {', '.join(sorted(_WRITE_FORMATS))}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if bit_depth == 16 and fmt not in _SIXTEEN_BIT_FORMATS:
        raise ImageError(f"{path}: {fmt} stores 8-bit samples only; write 16-bit to .png or .tif, or use bit_depth=8")
    if alpha is not None and fmt == "JPEG":
        raise ImageError(f"{path}: JPEG cannot store an alpha channel; write .png, .tif or .webp, or drop the alpha")
    if quality is not None and not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ValueError(f"quality must be an int in 1..100, got {quality!r}")
    color = _as_hwc(pixels)
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[:, :, 0]
        if alpha.dtype.kind != "f":
            raise TypeError(f"alpha must be a floating-point array in [0, 1], got dtype {alpha.dtype}")
        if alpha.shape != color.shape[:2]:
            raise ValueError(f"alpha must be H x W = {color.shape[:2]}, got shape {alpha.shape}")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder")
    if path.exists() and not overwrite:
        raise exists_error(path)
    samples = _quantize(color, bit_depth, "pixels")
    alpha_samples = None if alpha is None else _quantize(alpha, bit_depth, "alpha values")
    payload = _encode(path, fmt, samples, alpha_samples, quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, payload, overwrite=overwrite)
    return path


# ----------------------------------------------------------------------------------------------
# The RGB model boundary


def to_model_input(image: Image) -> torch.Tensor:
    """The (1, 3, H, W) float32 RGB tensor a restoration model takes.

    Gray is repeated into R = G = B; alpha is dropped (carry ``image.alpha`` over with
    :func:`from_model_output`). The tensor owns its memory.
    """
    pixels = image.pixels
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    chw = np.array(pixels.transpose(2, 0, 1), dtype=np.float32, order="C", copy=True)
    return torch.from_numpy(chw)[None]


def from_model_output(tensor: torch.Tensor, like: Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels and alpha to write for a model's output on ``like``.

    Args:
        tensor: (1, 3, H, W) or (3, H, W) RGB output, any device and floating dtype; H, W must be
            ``like``'s.
        like: the image the model was given.

    Returns:
        (pixels, alpha): pixels (H, W, 3) float32 clamped to [0, 1], or (H, W, 1) when ``like``
        is gray: the mean of the three channels, which is the nearest gray image in the
        least-squares sense and averages out channel-independent noise (luma weights would
        favour the green channel's errors). alpha is ``like.alpha`` unchanged.
    """
    t = tensor.detach()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a (1, 3, H, W) or (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    if tuple(t.shape[1:]) != (like.height, like.width):
        raise ValueError(f"output is {t.shape[2]} x {t.shape[1]} but the input was {like.width} x {like.height}")
    rgb = t.to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    if like.pixels.shape[2] == 1:
        pixels = rgb.mean(axis=2, keepdims=True, dtype=np.float32)
    else:
        pixels = np.ascontiguousarray(rgb)
    return pixels, like.alpha


# ----------------------------------------------------------------------------------------------
# Finding inputs and pairs


def _is_image_file(p: Path) -> bool:
    # Hidden names are skipped: macOS "._x.png" resource forks and our own temporary files.
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name)


def collect_inputs(specs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Image files named by command-line specs: files, folders and glob patterns.

    A file is taken as given (its content is checked when read); a folder gives its image files
    (non-recursive, by suffix, sorted); a pattern (``*``, ``?``, ``[``; ``**`` recurses) gives the
    image files it matches, sorted. A path that exists is never taken as a pattern.

    Returns:
        (paths, problems): the paths in spec order, each file once (by resolved path); one
        message per spec that is missing or found no image.
    """
    paths: list[Path] = []
    seen: set[Path] = set()
    problems: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = _images_in(p)
            if not found:
                problems.append(f"{spec}: folder has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif p.exists():
            found = [p]
        elif any(c in spec for c in "*?["):
            found = sorted((Path(m) for m in glob.glob(spec, recursive=True)), key=str)
            found = [m for m in found if _is_image_file(m)]
            if not found:
                problems.append(f"{spec}: matched no image files")
        else:
            found = []
            problems.append(f"{spec}: no such file or folder")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(f)
    return paths, problems


def _by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` keyed by stem; two files with one stem cannot be paired."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for p in _images_in(folder):
        if p.stem in found:
            raise ImageError(f"{folder}: {found[p.stem].name} and {p.name} have the same name; "
                             "cannot tell which one to pair")
        found[p.stem] = p
    return found


def _layout_folders(root: Path) -> tuple[str, list[tuple[str, Path, Path]]] | None:
    """The first layout found: its name and (scene prefix, input folder, target folder) per scene."""
    for a, b in LAYOUTS:
        if (root / a).is_dir() and (root / b).is_dir():
            return f"{a}/{b}", [("", root / a, root / b)]
    scenes = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    for a, b in LAYOUTS:
        if any((d / a).is_dir() and (d / b).is_dir() for d in scenes):
            # A scene with one side only still counts: its files are all unmatched.
            chosen = [d for d in scenes if (d / a).is_dir() or (d / b).is_dir()]
            return f"*/{a}/{b}", [(f"{d.name}/", d / a, d / b) for d in chosen]
    return None


def find_pairs(root: PathLike, *, strict: bool = True) -> PairedSet:
    """Input/target pairs of a paired dataset, matched by file stem (suffixes may differ).

    Layouts, tried in order, the first found wins: ``root/input`` + ``root/target``,
    ``root/blur`` + ``root/sharp``, ``root/lq`` + ``root/gt``; then the same names one level down,
    one folder per scene as in GoPro's test set (``root/GOPR0384_11_00/blur`` +
    ``root/GOPR0384_11_00/sharp``), where pairs are named "scene/stem". Only image files directly
    in those folders count.

    Args:
        root: the dataset folder.
        strict: raise when a file has no counterpart (default); otherwise record it in
            ``unmatched_inputs``/``unmatched_targets`` and go on.

    Raises:
        ImageError: ``root`` is not a folder, no layout is found, no pair matches, two files of
            one folder share a stem, or (``strict``) some files are unmatched.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: no such folder")
    found = _layout_folders(root)
    if found is None:
        tried = ", ".join(f"{a}/ + {b}/" for a, b in LAYOUTS)
        raise ImageError(f"{root}: no paired layout found; tried {tried}, directly or in scene folders "
                         "(e.g. GOPR0384_11_00/blur + GOPR0384_11_00/sharp)")
    layout, scenes = found
    pairs: list[tuple[str, Path, Path]] = []
    unmatched_inputs: list[Path] = []
    unmatched_targets: list[Path] = []
    for prefix, input_dir, target_dir in scenes:
        inputs, targets = _by_stem(input_dir), _by_stem(target_dir)
        pairs += [(prefix + stem, inputs[stem], targets[stem]) for stem in inputs if stem in targets]
        unmatched_inputs += [p for stem, p in inputs.items() if stem not in targets]
        unmatched_targets += [p for stem, p in targets.items() if stem not in inputs]
    pairs.sort(key=lambda pair: pair[0])
    result = PairedSet(pairs, layout, unmatched_inputs, unmatched_targets)
    unmatched = unmatched_inputs + unmatched_targets
    a, b = layout.split("/")[-2:]
    if strict and unmatched:
        listed = ", ".join(str(p.relative_to(root)) for p in unmatched[:_MAX_LISTED])
        more = f" and {len(unmatched) - _MAX_LISTED} more" if len(unmatched) > _MAX_LISTED else ""
        raise ImageError(
            f"{root}: {len(unmatched)} unmatched file(s) ({len(unmatched_inputs)} in {a}/ with no {b}/ file of the "
            f"same name, {len(unmatched_targets)} in {b}/ with no {a}/ one): {listed}{more}; "
            "pass strict=False to skip them"
        )
    if not pairs:
        raise ImageError(f"{root}: layout {layout} found but no {a}/ and {b}/ files share a name")
    return result
