"""Global ops found by what the model computes while it runs, made local or reported, by call site.

Module rules see modules; many global ops are function calls (``x.mean((2, 3), keepdim=True)``,
``x.sum(3).sum(2) / (H * W)``, ``torch.fft.rfft2(x)``). Tracing (torch.fx) cannot follow the
data-dependent Python of real models (NAFNet pads by the input size). Instead a
:class:`torch.overrides.TorchFunctionMode` is active while the model runs; it sees every torch call
and names each *call site* by:

- the innermost module running (its qualified name, from forward hooks),
- the calling source line (the first stack frame outside torch), kept as the function's qualified
  name plus the line's offset in that function, so moving code around in the file keeps the name,
- the op, and an occurrence counter of that (line, op) within that module call (loops, helpers).

Which calls are global: a calibration forward at the training size (h, w) records, per site, the
shape of the input of every reduction, pool, norm, softmax, normalisation, matrix product and FFT
whose axes may be spatial; two probe forwards at (2h, w) and (h, 2w) record them again. An axis
that grows with the height is H, with the width W, with both a flattened H*W axis; a call across
none of them (channel means, a (B, heads, C, C) channel-attention softmax) is no global op. Should
a probe fail (a model that only runs at its training size), 4-D tensors are taken as (N, C, H, W)
and softmax, normalisation and products are not looked at (with a warning).

The site's window is fixed from its feature size at the training size like a module's. Afterwards
the mode answers calls at converted sites with the local op (window clamped to the map). The hooks
live on the model (state_dict keys unchanged, deepcopy and pickle keep them); the mode is entered
when the outermost hooked module starts and left when it ends, also on exceptions (``always_call``
forward hooks). Once converted, only the calls that can have a local form are looked at; any other
call costs one dict lookup.

Made local, on (N, C, H, W) maps, ``keepdim=True``:

======================================================  ============================================
call                                                    local version
======================================================  ============================================
``mean`` over {2, 3}, ``F.adaptive_avg_pool2d(x, 1)``,   :func:`tlc.local_mean`
``F.avg_pool2d(x, x.shape[2:])``
``sum`` over {2, 3}                                     ``local_mean`` x (H * W) of the map
``mean``/``sum`` over one of 2, 3,                       :func:`tlc.ops.local_axis_mean` (x the axis
``F.adaptive_avg_pool2d(x, (None, 1))``/``((1, None))``  length for sums)
``amax`` over {2, 3}, ``F.adaptive_max_pool2d(x, 1)``,  :func:`tlc.ops.local_max`
``F.max_pool2d(x, x.shape[2:])``
``amax``/``max(dim)`` over one of 2, 3, strip max pools  :func:`tlc.ops.local_axis_max` (``max`` gives
                                                        ``indices=None``)
``var``/``std`` (``_mean``) over {2, 3}                  :func:`tlc.ops.local_var` / ``local_std``
``((x - mean) ** 2)`` reduced over H and W (IMDN)       ``local_var`` of ``x`` (see ``_Mark``)
``F.instance_norm`` (input statistics)                  :func:`tlc.local_instance_norm`
``F.group_norm``                                        :func:`tlc.local_group_norm`
``F.layer_norm`` over (H, W) / (C, H, W), no affine     local instance norm / group norm, one group
======================================================  ============================================

Reported, left global: the same with ``keepdim=False`` or over a flattened H*W axis (reasons start
with :data:`POOLED_VALUE`), ``var``/``std`` over one axis, adaptive pooling to a fixed k x k grid,
``F.layer_norm`` over H, W with an affine weight, FFTs over H and/or W, softmax, normalisation
(``F.normalize``, norms), matrix products (``matmul``, ``bmm``, ``einsum``) and attention
(``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``) over all positions or over whole
rows or columns (Stripformer: the reason offers the windowed form).
"""

from __future__ import annotations

import operator
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..._util import one_line
from ...ops import (
    local_axis_max,
    local_axis_mean,
    local_group_norm,
    local_instance_norm,
    local_max,
    local_mean,
    local_mean_strided,
    local_softmax_pool,
    local_std,
    local_var,
)
from ...ops._common import Pair, as_pair
from ...ops.extrema import valid_local_max
from ...ops.pool import valid_local_mean
from ..pooled_values import PooledValueError, PooledValues
from ..rules import Site

#: (module path, function qualname, line offset in the function, op, occurrence in the module call)
SiteKey = tuple[str, str, int, str, int]


@dataclass(frozen=True)
class CallSite:
    """One functional global op found by the calibration forward.

    Attributes:
        module: qualified name of the innermost module running the call ("" for the model itself).
        op: what was called: ``mean``, ``adaptive_avg_pool2d``, ``instance_norm``, ...
        location: ``file.py:line`` of the call (the first frame outside torch).
        function: qualified name of the Python function making the call.
        occurrence: index among the calls of this op from this line within one call of the module.
        channels: C of the (N, C, H, W) input at calibration.
        feature_size: (h, w) of the input at the training size, in feature pixels.
        window: (kh, kw) of the local version; None when the site stays global.
        reason: why the site stays global; None when converted.
    """

    module: str
    op: str
    location: str
    function: str
    occurrence: int
    channels: int
    feature_size: Pair
    window: Pair | None = None
    reason: str | None = None

    @property
    def converted(self) -> bool:
        return self.window is not None

    @property
    def name(self) -> str:
        """``module location`` (``#n`` appended for repeated calls), as shown in reports."""
        where = f"{self.module or '(model)'} {self.location}"
        return f"{where} #{self.occurrence}" if self.occurrence else where


# ----------------------------------------------------------------------------- recognising calls

#: Start of the reason of every site left global only because its (pooled) result leaves the
#: (N, C, H, W) layout: a per-window counterpart carried through the consumer would make it local.
POOLED_VALUE = "pooled value leaves the map layout"
LEAVES_IMAGE = "pooled value leaves the image path (it reaches the output without meeting the image)"

_WINDOWED = "a windowed form (attention within a window of the row or column) would be local; tlc does not build it"


@dataclass
class _Call:
    """A call that may be a global op: its input, the axes it works across, and, where it is a
    spatial op on an (N, C, H, W) map, how to compute it locally at a site.

    Attributes:
        op: name shown in reports.
        x: the tensor whose axes ``dims`` are watched (recorded per calibration forward).
        dims: non-negative axes of ``x`` whose whole length the result depends on.
        kind: "map" (reductions, pools, norms: local where ``dims`` are the map's H and/or W),
            "tokens" (softmax, normalisation, contractions: global only if the probe forwards show
            ``dims`` grow with the image), "fft".
        reason: why a spatial op must stay global whatever the sizes; None when it has a local form.
        local: the local form at a site (None when it has none).
        mark: how the result relates to the input for the centred-square patterns (see ``_Mark``):
            "mean", "sum" or None.
    """

    op: str
    x: torch.Tensor
    dims: tuple[int, ...]
    kind: str = "map"
    reason: str | None = None
    local: Callable[[Site], torch.Tensor] | None = None
    mark: str | None = None


