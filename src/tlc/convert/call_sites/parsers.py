"""One parser per torch function the run-time view knows: its arguments as a :class:`Call`, or None
when the call cannot be a global op (``PARSERS``: function -> parser)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...ops import local_axis_max, local_group_norm, local_instance_norm, local_std, local_var
from ...ops.stats import valid_local_var_mean_and_var
from ...ops._common import as_pair
from ..rules import Site
from .calls import (
    Call,
    axes,
    axis_window,
    bind,
    is_map,
    local_max_over,
    local_mean_over,
    local_pool,
    maybe_spatial,
    no_keepdim,
    spatial_only,
)


def _reduction(op: str) -> Callable[[tuple, dict], Call | None]:
    """Parser for mean/sum/amax/max: (input, dim, keepdim, *, dtype, out); no dim: all axes."""

    def parse(args: tuple, kwargs: dict) -> Call | None:
        b = bind(args, kwargs, ("input", "dim", "keepdim"))
        if b is None or not isinstance(x := b.get("input"), torch.Tensor) or not x.is_floating_point():
            return None
        dim = b.get("dim")
        if isinstance(dim, torch.Tensor) or x.dim() == 0:
            return None  # torch.max(x, other): elementwise
        if op == "max" and "dim" not in b:
            dim = None
        dims = axes(dim, x.dim())
        if dims is None or not maybe_spatial(x, dims):
            return None
        call = Call(op, x, dims, mark="mean" if op == "mean" else "sum" if op == "sum" else None)
        if not spatial_only(x, dims):
            return call
        if b.get("out") is not None:
            call.reason = "writes into out="
        elif not b.get("keepdim", False):
            call.reason = no_keepdim(op)
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
                    mean = local_mean_over(x if dtype is None else x.to(dtype), dims, site)
                    if scale == 1:
                        return mean
                    # The local ops return fresh tensors: scaled in place, one pass fewer over the map.
                    owned = mean._base is None and mean is not x and not (torch.is_grad_enabled() and mean.requires_grad)
                    return mean.mul_(scale) if owned else mean * scale

            elif op == "amax":
                call.local = lambda site: local_max_over(x, dims, site)
                return call
            else:  # max(dim): values only; indices of local maxima are not computed
                call.local = lambda site: torch.return_types.max((local_axis_max(x, axis_window(site, dims[0]), dims[0]), None))
                return call
            call.local = local
        return call

    return parse


def _variance(op: str) -> Callable[[tuple, dict], Call | None]:
    """Parser for ``var``/``std``: overloads (input, unbiased), (input, dim, unbiased, keepdim) and
    (input, dim, *, correction, keepdim)."""

    def parse(args: tuple, kwargs: dict) -> Call | None:
        x = args[0] if args else kwargs.get("input")
        rest = list(args[1:])
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 or len(rest) > 3:
            return None
        if rest and isinstance(rest[0], bool):  # (input, unbiased): over everything
            rest = [None, *rest]
        b = dict(zip(("dim", "unbiased", "keepdim"), rest))
        b.update(kwargs)
        dims = axes(b.get("dim"), x.dim())
        if dims is None or not maybe_spatial(x, dims):
            return None
        call = Call(op, x, dims)
        if not spatial_only(x, dims):
            return call
        correction = b.get("correction")
        if correction is None:
            correction = 0 if b.get("unbiased", True) is False else 1
        root = op.startswith("std")
        if dims == (2, 3) and not op.endswith("_mean"):  # the value per window, for a pooled value
            call.valid = lambda site: valid_local_var_mean_and_var(x, site.window, float(correction), root)
        if b.get("out") is not None:
            call.reason = "writes into out="
        elif not b.get("keepdim", False):
            call.reason = no_keepdim(op)
        elif dims != (2, 3):
            call.reason = f"{op} over one spatial axis: no local form here"
        else:
            stat = local_std if root else local_var
            if op.endswith("_mean"):
                call.local = lambda site: (stat(x, site.window, float(correction)), local_pool(x, site))
            else:
                call.local = lambda site: stat(x, site.window, float(correction))
        return call

    return parse


def _output_dims(size: object) -> tuple[object, object] | None:
    if isinstance(size, (tuple, list, torch.Size)):
        return (size[0], size[1]) if len(size) == 2 else None
    return (size, size)


def _adaptive(op: str) -> Callable[[tuple, dict], Call | None]:
    """Parser for ``F.adaptive_{avg,max}_pool2d``: to 1 (whole map), (None, 1) / (1, None) (strips)."""

    def parse(args: tuple, kwargs: dict) -> Call | None:
        b = bind(args, kwargs, ("input", "output_size", "return_indices"))
        if b is None or not is_map(x := b.get("input")) or (out := _output_dims(b.get("output_size"))) is None:
            return None
        dims = tuple(d for d, o in zip((2, 3), out) if o is not None)
        if not dims:
            return None  # (None, None): the identity
        if any(o != 1 or isinstance(o, bool) for d, o in zip((2, 3), out) if d in dims):
            sizes = "x".join("H" if o is None else str(o) for o in out)
            return Call(op, x, dims, reason=f"adaptive pooling to a fixed {sizes} grid: its bins grow with the map; no local form here")
        return _pooling(op, x, dims, b.get("return_indices", False))

    return parse


def _full_kernel(op: str) -> Callable[[tuple, dict], Call | None]:
    """Parser for ``F.avg_pool2d``/``F.max_pool2d`` whose kernel is the map on one or both axes."""

    names = ("input", "kernel_size", "stride", "padding")
    names += ("ceil_mode", "count_include_pad", "divisor_override") if op == "avg_pool2d" else (
        "dilation", "ceil_mode", "return_indices")

    def parse(args: tuple, kwargs: dict) -> Call | None:
        b = bind(args, kwargs, names)
        if b is None or not is_map(x := b.get("input")) or b.get("divisor_override") is not None:
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
        return _pooling(op, x, dims, b.get("return_indices", False))

    return parse


def _pooling(op: str, x: torch.Tensor, dims: tuple[int, ...], return_indices: bool) -> Call:
    """An average or max pooling over the whole of ``dims``: its local form (a mean or a max)."""
    average = "avg" in op
    call = Call(op, x, dims, mark="mean" if average else None)
    if return_indices:
        call.reason = "returns indices: no local form"
    elif average:
        call.local = lambda site: local_mean_over(x, dims, site)
    else:
        call.local = lambda site: local_max_over(x, dims, site)
    return call


def _instance_norm(args: tuple, kwargs: dict) -> Call | None:
    names = ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps")
    b = bind(args, kwargs, names)
    if b is None or not is_map(x := b.get("input")) or not b.get("use_input_stats", True):
        return None  # without input statistics it is a per-pixel affine map, not a global op
    call = Call("instance_norm", x, (2, 3))
    if b.get("running_mean") is not None or b.get("running_var") is not None:
        call.reason = "updates running statistics (running_mean/running_var given)"
        return call
    weight, bias, eps = b.get("weight"), b.get("bias"), b.get("eps", 1e-5)
    call.local = lambda site: local_instance_norm(x, site.window, weight, bias, eps)
    return call


def _group_norm(args: tuple, kwargs: dict) -> Call | None:
    b = bind(args, kwargs, ("input", "num_groups", "weight", "bias", "eps"))
    if b is None or not is_map(x := b.get("input")) or "num_groups" not in b:
        return None
    groups, weight, bias, eps = b["num_groups"], b.get("weight"), b.get("bias"), b.get("eps", 1e-5)
    return Call("group_norm", x, (2, 3), local=lambda site: local_group_norm(x, groups, site.window, weight, bias, eps))


def _layer_norm(args: tuple, kwargs: dict) -> Call | None:
    b = bind(args, kwargs, ("input", "normalized_shape", "weight", "bias", "eps"))
    if b is None or not isinstance(x := b.get("input"), torch.Tensor) or not x.is_floating_point():
        return None
    shape = b.get("normalized_shape")
    count = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    if not 0 < count <= x.dim():
        return None
    dims = tuple(range(x.dim() - count, x.dim()))
    if not maybe_spatial(x, dims):
        return None
    call = Call("layer_norm", x, dims)
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


def _softmax(op: str) -> Callable[[tuple, dict], Call | None]:
    def parse(args: tuple, kwargs: dict) -> Call | None:
        b = bind(args, kwargs, ("input", "dim"))
        if b is None or not isinstance(x := b.get("input"), torch.Tensor) or (dims := axes(b.get("dim"), x.dim())) is None:
            return None
        return Call(op, x, dims, "tokens") if b.get("dim") is not None and maybe_spatial(x, dims) else None

    return parse


def _normalize(args: tuple, kwargs: dict) -> Call | None:
    b = bind(args, kwargs, ("input", "p", "dim", "eps", "out"))
    if b is None or not isinstance(x := b.get("input"), torch.Tensor) or x.dim() == 0:
        return None
    dims = axes(b.get("dim", 1), x.dim())
    return Call("normalize", x, dims, "tokens") if dims is not None and maybe_spatial(x, dims) else None


def _norm(op: str) -> Callable[[tuple, dict], Call | None]:
    """``Tensor.norm``/``torch.norm`` (input, p, dim, ...) and ``linalg.vector_norm`` (x, ord, dim, ...)."""

    def parse(args: tuple, kwargs: dict) -> Call | None:
        b = bind(args, kwargs, ("input", "p", "dim", "keepdim", "dtype"))
        if b is None:
            return None
        x = b.get("input", b.get("x"))
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
            return None
        dims = axes(b.get("dim"), x.dim())
        return Call(op, x, dims, "tokens") if dims is not None and maybe_spatial(x, dims) else None

    return parse


def _matmul(op: str) -> Callable[[tuple, dict], Call | None]:
    def parse(args: tuple, kwargs: dict) -> Call | None:
        b = bind(args, kwargs, ("input", "other"))
        a = None if b is None else b.get("input", b.get("mat1"))
        if not isinstance(a, torch.Tensor) or a.dim() < 2:
            return None
        return Call(op, a, (a.dim() - 1,), "tokens")

    return parse


def _attention(op: str, keys_dim: int) -> Callable[[tuple, dict], Call | None]:
    """``F.scaled_dot_product_attention(q, k, v)`` (keys (..., S, E)) and
    ``F.multi_head_attention_forward(q, k, v, ...)`` (keys (S, N, E)): global where S grows."""

    def parse(args: tuple, kwargs: dict) -> Call | None:
        key = args[1] if len(args) > 1 else kwargs.get("key")
        if not isinstance(key, torch.Tensor) or key.dim() < 2:
            return None
        return Call(op, key, (keys_dim % key.dim(),), "tokens")

    return parse


def _einsum(args: tuple, kwargs: dict) -> Call | None:
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
            return Call("einsum", t, dims, "tokens")
    return None


def _fft(op: str, default: object, sizes: str) -> Callable[[tuple, dict], Call | None]:
    """torch.fft: (input, n|s, dim, norm); ``default`` dim; fftn's None means all axes (or the
    last len(s) when s is given)."""

    def parse(args: tuple, kwargs: dict) -> Call | None:
        b = bind(args, kwargs, ("input", sizes, "dim", "norm"))
        if b is None or not isinstance(x := b.get("input"), torch.Tensor) or x.dim() == 0:
            return None
        dim = b.get("dim", default)
        if dim is None and b.get(sizes) is not None:
            dim = tuple(range(-len(b[sizes]), 0))
        dims = axes(dim, x.dim())
        return Call(op, x, dims, "fft") if dims is not None and maybe_spatial(x, dims) else None

    return parse


PARSERS: dict[object, Callable[[tuple, dict], Call | None]] = {
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

#: The functions whose calls can have a local form (reductions, pools, norms over the map).
MAP_FUNCS = {f for f, op in PARSERS.items() if op.__qualname__.split(".")[0] in (
    "_reduction", "_variance", "_adaptive", "_full_kernel", "_instance_norm", "_group_norm", "_layer_norm")}
