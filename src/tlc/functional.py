"""Global ops called as functions: ``x.mean((2, 3), keepdim=True)``, ``F.adaptive_avg_pool2d(x, 1)``,
``F.instance_norm(x)`` and kin, made local at test time.

Module rules cannot see these: there is no module to replace. Tracing (torch.fx) cannot follow the
data-dependent Python of real models (NAFNet pads by the input size). Instead a
:class:`torch.overrides.TorchFunctionMode` is active while the model runs; it sees every torch call,
recognises reductions over both spatial dimensions of (N, C, H, W) maps and names each *call site*
by:

- the innermost module running (its qualified name, from forward hooks),
- the calling source line (the first stack frame outside torch), kept as the function's qualified
  name plus the line's offset in that function, so moving code around in the file keeps the name,
- the op, and an occurrence counter of that (line, op) within that module call (loops, helpers).

A calibration forward at the training size records each site's feature size; the site's window is
then fixed like a module's. Afterwards the mode answers recognised calls at known sites with the
local op (window clamped to the map). The hooks live on the model (state_dict keys unchanged,
deepcopy and pickle keep them); the mode is entered when the outermost hooked module starts and
left when it ends, also on exceptions (``always_call`` forward hooks).

Recognised (on 4-D floating tensors, any 4-D tensor being taken as (N, C, H, W)):

===============================================  ==============================================
call                                             local version
===============================================  ==============================================
``torch.mean``/``Tensor.mean`` over dims {2, 3}  :func:`tlc.local_mean` (``keepdim=True`` only)
``F.adaptive_avg_pool2d(x, 1)``                  :func:`tlc.local_mean`
``F.avg_pool2d(x, kernel = map size)``           :func:`tlc.local_mean`
``F.instance_norm`` with input statistics        :func:`tlc.local_instance_norm`
``F.group_norm``                                 :func:`tlc.local_group_norm`
``torch.var``/``std`` (and methods) over {2, 3}  :func:`local_var` (and its square root)
``F.adaptive_max_pool2d(x, 1)``, ``amax``        reported, left global (no local max here)
===============================================  ==============================================

Means over channels (NAFNet's and Restormer's LayerNorm: ``x.mean(1, keepdim=True)``) or over one
spatial axis only are not touched.
"""

from __future__ import annotations

import operator
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .ops import local_group_norm, local_instance_norm, local_mean, local_mean_strided, local_var
from .ops._common import Pair, accumulation_dtype, as_pair, check_feature_map
from .ops.pool import clamp_window, replicate_to, window_sums
from .rules import Site

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


@dataclass
class _Call:
    """A recognised spatial global op: its input, and how to compute it locally at a site.

    ``reason`` (size independent) says why it must stay global; ``local`` is then None.
    """

    op: str
    x: torch.Tensor
    reason: str | None = None
    local: Callable[[Site], torch.Tensor] | None = None


_NO_KEEPDIM = "keepdim=False: the result has no spatial dimensions to hold local values"


def _is_map(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point() and x.shape[-2:].numel() > 0


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...]) -> dict[str, Any] | None:
    if len(args) > len(names):
        return None
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def _over_spatial(dim: object) -> bool:
    """True when ``dim`` names exactly the two spatial dims of a 4-D tensor (2, 3 / -2, -1 ...)."""
    if dim is None or isinstance(dim, (bool, str)):
        return False
    dims = [dim] if not isinstance(dim, (tuple, list, torch.Size)) else list(dim)
    try:
        indices = [operator.index(d) for d in dims]
    except TypeError:
        return False
    if any(isinstance(d, bool) or not -4 <= d < 4 for d in dims):
        return False
    return sorted(d % 4 for d in indices) == [2, 3]


def _is_one(size: object) -> bool:
    if isinstance(size, (tuple, list, torch.Size)):
        return len(size) == 2 and all(s == 1 for s in size)
    return size == 1 and not isinstance(size, bool)


def _pool(x: torch.Tensor, site: Site) -> torch.Tensor:
    return local_mean_strided(x, site.window, site.max_stride) if site.fast else local_mean(x, site.window)


def _mean(args: tuple, kwargs: dict) -> _Call | None:
    b = _bind(args, kwargs, ("input", "dim", "keepdim"))
    if b is None or not _is_map(x := b.get("input")) or not _over_spatial(b.get("dim")):
        return None
    if b.get("out") is not None:
        return _Call("mean", x, "writes into out=")
    if not b.get("keepdim", False):
        return _Call("mean", x, _NO_KEEPDIM)
    dtype = b.get("dtype")
    return _Call("mean", x, local=lambda site: _pool(x if dtype is None else x.to(dtype), site))