def _is_map(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point() and x.shape[-2:].numel() > 0


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...]) -> dict[str, Any] | None:
    if len(args) > len(names):
        return None
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def _axes(dim: object, ndim: int) -> tuple[int, ...] | None:
    """``dim`` as sorted non-negative axes (None or () meaning all), or None if it is not a dim."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    if isinstance(dim, (bool, str)):
        return None
    dims = list(dim) if isinstance(dim, (tuple, list, torch.Size)) else [dim]
    try:
        indices = [operator.index(d) for d in dims]
    except TypeError:
        return None
    if any(isinstance(d, bool) for d in dims) or not all(-ndim <= d < ndim for d in indices):
        return None
    return tuple(sorted({d % ndim for d in indices}))


def _maybe_spatial(x: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """Worth watching: a 4-D tensor is taken as (N, C, H, W) (or (B, heads, ., .)): only calls
    across its last two axes can be spatial; other ranks may hold flattened tokens anywhere."""
    return bool(dims) and (x.dim() != 4 or 2 in dims or 3 in dims)


def _pool(x: torch.Tensor, site: Site) -> torch.Tensor:
    return local_mean_strided(x, site.window, site.max_stride) if site.fast else local_mean(x, site.window)


def _axis_window(site: Site, dim: int) -> int:
    return site.window[dim - 2]


def _local_mean_over(x: torch.Tensor, dims: tuple[int, ...], site: Site) -> torch.Tensor:
    """Local mean over the spatial ``dims`` ((2, 3), (2,) or (3,)) of an (N, C, H, W) map."""
    if dims == (2, 3):
        return _pool(x, site)
    return local_axis_mean(x, _axis_window(site, dims[0]), dims[0])


def _local_max_over(x: torch.Tensor, dims: tuple[int, ...], site: Site) -> torch.Tensor:
    if dims == (2, 3):
        return local_max(x, site.window)
    return local_axis_max(x, _axis_window(site, dims[0]), dims[0])


def _spatial_only(x: torch.Tensor, dims: tuple[int, ...]) -> bool:
    return x.dim() == 4 and x.is_floating_point() and bool(dims) and all(d in (2, 3) for d in dims)


def _no_keepdim(op: str) -> str:
    return f"{POOLED_VALUE} (keepdim=False): {op}'s result has no spatial dimensions to hold local values"


# Whole-map poolings whose result can be carried as a pooled value (see tlc.pooled_values):
# op -> how its value over a window is computed.
_POOLINGS = {
    "mean": "mean", "adaptive_avg_pool2d": "mean", "avg_pool2d": "mean", "sum": "sum",
    "amax": "max", "adaptive_max_pool2d": "max", "max_pool2d": "max",
}


def _poolable(call: _Call) -> bool:
    """Whether ``call`` pools a whole (N, C, H, W) map and may be answered with a pooled value."""
    return (
        call.op in _POOLINGS and call.dims == (2, 3) and call.x.dim() == 4
        and (call.reason is None or call.reason.startswith(POOLED_VALUE))
    )


def _valid_pooling(call: _Call, site: Site) -> torch.Tensor:
    """(N, C, H - kh + 1, W - kw + 1): the pooling of ``call`` over every window inside the map."""
    x, kind = call.x, _POOLINGS[call.op]
    if kind == "max":
        return valid_local_max(x, site.window)
    valid = valid_local_mean(x, site.window)
    return valid * (x.shape[2] * x.shape[3]) if kind == "sum" else valid


def _reduction(op: str) -> Callable[[tuple, dict], _Call | None]:
    """Parser for mean/sum/amax/max: (input, dim, keepdim, *, dtype, out); no dim: all axes."""

    def parse(args: tuple, kwargs: dict) -> _Call | None:
        b = _bind(args, kwargs, ("input", "dim", "keepdim"))
        if b is None or not isinstance(x := b.get("input"), torch.Tensor) or not x.is_floating_point():
            return None
        dim = b.get("dim")
        if isinstance(dim, torch.Tensor) or x.dim() == 0:
            return None  # torch.max(x, other): elementwise
        if op == "max" and "dim" not in b:
            dim = None
        dims = _axes(dim, x.dim())
        if dims is None or not _maybe_spatial(x, dims):
            return None
        call = _Call(op, x, dims, mark="mean" if op == "mean" else "sum" if op == "sum" else None)
        if not _spatial_only(x, dims):
            return call
        if b.get("out") is not None:
            call.reason = "writes into out="
        elif not b.get("keepdim", False):
            call.reason = _no_keepdim(op)
        elif op == "max" and len(dims) > 1:
            return None  # torch.max takes one dim
        else:
            dtype = b.get("dtype")
            if op in ("mean", "sum"):
                scale = 1
                if op == "sum":
                    for d in dims:
                        scale *= x.shape[d]

                def local(site: Site) -> torch.Tensor:
                    mean = _local_mean_over(x if dtype is None else x.to(dtype), dims, site)
                    return mean if scale == 1 else mean * scale

            elif op == "amax":
                call.local = lambda site: _local_max_over(x, dims, site)
                return call
            else:  # max(dim): values only; indices of local maxima are not computed
                call.local = lambda site: torch.return_types.max((local_axis_max(x, _axis_window(site, dims[0]), dims[0]), None))
                return call
            call.local = local
        return call

    return parse


def _variance(op: str) -> Callable[[tuple, dict], _Call | None]:
    """Parser for ``var``/``std``: overloads (input, unbiased), (input, dim, unbiased, keepdim) and
    (input, dim, *, correction, keepdim)."""

    def parse(args: tuple, kwargs: dict) -> _Call | None:
        x = args[0] if args else kwargs.get("input")
        rest = list(args[1:])
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 or len(rest) > 3:
            return None
        if rest and isinstance(rest[0], bool):  # (input, unbiased): over everything
            rest = [None, *rest]
        b = dict(zip(("dim", "unbiased", "keepdim"), rest))
        b.update(kwargs)
        dims = _axes(b.get("dim"), x.dim())
        if dims is None or not _maybe_spatial(x, dims):
            return None
        call = _Call(op, x, dims)
        if not _spatial_only(x, dims):
            return call
        if b.get("out") is not None:
            call.reason = "writes into out="
        elif not b.get("keepdim", False):
            call.reason = _no_keepdim(op)
        elif dims != (2, 3):
            call.reason = f"{op} over one spatial axis: no local form here"
        else:
            correction = b.get("correction")
            if correction is None:
                correction = 0 if b.get("unbiased", True) is False else 1
            stat = local_std if op.startswith("std") else local_var
            if op.endswith("_mean"):
                call.local = lambda site: (stat(x, site.window, float(correction)), _pool(x, site))
            else:
                call.local = lambda site: stat(x, site.window, float(correction))
        return call

    return parse


def _output_dims(size: object) -> tuple[object, object] | None:
    if isinstance(size, (tuple, list, torch.Size)):
        return (size[0], size[1]) if len(size) == 2 else None
    return (size, size)


def _adaptive(op: str) -> Callable[[tuple, dict], _Call | None]:
    """Parser for ``F.adaptive_{avg,max}_pool2d``: to 1 (whole map), (None, 1) / (1, None) (strips)."""

    def parse(args: tuple, kwargs: dict) -> _Call | None:
        b = _bind(args, kwargs, ("input", "output_size", "return_indices"))
        if b is None or not _is_map(x := b.get("input")) or (out := _output_dims(b.get("output_size"))) is None:
            return None
        dims = tuple(d for d, o in zip((2, 3), out) if o is not None)
        if not dims:
            return None  # (None, None): the identity
        call = _Call(op, x, dims, mark="mean" if op == "adaptive_avg_pool2d" else None)
        if any(o != 1 or isinstance(o, bool) for d, o in zip((2, 3), out) if d in dims):
            sizes = "x".join("H" if o is None else str(o) for o in out)
            call.reason = f"adaptive pooling to a fixed {sizes} grid: its bins grow with the map; no local form here"
        elif b.get("return_indices", False):
            call.reason = "returns indices: no local form"
        elif op == "adaptive_avg_pool2d":
            call.local = lambda site: _local_mean_over(x, dims, site)
        else:
            call.local = lambda site: _local_max_over(x, dims, site)
        return call

    return parse


def _full_kernel(op: str) -> Callable[[tuple, dict], _Call | None]:
    """Parser for ``F.avg_pool2d``/``F.max_pool2d`` whose kernel is the map on one or both axes."""

    names = ("input", "kernel_size", "stride", "padding")
    names += ("ceil_mode", "count_include_pad", "divisor_override") if op == "avg_pool2d" else (
        "dilation", "ceil_mode", "return_indices")

    def parse(args: tuple, kwargs: dict) -> _Call | None:
        b = _bind(args, kwargs, names)
        if b is None or not _is_map(x := b.get("input")) or b.get("divisor_override") is not None:
            return None
        try:
            kernel = as_pair(b.get("kernel_size"), "kernel_size")
            stride = b.get("stride")
            if stride not in (None, [], ()) and as_pair(stride, "stride") != kernel:
                return None
            if b.get("padding", 0) not in (0, (0, 0), [0, 0]) or b.get("dilation", 1) not in (1, (1, 1), [1, 1]):
                return None
        except (TypeError, ValueError):
            return None
        # Global only where the kernel is the map (``F.avg_pool2d(x, x.shape[2:])``); a fixed kernel
        # is a plain pooling at other sizes and is left alone there.
        size = tuple(x.shape[-2:])
        dims = tuple(d for d, k, n in zip((2, 3), kernel, size) if k == n and (n > 1 or k != 1))
        if not dims or any(k != 1 for d, k in zip((2, 3), kernel) if d not in dims):
            return None
        call = _Call(op, x, dims, mark="mean" if op == "avg_pool2d" else None)
        if b.get("return_indices", False):
            call.reason = "returns indices: no local form"
        elif op == "avg_pool2d":
            call.local = lambda site: _local_mean_over(x, dims, site)
        else:
            call.local = lambda site: _local_max_over(x, dims, site)
        return call

    return parse


def _instance_norm(args: tuple, kwargs: dict) -> _Call | None:
    names = ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps")
    b = _bind(args, kwargs, names)
    if b is None or not _is_map(x := b.get("input")) or not b.get("use_input_stats", True):
        return None  # without input statistics it is a per-pixel affine map, not a global op
    call = _Call("instance_norm", x, (2, 3))
    if b.get("running_mean") is not None or b.get("running_var") is not None:
        call.reason = "updates running statistics (running_mean/running_var given)"
        return call
    weight, bias, eps = b.get("weight"), b.get("bias"), b.get("eps", 1e-5)
    call.local = lambda site: local_instance_norm(x, site.window, weight, bias, eps)
    return call


def _group_norm(args: tuple, kwargs: dict) -> _Call | None:
    b = _bind(args, kwargs, ("input", "num_groups", "weight", "bias", "eps"))
    if b is None or not _is_map(x := b.get("input")) or "num_groups" not in b:
        return None
    groups, weight, bias, eps = b["num_groups"], b.get("weight"), b.get("bias"), b.get("eps", 1e-5)
    return _Call("group_norm", x, (2, 3), local=lambda site: local_group_norm(x, groups, site.window, weight, bias, eps))


def _layer_norm(args: tuple, kwargs: dict) -> _Call | None:
    b = _bind(args, kwargs, ("input", "normalized_shape", "weight", "bias", "eps"))
    if b is None or not isinstance(x := b.get("input"), torch.Tensor) or not x.is_floating_point():
        return None
    shape = b.get("normalized_shape")
    count = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    if not 0 < count <= x.dim():
        return None
    dims = tuple(range(x.dim() - count, x.dim()))
    if not _maybe_spatial(x, dims):
        return None
    call = _Call("layer_norm", x, dims)
    if x.dim() != 4 or count not in (2, 3):
        return call
    weight, bias, eps = b.get("weight"), b.get("bias"), b.get("eps", 1e-5)
    if weight is not None or bias is not None:
        call.reason = "LayerNorm over the map's H and W: its affine weight has the map's size; no local form"
    elif count == 2:  # over (H, W): per channel, an instance norm
        call.local = lambda site: local_instance_norm(x, site.window, None, None, eps)
    else:  # over (C, H, W): a group norm with one group
        call.local = lambda site: local_group_norm(x, 1, site.window, None, None, eps)
    return call


def _softmax(op: str) -> Callable[[tuple, dict], _Call | None]:
    def parse(args: tuple, kwargs: dict) -> _Call | None:
        b = _bind(args, kwargs, ("input", "dim"))
        if b is None or not isinstance(x := b.get("input"), torch.Tensor) or (dims := _axes(b.get("dim"), x.dim())) is None:
            return None
        return _Call(op, x, dims, "tokens") if b.get("dim") is not None and _maybe_spatial(x, dims) else None

    return parse


def _normalize(args: tuple, kwargs: dict) -> _Call | None:
    b = _bind(args, kwargs, ("input", "p", "dim", "eps", "out"))
    if b is None or not isinstance(x := b.get("input"), torch.Tensor) or x.dim() == 0:
        return None
    dims = _axes(b.get("dim", 1), x.dim())
    return _Call("normalize", x, dims, "tokens") if dims is not None and _maybe_spatial(x, dims) else None


def _norm(op: str) -> Callable[[tuple, dict], _Call | None]:
    """``Tensor.norm``/``torch.norm`` (input, p, dim, ...) and ``linalg.vector_norm`` (x, ord, dim, ...)."""

    def parse(args: tuple, kwargs: dict) -> _Call | None:
        b = _bind(args, kwargs, ("input", "p", "dim", "keepdim", "dtype"))
        if b is None:
            return None
        x = b.get("input", b.get("x"))
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
            return None
        dims = _axes(b.get("dim"), x.dim())
        return _Call(op, x, dims, "tokens") if dims is not None and _maybe_spatial(x, dims) else None

    return parse


def _matmul(op: str) -> Callable[[tuple, dict], _Call | None]:
    def parse(args: tuple, kwargs: dict) -> _Call | None:
        b = _bind(args, kwargs, ("input", "other"))
        a = None if b is None else b.get("input", b.get("mat1"))
        if not isinstance(a, torch.Tensor) or a.dim() < 2:
            return None
        return _Call(op, a, (a.dim() - 1,), "tokens")

    return parse


def _attention(op: str, keys_dim: int) -> Callable[[tuple, dict], _Call | None]:
    """``F.scaled_dot_product_attention(q, k, v)`` (keys (..., S, E)) and
    ``F.multi_head_attention_forward(q, k, v, ...)`` (keys (S, N, E)): global where S grows."""

    def parse(args: tuple, kwargs: dict) -> _Call | None:
        key = args[1] if len(args) > 1 else kwargs.get("key")
        if not isinstance(key, torch.Tensor) or key.dim() < 2:
            return None
        return _Call(op, key, (keys_dim % key.dim(),), "tokens")

    return parse


def _einsum(args: tuple, kwargs: dict) -> _Call | None:
    if not args or not isinstance(args[0], str) or "->" not in args[0] or "." in args[0]:
        return None
    operands = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
    inputs, output = args[0].replace(" ", "").split("->")
    terms = inputs.split(",")
    if len(terms) != len(operands) or not all(isinstance(t, torch.Tensor) for t in operands):
        return None
    contracted = set(inputs.replace(",", "")) - set(output)
    for term, t in zip(terms, operands):
        dims = tuple(i for i, letter in enumerate(term) if letter in contracted)
        if dims and len(term) == t.dim():
            return _Call("einsum", t, dims, "tokens")
    return None


def _fft(op: str, default: object, sizes: str) -> Callable[[tuple, dict], _Call | None]:
    """torch.fft: (input, n|s, dim, norm); ``default`` dim; fftn's None means all axes (or the
    last len(s) when s is given)."""

    def parse(args: tuple, kwargs: dict) -> _Call | None:
        b = _bind(args, kwargs, ("input", sizes, "dim", "norm"))
        if b is None or not isinstance(x := b.get("input"), torch.Tensor) or x.dim() == 0:
            return None
        dim = b.get("dim", default)
        if dim is None and b.get(sizes) is not None:
            dim = tuple(range(-len(b[sizes]), 0))
        dims = _axes(dim, x.dim())
        return _Call(op, x, dims, "fft") if dims is not None and _maybe_spatial(x, dims) else None

    return parse


_PARSERS: dict[object, Callable[[tuple, dict], _Call | None]] = {
    torch.mean: _reduction("mean"),
    torch.Tensor.mean: _reduction("mean"),
    torch.sum: _reduction("sum"),
    torch.Tensor.sum: _reduction("sum"),
    torch.amax: _reduction("amax"),
    torch.Tensor.amax: _reduction("amax"),
    torch.max: _reduction("max"),
    torch.Tensor.max: _reduction("max"),
    torch.var: _variance("var"),
    torch.Tensor.var: _variance("var"),
    torch.std: _variance("std"),
    torch.Tensor.std: _variance("std"),
    torch.var_mean: _variance("var_mean"),
    torch.std_mean: _variance("std_mean"),
    F.adaptive_avg_pool2d: _adaptive("adaptive_avg_pool2d"),
    F.adaptive_max_pool2d: _adaptive("adaptive_max_pool2d"),
    F.adaptive_max_pool2d_with_indices: _adaptive("adaptive_max_pool2d"),
    F.avg_pool2d: _full_kernel("avg_pool2d"),
    F.max_pool2d: _full_kernel("max_pool2d"),
    F.max_pool2d_with_indices: _full_kernel("max_pool2d"),
    F.instance_norm: _instance_norm,
    F.group_norm: _group_norm,
    F.layer_norm: _layer_norm,
    F.softmax: _softmax("softmax"),
    torch.softmax: _softmax("softmax"),
    torch.Tensor.softmax: _softmax("softmax"),
    F.log_softmax: _softmax("log_softmax"),
    torch.log_softmax: _softmax("log_softmax"),
    torch.Tensor.log_softmax: _softmax("log_softmax"),
    F.normalize: _normalize,
    torch.norm: _norm("norm"),
    torch.Tensor.norm: _norm("norm"),
    torch.linalg.vector_norm: _norm("vector_norm"),
    torch.matmul: _matmul("matmul"),
    torch.Tensor.matmul: _matmul("matmul"),
    torch.bmm: _matmul("bmm"),
    torch.Tensor.bmm: _matmul("bmm"),
    torch.einsum: _einsum,
    F.scaled_dot_product_attention: _attention("scaled_dot_product_attention", -2),
    F.multi_head_attention_forward: _attention("multi_head_attention_forward", 0),
    **{getattr(torch.fft, name): _fft(name, -1, "n") for name in ("fft", "ifft", "rfft", "irfft")},
    **{getattr(torch.fft, name): _fft(name, (-2, -1), "s") for name in ("fft2", "ifft2", "rfft2", "irfft2")},
    **{getattr(torch.fft, name): _fft(name, None, "s") for name in ("fftn", "ifftn", "rfftn", "irfftn")},
}

# ----------------------------------------------------------------------------- which calls are global

# How an axis of a watched tensor changed between the calibration forward at the training size
# (h, w) and the probe forwards at (2h, w) and (h, 2w).
_FIXED, _H, _W, _HW = "fixed", "H", "W", "HW"

Shape = tuple[int, ...]


def _tags(call: _Call, shape: Shape, probes: tuple[Shape, Shape] | None) -> tuple[str, ...]:
    """Per axis in ``call.dims``: fixed, H (grows with the image height), W, or HW (both: a
    flattened spatial axis). Without probe shapes a 4-D tensor is taken as (N, C, H, W) for map
    ops and FFTs, and nothing else is taken as spatial."""
    if probes is None:
        if call.kind == "tokens" or len(shape) != 4:
            return tuple(_FIXED for _ in call.dims)
        return tuple({2: _H, 3: _W}.get(d, _FIXED) for d in call.dims)
    taller, wider = probes
    tags = []
    for d in call.dims:
        grows = (taller[d] != shape[d], wider[d] != shape[d])
        tags.append({(False, False): _FIXED, (True, False): _H, (False, True): _W, (True, True): _HW}[grows])
    return tuple(tags)


def _span(tags: tuple[str, ...]) -> str:
    if _HW in tags or (_H in tags and _W in tags):
        return "all H*W positions"
    return "whole rows (all W positions)" if _W in tags else "whole columns (all H positions)"


def _judge(call: _Call, tags: tuple[str, ...]) -> tuple[bool, str | None]:
    """(is the call a global op, why it stays global: None when ``call.local`` makes it local)."""
    if all(t == _FIXED for t in tags):
        return False, None
    in_map = call.x.dim() == 4 and all(t == _FIXED or (d, t) in ((2, _H), (3, _W)) for d, t in zip(call.dims, tags))
    # Where the parser took the call for a map op (it has a local form or a reason), its verdict holds.
    standard = in_map and (call.local is not None or call.reason is not None or _spatial_only(call.x, call.dims))
    if call.kind == "map" and standard:
        if call.reason is None and call.local is None:
            return True, f"{call.op}: no local form here"
        return True, call.reason
    span = _span(tags)
    rows = span != "all H*W positions"
    if call.kind == "fft":
        return True, f"FFT over {span}: no local form" if rows else "whole-map FFT: no local form"
    if call.op in ("scaled_dot_product_attention", "multi_head_attention_forward"):
        if rows:
            return True, f"attention over whole rows or columns: keys over {span}; {_WINDOWED}"
        return True, f"attention over all H*W positions ({call.op})"
    if call.op in ("softmax", "log_softmax"):
        if rows:
            return True, f"attention over whole rows or columns: {call.op} over {span}; {_WINDOWED}"
        return True, f"{call.op} over all H*W positions"
    if call.op in ("matmul", "bmm", "einsum"):
        if rows:
            return True, f"attention over whole rows or columns: {call.op} contracting over {span}; {_WINDOWED}"
        return True, f"{call.op} contracting over all H*W positions"
    if call.kind == "tokens":
        return True, f"{call.op} (normalisation) over {span}"
    others = " together with other axes" if _FIXED in tags else ""
    layout = "" if in_map else " of a tensor not laid out as (N, C, H, W)"
    if call.mark is not None or call.op in ("amax", "max", "var", "std", "var_mean", "std_mean"):  # a reduction: its result is a pooled value
        return True, f"{POOLED_VALUE}: {call.op} over {span}{others}{layout}"
    return True, f"{call.op} over {span}{others}{layout}: no local form here"


def recognise(
    func: object, args: tuple, kwargs: dict | None = None, *, probes: tuple[tuple[tuple, dict], tuple[tuple, dict]] | None = None
) -> tuple[str, str | None] | None:
    """Whether a torch call is a global op over the spatial dims that this module knows.

    Args:
        func: the function as a ``TorchFunctionMode`` sees it (``torch.mean``, ``F.instance_norm``...).
        args, kwargs: its arguments, in a forward at the training size (h, w).
        probes: the same call's (args, kwargs) in forwards at (2h, w) and at (h, 2w). They tell
            which axes grow with the image (H, W, or H*W when flattened). Without them a 4-D tensor
            is taken as (N, C, H, W) and softmax, normalisation and matrix products are never
            taken as global.

    Returns:
        None if not a global op, else (op name, reason it must stay global or None if tlc makes it local).
    """
    try:
        parse = _PARSERS.get(func)
    except TypeError:  # unhashable callables are none of ours
        return None
    try:
        call = parse(args, kwargs or {}) if parse is not None else None
        seen = [parse(a, k or {}) for a, k in probes] if call is not None and probes is not None else None
    except Exception:  # noqa: BLE001 (arguments no parser foresaw: not a call tlc knows)
        return None
    if call is None:
        return None
    shapes = None
    if seen is not None:
        if any(c is None for c in seen):
            return None
        shapes = (tuple(seen[0].x.shape), tuple(seen[1].x.shape))
    is_global, reason = _judge(call, _tags(call, tuple(call.x.shape), shapes))
    return (call.op, reason) if is_global else None


# ----------------------------------------------------------------------------- hand-written statistics
#
# A mean written by hand (``x.sum(3, keepdim=True).sum(2, keepdim=True) / (H * W)``) converts
# site by site: axis means are separable, so the chain is the local mean. A variance written by
# hand, ``((x - mean) ** 2)`` reduced the same way, does not: each pixel's square would be centred
# by the mean of its own window, not by that of the window being reduced. Results of spatial means
# and sums therefore carry a mark saying what they are; the subtraction, square and reduction that
# follow carry it on, and the reduction completing a centred square over H and W returns the local
# variance of the marked source instead.


@dataclass(frozen=True)
class _Mark:
    """What a tensor is, in terms of a map ``src``.

    kind "mean": ``scale`` x mean of ``src`` over the spatial axes ``done``; "dev": ``src`` minus its
    mean over H and W; "sq": the square of a "dev"; "sqsum": ``scale`` x a "sq" reduced over
    ``done``. ``windows`` maps each axis in ``done`` to the window used there (None: global);
    ``centre`` is the windows of the mean a "dev"/"sq"/"sqsum" was centred by.
    """

    kind: str
    src: torch.Tensor
    done: tuple[int, ...] = ()
    scale: float = 1.0
    windows: tuple[tuple[int, int | None], ...] = ()
    centre: tuple[tuple[int, int | None], ...] = ()


_MARK = "_tlc_mark"


def _mark_of(t: object) -> _Mark | None:
    """The mark of ``t``, unless ``t`` or its source changed in place since it was set."""
    entry = t.__dict__.get(_MARK) if isinstance(t, torch.Tensor) else None
    if entry is None:
        return None
    mark, version, src_version = entry
    return mark if _version(t) == version and _version(mark.src) == src_version else None


def _set_mark(t: object, mark: _Mark) -> None:
    if isinstance(t, torch.Tensor):
        t.__dict__[_MARK] = (mark, _version(t), _version(mark.src))


def _version(t: torch.Tensor) -> int | None:
    """In-place change counter; None under ``torch.inference_mode``, whose tensors keep none (an
    in-place change there goes unseen)."""
    return None if t.is_inference() else t._version


def _marked_sub(converter: CallSiteConverter, func: Callable, args: tuple, kwargs: dict) -> object:
    out = func(*args, **kwargs)
    if len(args) == 2 and kwargs.get("alpha", 1) == 1:
        for a, b in (args, args[::-1]):
            m = _mark_of(b)
            if m is not None and m.kind == "mean" and m.done == (2, 3) and m.src is a and abs(m.scale - 1) < 1e-9:
                _set_mark(out, _Mark("dev", a, centre=m.windows))
                break
    return out


def _squared(t: object, exponent: object) -> _Mark | None:
    m = _mark_of(t)
    if m is not None and m.kind == "dev" and exponent == 2 and not isinstance(exponent, bool):
        return _Mark("sq", m.src, centre=m.centre)
    return None


def _marked_pow(converter: CallSiteConverter, func: Callable, args: tuple, kwargs: dict) -> object:
    out = func(*args, **kwargs)
    b = _bind(args, kwargs, ("input", "exponent"))
    if b is not None and (m := _squared(b.get("input", b.get("self")), b.get("exponent"))) is not None:
        _set_mark(out, m)
    return out


def _marked_square(converter: CallSiteConverter, func: Callable, args: tuple, kwargs: dict) -> object:
    out = func(*args, **kwargs)
    if args and (m := _squared(args[0], 2)) is not None:
        _set_mark(out, m)
    return out


def _marked_scale(divide: bool) -> Callable[[CallSiteConverter, Callable, tuple, dict], object]:
    """``mul``/``div``: a scaled mark stays a mark (``sum / (H * W)`` is a mean); ``d * d`` is a square."""

    def handle(converter: CallSiteConverter, func: Callable, args: tuple, kwargs: dict) -> object:
        out = func(*args, **kwargs)
        if len(args) != 2 or kwargs:
            return out
        a, b = args
        if not divide and a is b and (m := _squared(a, 2)) is not None:
            _set_mark(out, m)
            return out
        if divide:
            pairs = ((a, b),)
        else:
            pairs = ((a, b), (b, a))
        for t, number in pairs:
            m = _mark_of(t)
            if m is not None and m.kind in ("mean", "sqsum") and isinstance(number, (int, float)) and not isinstance(number, bool) and number:
                _set_mark(out, replace(m, scale=m.scale / number if divide else m.scale * number))
                break
        return out

    return handle


_ARITHMETIC: dict[object, Callable[[CallSiteConverter, Callable, tuple, dict], object]] = {
    torch.sub: _marked_sub,
    torch.Tensor.sub: _marked_sub,
    torch.Tensor.__sub__: _marked_sub,
    torch.Tensor.__rsub__: _marked_sub,
    torch.pow: _marked_pow,
    torch.Tensor.pow: _marked_pow,
    torch.Tensor.__pow__: _marked_pow,
    torch.square: _marked_square,
    torch.Tensor.square: _marked_square,
    torch.mul: _marked_scale(False),
    torch.Tensor.mul: _marked_scale(False),
    torch.Tensor.__mul__: _marked_scale(False),
    torch.Tensor.__rmul__: _marked_scale(False),
    torch.div: _marked_scale(True),
    torch.Tensor.div: _marked_scale(True),
    torch.Tensor.__truediv__: _marked_scale(True),
}


# ----------------------------------------------------------------------------- call sites

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_MODULE_CALLS = {"_call_impl", "_wrapped_call_impl"}  # nn.Module.__call__'s frames
_CALL_SITES = os.path.dirname(__file__) + os.sep  # this package's frames are never the model's
_CONVERT = os.path.dirname(os.path.dirname(__file__)) + os.sep
_PACKAGE = os.path.dirname(os.path.dirname(_CONVERT)) + os.sep
# tlc's own local computations: the torch calls they make are never sites.
_INTERNAL = (os.path.join(_PACKAGE, "ops") + os.sep, os.path.join(_PACKAGE, "nn") + os.sep) + tuple(
    os.path.join(_CONVERT, name) for name in ("pooled_gate.py", "pooled_values.py", "attention.py")
)


def _caller() -> FrameType | None:
    """The line of model code making the call: the first frame outside torch, this package and any
    ``__torch_function__`` (other modes or tensor subclasses passing the call on). None when
    torch's own module code makes it (``nn.AdaptiveAvgPool2d``...): a module call is met first."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_TORCH_DIR)
        or frame.f_code.co_filename.startswith(_CALL_SITES)
        or frame.f_code.co_name == "__torch_function__"
    ):
        if frame.f_code.co_name in _MODULE_CALLS and frame.f_code.co_filename.startswith(_TORCH_DIR):
            return None
        frame = frame.f_back
    return frame


