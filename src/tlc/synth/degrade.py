"""The whole degradation: a frozen :class:`Degradation`, the maps drawn from it, noise, and
:func:`degrade`, which applies blur, noise and clipping and returns a JSON-able record."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .blur import blur_chw
from .checks import (
    MAX_BANK,
    MAX_BLUR,
    MAX_SIGMA,
    Pattern,
    as_hwc,
    as_level,
    check_pattern,
    check_range,
    check_seed,
    check_size,
    integer,
    real,
)
from .fields import level_map, pattern_angle

RECORD_FORMAT = "tlc.synth/1"


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
            object.__setattr__(self, name, real(getattr(self, name), name))
        for name in ("noise_pattern_angle", "blur_pattern_angle"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, real(getattr(self, name), name))
        check_pattern(self.noise_pattern, "noise_pattern")
        check_pattern(self.blur_pattern, "blur_pattern")
        check_range(self.noise_sigma_min, self.noise_sigma_max, "noise_sigma", 0.0, MAX_SIGMA)
        check_range(self.blur_length_min, self.blur_length_max, "blur_length", 0.0, MAX_BLUR)
        check_range(self.blur_angle_min, self.blur_angle_max, "blur_angle", -math.inf, math.inf)
        if not 0.0 <= self.noise_shot_fraction <= 1.0:
            raise ValueError(f"noise_shot_fraction must lie in [0, 1], got {self.noise_shot_fraction:g}")
        if not self.blur_gamma > 0.0:
            raise ValueError(f"blur_gamma must be > 0, got {self.blur_gamma:g}")
        bank = integer(self.blur_bank_size, "blur_bank_size")
        if not 2 <= bank <= MAX_BANK:
            raise ValueError(f"blur_bank_size must lie in [2, {MAX_BANK}], got {bank}")
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
    hwc = as_hwc(image)
    sigma = as_level(sigma, hwc.shape[:2], "sigma", MAX_SIGMA)
    f = real(shot_fraction, "shot_fraction")
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
    h, w = check_size(height, width)
    blur_rng, noise_map_rng, _ = _streams(check_seed(seed))
    d = degradation
    blur_angle = float(blur_rng.uniform(d.blur_angle_min, d.blur_angle_max))
    blur_pattern_angle = pattern_angle(d.blur_pattern, d.blur_pattern_angle, blur_rng)
    lengths = level_map(d.blur_pattern, h, w, d.blur_length_min, d.blur_length_max, blur_rng, blur_pattern_angle)
    noise_pattern_angle = pattern_angle(d.noise_pattern, d.noise_pattern_angle, noise_map_rng)
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
    seed = check_seed(seed)
    hwc = as_hwc(sharp, "sharp")
    h, w = hwc.shape[:2]
    maps = draw_maps(degradation, h, w, seed)
    d = degradation

    if float(maps.blur_length.max()) > 0.0:
        chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
        blurred_chw, bank = blur_chw(chw, maps.blur_length, maps.blur_angle_deg, d.blur_bank_size, d.blur_gamma)
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