def _adaptive_avg_pool(args: tuple, kwargs: dict) -> _Call | None:
    b = _bind(args, kwargs, ("input", "output_size"))
    if b is None or not _is_map(x := b.get("input")) or not _is_one(b.get("output_size")):
        return None
    return _Call("adaptive_avg_pool2d", x, local=lambda site: _pool(x, site))


def _avg_pool(args: tuple, kwargs: dict) -> _Call | None:
    names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    b = _bind(args, kwargs, names)
    if b is None or not _is_map(x := b.get("input")) or b.get("divisor_override") is not None:
        return None
    try:
        kernel = as_pair(b.get("kernel_size"), "kernel_size")
        stride = b.get("stride")
        padding = b.get("padding", 0)
        if stride not in (None, [], ()) and as_pair(stride, "stride") != kernel:
            return None
        if padding not in (0, (0, 0), [0, 0]):
            return None
    except (TypeError, ValueError):
        return None
    # Global only where the kernel is the map (``F.avg_pool2d(x, x.shape[2:])``); a fixed kernel
    # is a plain pooling at other sizes and is left alone there.
    if kernel != tuple(x.shape[-2:]):
        return None
    return _Call("avg_pool2d", x, local=lambda site: _pool(x, site))


def _max_pool(args: tuple, kwargs: dict) -> _Call | None:
    b = _bind(args, kwargs, ("input", "output_size", "return_indices"))
    if b is None or not _is_map(x := b.get("input")) or not _is_one(b.get("output_size")):
        return None
    return _Call("adaptive_max_pool2d", x, "global max pooling: tlc has no local max")


def _amax(args: tuple, kwargs: dict) -> _Call | None:
    b = _bind(args, kwargs, ("input", "dim", "keepdim"))
    if b is None or not _is_map(x := b.get("input")) or not _over_spatial(b.get("dim")):
        return None
    return _Call("amax", x, "global max: tlc has no local max")


def _instance_norm(args: tuple, kwargs: dict) -> _Call | None:
    names = ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps")
    b = _bind(args, kwargs, names)
    if b is None or not _is_map(x := b.get("input")) or not b.get("use_input_stats", True):
        return None  # without input statistics it is a per-pixel affine map, not a global op
    if b.get("running_mean") is not None or b.get("running_var") is not None:
        return _Call("instance_norm", x, "updates running statistics (running_mean/running_var given)")
    weight, bias, eps = b.get("weight"), b.get("bias"), b.get("eps", 1e-5)
    return _Call("instance_norm", x, local=lambda site: local_instance_norm(x, site.window, weight, bias, eps))


def _group_norm(args: tuple, kwargs: dict) -> _Call | None:
    b = _bind(args, kwargs, ("input", "num_groups", "weight", "bias", "eps"))
    if b is None or not _is_map(x := b.get("input")) or "num_groups" not in b:
        return None
    groups, weight, bias, eps = b["num_groups"], b.get("weight"), b.get("bias"), b.get("eps", 1e-5)
    return _Call("group_norm", x, local=lambda site: local_group_norm(x, groups, site.window, weight, bias, eps))


def _variance(op: str) -> Callable[[tuple, dict], _Call | None]:
    """Parser for ``var``/``std``: overloads (input, unbiased), (input, dim, unbiased, keepdim) and
    (input, dim, *, correction, keepdim)."""

    def parse(args: tuple, kwargs: dict) -> _Call | None:
        x = args[0] if args else kwargs.get("input")
        rest = list(args[1:])
        if not _is_map(x) or (rest and isinstance(rest[0], bool)) or len(rest) > 3:
            return None  # the (input, unbiased) overload reduces over everything
        b = dict(zip(("dim", "unbiased", "keepdim"), rest))
        b.update(kwargs)
        if not _over_spatial(b.get("dim")):
            return None
        if b.get("out") is not None:
            return _Call(op, x, "writes into out=")
        if not b.get("keepdim", False):
            return _Call(op, x, _NO_KEEPDIM)
        correction = b.get("correction")
        if correction is None:
            correction = 0 if b.get("unbiased", True) is False else 1

        def local(site: Site) -> torch.Tensor:
            var = local_var(x, site.window, float(correction))
            return var.sqrt() if op == "std" else var

        return _Call(op, x, local=local)

    return parse


