"""Channel-attention gates made local, computed on the small map of valid windows.

Squeeze-excitation / channel attention computes ``x * f(pool(x))`` with ``f`` a chain of 1x1
convolutions and activations. Made local, ``pool(x)`` is a full-size map of local means, and
running ``f`` on it at full size costs as much as a 3x3 convolution (measured on a 2-core CPU:
two 1x1 convolutions 24 -> 6 -> 24 at 720x1280 took 0.7 s, a 3x3 24 -> 24 convolution 0.68 s).
Edge replication commutes with per-pixel layers, so ``f`` runs on the (H-kh+1) x (W-kw+1) map of
valid windows only and the gate is replicated while it multiplies: the same numbers, for about
the cost of the global version's broadcast multiply.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._chain_kernels import CHAIN_BLOCK
from ._common import Pair, cpu_kernel_applies, tracing
from ._gate_kernels import (
    PRODUCT_BLOCK, chain_product_kernel, channel_conv1d_kernel, channel_product_kernel, combine_replicated_kernel,
    gate_rows_kernel, product_layer_norm_kernel,
)
from ._norm_kernels import affine_float64
from ._triton import triton_applies, triton_spread
from .chain import ChainStep, kernel_arguments
from .norm import layer_norm_columns
from .pool import clamp_window, replicate_to, valid_local_mean


def apply_pointwise(
    y: torch.Tensor, layers: nn.Module | list[nn.Module] | tuple[nn.Module, ...], overwrite: bool = False
) -> torch.Tensor:
    """Run per-pixel layers (a module, an ``nn.Sequential`` or a list) on ``y`` (N, C, h, w).

    1x1 convolutions run as matrix products on the CPU: oneDNN's 1x1 convolutions with few
    channels are slow there (layout conversions dominate), BLAS computes the same sums quickly.
    Other layers are called as they are.

    Args:
        y: (N, C, h, w) map, e.g. the valid windows' means.
        layers: the per-pixel layers, run in order.
        overwrite: ``y`` is the caller's to overwrite (used nowhere else): activations then run
            in place on it, and a later product may be written into it.

    Returns:
        (N, C', h, w) result of the layers; with ``overwrite`` it may share ``y``'s memory.
    """
    if isinstance(layers, nn.Module):
        layers = list(layers) if isinstance(layers, nn.Sequential) else [layers]
    owned = overwrite  # whether y is a tensor this call may overwrite
    # A tensor made here (or y itself, with overwrite) that no longer holds a value still to be
    # read: the next product goes into it. A fresh map of this size costs more in page faults
    # than the product itself (53 MB: 14 ms fresh, 1.7 ms into a reused buffer, measured).
    spare = None
    for layer in layers:
        before, was_owned = y, owned
        if (
            is_channel_product(layer)
            and y.device.type == "cpu"
            and y.dim() == 4
            and y.shape[-2] * y.shape[-1] > 1  # one window: the layer itself, as the original runs it
            and not tracing()
        ):
            n, c, h, w = y.shape
            weight = layer.weight.view(layer.out_channels, c)
            shape = (n, layer.out_channels, h * w)
            into = None
            if (
                spare is not None
                and spare.numel() == n * layer.out_channels * h * w
                and spare.dtype == torch.result_type(y, layer.weight)
                and spare.is_contiguous()
                and _may_overwrite(spare)
                and _may_overwrite(y)
                and not (torch.is_grad_enabled() and layer.weight.requires_grad)
            ):
                into = spare.view(shape)
            spare = None
            y, owned = _layer_at_positions(y, weight, layer.bias, into), True
        elif owned and _may_overwrite(y) and type(layer) in _IN_PLACE:
            # The gate's maps are nearly as large as the feature map: overwriting them saves a
            # fresh allocation (page faults) and a pass over memory per activation.
            y = _IN_PLACE[type(layer)](y)
        else:
            y, owned = layer(y), False
        if was_owned and _may_overwrite(before) and y.untyped_storage().data_ptr() != before.untyped_storage().data_ptr():
            spare = before  # read by this layer, never again (and not a view of its result)
    return y


def is_channel_product(layer: nn.Module) -> bool:
    """Whether ``layer`` is a 1x1 convolution over all channels: a product of its weight with each
    pixel's channel vector (plus its bias), linear per pixel."""
    return (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.stride == (1, 1)
        and layer.padding in ((0, 0), "valid")
        and layer.groups == 1
    )


# Costs of the CPU kernels on 2 cores (measured at 720x1280, 4-64 channels, freed memory kept), in
# ns: the valid windows' mean per plane element read or written, a channel product per multiply
# and per element read or written. Only their ratios matter: they choose an order, not a result.
_MEAN_NS, _MULTIPLY_NS, _PRODUCT_NS = 0.28, 0.03, 0.1


def layer_first_is_cheaper(size: tuple[int, int], layer: nn.Module, window: int | Pair) -> bool:
    """Whether ``valid_local_mean(layer(x))`` costs less than ``layer(valid_local_mean(x))`` for a
    map of ``size`` (H, W): the layer then averages fewer planes than it reads (a gate's first 1x1
    layer narrows C to C / r), for its products at every pixel instead of every window position.

    Never where one window covers the map (the original's own order: the map's mean, then the layer).
    """
    if not is_channel_product(layer):
        return False
    return product_first_is_cheaper(size, layer.in_channels, layer.out_channels, window)


def product_first_is_cheaper(size: tuple[int, int], channels: int, outputs: int, window: int | Pair) -> bool:
    """:func:`layer_first_is_cheaper` for any per-pixel product of ``channels`` inputs and
    ``outputs`` outputs (a 1x1 convolution, a ``Linear`` layer on pooled vectors)."""
    (h, w), (kh, kw) = size, clamp_window(window, size)
    area, positions = h * w, (h - kh + 1) * (w - kw + 1)
    if positions == 1:
        return False
    per_position = _MULTIPLY_NS * channels * outputs + _PRODUCT_NS * (channels + outputs)
    mean_first = _MEAN_NS * channels * (area + positions) + per_position * positions
    layer_first = per_position * area + _MEAN_NS * outputs * (area + positions)
    return layer_first < mean_first


def pooled_pointwise(
    x: torch.Tensor, layers: nn.Module | list[nn.Module] | tuple[nn.Module, ...], window: int | Pair
) -> torch.Tensor:
    """``apply_pointwise(valid_local_mean(x, window), layers)`` in the cheaper order: a window
    mean and a 1x1 convolution commute (the layer of the windows' means is the windows' mean of
    the layer), so where :func:`layer_first_is_cheaper` says so the first layer runs on the full
    map and the mean on its (fewer) output planes. The same values up to float rounding: each
    product is rounded per pixel instead of per window (absolute error ~1e-7 of the products'
    size, as the layer's own products at full resolution have); float32 and float64 only.

    Args:
        x: (N, C, H, W) map (the gate's input).
        layers: per-pixel layers (module, ``nn.Sequential`` or list), run in order on the means.
        window: (kh, kw) pixels (an int: square), clamped to the map.

    Returns:
        (N, C', H - kh + 1, W - kw + 1) result of the layers on the valid windows' means.
    """
    if isinstance(layers, nn.Module):
        layers = list(layers) if isinstance(layers, nn.Sequential) else [layers]
    # Half precision keeps the means first: its products, rounded per pixel to 3 digits, would
    # swamp a small window mean of large values.
    single_or_double = x.dtype in (torch.float32, torch.float64)
    if layers and x.dim() == 4 and single_or_double and layer_first_is_cheaper(tuple(x.shape[-2:]), layers[0], window):
        first = apply_pointwise(x, layers[:1])
        return apply_pointwise(valid_local_mean(first, window), layers[1:], overwrite=True)
    return apply_pointwise(valid_local_mean(x, window), layers, overwrite=True)


def pointwise_sum(a: torch.Tensor, b: torch.Tensor, layer: nn.Module, overwrite: bool = False) -> torch.Tensor:
    """``layer(a) + layer(b)`` for a 1x1 convolution over all channels, as ``layer``'s weight times
    ``a + b`` plus twice its bias: a 1x1 layer is linear per pixel, so this is the same value up to
    float rounding, for one product instead of two and a sum over the layer's input channels
    instead of its outputs (CBAM's shared MLP on the average- and max-pooled maps: the hidden C/r
    planes summed, not the C gate planes). Maps of one pixel (one window covering the feature map)
    take the original's order, bit for bit.

    Args:
        a, b: (N, C, h, w) maps.
        layer: ``nn.Conv2d`` with a 1x1 kernel, stride 1, no padding, one group.
        overwrite: ``a`` is the caller's to overwrite (the sum then goes into it).

    Returns:
        (N, C', h, w).
    """
    if not is_channel_product(layer):
        raise ValueError("pointwise_sum takes a 1x1 convolution over all channels")
    n, c, h, w = a.shape
    if h * w == 1 or tracing():
        return layer(a) + layer(b)
    total = a.add_(b) if overwrite and _may_overwrite(a) and a.shape == b.shape else a + b
    bias = None if layer.bias is None else layer.bias * 2
    if n == 1 and total.device.type == "cpu" and total.is_contiguous():
        weight = layer.weight.view(layer.out_channels, c)
        return channel_product(weight, total.view(c, h * w), None, bias).view(1, layer.out_channels, h, w)
    return torch.nn.functional.conv2d(total, layer.weight, bias)


# Wider layers: BLAS's blocking pays for itself (2 threads, 302k positions: 128 x 128 mm 26 ms,
# this kernel 47; 64 x 64 44 and 32; 128 x 32 51 and 34; 96 x 24 29 and 17).
_PRODUCT_MAX_CHANNELS, _PRODUCT_MAX_WEIGHTS = 128, 4096


def _product_fits(weight: torch.Tensor, shape: torch.Size, dtype: torch.dtype, bias: torch.Tensor | None) -> bool:
    """Whether ``weight`` (O, C) @ values of ``shape`` (C, P) and ``dtype`` (+ bias (O,)) is the
    channel products' kernel's: a gate-sized layer, enough positions, one floating dtype, weight
    and bias on the CPU without autograd."""
    return (
        weight.dim() == 2
        and len(shape) == 2
        and weight.shape[1] == shape[0]
        and max(weight.shape) <= _PRODUCT_MAX_CHANNELS
        and weight.shape[0] * weight.shape[1] <= _PRODUCT_MAX_WEIGHTS
        and shape[1] >= PRODUCT_BLOCK
        and weight.dtype == dtype
        and dtype in (torch.float32, torch.float64)
        and cpu_kernel_applies(weight)
        and (bias is None or bias.shape == (weight.shape[0],) and bias.dtype == dtype and cpu_kernel_applies(bias))
    )


def _product_kernel_applies(weight: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the channel products' CPU kernel takes ``weight`` (O, C) @ ``values`` (C, P) (+ bias
    (O,)): :func:`_product_fits`, values contiguous on the CPU without autograd (the kernel itself
    aside: None without numba)."""
    return _product_fits(weight, values.shape, values.dtype, bias) and values.is_contiguous() and cpu_kernel_applies(values)


def chain_product(
    values: Sequence[torch.Tensor],
    constants: torch.Tensor,
    steps: Sequence[ChainStep],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``channel_product(weight, evaluate_chain(values, constants, steps), bias=bias)`` in one
    pass where the CPU kernels would compute both: the chain's result computed a block of
    positions at a time and multiplied while in cache, never written out (IMDN's
    ``sqrt(var) + mean`` (16, 830k) before its 16 -> 4 layer). The same bits as the two calls.

    Args:
        values, constants, steps: the chain, as :func:`tlc.ops.chain.evaluate_chain` takes it:
            V inputs (D, G), constants (K, D), the steps.
        weight: (O, D) layer weight; bias: (O,) or None.

    Returns:
        (O, G) tensor, dtype of ``values``; None where either kernel would not run (the caller
        then evaluates the chain and takes the product).
    """
    if chain_product_kernel is None:
        return None
    arguments = kernel_arguments(values, constants, steps)
    if arguments is None or not _product_fits(weight, values[0].shape, values[0].dtype, bias):
        return None
    g = values[0].shape[1]
    out = torch.empty((weight.shape[0], g), dtype=values[0].dtype)
    shift = torch.empty(0, dtype=out.dtype) if bias is None else bias.detach().contiguous()
    blocks = -(-g // CHAIN_BLOCK)
    tasks = max(1, min(blocks, 4 * torch.get_num_threads()))
    chain_product_kernel(*arguments, weight.detach().contiguous().numpy(), shift.numpy(), tasks, out.numpy())
    return out


def channel_product(
    weight: torch.Tensor, values: torch.Tensor, out: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``weight @ values`` (``+ bias[:, None]`` with a bias): a 1x1 layer's weight (O, C) (and
    bias (O,)) applied to values laid out channel first (C, P), P positions; into ``out`` (O, P)
    when given. The bias is added to each sum last, as ``torch.mm(...).add_(bias)`` would.

    A gate's 1x1 layers have few channels and many positions (16 -> 4 -> 16 over 0.3-0.8 M
    windows), a shape BLAS handles poorly: measured on 2 threads, 4 x 16 by 16 x 830k took 5.7 ms in
    torch.mm and 3.7 ms in the CPU kernel here, 16 x 4 by 4 x 302k 2.4 and 1.0 ms, 48 x 4 by 4 x 302k
    10.2 and 3.9 ms (four input rows a pass and the bias in the same pass: 1.0, 1.25 and 3.2 ms;
    16 x 64 by 64 x 830k: mm 46, the one-row loop 39, this 26 ms; each term after the first a
    fused multiply-add since: 8 x 16 by 16 x 921k 5.6 -> 3.9 ms). The kernel sums each output over
    the channels in order, in the values' dtype, each term after the first rounded once with its
    sum (BLAS may order the same sums otherwise: the last bits differ). Elsewhere (few positions,
    wide layers, other dtypes or devices) ``torch.mm``.

    Returns:
        (O, P) tensor: ``out`` when given.
    """
    fits = (
        channel_product_kernel is not None
        and _product_kernel_applies(weight, values, bias)
        and (out is None or out.is_contiguous() and out.dtype == values.dtype and out.shape == (weight.shape[0], values.shape[1]))
        and (out is None or cpu_kernel_applies(out))
    )
    if not fits:
        result = torch.mm(weight, values) if out is None else torch.mm(weight, values, out=out)
        if bias is None:
            return result
        return result + bias.view(-1, 1) if torch.is_grad_enabled() and result.requires_grad else result.add_(bias.view(-1, 1))
    result = torch.empty((weight.shape[0], values.shape[1]), dtype=values.dtype) if out is None else out
    shift = torch.empty(0, dtype=values.dtype) if bias is None else bias.detach().contiguous()
    channel_product_kernel(weight.detach().contiguous().numpy(), values.numpy(), shift.numpy(), result.numpy())
    return result


def channel_product_layer_norm(
    weight: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``layer_norm_columns(channel_product(weight, values, None, bias), norm_weight, norm_bias,
    eps)``: a 1x1 layer on values laid out channel first, then each position's O outputs
    normalised over themselves (GCNet's ``Conv2d(C, C', 1)`` then ``LayerNorm([C', 1, 1])`` at
    every window position). On the CPU in float32 / float64 where the product's kernel applies,
    one pass a block of positions, the layer's outputs normalised while in cache (never written
    out and read back): the same bits as the two calls. Elsewhere the two calls.

    Args:
        weight: (O, C); bias: (O,) or None.
        values: (C, P), rows contiguous.
        norm_weight, norm_bias: O values each or None.
        eps: added to the variance.

    Returns:
        (O, P) tensor.
    """
    outputs = weight.shape[0]
    norm = [t for t in (norm_weight, norm_bias) if t is not None]
    fits = (
        product_layer_norm_kernel is not None
        and _product_kernel_applies(weight, values, bias)
        and all(t.numel() == outputs for t in norm)
        and cpu_kernel_applies(*norm)
    )
    if not fits:
        return layer_norm_columns(channel_product(weight, values, None, bias), norm_weight, norm_bias, eps)
    out = torch.empty((outputs, values.shape[1]), dtype=values.dtype)
    shift = torch.empty(0, dtype=values.dtype) if bias is None else bias.detach().contiguous()
    scale64, shift64 = affine_float64(norm_weight, norm_bias, outputs)
    product_layer_norm_kernel(
        weight.detach().contiguous().numpy(), values.numpy(), shift.numpy(), float(eps), scale64.numpy(), shift64.numpy(), out.numpy()
    )
    return out


def _tap_spans(length: int, k: int, pad: int) -> list[tuple[int, int, int]]:
    """(tap j, first output, end of outputs) that tap j of a stride-1 conv1d reaches, for signals
    of ``length`` zero-padded by ``pad``."""
    out_length = length + 2 * pad - k + 1
    return [(j, max(0, pad - j), min(out_length, length + pad - j)) for j in range(k)]


def _full_tap(length: int, k: int, pad: int) -> int:
    """The first tap that reaches every output (-1: none), which starts :func:`channel_conv1d`'s sums."""
    out_length = length + 2 * pad - k + 1
    return next((j for j, lo, hi in _tap_spans(length, k, pad) if (lo, hi) == (0, out_length)), -1)


def channel_conv1d(values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int) -> torch.Tensor:
    """``conv1d`` with one input and one output channel, stride 1, zero padding ``pad``, along the
    rows of values laid out (L, P): P positions, each a length-L signal (ECA's convolution across a
    gate's C channels at every window position). Computed as the torch ops::

        out = values[rows of the tap reaching every output] * weight[that tap]  (else zeros)
        out[rows where tap j's input exists] += values[shifted rows] * weight[j]   (taps in order)
        out += bias

    by a CPU kernel in one pass over the values where it applies (float32 / float64, no autograd;
    ECA at 720p: one pass where the torch ops make k, each reading and writing a gate-sized map),
    and by those ops elsewhere. The same bits either way.

    Args:
        values: (L, P) tensor, rows contiguous.
        weight: (k,) taps.
        bias: None or a one-element tensor.
        pad: zeros on each end of every signal.

    Returns:
        (L + 2 * pad - k + 1, P) tensor.
    """
    length, positions = values.shape
    k = weight.shape[0]
    out_length = length + 2 * pad - k + 1
    if out_length < 1:
        raise ValueError(f"conv1d of length {length} with {k} taps and padding {pad} has no output")
    spans = _tap_spans(length, k, pad)
    first = next((j for j, lo, hi in spans if (lo, hi) == (0, out_length)), None)
    tensors = (values, weight) if bias is None else (values, weight, bias)
    if (
        channel_conv1d_kernel is not None
        and values.dtype in (torch.float32, torch.float64)
        and all(t.dtype == values.dtype for t in tensors)
        and values.is_contiguous()
        and cpu_kernel_applies(*tensors)
    ):
        out = torch.empty((out_length, positions), dtype=values.dtype)
        shift = torch.empty(0, dtype=values.dtype) if bias is None else bias.detach().reshape(1).contiguous()
        taps = weight.detach().contiguous()
        channel_conv1d_kernel(values.numpy(), taps.numpy(), pad, -1 if first is None else first, shift.numpy(), out.numpy())
        return out
    if first is None:
        out = values.new_zeros((out_length, positions))
    else:
        out = values[first - pad : first - pad + out_length] * weight[first]
    for j, lo, hi in spans:  # out[o] += w[j] * x[o + j - pad] where that entry exists
        if lo < hi and j != first:
            out[lo:hi].addcmul_(values[lo + j - pad : hi + j - pad], weight[j])
    if bias is not None:
        out = out + bias.reshape(1, 1) if torch.is_grad_enabled() and out.requires_grad else out.add_(bias.reshape(1, 1))
    return out


def into_first(op: str, a: torch.Tensor, b: torch.Tensor | float | None = None) -> torch.Tensor:
    """``a + b``, ``a - b``, ``a * b``, ``a / b`` (op ``"add"``, ``"sub"``, ``"mul"``, ``"div"``) or
    ``sigmoid(a)``, ``tanh(a)``, ``relu(a)``, written into ``a`` where the result has its shape
    and dtype and autograd does not need ``a``; else computed as usual. The same numbers either
    way. For callers that know ``a`` is theirs and read nowhere else (see
    :mod:`tlc.convert.pooled_gate`): a fresh gate-sized map costs more than the arithmetic.

    Args:
        op: one of the names above.
        a: the tensor that may be overwritten.
        b: the second operand of a binary op (tensor or number); None for the unary ones.

    Returns:
        The result: ``a`` itself when written into it.
    """
    if op not in _INTO_FIRST:
        raise ValueError(f"op must be one of {sorted(_INTO_FIRST)}, not {op!r}")
    in_place, plain = _INTO_FIRST[op]
    unary = op in INTO_FIRST_UNARY
    fits = (
        _may_overwrite(a)
        and a.is_floating_point()
        and (unary or isinstance(b, (int, float, torch.Tensor)) and torch.result_type(a, b) == a.dtype)
        and (
            not isinstance(b, torch.Tensor)
            or (
                not (torch.is_grad_enabled() and b.requires_grad)
                and b.device == a.device
                and torch.broadcast_shapes(a.shape, b.shape) == a.shape
            )
        )
    )
    if unary:
        return in_place(a) if fits else plain(a)
    return in_place(a, b) if fits else plain(a, b)


INTO_FIRST_UNARY = ("sigmoid", "tanh", "relu")  # the ops into_first takes with one operand
_INTO_FIRST = {
    "add": (torch.Tensor.add_, torch.add),
    "sub": (torch.Tensor.sub_, torch.sub),
    "mul": (torch.Tensor.mul_, torch.mul),
    "div": (torch.Tensor.div_, torch.div),
    "sigmoid": (torch.sigmoid_, torch.sigmoid),
    "tanh": (torch.tanh_, torch.tanh),
    "relu": (torch.relu_, torch.relu),
}


def _may_overwrite(t: torch.Tensor) -> bool:
    """In-place ops are safe on tensors made here, unless autograd must see the original."""
    return not (torch.is_grad_enabled() and t.requires_grad) and not tracing()


# Activations without parameters or options, applied in place on tensors apply_pointwise made.
_IN_PLACE = {
    nn.ReLU: torch.relu_,
    nn.Sigmoid: torch.sigmoid_,
    nn.Tanh: torch.tanh_,
    nn.Identity: lambda t: t,
}


ACTIVATIONS = ("sigmoid", "softmax")  # what combine_replicated applies to a gate before combining
_ACTIVATION_CODES = {None: 0, "sigmoid": 1, "softmax": 2}  # as gate_rows_kernel takes them


def _replicated(gate: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``replicate_to`` for gates of any rank >= 2 (F.pad replicates 3-d and 4-d inputs only)."""
    if gate.dim() == 4:
        return replicate_to(gate, size)
    planes = gate.reshape(1, -1, *gate.shape[-2:])
    return replicate_to(planes, size).reshape(*gate.shape[:-2], *size)


def combine_replicated(
    x: torch.Tensor,
    gate: torch.Tensor,
    op: str = "mul",
    activation: str | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    channel_taps: torch.Tensor | None = None,
    channel_pad: int = 0,
) -> torch.Tensor:
    """``x * replicate_to(gate, x.shape[-2:])`` (or ``+``, ``-`` with ``op="add"``, ``"sub"``)
    without building the replicated gate; optionally the gate's last layer and activation first,
    at each window position: ``x * replicate_to(sigmoid(weight @ gate + bias), ...)``.

    Args:
        x: (..., H, W) tensor, at least 3-d, e.g. (N, C, H, W) or selective-kernel fusion's
            (N, branches, C, H, W).
        gate: (..., gh, gw) values of the valid windows, the leading dims those of ``x``,
            gh <= H, gw <= W (as from :func:`tlc.ops.pool.valid_local_mean` followed by per-pixel
            layers); with ``weight``, (N, D, gh, gw) values the layer takes, x then (N, C, H, W).
        op: "mul", "add" or "sub" (``x - gate``).
        activation: None, "sigmoid" or "softmax" (:data:`ACTIVATIONS`), applied to the gate
            before combining; "softmax" normalises over dim 1 of x (N, k, C, H, W) (selective-kernel
            fusion's branches): the gate's k * C values per position (after the layer) as (k, C).
        weight: (C, D) (or (C, D, 1, 1)) weight of a per-position layer (a 1x1 convolution's or a
            Linear layer's) applied to the gate's D channels first; ``bias`` (C,) its bias (added last).
        channel_taps: instead of ``weight``, the (k,) (or (1, 1, k)) taps of a conv1d across the
            gate's D channels at each position (ECA's), zero padding ``channel_pad``, giving C =
            D + 2 * channel_pad - k + 1 channels, as :func:`channel_conv1d` computes it (the same
            bits); ``bias`` then None or its one-element bias.

    Returns:
        Tensor of the shape of ``x``, the dtype ``x * gate`` would have. Without ``activation``
        and ``weight``, exact: each output is the one product (sum) the unfused form computes.
        With them, on the CPU in float32, one pass computes the layer (the same sums in the same
        order as :func:`channel_product`), the sigmoid (an exponential within about 2 units in the
        last place of torch's) and the product for each row of the output, where the unfused form
        writes and reads gate-sized maps three times more (RCAN's 16 -> 4 -> 16 gate at 720x1280,
        2 threads: 8.6 -> 6.6 ms at window 48, 5.1 -> 4.5 at 384); elsewhere torch's sigmoid or
        softmax and the layer as :func:`apply_pointwise` runs it.
    """
    return _combine(x, gate, op, activation, weight, bias, channel_taps, channel_pad)[0]


def _combine(
    x: torch.Tensor,
    gate: torch.Tensor,
    op: str,
    activation: str | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    channel_taps: torch.Tensor | None,
    channel_pad: int,
    sums: torch.Tensor | None = None,
) -> tuple[torch.Tensor, bool]:
    """:func:`combine_replicated`, and whether the gate kernel also wrote the result's sum over
    the branches into ``sums`` (given with a softmax: see :func:`combine_replicated_summing_branches`)."""
    if op not in ("mul", "add", "sub"):
        raise ValueError(f"op must be 'mul', 'add' or 'sub', not {op!r}")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, not {activation!r}")
    if channel_taps is not None:
        if weight is not None:
            raise ValueError("a gate takes a weight or channel taps, not both")
        if channel_taps.dim() == 3 and channel_taps.shape[:2] == (1, 1):
            channel_taps = channel_taps.flatten()  # a Conv1d(1, 1, k)'s weight
        if channel_taps.dim() != 1 or channel_taps.numel() == 0:
            raise ValueError(f"channel_taps must be (k,) or (1, 1, k), not {tuple(channel_taps.shape)}")
        if bias is not None and bias.numel() != 1:
            raise ValueError(f"a conv1d across channels takes a one-element bias, not {tuple(bias.shape)}")
        if activation == "softmax" or x.dim() != 4 or gate.dim() != 4:
            raise ValueError("channel taps take x and a gate of (N, C, H, W) and no softmax")
        if channel_pad < 0 or gate.shape[1] + 2 * channel_pad - channel_taps.shape[0] + 1 != x.shape[1]:
            raise ValueError(
                f"a conv1d of {gate.shape[1]} channels with {channel_taps.shape[0]} taps and padding {channel_pad} "
                f"does not give x's {x.shape[1]}"
            )
    elif weight is None and bias is not None:
        raise ValueError("a bias without a weight")
    if weight is not None and weight.dim() == 4 and weight.shape[2:] == (1, 1):
        weight = weight.flatten(1)  # a 1x1 convolution's
    if weight is not None and weight.dim() != 2:
        raise ValueError(f"weight must be (C, D) or (C, D, 1, 1), not {tuple(weight.shape)}")
    if activation == "softmax" and (x.dim() != 5 or (weight is None and gate.shape[:3] != x.shape[:3])):
        raise ValueError(f"a softmax over branches takes x (N, k, C, H, W) and a gate of k * C values, not {tuple(x.shape)}")
    if weight is not None or activation is not None or channel_taps is not None:
        branches = x.shape[1] if activation == "softmax" else 1
        flat = x.reshape(x.shape[0], -1, *x.shape[-2:]) if branches > 1 else x  # (N, k * C, H, W)
        values = gate.reshape(gate.shape[0], -1, *gate.shape[-2:]) if weight is None and branches > 1 else gate
        fused = _fused_gate(flat, values, op, activation, weight, bias, branches, channel_taps, channel_pad, sums)
        if fused is not None:
            return fused.view(x.shape), sums is not None
        if channel_taps is not None:  # channel_conv1d at every position, sample by sample
            n, d, gh, gw = gate.shape
            gate = torch.stack([
                channel_conv1d(gate[i].reshape(d, gh * gw).contiguous(), channel_taps, bias, channel_pad).view(-1, gh, gw) for i in range(n)
            ])
        if weight is not None:
            gate = _layer_at_positions(gate, weight, bias)
            if x.dim() != 4 and gate.shape[:2].numel() == x.shape[:-2].numel():  # (N, k * C) as x's (N, k, C)
                gate = gate.reshape(*x.shape[:-2], *gate.shape[-2:])
        if activation == "sigmoid":
            gate = torch.sigmoid(gate)
        elif activation == "softmax":
            gate = torch.softmax(gate.reshape(*x.shape[:3], *gate.shape[-2:]), dim=1)
    return _combine_activated(x, gate, op), False


def _combine_activated(x: torch.Tensor, gate: torch.Tensor, op: str) -> torch.Tensor:
    """:func:`combine_replicated` of a gate whose layer and activation are done."""
    if op == "sub" and gate.is_floating_point():
        # x - g is x + (-g) in IEEE arithmetic, bit for bit; negating the small map is exact.
        return _combine_activated(x, -gate, "add")
    h, w = x.shape[-2:]
    gh, gw = gate.shape[-2:]
    if (gh == 1 and gw == 1 or (gh, gw) == (h, w)) and not tracing():
        # Nothing to replicate (a window covering the map, or none): torch's broadcast is faster.
        return x * gate if op == "mul" else x + gate
    # The gate's leading dims are x's and its map no larger: what both kernels below assume.
    fits = x.dim() >= 3 and gate.shape[:-2] == x.shape[:-2] and gh <= h and gw <= w
    fused = (
        combine_replicated_kernel is not None
        and op != "sub"  # a non-floating gate (floating ones run as "add" of the negation)
        and fits
        and cpu_kernel_applies(x, gate)
        and x.dtype == gate.dtype
        and x.dtype in (torch.float32, torch.float64)
    )
    if not fused and fits and triton_applies(x, gate) and x.is_contiguous():  # channels-last keeps torch's layout
        return triton_spread(gate, (h, w), x, op)  # CUDA: one pass, no spread gate built
    if not fused:
        full = _replicated(gate, (h, w))
        return x * full if op == "mul" else x + full if op == "add" else x - full
    planes = x.shape[:-2].numel()
    xs, gs = x.contiguous(), gate.contiguous()
    out = torch.empty_like(xs)
    top, left = (h - gh) // 2, (w - gw) // 2  # replicate_to's split: (k-1)//2 before
    combine_replicated_kernel(
        xs.view(planes, h, w).numpy(), gs.view(planes, gh, gw).numpy(), top, left, op == "add", out.view(planes, h, w).numpy()
    )
    return out


def _layer_at_positions(
    values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, into: torch.Tensor | None = None
) -> torch.Tensor:
    """A 1x1 layer's ``weight`` (C, D) (+ ``bias``) at each position of ``values`` (N, D, gh, gw),
    as :func:`apply_pointwise` runs it: one position, a traced forward or another device as a
    convolution (the layer as the original runs it); on the CPU one image by
    :func:`channel_product`, a batch by ``bmm``; into ``into`` (N, C, gh * gw) where given."""
    n, d, gh, gw = values.shape
    c = weight.shape[0]
    if gh * gw == 1 or tracing() or values.device.type != "cpu":
        return torch.nn.functional.conv2d(values, weight.view(c, d, 1, 1), bias)
    if n == 1 and values.is_contiguous():  # one image: a product (bmm of one took 2.1 ms where mm took 1.3)
        # the bias added in the product's own pass over the result
        out = channel_product(weight, values.view(d, gh * gw), None if into is None else into[0], bias)
        return out.view(1, c, gh, gw)
    # bmm with the weight broadcast reads and writes the maps as they lie; torch.matmul of the
    # matrix with the batch of maps copied in and out here (profiled: 0.35 s of MPRNet's 17 s at
    # 720x1280).
    factors = (weight.expand(n, -1, -1), values.reshape(n, d, gh * gw))
    out = torch.bmm(*factors) if into is None else torch.bmm(*factors, out=into)
    if bias is not None:
        out = out.add_(bias.view(1, -1, 1)) if _may_overwrite(out) else out + bias.view(1, -1, 1)
    return out.view(n, c, gh, gw)


def _fused_gate(
    x: torch.Tensor,
    gate: torch.Tensor,
    op: str,
    activation: str | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    branches: int = 1,
    taps: torch.Tensor | None = None,
    pad: int = 0,
    sums: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """:func:`combine_replicated` with a layer, channel taps or an activation by the CPU kernel,
    where it applies (float32, (N, C, H, W) maps, more than one window position, a layer no wider
    than :func:`channel_product` takes; a softmax across ``branches`` blocks of C / branches
    planes, the result's sum over them written into ``sums`` (N, C / branches, H, W) where
    given); else None."""
    if gate_rows_kernel is None or op == "sub" or x.dim() != 4 or gate.dim() != 4:
        return None
    (n, c, h, w), (gn, d, gh, gw) = x.shape, gate.shape
    tensors = [t for t in (x, gate, weight, bias, taps) if t is not None]
    if (
        gn != n
        or not (gh <= h and gw <= w)
        or gh * gw == 1  # one window: the original's order, as the unfused form keeps it
        or any(t.dtype != torch.float32 for t in tensors)
        or not cpu_kernel_applies(*tensors)
    ):
        return None
    if c % branches:
        return None
    first = -1
    if taps is not None:
        weight = torch.empty((0, 0), dtype=x.dtype)
        first = _full_tap(d, taps.shape[0], pad)
        if bias is not None:
            bias = bias.reshape(1).expand(c)  # the one bias, added to every output channel
    elif weight is None:
        if d != c:
            return None
        weight = torch.empty((0, 0), dtype=x.dtype)
    elif weight.shape != (c, d) or max(c, d) > _PRODUCT_MAX_CHANNELS or c * d > _PRODUCT_MAX_WEIGHTS:
        return None
    if bias is not None and bias.shape != (c,):
        return None
    shift = torch.empty(0, dtype=x.dtype) if bias is None else bias.detach().contiguous()
    xs, values = x.contiguous(), gate.contiguous()
    out = torch.empty_like(xs)
    top, left = (h - gh) // 2, (w - gw) // 2  # replicate_to's split: (k-1)//2 before
    tasks = min(n * h, 4 * torch.get_num_threads())  # a few runs of rows a thread, for balance
    channel_taps = torch.empty(0, dtype=x.dtype) if taps is None else taps.detach().contiguous()
    summed = torch.empty((0, 0, 0, 0), dtype=x.dtype) if sums is None else sums
    gate_rows_kernel(
        xs.numpy(), values.numpy(), weight.detach().contiguous().numpy(), shift.numpy(), channel_taps.numpy(), pad, first,
        top, left, op == "add", _ACTIVATION_CODES[activation], branches, tasks, summed.numpy(), out.numpy(),
    )
    return out


# Branches whose sum the gate kernel adds in torch.sum's order (checked up to four: beyond, torch
# may sum a dim in another order).
_SUMMED_BRANCHES_MAX = 4


def combine_replicated_summing_branches(
    x: torch.Tensor, gate: torch.Tensor, op: str = "mul", weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``combine_replicated(x, gate, op, "softmax", weight, bias)`` (selective-kernel fusion's
    branches weighted by a softmax across them at each window position) and the weighted
    branches' sum ``torch.sum(result, dim=1)``, which that fusion takes next, from the same pass
    over the output rows where the CPU kernel runs (float32, 2 to 4 branches): the same bits as
    torch's sum, without reading the k-branch result back (MIRNet's SKFF, 3 x 16 channels at
    720 x 1280: that sum reads 177 MB). Elsewhere the sum is None (the caller sums).

    Args:
        x: (N, k, C, H, W) branches.
        gate, op, weight, bias: as :func:`combine_replicated` takes them with a softmax.

    Returns:
        (result (N, k, C, H, W), sum (N, C, H, W) or None).
    """
    summable = x.dim() == 5 and 2 <= x.shape[1] <= _SUMMED_BRANCHES_MAX and op in ("mul", "add")
    sums = torch.empty((x.shape[0], *x.shape[2:]), dtype=x.dtype) if summable else None
    result, summed = _combine(x, gate, op, "softmax", weight, bias, None, 0, sums)
    return result, sums if summed else None


def multiply_replicated(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x * replicate_to(gate, x.shape[-2:])`` without building the replicated gate: see
    :func:`combine_replicated` (x (..., H, W), gate (..., gh, gw))."""
    return combine_replicated(x, gate, "mul")


def pad_replicate(gate: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``replicate_to(gate, like.shape[-2:])``, for graphs that pass the full-size map itself."""
    return replicate_to(gate, like.shape[-2:])


__all__ = [
    "ACTIVATIONS", "INTO_FIRST_UNARY", "apply_pointwise", "chain_product", "channel_conv1d", "channel_product", "combine_replicated",
    "combine_replicated_summing_branches", "into_first", "is_channel_product",
    "layer_first_is_cheaper", "multiply_replicated", "pad_replicate", "pointwise_sum", "pooled_pointwise",
    "product_first_is_cheaper",
]
