"""Independent references for the window tests: each pixel's window cut out by explicit slicing,
placed as tlc places windows (starting (k-1)//2 before the pixel, shifted to lie inside the map)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def brute_force(x: torch.Tensor, window: tuple[int, int], stat: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``stat`` of each pixel's window, the window flattened to the last axis: (N, C, kh * kw) ->
    (N, C). Returns (N, C, H, W)."""
    n, c, h, w = x.shape
    kh, kw = min(window[0], h), min(window[1], w)
    out = torch.empty_like(x)
    for r in range(h):
        for q in range(w):
            top, left = min(max(r - (kh - 1) // 2, 0), h - kh), min(max(q - (kw - 1) // 2, 0), w - kw)
            out[:, :, r, q] = stat(x[:, :, top : top + kh, left : left + kw].flatten(2))
    return out


def image(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform noise of ``shape``, seeded."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
