"""The channel-attention gates' CPU kernels (numba), for :mod:`tlc.ops.gate`: channel products
of a 1x1 layer, ECA's convolution across channels, the edge-replicated multiply and sum, and the
gate's last layer, activation and product in one pass a row. Each is None without numba."""

from __future__ import annotations

import numpy as np

from ._chain_kernels import CHAIN_BLOCK, fill_constants, run_program
from ._norm_kernels import column_statistics
from ._numba import fused_multiply_add, njit, parallel_kernel, prange


def _product_block(weight, planes, r, bias, with_bias, first, last, start, stop, out):  # pragma: no cover (compiled into the kernels)
    """out[i, start:stop] = weight[i] @ planes[:, r, start:stop] (+ bias[i]) for the outputs
    first <= i < last; weight (O, C), planes (C, R, L) (row r of each of C planes: C-contiguous
    rows, which numba vectorises; a (C, L) view of them would not be), out (O, L). Each output
    row's block summed over the C input rows in order while it stays in the first-level cache,
    four input rows a pass, the first four in the pass that starts the sums (one load and store of
    the output per four products: the stores bounded the one-row loop), the bias added last. The
    first product rounded, each later term a fused multiply-add (rounded once: as accurate, and
    fewer operations than a product and a sum; GCNet's 16 -> 8 layer over 921k positions 5.6 ->
    3.9 ms, its 8 -> 16 gate 10.3 -> 9.2 ms)."""
    channels = weight.shape[1]
    for i in range(first, last):
        target = out[i, start:stop]
        if channels >= 4:  # the first four rows in the pass that starts the sums
            s0, s1 = planes[0, r, start:stop], planes[1, r, start:stop]
            s2, s3 = planes[2, r, start:stop], planes[3, r, start:stop]
            f0, f1, f2, f3 = weight[i, 0], weight[i, 1], weight[i, 2], weight[i, 3]
            for j in range(stop - start):
                term = fused_multiply_add(f1, s1[j], f0 * s0[j])
                target[j] = fused_multiply_add(f3, s3[j], fused_multiply_add(f2, s2[j], term))
            k = 4
        else:
            source, factor = planes[0, r, start:stop], weight[i, 0]
            for j in range(stop - start):
                target[j] = factor * source[j]
            k = 1
        while k + 3 < channels:
            s0, s1 = planes[k, r, start:stop], planes[k + 1, r, start:stop]
            s2, s3 = planes[k + 2, r, start:stop], planes[k + 3, r, start:stop]
            f0, f1, f2, f3 = weight[i, k], weight[i, k + 1], weight[i, k + 2], weight[i, k + 3]
            for j in range(stop - start):  # the same order of sums as one row at a time
                term = fused_multiply_add(f1, s1[j], fused_multiply_add(f0, s0[j], target[j]))
                target[j] = fused_multiply_add(f3, s3[j], fused_multiply_add(f2, s2[j], term))
            k += 4
        while k < channels:
            source, factor = planes[k, r, start:stop], weight[i, k]
            for j in range(stop - start):
                target[j] = fused_multiply_add(factor, source[j], target[j])
            k += 1
        if with_bias:
            shift = bias[i]
            for j in range(stop - start):
                target[j] += shift


def _channel_product_blocks(weight, values, bias, out):  # pragma: no cover (compiled by numba)
    """out (O, P) = weight (O, C) @ values (C, P) (+ bias (O,), unless bias has no entries), by
    blocks of positions (:func:`_product_block`)."""
    outputs = weight.shape[0]
    positions = values.shape[1]
    with_bias = bias.shape[0] == outputs
    blocks = (positions + PRODUCT_BLOCK - 1) // PRODUCT_BLOCK
    planes = values.reshape((values.shape[0], 1, positions))
    for b in prange(blocks):
        start = b * PRODUCT_BLOCK
        stop = min(positions, start + PRODUCT_BLOCK)
        _product_block(weight, planes, 0, bias, with_bias, 0, outputs, start, stop, out)


