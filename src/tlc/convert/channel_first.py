"""Per-sample layers on pooled values' local counterparts laid out channel first.

:class:`tlc.convert.pooled_values.PooledValues` folds the valid window positions of a pooled
value into the batch, with the positions the fastest axis (``(N * G, C, 1, 1)`` viewing an
``(N, C, Gh, Gw)`` map). torch's own layers on such a batch are slow (oneDNN's convolution on a
large batch of 1x1 maps) or write their result in rows (batch norm, layer norm, ``cat``,
``softmax``), and the transposing copy back where the values meet the map costs more than the
layer. Each function here computes one layer in that layout, or returns None for calls it does
not cover (torch's own call then runs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ops.gate import channel_conv1d, channel_product
from ..ops.norm import layer_norm_columns

# take(shape, stride, dtype, device): a buffer of that layout for a result, or None.
Take = Callable[[tuple, tuple, torch.dtype, torch.device], "torch.Tensor | None"]


def pointwise_conv(name: str, args: tuple, kwargs: dict, take: Take | None = None) -> torch.Tensor | None:
    """``conv2d`` of (B, C, 1, 1) values with a 1x1 kernel and ``linear`` of (B, C) values as
    matrix products, ``conv1d`` across the channels of pooled vectors (ECA) as products per kernel
    tap; else None.

    Folded into the batch, the local values are a large batch of 1x1 maps, on which oneDNN's
    convolution is slow (two 32 -> 32 convolutions on 46k positions: about 90 ms on one CPU
    thread, against 9 ms as ``linear``, which computes the same sums). Values laid out channel
    first (positions the fastest axis, as :meth:`PooledValues.start` leaves them) are multiplied
    as ``weight @ values`` and stay so: ``linear`` would copy them to rows first. ``take``, given,
    offers a buffer for such a product (``take(shape, stride, dtype, device)``: a dead value's, or
    None; see :mod:`tlc.convert.spare_buffers`).
    """
    if name == "conv1d" and not kwargs and len(args) >= 2:
        return conv1d_as_products(args)
    if name == "linear" and len(args) >= 2 and set(kwargs) <= {"bias"}:
        x, weight = args[0], args[1]
        bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
        if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dim() == 2:
            return _channel_first_product(x, weight, bias, take)
        return None
    if name != "conv2d" or kwargs or len(args) < 2:
        return None
    x, weight, bias = args[0], args[1], args[2] if len(args) > 2 else None
    stride, padding, _, groups = (list(args[3:]) + [1, 0, 1, 1][len(args[3:]) :])[:4]  # dilation: moot at 1x1
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)) or x.dim() != 4:
        return None
    if tuple(x.shape[-2:]) != (1, 1) or tuple(weight.shape[-2:]) != (1, 1) or groups != 1:
        return None
    if padding not in (0, (0, 0), [0, 0], "valid") or stride not in (1, (1, 1), [1, 1]):
        return None
    weight = weight.reshape(weight.shape[0], -1)
    out = _channel_first_product(x.reshape(x.shape[0], -1), weight, bias, take)
    if out is None:
        out = torch.nn.functional.linear(x.reshape(x.shape[0], -1), weight, bias)
    return out.reshape(x.shape[0], weight.shape[0], 1, 1)


def is_channel_first(t: object) -> bool:
    """Local values laid out with the positions (the folded batch) the fastest axis."""
    return isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[0] > 1 and t.movedim(0, -1).is_contiguous()


def _into_spare(take: Take | None, moved_shape: tuple[int, ...], like: torch.Tensor, inputs: list) -> torch.Tensor | None:
    """A spare buffer laid out channel first for a result computed with the batch last (shape
    ``moved_shape``, contiguous), seen with the batch last; None without one (or under autograd)."""
    if take is None or torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return None
    strides = [1] * len(moved_shape)
    for i in range(len(moved_shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * moved_shape[i + 1]
    buffer = take((moved_shape[-1], *moved_shape[:-1]), (strides[-1], *strides[:-1]), like.dtype, like.device)
    return None if buffer is None else buffer.movedim(0, -1)


def batch_last(name: str, args: tuple, kwargs: dict, take: Take | None = None) -> torch.Tensor | None:
    """``cat`` along, or ``softmax`` over, a dim other than the batch, of local values laid out
    channel first: computed with the batch moved last, so the result keeps that layout (torch's
    own would come out in rows, costing a transposing copy where the values meet the map: 104 ms
    in MIRNet's selective-kernel fusion at 720p). ``take``, given, offers a dead value's buffer for
    the result (``take(shape, stride, dtype, device)``; a fresh 58 MB map costs page faults). None
    for other calls or layouts."""
    if name == "softmax":
        x, dim = args[0] if args else None, args[1] if len(args) > 1 else kwargs.get("dim")
        if len(args) > 2 or set(kwargs) - {"dim", "dtype", "_stacklevel"} or not isinstance(dim, int):
            return None
        if not is_channel_first(x) or dim % x.dim() == 0:
            return None
        moved = x.movedim(0, -1)
        if kwargs.get("dtype") is None and x.is_floating_point():
            into = _into_spare(take, tuple(moved.shape), x, [x])
            if into is not None:  # torch.softmax has no out=; its kernel's out variant does
                return torch.ops.aten._softmax.out(moved, dim % x.dim() - 1, False, out=into).movedim(-1, 0)
        return torch.softmax(moved, dim % x.dim() - 1, dtype=kwargs.get("dtype")).movedim(-1, 0)
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if len(args) > 2 or set(kwargs) - {"tensors", "dim"} or not isinstance(tensors, (list, tuple)) or not tensors:
        return None
    if not isinstance(dim, int) or not is_channel_first(tensors[0]) or any(not isinstance(t, torch.Tensor) for t in tensors):
        return None
    ndim = tensors[0].dim()
    if any(t.dim() != ndim for t in tensors) or dim % ndim == 0:
        return None
    moved, axis = [t.movedim(0, -1) for t in tensors], dim % ndim - 1
    if all(t.dtype == tensors[0].dtype and t.device == tensors[0].device for t in tensors):
        shape = list(moved[0].shape)
        shape[axis] = sum(t.shape[axis] for t in moved)
        into = _into_spare(take, tuple(shape), tensors[0], list(tensors))
        if into is not None:
            return torch.cat(moved, axis, out=into).movedim(-1, 0)
    return torch.cat(moved, axis).movedim(-1, 0)


def bound_arguments(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict | None = None) -> dict | None:
    """A call's arguments by parameter name (over ``defaults``), or None for arguments ``names``
    does not cover."""
    if len(args) > len(names) or set(kwargs) - set(names):
        return None
    return {**(defaults or {}), **dict(zip(names, args)), **kwargs}


def batch_norm_scale_shift(
    mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of batch norm with running statistics: ``x * scale + shift``
    (as one ``addcmul``) is its output."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def channel_first_layer_norm(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``F.layer_norm`` over every dim but the batch (GCNet's ``LayerNorm([C, 1, 1])``) of values
    laid out channel first, computed in that layout (torch's comes out in rows, and the
    transposing copy back where the values meet the map cost more than the norm); else None."""
    b = bound_arguments(args, kwargs, ("input", "normalized_shape", "weight", "bias", "eps"))
    if b is None:
        return None
    x, shape = b.get("input"), b.get("normalized_shape")
    if not is_channel_first(x) or not isinstance(shape, (tuple, list, torch.Size)) or tuple(shape) != tuple(x.shape[1:]):
        return None
    rows = x.movedim(0, -1).reshape(-1, x.shape[0])  # (D, B), contiguous
    out = layer_norm_columns(rows, b.get("weight"), b.get("bias"), b.get("eps", 1e-5))
    return out.reshape(*x.shape[1:], x.shape[0]).movedim(-1, 0)


def inference_batch_norm(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``F.batch_norm`` with running statistics (not training) as one multiply-add per channel,
    or None for other calls. oneDNN's batch norm writes a (B, C, 1, 1) batch of values laid out
    channel first back in rows (SRM's gate at 720p: 87 ms, and a 47 ms transposing copy where
    the gate meets the map); the multiply-add keeps their layout."""
    b = bound_arguments(args, kwargs, ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"))
    if b is None:
        return None
    x, mean, var = b.get("input"), b.get("running_mean"), b.get("running_var")
    if b.get("training", False) or not all(isinstance(t, torch.Tensor) for t in (x, mean, var)) or x.dim() < 2:
        return None
    scale, shift = batch_norm_scale_shift(mean, var, b.get("weight"), b.get("bias"), b.get("eps", 1e-5))
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.view(shape), x, scale.view(shape))


def _channel_first_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, take: Take | None = None
) -> torch.Tensor | None:
    """``linear(x, weight, bias)`` for x (B, C) laid out channel first (``x.t()`` contiguous), as
    ``(weight @ x.t() + bias).t()``: the result is laid out channel first too (into a buffer from
    ``take`` where it offers one). None otherwise."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[0] < 2 or not x.t().is_contiguous():
        return None
    tensors = (x, weight) if bias is None else (x, weight, bias)
    into = None
    if take is not None and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        dtype = torch.result_type(x, weight)
        into = take((x.shape[0], weight.shape[0]), (1, x.shape[0]), dtype, x.device)
    return channel_product(weight, x.t(), None if into is None else into.t(), bias).t()


def conv1d_as_products(args: tuple) -> torch.Tensor | None:
    """``conv1d(x (B, Cin, L), weight (Cout, Cin, k), bias, stride 1, padding p, dilation 1,
    groups 1)`` as one product per kernel tap, or None for other settings: oneDNN's convolution
    takes ~1 s on a batch of 200k short rows (ECA at 360x640)."""
    x, weight, bias = args[0], args[1], args[2] if len(args) > 2 else None
    stride, padding, dilation, groups = (list(args[3:]) + [1, 0, 1, 1][len(args[3:]) :])[:4]
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)) or x.dim() != 3 or weight.dim() != 3:
        return None
    if stride not in (1, (1,), [1]) or dilation not in (1, (1,), [1]) or groups != 1 or isinstance(padding, str):
        return None
    pad = padding[0] if isinstance(padding, (tuple, list)) else padding
    if weight.shape[:2] == (1, 1) and x.shape[1] == 1 and is_channel_first(x):
        return _channel_first_conv1d(x, weight, bias, pad)
    padded = torch.nn.functional.pad(x, (pad, pad))
    k = weight.shape[-1]
    length = padded.shape[-1] - k + 1
    out = None
    for j in range(k):  # one product per kernel tap, on the shifted rows
        rows = padded[..., j : j + length]
        term = rows * weight[0, 0, j] if weight.shape[:2] == (1, 1) else torch.matmul(weight[:, :, j], rows)
        out = term if out is None else out.add_(term)
    return out if bias is None else out + bias.view(1, -1, 1)


def _channel_first_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int) -> torch.Tensor:
    """``conv1d`` of (B, 1, L) values laid out channel first with one (1, 1, k) kernel (ECA), by
    :func:`tlc.ops.gate.channel_conv1d` on the (L, B) rows: the result laid out channel first too
    (padding a copy in rows and transposing it back cost ECA 55 ms at 720p)."""
    rows = x.movedim(0, -1)[0]  # (L, B), contiguous
    out = channel_conv1d(rows, weight.view(-1), bias, pad)
    return out.unsqueeze(0).movedim(-1, 0)


__all__ = [
    "batch_last",
    "batch_norm_scale_shift",
    "bound_arguments",
    "channel_first_layer_norm",
    "conv1d_as_products",
    "inference_batch_norm",
    "is_channel_first",
    "pointwise_conv",
]
