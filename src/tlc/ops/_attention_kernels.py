"""CPU kernels (numba) for grid-window transposed attention (:mod:`tlc.ops.attention`): every
block's ``q k^T`` and squared norms in one pass over q and k, and every block's attention applied
to its pixels of v in one pass over v.

A block (a row segment by a column segment of the grid, see :func:`tlc.ops.attention._segments`)
is read a chunk of columns at a time: the d x d products of a chunk's columns are summed down
the block's rows in an array the size of the first-level cache, each step a vectorised multiply-add
along the chunk (no reduction inside a loop, which numba would leave scalar), then summed across
the chunk in float64. The torch path copied each row segment twice into a channels-last layout
and ran a d x rows by rows x d product per column (1,280 of them per row segment at 720p): with
d = 8, more dispatch and copying than arithmetic.
"""

from __future__ import annotations

import numpy as np

from ._numba import njit, parallel_kernel, prange

#: the accumulator's entries: d x d x chunk (float32: 64 KB, the second-level cache's share)
ACCUMULATOR = 16_384


def column_groups(col_cuts: np.ndarray, tasks: int) -> np.ndarray:
    """Column segments split into up to ``tasks`` groups of consecutive segments of about equal
    width: the index of each group's first segment, then the segment count."""
    segments, width = col_cuts.shape[0] - 1, int(col_cuts[-1])
    firsts = [0]
    for t in range(1, segments):
        if len(firsts) < tasks and col_cuts[t] >= width * len(firsts) / tasks:
            firsts.append(t)
    return np.array([*firsts, segments])


