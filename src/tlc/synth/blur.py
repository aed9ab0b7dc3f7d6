"""Motion blur by a line kernel: one length everywhere, or a length map rendered by blending a bank
of uniformly blurred images."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .checks import MAX_BANK, MAX_BLUR, as_hwc, as_level, integer, real
from .fields import direction

# Samples per pixel of segment length for the kernel's line integral (midpoint rule): the kernel
# entries are within ~1e-3 relative of the exact integral.
_KERNEL_SAMPLES_PER_PIXEL = 16


def kernel_radius(length: float) -> int:
    """Half-size of the square that holds a line of ``length`` at any angle, tent included."""
    # The support is the open band |p| < length / 2 + 1 along the dominant axis.
    return int(math.ceil(length / 2 + 1)) - 1


def motion_kernel(length: float, angle_deg: float, size: int | None = None) -> np.ndarray:
    """Linear motion blur kernel: a centred line segment rasterised with antialiasing.

    The kernel is the average, over points ``p(t) = t (cos a, sin a)`` of the segment
    ``t in [-length/2, length/2]`` (y up as displayed), of the bilinear tent
    ``max(0, 1 - |dx|) max(0, 1 - |dy|)`` centred on ``p(t)``: the exposure of a point moving
    ``length`` pixels, sampled with linear interpolation. The integral is taken by the midpoint
    rule with 16 samples per pixel of length. So: a horizontal kernel is one row high and its
    weights are ``1/length`` over the segment with linear shoulders (length 4 gives
    [1/8, 1/4, 1/4, 1/4, 1/8]); its variance along the motion is ``length^2 / 12 + 1/6``; the
    kernel is continuous in ``length`` and tends to the unit impulse as ``length -> 0`` (a
    sub-pixel motion is a slight blur, not none).

    Args:
        length: motion length in pixels, >= 0.
        angle_deg: direction in degrees counterclockwise from +x as displayed (0 horizontal,
            90 vertical); the kernel is point-symmetric, so a and a + 180 are the same.
        size: odd side of the returned square; default the smallest that holds the segment at any
            angle, ``2 * (ceil(length / 2 + 1) - 1) + 1``.

    Returns:
        (size, size) float64 array, non-negative, summing to 1, centred on ``[size // 2, size // 2]``.
    """
    length = real(length, "length")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length:g}")
    angle = real(angle_deg, "angle_deg")
    r = kernel_radius(length)
    if size is not None:
        size = integer(size, "size")
        if size % 2 == 0 or size < 2 * r + 1:
            raise ValueError(f"size must be odd and >= {2 * r + 1} for length {length:g}, got {size}")
    c, s = direction(angle)
    n = max(1, math.ceil(_KERNEL_SAMPLES_PER_PIXEL * length))
    t = (np.arange(n, dtype=np.float64) + 0.5) / n * length - length / 2
    # One spare pixel on every side keeps the tent's zero-weight far corners inside the array.
    px = r + 1 + t * c
    py = r + 1 - t * s
    x0, y0 = np.floor(px).astype(np.intp), np.floor(py).astype(np.intp)
    fx, fy = px - x0, py - y0
    k = np.zeros((2 * r + 3, 2 * r + 3))
    np.add.at(k, (y0, x0), (1 - fx) * (1 - fy))
    np.add.at(k, (y0, x0 + 1), fx * (1 - fy))
    np.add.at(k, (y0 + 1, x0), (1 - fx) * fy)
    np.add.at(k, (y0 + 1, x0 + 1), fx * fy)
    k = k[1:-1, 1:-1]
    k /= k.sum()
    if size is not None and size > k.shape[0]:
        pad = (size - k.shape[0]) // 2
        k = np.pad(k, pad)
    return k


def _fast_length(n: int) -> int:
    """The smallest even 7-smooth integer >= n: lengths the CPU real FFTs handle fastest."""
    best = 2 << max(0, (n - 1).bit_length())
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                m = 2 * p3
                while m < n:
                    m *= 2
                best = min(best, m)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


class _Spectrum:
    """The FFT of one (C, H, W) image padded for kernels up to a given radius."""

    def __init__(self, chw: np.ndarray, radius: int) -> None:
        c, h, w = chw.shape
        self.radius, self.size = radius, (h, w)
        self.fft_size = (_fast_length(h + 2 * radius), _fast_length(w + 2 * radius))
        padded = np.zeros((c, *self.fft_size), dtype=np.float32)
        # Half-sample symmetric padding: the scene beyond the frame mirrors the frame. The FFT's
        # wrap-around only reaches the padding, never the cropped output.
        padded[:, : h + 2 * radius, : w + 2 * radius] = np.pad(
            chw, ((0, 0), (radius, radius), (radius, radius)), mode="symmetric"
        )
        self.spectrum = torch.fft.rfft2(torch.from_numpy(padded))

    def convolve(self, kernel: np.ndarray) -> torch.Tensor:
        """(C, H, W) float32: the image convolved with a (2r+1)-square kernel, r <= radius."""
        k = kernel.shape[0]
        embedded = torch.zeros(self.fft_size, dtype=torch.float32)
        embedded[:k, :k] = torch.from_numpy(kernel.astype(np.float32))
        full = torch.fft.irfft2(self.spectrum * torch.fft.rfft2(embedded), s=self.fft_size)
        # A kernel in the corner delays the output by its radius; the padding adds ``radius``.
        o = self.radius + k // 2
        h, w = self.size
        return full[:, o : o + h, o : o + w]


def _bank(length_map: np.ndarray, bank_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bank lengths (evenly spaced over the map's range) and the map's fractional bank index."""
    lo, hi = float(length_map.min()), float(length_map.max())
    if hi <= lo:
        return np.array([lo]), np.zeros(length_map.shape, dtype=np.float32)
    lengths = np.linspace(lo, hi, bank_size)
    index = (length_map - lo) / (hi - lo) * (bank_size - 1)
    return lengths, np.clip(index, 0, bank_size - 1).astype(np.float32)


def blur_chw(
    chw: np.ndarray, length: float | np.ndarray, angle_deg: float, bank_size: int, gamma: float
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Motion-blur a (C, H, W) float32 image; returns it and the bank used (lengths, kernel size)."""
    _, h, w = chw.shape
    length_map = length if isinstance(length, np.ndarray) else np.full((h, w), float(length))
    lengths, index = _bank(length_map, bank_size)
    linear = np.power(chw, gamma, dtype=np.float32) if gamma != 1.0 else chw
    out = torch.zeros(chw.shape, dtype=torch.float32)
    index_t = torch.from_numpy(index)
    used: list[float] = []
    radius = kernel_radius(float(lengths[-1]))
    spectrum: _Spectrum | None = None
    for j, lj in enumerate(lengths):
        # Linear interpolation between neighbouring bank members: a tent in the bank index.
        weight = (1.0 - (index_t - j).abs()).clamp_(min=0.0)
        if not bool((weight > 0).any()):
            continue
        used.append(float(lj))
        if lj == 0.0:
            blurred = torch.from_numpy(linear)
        else:
            if spectrum is None:
                spectrum = _Spectrum(linear, radius)
            blurred = spectrum.convolve(motion_kernel(lj, angle_deg))
        out.addcmul_(blurred, weight)
    if gamma != 1.0:
        out.clamp_(min=0.0).pow_(1.0 / gamma)
    out.clamp_(0.0, 1.0)
    return out, {"bank_lengths": used, "kernel_size": 2 * radius + 1}


def motion_blur(
    image: np.ndarray,
    length: float | np.ndarray,
    angle_deg: float,
    *,
    bank_size: int = 8,
    gamma: float = 1.0,
) -> np.ndarray:
    """Blur by a linear motion of one direction and a uniform or per-pixel length.

    A scalar (or constant map) length convolves with the one :func:`motion_kernel`. A varying map
    L(x) uses a bank of ``bank_size`` kernels of lengths l_j evenly spaced from min L to max L:
    with t(x) = (L(x) - min L) / (max L - min L) * (bank_size - 1), pixel x of the output is
    ``sum_j max(0, 1 - |t(x) - j|) (k_j * image)(x)``, i.e. linear interpolation between the two
    images blurred by the nearest bank lengths. Equivalently each output pixel gathers through the
    interpolated kernel; bank members that no pixel uses are skipped (a step map needs two).
    Length 0 is the identity exactly. Convolutions are FFTs in float32 over the image extended by
    half-sample symmetric padding, so the frame border is blurred as if the scene mirrored there.

    Args:
        image: H x W x C (C <= 4) or H x W float array in [0, 1].
        length: motion length in pixels, a number or an (H, W) map, within [0, 512].
        angle_deg: motion direction, degrees counterclockwise from +x as displayed.
        bank_size: kernels a varying map is blended from, 2..64.
        gamma: blur ``image ** gamma`` and return the result ``** (1 / gamma)`` (2.2 ~ linear light).

    Returns:
        float32 array of ``image``'s shape, in [0, 1].
    """
    hwc = as_hwc(image)
    h, w = hwc.shape[:2]
    length = as_level(length, (h, w), "length", MAX_BLUR)
    angle = real(angle_deg, "angle_deg")
    bank = integer(bank_size, "bank_size")
    if not 2 <= bank <= MAX_BANK:
        raise ValueError(f"bank_size must lie in [2, {MAX_BANK}], got {bank}")
    g = real(gamma, "gamma")
    if not g > 0:
        raise ValueError(f"gamma must be > 0, got {g:g}")
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    out, _ = blur_chw(chw, length, angle, bank, g)
    return np.ascontiguousarray(out.numpy().transpose(1, 2, 0)).reshape(image.shape)


def _angle_bank_weights(angle_map: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Bank angles ``j * 180 / count`` and, per pixel, the fractional (circular) bank index."""
    angles = np.arange(count) * (180.0 / count)
    index = np.mod(angle_map, 180.0) / (180.0 / count)
    return angles, np.mod(index, count).astype(np.float32)


def motion_blur_field(
    image: np.ndarray,
    length: np.ndarray,
    angle_deg: np.ndarray,
    *,
    length_bank: int = 6,
    angle_bank: int = 12,
) -> np.ndarray:
    """Blur by a linear motion whose length AND direction vary per pixel (a motion field).

    A bank of :func:`motion_kernel` kernels on a grid of ``length_bank`` lengths (evenly spaced
    from min to max of ``length``) by ``angle_bank`` directions (``j * 180 / angle_bank`` degrees)
    is applied to the whole image; pixel x of the output blends the blurred images with bilinear
    weights in (length index, angle index), the angle index wrapping around (a line kernel at
    a + 180 is the one at a). Where the maps hit bank nodes exactly the output is that kernel's
    convolution; bank members no pixel uses are skipped; length 0 is the identity. Convolutions
    are FFTs in float32 over the image extended by half-sample symmetric padding, as
    :func:`motion_blur`.

    Args:
        image: H x W x C (C <= 4) or H x W float array in [0, 1].
        length: motion length in pixels, an (H, W) map or a number, within [0, 512].
        angle_deg: motion direction, degrees counterclockwise from +x as displayed, an (H, W) map
            or a number.
        length_bank: lengths in the bank, 2..64.
        angle_bank: directions in the bank, 1..64.

    Returns:
        float32 array of ``image``'s shape, in [0, 1].
    """
    hwc = as_hwc(image)
    h, w = hwc.shape[:2]
    length = np.broadcast_to(as_level(length, (h, w), "length", MAX_BLUR), (h, w))
    angle_map = np.broadcast_to(np.asarray(angle_deg, dtype=np.float64), (h, w))
    if not np.isfinite(angle_map).all():
        raise ValueError("angle_deg must be finite")
    nl, na = integer(length_bank, "length_bank"), integer(angle_bank, "angle_bank")
    if not 2 <= nl <= MAX_BANK or not 1 <= na <= MAX_BANK:
        raise ValueError(f"length_bank must lie in [2, {MAX_BANK}] and angle_bank in [1, {MAX_BANK}], got {nl}, {na}")
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    lengths, l_index = _bank(length, nl)
    angles, a_index = _angle_bank_weights(angle_map, na)
    l_index_t, a_index_t = torch.from_numpy(l_index), torch.from_numpy(a_index)
    out = torch.zeros(chw.shape, dtype=torch.float32)
    spectrum = _Spectrum(chw, kernel_radius(float(lengths[-1]))) if lengths[-1] > 0 else None
    for i, li in enumerate(lengths):
        w_len = (1.0 - (l_index_t - i).abs()).clamp_(min=0.0)
        if not bool((w_len > 0).any()):
            continue
        if li == 0.0:
            out.addcmul_(torch.from_numpy(chw), w_len)
            continue
        for j, aj in enumerate(angles):
            # Circular distance in bank steps: index na - 0.3 lies 0.3 from member 0.
            d = (a_index_t - j).abs()
            w_ang = (1.0 - torch.minimum(d, na - d)).clamp_(min=0.0) if na > 1 else torch.ones_like(d)
            weight = w_len * w_ang
            if not bool((weight > 0).any()):
                continue
            out.addcmul_(spectrum.convolve(motion_kernel(float(li), float(aj))), weight)
    out.clamp_(0.0, 1.0)
    return np.ascontiguousarray(out.numpy().transpose(1, 2, 0)).reshape(image.shape)
