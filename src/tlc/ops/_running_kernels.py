"""Softmax pooling by running sums where the weights bound their error (numba, CPU).

:mod:`tlc.ops.context` forms window sums without differences (van Herk blocks), because a
difference of running sums loses every digit where the weights before a window dwarf those inside
it. Where the windows' weight sums ``D`` vary little over the map, that cannot happen, and running
sums (a row of float64 column sums sliding down the plane, a sum sliding along each row, as the
local mean's kernel does) do the same job in under half the time: no scan is written out and read
back.

Error bound. With ``u = 2**-53`` and nonnegative weights ``e``, the running sums of a value ``v``
(``e`` or ``e * x``) over an ``H x W`` plane with ``kh x kw`` windows are off by at most
``u * F * M``, where ``M`` is the largest window sum of ``|v|`` and (to first order in ``u``)

    F = (H + 3) * (H / kh + 1) + W + 3 * (W / kw + 1) + 2:

a column sum takes at most ``H`` steps, each rounding below its largest value (a column strip, at
most ``M``; summed over a window's columns, at most ``H / kh + 1`` windows' worth) plus its two
terms; the row sum likewise over ``W`` steps; the last 2 cover the weights' sums coming as means
scaled back (two roundings, ``u`` each, relative to ``D``) and the reciprocal ``1 / D`` the
quotient is taken by (one more). The pooled value ``N / D`` (``|N / D| <= max|x|``,
``M <= max|x| * max(D)`` for the numerator) is then within ``2 * u * F * max(D) / min(D) * max|x|``
of the exact quotient. These kernels run only where that is at most ``TOLERANCE * max|x|``
(``TOLERANCE = 1e-10``, a thousandth of a float32 rounding step), for float32 results; float64
results keep the block sums' float64 accuracy.
"""

from __future__ import annotations

import numpy as np
import torch

from ._kernels import four_window_sums, fused_local_mean, replicate_edge_rows, replicate_row_edges, window_layout
from ._numba import parallel_kernel, prange

#: the error allowed relative to max|x| (see the module docstring)
TOLERANCE = 1e-10
_UNIT_ROUNDOFF = 2.0**-53


