"""Transposed (channel) self-attention, global and on a grid of local windows (Restormer's MDTA).

In the global block each head attends across channels: q and k are L2-normalised over all pixels,
``attn = softmax(q k^T * temperature)`` is a (d x d) matrix per head, and ``out = attn v``. The
statistic ``q k^T`` sums over the whole map, so it is a global op. The local version splits the
map into a grid of overlapping windows about the training size, runs the block in each window and
averages the window outputs where they overlap (the reference's placement, described in
:func:`window_starts`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ._common import Pair, as_pair, check_feature_map, compute_dtype, cpu_kernel_applies, tracing, unseen_by_tlc_modes

from ._attention_kernels import (
    apply_blocks_kernel, block_statistics_kernel, chunk_for, column_groups, token_application_kernel,
    token_statistics_kernel,
)
from ._numba import parallel_kernel, prange


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


def _segments(size: int, starts: list[int], k: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Cut ``[0, size)`` at every window start and end: the pieces ("segments") each lie wholly
    inside or outside every window. Returns the segments and a (windows, segments) 0/1 matrix."""
    cuts = sorted({0, size, *starts, *(s + k for s in starts)})
    pieces = list(zip(cuts[:-1], cuts[1:]))
    member = torch.tensor([[float(s <= a and b <= s + k) for a, b in pieces] for s in starts])
    return pieces, member


def _block_sums_of_squares_planes(q, k, row_cuts, col_cuts, q_out, k_out):  # pragma: no cover (numba)
    """q, k: (N, C, H, W), any strides. q_out, k_out: (N, C, S, T) float64 get the sums of squares
    over each block [row_cuts[s], row_cuts[s+1]) x [col_cuts[t], col_cuts[t+1]).

    Reads each row once, front to back (block by block it would read short strided runs, 2x
    slower). Sums in float64: exact to ~1e-15 relative, no slower than float32 here."""
    n, c = q.shape[0], q.shape[1]
    segments_r, segments_c = row_cuts.shape[0] - 1, col_cuts.shape[0] - 1
    for p in prange(n * c * segments_r):
        b, ch, s = p // (c * segments_r), (p // segments_r) % c, p % segments_r
        for t in range(segments_c):
            q_out[b, ch, s, t] = 0.0
            k_out[b, ch, s, t] = 0.0
        for y in range(row_cuts[s], row_cuts[s + 1]):
            for t in range(segments_c):
                q_row, k_row = 0.0, 0.0
                for x in range(col_cuts[t], col_cuts[t + 1]):
                    qv, kv = np.float64(q[b, ch, y, x]), np.float64(k[b, ch, y, x])
                    q_row += qv * qv
                    k_row += kv * kv
                q_out[b, ch, s, t] += q_row
                k_out[b, ch, s, t] += k_row


def _block_sums_of_squares_tokens(q, k, row_cuts, col_cuts, q_out, k_out):  # pragma: no cover (numba)
    """:func:`_block_sums_of_squares_planes` for q, k laid out as tokens: (N, H, W, C), the
    channels the fastest axis (DAT's q and k, views of a (N, H * W, 3, heads, d) projection). The
    planes' loop would read a cache line per value there, each line once per channel (103 ms at
    16 x 720 x 1280); here each token's channels are read together, a row of sums per channel.
    The same sums in the same order (each block row's sum over its columns in order, then the
    block's over its rows in order): the same bits."""
    n, c = q.shape[0], q.shape[3]
    segments_r, segments_c = row_cuts.shape[0] - 1, col_cuts.shape[0] - 1
    for p in prange(n * segments_r):
        b, s = p // segments_r, p % segments_r
        q_block = np.zeros((segments_c, c), np.float64)
        k_block = np.zeros((segments_c, c), np.float64)
        q_row = np.empty(c, np.float64)
        k_row = np.empty(c, np.float64)
        for y in range(row_cuts[s], row_cuts[s + 1]):
            for t in range(segments_c):
                q_row[:] = 0.0
                k_row[:] = 0.0
                for x in range(col_cuts[t], col_cuts[t + 1]):
                    q_token, k_token = q[b, y, x], k[b, y, x]
                    for ch in range(c):
                        qv, kv = np.float64(q_token[ch]), np.float64(k_token[ch])
                        q_row[ch] += qv * qv
                        k_row[ch] += kv * kv
                for ch in range(c):
                    q_block[t, ch] += q_row[ch]
                    k_block[t, ch] += k_row[ch]
        for t in range(segments_c):
            for ch in range(c):
                q_out[b, ch, s, t] = q_block[t, ch]
                k_out[b, ch, s, t] = k_block[t, ch]