@dataclass
class _ModuleCall:
    """One running module call on the stack: its path, and counters of calls per (line, op)."""

    hook: _Enter
    path: str
    excluded: bool
    counts: dict[tuple[str, int, str], int] = field(default_factory=dict)


class _Enter:
    """Forward pre-hook of every module: pushes the module call (and enters the mode at the top)."""

    def __init__(self, converter: CallSiteConverter, path: str, excluded: bool) -> None:
        self.converter, self.path, self.excluded = converter, path, excluded

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.converter._enter(self)


class _Leave:
    """Forward hook (``always_call``, so also on exceptions) popping what :class:`_Enter` pushed."""

    def __init__(self, enter: _Enter) -> None:
        self.enter = enter

    def __call__(self, module: nn.Module, args: tuple, output: object) -> None:
        self.enter.converter._leave(self.enter, output)


def _remove_mode(mode: TorchFunctionMode) -> None:
    """Take ``mode`` off torch's function-mode stack, keeping any mode the model left above it."""
    depth = torch._C._len_torch_function_stack()
    found = [i for i in range(depth) if torch._C._get_function_stack_at(i) is mode]
    if not found:
        return
    above = [torch._C._pop_torch_function_stack() for _ in range(depth - 1 - found[-1])]
    torch._C._pop_torch_function_stack()
    for other in reversed(above):
        torch._C._push_on_torch_function_stack(other)


