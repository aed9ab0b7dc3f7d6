"""Image I/O, the RGB model boundary, and input/pair discovery (tlc.io).

Every file is made in tmp_path: by write_image, by OpenCV directly, or byte by byte where a
layout is needed that neither writes (gray+alpha TIFF, a PNG header claiming a huge size, EXIF).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tlc import _util
from tlc import io as tlc_io
from tlc._util import atomic_write
from tlc.io import Image, ImageError, collect_inputs, find_pairs, read_image, write_image

H, W = 23, 31
PEAK = {8: 255, 16: 65535}
CHANNELS = {"gray": 1, "rgb": 3, "gray+alpha": 1, "rgba": 3}


def random_samples(shape: tuple[int, ...], bit_depth: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, PEAK[bit_depth] + 1, size=shape, dtype=np.int64)


def smooth_image(channels: int = 3) -> np.ndarray:
    """(H, W, C) float32 gradients in [0, 1]: what lossy codecs keep well."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    planes = [(x / W), (y / H), (x + y) / (W + H)][:channels]
    return np.stack(planes, axis=-1).astype(np.float32) * 0.8 + 0.1


def assert_image_error(path: Path, match: str, **kwargs) -> ImageError:
    with pytest.raises(ImageError, match=match) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return info.value


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def tiff_bytes(width: int, height: int, payload: bytes, *, bits: int = 8, spp: int = 1, sample_format: int = 1,
               photometric: int | None = None, extra_samples: int | None = None, planar: int = 1) -> bytes:
    """A little-endian, uncompressed, single-strip TIFF: header, IFD, out-of-line values, pixels."""
    fields = {
        256: ("I", [width]), 257: ("I", [height]), 258: ("H", [bits] * spp), 259: ("H", [1]),
        262: ("H", [photometric if photometric is not None else (1 if spp == 1 else 2)]),
        273: ("I", [0]), 277: ("H", [spp]), 278: ("I", [height]), 279: ("I", [len(payload)]),
        284: ("H", [planar]), 339: ("H", [sample_format] * spp),
    }
    if extra_samples is not None:
        fields[338] = ("H", [extra_samples])
    base = 8 + 2 + 12 * len(fields) + 4
    values, extra = {}, b""
    for tag, (code, vals) in sorted(fields.items()):
        packed = struct.pack(f"<{len(vals)}{code}", *vals)
        if len(packed) > 4:
            values[tag] = struct.pack("<I", base + len(extra))
            extra += packed
        else:
            values[tag] = packed.ljust(4, b"\x00")
    values[273] = struct.pack("<I", base + len(extra))
    ifd = struct.pack("<H", len(fields))
    for tag, (code, vals) in sorted(fields.items()):
        ifd += struct.pack("<HHI", tag, 3 if code == "H" else 4, len(vals)) + values[tag]
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + extra + payload


# ----------------------------------------------------------------------------------------------
# Round trips


def write_samples(path: Path, mode: str, bit_depth: int, **kwargs) -> tuple[np.ndarray, np.ndarray | None]:
    """Write random samples of ``mode``; returns the integer samples (pixels, alpha)."""
    samples = random_samples((H, W, CHANNELS[mode]), bit_depth)
    alpha = random_samples((H, W), bit_depth, seed=1) if mode in ("gray+alpha", "rgba") else None
    peak = np.float32(PEAK[bit_depth])
    write_image(path, samples.astype(np.float32) / peak, bit_depth=bit_depth,
                alpha=None if alpha is None else alpha.astype(np.float32) / peak, **kwargs)
    return samples, alpha


