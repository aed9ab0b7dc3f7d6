"""Synthetic degradations: paired (sharp, blurred + noisy) data from sharp photographs.

The engine behind ``tlc synth``: pure functions on H x W x C float images in [0, 1] (numpy), a
frozen :class:`Degradation` describing what to draw, and a JSON-able record of what was drawn. The
same image, :class:`Degradation` and seed give a bit-identical output on the same platform and
library versions (the record names the numpy and torch versions).

Model (applied in this order):

1. Motion blur by a line kernel (:func:`motion_kernel`) of one angle per image and a length that
   is uniform or varies over the frame (:func:`level_map`), optionally in linear light
   (``blur_gamma``). A varying length is rendered by blending a bank of uniformly blurred images
   (:func:`motion_blur`).
2. Additive Gaussian noise of a per-pixel standard deviation ``sigma`` (0..255 scale), uniform or
   varying over the frame, optionally signal-dependent: the variance at a pixel of clean (blurred)
   value ``s`` in [0, 1] is ``(sigma / 255)^2 * ((1 - f) + f * s)`` with ``f = noise_shot_fraction``
   (a Gaussian stand-in for Poisson-Gaussian sensor noise; ``sigma`` is the std at white). Noise is
   independent per pixel and channel.
3. Clipping to [0, 1], as any stored image is: noise on near-black or near-white pixels is
   truncated (and biased there); the record's ``noise.clipped_fraction`` says how much.

Patterns (:func:`level_map`), each a map between ``low`` and ``high``. Angles are in degrees,
counterclockwise from the +x axis (left to right) as the image is displayed, so 90 points up:

- ``uniform``: one constant drawn uniformly from [low, high] (exactly ``low`` when equal).
- ``ramp``: linear in the coordinate ``u`` along the angle, ``low`` at the pixel centre with the
  smallest ``u`` and ``high`` at the largest (angle 0: low at the left column, high at the right).
- ``step``: ``high`` where ``u > 0`` (u measured from the image centre), ``low`` elsewhere; the
  boundary passes through the centre perpendicular to the angle (angle 0: left half low, right
  half high; a centre column of an odd width is low).
- ``blobs``: a sum of 3 to 6 isotropic Gaussians, with centres uniform over the frame grown by
  10% of its longer side on every side, standard deviations uniform in [0.1, 0.3] of the longer
  side and amplitudes uniform in [-1, 1], min-max rescaled to span [low, high]. Defined in units
  of the longer side, so one seed gives the same layout at any resolution of one aspect ratio.

A ramp or step with no angle given takes one uniform in [0, 360). A map that cannot vary (a ramp
along an axis of one pixel) is ``low`` everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "PATTERNS",
    "Degradation",
    "DegradationMaps",
    "Pattern",
    "degrade",
    "degrade_from_record",
    "draw_maps",
    "level_map",
    "motion_blur",
    "motion_kernel",
    "add_noise",
]

Pattern = Literal["uniform", "ramp", "step", "blobs"]
PATTERNS: tuple[str, ...] = ("uniform", "ramp", "step", "blobs")

RECORD_FORMAT = "tlc.synth/1"

_MAX_SIGMA = 255.0
_MAX_BLUR = 512.0
_MAX_BANK = 64
# Samples per pixel of segment length for the kernel's line integral (midpoint rule): the kernel
# entries are within ~1e-3 relative of the exact integral.
_KERNEL_SAMPLES_PER_PIXEL = 16
_BLOB_COUNT = (3, 6)
_BLOB_WIDTH = (0.1, 0.3)
_BLOB_MARGIN = 0.1


# --------------------------------------------------------------------------------------------
# Argument checks


def _real(value: Any, name: str) -> float:
    """``value`` as a finite float; bools and non-numbers are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def _integer(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None


def _check_seed(seed: Any) -> int:
    s = _integer(seed, "seed")
    if s < 0:
        raise ValueError(f"seed must be >= 0, got {s}")
    return s


def _check_pattern(pattern: Any, name: str) -> str:
    if pattern not in PATTERNS:
        raise ValueError(f"{name} must be one of {', '.join(PATTERNS)}; got {pattern!r}")
    return pattern


def _check_range(low: float, high: float, name: str, lo: float, hi: float) -> None:
    if low < lo or high > hi:
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], got [{low:g}, {high:g}]")
    if low > high:
        raise ValueError(f"{name}: min {low:g} exceeds max {high:g}")


