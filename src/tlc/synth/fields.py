"""Level maps: a value per pixel between ``low`` and ``high``, uniform or varying across the frame
(the patterns of the package docstring: uniform, ramp, step, blobs)."""

from __future__ import annotations

import math

import numpy as np

from .checks import Pattern, check_pattern, check_size, integer, real

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


def motion_field(
    height: int,
    width: int,
    max_length: float,
    rng: np.random.Generator,
    *,
    camera: str = "affine",
    objects: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A per-pixel motion during the exposure: (length map in pixels, direction map in degrees).

    The displacement of the scene point at pixel p is ``d(p) = t + M (p - c)``: a translation ``t``
    (camera shake) plus, for ``camera="affine"``, an in-plane rotation and a zoom about a centre
    ``c`` uniform over the frame grown by 25% each side, ``M = [[s, -r], [r, s]]`` with rotation
    ``r`` and zoom ``s`` uniform in [-1, 1] and ``t`` of a uniform direction and a magnitude
    uniform in [0, 1], both in units of the longer side. ``camera="uniform"`` keeps only ``t``
    (one length and direction everywhere). The field is then scaled so that its largest length
    over the frame is ``max_length`` times a factor uniform in [0.4, 1]. ``objects`` moving
    objects (soft discs, radius 8-25% of the longer side, edge about 2% of it) each replace the
    field under them by their own displacement, of a uniform direction and a length uniform in
    [0, max_length].

    Args:
        height, width: map size in pixels.
        max_length: the largest motion length in pixels, >= 0.
        rng: source of every draw.
        camera: ``"affine"`` (length and direction vary across the frame) or ``"uniform"``.
        objects: number of moving objects, >= 0.

    Returns:
        ``(length, angle_deg)``: (H, W) float64 maps; length in [0, max_length], angle in
        [0, 180) counterclockwise from +x as displayed (a line kernel at a + 180 is the one at a).
    """
    h, w = check_size(height, width)
    top = real(max_length, "max_length")
    if top < 0:
        raise ValueError(f"max_length must be >= 0, got {top:g}")
    if camera not in ("affine", "uniform"):
        raise ValueError(f"camera must be 'affine' or 'uniform', got {camera!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    side = max(h, w)
    # Pixel centres in units of the longer side; y grows downwards (rows).
    x = ((np.arange(w, dtype=np.float64) + 0.5) / side)[None, :]
    y = ((np.arange(h, dtype=np.float64) + 0.5) / side)[:, None]
    phi = rng.uniform(0.0, 2 * math.pi)
    t = rng.uniform(0.0, 1.0) * np.array([math.cos(phi), math.sin(phi)])
    dx = np.full((h, w), t[0])
    dy = np.full((h, w), t[1])
    if camera == "affine":
        cx = rng.uniform(-0.25, w / side + 0.25)
        cy = rng.uniform(-0.25, h / side + 0.25)
        r, s = rng.uniform(-1.0, 1.0, 2)
        dx = dx + s * (x - cx) - r * (y - cy)
        dy = dy + r * (x - cx) + s * (y - cy)
    peak = float(np.hypot(dx, dy).max())
    scale = top * rng.uniform(0.4, 1.0) / peak if peak > 0 else 0.0
    dx, dy = dx * scale, dy * scale
    for _ in range(integer(objects, "objects")):
        radius = rng.uniform(0.08, 0.25)
        ox, oy = rng.uniform(0.0, w / side), rng.uniform(0.0, h / side)
        mask = np.clip((radius - np.hypot(x - ox, y - oy)) / 0.02 + 0.5, 0.0, 1.0)
        psi = rng.uniform(0.0, 2 * math.pi)
        length = rng.uniform(0.0, top)
        dx = dx * (1 - mask) + mask * length * math.cos(psi)
        dy = dy * (1 - mask) + mask * length * math.sin(psi)
    lengths = np.clip(np.hypot(dx, dy), 0.0, top)
    # Displayed angles count upwards, rows downwards.
    angles = np.mod(np.degrees(np.arctan2(-dy, dx)), 180.0)
    return lengths, angles