def as_samples(x: np.ndarray, bit_depth: int) -> np.ndarray:
    return np.rint(x.astype(np.float64) * PEAK[bit_depth]).astype(np.int64)


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("mode", ["gray", "rgb", "gray+alpha", "rgba"])
def test_png_round_trip_is_exact(tmp_path, mode, bit_depth):
    path = tmp_path / "x.png"
    samples, alpha = write_samples(path, mode, bit_depth)
    image = read_image(path)
    assert (image.mode, image.bit_depth, image.path) == (mode, bit_depth, path)
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (H, W, CHANNELS[mode])
    assert image.pixels.min() >= 0 and image.pixels.max() <= 1
    np.testing.assert_array_equal(as_samples(image.pixels, bit_depth), samples)
    if alpha is None:
        assert image.alpha is None
    else:
        assert image.alpha.dtype == np.float32 and image.alpha.shape == (H, W)
        np.testing.assert_array_equal(as_samples(image.alpha, bit_depth), alpha)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_values_that_are_not_multiples_of_257_survive(tmp_path, suffix):
    values = np.array([0, 1, 2, 255, 256, 258, 1000, 32767, 32768, 65279, 65534, 65535])
    samples = np.stack([values, values[::-1], (values * 7) % 65536], axis=-1)[None]
    path = tmp_path / f"x{suffix}"
    write_image(path, samples.astype(np.float32) / 65535, bit_depth=16)
    image = read_image(path)
    assert image.bit_depth == 16
    np.testing.assert_array_equal(as_samples(image.pixels, 16), samples)


@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("mode", ["gray", "rgb", "rgba"])
def test_tiff_round_trip_is_exact(tmp_path, mode, bit_depth, suffix):
    path = tmp_path / f"x{suffix}"
    samples, alpha = write_samples(path, mode, bit_depth)
    image = read_image(path)
    assert (image.mode, image.bit_depth) == (mode, bit_depth)
    np.testing.assert_array_equal(as_samples(image.pixels, bit_depth), samples)
    if alpha is not None:
        np.testing.assert_array_equal(as_samples(image.alpha, bit_depth), alpha)


def test_gray_alpha_in_tiff_is_stored_as_rgba(tmp_path):
    path = tmp_path / "x.tif"
    samples, alpha = write_samples(path, "gray+alpha", 16)
    image = read_image(path)
    assert image.mode == "rgba"
    np.testing.assert_array_equal(as_samples(image.pixels, 16), np.repeat(samples, 3, axis=2))
    np.testing.assert_array_equal(as_samples(image.alpha, 16), alpha)


@pytest.mark.parametrize("mode", ["gray", "rgb", "rgba"])
def test_bmp_round_trip_is_exact(tmp_path, mode):
    path = tmp_path / "x.bmp"
    samples, alpha = write_samples(path, mode, 8)
    image = read_image(path)
    assert (image.mode, image.bit_depth) == (mode, 8)
    np.testing.assert_array_equal(as_samples(image.pixels, 8), samples)
    if alpha is not None:
        np.testing.assert_array_equal(as_samples(image.alpha, 8), alpha)


def test_webp_is_lossless_by_default(tmp_path):
    path = tmp_path / "x.webp"
    samples, _ = write_samples(path, "rgb", 8)
    image = read_image(path)
    assert (image.mode, image.bit_depth) == ("rgb", 8)
    np.testing.assert_array_equal(as_samples(image.pixels, 8), samples)


def test_webp_alpha_and_gray(tmp_path):
    # Lossless WebP may rewrite the colour of fully transparent pixels, so alpha is kept above 0.
    pixels = smooth_image()
    alpha = np.linspace(0.2, 1.0, H * W, dtype=np.float32).reshape(H, W)
    write_image(tmp_path / "a.webp", pixels, alpha=alpha)
    image = read_image(tmp_path / "a.webp")
    assert image.mode == "rgba"
    np.testing.assert_array_equal(as_samples(image.pixels, 8), as_samples(pixels, 8))
    np.testing.assert_array_equal(as_samples(image.alpha, 8), as_samples(alpha, 8))
    write_image(tmp_path / "g.webp", pixels[:, :, :1])
    gray = read_image(tmp_path / "g.webp")  # WebP has no gray mode: stored as R = G = B
    assert gray.mode == "rgb"
    np.testing.assert_array_equal(as_samples(gray.pixels, 8), np.repeat(as_samples(pixels[:, :, :1], 8), 3, axis=2))