_PARSERS: dict[object, Callable[[tuple, dict], _Call | None]] = {
    torch.mean: _mean,
    torch.Tensor.mean: _mean,
    F.adaptive_avg_pool2d: _adaptive_avg_pool,
    F.avg_pool2d: _avg_pool,
    F.adaptive_max_pool2d: _max_pool,  # what its return_indices=False branch reports
    F.adaptive_max_pool2d_with_indices: _max_pool,
    torch.amax: _amax,
    torch.Tensor.amax: _amax,
    F.instance_norm: _instance_norm,
    F.group_norm: _group_norm,
    torch.var: _variance("var"),
    torch.Tensor.var: _variance("var"),
    torch.std: _variance("std"),
    torch.Tensor.std: _variance("std"),
}


def recognise(func: object, args: tuple, kwargs: dict | None = None) -> tuple[str, str | None] | None:
    """Whether a torch call is a global op over the spatial dims that this module knows.

    Args:
        func: the function as a ``TorchFunctionMode`` sees it (``torch.mean``, ``F.instance_norm``...).
        args, kwargs: its arguments.

    Returns:
        None if not recognised, else (op name, reason it must stay global or None).
    """
    try:
        parse = _PARSERS.get(func)
    except TypeError:  # unhashable callables are none of ours
        return None
    call = parse(args, kwargs or {}) if parse is not None else None
    return None if call is None else (call.op, call.reason)


# ----------------------------------------------------------------------------- call sites

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_THIS_FILE = __file__


