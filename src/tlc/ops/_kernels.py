"""A fused CPU kernel for the local mean (numba), used by :func:`tlc.local_mean` when it can be.

The pure-torch path makes several full passes over float64 intermediates; this kernel reads the
map twice and writes the output once, keeping running float64 sums: per plane, a row of column
sums slides down the map (one row added, one removed) and a scalar window sum slides along it.
Running sums drift by at most ~steps x 1e-16 relative, far below float32 resolution. The kernel
is compiled on first use (about 2 s, then cached on disk).
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit, prange
except ImportError:  # the torch path is used instead
    njit = prange = None


def _box_mean_planes(x, k1, k2, out):  # pragma: no cover (compiled by numba)
    """x, out: (P, H, W) arrays; out gets each pixel's local mean (windows k1 x k2, clamped)."""
    planes, h, w = x.shape
    valid_h, valid_w = h - k1 + 1, w - k2 + 1
    top, left = (k1 - 1) // 2, (k2 - 1) // 2
    inv_area = 1.0 / (k1 * k2)
    for p in prange(planes):
        column = np.zeros(w, np.float64)
        for i in range(k1):
            for j in range(w):
                column[j] += x[p, i, j]
        for a in range(valid_h):
            if a > 0:
                for j in range(w):
                    column[j] += np.float64(x[p, a + k1 - 1, j]) - np.float64(x[p, a - 1, j])
            row = a + top
            total = 0.0
            for j in range(k2):
                total += column[j]
            value = total * inv_area
            for j in range(left + 1):
                out[p, row, j] = value
            for b in range(1, valid_w):
                total += column[b + k2 - 1] - column[b - 1]
                out[p, row, left + b] = total * inv_area
            value = out[p, row, left + valid_w - 1]
            for j in range(left + valid_w, w):
                out[p, row, j] = value
        # Edge replication of whole rows above and below the valid band.
        for row in range(top):
            out[p, row, :] = out[p, top, :]
        for row in range(top + valid_h, h):
            out[p, row, :] = out[p, top + valid_h - 1, :]


_compiled = njit(parallel=True, cache=True)(_box_mean_planes) if njit is not None else None


def fused_local_mean_available(x: torch.Tensor) -> bool:
    """Whether :func:`fused_local_mean` applies: numba present, a CPU tensor, no autograd needed."""
    return (
        _compiled is not None
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


def fused_local_mean(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Local mean of a CPU (N, C, H, W) tensor with an already clamped window (kh, kw).

    Half inputs are computed in float32 and rounded back; accumulation is float64 throughout.
    """
    n, c, h, w = x.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    work = work.contiguous()
    out = torch.empty_like(work)
    _compiled(work.view(n * c, h, w).numpy(), window[0], window[1], out.view(n * c, h, w).numpy())
    return out.to(x.dtype)