@pytest.mark.parametrize("suffix,quality,tolerance", [(".jpg", None, 0.01), (".jpeg", 60, 0.03), (".webp", 80, 0.03)])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossy_round_trip_within_tolerance(tmp_path, suffix, quality, tolerance, channels):
    pixels = smooth_image(channels)
    path = tmp_path / f"x{suffix}"
    write_image(path, pixels, quality=quality)
    image = read_image(path)
    got = image.pixels if image.pixels.shape[2] == channels else image.pixels.mean(axis=2, keepdims=True)
    assert image.bit_depth == 8 and image.alpha is None
    assert image.mode == ("gray" if channels == 1 and suffix != ".webp" else "rgb")
    assert np.abs(got - pixels).mean() < tolerance


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".webp", ".bmp"])
def test_one_by_one_images_are_valid(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    write_image(path, np.full((1, 1, 3), 0.5, dtype=np.float32))
    image = read_image(path)
    assert image.pixels.shape == (1, 1, 3) and (image.height, image.width) == (1, 1)
    assert abs(float(image.pixels.mean()) - 128 / 255) < 0.02


def test_format_is_taken_from_content_not_suffix(tmp_path):
    path = tmp_path / "actually_a_png.jpg"
    cv2.imwrite(str(tmp_path / "x.png"), np.full((4, 5, 3), 7, dtype=np.uint8))
    path.write_bytes((tmp_path / "x.png").read_bytes())
    np.testing.assert_array_equal(as_samples(read_image(path).pixels, 8), np.full((4, 5, 3), 7))


def test_bgr_is_swapped_to_rgb(tmp_path):
    bgr = np.zeros((2, 2, 3), dtype=np.uint8)
    bgr[:, :, 2] = 255  # red in OpenCV's order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    np.testing.assert_array_equal(read_image(tmp_path / "red.png").pixels[0, 0], [1, 0, 0])
    write_image(tmp_path / "red2.png", np.array([[[1.0, 0.0, 0.0]]], dtype=np.float32))
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "red2.png"))[0, 0], [0, 0, 255])


def exif_orientation_segment(orientation: int) -> bytes:
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\x00\x00\x00\x00"
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def test_jpeg_exif_orientation_is_applied(tmp_path):
    plain = tmp_path / "plain.jpg"
    write_image(plain, np.zeros((H, W, 3), dtype=np.float32))
    raw = plain.read_bytes()
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(raw[:2] + exif_orientation_segment(6) + raw[2:])
    assert read_image(rotated).pixels.shape == (W, H, 3)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_missing_file_and_folder(tmp_path):
    assert_image_error(tmp_path / "nope.png", "no such file")
    assert_image_error(tmp_path, "is a folder")


def test_empty_and_non_image_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert_image_error(tmp_path / "empty.png", "empty file")
    (tmp_path / "text.png").write_text("this is not a picture\n")
    assert_image_error(tmp_path / "text.png", "not a PNG, JPEG, TIFF, WebP or BMP image")


@pytest.fixture
def encoded(tmp_path):
    """Bytes of a noisy 64 x 80 RGB image in each format (noise makes the data span the file)."""
    rgb = np.random.default_rng(3).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    out = {}
    for suffix in (".png", ".jpg", ".tif", ".webp", ".bmp"):
        ok, buffer = cv2.imencode(suffix, rgb)
        assert ok
        out[suffix] = buffer.tobytes()
    return out


@pytest.mark.parametrize("suffix,match", [
    (".png", "truncated PNG"), (".jpg", "truncated JPEG"), (".tif", "truncated TIFF"),
    (".webp", "truncated WebP"), (".bmp", "truncated BMP"),
])
@pytest.mark.parametrize("keep", [0.3, 0.9, -2, -1])
def test_truncated_files_are_refused(tmp_path, encoded, suffix, match, keep):
    raw = encoded[suffix]
    cut = int(len(raw) * keep) if keep > 0 else len(raw) + keep
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(raw[:cut])
    assert_image_error(path, match)