def chunk_for(d: int) -> int:
    """Columns a chunk of :func:`_block_statistics` takes for d channels per head: the most that
    keep its accumulator within ACCUMULATOR entries (at least 16, a vector's worth)."""
    return max(16, ACCUMULATOR // (d * d))


def _block_statistics(q, k, row_cuts, col_cuts, groups, chunk, gram, q_sq, k_sq):  # pragma: no cover (compiled by numba)
    """q, k: (B, d, H, W) (B = images x heads). For each block [row_cuts[s], row_cuts[s+1]) x
    [col_cuts[t], col_cuts[t+1]): gram (B, S, T, d, d) float64 gets sum over its pixels of
    q[a] * k[b] (summed down the rows per column in the inputs' dtype, then across columns in
    float64); q_sq, k_sq (B, S, T, d) float64 the sums of squares, in float64 throughout.

    One task per image, head, row segment and group of column segments (``groups``: the first
    segment of each group, then T; groups only so that there are tasks enough for the threads): it
    reads its columns ``chunk`` at a time (whatever the column segments: long loops, each
    vectorised), the products of a chunk's columns summed down the segment's rows, then each
    column segment's part of the chunk summed into its block."""
    planes, d = q.shape[0], q.shape[1]
    segments_r, n_groups = row_cuts.shape[0] - 1, groups.shape[0] - 1
    for job in prange(planes * segments_r * n_groups):
        p, s, g = job // (segments_r * n_groups), (job // n_groups) % segments_r, job % n_groups
        y0, y1 = row_cuts[s], row_cuts[s + 1]
        t, x_end = groups[g], col_cuts[groups[g + 1]]  # t: the column segment holding the chunk's first column
        acc = np.empty((d, d, chunk), q.dtype)
        squares_q, squares_k = np.empty((d, chunk), np.float64), np.empty((d, chunk), np.float64)
        gram[p, s, t : groups[g + 1]] = 0.0
        q_sq[p, s, t : groups[g + 1]] = 0.0
        k_sq[p, s, t : groups[g + 1]] = 0.0
        for c0 in range(col_cuts[t], x_end, chunk):
            n = min(chunk, x_end - c0)
            acc[:, :, :n] = 0.0
            squares_q[:, :n] = 0.0
            squares_k[:, :n] = 0.0
            for y in range(y0, y1):
                for a in range(d):
                    # Row views indexed by the loop's own index: numba vectorises these loops.
                    qa, ka = q[p, a, y, c0 : c0 + n], k[p, a, y, c0 : c0 + n]
                    sq, sk = squares_q[a, :n], squares_k[a, :n]
                    for x in range(n):
                        sq[x] += np.float64(qa[x]) * np.float64(qa[x])
                        sk[x] += np.float64(ka[x]) * np.float64(ka[x])
                    for b in range(d):
                        kb, target = k[p, b, y, c0 : c0 + n], acc[a, b, :n]
                        for x in range(n):
                            target[x] += qa[x] * kb[x]
            # Each column segment's columns of the chunk into its block, segment by segment.
            start = c0
            while start < c0 + n:
                while col_cuts[t + 1] <= start:
                    t += 1
                stop = min(col_cuts[t + 1], c0 + n)
                lo, hi = start - c0, stop - c0
                block = gram[p, s, t]
                for a in range(d):
                    for b in range(d):
                        column = acc[a, b]
                        total = 0.0
                        for x in range(lo, hi):
                            total += column[x]
                        block[a, b] += total
                    q_sq[p, s, t, a] += squares_q[a, lo:hi].sum()
                    k_sq[p, s, t, a] += squares_k[a, lo:hi].sum()
                start = stop


def _row_segment(row_cuts, y):  # pragma: no cover (compiled into the kernels)
    """The row segment s holding row y: row_cuts[s] <= y < row_cuts[s + 1]."""
    s = 0
    while row_cuts[s + 1] <= y:
        s += 1
    return s


def _apply_blocks(attn, v, row_cuts, col_cuts, out):  # pragma: no cover (compiled by numba)
    """attn: (B, S, T, d, d); v, out: (B, d, H, W). Each pixel of block (s, t): out[:, y, x] =
    attn[p, s, t] @ v[:, y, x] (the products in order of the input channel, in the dtype of v)."""
    planes, d, h = v.shape[0], v.shape[1], v.shape[2]
    segments_c = col_cuts.shape[0] - 1
    for job in prange(planes * h):
        p, y = job // h, job % h
        s = _row_segment(row_cuts, y)
        for t in range(segments_c):
            x0, x1 = col_cuts[t], col_cuts[t + 1]
            weights = attn[p, s, t]
            for a in range(d):
                target, source = out[p, a, y, x0:x1], v[p, 0, y, x0:x1]
                factor = weights[a, 0]
                for x in range(x1 - x0):
                    target[x] = factor * source[x]
                for b in range(1, d):
                    source, factor = v[p, b, y, x0:x1], weights[a, b]
                    for x in range(x1 - x0):
                        target[x] += factor * source[x]


def _token_statistics(q, k, row_cuts, col_cuts, heads, gram, q_sq, k_sq):  # pragma: no cover (compiled by numba)
    """:func:`_block_statistics` for q, k laid out as tokens: (N, H, W, C), C = heads x d, the
    channels the fastest axis (any strides: DAT's and Retinexformer's q and k, views of a Linear
    projection, which the planes kernel would first copy). gram (N * heads, S, T, d, d) float64
    gets each block's sum over its pixels of q[.., h d + a] * k[.., h d + b] (summed along each
    block row in the inputs' dtype, then over the rows in float64); q_sq, k_sq (N * heads, S, T, d)
    float64 the sums of squares, in float64 throughout, each block row's then the block's (the
    order, and so the bits, of ``attention._block_sums_of_squares_tokens``).

    One task per image and row segment; each token's channels are copied once into contiguous
    rows, from which its d x d products per head are vectorised multiply-adds."""
    n_images, c = q.shape[0], q.shape[3]
    d = c // heads
    segments_r, segments_c = row_cuts.shape[0] - 1, col_cuts.shape[0] - 1
    for job in prange(n_images * segments_r):
        b, s = job // segments_r, job % segments_r
        acc = np.empty((c, d), q.dtype)  # the block row's sums of products: acc[h d + a, j]
        q_token, k_token = np.empty(c, q.dtype), np.empty(c, q.dtype)
        q_row, k_row = np.empty(c, np.float64), np.empty(c, np.float64)
        for h in range(heads):
            gram[b * heads + h, s] = 0.0
            q_sq[b * heads + h, s] = 0.0
            k_sq[b * heads + h, s] = 0.0
        for y in range(row_cuts[s], row_cuts[s + 1]):
            for t in range(segments_c):
                acc[:, :] = 0.0
                q_row[:] = 0.0
                k_row[:] = 0.0
                for x in range(col_cuts[t], col_cuts[t + 1]):
                    for ch in range(c):
                        q_token[ch] = q[b, y, x, ch]
                        k_token[ch] = k[b, y, x, ch]
                    for ch in range(c):
                        qv, kv = np.float64(q_token[ch]), np.float64(k_token[ch])
                        q_row[ch] += qv * qv
                        k_row[ch] += kv * kv
                    for h in range(heads):
                        keys = k_token[h * d : (h + 1) * d]
                        for a in range(d):
                            factor, row = q_token[h * d + a], acc[h * d + a]
                            for j in range(d):
                                row[j] += factor * keys[j]
                for h in range(heads):
                    p = b * heads + h
                    block = gram[p, s, t]
                    for a in range(d):
                        source, target = acc[h * d + a], block[a]
                        for j in range(d):
                            target[j] += source[j]
                        q_sq[p, s, t, a] += q_row[h * d + a]
                        k_sq[p, s, t, a] += k_row[h * d + a]


def _token_application(attn_t, v, row_cuts, col_cuts, heads, out):  # pragma: no cover (compiled by numba)
    """:func:`_apply_blocks` for v laid out as tokens: v, out (N, H, W, C), C = heads x d (any
    strides); attn_t (N * heads, S, T, d, d) each block's attention transposed (attn_t[.., b, a] =
    attn[.., a, b]). Each pixel of block (s, t), head h: out[.., h d + a] = the sum over b in order
    of attn[a, b] * v[.., h d + b], in v's dtype: the products and sums of :func:`_apply_blocks`, in
    its order (the same bits), d outputs a step. One task per image and row; each token's
    channels copied once into a contiguous row."""
    n_images, h, c = v.shape[0], v.shape[1], v.shape[3]
    d = c // heads
    segments_c = col_cuts.shape[0] - 1
    for job in prange(n_images * h):
        image, y = job // h, job % h
        s = _row_segment(row_cuts, y)
        v_token, result = np.empty(c, v.dtype), np.empty(c, v.dtype)
        for t in range(segments_c):
            for x in range(col_cuts[t], col_cuts[t + 1]):
                for ch in range(c):
                    v_token[ch] = v[image, y, x, ch]
                for head in range(heads):
                    weights, target = attn_t[image * heads + head, s, t], result[head * d : (head + 1) * d]
                    first, column = v_token[head * d], weights[0]
                    for a in range(d):
                        target[a] = column[a] * first
                    for b in range(1, d):
                        value, column = v_token[head * d + b], weights[b]
                        for a in range(d):
                            target[a] += column[a] * value
                for ch in range(c):
                    out[image, y, x, ch] = result[ch]


if njit is not None:  # compiled into the kernels that call it
    _row_segment = njit(inline="always")(_row_segment)
block_statistics_kernel = parallel_kernel(_block_statistics)
apply_blocks_kernel = parallel_kernel(_apply_blocks)
token_statistics_kernel = parallel_kernel(_token_statistics)
token_application_kernel = parallel_kernel(_token_application)