Handler = Callable[["CallSiteConverter", Callable, tuple, dict], object]


def _at_site(parse: Callable[[tuple, dict], _Call | None]) -> Handler:
    def handle(converter: CallSiteConverter, func: Callable, args: tuple, kwargs: dict) -> object:
        try:
            call = parse(args, kwargs)
        except Exception:  # noqa: BLE001 (arguments no parser foresaw: the call is left to torch as it is)
            call = None
        return func(*args, **kwargs) if call is None else converter._call(func, args, kwargs, call)

    return handle


#: Calibration: every call that may be global, and the arithmetic of hand-written statistics.
_RECORD_HANDLERS: dict[object, Handler] = {**{f: _at_site(p) for f, p in _PARSERS.items()}, **_ARITHMETIC}
#: Converted model: only calls that can have a local form (softmax, products, FFTs never do).
_MAP_FUNCS = {f for f, op in _PARSERS.items() if op.__qualname__.split(".")[0] in (
    "_reduction", "_variance", "_adaptive", "_full_kernel", "_instance_norm", "_group_norm", "_layer_norm")}
_APPLY_HANDLERS: dict[object, Handler] = {f: h for f, h in _RECORD_HANDLERS.items() if f in _MAP_FUNCS}
#: ... where calibration paired a softmax over positions with a product pooling by it (GCNet).
_CONTEXT_HANDLERS: dict[object, Handler] = {
    f: h for f, h in _RECORD_HANDLERS.items() if f in (F.softmax, torch.softmax, torch.Tensor.softmax, torch.matmul, torch.Tensor.matmul)
}
#: ... and, where calibration met a hand-written variance, the arithmetic leading to it.
_APPLY_WITH_ARITHMETIC: dict[object, Handler] = {**_APPLY_HANDLERS, **_ARITHMETIC}