def _weighted_pool_planes(x, e, ratio, inv_den, k1, k2, out):  # pragma: no cover (compiled by numba)
    """x: (P, H, W) float32; e: (P // ratio, H, W) float64 weights (plane p of x weighted by plane
    p // ratio); inv_den: the reciprocals of their window sums. out: (P, H-k1+1, W-k2+1) gets the
    window sums of e * x times inv_den, or out: (P, H, W) the same edge-replicated (as
    ``_box_mean_planes``). A product by the reciprocal, not a quotient: one division per window
    and weight plane, not per channel (a float64 division per output took a fifth of the time)."""
    planes, h, w = x.shape
    valid_h, valid_w, replicate, top, left = window_layout(h, w, k1, k2, out)
    for p in prange(planes):
        column = np.zeros(w, np.float64)
        x_plane, e_plane, inv_plane, out_plane = x[p], e[p // ratio], inv_den[p // ratio], out[p]
        for i in range(k1):
            x_row, e_row = x_plane[i], e_plane[i]
            for j in range(w):
                column[j] += e_row[j] * np.float64(x_row[j])
        for a in range(valid_h):
            if a > 0:
                x_in, e_in = x_plane[a + k1 - 1], e_plane[a + k1 - 1]
                x_out, e_out = x_plane[a - 1], e_plane[a - 1]
                for j in range(w):
                    column[j] += e_in[j] * np.float64(x_in[j]) - e_out[j] * np.float64(x_out[j])
            out_row, inv_row = out_plane[a + top], inv_plane[a]
            total = 0.0
            for j in range(k2):
                total += column[j]
            out_row[left] = total * inv_row[0]
            # Views so that every index is the loop's own (offset indices cost 20-25% in the local mean).
            entering_col, leaving_col = column[k2 : k2 + valid_w - 1], column[: valid_w - 1]
            out_mid, inv_mid = out_row[left + 1 : left + valid_w], inv_row[1:valid_w]
            for b in range(valid_w - 1):
                total += entering_col[b] - leaving_col[b]
                out_mid[b] = total * inv_mid[b]
            if replicate:
                replicate_row_edges(out_row, left, valid_w)
        if replicate:
            replicate_edge_rows(out_plane, top, valid_h)


def _weighted_pool_quads(x, e, ratio, inv_den, k1, k2, out):  # pragma: no cover (compiled by numba)
    """:func:`_weighted_pool_planes` four planes at a time, for planes that share their weight
    plane in fours (``ratio`` a multiple of 4; GCNet's one weight plane for every channel): each
    weight row entering and leaving the column sums is read once for the four, and the four row
    sums (each a serial chain of additions) advance side by side. Each plane's arithmetic, and so
    its result, is the one-plane kernel's."""
    planes, h, w = x.shape
    valid_h, valid_w, replicate, top, left = window_layout(h, w, k1, k2, out)
    for q in prange(planes // 4):
        p = 4 * q
        columns = np.zeros((4, w), np.float64)
        c0, c1, c2, c3 = columns[0], columns[1], columns[2], columns[3]
        x0, x1, x2, x3 = x[p], x[p + 1], x[p + 2], x[p + 3]
        e_plane, inv_plane = e[p // ratio], inv_den[p // ratio]
        for i in range(k1):
            e_row, r0, r1, r2, r3 = e_plane[i], x0[i], x1[i], x2[i], x3[i]
            for j in range(w):
                weight = e_row[j]
                c0[j] += weight * np.float64(r0[j])
                c1[j] += weight * np.float64(r1[j])
                c2[j] += weight * np.float64(r2[j])
                c3[j] += weight * np.float64(r3[j])
        for a in range(valid_h):
            if a > 0:
                e_in, e_out = e_plane[a + k1 - 1], e_plane[a - 1]
                i0, i1, i2, i3 = x0[a + k1 - 1], x1[a + k1 - 1], x2[a + k1 - 1], x3[a + k1 - 1]
                o0, o1, o2, o3 = x0[a - 1], x1[a - 1], x2[a - 1], x3[a - 1]
                for j in range(w):
                    entering, leaving = e_in[j], e_out[j]
                    c0[j] += entering * np.float64(i0[j]) - leaving * np.float64(o0[j])
                    c1[j] += entering * np.float64(i1[j]) - leaving * np.float64(o1[j])
                    c2[j] += entering * np.float64(i2[j]) - leaving * np.float64(o2[j])
                    c3[j] += entering * np.float64(i3[j]) - leaving * np.float64(o3[j])
            rows = (out[p, a + top], out[p + 1, a + top], out[p + 2, a + top], out[p + 3, a + top])
            four_window_sums(columns, k2, valid_w, inv_plane[a], rows, left, replicate)
        if replicate:
            for r in range(4):
                replicate_edge_rows(out[p + r], top, valid_h)


_weighted_pool_compiled = parallel_kernel(_weighted_pool_planes)
_weighted_pool_quads_compiled = parallel_kernel(_weighted_pool_quads)


def error_factor(size: tuple[int, int], window: tuple[int, int]) -> float:
    """``u * F`` of the module docstring: the running sums' error over the largest window sum,
    for an (H, W) plane and a clamped (kh, kw) window (plus the weights' sums' scaling from means
    and their reciprocal)."""
    (h, w), (kh, kw) = size, window
    return _UNIT_ROUNDOFF * ((h + 3) * (h / kh + 1) + w + 3 * (w / kw + 1) + 2)


def running_softmax_pool(
    x: torch.Tensor, weights: torch.Tensor, window: tuple[int, int], valid_only: bool = False
) -> torch.Tensor | None:
    """Window sums of ``weights * x`` over window sums of ``weights`` by running sums, or None
    where the bound of the module docstring does not allow them (the caller then uses block sums).

    Args:
        x: (N, C, H, W) float32 or half CPU tensor (half is computed in float32).
        weights: (N, 1 or C, H, W) float64 CPU weights in (0, 1], already shifted, every window's
            sum a normal number (see :mod:`tlc.ops.context`).
        window: clamped (kh, kw), not the whole map.
        valid_only: return only the (N, C, H-kh+1, W-kw+1) windows inside the map.

    Returns:
        (N, C, H, W) (or the valid windows), dtype of ``x``; or None.
    """
    n, c, h, w = x.shape
    kh, kw = window
    e = weights.contiguous().view(-1, h, w)
    # The weights' window sums: the local mean's own running-sum kernel on float64 planes, its
    # means scaled back (two roundings, counted in error_factor).
    den = fused_local_mean(e.unsqueeze(0), (kh, kw), valid_only=True)[0].mul_(kh * kw)
    flat = den.view(den.shape[0], -1)
    smallest = flat.amin(1)
    # A running sum of weights far below the map's largest can come out zero or negative (its
    # error exceeds it): refused along with every spread the bound does not allow (nan included).
    if not (smallest > 0).all():
        return None
    spread = (flat.amax(1) / smallest).max().item()
    if not 2 * error_factor((h, w), (kh, kw)) * spread <= TOLERANCE:
        return None
    work = x.float().contiguous()
    size = (h - kh + 1, w - kw + 1) if valid_only else (h, w)
    out = work.new_empty((n * c, *size))
    inv_den = den.reciprocal_()
    ratio = c // weights.shape[1]
    kernel = _weighted_pool_quads_compiled if ratio % 4 == 0 else _weighted_pool_compiled
    kernel(work.view(n * c, h, w).numpy(), e.numpy(), ratio, inv_den.numpy(), kh, kw, out.numpy())
    return out.view(n, c, *size).to(x.dtype)
