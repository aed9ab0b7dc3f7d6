"""What runs while a converted model runs: the module hooks naming call sites, the torch function
mode handing recognised calls to the converter, and the handler tables per phase."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..pooled_values import PooledValues
from ..rules import Site
from .calls import Call, bind, table_entry
from .marks import MARKERS
from .parsers import MAP_FUNCS, PARSERS
from .partials import PartialUses, StandIns
from .sites import SiteKey

if TYPE_CHECKING:  # annotations only: the converter imports this module
    from .converter import CallSiteConverter

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_MODULE_CALLS = {"_call_impl", "_wrapped_call_impl"}  # nn.Module.__call__'s frames
_CALL_SITES = os.path.dirname(__file__) + os.sep  # this package's frames are never the model's
_CONVERT = os.path.dirname(os.path.dirname(__file__)) + os.sep
_PACKAGE = os.path.dirname(os.path.dirname(_CONVERT)) + os.sep
# tlc's own local computations: the torch calls they make are never sites.
INTERNAL = (os.path.join(_PACKAGE, "ops") + os.sep, os.path.join(_PACKAGE, "nn") + os.sep) + tuple(
    os.path.join(_CONVERT, name)
    for name in ("pooled_gate.py", "pooled_values.py", "pooled_forms.py", "channel_first.py", "attention.py")
)


def caller() -> FrameType | None:
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
class ModuleCall:
    """One running module call on the stack: its path, and counters of calls per (line, op)."""

    hook: Enter
    path: str
    excluded: bool
    counts: dict[tuple[str, int, str], int] = field(default_factory=dict)
    map_size: tuple[int, int] | None = None  # (H, W) of the call's first argument if a 4-D map


class Enter:
    """Forward pre-hook of every module: pushes the module call (and enters the mode at the top)."""

    def __init__(self, converter: CallSiteConverter, path: str, excluded: bool, reopened: bool = False) -> None:
        self.converter, self.path, self.excluded = converter, path, excluded
        self.reopened = reopened  # seen even when called from inside an excluded module

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict | None = None) -> None:
        self.converter.enter_module(self, args, module if self.path == "" else None, kwargs)


class Leave:
    """Forward hook (``always_call``, so also on exceptions) popping what :class:`Enter` pushed."""

    def __init__(self, enter: Enter) -> None:
        self.enter = enter

    def __call__(self, module: nn.Module, args: tuple, output: object) -> object:
        return self.enter.converter.leave_module(self.enter, output)


def remove_mode(mode: TorchFunctionMode) -> None:
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


def at_site(parse: Callable[[tuple, dict], Call | None]) -> Handler:
    def handle(converter: CallSiteConverter, func: Callable, args: tuple, kwargs: dict) -> object:
        try:
            call = parse(args, kwargs)
        except Exception:  # noqa: BLE001 (arguments no parser foresaw: the call is left to torch as it is)
            call = None
        return func(*args, **kwargs) if call is None else converter.answer(func, args, kwargs, call)

    return handle


def _arithmetic(converter: CallSiteConverter, func: Callable, args: tuple, kwargs: dict) -> object:
    return converter.arithmetic(func, (), args, kwargs, MARKERS[func](args, kwargs))


#: The arithmetic of hand-written statistics (:data:`MARKERS`' calls): made, then its result marked.
ARITHMETIC: dict[object, Handler] = dict.fromkeys(MARKERS, _arithmetic)
#: Calibration: every call that may be global, and the arithmetic of hand-written statistics.
RECORD_HANDLERS: dict[object, Handler] = {**{f: at_site(p) for f, p in PARSERS.items()}, **ARITHMETIC}
#: Converted model: only calls that can have a local form (softmax, products, FFTs never do).
APPLY_HANDLERS: dict[object, Handler] = {f: h for f, h in RECORD_HANDLERS.items() if f in MAP_FUNCS}
#: ... where calibration paired a softmax over positions with a product pooling by it (GCNet).
CONTEXT_HANDLERS: dict[object, Handler] = {
    f: h for f, h in RECORD_HANDLERS.items() if f in (F.softmax, torch.softmax, torch.Tensor.softmax, torch.matmul, torch.Tensor.matmul)
}
#: ... and, where calibration met a hand-written variance, the arithmetic leading to it.
APPLY_WITH_ARITHMETIC: dict[object, Handler] = {**APPLY_HANDLERS, **ARITHMETIC}


def context_operands(args: tuple, kwargs: dict, softmaxes: dict) -> tuple[SiteKey, torch.Tensor, torch.Tensor] | None:
    """(softmax site, the (N, C, H, W) map, the weights) when a product's operands are a view of a
    map with its positions last and a view of the output of one of ``softmaxes`` over them."""
    b = bind(args, kwargs, ("input", "other"))
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


def context_maps(
    args: tuple, kwargs: dict, weights: torch.Tensor | None, logits: torch.Tensor | None, sizes: list
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the (N, C, H, W) map, the (N, 1 or C, H, W) logits) of a paired product, or None.

    The layout comes from the operands' bases where views are tracked, else from the innermost
    running module whose input map has as many pixels as the product contracts over.
    """
    b = bind(args, kwargs, ("input", "other"))
    if b is None or weights is None or logits is None:
        return None
    a, m = b.get("input"), b.get("other")
    if not isinstance(a, torch.Tensor) or not isinstance(m, torch.Tensor):
        return None
    if m.data_ptr() != weights.data_ptr() or m.numel() != weights.numel():
        return None
    length = a.shape[-1]
    size = next((s for s in ([tuple(a._base.shape[-2:])] if a._base is not None and a._base.dim() == 4 else [])
                 + [s for s in sizes if s is not None] if s[0] * s[1] == length), None)
    if size is None or a.numel() % length or logits.numel() % length:
        return None
    n = a.shape[0]
    x_map = a.reshape(n, a.numel() // (n * length), *size)
    return x_map, logits.reshape(n, logits.numel() // (n * length), *size)


class LocalCalls(TorchFunctionMode):
    """The mode active while a hooked model runs: hands the calls in ``handlers`` to them, and
    every call taking a pooled value to ``values`` first (marking its result as the arithmetic of
    hand-written statistics would, where ``handlers`` follow that arithmetic)."""

    # tlc's own local ops are never sites, and the feature maps they take are never pooled values
    # or stand-ins: those making many calls may run them with this mode off
    # (tlc.ops._common.unseen_by_tlc_modes).
    ignores_tlc_ops = True

    def __init__(self, converter: CallSiteConverter, handlers: dict[object, Handler], values: PooledValues | None) -> None:
        super().__init__()
        self.converter, self.handlers, self.values = converter, handlers, values
        self.markers = MARKERS if any(f in handlers for f in MARKERS) else {}
        # Calibration: the uses of partial reductions; converted: the global ones standing in.
        self.partials: PartialUses | StandIns | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        kwargs = kwargs or {}
        if self.values is not None and self.values.pending:
            self.values.before_call(getattr(func, "__name__", ""), args, kwargs)
        partials = self.partials
        if partials:
            if isinstance(partials, PartialUses):
                partials.count(args, kwargs)
            elif partials.takes(args, kwargs) and not partials.continues(func, args, kwargs):
                args, kwargs = partials.replaced(getattr(func, "__name__", ""), args, kwargs)
        marker = table_entry(self.markers, func)
        if marker is not None:  # ``mean_pooled / (H * W)``, ``x - mean_pooled``, ``dev ** 2``
            return self.converter.arithmetic(func, types, args, kwargs, marker(args, kwargs))
        if self.values is not None:
            result = self.values.handle(func, types, args, kwargs)
            if result is not NotImplemented:
                return result
        handle = table_entry(self.handlers, func)
        if handle is None:
            return func(*args, **kwargs)
        return handle(self.converter, func, args, kwargs)

    def compute(self, func: Callable, types: tuple, args: tuple, kwargs: dict) -> object:
        """The call as this mode makes it when no handler takes it: stand-ins replaced by their
        values, pooled values followed."""
        if isinstance(self.partials, StandIns) and self.partials.takes(args, kwargs):
            args, kwargs = self.partials.replaced(getattr(func, "__name__", ""), args, kwargs)
        result = NotImplemented if self.values is None else self.values.handle(func, types, args, kwargs)
        return func(*args, **kwargs) if result is NotImplemented else result


@dataclass
class Observed:
    """A site as calibration saw it: the call (its input replaced by a meta tensor of its shape)
    and the input shapes met, per forward (training size, then the two probe sizes)."""

    call: Call
    location: str
    function: str
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # at the training size, per call
    probes: list[tuple[int, ...] | None] = field(default_factory=lambda: [None, None])  # first call per probe


def template(call: Call) -> Call:
    """``call`` without its tensors: what judging it needs."""
    meta = torch.empty(call.x.shape, dtype=call.x.dtype, device="meta")
    return replace(
        call, x=meta, local=None if call.local is None else _has_local, valid=None if call.valid is None else _has_local
    )


def _has_local(site: Site) -> torch.Tensor:  # placeholder for a template's local form
    raise AssertionError("a template is never run")


def installed(model: nn.Module) -> CallSiteConverter | None:
    """The :class:`CallSiteConverter` whose hooks are on ``model``, or None."""
    for hook in model._forward_pre_hooks.values():
        if isinstance(hook, Enter):
            return hook.converter
    return None


class ReprNote:
    """A converted model's ``extra_repr`` (set on the instance): its own, then a line saying that
    run-time call sites are local through forward hooks on its modules, so ``print(model)`` shows it."""

    def __init__(self, model: nn.Module, converter: CallSiteConverter) -> None:
        self.model, self.converter = model, converter

    def __call__(self) -> str:
        own = type(self.model).extra_repr(self.model)
        note = (
            f"tlc: {self.converter.converted} run-time call site(s) made local by forward hooks on every module "
            "(tlc.functional.remove_call_site_conversion(model) removes them)"
        )
        return f"{own}\n{note}" if own else note


def show_in_repr(model: nn.Module, converter: CallSiteConverter) -> None:
    """Make ``repr(model)`` say that ``converter``'s hooks are on it."""
    model.__dict__["extra_repr"] = ReprNote(model, converter)


def remove_call_site_conversion(model: nn.Module, only: CallSiteConverter | None = None) -> None:
    """Take functional conversion hooks off every module of ``model`` (those of ``only``, if given)."""
    note = model.__dict__.get("extra_repr")
    if isinstance(note, ReprNote) and (only is None or note.converter is only):
        del model.__dict__["extra_repr"]
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for hook_id, hook in list(hooks.items()):
                enter = hook.enter if isinstance(hook, Leave) else hook
                owner = enter.converter if isinstance(enter, Enter) else None
                if owner is not None and (only is None or owner is only):
                    del hooks[hook_id]
                    module._forward_hooks_always_called.pop(hook_id, None)
                    module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
