"""Argument checks shared by the degradations: numbers, seeds, patterns, images and level maps."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Literal

import numpy as np

from .._util import Hint, hinted

Pattern = Literal["uniform", "ramp", "step", "blobs"]
PATTERNS: tuple[str, ...] = ("uniform", "ramp", "step", "blobs")

MAX_SIGMA = 255.0
MAX_BLUR = 512.0
MAX_BANK = 64


def real(value: Any, name: str) -> float:
    """``value`` as a finite float; bools and non-numbers are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def integer(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None


def check_seed(seed: Any) -> int:
    s = integer(seed, "seed")
    if s < 0:
        raise ValueError(f"seed must be >= 0, got {s}")
    return s


def check_pattern(pattern: Any, name: str) -> str:
    if pattern not in PATTERNS:
        raise ValueError(f"{name} must be one of {', '.join(PATTERNS)}; got {pattern!r}")
    return pattern


def check_range(low: float, high: float, name: str, lo: float, hi: float) -> None:
    """``low <= high`` within ``[lo, hi]``; errors name the range as ``Degradation``'s fields
    ``<name>_min``/``<name>_max`` do (a hint, so the command line names its flag)."""
    if low < lo or high > hi:
        raise hinted(ValueError,
                     Hint("Degradation", name, "", f" must lie in [{lo:g}, {hi:g}], got [{low:g}, {high:g}]"))
    if low > high:
        raise hinted(ValueError, Hint("Degradation", name, "", f": min {low:g} exceeds max {high:g}"))


def check_size(height: Any, width: Any) -> tuple[int, int]:
    h, w = integer(height, "height"), integer(width, "width")
    if h < 1 or w < 1:
        raise ValueError(f"height and width must be >= 1, got {h} x {w}")
    return h, w


def as_hwc(image: Any, name: str = "image") -> np.ndarray:
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


def as_level(value: float | np.ndarray, shape: tuple[int, int], name: str, vmax: float) -> np.ndarray | float:
    """A scalar level as a float, or an H x W map as float64, checked against [0, vmax]."""
    if isinstance(value, np.ndarray):
        if value.shape != shape:
            raise ValueError(f"{name} map must have shape {shape}, got {tuple(value.shape)}")
        m = value.astype(np.float64, copy=False)
        if not np.isfinite(m).all() or m.min() < 0 or m.max() > vmax:
            raise ValueError(f"{name} map must be finite and within [0, {vmax:g}]")
        return m
    v = real(value, name)
    if not 0 <= v <= vmax:
        raise ValueError(f"{name} must lie in [0, {vmax:g}], got {v:g}")
    return v