_compiled_sums_of_squares = (
    parallel_kernel(_block_sums_of_squares_planes)
)
_compiled_sums_of_squares_tokens = parallel_kernel(_block_sums_of_squares_tokens)


def _block_sums_of_squares(
    q: torch.Tensor,
    k: torch.Tensor,
    row_pieces: list[tuple[int, int]],
    col_pieces: list[tuple[int, int]],
    columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of squares of q and k (N, heads, d, H, W) over each block of the segment grid:
    (N, heads, row segments, column segments, d) each, dtype of q. ``columns``: the (W, T)
    membership of ``col_pieces`` where the caller has it already."""
    n, heads, d = q.shape[:3]
    if _all_segments_at_once(q):
        # Every block in a fixed number of calls: squares summed per segment by 0/1 matrices.
        rows = _membership(row_pieces, q.shape[-2], q.device, q.dtype)  # (H, S)
        if columns is None:
            columns = _membership(col_pieces, q.shape[-1], q.device, q.dtype)  # (W, T)
        sums = [torch.einsum("ys,nhdyt->nhstd", rows, t.square() @ columns) for t in (q, k)]
        return sums[0], sums[1]
    fused = (
        _compiled_sums_of_squares is not None
        and cpu_kernel_applies(q, k)
        and q.dtype in (torch.float32, torch.float64)
        and q.dtype == k.dtype
    )
    if not fused:
        # Row norms along the contiguous axis, squared and summed: no temporary the size of the
        # block, 2x faster than Gram diagonals and as accurate (1.8e-7 relative to float64).
        sums = [
            torch.stack([torch.stack([_sum_of_squares(t[..., y0:y1, x0:x1]) for x0, x1 in col_pieces], 2)
                         for y0, y1 in row_pieces], 2)
            for t in (q, k)
        ]
        return sums[0], sums[1]
    # One pass over q and k for all blocks: 2.3x faster than the row norms above.
    cuts = [np.array([0, *(end for _, end in pieces)]) for pieces in (row_pieces, col_pieces)]
    sums = [torch.empty(n, heads * d, len(row_pieces), len(col_pieces), dtype=torch.float64) for _ in range(2)]
    if _laid_out_as_tokens(q) and _laid_out_as_tokens(k):
        _compiled_sums_of_squares_tokens(_as_tokens(q).numpy(), _as_tokens(k).numpy(), *cuts, *(t.numpy() for t in sums))
    else:
        _compiled_sums_of_squares(q.flatten(1, 2).numpy(), k.flatten(1, 2).numpy(), *cuts, *(t.numpy() for t in sums))
    q_sq, k_sq = (t.reshape(n, heads, d, *t.shape[2:]).permute(0, 1, 3, 4, 2).to(q.dtype) for t in sums)
    return q_sq, k_sq


# Blocks whose pixels times channels per head stay below this on average are computed a row of
# blocks at a time. Fitted on 2 threads (720p and 360p maps, 8-48 channels, 1-4 heads, windows
# 12-384): a row of blocks costs ~7 ns per pixel and channel, one block at a time ~3.3 ns plus
# ~60 us of Python per block and head; equal near 16,000 (8 channels, 48-pixel windows: 44 and 50 ms).
_ROWS_BELOW = 16_000


def _one_plane_at_a_time(x: torch.Tensor) -> bool:
    """Whether the block loops run per image and head (CPU, eager) or once for all of them (other
    devices; traced graphs, which must not fix the batch size)."""
    return x.device.type == "cpu" and not tracing()


def _all_segments_at_once(x: torch.Tensor) -> bool:
    """Whether the block statistics and the attention's application run as a fixed number of
    batched calls for all blocks (devices other than the CPU, eager), not a Python loop over
    blocks or rows of blocks: there each call's launch costs more than its arithmetic (an H200
    launched 16,273 kernels for a converted Restormer at 720p against the plain one's 1,849, and
    spent 521 ms against 179 ms of GPU time)."""
    return x.device.type != "cpu" and not tracing()


def _bounds(pieces: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, 1) starts and ends of the segments, on the CPU."""
    return torch.tensor([a for a, _ in pieces])[:, None], torch.tensor([b for _, b in pieces])[:, None]


