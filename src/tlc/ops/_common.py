"""Small helpers shared by the ops: argument checks and the accumulation dtype."""

from __future__ import annotations

import operator

import torch

Pair = tuple[int, int]


def as_pair(value: int | tuple[int, int] | list[int], name: str) -> Pair:
    """Return ``(a, b)`` from an int or a pair of ints, each at least 1."""
    items = (value, value) if not isinstance(value, (tuple, list, torch.Size)) else tuple(value)
    try:
        if len(items) != 2 or any(isinstance(v, bool) for v in items):
            raise TypeError
        pair = (operator.index(items[0]), operator.index(items[1]))
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be at least 1 on both axes, got {pair}")
    return pair


def check_feature_map(x: torch.Tensor, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a floating (N, C, H, W) tensor with H, W >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have H, W >= 1, got {tuple(x.shape)}")


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype local sums are accumulated in.

    float64 everywhere it exists: float32 prefix sums over a 4K map reach ~1e8, where one float32
    step is 8, so window differences lose four or more digits. Apple's MPS has no float64.
    """
    return torch.float32 if x.device.type == "mps" else torch.float64


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype elementwise work is done in: at least float32, so half inputs keep their digits."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