def _context_operands(args: tuple, kwargs: dict, softmaxes: dict) -> tuple[SiteKey, torch.Tensor, torch.Tensor] | None:
    """(softmax site, the (N, C, H, W) map, the weights) when a product's operands are a view of a
    map with its positions last and a view of the output of one of ``softmaxes`` over them."""
    b = _bind(args, kwargs, ("input", "other"))
    if b is None or not isinstance(a := b.get("input"), torch.Tensor) or not isinstance(m := b.get("other"), torch.Tensor):
        return None
    x_map = a._base
    if x_map is None or x_map.dim() != 4 or not x_map.is_contiguous() or a.shape[-1] != x_map.shape[2] * x_map.shape[3]:
        return None
    if a.data_ptr() != x_map.data_ptr() or a.numel() != x_map.numel():
        return None
    for key, out in softmaxes.items():
        out = out[0] if isinstance(out, tuple) else out
        if isinstance(out, torch.Tensor) and m.data_ptr() == out.data_ptr() and m.numel() == out.numel():
            return key, x_map, out
    return None


class _LocalCalls(TorchFunctionMode):
    """The mode active while a hooked model runs: hands the calls in ``handlers`` to them, and
    every call taking a pooled value to ``values`` first."""

    def __init__(self, converter: CallSiteConverter, handlers: dict[object, Handler], values: PooledValues | None) -> None:
        super().__init__()
        self.converter, self.handlers, self.values = converter, handlers, values

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        kwargs = kwargs or {}
        if self.values is not None:
            result = self.values.handle(func, types, args, kwargs)
            if result is not NotImplemented:
                return result
        try:
            handle = self.handlers.get(func)
        except TypeError:  # unhashable callables are none of ours
            handle = None
        if handle is None:
            return func(*args, **kwargs)
        return handle(self.converter, func, args, kwargs)


