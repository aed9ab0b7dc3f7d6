"""Fused CPU kernels (numba), used when they can be: local group and instance norm, and the layer
norm of values laid out in columns.

The torch path makes about a dozen full passes over the map, several in float64 (centring, the
channel sums, two local means, replication of mean and scale, normalising, the affine). This
kernel, per image and group, reads the map twice (the rows entering and leaving the sliding column
sums; the output rows, most still in the cache) and writes the output once, allocating nothing of
map size but the output. Its sums are of values centred on the mean of a sample of the group's
rows (any centre near the mean keeps their digits: a whole pass for the exact mean cost 10% of
the kernel). Window sums slide as in the local mean's kernel
(float64 running sums; the exact block sums of ``_local_kernels`` made an earlier form of this
kernel 3.4x slower, and the running sums' drift is far below float32 resolution); each pixel
takes the statistics of its window (valid windows, edge-replicated), normalises in float64 and
rounds once to the output dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._common import cpu_kernel_applies
from ._local_kernels import window_sums_along_row
from ._numba import njit, parallel_kernel, prange


def _normalise_row(x, n, c0, per_group, i, centre, m_row, s_row, left, gw, weight, bias, out):  # pragma: no cover
    """Output row ``i`` of the group's channels: each pixel by its window's statistics (``m_row``,
    ``s_row``: the valid windows of its window row; edge pixels take the first / last)."""
    w = x.shape[3]
    for c in range(c0, c0 + per_group):
        wc, bc = weight[c], bias[c]
        row, target = x[n, c, i], out[n, c, i]  # row views: numba vectorises these
        for j in range(left):
            target[j] = ((np.float64(row[j]) - centre) - m_row[0]) * s_row[0] * wc + bc
        # Views of the valid band too: indexing the row at j + left kept the loop scalar (2.7x slower).
        row_mid, target_mid = row[left : left + gw], target[left : left + gw]
        for j in range(gw):
            target_mid[j] = ((np.float64(row_mid[j]) - centre) - m_row[j]) * s_row[j] * wc + bc
        row_right, target_right = row[left + gw :], target[left + gw :]
        m_last, s_last = m_row[gw - 1], s_row[gw - 1]
        for j in range(w - left - gw):
            target_right[j] = ((np.float64(row_right[j]) - centre) - m_last) * s_last * wc + bc


_CENTRE_ROWS = 32  # rows of each channel a group's centre is the mean of


def _sample_centre(x, n, c0, per_group):  # pragma: no cover (compiled into the kernel)
    """float64 mean of up to _CENTRE_ROWS evenly spaced rows of channels c0 : c0 + per_group of
    image n: a centre for the group's sums (near its mean without a pass over the map)."""
    h, w = x.shape[2], x.shape[3]
    rows = min(h, _CENTRE_ROWS)
    total = 0.0
    for c in range(c0, c0 + per_group):
        for t in range(rows):
            row = x[n, c, ((2 * t + 1) * h) // (2 * rows)]
            for j in range(w):
                total += np.float64(row[j])
    return total / (rows * w * per_group)


def _window_statistics(sums1, sums2, inv_count, eps, mean, scale):  # pragma: no cover (compiled into the kernel)
    """mean[b] = sums1[b] * inv_count and scale[b] = 1 / sqrt(var + eps), var = sums2[b] *
    inv_count - mean[b]^2 clamped at 0, in float64 to within a few units of its last place.

    The reciprocal square root starts from float32's (correctly rounded: relative error under
    2^-23) and takes two Newton steps in float64 (each squares the error: 1e-14, then rounding):
    a third of the time of float64's square root and division, which took a quarter of an
    instance norm's kernel. Where var + eps lies outside float32's comfortable range (or is not a
    number) the row is recomputed by the plain formula."""
    outside = 0  # a count, not min / max: those kept the loop from vectorising
    for b in range(mean.shape[0]):
        m = sums1[b] * inv_count
        v = max(sums2[b] * inv_count - m * m, 0.0) + eps
        mean[b] = m
        y = np.float64(np.float32(1.0) / np.sqrt(np.float32(v)))
        y = y * (1.5 - 0.5 * v * y * y)
        scale[b] = y * (1.5 - 0.5 * v * y * y)
        outside += not (1e-30 <= v <= 1e30)
    if outside:
        for b in range(mean.shape[0]):
            m = mean[b]
            scale[b] = 1.0 / math.sqrt(max(sums2[b] * inv_count - m * m, 0.0) + eps)


def _group_norm_planes(x, groups, kh, kw, eps, weight, bias, out):  # pragma: no cover (compiled by numba)
    """x, out: (N, C, H, W); weight, bias: (C,) float64 (ones and zeros without affine).

    Per image and group, one pass down the map: a row of column sums of the centred values and of
    their squares over the group's channels slides down (the entering and leaving rows read from
    x), a window sum slides along it, and the output rows that window row serves are written at
    once. Nothing of map size is allocated but the output. A group holding NaN or an infinity
    anywhere is NaN throughout, as in torch's group norm (every row enters the column sums, and a
    value that is not finite leaves them not finite)."""
    n_images, channels, h, w = x.shape
    per_group = channels // groups
    gh, gw = h - kh + 1, w - kw + 1
    top, left = (kh - 1) // 2, (kw - 1) // 2
    inv_count = 1.0 / (kh * kw * per_group)
    for job in prange(n_images * groups):
        n, c0 = job // groups, (job % groups) * per_group
        centre = _sample_centre(x, n, c0, per_group)
        column1 = np.zeros(w, np.float64)
        column2 = np.zeros(w, np.float64)
        for c in range(c0, c0 + per_group):
            for i in range(kh):
                row = x[n, c, i]
                for j in range(w):
                    d = np.float64(row[j]) - centre
                    column1[j] += d
                    column2[j] += d * d
        m_row = np.empty(gw, np.float64)
        s_row = np.empty(gw, np.float64)
        sums1, sums2 = np.empty(gw, np.float64), np.empty(gw, np.float64)
        for a in range(gh):
            if a > 0:
                for c in range(c0, c0 + per_group):
                    entering, leaving = x[n, c, a + kh - 1], x[n, c, a - 1]
                    for j in range(w):
                        d_in = np.float64(entering[j]) - centre
                        d_out = np.float64(leaving[j]) - centre
                        column1[j] += d_in - d_out
                        column2[j] += d_in * d_in - d_out * d_out
            window_sums_along_row(column1, column2, kw, sums1, sums2)
            _window_statistics(sums1, sums2, inv_count, eps, m_row, s_row)
            # The rows this window row serves: its own (a + top), and above / below the valid band.
            first = 0 if a == 0 else a + top
            last = h - 1 if a == gh - 1 else a + top
            for i in range(first, last + 1):
                _normalise_row(x, n, c0, per_group, i, centre, m_row, s_row, left, gw, weight, bias, out)
        finite = math.isfinite(centre)
        for j in range(w):
            finite = finite and math.isfinite(column1[j]) and math.isfinite(column2[j])
        if not finite:
            for c in range(c0, c0 + per_group):
                out[n, c] = np.nan


if njit is not None:  # the row helpers, compiled into the kernel
    _normalise_row = njit(inline="always")(_normalise_row)
    _sample_centre = njit(inline="always")(_sample_centre)
    _window_statistics = njit(inline="always", error_model="numpy")(_window_statistics)
_compiled = parallel_kernel(_group_norm_planes, error_model="numpy")


def fused_group_norm_applies(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether :func:`fused_local_group_norm` may compute: numba present, CPU tensors, float32 or
    float64, no autograd, not traced."""
    tensors = [x, *(p for p in params if p is not None)]
    return _compiled is not None and x.dtype in (torch.float32, torch.float64) and cpu_kernel_applies(*tensors)


def affine_float64(
    weight: torch.Tensor | None, bias: torch.Tensor | None, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift): ``count`` float64 values each for the kernels, ones and zeros where absent."""
    f64 = torch.float64
    scale = torch.ones(count, dtype=f64) if weight is None else weight.detach().reshape(count).to(f64).contiguous()
    shift = torch.zeros(count, dtype=f64) if bias is None else bias.detach().reshape(count).to(f64).contiguous()
    return scale, shift


def fused_local_group_norm(
    x: torch.Tensor,
    num_groups: int,
    window: tuple[int, int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """:func:`tlc.local_group_norm` of a CPU (N, C, H, W) tensor with an already clamped window."""
    c = x.shape[1]
    work = x.contiguous()
    scale, shift = affine_float64(weight, bias, c)
    out = torch.empty_like(work)
    _compiled(work.numpy(), num_groups, window[0], window[1], float(eps), scale.numpy(), shift.numpy(), out.numpy())
    return out


_COLUMN_BLOCK = 512  # columns per task step: the block's rows stay in the first-level cache


def column_statistics(x, start, stop, eps, mean, scale):  # pragma: no cover (compiled into the kernels)
    """mean, scale (float64, stop - start each) of the columns start:stop of x (D, P), over the
    D rows: the mean, and 1 / sqrt(var + eps) of the biased variance of the centred values. Two
    passes over the block's rows while they sit in the cache; x is only read."""
    rows = x.shape[0]
    width = stop - start
    inv_rows = 1.0 / rows
    for j in range(width):
        mean[j] = 0.0
        scale[j] = 0.0
    for d in range(rows):
        row = x[d, start:stop]
        for j in range(width):
            mean[j] += np.float64(row[j])
    for j in range(width):
        mean[j] *= inv_rows
    for d in range(rows):
        row = x[d, start:stop]
        for j in range(width):
            centred = np.float64(row[j]) - mean[j]
            scale[j] += centred * centred
    for j in range(width):
        scale[j] = 1.0 / math.sqrt(scale[j] * inv_rows + eps)


def _layer_norm_column_blocks(x, eps, weight, bias, out):  # pragma: no cover (compiled by numba)
    """x, out: (D, P); weight, bias: (D,) float64 (ones and zeros without affine). Each column of
    x normalised over its D rows: centred by its mean, scaled by 1 / sqrt(var + eps) (biased
    variance of the centred values, :func:`column_statistics`), in float64, rounded once to out's
    dtype. Blocks of columns: three passes over a block's rows while they sit in the cache."""
    rows, columns = x.shape
    blocks = (columns + _COLUMN_BLOCK - 1) // _COLUMN_BLOCK
    for blk in prange(blocks):
        start = blk * _COLUMN_BLOCK
        stop = min(columns, start + _COLUMN_BLOCK)
        width = stop - start
        mean = np.empty(width, np.float64)
        scale = np.empty(width, np.float64)
        column_statistics(x, start, stop, eps, mean, scale)
        for d in range(rows):
            row, target = x[d, start:stop], out[d, start:stop]
            wd, bd = weight[d], bias[d]
            for j in range(width):
                target[j] = (np.float64(row[j]) - mean[j]) * scale[j] * wd + bd


if njit is not None:  # compiled into the kernels that call it
    column_statistics = njit(inline="always", error_model="numpy")(column_statistics)
_layer_norm_compiled = parallel_kernel(_layer_norm_column_blocks, error_model="numpy")


def fused_column_layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    """Each column of a (D, P) CPU tensor normalised over its D rows (``F.layer_norm`` of ``x.t()``
    over its last dim, then the affine ``weight``, ``bias`` (D,) per row), computed in float64 and
    rounded once: (D, P), dtype of ``x``, contiguous. None where the kernel cannot run (no numba,
    not float32 / float64, autograd, tracing, not on the CPU)."""
    tensors = [t for t in (x, weight, bias) if t is not None]
    if _layer_norm_compiled is None or x.dim() != 2 or x.dtype not in (torch.float32, torch.float64):
        return None
    if not cpu_kernel_applies(*tensors):
        return None
    scale, shift = affine_float64(weight, bias, x.shape[0])
    work = x.contiguous()
    out = torch.empty_like(work)
    _layer_norm_compiled(work.numpy(), float(eps), scale.numpy(), shift.numpy(), out.numpy())
    return out
