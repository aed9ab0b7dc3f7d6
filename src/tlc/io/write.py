"""Writing images: 8/16-bit PNG and TIFF, JPEG, WebP and BMP, gray and alpha kept, atomically.

Writing rounds ``clamp(x, 0, 1) * 255`` (or 65535) half to even, so 8 and 16-bit PNG/TIFF round
trips are exact.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from .._util import exists_error, one_line, write_atomically
from .headers import PNG_SIGNATURE
from .image import ImageError, PathLike
from .read import quiet_opencv

_WRITE_FORMATS = {
    ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP", ".bmp": "BMP"
}
_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
_JPEG_QUALITY = 95


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
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
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
        with quiet_opencv():
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