def test_png_without_iend_is_truncated(tmp_path, encoded):
    path = tmp_path / "x.png"
    path.write_bytes(encoded[".png"][:-12])  # the whole IEND chunk gone, every IDAT intact
    assert_image_error(path, "truncated PNG")


def test_truncated_jpeg_with_end_marker_inside_a_thumbnail_is_refused(tmp_path, encoded):
    # An EXIF thumbnail is a whole JPEG inside APP1, end-of-image marker included.
    raw = encoded[".jpg"]
    body = b"Exif\x00\x00" + b"\xff\xd8\xff\xd9" * 4
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    path = tmp_path / "x.jpg"
    path.write_bytes(raw[:2] + app1 + raw[2 : len(raw) // 2])
    assert_image_error(path, "truncated JPEG")
    path.write_bytes(raw[:2] + app1 + raw[2:] + b"trailing bytes after the end marker are ignored")
    assert read_image(path).pixels.shape == (64, 80, 3)


def test_truncated_tiff_with_leading_ifd(tmp_path):
    payload = bytes(range(256)) * 4
    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(32, 32, payload))
    assert read_image(path).pixels.shape == (32, 32, 1)
    path.write_bytes(tiff_bytes(32, 32, payload)[:-100])
    assert_image_error(path, "truncated TIFF")


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_straight_alpha_is_read_as_stored(tmp_path, bits):
    # libtiff's RGBA interface would premultiply 8-bit unassociated alpha; read_image avoids it.
    samples = random_samples((6, 7, 4), bits)
    samples[0, 0, 3] = 0
    dtype = "<u1" if bits == 8 else "<u2"
    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(7, 6, samples.astype(dtype).tobytes(), bits=bits, spp=4, extra_samples=2))
    image = read_image(path)
    assert (image.mode, image.bit_depth) == ("rgba", bits)
    np.testing.assert_array_equal(as_samples(image.pixels, bits), samples[:, :, :3])
    np.testing.assert_array_equal(as_samples(image.alpha, bits), samples[:, :, 3])


def test_tiff_associated_alpha_is_unpremultiplied(tmp_path):
    color = random_samples((6, 7, 3), 8).astype(np.float64) / 255
    alpha = random_samples((6, 7), 8, seed=2).astype(np.float64) / 255
    alpha[0, 0] = 0
    stored = np.rint(np.concatenate([color * alpha[:, :, None], alpha[:, :, None]], axis=2) * 255)
    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(7, 6, stored.astype(np.uint8).tobytes(), spp=4, extra_samples=1))
    image = read_image(path)
    expected = np.where(stored[:, :, 3:] > 0, stored[:, :, :3] / np.maximum(stored[:, :, 3:], 1), 0)
    np.testing.assert_allclose(image.pixels, np.minimum(expected, 1), atol=1e-6)
    np.testing.assert_array_equal(as_samples(image.alpha, 8), stored[:, :, 3])


def test_16_bit_planar_tiff_is_refused(tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(4, 4, bytes(96), bits=16, spp=3, planar=2))
    assert_image_error(path, "16-bit TIFF with separate colour planes is not supported")


@pytest.mark.parametrize("bits", [8, 16])
def test_tiled_tiff(tmp_path, bits):
    tifffile = pytest.importorskip("tifffile")
    samples = random_samples((40, 48, 3), bits)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, samples.astype(np.uint8 if bits == 8 else np.uint16), photometric="rgb", tile=(16, 16))
    np.testing.assert_array_equal(as_samples(read_image(path).pixels, bits), samples)


