"""Reading PNG, JPEG, TIFF, WebP and BMP files into an :class:`~tlc.io.image.Image` (see the
package docstring for what is checked before OpenCV decodes)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from .._util import Hint, hinted, one_line
from .headers import HEADER_PARSERS, Header, HeaderProblem, sniff
from .image import Image, ImageError, PathLike

DEFAULT_MAX_PIXELS = 200_000_000
MAX_PIXELS_ENV = "TLC_MAX_PIXELS"


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
def quiet_opencv() -> Iterator[None]:
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
    return decode_image(data, p, max_pixels=max_pixels)


def decode_image(data: bytes, name: PathLike, *, max_pixels: int | None = None) -> Image:
    """Decode an encoded image held in memory (a PNG, JPEG, TIFF, WebP or BMP file's bytes), with
    the checks of :func:`read_image`.

    Args:
        data: the encoded bytes, e.g. a value of an LMDB database of PNGs.
        name: where they came from (a file, or "db.lmdb/key"): named in errors, kept as ``Image.path``.
        max_pixels: as for :func:`read_image`.

    Raises:
        ImageError: empty, not an image, truncated or corrupt, an unsupported sample format, or
            over the pixel limit; the one-line message starts with ``name``.
    """
    p = Path(name)
    if not data:
        raise ImageError(f"{p}: empty file (0 bytes)")
    fmt = sniff(data)
    if fmt is None:
        raise ImageError(f"{p}: not a PNG, JPEG, TIFF, WebP or BMP image (unrecognised content)")
    try:
        header = HEADER_PARSERS[fmt](data)
    except HeaderProblem as err:
        raise ImageError(f"{p}: {err}") from None
    except (struct.error, IndexError):
        raise ImageError(f"{p}: truncated or corrupt {fmt} header") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageError(f"{p}: corrupt {fmt} file (size {header.width} x {header.height})")
    limit = _max_pixels(max_pixels)
    count = header.width * header.height
    if count > limit:
        raise hinted(ImageError, Hint(
            "read_image", "max_pixels=N",
            f"{p}: {header.width} x {header.height} = {count / 1e6:.1f} megapixels is over the limit of "
            f"{limit / 1e6:g} megapixels (a guard against decompression bombs); raise it with ",
            f" or the {MAX_PIXELS_ENV} environment variable",
        ))
    # JPEG has no alpha, so it can take the flags under which OpenCV applies EXIF orientation.
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if fmt == "JPEG" else cv2.IMREAD_UNCHANGED
    if header.patch is not None:
        at, replacement = header.patch
        data = data[:at] + replacement + data[at + len(replacement) :]
    try:
        with quiet_opencv():
            decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
            if decoded is None and fmt == "TIFF" and header.patch is None and p.is_file():
                # OpenCV 4.13+ fails on uncompressed tiled 8-bit TIFF from memory, not from a file.
                decoded = cv2.imread(str(p), flags)
    except cv2.error as err:
        raise ImageError(f"{p}: cannot decode this {fmt} file ({one_line(err, last=True)})") from None
    if decoded is None:
        raise ImageError(f"{p}: corrupt or unsupported {fmt} file (the decoder failed)")
    return _to_image(decoded, header, p)


def _to_image(decoded: np.ndarray, header: Header, path: Path) -> Image:
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
