"""Level maps: a value per pixel between ``low`` and ``high``, uniform or varying across the frame
(the patterns of the package docstring: uniform, ramp, step, blobs)."""

from __future__ import annotations

import math

import numpy as np

from .checks import Pattern, check_pattern, check_size, real

_BLOB_COUNT = (3, 6)
_BLOB_WIDTH = (0.1, 0.3)
_BLOB_MARGIN = 0.1


def direction(angle_deg: float) -> tuple[float, float]:
    """(cos, sin) of an angle in degrees, snapped so that multiples of 90 give exact 0 and +-1."""
    r = math.radians(angle_deg)
    return round(math.cos(r), 12) + 0.0, round(math.sin(r), 12) + 0.0


def pattern_angle(pattern: str, angle_deg: float | None, rng: np.random.Generator) -> float | None:
    """The ramp/step angle: the one given, or one drawn uniform in [0, 360); None for others."""
    if pattern not in ("ramp", "step"):
        return None
    return float(rng.uniform(0.0, 360.0)) if angle_deg is None else real(angle_deg, "angle_deg")


def _centred_coordinate(height: int, width: int, angle_deg: float) -> np.ndarray:
    """(H, W) float64 position of each pixel centre along the angle, 0 at the image centre."""
    c, s = direction(angle_deg)
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
    check_pattern(pattern, "pattern")
    h, w = check_size(height, width)
    lo, hi = real(low, "low"), real(high, "high")
    if lo > hi:
        raise ValueError(f"low {lo:g} exceeds high {hi:g}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if pattern == "uniform":
        return np.full((h, w), float(rng.uniform(lo, hi)))
    if pattern == "blobs":
        return _rescale(_blobs(h, w, rng), lo, hi)
    angle = pattern_angle(pattern, angle_deg, rng)
    u = _centred_coordinate(h, w, angle)
    if pattern == "ramp":
        return _rescale(u, lo, hi)
    return np.where(u > 0, hi, lo)
