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

from ._common import cpu_kernel_applies

from ._numba import njit, parallel_kernel, prange


def window_layout(h, w, k1, k2, out):  # pragma: no cover (compiled by numba)
    """(valid_h, valid_w, replicate, top, left) of an (H, W) plane's k1 x k2 windows written into
    ``out``: (H, W) with the valid windows edge-replicated (they start at row ``top``, column
    ``left``), or only the valid windows (replicate False, top = left = 0)."""
    valid_h, valid_w = h - k1 + 1, w - k2 + 1
    replicate = out.shape[1] == h and out.shape[2] == w and (valid_h, valid_w) != (h, w)
    top, left = ((k1 - 1) // 2, (k2 - 1) // 2) if replicate else (0, 0)
    return valid_h, valid_w, replicate, top, left


def _box_mean_planes(x, k1, k2, scale, out, totals):  # pragma: no cover (compiled by numba)
    """x: (P, H, W); k1 x k2 windows (clamped). out: (P, H, W) gets each pixel's local mean
    (valid windows edge-replicated), or out: (P, H-k1+1, W-k2+1) gets the valid windows' means;
    each times ``scale`` (1: the means; the window's pixel count: its sums), rounded once.
    totals: (P,) float64 gets each plane's sum (every row enters the sliding column sums once),
    or (0,): not wanted.

    Loops run over row views: indexing the 3-d arrays inside the inner loops kept numba from
    vectorising the column update (measured 1.7x slower at 720x1280)."""
    planes, h, w = x.shape
    valid_h, valid_w, replicate, top, left = window_layout(h, w, k1, k2, out)
    inv_area = scale / (k1 * k2)
    want_totals = totals.shape[0] == planes
    for p in prange(planes):
        column = np.zeros(w, np.float64)
        rows_total = np.zeros(w if want_totals else 0, np.float64)  # per column, of the rows entered
        x_plane, out_plane = x[p], out[p]
        for i in range(k1):
            x_row = x_plane[i]
            for j in range(w):
                column[j] += x_row[j]
        if want_totals:
            rows_total[:] = column
        for a in range(valid_h):
            if a > 0:
                entering, leaving = x_plane[a + k1 - 1], x_plane[a - 1]
                for j in range(w):
                    column[j] += np.float64(entering[j]) - np.float64(leaving[j])
                if want_totals:
                    for j in range(w):
                        rows_total[j] += entering[j]
            out_row = out_plane[a + top]
            total = 0.0
            for j in range(k2):
                total += column[j]
            out_row[left] = total * inv_area
            # Views so that every index is the loop's own (offset indices cost 20-25% here).
            entering_col, leaving_col = column[k2 : k2 + valid_w - 1], column[: valid_w - 1]
            out_mid = out_row[left + 1 : left + valid_w]
            for b in range(valid_w - 1):
                total += entering_col[b] - leaving_col[b]
                out_mid[b] = total * inv_area
            if replicate:
                replicate_row_edges(out_row, left, valid_w)
        if replicate:
            replicate_edge_rows(out_plane, top, valid_h)
        if want_totals:
            totals[p] = rows_total.sum()


def four_window_sums(columns, k, valid_w, scales, rows, left, replicate):  # pragma: no cover (compiled by numba)
    """rows[r][left + b] = sum(columns[r, b : b + k]) * scales[b] for the four rows r of ``columns``
    (float64 column sums) and the valid_w windows b: running sums (the first window's sum, then one
    entry in and one out), the four side by side, each a serial chain of additions bound by the
    adder's latency. With ``replicate`` each row's pixels left and right of its windows take the
    first and last (edge replication)."""
    c0, c1, c2, c3 = columns[0], columns[1], columns[2], columns[3]
    y0, y1, y2, y3 = rows
    t0 = t1 = t2 = t3 = 0.0
    for j in range(k):
        t0 += c0[j]
        t1 += c1[j]
        t2 += c2[j]
        t3 += c3[j]
    first = scales[0]
    y0[left], y1[left], y2[left], y3[left] = t0 * first, t1 * first, t2 * first, t3 * first
    span, entering = slice(left + 1, left + valid_w), slice(k, k + valid_w - 1)
    # Views so that every index is the loop's own (offset indices cost 20-25% in the local mean).
    m0, m1, m2, m3 = y0[span], y1[span], y2[span], y3[span]
    i0, i1, i2, i3 = c0[entering], c1[entering], c2[entering], c3[entering]
    l0, l1, l2, l3 = c0[: valid_w - 1], c1[: valid_w - 1], c2[: valid_w - 1], c3[: valid_w - 1]
    rest = scales[1:valid_w]
    for b in range(valid_w - 1):
        scale = rest[b]
        t0 += i0[b] - l0[b]
        t1 += i1[b] - l1[b]
        t2 += i2[b] - l2[b]
        t3 += i3[b] - l3[b]
        m0[b] = t0 * scale
        m1[b] = t1 * scale
        m2[b] = t2 * scale
        m3[b] = t3 * scale
    if replicate:
        replicate_row_edges(y0, left, valid_w)
        replicate_row_edges(y1, left, valid_w)
        replicate_row_edges(y2, left, valid_w)
        replicate_row_edges(y3, left, valid_w)


def _box_mean_quads(x, k1, k2, scale, out, totals):  # pragma: no cover (compiled by numba)
    """:func:`_box_mean_planes` four planes at a time (P a multiple of 4): the four column updates
    share one loop and the four row sums (each a serial chain of additions, bound by the adder's
    latency) advance side by side. Each plane's arithmetic, and so its result, is the one-plane
    kernel's. 16x720x1280, 2 threads: 9.6 -> 7.2 ms at window 48, 5.4 -> 4.8 at 384."""
    planes, h, w = x.shape
    valid_h, valid_w, replicate, top, left = window_layout(h, w, k1, k2, out)
    inv_area = scale / (k1 * k2)
    want_totals = totals.shape[0] == planes
    for q in prange(planes // 4):
        p = 4 * q
        columns = np.zeros((4, w), np.float64)
        c0, c1, c2, c3 = columns[0], columns[1], columns[2], columns[3]
        scales = np.full(valid_w, inv_area)  # every window's sum times 1 / area, as one plane at a time
        entered = np.zeros((4, w if want_totals else 0), np.float64)  # per column, of the rows entered
        x0, x1, x2, x3 = x[p], x[p + 1], x[p + 2], x[p + 3]
        for i in range(k1):
            r0, r1, r2, r3 = x0[i], x1[i], x2[i], x3[i]
            for j in range(w):
                c0[j] += r0[j]
                c1[j] += r1[j]
                c2[j] += r2[j]
                c3[j] += r3[j]
        if want_totals:
            entered[:, :] = columns
        for a in range(valid_h):
            if a > 0:
                n0, n1, n2, n3 = x0[a + k1 - 1], x1[a + k1 - 1], x2[a + k1 - 1], x3[a + k1 - 1]
                o0, o1, o2, o3 = x0[a - 1], x1[a - 1], x2[a - 1], x3[a - 1]
                for j in range(w):
                    c0[j] += np.float64(n0[j]) - np.float64(o0[j])
                    c1[j] += np.float64(n1[j]) - np.float64(o1[j])
                    c2[j] += np.float64(n2[j]) - np.float64(o2[j])
                    c3[j] += np.float64(n3[j]) - np.float64(o3[j])
                if want_totals:
                    e0, e1, e2, e3 = entered[0], entered[1], entered[2], entered[3]
                    for j in range(w):
                        e0[j] += n0[j]
                        e1[j] += n1[j]
                        e2[j] += n2[j]
                        e3[j] += n3[j]
            rows = (out[p, a + top], out[p + 1, a + top], out[p + 2, a + top], out[p + 3, a + top])
            four_window_sums(columns, k2, valid_w, scales, rows, left, replicate)
        for r in range(4):
            if replicate:
                replicate_edge_rows(out[p + r], top, valid_h)
            if want_totals:
                totals[p + r] = entered[r].sum()


def _plane_sums(x, totals):  # pragma: no cover (compiled by numba)
    """x: (P, H, W); totals: (P,) float64 gets each plane's sum, added as the window kernels add
    their ``totals`` (per column over the rows in order, then over the columns): the same bits."""
    planes, h, w = x.shape
    for p in prange(planes):
        columns = np.zeros(w, np.float64)
        x_plane = x[p]
        for i in range(h):
            row = x_plane[i]
            for j in range(w):
                columns[j] += row[j]
        totals[p] = columns.sum()


def replicate_row_edges(row, left, valid_w):  # pragma: no cover (compiled by numba)
    """row: (W,) holding valid windows' values at [left, left + valid_w): the pixels left and right
    of them take the first and last (edge replication, as :func:`tlc.ops.pool.replicate_to`).
    Called while the row is still in cache."""
    first, last = row[left], row[left + valid_w - 1]
    for j in range(left):
        row[j] = first
    right = row[left + valid_w :]  # a view: an offset index keeps numba's loops scalar
    for j in range(right.shape[0]):
        right[j] = last


def replicate_edge_rows(plane, top, valid_h):  # pragma: no cover (compiled by numba)
    """plane: (H, W) whose rows [top, top + valid_h) are complete: the rows above and below take
    the first and last of them."""
    for row in range(top):
        plane[row, :] = plane[top, :]
    for row in range(top + valid_h, plane.shape[0]):
        plane[row, :] = plane[top + valid_h - 1, :]


if njit is not None:  # compiled into the kernels that call them
    replicate_row_edges = njit(inline="always")(replicate_row_edges)
    replicate_edge_rows = njit(inline="always")(replicate_edge_rows)
    four_window_sums = njit(inline="always")(four_window_sums)
    window_layout = njit(inline="always")(window_layout)
_compiled = parallel_kernel(_box_mean_planes)
_quads_compiled = parallel_kernel(_box_mean_quads)
_sums_compiled = parallel_kernel(_plane_sums)


def fused_local_mean_available(x: torch.Tensor) -> bool:
    """Whether :func:`fused_local_mean` applies: numba present, a CPU tensor, no autograd needed,
    not traced (export/compile trace fake tensors, which numba cannot read)."""
    return _compiled is not None and cpu_kernel_applies(x)


def fused_local_mean(
    x: torch.Tensor,
    window: tuple[int, int],
    valid_only: bool = False,
    totals: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Local mean of a CPU (N, C, H, W) tensor with an already clamped window (kh, kw).

    Returns (N, C, H, W), or with ``valid_only`` the (N, C, H-kh+1, W-kw+1) means of the windows
    lying inside the map. Half inputs are computed in float32 and rounded back; accumulation is
    float64 throughout. ``totals``: optional (N * C,) float64 CPU tensor that gets each plane's
    sum, from the same pass. ``out``: optional tensor the result is written into (and returned)
    where it is contiguous, of the result's shape and of ``x``'s dtype, float32 or float64;
    otherwise a new one is made. ``scale``: every mean times it, rounded once (a hand-written sum
    over H and W made local is the window's mean times H * W).
    """
    n, c, h, w = x.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    work = work.contiguous()
    size = (h - window[0] + 1, w - window[1] + 1) if valid_only else (h, w)
    fits = (
        out is not None
        and out.dtype == work.dtype == x.dtype
        and tuple(out.shape) == (n, c, *size)
        and out.is_contiguous()
        and out.device.type == "cpu"
    )
    out = out if fits else work.new_empty((n, c, *size))
    sums = totals if totals is not None else torch.empty(0, dtype=torch.float64)
    planes = n * c
    # Four planes a task where that leaves every thread a task (fewer would idle a thread).
    kernel = _quads_compiled if planes % 4 == 0 and planes // 4 >= torch.get_num_threads() else _compiled
    kernel(work.view(planes, h, w).numpy(), window[0], window[1], float(scale), out.view(planes, *size).numpy(),
           sums.numpy())
    return out.to(x.dtype)


def plane_sums(x: torch.Tensor) -> torch.Tensor:
    """Each plane's sum of a CPU (N, C, H, W) tensor (where :func:`fused_local_mean_available`;
    half inputs summed as float32, as there), (N * C,) float64: the ``totals``
    :func:`fused_local_mean` gives, to the bit, without the windows."""
    n, c, h, w = x.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    totals = torch.empty(n * c, dtype=torch.float64)
    _sums_compiled(work.contiguous().view(n * c, h, w).numpy(), totals.numpy())
    return totals
