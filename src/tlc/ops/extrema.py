"""Local maxima: the stand-in for global max pooling (CBAM's ``AdaptiveMaxPool2d(1)``, ``amax``).

Windows are placed as in :func:`tlc.local_mean`. A window's maximum is computed with van Herk /
Gil-Werman blocks (see :mod:`tlc.ops.axis`): prefix and suffix running maxima within blocks of the
window's length, one ``maximum`` per output, so the cost per pixel does not grow with the window.
A 2-D window's maximum is the maximum over its rows of the rows' maxima: along W, then along H.
On the CPU without autograd a compiled kernel runs the same blocks (``_local_kernels``); the torch
form (``cummax`` on padded blocks) is differentiable and runs on any device. Maxima are exact in
every dtype (nothing is rounded).
"""

from __future__ import annotations

import torch

from ._common import Pair, as_pair, check_feature_map
from ._local_kernels import fused_local_max, local_kernels_apply
from .axis import block_window_scan, check_axis, replicate_along
from .pool import clamp_window, replicate_to


def _cummax(t: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cummax(t, dim).values


def valid_axis_max(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Maxima of every window of ``window`` entries along ``dim`` lying inside the axis: ``L - k + 1``
    entries along ``dim`` (k clamped to L), dtype of ``x``. NaN in a window gives NaN."""
    dim, k = check_axis(x, window, dim)
    if k == x.shape[dim]:
        return x.amax(dim=dim, keepdim=True)
    return block_window_scan(x, k, dim, _cummax, torch.maximum)


def local_axis_max(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Maximum over a local window along one axis: the local form of ``x.amax(dim, keepdim=True)``.

    Args:
        x: floating tensor of any rank, any floating dtype.
        window: k, number of consecutive entries along ``dim`` (clamped to the axis length L).
        dim: the axis to take maxima over.

    Returns:
        Tensor of the shape and dtype of ``x``; windows placed as in :func:`tlc.local_mean` (valid
        windows, edge-replicated). O(1) work per entry whatever k. Differentiable (the gradient
        goes to the maximal entry; ties split it as ``torch.maximum`` does). NaN propagates like
        ``torch.amax``: a window holding a NaN gives NaN, other windows are unaffected.
    """
    dim, k = check_axis(x, window, dim)
    length = x.shape[dim]
    if k < length and x.numel() > 0 and local_kernels_apply(x):
        # The 2-D kernel with a window of one entry across: (rows, L) or (L, post) planes.
        pre = 1
        for n in x.shape[:dim]:
            pre *= n
        post = x.numel() // (pre * length)
        if post > 1:
            return fused_local_max(x.reshape(pre, length, post), (k, 1)).reshape(x.shape)
        rows = x.shape[dim - 1] if dim > 0 else 1
        return fused_local_max(x.reshape(pre // rows, rows, length), (1, k)).reshape(x.shape)
    valid = valid_axis_max(x, k, dim)
    if valid.shape[dim] == 1:
        return valid.expand(x.shape).contiguous()
    return replicate_along(valid, x.shape[dim], dim)


def valid_local_max(x: torch.Tensor, window: int | Pair) -> torch.Tensor:
    """Maxima over every window lying fully inside the map: :func:`local_max` before the edge
    replication (``tlc.ops.pool.replicate_to`` completes it). Pointwise layers applied to this
    smaller map and then replicated give the same result as on the full map, for less work.

    Args:
        x: (N, C, H, W) floating tensor.
        window: (kh, kw), clamped to the map.

    Returns:
        (N, C, H - kh + 1, W - kw + 1) tensor, dtype of ``x``.
    """
    check_feature_map(x)
    n, c, h, w = x.shape
    kh, kw = clamp_window(as_pair(window, "window"), (h, w))
    if (kh, kw) != (h, w) and local_kernels_apply(x):
        return fused_local_max(x.reshape(n * c, h, w), (kh, kw), valid_only=True).view(n, c, h - kh + 1, w - kw + 1)
    return valid_axis_max(valid_axis_max(x, kw, -1), kh, -2)


def local_max(x: torch.Tensor, window: int | Pair) -> torch.Tensor:
    """Maximum over a local window around each pixel: TLC's replacement for global max pooling.

    Args:
        x: (N, C, H, W) floating tensor, any floating dtype.
        window: (kh, kw) in pixels of ``x`` (an int means square), each clamped to the map. A window
            covering the map gives ``x.amax((2, 3), keepdim=True)`` at every pixel.

    Returns:
        (N, C, H, W) tensor, dtype of ``x``: each pixel holds the maximum of the window placed as
        in :func:`tlc.local_mean`. Computed as axis maxima along W then H (van Herk / Gil-Werman,
        O(1) per pixel). NaN propagates like ``torch.amax`` (only windows holding it are NaN).
    """
    check_feature_map(x)
    n, c, h, w = x.shape
    kh, kw = clamp_window(as_pair(window, "window"), (h, w))
    if (kh, kw) != (h, w) and local_kernels_apply(x):
        return fused_local_max(x.reshape(n * c, h, w), (kh, kw)).view(n, c, h, w)
    valid = valid_axis_max(valid_axis_max(x, kw, -1), kh, -2)
    return replicate_to(valid, x.shape[-2:])