def _product_layer_norm_blocks(weight, values, bias, eps, scale, shift, out):  # pragma: no cover (compiled by numba)
    """out (O, P) = each column of weight @ values + bias (as :func:`_channel_product_blocks`,
    rounded to out's dtype) normalised over its O rows as
    :func:`tlc.ops._norm_kernels._layer_norm_column_blocks` normalises it (mean, biased variance
    of the centred values, 1 / sqrt(var + eps), the affine ``scale``, ``shift`` (O,) float64, in
    float64 rounded once): the same bits, a block of positions at a time while the block's rows
    are in cache (GCNet's 16 -> 8 layer and LayerNorm([8, 1, 1]) on its pooled context). The
    statistics are the column norm's (:func:`tlc.ops._norm_kernels.column_statistics`, which only
    reads); the last pass is written here, in place on each row: a shared one reading x and
    writing out (the same array here) lost its vectorisation to the possible aliasing (8.0 ->
    11.3 ms at 16 -> 8 over 830k positions)."""
    outputs = weight.shape[0]
    positions = values.shape[1]
    with_bias = bias.shape[0] == outputs
    blocks = (positions + PRODUCT_BLOCK - 1) // PRODUCT_BLOCK
    planes = values.reshape((values.shape[0], 1, positions))
    for b in prange(blocks):
        start = b * PRODUCT_BLOCK
        stop = min(positions, start + PRODUCT_BLOCK)
        width = stop - start
        _product_block(weight, planes, 0, bias, with_bias, 0, outputs, start, stop, out)
        mean = np.empty(width, np.float64)
        spread = np.empty(width, np.float64)
        column_statistics(out, start, stop, eps, mean, spread)
        for d in range(outputs):
            row = out[d, start:stop]
            wd, bd = scale[d], shift[d]
            for j in range(width):
                row[j] = (np.float64(row[j]) - mean[j]) * spread[j] * wd + bd