def _caller() -> FrameType | None:
    """The line of model code making the call: the first frame outside torch, this file and any
    ``__torch_function__`` (other modes or tensor subclasses passing the call on)."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_TORCH_DIR)
        or frame.f_code.co_filename == _THIS_FILE
        or frame.f_code.co_name == "__torch_function__"
    ):
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
        self.enter.converter._leave(self.enter)


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


class _LocalCalls(TorchFunctionMode):
    """The mode active while a converted model runs: hands recognised calls to the converter."""

    def __init__(self, converter: CallSiteConverter) -> None:
        super().__init__()
        self.converter = converter

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        kwargs = kwargs or {}
        try:
            parse = _PARSERS.get(func)
        except TypeError:
            parse = None
        call = parse(args, kwargs) if parse is not None else None
        if call is None:
            return func(*args, **kwargs)
        return self.converter._call(func, args, kwargs, call)


@dataclass
class _Observed:
    op: str
    location: str
    function: str
    shapes: list[tuple[int, int, int]] = field(default_factory=list)  # (C, h, w) per call
    reason: str | None = None


class CallSiteConverter:
    """Functional global ops of one model: hooks, calibration records and per-site windows.

    Built by :func:`convert_call_sites`. Phases: ``"record"`` (calibration: observe sites, run
    everything globally), then ``"apply"`` (recognised calls at converted sites run locally).

    Attributes:
        sites: every site seen at calibration, in call order.
    """

    def __init__(self, model: nn.Module, skip: Iterable[str] = ()) -> None:
        skip = tuple(skip)
        self.phase = "record"
        self.sites: list[CallSite] = []
        self._windows: dict[SiteKey, tuple[Site, int]] = {}  # converted sites: (site, channels)
        self._observed: dict[SiteKey, _Observed] = {}
        self._unknown: dict[SiteKey, str] = {}  # keys met after calibration, with their description
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

    # --- hooks
    def _enter(self, hook: _Enter) -> None:
        stack = self._stack()
        if not stack:
            mode = _LocalCalls(self)
            mode.__enter__()
            self._thread.mode = mode
        excluded = hook.excluded or (stack[-1].excluded if stack else False)
        stack.append(_ModuleCall(hook, hook.path, excluded))

    def _leave(self, hook: _Enter) -> None:
        stack = self._stack()
        if not stack or stack[-1].hook is not hook:
            return  # this call's pre-hook never ran (an earlier pre-hook raised)
        stack.pop()
        mode = getattr(self._thread, "mode", None)
        if not stack and mode is not None:
            self._thread.mode = None
            _remove_mode(mode)

    # --- the mode's answer to a recognised call
    def _call(self, func: Callable, args: tuple, kwargs: dict, call: _Call) -> object:
        stack = self._stack()
        if not stack or stack[-1].excluded:
            return func(*args, **kwargs)
        top = stack[-1]
        frame = _caller()
        if frame is None:
            function, offset, location = "<torch>", 0, "<torch>"
        else:
            code = frame.f_code
            function = getattr(code, "co_qualname", code.co_name)
            offset = frame.f_lineno - code.co_firstlineno
            location = f"{os.path.basename(code.co_filename)}:{frame.f_lineno}"
        slot = (function, offset, call.op)
        occurrence = top.counts.get(slot, 0)
        top.counts[slot] = occurrence + 1
        key: SiteKey = (top.path, function, offset, call.op, occurrence)
        channels, h, w = call.x.shape[1:]

        if self.phase == "record":
            seen = self._observed.setdefault(key, _Observed(call.op, location, function))
            seen.shapes.append((channels, h, w))
            seen.reason = seen.reason or call.reason
            return func(*args, **kwargs)

        converted = self._windows.get(key)
        problem = None
        if converted is None and key not in self._observed:
            problem = "was not met at calibration"
        elif converted is not None and channels != converted[1]:
            # Not the call calibrated under this name: control flow differs from calibration's.
            problem = f"has {channels} channels here, {converted[1]} at calibration"
        if problem is not None or converted is None or call.local is None:
            if problem is not None and key not in self._unknown:
                self._unknown[key] = f"{call.op} at {location} in module '{top.path}' {problem}"
                warnings.warn(f"tlc: {self._unknown[key]}; it stays global", stacklevel=2)
            return func(*args, **kwargs)
        self._thread.last = key
        return call.local(converted[0])

    # --- calibration results
    def finish_calibration(self, site_for: Callable[[Pair], Site]) -> list[CallSite]:
        """Turn what the record phase saw into sites, switch to the apply phase.

        Args:
            site_for: the :class:`tlc.Site` (window, fast, ...) for a feature size at training.

        Returns:
            :attr:`sites`.
        """
        for key, seen in self._observed.items():
            path, _, _, _, occurrence = key
            shapes = sorted(set(seen.shapes))
            reason = seen.reason
            if reason is None and len(shapes) > 1:
                sizes = ", ".join(f"{c}x{h}x{w}" for c, h, w in shapes)
                reason = f"one call site met with several input sizes (CxHxW: {sizes}); give each its own call"
            channels, h, w = shapes[0]
            window = None
            if reason is None:
                site = site_for((h, w))
                self._windows[key] = (site, channels)
                window = site.window
            self.sites.append(
                CallSite(path, seen.op, seen.location, seen.function, occurrence, channels, (h, w), window, reason)
            )
        self.phase = "apply"
        return self.sites

    def leave_global(self, key: SiteKey, reason: str) -> None:
        """Stop converting the site ``key``; the report gives ``reason``."""
        self._windows.pop(key, None)
        index = list(self._observed).index(key)
        site = self.sites[index]
        self.sites[index] = CallSite(
            site.module, site.op, site.location, site.function, site.occurrence, site.channels, site.feature_size,
            None, reason,
        )

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


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def convert_call_sites(
    model: nn.Module,
    run: Callable[[str], object],
    site_for: Callable[[Pair], Site],
    *,
    skip: Iterable[str] = (),
) -> tuple[object, list[CallSite]]:
    """Make the functional global ops of ``model`` local; :func:`tlc.convert` calls this with
    ``functional=True`` after converting modules.

    Runs ``run`` (one forward at the training size, raising an exception that chains the model's
    own) once to record the sites, then as the check forward. Should the check fail after a
    converted site ran (its (N, C, H, W) result is used as a (N, C, 1, 1) one, e.g. flattened),
    the last converted site before the failure is left global, with the error as reason, and the
    check runs again. Replaces any earlier functional conversion of ``model``.

    Args:
        model: the model, changed in place (forward hooks).
        run: ``run(what)`` runs ``model`` at the training size and returns its output; ``what``
            names the forward in error messages.
        site_for: the :class:`tlc.Site` for a feature size (h, w) measured at the training size.
        skip: qualified names of modules whose calls are not sites (those module rules matched).

    Returns:
        (output of the passing check forward, every call site found, converted or not).
    """
    remove_call_site_conversion(model)
    converter = CallSiteConverter(model, skip)
    try:
        run("the calibration forward of functional call sites")
        sites = converter.finish_calibration(site_for)
        while True:
            if not converter.converted:
                remove_call_site_conversion(model, only=converter)
                return run("the converted model's check forward"), sites
            converter._thread.last = None
            try:
                return run("the converted model's check forward"), sites
            except Exception as err:
                last = getattr(converter._thread, "last", None)
                if last is None:
                    raise
                cause = err.__cause__ or err
                converter.leave_global(last, f"the model fails on its local (N, C, H, W) result: {_one_line(cause)}")
    except BaseException:
        remove_call_site_conversion(model, only=converter)
        raise