@pytest.mark.parametrize("params", [
    [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2], [cv2.IMWRITE_JPEG_OPTIMIZE, 1]
])
def test_jpeg_variants_are_walked_to_the_end(tmp_path, params):
    rgb = np.random.default_rng(4).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", rgb, params)
    raw = buffer.tobytes()
    path = tmp_path / "x.jpg"
    path.write_bytes(raw)
    assert read_image(path).pixels.shape == (40, 48, 3)
    path.write_bytes(raw[: len(raw) * 2 // 3])
    assert_image_error(path, "truncated JPEG")


def test_corrupt_png_data_is_refused(tmp_path, encoded):
    raw = bytearray(encoded[".png"])
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\x00" * 16  # IDAT damaged: its CRC no longer matches
    path = tmp_path / "x.png"
    path.write_bytes(bytes(raw))
    assert_image_error(path, "corrupt or unsupported PNG")


def test_float_tiff_is_refused(tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(4, 4, bytes(64), bits=32, sample_format=3))
    assert_image_error(path, "32-bit floating-point TIFF samples are not supported")


def test_signed_and_odd_depth_tiffs_are_refused(tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(4, 4, bytes(32), bits=16, sample_format=2))
    assert_image_error(path, "16-bit signed integer TIFF samples are not supported")
    path.write_bytes(tiff_bytes(4, 4, bytes(24), bits=12))
    assert_image_error(path, "12-bit TIFF samples are not supported")


def test_gray_alpha_tiff_is_refused(tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(4, 4, bytes(32), spp=2, extra_samples=2))
    assert_image_error(path, "gray\\+alpha TIFF is not supported")


def test_12_bit_jpeg_is_refused(tmp_path, encoded):
    raw = bytearray(encoded[".jpg"])
    sof = raw.find(b"\xff\xc0")
    raw[sof + 4] = 12  # the frame header's sample precision
    path = tmp_path / "x.jpg"
    path.write_bytes(bytes(raw))
    assert_image_error(path, "12-bit JPEG is not supported")


def test_pixel_limit(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    write_image(path, smooth_image())
    assert read_image(path, max_pixels=H * W).pixels.shape == (H, W, 3)
    err = assert_image_error(path, "over the limit", max_pixels=H * W - 1)
    assert "max_pixels" in str(err) and "TLC_MAX_PIXELS" in str(err)
    monkeypatch.setenv("TLC_MAX_PIXELS", "100")
    assert_image_error(path, "over the limit of 0.0001 megapixels")
    assert read_image(path, max_pixels=10**6).pixels.shape == (H, W, 3)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # The header claims 100000 x 100000 (10 gigapixels); the data is a few bytes.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    raw = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
           + png_chunk(b"IEND", b""))
    path = tmp_path / "bomb.png"
    path.write_bytes(raw)
    assert_image_error(path, "100000 x 100000 = 10000.0 megapixels is over the limit of 200 megapixels")


# ----------------------------------------------------------------------------------------------
# Writing


def test_write_quantizes_with_clamp_and_round_half_to_even(tmp_path):
    pixels = np.array([[[-0.25, 0.5, 1.75]]], dtype=np.float64)
    write_image(tmp_path / "a.png", pixels)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)[0, 0], [255, 128, 0])
    write_image(tmp_path / "b.png", pixels, bit_depth=16)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED)[0, 0], [65535, 32768, 0])
    assert cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_write_creates_parent_folders_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a" / "b" / "out.png"
    assert write_image(path, smooth_image()) == path
    assert os.listdir(path.parent) == ["out.png"]


def test_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True") as info:
        write_image(path, smooth_image())
    assert str(path) in str(info.value)
    assert path.read_bytes() == b"precious"
    write_image(path, smooth_image(), overwrite=True)
    assert read_image(path).pixels.shape == (H, W, 3)
    assert os.listdir(tmp_path) == ["out.png"]


def appear_while_writing(path, overwrite=False):
    """Write through atomic_write while another writer creates ``path`` meanwhile."""
    with atomic_write(path, overwrite=overwrite) as temporary:
        temporary.write_bytes(b"new")
        path.write_bytes(b"precious")


def test_no_clobber_still_holds_when_the_file_appears_late(tmp_path):
    # The move without overwrite is a hard link, which cannot replace a file created meanwhile.
    path = tmp_path / "out.png"
    with pytest.raises(FileExistsError):
        appear_while_writing(path)
    assert path.read_bytes() == b"precious" and os.listdir(tmp_path) == ["out.png"]