def _chain_product_blocks(v0, v1, v2, v3, constants, program, weight, bias, tasks, out):  # pragma: no cover (compiled)
    """out (O, G) = weight (O, D) @ chain (D, G) (+ bias (O,), unless bias has no entries), the
    chain being :func:`tlc.ops._chain_kernels._chain_rows`' ``program`` on v0..v3 (D, G) and
    ``constants`` (K, D): a block of CHAIN_BLOCK positions at a time, the chain's D rows of the
    block computed into scratch and multiplied while in cache (:func:`_product_block`), so the
    chain's (D, G) result is never written out and read back (IMDN's ``sqrt(var) + mean`` before
    its first 1x1 layer). The same bits as the chain's kernel and then the product's. Blocks are
    split into ``tasks`` runs, each with its own scratch."""
    d, g = v0.shape
    outputs = weight.shape[0]
    with_bias = bias.shape[0] == outputs
    k_count = constants.shape[0]
    blocks = (g + CHAIN_BLOCK - 1) // CHAIN_BLOCK
    for t in prange(tasks):
        scratch = np.empty((k_count + program.shape[0], CHAIN_BLOCK), dtype=out.dtype)
        chained = np.empty((d, 1, CHAIN_BLOCK), dtype=out.dtype)
        rows = chained.reshape((d, CHAIN_BLOCK))
        block_out = np.empty((outputs, CHAIN_BLOCK), dtype=out.dtype)
        for b in range(t * blocks // tasks, (t + 1) * blocks // tasks):
            start = b * CHAIN_BLOCK
            stop = min(g, start + CHAIN_BLOCK)
            n = stop - start
            for row in range(d):
                fill_constants(constants, row, scratch, n)
                run_program(program, k_count, row, start, stop, v0, v1, v2, v3, scratch, rows, row, 0)
            _product_block(weight, chained, 0, bias, with_bias, 0, outputs, 0, n, block_out)
            for i in range(outputs):
                source, target = block_out[i, :n], out[i, start:stop]
                for j in range(n):
                    target[j] = source[j]


PRODUCT_BLOCK = 4096  # positions per block: an output row's block (16 KB in float32) stays in L1
if njit is not None:  # compiled into the kernels that call it
    _product_block = njit(inline="always")(_product_block)
channel_product_kernel = parallel_kernel(_channel_product_blocks)
chain_product_kernel = parallel_kernel(_chain_product_blocks)
# error_model="numpy": 1 / sqrt(0 + eps) with eps = 0 gives inf, as torch's layer norm.
product_layer_norm_kernel = parallel_kernel(_product_layer_norm_blocks, error_model="numpy")


def _conv1d_row(planes, r, taps, pad, first, bias, with_bias, o, start, stop, target):  # pragma: no cover (compiled)
    """target = output row ``o`` of a one-channel conv1d along the L planes of ``planes`` (L, R, P)
    at their row r (C-contiguous rows, as in :func:`_product_block`), positions [start, stop):
    tap ``first`` (one reaching every output row; -1: none, the sum then starts from zero) starts
    the sum, the others follow in order where their input row exists, each a fused multiply-add
    (rounded once, as torch's vectorised addcmul_ where the CPU has FMA), the bias (``bias[0]``,
    with ``with_bias``) last: the order of the torch ops in
    :func:`tlc.ops.gate.channel_conv1d`'s docstring, so the same bits."""
    length, k = planes.shape[0], taps.shape[0]
    if first >= 0:
        source, factor = planes[o + first - pad, r, start:stop], taps[first]
        for j in range(stop - start):
            target[j] = source[j] * factor
    else:
        for j in range(stop - start):
            target[j] = 0.0
    for t in range(k):
        row = o + t - pad
        if t != first and 0 <= row < length:
            source, factor = planes[row, r, start:stop], taps[t]
            for j in range(stop - start):
                target[j] = fused_multiply_add(source[j], factor, target[j])
    if with_bias:
        shift = bias[0]
        for j in range(stop - start):
            target[j] += shift


def _channel_conv1d_blocks(values, taps, pad, first, bias, out):  # pragma: no cover (compiled by numba)
    """out (L', P): a one-channel conv1d of stride 1 along the L rows of values (L, P) with the k
    ``taps`` and zero padding ``pad``, P positions (ECA's 1-D convolution across a gate's channels,
    every position at once), by blocks of positions: each output row's block gets its taps' terms
    (:func:`_conv1d_row`, tap ``first`` first, the bias unless it has no entries last) while it
    stays in the first-level cache."""
    positions = values.shape[1]
    with_bias = bias.shape[0] == 1
    planes = values.reshape((values.shape[0], 1, positions))
    blocks = (positions + PRODUCT_BLOCK - 1) // PRODUCT_BLOCK
    for b in prange(blocks):
        start = b * PRODUCT_BLOCK
        stop = min(positions, start + PRODUCT_BLOCK)
        for o in range(out.shape[0]):
            _conv1d_row(planes, 0, taps, pad, first, bias, with_bias, o, start, stop, out[o, start:stop])


if njit is not None:  # compiled into the kernels that call it
    _conv1d_row = njit(inline="always")(_conv1d_row)
channel_conv1d_kernel = parallel_kernel(_channel_conv1d_blocks)


def _combine_row(x_row, gate_row, left, add, out_row):  # pragma: no cover (compiled into the kernels)
    """out_row = x_row * gate_row (+ with ``add``), the gate row (shorter) placed at ``left`` and
    its end values replicated to the row's edges; the op chosen outside the loops, so each loop
    is vectorised."""
    w, gw = x_row.shape[0], gate_row.shape[0]
    edge_left, edge_right = gate_row[0], gate_row[gw - 1]
    x_mid, out_mid = x_row[left : left + gw], out_row[left : left + gw]
    x_right, out_right = x_row[left + gw :], out_row[left + gw :]
    if add:
        for j in range(left):
            out_row[j] = x_row[j] + edge_left
        for j in range(gw):
            out_mid[j] = x_mid[j] + gate_row[j]
        for j in range(w - left - gw):
            out_right[j] = x_right[j] + edge_right
    else:
        for j in range(left):
            out_row[j] = x_row[j] * edge_left
        for j in range(gw):
            out_mid[j] = x_mid[j] * gate_row[j]
        for j in range(w - left - gw):
            out_right[j] = x_right[j] * edge_right


if njit is not None:  # compiled into the kernels that call it
    _combine_row = njit(inline="always")(_combine_row)


def _combine_replicated_planes(x, gate, top, left, add, out):  # pragma: no cover (compiled by numba)
    """x, out: (P, H, W); gate: (P, gh, gw). out = x * gate (x + gate with ``add``), the gate
    edge-replicated, offset (top, left).

    Works on row views, the op chosen outside the loops: indexing the 3-d arrays inside the inner
    loop kept numba from vectorising it (2-3.6x slower on maps of 0.3-1 Mpixel)."""
    planes, h, gh = x.shape[0], x.shape[1], gate.shape[1]
    for p in prange(planes):
        for i in range(h):
            _combine_row(x[p, i], gate[p, min(max(i - top, 0), gh - 1)], left, add, out[p, i])


combine_replicated_kernel = parallel_kernel(_combine_replicated_planes)


def _exp_float32(v):  # pragma: no cover (compiled by numba)
    """exp(v) in float32 to about one unit in the last place (Cody-Waite reduction to
    r in [-ln2/2, ln2/2], Cephes' degree-6 expf polynomial, the power of two put into the
    exponent bits): arithmetic only, so numba vectorises it where its ``math.exp`` calls libm once
    per element (3x slower than torch's sigmoid, measured). Inputs are clamped to [-87.3, 88.3],
    where 2^k stays a normal float: exp(88.3) = 2.2e38, exp(-87.3) = 1.2e-38 (below, 1 + e^v is 1
    anyway); NaN stays NaN."""
    v = min(max(v, np.float32(-87.3)), np.float32(88.3))
    k = np.floor(v * np.float32(1.4426950408889634) + np.float32(0.5))
    r = v - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * np.int32((np.int32(k) + np.int32(127)) << np.int32(23)).view(np.float32)


def _sigmoid_row(gate):  # pragma: no cover (compiled by numba)
    """gate[j] = 1 / (1 + exp(-gate[j])) in place; 0 below -88.3 (where the exponential is
    clamped: torch's sigmoid gives 0 at -inf and subnormals down to -103.9), NaN kept."""
    one, zero, limit = np.float32(1.0), np.float32(0.0), np.float32(88.3)
    for j in range(gate.shape[0]):
        v = -gate[j]
        gate[j] = zero if v > limit else one / (one + _exp_float32(v))


def _softmax_pair_row(first, second):  # pragma: no cover (compiled by numba)
    """The softmax of each pair (first[j], second[j]) in place, with one exponential a pair:
    exp(0) = 1 for the larger."""
    one = np.float32(1.0)
    for j in range(first.shape[0]):
        difference = first[j] - second[j]  # NaN with either: both weights NaN
        high = first[j] if difference >= 0 else second[j]
        e = _exp_float32(-abs(difference))
        # + (high - high): NaN where the larger is +inf, as torch's inf - inf
        scale = one / (one + e) + (high - high)
        first[j], second[j] = (scale, e * scale) if difference >= 0 else (e * scale, scale)


def _exp_shifted_row(gate, highest, total):  # pragma: no cover (compiled by numba)
    """gate[j] = exp(gate[j] - highest[j]) in place, added to total[j]."""
    for j in range(gate.shape[0]):
        gate[j] = _exp_float32(gate[j] - highest[j])
        total[j] += gate[j]


def _softmax_across_groups(gates, groups, top_sum):  # pragma: no cover (compiled into the kernels)
    """The softmax across ``groups`` blocks of the C rows of ``gates`` (C, gw), in place: row
    g * C / groups + q of each block for each q (selective-kernel fusion's branches). Two groups
    by pairs (one exponential a pair); more with the largest subtracted, one division, then
    products (as torch's softmax). top_sum: (2, gw) scratch for the maxima and sums."""
    per_group = gates.shape[0] // groups
    gw = gates.shape[1]
    if groups == 2:
        for q in range(per_group):
            _softmax_pair_row(gates[q], gates[per_group + q])
        return
    one = np.float32(1.0)
    highest, total = top_sum[0], top_sum[1]
    for q in range(per_group):
        first = gates[q]
        for j in range(gw):
            highest[j] = first[j]
            total[j] = 0.0
        for g in range(1, groups):
            other = gates[g * per_group + q]
            for j in range(gw):
                highest[j] = max(highest[j], other[j])
        for g in range(groups):
            _exp_shifted_row(gates[g * per_group + q], highest, total)
        for j in range(gw):  # one division, then products (as torch's softmax)
            total[j] = one / total[j]
        for g in range(groups):
            gate = gates[g * per_group + q]
            for j in range(gw):
                gate[j] = gate[j] * total[j]


def _gate_rows(x, values, weight, bias, taps, pad, first_tap, top, left, add, activation, groups, tasks, sums, out):  # pragma: no cover (compiled by numba)
    """out (N, C, H, W) = x op gate edge-replicated, offset (top, left) (op: ``+`` with ``add``,
    else ``*``), float32, the gate at each valid window position (gh x gw of them) being
    ``act(weight @ values + bias)`` (the product unless ``weight`` has no rows: then ``values``
    (N, C, gh, gw) is the gate before its activation; the bias unless it has no entries). values
    (N, D, gh, gw), weight (C, D), bias (C,). ``act``: ``activation`` 0 none, 1 the sigmoid, 2 a
    softmax across ``groups`` blocks of C / groups planes (plane g * C / groups + c of each).

    With ``taps`` (k > 0 of them; ``weight`` then has no rows) the gate is instead a conv1d across
    the D planes (ECA's), zero padding ``pad``, C = D + 2 pad - k + 1 outputs, tap ``first_tap``
    (-1: none) first: :func:`_conv1d_row`, as :func:`_channel_conv1d_blocks` sums it.

    Rows of the output are split into ``tasks`` runs, each with a scratch row of the gate for
    every plane: a gate row is made once (the layer's sums by :func:`_product_block`, those of
    :func:`_channel_product_blocks`, so the same bits before the activation), every plane's row
    made and activated, then combined with every output row that replicates it (the edge rows
    share the first and last) while it stays in cache; the C-plane gate is never written out.
    Making all the planes' rows before streaming the map's rows is 3-10% faster with a layer or
    ECA's taps (16 x 720 x 1280, window 48: 9.45 -> 8.9 ms from 4 values, 11.5 -> 10.6 from 8)
    than combining each plane's row as soon as it is made: the layer's sums run undisturbed by
    the map's streams.

    With a softmax and ``sums`` (N, C / groups, H, W) (else (0, 0, 0, 0)), each output row's
    sum over the groups goes there too while the row is in cache, from +0 in the groups' order:
    ``torch.sum`` over the branches' dim of the output viewed (N, groups, C / groups, H, W),
    bit for bit for up to four groups (selective-kernel fusion sums its weighted branches; that
    sum otherwise reads the whole output back)."""
    n, c, h = x.shape[0], x.shape[1], x.shape[2]
    gh, gw = values.shape[2], values.shape[3]
    product, band = weight.shape[0] > 0, taps.shape[0] > 0
    with_bias = bias.shape[0] > 0
    rows = n * h
    summed = activation == 2 and sums.shape[0] == n
    for t in prange(tasks):
        gates = np.empty((c, gw), dtype=x.dtype)
        top_sum = np.empty((2, gw if activation == 2 else 0), dtype=x.dtype)  # a softmax's maxima and sums
        made = -1  # the (image, gate row) the scratch holds, as b * gh + gi
        for r in range(t * rows // tasks, (t + 1) * rows // tasks):
            b, i = r // h, r % h
            gi = min(max(i - top, 0), gh - 1)
            if b * gh + gi != made:
                made = b * gh + gi
                for p in range(c):
                    gate = gates[p]
                    if band:
                        _conv1d_row(values[b], gi, taps, pad, first_tap, bias, with_bias, p, 0, gw, gate)
                    elif product:  # the sums of _channel_product_blocks, so the same bits
                        _product_block(weight, values[b], gi, bias, with_bias, p, p + 1, 0, gw, gates)
                    elif with_bias:
                        source, shift = values[b, p, gi], bias[p]
                        for j in range(gw):
                            gate[j] = source[j] + shift
                    else:
                        source = values[b, p, gi]
                        for j in range(gw):
                            gate[j] = source[j]
                    if activation == 1:
                        _sigmoid_row(gate)
                if activation == 2:
                    _softmax_across_groups(gates, groups, top_sum)
            for p in range(c):
                _combine_row(x[b, p, i], gates[p], left, add, out[b, p, i])
            if summed:
                _sum_groups_row(out[b], i, groups, sums[b])


def _sum_groups_row(planes, i, groups, sums):  # pragma: no cover (compiled into the kernels)
    """sums[q, i] = ((+0 + planes[q, i]) + planes[P + q, i]) + ... over the ``groups`` blocks of
    P = len(sums) planes: torch.sum's order over a dim of at most four (its +0 start turns -0
    into +0)."""
    per_group = sums.shape[0]
    zero = np.float32(0.0)
    for q in range(per_group):
        target, first = sums[q, i], planes[q, i]
        for j in range(target.shape[0]):
            target[j] = zero + first[j]
        for g in range(1, groups):
            source = planes[g * per_group + q, i]
            for j in range(target.shape[0]):
                target[j] += source[j]


if njit is not None:
    _exp_float32 = njit(inline="always")(_exp_float32)
    # The exponential's rows compiled on their own, their products and sums contracted to fused
    # multiply-adds (the polynomial's: 0.49 -> 0.35 ns an element on one core, as accurate); the
    # kernel itself is not contracted: the layer's fused multiply-adds are the ones _product_block
    # writes (fused_multiply_add), the same bits as _channel_product_blocks.
    _sigmoid_row = njit(fastmath={"contract"}, error_model="numpy")(_sigmoid_row)
    _softmax_pair_row = njit(fastmath={"contract"}, error_model="numpy")(_softmax_pair_row)
    _exp_shifted_row = njit(fastmath={"contract"}, error_model="numpy")(_exp_shifted_row)
    _softmax_across_groups = njit(inline="always")(_softmax_across_groups)
    _sum_groups_row = njit(inline="always")(_sum_groups_row)
gate_rows_kernel = parallel_kernel(_gate_rows)
