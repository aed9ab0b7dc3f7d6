"""Local reductions along one axis of a tensor of any rank, and the block scans behind them.

Placement is that of :func:`tlc.local_mean` on one axis: a window of ``k`` consecutive entries is
evaluated wherever it lies fully inside the axis (``L - k + 1`` positions), and the results are
edge-replicated back to ``L`` with ``(k-1)//2`` before and ``k//2`` after; ``k`` is clamped to
``L``, so a window covering the axis gives the reduction over the whole axis.

Windows that cannot be had by a difference of prefix sums (maxima; softmax weights spanning more
than the float range) use van Herk / Gil-Werman blocks: cut the axis into blocks of ``k``; a window
starting at ``s`` is the suffix of its block from ``s`` joined with the prefix of the next block up
to ``s + k - 1``. Scans within blocks (prefix and suffix) give every window with one combination,
O(1) work per entry whatever ``k``, and nothing is subtracted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._common import accumulation_dtype
from ._kernels import fused_local_mean, fused_local_mean_available
from .pool import sliding_sum


def check_axis(x: torch.Tensor, window: int, dim: int) -> tuple[int, int]:
    """Validate a floating tensor, an int window >= 1 and a dim; return (dim >= 0, clamped window)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {window!r}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if not -x.dim() <= dim < x.dim():
        raise IndexError(f"dim {dim} out of range for a tensor of {x.dim()} dimensions")
    dim %= x.dim()
    if x.shape[dim] < 1:
        raise ValueError(f"x must have at least one entry along dim {dim}, got {tuple(x.shape)}")
    return dim, min(window, x.shape[dim])


def replicate_along(valid: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Edge-replicate ``valid`` (``L - k + 1`` entries along ``dim``) back to ``length`` entries:
    ``(k-1)//2`` copies of the first entry before, ``k//2`` of the last after."""
    have = valid.shape[dim]
    if have == length:
        return valid
    before = (length - have) // 2
    after = length - have - before
    sizes = list(valid.shape)
    parts = []
    if before:
        sizes[dim] = before
        parts.append(valid.narrow(dim, 0, 1).expand(sizes))
    parts.append(valid)
    if after:
        sizes[dim] = after
        parts.append(valid.narrow(dim, have - 1, 1).expand(sizes))
    return torch.cat(parts, dim=dim)


Scan = Callable[[torch.Tensor, int], torch.Tensor]
Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def block_window_scan(t: torch.Tensor, k: int, dim: int, scan: Scan, combine: Combine) -> torch.Tensor:
    """Reduce every window of ``k`` consecutive entries along ``dim`` lying inside the axis.

    ``scan(blocks, d)`` is an inclusive scan along ``d`` (cumulative max, sum, log-sum-exp) and
    ``combine`` the matching associative binary op; window ``s`` is ``combine(suffix scan at s,
    prefix scan at s + k - 1)``, except at block starts, where the suffix alone is the window (the
    prefix would count the block twice). Returns ``L - k + 1`` entries along ``dim`` (``1 <= k <= L``).
    """
    dim %= t.dim()
    length = t.shape[dim]
    if k == 1:
        return t
    shape = t.shape
    pre = 1
    for n in shape[:dim]:
        pre *= n
    post = 1
    for n in shape[dim + 1 :]:
        post *= n
    flat = t.reshape(pre, length, post)
    blocks = -(-length // k)
    padded = blocks * k
    if padded != length:
        # The padding only ever reaches suffixes of the last, partial block, which no valid window
        # uses (a window starting there would end past the axis); repeating an entry keeps it finite.
        flat = torch.cat([flat, flat[:, -1:].expand(pre, padded - length, post)], dim=1)
    grid = flat.view(pre, blocks, k, post)
    prefix = scan(grid, 2).reshape(pre, padded, post)
    suffix = scan(grid.flip(2), 2).flip(2).reshape(pre, padded, post)
    count = length - k + 1
    out = combine(suffix[:, :count], prefix[:, k - 1 : k - 1 + count])
    out[:, ::k] = suffix[:, :count:k]
    return out.reshape(*shape[:dim], count, *shape[dim + 1 :])


def valid_axis_mean(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Means of every window of ``window`` entries along ``dim`` lying inside the axis
    (``L - k + 1`` entries along ``dim``, k clamped to L), dtype of ``x``, float64 sums."""
    dim, k = check_axis(x, window, dim)
    return (sliding_sum(x, k, dim, accumulation_dtype(x)) / k).to(x.dtype)


def local_axis_mean(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Mean over a local window along one axis: the local form of ``x.mean(dim, keepdim=True)``.

    Coordinate attention's strip pool ``AdaptiveAvgPool2d((None, 1))`` (a mean over W) becomes
    ``local_axis_mean(x, kw, -1)``; ``((1, None))`` becomes ``local_axis_mean(x, kh, -2)``.

    Args:
        x: floating tensor of any rank (e.g. (N, C, H, W) maps, (N, L, C) tokens), any dtype.
        window: k, number of consecutive entries along ``dim`` (clamped to the axis length L).
        dim: the axis to average over.

    Returns:
        Tensor of the shape and dtype of ``x``: entry ``i`` along ``dim`` holds the mean of the
        window placed as in :func:`tlc.local_mean` (valid windows, edge-replicated). Sums are
        accumulated in float64 (``accumulation_dtype``), so the only error is the final rounding.
        NaN or inf in a window gives NaN/inf there (and, through the running sums, possibly in
        later windows of the same line).
    """
    dim, k = check_axis(x, window, dim)
    length = x.shape[dim]
    if k == length:
        mean = x.sum(dim=dim, keepdim=True, dtype=accumulation_dtype(x)) / length
        return mean.to(x.dtype).expand(x.shape).contiguous()
    if fused_local_mean_available(x) and x.numel() > 0:
        # The fused 2-D kernel with a window of one entry on the other axis: (pre, L, post) maps.
        pre = 1
        for n in x.shape[:dim]:
            pre *= n
        post = 1
        for n in x.shape[dim + 1 :]:
            post *= n
        if post == 1:  # along the last axis: (rows, L) maps, a window of one row
            rows = x.shape[dim - 1] if dim > 0 else 1
            out = fused_local_mean(x.reshape(1, pre // rows, rows, length), (1, k))
        else:
            out = fused_local_mean(x.reshape(1, pre, length, post), (k, 1))
        return out.reshape(x.shape)
    return replicate_along(valid_axis_mean(x, k, dim), length, dim)