def _check_size(height: Any, width: Any) -> tuple[int, int]:
    h, w = _integer(height, "height"), _integer(width, "width")
    if h < 1 or w < 1:
        raise ValueError(f"height and width must be >= 1, got {h} x {w}")
    return h, w


def _as_hwc(image: Any, name: str = "image") -> np.ndarray:
    """A float32 H x W x C view or copy of an H x W (x C) float image in [0, 1]."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype.kind != "f":
        raise TypeError(f"{name} must be floating in [0, 1], got {image.dtype} (divide uint8 by 255)")
    a = image[:, :, None] if image.ndim == 2 else image
    if a.ndim != 3 or not 1 <= a.shape[2] <= 4:
        hint = " (a C x H x W array? use .transpose(1, 2, 0))" if a.ndim == 3 and a.shape[0] <= 4 else ""
        raise ValueError(f"{name} must be H x W x C (C <= 4) or H x W, got shape {tuple(image.shape)}{hint}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(image.shape)}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinity")
    if a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got [{a.min():g}, {a.max():g}]")
    return a


def _as_level(value: float | np.ndarray, shape: tuple[int, int], name: str, vmax: float) -> np.ndarray | float:
    """A scalar level as a float, or an H x W map as float64, checked against [0, vmax]."""
    if isinstance(value, np.ndarray):
        if value.shape != shape:
            raise ValueError(f"{name} map must have shape {shape}, got {tuple(value.shape)}")
        m = value.astype(np.float64, copy=False)
        if not np.isfinite(m).all() or m.min() < 0 or m.max() > vmax:
            raise ValueError(f"{name} map must be finite and within [0, {vmax:g}]")
        return m
    v = _real(value, name)
    if not 0 <= v <= vmax:
        raise ValueError(f"{name} must lie in [0, {vmax:g}], got {v:g}")
    return v


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Degradation:
    """What to draw for one degraded image. Every ``*_min``/``*_max`` pair is an inclusive range.

    Attributes:
        noise_sigma_min, noise_sigma_max: Gaussian noise std on the 0..255 scale, in [0, 255].
            0 and 0 add no noise.
        noise_pattern: how sigma varies over the frame (see the module docstring): ``"uniform"``
            (one value per image, drawn in the range), ``"ramp"``, ``"step"`` or ``"blobs"``
            (spanning the whole range).
        noise_pattern_angle: degrees for a ramp or step (0: low left, high right; 90: low bottom,
            high top); None draws one per image.
        noise_shot_fraction: f in [0, 1], the signal-dependent share of the variance: var =
            (sigma / 255)^2 ((1 - f) + f s) at clean value s, so sigma is the std at white.
        blur_length_min, blur_length_max: motion length in pixels, in [0, 512]; 0 is no blur.
        blur_pattern: how the length varies over the frame, as for ``noise_pattern``.
        blur_pattern_angle: as ``noise_pattern_angle``, for the blur length map.
        blur_angle_min, blur_angle_max: range of the motion direction in degrees, one angle per
            image; the default 0..180 is any direction (a line kernel at 180 + a is the one at a).
        blur_bank_size: kernels (lengths evenly spaced over the map's range) a varying blur is
            blended from, 2..64.
        blur_gamma: the blur averages ``x ** blur_gamma`` (2.2 for roughly linear light, as
            GoPro's frame averaging); 1 blurs the stored values.
    """

    noise_sigma_min: float = 0.0
    noise_sigma_max: float = 0.0
    noise_pattern: Pattern = "uniform"
    noise_pattern_angle: float | None = None
    noise_shot_fraction: float = 0.0
    blur_length_min: float = 0.0
    blur_length_max: float = 0.0
    blur_pattern: Pattern = "uniform"
    blur_pattern_angle: float | None = None
    blur_angle_min: float = 0.0
    blur_angle_max: float = 180.0
    blur_bank_size: int = 8
    blur_gamma: float = 1.0

    def __post_init__(self) -> None:
        floats = (
            "noise_sigma_min",
            "noise_sigma_max",
            "noise_shot_fraction",
            "blur_length_min",
            "blur_length_max",
            "blur_angle_min",
            "blur_angle_max",
            "blur_gamma",
        )
        for name in floats:
            object.__setattr__(self, name, _real(getattr(self, name), name))
        for name in ("noise_pattern_angle", "blur_pattern_angle"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _real(getattr(self, name), name))
        _check_pattern(self.noise_pattern, "noise_pattern")
        _check_pattern(self.blur_pattern, "blur_pattern")
        _check_range(self.noise_sigma_min, self.noise_sigma_max, "noise_sigma", 0.0, _MAX_SIGMA)
        _check_range(self.blur_length_min, self.blur_length_max, "blur_length", 0.0, _MAX_BLUR)
        if self.blur_angle_min > self.blur_angle_max:
            raise ValueError(f"blur_angle: min {self.blur_angle_min:g} exceeds max {self.blur_angle_max:g}")
        if not 0.0 <= self.noise_shot_fraction <= 1.0:
            raise ValueError(f"noise_shot_fraction must lie in [0, 1], got {self.noise_shot_fraction:g}")
        if not self.blur_gamma > 0.0:
            raise ValueError(f"blur_gamma must be > 0, got {self.blur_gamma:g}")
        bank = _integer(self.blur_bank_size, "blur_bank_size")
        if not 2 <= bank <= _MAX_BANK:
            raise ValueError(f"blur_bank_size must lie in [2, {_MAX_BANK}], got {bank}")
        object.__setattr__(self, "blur_bank_size", bank)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict (floats, ints, strings, None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Degradation:
        """The inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones raise."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Degradation fields: {', '.join(map(str, unknown))}")
        return cls(**data)


@dataclass(frozen=True, eq=False)
class DegradationMaps:
    """What :func:`draw_maps` drew for one image: the per-pixel levels and the angles.

    Attributes:
        blur_length: (H, W) float64 motion length in pixels.
        blur_angle_deg: the motion direction, degrees counterclockwise from +x as displayed.
        blur_pattern_angle_deg: the ramp/step angle of ``blur_length``; None for other patterns.
        noise_sigma: (H, W) float64 noise std on the 0..255 scale (at white if signal-dependent).
        noise_pattern_angle_deg: the ramp/step angle of ``noise_sigma``; None for other patterns.
    """

    blur_length: np.ndarray
    blur_angle_deg: float
    blur_pattern_angle_deg: float | None
    noise_sigma: np.ndarray
    noise_pattern_angle_deg: float | None


# --------------------------------------------------------------------------------------------
# Level maps


def _direction(angle_deg: float) -> tuple[float, float]:
    """(cos, sin) of an angle in degrees, snapped so that multiples of 90 give exact 0 and +-1."""
    r = math.radians(angle_deg)
    return round(math.cos(r), 12) + 0.0, round(math.sin(r), 12) + 0.0


def _pattern_angle(pattern: str, angle_deg: float | None, rng: np.random.Generator) -> float | None:
    """The ramp/step angle: the one given, or one drawn uniform in [0, 360); None for others."""
    if pattern not in ("ramp", "step"):
        return None
    return float(rng.uniform(0.0, 360.0)) if angle_deg is None else _real(angle_deg, "angle_deg")


def _centred_coordinate(height: int, width: int, angle_deg: float) -> np.ndarray:
    """(H, W) float64 position of each pixel centre along the angle, 0 at the image centre."""
    c, s = _direction(angle_deg)
    x = np.arange(width, dtype=np.float64) - (width - 1) / 2
    y = np.arange(height, dtype=np.float64) - (height - 1) / 2
    # Rows grow downwards, so "up" (90 degrees) is -y.
    return x[None, :] * c - y[:, None] * s


def _blobs(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float64 sum of random isotropic Gaussians (unnormalised); see the module docstring."""
    n = int(rng.integers(_BLOB_COUNT[0], _BLOB_COUNT[1] + 1))
    side = max(height, width)
    cx = rng.uniform(-_BLOB_MARGIN, width / side + _BLOB_MARGIN, size=n)
    cy = rng.uniform(-_BLOB_MARGIN, height / side + _BLOB_MARGIN, size=n)
    sd = rng.uniform(*_BLOB_WIDTH, size=n)
    amp = rng.uniform(-1.0, 1.0, size=n)
    x = (np.arange(width, dtype=np.float64) + 0.5) / side
    y = (np.arange(height, dtype=np.float64) + 0.5) / side
    field = np.zeros((height, width))
    for k in range(n):
        gx = np.exp(-((x - cx[k]) ** 2) / (2 * sd[k] ** 2))
        gy = amp[k] * np.exp(-((y - cy[k]) ** 2) / (2 * sd[k] ** 2))
        field += gy[:, None] * gx[None, :]
    return field


def _rescale(field: np.ndarray, low: float, high: float) -> np.ndarray:
    """Min-max map ``field`` onto [low, high]; a constant field becomes ``low``."""
    fmin, fmax = float(field.min()), float(field.max())
    if fmax <= fmin:
        return np.full(field.shape, low)
    t = (field - fmin) / (fmax - fmin)
    return np.clip(low + (high - low) * t, low, high)


def level_map(
    pattern: Pattern,
    height: int,
    width: int,
    low: float,
    high: float,
    rng: np.random.Generator,
    angle_deg: float | None = None,
) -> np.ndarray:
    """A map of levels between ``low`` and ``high`` following ``pattern`` (module docstring).

    Args:
        pattern: ``"uniform"``, ``"ramp"``, ``"step"`` or ``"blobs"``.
        height, width: map size in pixels.
        low, high: finite bounds, ``low <= high``, in the caller's unit (pixels, 0..255 sigma).
        rng: source of the random draws (the constant, the angle, the blobs).
        angle_deg: ramp/step direction in degrees counterclockwise from +x as displayed (0: low on
            the left, high on the right); None draws one uniform in [0, 360). Ignored otherwise.

    Returns:
        (H, W) float64 array within [low, high]. Ramp, step and blobs reach both bounds (unless
        the map cannot vary: a ramp along a one-pixel axis, which gives ``low``).
    """
    _check_pattern(pattern, "pattern")
    h, w = _check_size(height, width)
    lo, hi = _real(low, "low"), _real(high, "high")
    if lo > hi:
        raise ValueError(f"low {lo:g} exceeds high {hi:g}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if pattern == "uniform":
        return np.full((h, w), float(rng.uniform(lo, hi)))
    if pattern == "blobs":
        return _rescale(_blobs(h, w, rng), lo, hi)
    angle = _pattern_angle(pattern, angle_deg, rng)
    u = _centred_coordinate(h, w, angle)
    if pattern == "ramp":
        return _rescale(u, lo, hi)
    return np.where(u > 0, hi, lo)


# --------------------------------------------------------------------------------------------
# Motion blur


def _kernel_radius(length: float) -> int:
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
    length = _real(length, "length")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length:g}")
    angle = _real(angle_deg, "angle_deg")
    r = _kernel_radius(length)
    if size is not None:
        size = _integer(size, "size")
        if size % 2 == 0 or size < 2 * r + 1:
            raise ValueError(f"size must be odd and >= {2 * r + 1} for length {length:g}, got {size}")
    c, s = _direction(angle)
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


def _blur_chw(
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
    radius = _kernel_radius(float(lengths[-1]))
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
    hwc = _as_hwc(image)
    h, w = hwc.shape[:2]
    length = _as_level(length, (h, w), "length", _MAX_BLUR)
    angle = _real(angle_deg, "angle_deg")
    bank = _integer(bank_size, "bank_size")
    if not 2 <= bank <= _MAX_BANK:
        raise ValueError(f"bank_size must lie in [2, {_MAX_BANK}], got {bank}")
    g = _real(gamma, "gamma")
    if not g > 0:
        raise ValueError(f"gamma must be > 0, got {g:g}")
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    out, _ = _blur_chw(chw, length, angle, bank, g)
    return np.ascontiguousarray(out.numpy().transpose(1, 2, 0)).reshape(image.shape)


# --------------------------------------------------------------------------------------------
# Noise


def _noise_hwc(
    clean: np.ndarray, sigma: float | np.ndarray, rng: np.random.Generator, shot_fraction: float
) -> np.ndarray:
    """``clean`` (H x W x C float32 in [0, 1]) plus noise, not yet clipped; draws H*W*C normals."""
    z = rng.standard_normal(clean.shape, dtype=np.float32)
    std = np.asarray(sigma, dtype=np.float32) / np.float32(255.0)
    if std.ndim == 2:
        std = std[:, :, None]
    if shot_fraction > 0.0:
        std = std * np.sqrt(np.float32(1.0 - shot_fraction) + np.float32(shot_fraction) * clean)
    return clean + std * z


def add_noise(
    image: np.ndarray,
    sigma: float | np.ndarray,
    rng: np.random.Generator,
    *,
    shot_fraction: float = 0.0,
) -> np.ndarray:
    """Add Gaussian noise of a uniform or per-pixel std and clip to [0, 1].

    The std at a pixel of value s is ``sigma / 255 * sqrt((1 - f) + f s)`` with f =
    ``shot_fraction`` (sigma is the std at white); samples are independent per pixel and channel,
    drawn as one ``rng.standard_normal(image.shape, dtype=float32)``.

    Args:
        image: H x W x C (C <= 4) or H x W float array in [0, 1].
        sigma: std on the 0..255 scale, a number or an (H, W) map, within [0, 255].
        rng: source of the samples.
        shot_fraction: signal-dependent share of the variance, in [0, 1].

    Returns:
        float32 array of ``image``'s shape, clipped to [0, 1].
    """
    hwc = _as_hwc(image)
    sigma = _as_level(sigma, hwc.shape[:2], "sigma", _MAX_SIGMA)
    f = _real(shot_fraction, "shot_fraction")
    if not 0 <= f <= 1:
        raise ValueError(f"shot_fraction must lie in [0, 1], got {f:g}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    noisy = _noise_hwc(hwc, sigma, rng, f)
    return np.clip(noisy, 0.0, 1.0, out=noisy).reshape(image.shape)


# --------------------------------------------------------------------------------------------
# The whole degradation


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for the blur draws, the noise map and the noise samples.

    Separate streams keep one part's draws unchanged when another part's settings change (the
    same seed gives the same noise whatever the blur).
    """
    children = np.random.SeedSequence(seed).spawn(3)
    blur, noise_map, noise = (np.random.Generator(np.random.PCG64(c)) for c in children)
    return blur, noise_map, noise


def draw_maps(degradation: Degradation, height: int, width: int, seed: int) -> DegradationMaps:
    """The blur length map, blur angle and noise sigma map that :func:`degrade` uses.

    Deterministic in (degradation, size, seed) and cheap (no image work), so a caller can write the
    maps next to the pair without degrading again.
    """
    if not isinstance(degradation, Degradation):
        raise TypeError(f"degradation must be a Degradation, got {type(degradation).__name__}")
    h, w = _check_size(height, width)
    blur_rng, noise_map_rng, _ = _streams(_check_seed(seed))
    d = degradation
    blur_angle = float(blur_rng.uniform(d.blur_angle_min, d.blur_angle_max))
    blur_pattern_angle = _pattern_angle(d.blur_pattern, d.blur_pattern_angle, blur_rng)
    lengths = level_map(d.blur_pattern, h, w, d.blur_length_min, d.blur_length_max, blur_rng, blur_pattern_angle)
    noise_pattern_angle = _pattern_angle(d.noise_pattern, d.noise_pattern_angle, noise_map_rng)
    sigmas = level_map(
        d.noise_pattern, h, w, d.noise_sigma_min, d.noise_sigma_max, noise_map_rng, noise_pattern_angle
    )
    return DegradationMaps(lengths, blur_angle, blur_pattern_angle, sigmas, noise_pattern_angle)


def _stats(m: np.ndarray) -> dict[str, float]:
    return {"min": float(m.min()), "max": float(m.max()), "mean": float(m.mean())}


def degrade(sharp: np.ndarray, degradation: Degradation, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Blur and noise one sharp image as ``degradation`` says, with draws from ``seed``.

    Args:
        sharp: H x W x 3 (or H x W x C with C <= 4, or H x W) float array in [0, 1].
        degradation: what to draw (ranges, patterns, options).
        seed: integer >= 0; everything random follows from it (see :func:`draw_maps`).

    Returns:
        ``(degraded, record)``. ``degraded``: float32 array of ``sharp``'s shape, clipped to [0, 1]
        (quantise for saving, e.g. with :func:`tlc.metrics.to_uint8`). ``record``: a JSON-able dict
        with ``format``, ``seed``, ``size`` [H, W], ``degradation`` (:meth:`Degradation.to_dict`),
        ``blur`` (``angle_deg``, ``pattern_angle_deg``, ``length`` min/max/mean in pixels,
        ``bank_lengths`` actually blended, ``kernel_size``), ``noise`` (``pattern_angle_deg``,
        ``sigma`` min/max/mean on 0..255, ``shot_fraction``, ``clipped_fraction`` of values the
        clipping changed, ``rms`` of the noise finally added on 0..255) and ``versions``. Passing it
        to :func:`degrade_from_record` with the same ``sharp`` returns the identical array.
    """
    if not isinstance(degradation, Degradation):
        raise TypeError(f"degradation must be a Degradation, got {type(degradation).__name__}")
    seed = _check_seed(seed)
    hwc = _as_hwc(sharp, "sharp")
    h, w = hwc.shape[:2]
    maps = draw_maps(degradation, h, w, seed)
    d = degradation

    if float(maps.blur_length.max()) > 0.0:
        chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
        blurred_chw, bank = _blur_chw(chw, maps.blur_length, maps.blur_angle_deg, d.blur_bank_size, d.blur_gamma)
        blurred = np.ascontiguousarray(blurred_chw.numpy().transpose(1, 2, 0))
    else:
        blurred, bank = hwc, {"bank_lengths": [0.0], "kernel_size": 1}

    if float(maps.noise_sigma.max()) > 0.0:
        *_, noise_rng = _streams(seed)
        noisy = _noise_hwc(blurred, maps.noise_sigma, noise_rng, d.noise_shot_fraction)
        clipped = float(np.mean((noisy < 0.0) | (noisy > 1.0)))
        degraded = np.clip(noisy, 0.0, 1.0, out=noisy)
        rms = float(np.sqrt(np.mean(np.square(degraded - blurred, dtype=np.float64)))) * 255.0
    else:
        degraded, clipped, rms = np.array(blurred, dtype=np.float32, copy=True), 0.0, 0.0

    record = {
        "format": RECORD_FORMAT,
        "seed": seed,
        "size": [h, w],
        "degradation": d.to_dict(),
        "blur": {
            "angle_deg": maps.blur_angle_deg,
            "pattern_angle_deg": maps.blur_pattern_angle_deg,
            "length": _stats(maps.blur_length),
            **bank,
        },
        "noise": {
            "pattern_angle_deg": maps.noise_pattern_angle_deg,
            "sigma": _stats(maps.noise_sigma),
            "shot_fraction": d.noise_shot_fraction,
            "clipped_fraction": clipped,
            "rms": rms,
        },
        "versions": {"numpy": np.__version__, "torch": torch.__version__},
    }
    return degraded.reshape(sharp.shape), record


def degrade_from_record(sharp: np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
    """Redo :func:`degrade` from its record (e.g. read back from JSON): the identical output.

    Raises:
        ValueError: the record is not a ``tlc.synth/1`` record, or ``sharp`` has another size.
    """
    if not isinstance(record, Mapping) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a {RECORD_FORMAT} record")
    if list(np.shape(sharp)[:2]) != list(record["size"]):
        raise ValueError(f"record is for a {record['size']} image, got shape {tuple(np.shape(sharp))}")
    degraded, _ = degrade(sharp, Degradation.from_dict(record["degradation"]), record["seed"])
    return degraded
