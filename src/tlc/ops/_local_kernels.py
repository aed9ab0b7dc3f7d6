"""Compiled CPU kernels (numba) for the local max, softmax pooling and variance.

Each works on a stack of planes (P, H, W), one plane per parallel task, and writes the full-size
result (valid windows edge-replicated as in :func:`tlc.local_mean`) or the valid windows only.
The torch paths compute the same numbers; these avoid their float64 temporaries and the passes
over them. Maxima and weighted sums use van Herk / Gil-Werman blocks (suffix and prefix scans
within blocks of the window's length: O(1) per pixel, nothing subtracted) along H first (whole
rows at a time, vectorised along W); then along W on the H - kh + 1 rows left, maxima by doubling
spans (log2(kw) vectorised passes per row) and sums by blocks over transposed tiles of rows.
Softmax pooling for logits no single shift can hold keeps every partial sum relative to its own
maximum (online softmax). The variance keeps running float64 sums of centred values like
``_kernels``. Compiled on first use (tens of seconds for all of them), cached on disk.

One file (over 400 lines): the kernels share their compiled helpers (block scans, row window sums,
replication). The general softmax pooling kernel (65 lines) is one parallel loop over planes with
its per-plane scratch arrays; it is left whole rather than threading those arrays through helpers.
"""

from __future__ import annotations

import numpy as np
import torch

from ._common import cpu_kernel_applies

from ._numba import njit, parallel_kernel, prange


def _nan_max(a, b):  # pragma: no cover (compiled by numba)
    """max(a, b) propagating NaN from either side, like torch.maximum."""
    return a if (a > b or a != a) else b


# Rows scanned together: the scans along W run over LANES rows at once (a transposed tile in
# cache), so each step is one vector operation instead of a chain of dependent scalar ones.
LANES = 8


def _pairwise_max(lo, hi, out, n):  # pragma: no cover
    """out[j] = max(lo[j], hi[j]) for j < n, NaN from either side (as torch.maximum): a loop of
    the loop's own indices over three arrays, which numba vectorises."""
    for j in range(n):
        out[j] = _nan_max(lo[j], hi[j])


def _row_window_max(row, k, out, span_a, span_b):  # pragma: no cover
    """out[b] = max(row[b : b + k]) for the W - k + 1 valid b of one row, by doubling: the maxima
    over spans of 1, 2, 4, ... s <= k pixels, each from two of the span before, then the window's
    as the max of two overlapping spans (b and b + k - s). log2(k) passes along the row, each
    vectorised and in cache; van Herk's three passes per row ran entry by entry in numba whatever
    their form (16x337x1280, window 384: 4.2 against 11 ms on 2 threads). Maxima are exact in any
    order. span_a, span_b: (W,) scratch."""
    w = row.shape[0]
    valid = w - k + 1
    if k == 1:
        out[:valid] = row[:valid]
        return
    # span 2 from the row itself, then each span from the scratch row holding the one before
    _pairwise_max(row[: w - 1], row[1:w], span_a, w - 1)
    span, n, in_a = 2, w - 1, True
    while span * 2 <= k:
        m = n - span
        if in_a:
            _pairwise_max(span_a[:m], span_a[span : span + m], span_b, m)
        else:
            _pairwise_max(span_b[:m], span_b[span : span + m], span_a, m)
        span, n, in_a = span * 2, m, not in_a
    last = span_a if in_a else span_b
    _pairwise_max(last[:valid], last[k - span : k - span + valid], out, valid)


def _rows_window_max(src, k, dst):  # pragma: no cover
    """dst[r, b] = max(src[r, b : b + k]) for every row r of ``src`` (R, W) and the W - k + 1
    valid b (:func:`_row_window_max` row by row)."""
    w = src.shape[1]
    span_a, span_b = np.empty(w, src.dtype), np.empty(w, src.dtype)
    for r in range(src.shape[0]):
        _row_window_max(src[r], k, dst[r], span_a, span_b)


