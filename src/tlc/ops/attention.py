"""Transposed (channel) self-attention, global and on a grid of local windows (Restormer's MDTA).

In the global block each head attends across channels: q and k are L2-normalised over all pixels,
``attn = softmax(q k^T * temperature)`` is a (d x d) matrix per head, and ``out = attn v``. The
statistic ``q k^T`` sums over the whole map, so it is a global op. The local version splits the
map into a grid of overlapping windows about the training size, runs the block in each window and
averages the window outputs where they overlap (the reference's placement, described in
:func:`window_starts`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import Pair, as_pair, check_feature_map


def window_starts(size: int, window: int) -> list[int]:
    """Start offsets of the windows that cover ``[0, size)`` along one axis.

    With ``k = min(size, window)`` and ``n = ceil(size / k)``, starts step by
    ``s = ceil((size - k) / (n - 1))`` (``s = k`` when ``n = 1``); the first window that would reach
    or pass the end is moved to ``size - k`` and is the last one.

    >>> window_starts(10, 4)
    [0, 3, 6]
    >>> window_starts(7, 8)
    [0]
    """
    if size < 1 or window < 1:
        raise ValueError(f"size and window must be >= 1, got {size} and {window}")
    k = min(size, window)
    n = -(-size // k)
    step = k if n == 1 else -(-(size - k) // (n - 1))
    starts, i = [], 0
    while i + k < size:
        starts.append(i)
        i += step
    starts.append(size - k)
    return starts


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    n, c, h, w = t.shape
    if c % num_heads:
        raise ValueError(f"channels ({c}) must be divisible by num_heads ({num_heads})")
    return t.reshape(n, num_heads, c // num_heads, h, w)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Core of the block on (..., heads, d, pixels) tensors; temperature broadcasts as (heads, 1, 1)."""
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    return attn.softmax(dim=-1) @ v


def transposed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """Global transposed attention over the whole map (without Restormer's input/output convs).

    Args:
        q, k, v: (N, C, H, W) each; C divisible by ``num_heads``.
        temperature: (num_heads, 1, 1) per-head scale, or anything that reshapes to it.
        num_heads: number of heads; each attends over ``d = C / num_heads`` channels.

    Returns:
        (N, C, H, W) tensor.
    """
    check_feature_map(q, "q")
    n, c, h, w = q.shape
    out = _attend(
        _heads(q, num_heads).flatten(3),
        _heads(k, num_heads).flatten(3),
        _heads(v, num_heads).flatten(3),
        temperature.reshape(num_heads, 1, 1),
    )
    return out.reshape(n, c, h, w)


def local_transposed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    temperature: torch.Tensor,
    num_heads: int,
    window: int | Pair,
) -> torch.Tensor:
    """Transposed attention run separately in each window of a grid, overlaps averaged.

    Windows of ``min(window, map)`` pixels are placed by :func:`window_starts` on each axis; in
    each, q and k are normalised over the window's pixels and the global block runs as in
    :func:`transposed_attention`. Each pixel's output is the mean of the outputs of the windows
    that cover it. A window covering the map is the global block. All windows are processed in
    one batched computation (no loop over windows), for any batch size.

    Args:
        q, k, v: (N, C, H, W) each.
        temperature: (num_heads, 1, 1) per-head scale.
        num_heads: number of heads.
        window: (kh, kw) in pixels of the map.

    Returns:
        (N, C, H, W) tensor.
    """
    check_feature_map(q, "q")
    n, c, h, w = q.shape
    kh, kw = as_pair(window, "window")
    rows, cols = window_starts(h, kh), window_starts(w, kw)
    if len(rows) == 1 and len(cols) == 1:
        return transposed_attention(q, k, v, temperature, num_heads)
    k1, k2 = min(h, kh), min(w, kw)
    device = q.device
    row_index = torch.tensor(rows, device=device)[:, None] + torch.arange(k1, device=device)  # (nr, k1)
    col_index = torch.tensor(cols, device=device)[:, None] + torch.arange(k2, device=device)  # (nc, k2)
    nr, nc = len(rows), len(cols)

    def windows(t: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, nr, nc, heads, d, k1 * k2)
        t = _heads(t, num_heads)[:, :, :, row_index][..., col_index]  # (N, heads, d, nr, k1, nc, k2)
        return t.permute(0, 3, 5, 1, 2, 4, 6).reshape(n, nr, nc, num_heads, c // num_heads, k1 * k2)

    out = _attend(windows(q), windows(k), windows(v), temperature.reshape(num_heads, 1, 1))
    out = out.reshape(n, nr, nc, c, k1, k2).permute(0, 3, 1, 4, 2, 5)  # (N, C, nr, k1, nc, k2)
    pixel = (row_index[:, :, None, None] * w + col_index[None, None]).reshape(-1)
    total = q.new_zeros(n, c, h * w).index_add_(2, pixel, out.reshape(n, c, -1))
    ones = torch.ones(1, dtype=q.dtype, device=device)
    cover_h = q.new_zeros(h).index_add_(0, row_index.reshape(-1), ones.expand(nr * k1))
    cover_w = q.new_zeros(w).index_add_(0, col_index.reshape(-1), ones.expand(nc * k2))
    return total.view(n, c, h, w) / (cover_h[:, None] * cover_w[None, :])