def _membership(pieces: list[tuple[int, int]], size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(size, segments) 0/1 matrix: entry [i, s] is 1 where position i lies in segment s (built on
    the CPU by a few vector ops, one copy to the device, whatever the number of segments)."""
    starts, ends = _bounds(pieces)
    position = torch.arange(size)
    return ((position >= starts) & (position < ends)).t().to(device=device, dtype=dtype)


def _padded_rows(pieces: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of each row segment padded to the longest one: the (S * L,) row index to gather (the
    segment's last row repeated as padding), the (S, L) mask of real rows, and the (H,) index of
    each row in the gathered (S * L) layout (to put the rows back). Built on the CPU, one copy each."""
    starts, ends = _bounds(pieces)
    longest = int((ends - starts).max())
    rows = starts + torch.arange(longest)  # (S, L)
    real = rows < ends
    gather = torch.minimum(rows, ends - 1).reshape(-1)
    back = real.reshape(-1).nonzero().squeeze(1)  # real rows in order: segment by segment, top down
    return gather.to(device), real.to(device=device, dtype=torch.float32), back.to(device)


def _column_segment(col_pieces: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """(W,) index of the column segment each column lies in."""
    widths = torch.tensor([b - a for a, b in col_pieces])
    return torch.repeat_interleave(torch.arange(len(col_pieces)), widths).to(device)


Padded = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # what _padded_rows returns


def _segment_statistics(
    qh: torch.Tensor, kh: torch.Tensor, row_pieces: list[tuple[int, int]], col_pieces: list[tuple[int, int]], padded: Padded
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block sums of ``q k^T`` and of squares for all blocks at once (qh, kh: (N, heads, d, H, W)):
    (N, heads, S, T, d, d), (N, heads, S, T, d) twice. Rows of each row segment gathered (padded
    with zeros; ``padded`` from :func:`_padded_rows`) so one batched product per column gives every
    row segment's ``q k^T`` there; the columns of a segment summed by a 0/1 matrix (deterministic,
    unlike an indexed add)."""
    w = qh.shape[-1]
    gather, real, _ = padded
    n, heads, d = qh.shape[:3]
    segments, longest = real.shape
    columns = _membership(col_pieces, w, qh.device, qh.dtype)  # (W, T)
    q_rows = qh.index_select(3, gather).view(n, heads, d, segments, longest, w)
    q_rows.mul_(real.view(1, 1, 1, segments, longest, 1).to(qh.dtype))  # padding rows count nothing
    k_rows = kh.index_select(3, gather).view(n, heads, d, segments, longest, w)
    per_column = torch.einsum("nhasyx,nhbsyx->nhsabx", q_rows, k_rows)  # (N, heads, S, d, d, W)
    gram = (per_column @ columns).permute(0, 1, 2, 5, 3, 4)  # (N, heads, S, T, d, d)
    q_sq, k_sq = _block_sums_of_squares(qh, kh, row_pieces, col_pieces, columns)
    return gram, q_sq, k_sq


def _apply_by_segments(
    block_attn: torch.Tensor, vh: torch.Tensor, col_pieces: list[tuple[int, int]], padded: Padded
) -> torch.Tensor:
    """Each block's attention (N, heads, S, T, d, d) applied to its pixels of v (N, heads, d, H, W),
    all blocks at once (rows gathered as ``padded`` says): (N, heads, d, H, W)."""
    n, heads, d, _, w = vh.shape
    gather, real, back = padded
    segments, longest = real.shape
    per_column = block_attn.index_select(3, _column_segment(col_pieces, vh.device))  # (N, heads, S, W, d, d)
    v_rows = vh.index_select(3, gather).view(n, heads, d, segments, longest, w)
    applied = torch.einsum("nhsxab,nhbsyx->nhasyx", per_column, v_rows)  # (N, heads, d, S, L, W)
    return applied.reshape(n, heads, d, segments * longest, w).index_select(3, back)


def _rows_first(x: torch.Tensor, i: int | slice, j: int | slice, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """A block of (N, heads, d, H, W) as (..., hs, d, wt): one matrix per row, a strided view."""
    return x[i, j, :, y0:y1, x0:x1].transpose(-3, -2)


def _planes(x: torch.Tensor, num_heads: int) -> list[tuple[int | slice, int | slice]]:
    """The (image, head) index pairs the block loops run over. On the CPU one image and head at a
    time, so that a block's view has a single batch stride and bmm reads it in place (with image
    and head as batch dimensions matmul first copies the block: 3.6x slower per image at batch 2).
    Elsewhere (traced graphs) one call for all images and heads."""
    if _one_plane_at_a_time(x):
        return [(i, j) for i in range(x.shape[0]) for j in range(num_heads)]
    return [(slice(None), slice(None))]


def _looped_statistics(
    qh: torch.Tensor, kh: torch.Tensor, row_pieces: list[tuple[int, int]], col_pieces: list[tuple[int, int]], by_rows: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_segment_statistics` by Python loops: a row of blocks at a time (``by_rows``: per
    column, then summed per column segment) or one block at a time."""
    n, heads, d = qh.shape[:3]
    gram = qh.new_empty((n, heads, len(row_pieces), len(col_pieces), d, d))
    if by_rows:
        column = _column_segment(col_pieces, qh.device)
        for s, (y0, y1) in enumerate(row_pieces):
            # (N, heads, W, d, rows) @ (N, heads, W, rows, d), each copied contiguous first: on
            # strided views (and in einsum) torch takes a slow path with one head (15x at 720p).
            q_cols = qh[..., y0:y1, :].permute(0, 1, 4, 2, 3).contiguous()
            k_cols = kh[..., y0:y1, :].permute(0, 1, 4, 3, 2).contiguous()
            gram[:, :, s].zero_().index_add_(2, column, q_cols @ k_cols)  # the row's blocks, in place
    else:
        for i, j in _planes(qh, heads):
            for s, (y0, y1) in enumerate(row_pieces):
                for t, (x0, x1) in enumerate(col_pieces):
                    qb, kb = _rows_first(qh, i, j, y0, y1, x0, x1), _rows_first(kh, i, j, y0, y1, x0, x1)
                    gram[i, j, s, t] = (qb @ kb.transpose(-1, -2)).sum(-3)
    q_sq, k_sq = _block_sums_of_squares(qh, kh, row_pieces, col_pieces)
    return gram, q_sq, k_sq


def _looped_application(
    block_attn: torch.Tensor, vh: torch.Tensor, row_pieces: list[tuple[int, int]], col_pieces: list[tuple[int, int]], by_rows: bool
) -> torch.Tensor:
    """:func:`_apply_by_segments` by Python loops, as :func:`_looped_statistics`."""
    out = torch.empty_like(vh)
    if by_rows:
        column = _column_segment(col_pieces, vh.device)
        for s, (y0, y1) in enumerate(row_pieces):
            per_column = block_attn[:, :, s].index_select(2, column)  # (N, heads, W, d, d)
            v_cols = vh[..., y0:y1, :].permute(0, 1, 4, 2, 3).contiguous()  # (N, heads, W, d, rows)
            out[..., y0:y1, :] = (per_column @ v_cols).permute(0, 1, 3, 4, 2)
        return out
    for i, j in _planes(vh, vh.shape[1]):
        for s, (y0, y1) in enumerate(row_pieces):
            for t, (x0, x1) in enumerate(col_pieces):
                applied = block_attn[i, j, s, t].unsqueeze(-3) @ _rows_first(vh, i, j, y0, y1, x0, x1)  # (..., hs, d, wt)
                out[i, j, :, y0:y1, x0:x1] = applied.transpose(-3, -2)
    return out


# Heads of at most this many channels take the compiled block kernels on the CPU. Measured on 2
# threads (stats / application, torch -> kernel): d = 8 at 720x1280, windows 48 and 384: 27 -> 8.5
# and 22 -> 5.7 ms, 17 -> 11 and 8.6 -> 5.4; d = 16 at 360x640: 16 -> 8.5 at window 48 but 6.7 ->
# 17.5 at 384; from d = 24 the kernel is 1.5-8x slower (d * d products a pixel: torch's matrix
# products do those better than numba's loops).
_KERNEL_MAX_CHANNELS = 8


def _kernel_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, work: torch.dtype, d: int) -> bool:
    """Whether the compiled block kernels compute this attention's statistics and application:
    planar maps (rows contiguous, as a convolution's output), not channels-last ones (DAT's
    tokens), which they would first copy (three passes over the maps: DAT 1.04-1.06x slower)."""
    return (
        block_statistics_kernel is not None
        and d <= _KERNEL_MAX_CHANNELS
        and work in (torch.float32, torch.float64)
        and all(t.stride(-1) == 1 for t in (q, k, v))
        and cpu_kernel_applies(q, k, v)
    )