@dataclass
class _Observed:
    """A site as calibration saw it: the call (its input replaced by a meta tensor of its shape)
    and the input shapes met, per forward (training size, then the two probe sizes)."""

    call: _Call
    location: str
    function: str
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # at the training size, per call
    probes: list[tuple[int, ...] | None] = field(default_factory=lambda: [None, None])  # first call per probe


def _template(call: _Call) -> _Call:
    """``call`` without its tensors: what judging it needs."""
    meta = torch.empty(call.x.shape, dtype=call.x.dtype, device="meta")
    return replace(call, x=meta, local=None if call.local is None else _has_local)


def _has_local(site: Site) -> torch.Tensor:  # placeholder for a template's local form
    raise AssertionError("a template is never run")


class CallSiteConverter:
    """Functional global ops of one model: hooks, calibration records and per-site windows.

    Built by :func:`convert_call_sites`. Phases: ``"record"`` (calibration: observe sites, run
    everything globally), ``"probe"`` (the same at other sizes, to tell spatial axes), then
    ``"apply"`` (recognised calls at converted sites run locally).

    Attributes:
        sites: every global op found at calibration, in call order.
    """

    def __init__(self, model: nn.Module, skip: Iterable[str] = ()) -> None:
        skip = tuple(skip)
        self.phase = "record"
        self.sites: list[CallSite] = []
        self._windows: dict[SiteKey, tuple[Site, int]] = {}  # converted sites: (site, channels)
        self._observed: dict[SiteKey, _Observed] = {}
        self._index: dict[SiteKey, int] = {}  # position in sites
        self._unknown: dict[SiteKey, str] = {}  # keys met after calibration, with their description
        self._variances: set[SiteKey] = set()  # sites completing a hand-written variance
        self._pooled: set[SiteKey] = set()  # converted sites answered with pooled values
        # GCNet-style context pooling: product site -> (its softmax site, map (h, w) at training).
        self._pairs: dict[SiteKey, tuple[SiteKey, Pair]] = {}
        self._context: dict[SiteKey, SiteKey] = {}  # converted pairs: product site -> softmax site
        self._context_softmax: set[SiteKey] = set()
        self._probe = 0
        self._thread = threading.local()
        # Calls inside modules that module rules matched (converted or deliberately left global)
        # belong to those rules.
        for path, module in model.named_modules():
            excluded = any(path == p or path.startswith(p + ".") for p in skip)
            enter = _Enter(self, path, excluded)
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(_Leave(enter), always_call=True)

    # Thread-local run state; dropped by deepcopy/pickle (it only lives during a forward).
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_thread"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread = threading.local()

    def _stack(self) -> list[_ModuleCall]:
        stack = getattr(self._thread, "stack", None)
        if stack is None:
            stack = self._thread.stack = []
        return stack

    def _handlers(self) -> dict[object, Handler]:
        if self.phase != "apply":
            return _RECORD_HANDLERS
        handlers = _APPLY_WITH_ARITHMETIC if self._variances else _APPLY_HANDLERS
        return {**handlers, **_CONTEXT_HANDLERS} if self._context else handlers

    def _pair_context(self, key: SiteKey, args: tuple, kwargs: dict) -> None:
        """At calibration: whether the product ``key`` pools a map with the weights of a softmax over
        its positions (GCNet: ``matmul(x.view(N, 1, C, H*W), softmax(mask.view(N, 1, H*W)).unsqueeze(-1))``)."""
        found = _context_operands(args, kwargs, self._thread.softmaxes)
        if found is not None:
            softmax_key, x_map, _ = found
            self._pairs.setdefault(key, (softmax_key, (x_map.shape[2], x_map.shape[3])))

    def _context_pool(self, key: SiteKey, func: Callable, args: tuple, kwargs: dict, site: Site) -> object:
        """The product of a converted context pair: the global result as a pooled value carrying the
        softmax-weighted mean of every window (:func:`tlc.ops.local_softmax_pool`)."""
        softmax_key = self._context[key]
        weights = {k: out for k, (out, _) in self._thread.softmaxes.items() if k == softmax_key}
        found = _context_operands(args, kwargs, weights)
        logits = self._thread.softmaxes.get(softmax_key, (None, None))[1]
        base = getattr(logits, "_base", None)
        if found is None or base is None or base.dim() != 4 or base.shape[-2:] != found[1].shape[-2:]:
            raise PooledValueError("context pooling: the map or the softmax's logits are not views of (N, C, H, W) maps", {key})
        x_map = found[1]
        h, w = x_map.shape[-2:]
        kh, kw = min(site.window[0], h), min(site.window[1], w)
        pooled = local_softmax_pool(x_map, base.reshape(base.shape[0], -1, h, w), (kh, kw))
        top, left = (kh - 1) // 2, (kw - 1) // 2
        valid = pooled[:, :, top : top + h - kh + 1, left : left + w - kw + 1]
        return self._thread.mode.values.start(func(*args, **kwargs), valid, (h, w), source=key)

    # --- hooks
    def _enter(self, hook: _Enter) -> None:
        stack = self._stack()
        if not stack:
            self._thread.softmaxes = {}
            values = PooledValues() if self.phase == "apply" and self._pooled else None
            mode = _LocalCalls(self, self._handlers(), values)
            mode.__enter__()
            self._thread.mode = mode
        excluded = hook.excluded or (stack[-1].excluded if stack else False)
        stack.append(_ModuleCall(hook, hook.path, excluded))

    def _leave(self, hook: _Enter, output: object = None) -> None:
        stack = self._stack()
        if not stack or stack[-1].hook is not hook:
            return  # this call's pre-hook never ran (an earlier pre-hook raised)
        stack.pop()
        mode = getattr(self._thread, "mode", None)
        if not stack and mode is not None:
            self._thread.mode = None
            _remove_mode(mode)
            if mode.values is not None:  # pooled values in the output never met the image
                self._thread.escaped = mode.values.finish(output)

    # --- the mode's answer to a recognised call
    def _call(self, func: Callable, args: tuple, kwargs: dict, call: _Call) -> object:
        stack = self._stack()
        if not stack or stack[-1].excluded or (self.phase == "apply" and call.local is None and not self._pooled):
            return func(*args, **kwargs)
        top = stack[-1]
        frame = _caller()
        if frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
            return func(*args, **kwargs)  # inside a local op of tlc's own
        if frame is None:
            function, offset, location = "<torch>", 0, "torch.nn"
        else:
            code = frame.f_code
            function = getattr(code, "co_qualname", code.co_name)
            offset = frame.f_lineno - code.co_firstlineno
            location = f"{os.path.basename(code.co_filename)}:{frame.f_lineno}"
        slot = (function, offset, call.op)
        occurrence = top.counts.get(slot, 0)
        top.counts[slot] = occurrence + 1
        key: SiteKey = (top.path, function, offset, call.op, occurrence)

        if self.phase == "record":
            seen = self._observed.get(key)
            if seen is None:
                seen = self._observed[key] = _Observed(_template(call), location, function)
            seen.shapes.append(tuple(call.x.shape))
            out = self._follow(key, call, func(*args, **kwargs), None)
            if call.op == "softmax":
                self._thread.softmaxes[key] = out
            elif call.op == "matmul":
                self._pair_context(key, args, kwargs)
            return out
        if self.phase == "probe":
            seen = self._observed.get(key)
            if seen is not None and seen.probes[self._probe] is None:
                seen.probes[self._probe] = tuple(call.x.shape)
            return self._follow(key, call, func(*args, **kwargs), None)

        channels = call.x.shape[1]
        converted = self._windows.get(key)
        problem = None
        if converted is None and key not in self._observed:
            problem = "was not met at calibration"
        elif converted is not None and channels != converted[1]:
            # Not the call calibrated under this name: control flow differs from calibration's.
            problem = f"has {channels} channels here, {converted[1]} at calibration"
        if problem is not None or converted is None:
            if problem is not None and key not in self._unknown:
                self._unknown[key] = f"{call.op} at {location} in module '{top.path}' {problem}"
                warnings.warn(f"tlc: {self._unknown[key]}; it stays global", stacklevel=2)
            return self._follow(key, call, func(*args, **kwargs), None)
        self._thread.last = key
        site = converted[0]
        if key in self._context_softmax:  # the weights, kept for the product that pools with them
            out = func(*args, **kwargs)
            self._thread.softmaxes[key] = (out, call.x)
            return out
        if key in self._context:
            return self._context_pool(key, func, args, kwargs, site)
        if key in self._pooled:  # the global result, carrying its value over every window
            real = func(*args, **kwargs)
            return self._thread.mode.values.start(real, _valid_pooling(call, site), call.x.shape[-2:], source=key)
        if call.local is None:
            return func(*args, **kwargs)
        return self._follow(key, call, call.local(site), site)

    def _follow(self, key: SiteKey, call: _Call, out: object, site: Site | None) -> object:
        """Carry the marks of hand-written statistics (see ``_Mark``) through a spatial mean or sum;
        at the end of a centred square's reduction, return the local variance."""
        if call.mark is None or call.local is None:
            return out
        dims = call.dims
        windows = tuple((d, None if site is None else site.window[d - 2]) for d in dims)
        factor = 1.0
        if call.mark == "sum":
            for d in dims:
                factor *= call.x.shape[d]
        m = _mark_of(call.x)
        if m is None:
            _set_mark(out, _Mark("mean", call.x, dims, factor, windows))
        elif m.kind == "mean" and not set(m.done) & set(dims):
            _set_mark(out, _Mark("mean", m.src, tuple(sorted(m.done + dims)), m.scale * factor, m.windows + windows))
        elif m.kind in ("sq", "sqsum") and not set(m.done) & set(dims):
            done = tuple(sorted(m.done + dims))
            scale = m.scale * factor if m.kind == "sqsum" else factor
            reduced = m.windows + windows if m.kind == "sqsum" else windows
            if done != (2, 3):
                _set_mark(out, _Mark("sqsum", m.src, done, scale, reduced, m.centre))
                return out
            if self.phase == "record":
                self._variances.add(key)
            window = dict(reduced)
            if site is not None and window == dict(m.centre) and None not in window.values():
                var = local_var(m.src, (window[2], window[3]), 0.0)
                return var if scale == 1 else var * scale
        return out

    # --- calibration results
    def finish_calibration(self, site_for: Callable[[Pair], Site], probed: bool = False) -> list[CallSite]:
        """Turn what the record phase saw into sites, switch to the apply phase.

        Args:
            site_for: the :class:`tlc.Site` (window, fast, ...) for a feature size at training.
            probed: whether the probe forwards ran; then a call is global only where they show
                its axes growing with the image, and calls they did not meet are not sites.

        Returns:
            :attr:`sites`.
        """
        for key, seen in self._observed.items():
            path, _, _, _, occurrence = key
            call = seen.call
            if probed and None in seen.probes:
                continue  # a call only the training size makes (a kernel equal to the map there)
            tags = _tags(call, seen.shapes[0], tuple(seen.probes) if probed else None)
            is_global, reason = _judge(call, tags)
            if not is_global:
                continue
            shapes = sorted(set(seen.shapes))
            if reason is None and len(shapes) > 1:
                sizes = ", ".join("x".join(str(n) for n in s[1:]) for s in shapes)
                reason = f"one call site met with several input sizes (CxHxW: {sizes}); give each its own call"
            shape = shapes[0]
            channels = shape[1] if len(shape) > 1 else 0
            feature = (shape[2], shape[3]) if len(shape) == 4 else (0, 0)
            window = None
            if reason is not None and len(shapes) == 1 and _poolable(call) and tags == (_H, _W):
                reason = None  # kept as a pooled value: consumers may reshape it freely
                self._pooled.add(key)
            if reason is None:
                site = site_for(feature)
                self._windows[key] = (site, channels)
                window = site.window
            self._index[key] = len(self.sites)
            self.sites.append(
                CallSite(path, call.op, seen.location, seen.function, occurrence, channels, feature, window, reason)
            )
        self._convert_context_pairs(site_for)
        self.phase = "apply"
        return self.sites

    def _convert_context_pairs(self, site_for: Callable[[Pair], Site]) -> None:
        """A softmax over all positions whose weights one product pools a map with (GCNet's context
        block) becomes, with that product, one local softmax-weighted pooling per window."""
        users: dict[SiteKey, int] = {}
        for softmax_key, _ in self._pairs.values():
            users[softmax_key] = users.get(softmax_key, 0) + 1
        for key, (softmax_key, feature) in self._pairs.items():
            if users[softmax_key] != 1 or key not in self._index or softmax_key not in self._index:
                continue
            product, softmax = self.sites[self._index[key]], self.sites[self._index[softmax_key]]
            if not (product.reason or "").endswith("all H*W positions") or not (softmax.reason or "").endswith("all H*W positions"):
                continue
            site = site_for(feature)
            if site.fast:
                continue
            for k, entry in ((key, product), (softmax_key, softmax)):
                self._windows[k] = (site, entry.channels)
                self.sites[self._index[k]] = replace(entry, feature_size=feature, window=site.window, reason=None)
            self._pooled.add(key)
            self._context[key] = softmax_key
            self._context_softmax.add(softmax_key)

    def leave_global(self, key: SiteKey, reason: str) -> None:
        """Stop converting the site ``key`` (and the other half of its context pair); the report
        gives ``reason``."""
        self._windows.pop(key, None)
        self._pooled.discard(key)
        partner = self._context.pop(key, None)
        if partner is None:
            partner = next((k for k, v in self._context.items() if v == key), None)
            self._context.pop(partner, None)
        if partner is not None:
            self._context_softmax.discard(partner)
            self._context_softmax.discard(key)
            self._windows.pop(partner, None)
            self._pooled.discard(partner)
            self.sites[self._index[partner]] = replace(self.sites[self._index[partner]], window=None, reason=reason)
        index = self._index[key]
        self.sites[index] = replace(self.sites[index], window=None, reason=reason)

    def pool_instead(self, key: SiteKey) -> bool:
        """Answer the converted site ``key`` with a pooled value from now on, if it is a whole-map
        pooling not already so answered (its full-size local map broke the model); else False."""
        seen = self._observed.get(key)
        site = self._windows.get(key)
        if key in self._pooled or seen is None or site is None or site[0].fast or not _poolable(seen.call):
            return False
        self._pooled.add(key)
        return True

    @property
    def converted(self) -> int:
        """How many sites run locally."""
        return len(self._windows)

    def remove(self, model: nn.Module) -> None:
        """Take this converter's hooks off ``model``: its functional ops are global again."""
        remove_call_site_conversion(model, only=self)