def _replicate_into(valid, out, top, left):  # pragma: no cover
    """Write the (h, w) ``valid`` map into ``out`` (H, W) at (top, left) and edge-replicate it."""
    vh, vw = valid.shape
    h, w = out.shape
    for r in range(vh):
        # Row views indexed by the loop's own index: numba vectorises these, not out[row, left + j].
        source, target = valid[r], out[top + r]
        middle, right = target[left : left + vw], target[left + vw :]
        for j in range(vw):
            middle[j] = source[j]
        first, last = source[0], source[vw - 1]
        for j in range(left):
            target[j] = first
        for j in range(w - left - vw):
            right[j] = last
    for row in range(top):
        out[row, :] = out[top, :]
    for row in range(top + vh, h):
        out[row, :] = out[top + vh - 1, :]


def _running_and_column(running, row, suffix, column):  # pragma: no cover
    """running[j] = max(running[j], row[j]) and column[j] = max(suffix[j], running[j]): the prefix
    maxima of a block and a window row's column maxima in one pass over the row."""
    for j in range(running.shape[0]):
        value = _nan_max(running[j], row[j])
        running[j] = value
        column[j] = _nan_max(suffix[j], value)


def _window_max_plane(plane, k1, k2, target, below, running, column, span_a, span_b):  # pragma: no cover
    """target (H-k1+1, W-k2+1) gets the maxima of ``plane`` (H, W) over every k1 x k2 window.

    Along H by van Herk's blocks of k1 rows: suffix maxima within the block holding a window's
    first row (``below``, k1 x W, filled block by block) and prefix maxima of the next block up to
    its last row (``running``, W). Each window row's column maxima (``column``, W) then go through
    the doubling along W (:func:`_row_window_max`, scratch span_a, span_b) while in cache: no
    column-maxima plane or whole-plane suffix scan is written out and read back (16x720x1280,
    window 48: two planes' worth of traffic a plane). Whole rows at a time through
    _pairwise_max, so the loops along W are vectorised."""
    h, w = plane.shape
    vh = h - k1 + 1
    for r in range(vh):
        slot = r % k1
        if slot == 0:  # r starts a block: its suffix maxima, from the block's last row up
            end = min(h, r + k1) - 1
            below[end - r, :] = plane[end, :]
            for i in range(end - 1, r - 1, -1):
                _pairwise_max(below[i - r + 1], plane[i], below[i - r], w)
            _row_window_max(below[0], k2, target[r], span_a, span_b)
            continue
        i = r + k1 - 1  # the window's last row, in the next block
        if i % k1 == 0:
            running[:] = plane[i, :]
            _pairwise_max(below[slot], running, column, w)
        else:
            _running_and_column(running, plane[i], below[slot], column)
        _row_window_max(column, k2, target[r], span_a, span_b)