def test_write_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(_util.os, "link", no_links)
    path = tmp_path / "out.png"
    write_image(path, smooth_image())
    assert os.listdir(tmp_path) == ["out.png"]
    path.unlink()
    with pytest.raises(FileExistsError):
        appear_while_writing(path)
    assert path.read_bytes() == b"precious" and os.listdir(tmp_path) == ["out.png"]


def test_encoder_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise cv2.error("OpenCV(4.x) grfmt_png.cpp:1: error: (-2:Unspecified error) simulated\n")

    path = tmp_path / "out.png"
    path.write_bytes(b"precious")
    monkeypatch.setattr(tlc_io.write.cv2, "imencode", broken)
    with pytest.raises(ImageError, match="cannot encode PNG .*simulated"):
        write_image(path, smooth_image(), overwrite=True)
    with pytest.raises(ImageError, match="cannot encode"):
        write_image(tmp_path / "new" / "fresh.png", smooth_image())
    assert path.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_failure_while_writing_removes_the_temporary_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    path = tmp_path / "out.png"
    path.write_bytes(b"precious")
    monkeypatch.setattr(_util.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_image(path, smooth_image(), overwrite=True)
    assert path.read_bytes() == b"precious" and os.listdir(tmp_path) == ["out.png"]


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp", ".bmp"])
def test_16_bit_is_refused_where_the_format_cannot_store_it(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    with pytest.raises(ImageError, match="8-bit samples only") as info:
        write_image(path, smooth_image(), bit_depth=16)
    assert str(path) in str(info.value)
    assert not path.exists()


def test_write_argument_errors(tmp_path):
    with pytest.raises(ImageError, match="cannot tell the format from the suffix '.gif'"):
        write_image(tmp_path / "x.gif", smooth_image())
    with pytest.raises(ImageError, match="JPEG cannot store an alpha channel"):
        write_image(tmp_path / "x.jpg", smooth_image(), alpha=np.ones((H, W), dtype=np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        write_image(tmp_path / "x.png", np.zeros((H, W, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "x.png", np.full((H, W, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="H x W x 3"):
        write_image(tmp_path / "x.png", np.zeros((3, H, W), dtype=np.float32)[:2])
    with pytest.raises(ValueError, match="alpha must be H x W"):
        write_image(tmp_path / "x.png", smooth_image(), alpha=np.ones((H, W + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="bit_depth"):
        write_image(tmp_path / "x.png", smooth_image(), bit_depth=12)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="is a folder"):
        write_image(tmp_path / "folder.png", smooth_image(), overwrite=True)
    assert os.listdir(tmp_path) == ["folder.png"]


# ----------------------------------------------------------------------------------------------
# The RGB model boundary


def make_image(channels: int, alpha: bool, h: int = H, w: int = W) -> Image:
    pixels = np.random.default_rng(5).random((h, w, channels), dtype=np.float32)
    a = np.random.default_rng(6).random((h, w), dtype=np.float32) if alpha else None
    mode = {(1, False): "gray", (3, False): "rgb", (1, True): "gray+alpha", (3, True): "rgba"}[channels, alpha]
    return Image(pixels=pixels, alpha=a, bit_depth=8, mode=mode)


def test_model_input_is_rgb_nchw():
    image = make_image(3, alpha=True)
    x = tlc_io.to_model_input(image)
    assert x.shape == (1, 3, H, W) and x.dtype == torch.float32 and x.is_contiguous()
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), image.pixels)
    x.zero_()  # the tensor owns its memory
    assert image.pixels.any()


def test_gray_in_gray_out_with_alpha_kept():
    image = make_image(1, alpha=True)
    x = tlc_io.to_model_input(image)
    assert x.shape == (1, 3, H, W)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 0], x[0, 2])
    out = x.clone()
    out[0, 0] += 0.03
    out[0, 2] -= 0.03
    pixels, alpha = tlc_io.from_model_output(out, image)
    assert pixels.shape == (H, W, 1) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, np.clip(image.pixels, 0, 1), atol=2e-2)
    assert alpha is image.alpha


def test_from_model_output_clamps_and_checks_shape():
    image = make_image(3, alpha=False)
    out = torch.full((3, H, W), 1.5, dtype=torch.float16)
    out[1] = -2
    pixels, alpha = tlc_io.from_model_output(out, image)
    assert alpha is None and pixels.shape == (H, W, 3) and pixels.dtype == np.float32
    assert (pixels[:, :, 0] == 1).all() and (pixels[:, :, 1] == 0).all()
    with pytest.raises(ValueError, match="input was"):
        tlc_io.from_model_output(torch.zeros(1, 3, H + 1, W), image)
    with pytest.raises(ValueError, match="batch"):
        tlc_io.from_model_output(torch.zeros(2, 3, H, W), image)
    with pytest.raises(ValueError, match="shape"):
        tlc_io.from_model_output(torch.zeros(1, 1, H, W), image)


def test_one_pixel_through_the_boundary():
    image = make_image(1, alpha=True, h=1, w=1)
    x = tlc_io.to_model_input(image)
    assert x.shape == (1, 3, 1, 1)
    x.fill_(0.25)  # the tensor owns its memory even where a 1x1 transpose is already contiguous
    assert image.pixels[0, 0, 0] != 0.25
    pixels, alpha = tlc_io.from_model_output(x, image)
    assert pixels.shape == (1, 1, 1) and pixels[0, 0, 0] == 0.25 and alpha is image.alpha


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_gray_alpha_file_through_identity_model(tmp_path, bit_depth):
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    write_samples(src, "gray+alpha", bit_depth)
    image = read_image(src)
    pixels, alpha = tlc_io.from_model_output(tlc_io.to_model_input(image), image)
    write_image(dst, pixels, bit_depth=image.bit_depth, alpha=alpha)
    again = read_image(dst)
    assert (again.mode, again.bit_depth) == ("gray+alpha", bit_depth)
    np.testing.assert_array_equal(as_samples(again.pixels, bit_depth), as_samples(image.pixels, bit_depth))
    np.testing.assert_array_equal(as_samples(again.alpha, bit_depth), as_samples(image.alpha, bit_depth))


# ----------------------------------------------------------------------------------------------
# collect_inputs


def touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_collect_inputs_files_folders_and_globs(tmp_path):
    shots = tmp_path / "shots"
    touch(shots / "b.png", shots / "a.JPG", shots / "c.tif", shots / "notes.txt", shots / "._a.png",
          shots / "deeper" / "d.png", tmp_path / "single.webp", tmp_path / "other" / "z.bmp",
          tmp_path / "other" / "y.png", tmp_path / "noext")
    specs = [str(shots), str(tmp_path / "other" / "*"), str(tmp_path / "single.webp"), str(tmp_path / "noext")]
    paths, problems = collect_inputs(specs)
    assert problems == []
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "shots/a.JPG", "shots/b.png", "shots/c.tif", "other/y.png", "other/z.bmp", "single.webp", "noext"
    ]


def test_collect_inputs_deduplicates_and_reports_problems(tmp_path):
    touch(tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.png", tmp_path / "empty" / "readme.txt")
    specs = [str(tmp_path / "imgs" / "b.png"), str(tmp_path / "imgs"), str(tmp_path / "imgs" / "*.png"),
             str(tmp_path / "missing.png"), str(tmp_path / "empty"), str(tmp_path / "*.gif"),
             str(tmp_path / "**" / "a.png")]
    paths, problems = collect_inputs(specs)
    assert [p.name for p in paths] == ["b.png", "a.png"]
    assert len(problems) == 3
    assert "missing.png: no such file or folder" in problems[0]
    assert "folder has no image files" in problems[1] and str(tmp_path / "empty") in problems[1]
    assert "*.gif: matched no image files" in problems[2]


# ----------------------------------------------------------------------------------------------
# find_pairs


@pytest.mark.parametrize("a,b", tlc_io.LAYOUTS)
def test_find_pairs_flat_layouts(tmp_path, a, b):
    touch(tmp_path / a / "x1.png", tmp_path / a / "x2.jpg", tmp_path / b / "x1.png", tmp_path / b / "x2.png",
          tmp_path / a / "notes.txt")
    found = find_pairs(tmp_path)
    assert found.layout == f"{a}/{b}" and len(found) == 2
    assert found.pairs == [("x1", tmp_path / a / "x1.png", tmp_path / b / "x1.png"),
                           ("x2", tmp_path / a / "x2.jpg", tmp_path / b / "x2.png")]
    assert found.unmatched_inputs == [] and found.unmatched_targets == []


def test_first_layout_wins(tmp_path):
    touch(tmp_path / "blur" / "a.png", tmp_path / "sharp" / "a.png", tmp_path / "input" / "b.png",
          tmp_path / "target" / "b.png")
    assert find_pairs(tmp_path).pairs[0][0] == "b"


def test_find_pairs_nested_gopro_scenes(tmp_path):
    for scene, frames in (("GOPR0384_11_00", ["000001", "000002"]), ("GOPR0385_11_01", ["003011"])):
        for frame in frames:
            touch(tmp_path / scene / "blur" / f"{frame}.png", tmp_path / scene / "blur_gamma" / f"{frame}.png",
                  tmp_path / scene / "sharp" / f"{frame}.png")
    touch(tmp_path / "README.txt", tmp_path / "unrelated" / "x.png")
    found = find_pairs(tmp_path)
    assert found.layout == "*/blur/sharp"
    assert [name for name, _, _ in found.pairs] == [
        "GOPR0384_11_00/000001", "GOPR0384_11_00/000002", "GOPR0385_11_01/003011"
    ]
    name, blurred, sharp = found.pairs[2]
    assert blurred == tmp_path / "GOPR0385_11_01" / "blur" / "003011.png"
    assert sharp == tmp_path / "GOPR0385_11_01" / "sharp" / "003011.png"


def test_unmatched_files(tmp_path):
    touch(tmp_path / "input" / "a.png", tmp_path / "target" / "a.png")
    touch(*[tmp_path / "input" / f"only_in_{i:02d}.png" for i in range(12)], tmp_path / "target" / "lonely.png")
    with pytest.raises(ImageError) as info:
        find_pairs(tmp_path)
    message = str(info.value)
    assert "13 unmatched file(s) (12 in input/" in message and "1 in target/" in message
    assert "input/only_in_00.png" in message and "and 3 more" in message and "strict=False" in message
    assert "\n" not in message and str(tmp_path) in message
    found = find_pairs(tmp_path, strict=False)
    assert [name for name, _, _ in found.pairs] == ["a"]
    assert len(found.unmatched_inputs) == 12 and found.unmatched_targets == [tmp_path / "target" / "lonely.png"]


def test_nested_scene_with_one_side_only(tmp_path):
    touch(tmp_path / "s1" / "blur" / "a.png", tmp_path / "s1" / "sharp" / "a.png", tmp_path / "s2" / "blur" / "b.png")
    with pytest.raises(ImageError, match="1 unmatched file.*s2/blur/b.png"):
        find_pairs(tmp_path)
    assert find_pairs(tmp_path, strict=False).unmatched_inputs == [tmp_path / "s2" / "blur" / "b.png"]


def test_find_pairs_errors(tmp_path):
    with pytest.raises(ImageError, match="no such folder"):
        find_pairs(tmp_path / "missing")
    touch(tmp_path / "input" / "a.png", tmp_path / "images" / "a.png")
    with pytest.raises(ImageError, match="no paired layout found; tried input/ \\+ target/, blur/ \\+ sharp/, "
                                         "lq/ \\+ gt/"):
        find_pairs(tmp_path)
    touch(tmp_path / "target" / "b.png")
    with pytest.raises(ImageError, match="no input/ and target/ files share a name"):
        find_pairs(tmp_path, strict=False)
    touch(tmp_path / "target" / "a.png", tmp_path / "target" / "a.jpg")
    with pytest.raises(ImageError, match="a.jpg and a.png have the same name"):
        find_pairs(tmp_path, strict=False)