def _cuts(pieces: list[tuple[int, int]]) -> np.ndarray:
    """Segment boundaries: 0, then each segment's end."""
    return np.array([0, *(end for _, end in pieces)])


def _kernel_statistics(
    qh: torch.Tensor, kh: torch.Tensor, row_pieces: list[tuple[int, int]], col_pieces: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_segment_statistics` by the compiled kernel (qh, kh: (N, heads, d, H, W) on the CPU)."""
    n, heads, d, h, w = qh.shape
    planes, rows, cols = n * heads, len(row_pieces), len(col_pieces)
    col_cuts = _cuts(col_pieces)
    # Enough tasks for the threads where there are few planes and row segments (a 360-row map
    # under a 384-row window is one row segment).
    groups = column_groups(col_cuts, -(-2 * torch.get_num_threads() // (planes * rows)))
    gram = torch.empty(planes, rows, cols, d, d, dtype=torch.float64)
    q_sq, k_sq = (torch.empty(planes, rows, cols, d, dtype=torch.float64) for _ in range(2))
    block_statistics_kernel(
        qh.reshape(planes, d, h, w).contiguous().numpy(), kh.reshape(planes, d, h, w).contiguous().numpy(),
        _cuts(row_pieces), col_cuts, groups, chunk_for(d), gram.numpy(), q_sq.numpy(), k_sq.numpy(),
    )
    return (gram.view(n, heads, rows, cols, d, d).to(qh.dtype), q_sq.view(n, heads, rows, cols, d).to(qh.dtype),
            k_sq.view(n, heads, rows, cols, d).to(qh.dtype))


# Channels per head up to which the token kernel computes the statistics: its d x d products a
# token are multiply-adds of d lanes (2 heads of 8 at 720 x 1280, DAT's layout: 25.5 ms against
# the block loop's 56-59 at window 48, 39 at 384; copying q and k to planes for the planes kernel
# took 87 ms, the planes kernel itself 15.6).
_TOKEN_KERNEL_MAX_CHANNELS = 16


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, d, H, W) as (N, H, W, heads * d): a view (channels the fastest axis where x is
    laid out as tokens)."""
    return x.flatten(1, 2).permute(0, 2, 3, 1)


def _laid_out_as_tokens(x: torch.Tensor) -> bool:
    """Whether ``x`` (N, heads, d, H, W) is laid out as tokens: each pixel's channels adjacent (a
    view of a Linear projection's (N, H * W, ...) output, DAT's and Retinexformer's q, k, v)."""
    return x.shape[1] * x.shape[2] > 1 and _as_tokens(x).stride(-1) == 1


def _token_kernel_fits(kernel: Callable | None, tokens: tuple[torch.Tensor, ...], others: tuple[torch.Tensor, ...] = ()) -> bool:
    """Whether a token ``kernel`` (None without numba) takes ``tokens`` (each (N, heads, d, H, W)
    laid out as tokens: each token's channels adjacent, the Linear projections of DAT and
    Retinexformer) and ``others``: narrow heads, float32 / float64 throughout, on the CPU without
    autograd."""
    dtype = tokens[0].dtype
    return (
        kernel is not None
        and tokens[0].shape[2] <= _TOKEN_KERNEL_MAX_CHANNELS
        and dtype in (torch.float32, torch.float64)
        and all(t.dtype == dtype for t in (*tokens, *others))
        and all(_laid_out_as_tokens(t) for t in tokens)
        and cpu_kernel_applies(*tokens, *others)
    )


def _token_kernel_applies(qh: torch.Tensor, kh: torch.Tensor) -> bool:
    """Whether the token kernel computes the block statistics of ``qh``, ``kh`` (N, heads, d, H, W)."""
    return _token_kernel_fits(token_statistics_kernel, (qh, kh))


def _token_kernel_statistics(
    qh: torch.Tensor, kh: torch.Tensor, row_pieces: list[tuple[int, int]], col_pieces: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_segment_statistics` by the token kernel (qh, kh: (N, heads, d, H, W) laid out as
    tokens, on the CPU)."""
    n, heads, d = qh.shape[:3]
    planes, rows, cols = n * heads, len(row_pieces), len(col_pieces)
    gram = torch.empty(planes, rows, cols, d, d, dtype=torch.float64)
    q_sq, k_sq = (torch.empty(planes, rows, cols, d, dtype=torch.float64) for _ in range(2))
    token_statistics_kernel(
        _as_tokens(qh).numpy(), _as_tokens(kh).numpy(), _cuts(row_pieces), _cuts(col_pieces), heads,
        gram.numpy(), q_sq.numpy(), k_sq.numpy(),
    )
    return (gram.view(n, heads, rows, cols, d, d).to(qh.dtype), q_sq.view(n, heads, rows, cols, d).to(qh.dtype),
            k_sq.view(n, heads, rows, cols, d).to(qh.dtype))


def _token_application_applies(block_attn: torch.Tensor, vh: torch.Tensor) -> bool:
    """Whether the token kernel applies the blocks' attention to ``vh`` (N, heads, d, H, W)."""
    return _token_kernel_fits(token_application_kernel, (vh,), (block_attn,))


def _token_kernel_application(
    block_attn: torch.Tensor, vh: torch.Tensor, row_pieces: list[tuple[int, int]], col_pieces: list[tuple[int, int]]
) -> torch.Tensor:
    """:func:`_apply_by_segments` by the token kernel (vh: (N, heads, d, H, W) laid out as tokens,
    on the CPU); the result laid out as ``torch.empty_like(vh)`` lays it out (as the block loop's)."""
    n, heads, d, h, w = vh.shape
    out = torch.empty_like(vh)
    attn_t = block_attn.transpose(-1, -2).reshape(n * heads, *block_attn.shape[2:4], d, d).contiguous()
    token_application_kernel(
        attn_t.numpy(), _as_tokens(vh).numpy(), _cuts(row_pieces), _cuts(col_pieces), heads, _as_tokens(out).numpy(),
    )
    return out


def _kernel_application(
    block_attn: torch.Tensor, vh: torch.Tensor, row_pieces: list[tuple[int, int]], col_pieces: list[tuple[int, int]]
) -> torch.Tensor:
    """:func:`_apply_by_segments` by the compiled kernel (vh: (N, heads, d, H, W) on the CPU)."""
    n, heads, d, h, w = vh.shape
    planes = n * heads
    out = torch.empty(n, heads, d, h, w, dtype=vh.dtype)
    apply_blocks_kernel(
        block_attn.reshape(planes, *block_attn.shape[2:]).contiguous().numpy(),
        vh.reshape(planes, d, h, w).contiguous().numpy(), _cuts(row_pieces), _cuts(col_pieces),
        out.view(planes, d, h, w).numpy(),
    )
    return out


def _sum_of_squares(block: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> (...): sum of squares over the last two axes."""
    return torch.linalg.vector_norm(block, dim=-1).square().sum(-1)


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
    that cover it. A window covering the map is the global block. Any batch size.

    Computed without cutting windows out of the map: the window edges split the map into a grid
    of blocks, each lying wholly inside or outside every window. Per-window statistics (``q k^T``,
    squared norms) are sums of block statistics, and since a pixel's output is
    ``(mean attention of its windows) @ v``, the averaged attention is applied to each block once.
    Work and memory are those of the global block whatever the overlap: no window copies, no
    per-pixel index tensors, no host round trips. The Python loop runs over the blocks (a few
    times the number of windows), each step one matrix product batched over the block's rows,
    reading the block in place: per image and head on the CPU, for all of them at once
    elsewhere. Where blocks are small (their pixels times channels per head under ``_ROWS_BELOW``
    on average, where a block's step would be mostly Python's dispatch), a row of blocks at a time: per-column sums of
    ``q k^T`` summed per column segment, and the attention applied per column. On the CPU without
    autograd the squared norms of all blocks come from one compiled pass (numba). Half inputs are
    computed in float32.

    Args:
        q, k, v: (N, C, H, W) each.
        temperature: (num_heads, 1, 1) per-head scale.
        num_heads: number of heads.
        window: (kh, kw) in pixels of the map.

    Returns:
        (N, C, H, W) tensor, dtype of ``q``.
    """
    with unseen_by_tlc_modes(q, k, v, temperature):
        return _local_transposed_attention(q, k, v, temperature, num_heads, window)


def _local_transposed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor, num_heads: int, window: int | Pair
) -> torch.Tensor:
    check_feature_map(q, "q")
    n, c, h, w = q.shape
    kh, kw = as_pair(window, "window")
    rows, cols = window_starts(h, kh), window_starts(w, kw)
    if len(rows) == 1 and len(cols) == 1:
        return transposed_attention(q, k, v, temperature, num_heads)
    work = compute_dtype(q)
    k1, k2 = min(h, kh), min(w, kw)
    row_pieces, row_member = _segments(h, rows, k1)  # (nr, row segments)
    col_pieces, col_member = _segments(w, cols, k2)  # (nc, column segments)
    row_member = row_member.to(device=q.device, dtype=work)
    col_member = col_member.to(device=q.device, dtype=work)
    qh, kh_, vh = (_heads(t, num_heads).to(work) for t in (q, k, v))  # (N, heads, d, H, W)

    # Block sums of q k^T and of squares: (N, heads, row segments, column segments, d, d) and (..., d).
    # Off the CPU, every block at once (_all_segments_at_once). On it, small blocks (small windows
    # on a large map), where one product per block is mostly Python's dispatch, a row of blocks at
    # a time (per column, then summed per column segment); larger ones one block at a time.
    at_once = _all_segments_at_once(q)
    by_rows = not tracing() and h * w * qh.shape[2] < _ROWS_BELOW * len(row_pieces) * len(col_pieces)
    compiled = not at_once and _kernel_applies(q, k, v, work, qh.shape[2])
    if at_once:
        padded = _padded_rows(row_pieces, q.device)
        gram, q_sq, k_sq = _segment_statistics(qh, kh_, row_pieces, col_pieces, padded)
    elif compiled:
        gram, q_sq, k_sq = _kernel_statistics(qh, kh_, row_pieces, col_pieces)
    elif _token_kernel_applies(qh, kh_):
        gram, q_sq, k_sq = _token_kernel_statistics(qh, kh_, row_pieces, col_pieces)
    else:
        gram, q_sq, k_sq = _looped_statistics(qh, kh_, row_pieces, col_pieces, by_rows)
    # Window sums from block sums, then attention per window: (N, heads, nr, nc, d, d).
    gram = torch.einsum("is,jt,nhstab->nhijab", row_member, col_member, gram)
    q_sq = torch.einsum("is,jt,nhsta->nhija", row_member, col_member, q_sq)
    k_sq = torch.einsum("is,jt,nhsta->nhija", row_member, col_member, k_sq)
    eps = 1e-12  # as torch.nn.functional.normalize
    norms = q_sq.sqrt().clamp_min(eps)[..., :, None] * k_sq.sqrt().clamp_min(eps)[..., None, :]
    attn = (gram / norms * temperature.to(work).reshape(num_heads, 1, 1, 1, 1)).softmax(dim=-1)

    # Each block gets the mean attention of the windows covering it, applied to its v.
    cover = row_member.sum(0)[:, None] * col_member.sum(0)[None, :]
    block_attn = torch.einsum("is,jt,nhijab->nhstab", row_member, col_member, attn) / cover[:, :, None, None]
    if at_once:
        out = _apply_by_segments(block_attn, vh, col_pieces, padded)
    elif compiled:
        out = _kernel_application(block_attn, vh, row_pieces, col_pieces)
    elif _token_application_applies(block_attn, vh):
        out = _token_kernel_application(block_attn, vh, row_pieces, col_pieces)
    else:
        out = _looped_application(block_attn, vh, row_pieces, col_pieces, by_rows)
    return out.reshape(n, c, h, w).to(q.dtype)