def installed(model: nn.Module) -> CallSiteConverter | None:
    """The :class:`CallSiteConverter` whose hooks are on ``model``, or None."""
    for hook in model._forward_pre_hooks.values():
        if isinstance(hook, _Enter):
            return hook.converter
    return None


def remove_call_site_conversion(model: nn.Module, only: CallSiteConverter | None = None) -> None:
    """Take functional conversion hooks off every module of ``model`` (those of ``only``, if given)."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for hook_id, hook in list(hooks.items()):
                enter = hook.enter if isinstance(hook, _Leave) else hook
                owner = enter.converter if isinstance(enter, _Enter) else None
                if owner is not None and (only is None or owner is only):
                    del hooks[hook_id]
                    module._forward_hooks_always_called.pop(hook_id, None)


def convert_call_sites(
    model: nn.Module,
    run: Callable[[str], object],
    site_for: Callable[[Pair], Site],
    *,
    skip: Iterable[str] = (),
    probes: Sequence[Callable[[str], object]] = (),
    check_other: Callable[[str], object] | None = None,
) -> tuple[object, list[CallSite]]:
    """Make the functional global ops of ``model`` local; :func:`tlc.convert` calls this (its
    ``functional=True``, the default) after converting modules.

    Runs ``run`` (one forward at the training size (h, w), raising an exception that chains the
    model's own) to record the calls, then ``probes`` (at (2h, w) and (h, 2w)) to tell which axes
    grow with the image: only calls across such axes are global ops. Then the check forwards:
    ``run`` and ``check_other`` (at a size where H != W, where strips of both axes no longer fit
    together). Should a check fail after a converted site ran (its (N, C, H, W) result is used as a
    pooled (N, C, 1, 1) one, e.g. flattened), the last converted site before the failure is left
    global, with the error as reason, and the checks run again. Replaces any earlier functional
    conversion of ``model``.

    Args:
        model: the model, changed in place (forward hooks).
        run: ``run(what)`` runs ``model`` at the training size and returns its output; ``what``
            names the forward in error messages.
        site_for: the :class:`tlc.Site` for a feature size (h, w) measured at the training size.
        skip: qualified names of modules whose calls are not sites (those module rules matched).
        probes: two runners, at (2h, w) and (h, 2w). Without them, or should one fail (with a
            warning), a 4-D tensor is taken as (N, C, H, W) and softmax, normalisation and matrix
            products over positions are not looked at.
        check_other: runs the model at a size other than the training size, H != W; only where
            the probe forwards ran.

    Returns:
        (output of the passing check forward at the training size, every global op found,
        converted or not).
    """
    remove_call_site_conversion(model)
    converter = CallSiteConverter(model, skip)
    try:
        run("the calibration forward of functional call sites")
        probed = False
        if len(probes) == 2 and converter._observed:
            converter.phase = "probe"
            try:
                for index, probe in enumerate(probes):
                    converter._probe = index
                    probe("a probe forward of functional call sites")
                probed = True
            except Exception as err:  # noqa: BLE001 (any failure: fall back to the layout assumption)
                warnings.warn(
                    f"tlc: {one_line(err.__cause__ or err, typed=True, limit=160)}; spatial axes are taken to be the last two of 4-D "
                    "tensors, and softmax, normalisation and matrix products over positions are not checked",
                    stacklevel=3,
                )
        sites = converter.finish_calibration(site_for, probed)
        while True:
            if not converter.converted:
                remove_call_site_conversion(model, only=converter)
                return run("the converted model's check forward"), sites
            converter._thread.last = None
            converter._thread.escaped = frozenset()
            try:
                out = run("the converted model's check forward")
                escaped = [key for key in converter._thread.escaped if key in converter._index]
                if escaped:
                    for key in escaped:
                        converter.leave_global(key, LEAVES_IMAGE)
                    continue
                if check_other is not None and probed:  # the model runs at other sizes
                    with warnings.catch_warnings():  # sites met only at other sizes warn at inference
                        warnings.simplefilter("ignore")
                        try:
                            check_other("the converted model's check forward at another size")
                        finally:
                            converter._unknown.clear()
                return out, sites
            except Exception as err:
                cause = err.__cause__ or err
                refused = [key for key in getattr(cause, "sources", ()) if key in converter._index]
                if isinstance(cause, PooledValueError) and refused:
                    for key in refused:
                        converter.leave_global(key, f"{POOLED_VALUE}: {cause.reason}")
                    continue
                last = getattr(converter._thread, "last", None)
                if last is None:
                    raise
                if converter.pool_instead(last):
                    continue
                converter.leave_global(
                    last, f"{POOLED_VALUE}: the model fails on its local (N, C, H, W) result: {one_line(cause, typed=True, limit=160)}"
                )
    except BaseException:
        remove_call_site_conversion(model, only=converter)
        raise