def _suffix_rows(h, k1):  # pragma: no cover
    """Rows the backward (suffix) scans of a column pass cover: up to the end of the block holding
    the last window's first row, H - k1. A window wider than half the map skips the rest: each
    row is then scanned once, not twice."""
    return min(h, ((h - k1) // k1 + 1) * k1)


def _max_planes(x, k1, k2, out, threads):  # pragma: no cover
    """x: (P, H, W); (k1, k2) clamped. out: (P, H, W) local maxima, replicated, or
    (P, H-k1+1, W-k2+1): the valid windows' maxima only; threads: tasks to split the planes into.

    Along H first: those loops are vectorised along W and leave H - k1 + 1 rows for the passes
    along W."""
    planes, h, w = x.shape
    vh, vw = h - k1 + 1, w - k2 + 1
    in_place = out.shape[1] == vh and out.shape[2] == vw
    # One task per thread, each with its scratch planes reused from plane to plane: fresh ones per
    # plane (pages faulted in each time) made this kernel twice as slow.
    workers = max(1, min(threads, planes))
    for task in prange(workers):
        valid = np.empty((0 if in_place else vh, vw), x.dtype)
        below = np.empty((0 if k1 == 1 else k1, w), x.dtype)  # one block's suffix maxima
        running, column = np.empty(w, x.dtype), np.empty(w, x.dtype)
        span_a, span_b = np.empty(w, x.dtype), np.empty(w, x.dtype)
        for p in range(task, planes, workers):
            target = out[p] if in_place else valid
            if k1 == 1:
                _rows_window_max(x[p], k2, target)
            else:
                _window_max_plane(x[p], k1, k2, target, below, running, column, span_a, span_b)
            if not in_place:
                _replicate_into(valid, out[p], (k1 - 1) // 2, (k2 - 1) // 2)


def _terms_into(a, b, use_b, before, out):  # pragma: no cover
    """out[j] = before[j] + a[j] * b[j] (``a[j]`` alone unless ``use_b``), in float64; with
    ``before`` empty (shape (0,)), the terms alone. Row views and the branches outside the loops:
    loops numba vectorises."""
    n = out.shape[0]
    if before.shape[0] == 0:
        if use_b:
            for j in range(n):
                out[j] = np.float64(a[j]) * np.float64(b[j])
        else:
            for j in range(n):
                out[j] = np.float64(a[j])
    elif use_b:
        for j in range(n):
            out[j] = before[j] + np.float64(a[j]) * np.float64(b[j])
    else:
        for j in range(n):
            out[j] = before[j] + np.float64(a[j])


def _block_sums_2d(a, b, use_b, k1, k2, valid, below, cols, running):  # pragma: no cover
    """valid (H-k1+1, W-k2+1) gets the sums of ``a * b`` (``a`` alone unless ``use_b``; a, b:
    (H, W)) over every window, in float64, from suffix and prefix sums within blocks (no
    differences). Along H first (whole rows, vectorised along W), then along W on the remaining
    rows. below (_suffix_rows(H, k1), W), cols (H-k1+1, W), running (W,): float64 scratch,
    overwritten."""
    h, w = a.shape
    nothing = below[0, :0]  # an empty row: "no running sum before" for _terms_into
    for i in range(_suffix_rows(h, k1) - 1, -1, -1):
        restart = i == h - 1 or (i + 1) % k1 == 0
        _terms_into(a[i], b[i], use_b, nothing if restart else below[i + 1], below[i])
    cols[0, :] = below[0, :]
    for i in range(k1, h):  # block 0's prefixes are never read (window 0 is its suffix)
        _terms_into(a[i], b[i], use_b, nothing if i % k1 == 0 else running, running)
        r = i - k1 + 1
        if r % k1 == 0:
            cols[r, :] = below[r, :]
        else:
            suffix, target = below[r], cols[r]
            for j in range(w):
                target[j] = suffix[j] + running[j]
    _rows_window_sum(cols, k2, valid)


def _rows_window_sum(src, k, dst):  # pragma: no cover
    """dst[r, b] = sum(src[r, b : b + k]) (float64) for every row r of ``src`` and the W - k + 1
    valid b: suffix plus prefix sums within blocks, LANES rows at a time through a transposed
    (W, LANES) tile, each step one vector operation over the LANES rows."""
    nrows, w = src.shape
    valid = w - k + 1
    tile = np.empty((w, LANES), np.float64)
    pre = np.empty((w, LANES), np.float64)
    suf = np.empty((w, LANES), np.float64)
    res = np.empty((valid, LANES), np.float64)
    for g in range(0, nrows, LANES):
        for j in range(w):
            for lane in range(LANES):
                tile[j, lane] = src[min(g + lane, nrows - 1), j]
        for start in range(0, w, k):  # as in _rows_window_max: only the scans windows read
            stop = min(start + k, w)
            if start >= k:
                pre[start, :] = tile[start, :]
                for j in range(start + 1, stop):
                    for lane in range(LANES):
                        pre[j, lane] = pre[j - 1, lane] + tile[j, lane]
            if start < valid:
                suf[stop - 1, :] = tile[stop - 1, :]
                for j in range(stop - 2, start - 1, -1):
                    for lane in range(LANES):
                        suf[j, lane] = suf[j + 1, lane] + tile[j, lane]
        for start in range(0, valid, k):
            res[start, :] = suf[start, :]
            for b in range(start + 1, min(start + k, valid)):
                for lane in range(LANES):
                    res[b, lane] = suf[b, lane] + pre[b + k - 1, lane]
        for lane in range(min(LANES, nrows - g)):
            for b in range(valid):
                dst[g + lane, b] = res[b, lane]


def _weight_sums_planes(e, k1, k2, out, threads):  # pragma: no cover
    """e: (P, H, W) float64 weights; out: (P, H-k1+1, W-k2+1) their window sums."""
    planes, h, w = e.shape
    workers = max(1, min(threads, planes))
    for task in prange(workers):  # scratch reused from plane to plane (see _max_planes)
        below, cols, running = np.empty((_suffix_rows(h, k1), w)), np.empty((h - k1 + 1, w)), np.empty(w)
        for p in range(task, planes, workers):
            _block_sums_2d(e[p], e[p], False, k1, k2, out[p], below, cols, running)


def _weighted_pool_planes(x, e, ratio, den, k1, k2, out, threads):  # pragma: no cover
    """x: (P, H, W); e: (P // ratio, H, W) float64 weights, plane p of x weighted by plane
    p // ratio; den: their window sums. out: (P, H, W) window sums of e * x over den, replicated."""
    planes, h, w = x.shape
    vh, vw = h - k1 + 1, w - k2 + 1
    workers = max(1, min(threads, planes))
    for task in prange(workers):  # scratch reused from plane to plane (see _max_planes)
        below, cols, running = np.empty((_suffix_rows(h, k1), w)), np.empty((vh, w)), np.empty(w)
        valid = np.empty((vh, vw), np.float64)
        for p in range(task, planes, workers):
            _weighted_pool_plane(x[p], e[p // ratio], den[p // ratio], k1, k2, out[p], valid, below, cols, running)


def _weighted_pool_plane(x, e, den, k1, k2, out, valid, below, cols, running):  # pragma: no cover
    """One plane of :func:`_weighted_pool_planes`; valid, below, cols, running: scratch."""
    vh, vw = valid.shape
    _block_sums_2d(e, x, True, k1, k2, valid, below, cols, running)
    # Row views: 2-d indices inside the loop kept it scalar.
    if out.shape[0] == vh and out.shape[1] == vw:  # the quotients written once, where they go
        for r in range(vh):
            sums, weights, target = valid[r], den[r], out[r]
            for j in range(vw):
                target[j] = sums[j] / weights[j]
    else:
        for r in range(vh):
            sums, weights = valid[r], den[r]
            for j in range(vw):
                sums[j] /= weights[j]
        _replicate_into(valid, out, (k1 - 1) // 2, (k2 - 1) // 2)


def _merge(m1, d1, n1, m2, d2, n2):  # pragma: no cover
    """Join two partial softmax sums, each relative to its own maximum logit m: (m, d, n) with
    d = sum exp(l - m), n = sum exp(l - m) x. Both factors are <= 1 and one is 1: nothing
    overflows, and d >= 1 never underflows."""
    if m1 >= m2:
        f = np.exp(m2 - m1)
        return m1, d1 + d2 * f, n1 + n2 * f
    f = np.exp(m1 - m2)
    return m2, d1 * f + d2, n1 * f + n2


def _softmax_pool_general_planes(x, logits, ratio, k1, k2, out):  # pragma: no cover
    """Softmax pooling exact for any finite logits: every partial sum is kept relative to its
    own running maximum (online softmax), in van Herk blocks along H (whole rows at a time),
    then along W on the H - k1 + 1 remaining rows. x: (P, H, W); logits: (P // ratio, H, W)
    float64. out: (P, H, W), replicated."""
    planes, h, w = x.shape
    vh, vw = h - k1 + 1, w - k2 + 1
    for p in prange(planes):
        q = p // ratio
        lg = logits[q]
        # Along H: suffix triples within blocks of k1 rows, then running prefix triples.
        sm = np.empty((h, w), np.float64)
        sd = np.empty((h, w), np.float64)
        sn = np.empty((h, w), np.float64)
        for i in range(h - 1, -1, -1):
            if i == h - 1 or (i + 1) % k1 == 0:
                for j in range(w):
                    sm[i, j] = lg[i, j]
                    sd[i, j] = 1.0
                    sn[i, j] = x[p, i, j]
            else:
                for j in range(w):
                    sm[i, j], sd[i, j], sn[i, j] = _merge(sm[i + 1, j], sd[i + 1, j], sn[i + 1, j],
                                                          lg[i, j], 1.0, np.float64(x[p, i, j]))
        cm = np.empty((vh, w), np.float64)
        cd = np.empty((vh, w), np.float64)
        cn = np.empty((vh, w), np.float64)
        pm = np.empty(w, np.float64)
        pd = np.empty(w, np.float64)
        pn = np.empty(w, np.float64)
        for i in range(h):
            if i % k1 == 0:
                for j in range(w):
                    pm[j] = lg[i, j]
                    pd[j] = 1.0
                    pn[j] = x[p, i, j]
            else:
                for j in range(w):
                    pm[j], pd[j], pn[j] = _merge(pm[j], pd[j], pn[j], lg[i, j], 1.0, np.float64(x[p, i, j]))
            r = i - k1 + 1
            if r >= 0:
                if r % k1 == 0:
                    cm[r, :] = sm[r, :]
                    cd[r, :] = sd[r, :]
                    cn[r, :] = sn[r, :]
                else:
                    for j in range(w):
                        cm[r, j], cd[r, j], cn[r, j] = _merge(sm[r, j], sd[r, j], sn[r, j], pm[j], pd[j], pn[j])
        # Along W, row by row, on the column windows' triples.
        valid = np.empty((vh, vw), np.float64)
        rm = np.empty(w, np.float64)
        rd = np.empty(w, np.float64)
        rn = np.empty(w, np.float64)
        for r in range(vh):
            for start in range(0, w, k2):
                stop = min(start + k2, w)
                rm[stop - 1], rd[stop - 1], rn[stop - 1] = cm[r, stop - 1], cd[r, stop - 1], cn[r, stop - 1]
                for j in range(stop - 2, start - 1, -1):
                    rm[j], rd[j], rn[j] = _merge(rm[j + 1], rd[j + 1], rn[j + 1], cm[r, j], cd[r, j], cn[r, j])
            for start in range(0, vw, k2):
                valid[r, start] = rn[start] / rd[start]
                # The next block's prefix triple, grown by one entry per window.
                m, d, n = 0.0, 0.0, 0.0
                nxt = start + k2
                if nxt < w:
                    m, d, n = cm[r, nxt], cd[r, nxt], cn[r, nxt]
                for b in range(start + 1, min(start + k2, vw)):
                    e = b + k2 - 1  # the window b is suffix(b) + prefix of the next block up to e
                    if e > nxt:
                        m, d, n = _merge(m, d, n, cm[r, e], cd[r, e], cn[r, e])
                    mm, dd, nn = _merge(rm[b], rd[b], rn[b], m, d, n)
                    valid[r, b] = nn / dd
        if out.shape[1] == vh and out.shape[2] == vw:
            out[p, :, :] = valid
        else:
            _replicate_into(valid, out[p], (k1 - 1) // 2, (k2 - 1) // 2)


def window_sums_along_row(column1, column2, k, sums1, sums2):  # pragma: no cover
    """sums1[b], sums2[b]: the sums of ``column1`` / ``column2`` (float64 rows of column sums)
    over the k entries from b, for every b of ``sums1``: running sums, one entry in, one out."""
    s1 = 0.0
    s2 = 0.0
    for j in range(k):
        s1 += column1[j]
        s2 += column2[j]
    sums1[0] = s1
    sums2[0] = s2
    # Views so that every index is the loop's own (offset indices cost 20-25% in the local mean).
    n = sums1.shape[0] - 1
    in1, out1, in2, out2 = column1[k : k + n], column1[:n], column2[k : k + n], column2[:n]
    next1, next2 = sums1[1:], sums2[1:]
    for b in range(n):
        s1 += in1[b] - out1[b]
        s2 += in2[b] - out2[b]
        next1[b] = s1
        next2[b] = s2


def _var_planes(x, centre, k1, k2, divisor, root, valid_only, out, means, totals, scale, threads):  # pragma: no cover
    """x: (P, H, W); centre: (P,) float64. out: (P, H, W) local variances (standard deviations
    with ``root``) of the (k1, k2) windows, replicated, or with ``valid_only`` (P, H-k1+1, W-k2+1)
    those of the windows inside the map: running float64 sums of x - centre and of its square, a
    row of column sums sliding down and a window sum sliding along it. totals: (P, 2) float64 gets
    the whole plane's sums of x - centre and of its square (each row enters the sums once).
    means: (P, H-k1+1, W-k2+1) gets the windows' means from the same sums (sum / area + centre),
    with ``valid_only``; a (0, 0, 0) array: none. scale: with ``valid_only``, a one-element array
    of out's dtype each result is multiplied by after its rounding (as ``out.mul_(scale)``
    computes it, while the row is in cache); an empty one: none."""
    planes, h, w = x.shape
    vh, vw = h - k1 + 1, w - k2 + 1
    area = k1 * k2
    inv_area = 1.0 / area  # products, not quotients (see _variance_row)
    want_means = means.shape[0] == planes
    workers = max(1, min(threads, planes))
    for task in prange(workers):  # scratch reused from plane to plane (see _max_planes)
        valid = np.empty((0, 0) if valid_only else (vh, vw), np.float64)  # valid_only: rows go to out
        sums1, sums2 = np.empty(vw, np.float64), np.empty(vw, np.float64)
        for p in range(task, planes, workers):
            c = centre[p]
            col1 = np.zeros(w, np.float64)
            col2 = np.zeros(w, np.float64)
            # Row views throughout: indexing the 3-d array in the inner loops kept them scalar.
            for i in range(k1):
                row = x[p, i]
                for j in range(w):
                    d = np.float64(row[j]) - c
                    col1[j] += d
                    col2[j] += d * d
            all1 = col1.copy()  # every row entered so far, column by column
            all2 = col2.copy()
            for a in range(vh):
                if a > 0:
                    entering, leaving = x[p, a + k1 - 1], x[p, a - 1]
                    for j in range(w):
                        d_in = np.float64(entering[j]) - c
                        d_out = np.float64(leaving[j]) - c
                        col1[j] += d_in - d_out
                        col2[j] += d_in * d_in - d_out * d_out
                        all1[j] += d_in
                        all2[j] += d_in * d_in
                window_sums_along_row(col1, col2, k2, sums1, sums2)
                # Straight into the result's row where only the valid windows are wanted (a pass
                # over a float64 plane less; the same rounding to the result's dtype). Two calls,
                # not one on a conditional row: the rows' dtypes differ, which numba cannot unify.
                if valid_only:
                    target = out[p, a]
                    _variance_row(sums1, sums2, area, divisor, root, target)
                    if scale.shape[0] == 1:
                        factor = scale[0]
                        for b in range(vw):
                            target[b] = target[b] * factor
                    if want_means:
                        mean_row = means[p, a]
                        for b in range(vw):
                            mean_row[b] = sums1[b] * inv_area + c
                else:
                    _variance_row(sums1, sums2, area, divisor, root, valid[a])
            totals[p, 0] = all1.sum()
            totals[p, 1] = all2.sum()
            if not valid_only:
                _replicate_into(valid, out[p], (k1 - 1) // 2, (k2 - 1) // 2)


def _variance_row(sums1, sums2, area, divisor, root, row):  # pragma: no cover (compiled by numba)
    """row[b]: the variance (standard deviation with ``root``) of window b from its sums of
    centred values and of their squares. Products by reciprocals and the square root taken of the
    variance rounded to the row's dtype (a float32 root of a float32 variance, as ``var.sqrt()``
    computes it): a float64 division or root an element cost a quarter of the variance kernel's
    time (16x720x1280, window 48: 22 -> 17 ms); each result within a unit in the last place."""
    n = row.shape[0]
    inv_area, inv_divisor = 1.0 / area, 1.0 / divisor  # 1 / 0: inf, as the quotients give
    if area == 1:  # one pixel: exactly no spread (the running sums could leave a rounding residue)
        for b in range(n):
            row[b] = 0.0 * inv_divisor  # nan with no degrees of freedom left, as torch.var
    else:
        for b in range(n):
            row[b] = max(sums2[b] - sums1[b] * sums1[b] * inv_area, 0.0) * inv_divisor
    if root:
        for b in range(n):
            row[b] = np.sqrt(row[b])


if njit is not None:
    _nan_max = njit(inline="always")(_nan_max)
    _suffix_rows = njit(inline="always")(_suffix_rows)
    # Inlined: a call per pass and row (a dozen a row) cost 13% of the local max (16x720x1280).
    _pairwise_max = njit(inline="always")(_pairwise_max)
    _running_and_column = njit(inline="always")(_running_and_column)
    _row_window_max = njit(_row_window_max)
    _rows_window_max = njit(_rows_window_max)
    _rows_window_sum = njit(_rows_window_sum)
    _window_max_plane = njit(_window_max_plane)
    _replicate_into = njit(_replicate_into)
    _variance_row = njit(inline="always")(_variance_row)
    _terms_into = njit(_terms_into)
    _block_sums_2d = njit(_block_sums_2d)
    window_sums_along_row = njit(window_sums_along_row)
    _weighted_pool_plane = njit(_weighted_pool_plane)
    # error_model="numpy": x / 0 gives inf or nan as in torch (no degrees of freedom left).
    _max_compiled = parallel_kernel(_max_planes, error_model="numpy")
    _weight_sums_compiled = parallel_kernel(_weight_sums_planes, error_model="numpy")
    _weighted_pool_compiled = parallel_kernel(_weighted_pool_planes, error_model="numpy")
    _var_compiled = parallel_kernel(_var_planes, error_model="numpy")
    _merge = njit(inline="always")(_merge)
    _general_pool_compiled = parallel_kernel(_softmax_pool_general_planes, error_model="numpy")
else:  # pragma: no cover
    _max_compiled = None


def local_kernels_apply(*tensors: torch.Tensor) -> bool:
    """Whether the kernels here may compute on ``tensors``: numba present, all on the CPU, no
    gradients needed, not traced."""
    return _max_compiled is not None and cpu_kernel_applies(*tensors)


def _working(x: torch.Tensor) -> torch.Tensor:
    """float32/float64 contiguous planes (half inputs are computed in float32)."""
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return work.contiguous()


def fused_local_max(planes: torch.Tensor, window: tuple[int, int], valid_only: bool = False) -> torch.Tensor:
    """(P, H, W) CPU tensor, clamped window (kh, kw) -> (P, H, W) local maxima, or with
    ``valid_only`` the (P, H-kh+1, W-kw+1) maxima of the windows inside the map; dtype of input."""
    work = _working(planes)
    p, h, w = work.shape
    size = (h - window[0] + 1, w - window[1] + 1) if valid_only else (h, w)
    out = work.new_empty((p, *size))
    _max_compiled(work.numpy(), window[0], window[1], out.numpy(), torch.get_num_threads())
    return out.to(planes.dtype)


def fused_softmax_pool(
    x: torch.Tensor, weights: torch.Tensor, window: tuple[int, int], valid_only: bool = False
) -> torch.Tensor:
    """Window sums of ``weights * x`` over window sums of ``weights``, replicated to full size.

    Args:
        x: (N, C, H, W) CPU tensor.
        weights: (N, 1 or C, H, W) float64 weights, already shifted (see :mod:`tlc.ops.context`).
        window: clamped (kh, kw).
        valid_only: return only the (N, C, H-kh+1, W-kw+1) windows inside the map.

    Returns:
        (N, C, H, W), dtype of ``x``.
    """
    n, c, h, w = x.shape
    kh, kw = window
    e = weights.contiguous().view(-1, h, w)
    den = torch.empty(e.shape[0], h - kh + 1, w - kw + 1, dtype=torch.float64)
    _weight_sums_compiled(e.numpy(), kh, kw, den.numpy(), torch.get_num_threads())
    work = _working(x)
    size = (h - kh + 1, w - kw + 1) if valid_only else (h, w)
    out = work.new_empty((n * c, *size))
    ratio = c // weights.shape[1]
    _weighted_pool_compiled(
        work.view(n * c, h, w).numpy(), e.numpy(), ratio, den.numpy(), kh, kw, out.numpy(), torch.get_num_threads()
    )
    return out.view(n, c, *size).to(x.dtype)


def fused_softmax_pool_general(
    x: torch.Tensor, logits: torch.Tensor, window: tuple[int, int], valid_only: bool = False
) -> torch.Tensor:
    """Softmax pooling of a CPU (N, C, H, W) ``x`` by (N, 1 or C, H, W) float64 ``logits`` of any
    finite range (partial sums relative to their own maxima), replicated (or with ``valid_only``
    the windows inside the map only); dtype of ``x``."""
    n, c, h, w = x.shape
    work = _working(x)
    size = (h - window[0] + 1, w - window[1] + 1) if valid_only else (h, w)
    out = work.new_empty((n * c, *size))
    scores = logits.contiguous().view(-1, h, w)
    _general_pool_compiled(work.view(n * c, h, w).numpy(), scores.numpy(), c // logits.shape[1], window[0],
                           window[1], out.numpy())
    return out.view(n, c, *size).to(x.dtype)


def fused_local_var(
    x: torch.Tensor, centre: torch.Tensor, window: tuple[int, int], correction: float, root: bool,
    valid_only: bool = False, totals: torch.Tensor | None = None, means: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Local variance (or its square root) of a CPU (N, C, H, W) tensor, replicated to full size.

    Args:
        x: (N, C, H, W).
        centre: (N, C) float64 values subtracted before the sums (the map's mean keeps digits).
        window: clamped (kh, kw).
        correction: subtracted from the window's pixel count in the divisor.
        root: return the standard deviation.
        valid_only: return only the (N, C, H-kh+1, W-kw+1) windows inside the map.
        totals: optional (N * C, 2) float64 CPU tensor that gets each plane's sums of
            ``x - centre`` and of its square (from the same pass).
        means: optional contiguous (N, C, H-kh+1, W-kw+1) CPU tensor of the working dtype
            (float32 for half inputs) that gets the windows' means, with ``valid_only``.
        scale: with ``valid_only`` and a float32 / float64 ``x``, the results times ``scale``
            in the same pass: the bits of ``result.mul_(scale)`` (a sum's scale: a pass over the
            windows' map less). Otherwise multiplied after.
    """
    n, c, h, w = x.shape
    work = _working(x)
    size = (h - window[0] + 1, w - window[1] + 1) if valid_only else (h, w)
    out = work.new_empty((n * c, *size))
    divisor = max(window[0] * window[1] - correction, 0.0)
    sums = totals if totals is not None else torch.empty(n * c, 2, dtype=torch.float64)
    into = work.new_empty((0, 0, 0)) if means is None else means.view(n * c, *size)
    in_pass = scale != 1 and valid_only and work.dtype == x.dtype
    factor = torch.tensor([scale] if in_pass else [], dtype=work.dtype)
    _var_compiled(work.view(n * c, h, w).numpy(), centre.contiguous().view(-1).numpy(), window[0], window[1],
                  float(divisor), bool(root), bool(valid_only), out.numpy(), into.numpy(), sums.numpy(),
                  factor.numpy(), torch.get_num_threads())
    result = out.view(n, c, *size).to(x.dtype)
    return result.mul_(scale) if scale != 1 and not in_pass else result
