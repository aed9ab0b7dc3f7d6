"""What a pooled value's local counterpart is and how its pending forms are computed.

The data of :mod:`tlc.convert.pooled_values`' mechanism, apart from the per-call rules that fill
it: :class:`Grid` (where a pooled value's window positions lie), :class:`LocalEntry` (a pooled
value's local counterpart, computed at once or pending), and what a pending value is where that is
known: :class:`WindowMeans` (the windows' means of a map, for a layer that computes its own from
the map first), :class:`GateForm` (a gate's last layer and activation, for the product with the
map that computes them a row at a time) and :class:`ElementwiseForm` (one elementwise step of a
chain computed in one pass, :func:`evaluate_elementwise_chain`), with the helpers that turn torch's
elementwise calls into chain steps.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ops._common import Pair
from ..ops.chain import ChainStep, evaluate_chain
from ..ops.context import local_softmax_pool
from ..ops.gate import chain_product
from ..ops.pool import valid_local_mean_and_mean


@dataclass(frozen=True)
class Grid:
    """Where a pooled value's local positions lie.

    Attributes:
        batch: N.
        size: (H, W) of the pooled map.
        window: (kh, kw), clamped to ``size``.
    """

    batch: int
    size: Pair
    window: Pair

    @property
    def valid(self) -> Pair:
        """(Gh, Gw): valid window positions per axis."""
        return self.size[0] - self.window[0] + 1, self.size[1] - self.window[1] + 1

    @property
    def positions(self) -> int:
        """G = Gh * Gw."""
        gh, gw = self.valid
        return gh * gw

    def valid_map(self, local: torch.Tensor) -> torch.Tensor:
        """Local values (N * G, ...) as the map of valid windows (N, P, Gh, Gw), P values per
        position: a view, contiguous where the values lie channel first (batch 1)."""
        gh, gw = self.valid
        return local.reshape(self.batch, gh, gw, -1).permute(0, 3, 1, 2)

    def pixel_index(self, device: torch.device) -> torch.Tensor:
        """(H * W,) long: the window position (``i * Gw + j``) each pixel takes, pixels row-major."""
        (h, w), (kh, kw), (gh, gw) = self.size, self.window, self.valid
        rows = (torch.arange(h, device=device) - (kh - 1) // 2).clamp(0, gh - 1)
        cols = (torch.arange(w, device=device) - (kw - 1) // 2).clamp(0, gw - 1)
        return (rows[:, None] * gw + cols[None, :]).reshape(-1)

    def __str__(self) -> str:
        return f"{self.size[0]}x{self.size[1]} map, window {self.window[0]}x{self.window[1]}"


@dataclass(frozen=True)
class WindowMeans:
    """What a pending pooled value's local values are, for calls that can compute their own result
    from the map instead (a layer run on the map first, by the call rules of
    :mod:`tlc.convert.pooled_values`): the means of ``src`` (N, C, H, W) over every ``window``
    inside it (softmax-weighted by ``logits`` (N, 1, H, W) where given, as GCNet's context
    pooling: :func:`tlc.ops.local_softmax_pool`), times ``scale``, each position's C values in the
    value's shape. Either is linear in ``src``: a per-pixel product commutes with it."""

    src: torch.Tensor
    window: Pair
    scale: float = 1.0
    logits: torch.Tensor | None = None

    def valid(self) -> torch.Tensor:
        """The windows' means times ``scale``, (N, C, H - kh + 1, W - kw + 1)."""
        if self.logits is None:
            return valid_local_mean_and_mean(self.src, self.window, scale=self.scale)[0]
        valid = local_softmax_pool(self.src, self.logits, self.window, valid_only=True)
        return valid if self.scale == 1 else valid * self.scale


@dataclass(frozen=True)
class GateForm:
    """What a pending gate value is, for a multiply (or sum) with the map that computes it a row at
    a time (:func:`tlc.ops.gate.combine_replicated`, from the pooled values' rule for a product
    with the map):
    ``activation(weight @ v + bias)`` at each window position, ``v`` the local values of the
    pooled value ``values`` (its D values per position), ``weight`` (C, D) (None: no layer, then
    ``bias`` is None too), ``activation`` None, ``"sigmoid"`` or ``"softmax"`` (over dim 1 of
    (N, k, C/k, 1, 1) values: selective-kernel fusion's branches). Instead of ``weight``,
    ``channel_taps`` (k,) and ``channel_pad``: a conv1d across the D values (ECA's), ``bias`` then
    its one-element bias. A gate's last layer and its activation then never write C-plane maps at
    every window position."""

    values: LocalEntry
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    activation: str | None = None
    keep: torch.Tensor | None = None  # the real tensor of ``values`` where nothing else holds it
    channel_taps: torch.Tensor | None = None  # instead of weight: ECA's conv1d across the D values (k,)
    channel_pad: int = 0  # its zero padding


@dataclass(frozen=True, eq=False)
class ElementwiseForm:
    """What a pending value computed by one elementwise call is (a chained call of
    :mod:`tlc.convert.pooled_values`): the chain step ``op`` (a key of
    :data:`tlc.ops.chain.STEPS`) on ``operands``, each the entry of a pooled value of the result's
    shape or a per-channel constant as a (D, 1) tensor of the result's dtype (D values per
    position). A chain of them is computed in one pass over the window positions
    (:func:`tlc.ops.chain.evaluate_chain`) when its last value is first read."""

    op: str
    operands: tuple


class LocalEntry:
    """A pooled value's local counterpart. ``expanded``: the real tensor is the value expanded to
    the map's size (``y.expand_as(x)``) while ``local`` keeps the unexpanded shape: the spread is
    put off until the value meets the map, where ``x * y`` and ``x + y`` then need no spread map.
    ``pending``: what computes ``local`` when first needed and notes its first read (None once
    read, and for values computed at once; see
    :meth:`tlc.convert.pooled_values.PooledValues.start_pending`); ``reads``: the storage
    addresses of the tensors it computes them from; ``form``: what a pending value is, where known
    (:class:`WindowMeans`, :class:`GateForm`)."""

    __slots__ = ("ref", "_local", "pending", "reads", "form", "grid", "sources", "expanded", "held")

    def __init__(
        self,
        ref: weakref.ref,
        local: torch.Tensor | None,
        grid: Grid,
        sources: frozenset,
        expanded: tuple | None = None,
        held: int | None = None,
        pending: Callable[[bool], torch.Tensor | None] | None = None,
    ) -> None:
        self.ref, self._local, self.grid, self.sources = ref, local, grid, sources
        self.expanded = expanded  # the ("grid", a) placement of the expansion, or None
        self.held = held  # the key SpareBuffers.hold gave for local, or None
        self.pending, self.reads, self.form = pending, frozenset(), None

    @property
    def local(self) -> torch.Tensor:
        if self.pending is not None:
            self.compute(read=True)
        return self._local

    def computed(self) -> torch.Tensor:
        """``local``, for a pending value computed from this one (which notes the read, see
        :meth:`tlc.convert.pooled_values.PooledValues.start_pending`)."""
        if self.pending is not None:
            self.compute(read=False)
        return self._local

    def compute(self, read: bool) -> None:
        """Compute a pending ``local`` (if not yet); ``read``: because something reads it, not as a
        precaution."""
        pending = self.pending
        if self._local is None:
            self._local = pending(read)
        else:
            pending(read)  # computed before (as a precaution): only a read is noted
        if read:
            self.pending = None


def fits_constant(t: torch.Tensor, shape: torch.Size) -> bool:
    """Whether ``t``, not a pooled value, is the same for every sample and position of a result of
    ``shape`` (1, ...): broadcast into it (a per-channel weight, a 0-d scalar)."""
    if t.dim() > len(shape) or (t.dim() == len(shape) and t.shape[0] != 1):
        return False
    try:
        return torch.broadcast_shapes(t.shape, shape) == shape
    except RuntimeError:
        return False


def constant_column(t: torch.Tensor | float, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A constant (:func:`fits_constant`, a 0-d tensor or a Python number) as the (D, 1) column
    of its values per position of a result of ``shape`` (D = its values per sample), in the
    result's ``dtype``: the value torch computes with (a Python number or 0-d tensor rounded to
    the tensor's dtype)."""
    if not isinstance(t, torch.Tensor):
        return torch.full((shape[1:].numel(), 1), t, dtype=dtype)
    return t.to(dtype).expand(shape).reshape(-1, 1)


# Elementwise calls that are chain steps (tlc.ops.chain.STEPS), by name: the step and which
# arguments (by position) are its operands; ``pow`` with exponent 2 or 0.5 is a product or root.
STEP_OF_CALL: dict[str, tuple[str, tuple[int, ...]]] = {
    "add": ("add", (0, 1)), "__add__": ("add", (0, 1)), "__radd__": ("add", (1, 0)),
    "sub": ("sub", (0, 1)), "__sub__": ("sub", (0, 1)), "__rsub__": ("sub", (1, 0)),
    "mul": ("mul", (0, 1)), "__mul__": ("mul", (0, 1)), "__rmul__": ("mul", (1, 0)),
    "div": ("div", (0, 1)), "__truediv__": ("div", (0, 1)), "__div__": ("div", (0, 1)),
    "sqrt": ("sqrt", (0,)), "neg": ("neg", (0,)), "__neg__": ("neg", (0,)), "abs": ("abs", (0,)),
    "square": ("mul", (0, 0)), "addcmul": ("addcmul", (0, 1, 2)),
}


def chain_step(name: str, args: tuple, kwargs: dict) -> tuple[str, tuple] | None:
    """(step, operands) of an elementwise call that one chain step computes exactly, operands
    being tensors or Python numbers; None otherwise (other calls, an ``alpha`` or ``value`` other
    than 1, a rounding mode, ``out=``, exponents other than 2 and 0.5, complex or bool numbers)."""
    if any(v is not None for k, v in kwargs.items() if k == "rounding_mode") or set(kwargs) - {"alpha", "value", "rounding_mode"}:
        return None
    if kwargs.get("alpha", 1) != 1 or kwargs.get("value", 1) != 1:
        return None
    if name in ("pow", "__pow__") and len(args) == 2 and isinstance(args[0], torch.Tensor) and type(args[1]) in (int, float):
        if args[1] == 2:
            return "mul", (args[0], args[0])
        return ("sqrt", (args[0],)) if args[1] == 0.5 else None
    if name not in STEP_OF_CALL:
        return None
    op, positions = STEP_OF_CALL[name]
    if len(args) != len(set(positions)) or any(not isinstance(a, torch.Tensor) and type(a) not in (int, float) for a in args):
        return None
    return op, tuple(args[i] for i in positions)


def as_columns(local: torch.Tensor, width: int) -> torch.Tensor:
    """Local values (G, ...) of ``width`` values per position as (D, G): a view where they lie
    positions fastest (as :class:`tlc.convert.pooled_values.PooledValues` lays them out), else
    a copy."""
    g = local.shape[0]
    flat = local.reshape(g, width)
    rows = flat.t()
    return rows if rows.stride(1) == 1 or g == 1 else rows.contiguous()


def _chain_of(root: ElementwiseForm, width: int, dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor, list[ChainStep]]:
    """``root`` with every pending :class:`ElementwiseForm` value it comes from as one chain for
    :func:`tlc.ops.chain.evaluate_chain`: its input maps (D, G) (the chain's other values, computed
    first or before), constants (K, D) and steps."""
    values: list[torch.Tensor] = []
    constants: list[torch.Tensor] = []
    steps: list[tuple[str, list[tuple[str, int]]]] = []
    _visit_chain(root, width, values, constants, steps, {})
    first = {"value": 0, "constant": len(values), "step": len(values) + len(constants)}
    program = [ChainStep(op, tuple(first[kind] + i for kind, i in refs)) for op, refs in steps]
    table = torch.cat(constants, dim=1).t() if constants else torch.empty((0, width), dtype=dtype)
    return values, table, program


def evaluate_elementwise_chain(root: ElementwiseForm, width: int, out: torch.Tensor) -> None:
    """``root``'s values (D, G) into ``out``, computed in one pass with every pending
    :class:`ElementwiseForm` value it comes from (the chain's other values are computed first,
    or were)."""
    evaluate_chain(*_chain_of(root, width, out.dtype), out)


def product_of_elementwise_chain(
    root: ElementwiseForm, width: int, dtype: torch.dtype, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """``weight`` (O, D) @ ``root``'s values (D, G) (+ ``bias`` (O,)), the chain computed as
    :func:`evaluate_elementwise_chain` computes it and multiplied block by block while in cache
    (:func:`tlc.ops.gate.chain_product`): (O, G), the same bits as the chain's values and then
    the product; its values are not kept. None where that kernel does not run."""
    values, table, program = _chain_of(root, width, dtype)
    return chain_product(values, table, program, weight, bias)


def _visit_chain(
    form: ElementwiseForm,
    width: int,
    values: list[torch.Tensor],
    constants: list[torch.Tensor],
    steps: list[tuple[str, list[tuple[str, int]]]],
    refs_of: dict[int, tuple[str, int]],
) -> None:
    """Append ``form``'s step to ``steps`` after the pending steps it reads (depth first), its
    other operands to ``values`` (local values as (D, G) rows) or ``constants``. A module-level
    function, not a closure calling itself: that closure's cycle kept the chain's input maps alive
    until the garbage collector ran (~165 MB after each converted SRM forward at 720p, the heap
    growing and faulting)."""
    refs = []
    for operand in form.operands:
        if not isinstance(operand, LocalEntry):
            constants.append(operand)
            refs.append(("constant", len(constants) - 1))
            continue
        key = id(operand)
        if key not in refs_of:
            if operand._local is None and operand.pending is not None and isinstance(operand.form, ElementwiseForm):
                _visit_chain(operand.form, width, values, constants, steps, refs_of)
                refs_of[key] = ("step", len(steps) - 1)
            else:
                values.append(as_columns(operand.computed(), width))
                refs_of[key] = ("value", len(values) - 1)
        refs.append(refs_of[key])
    steps.append((form.op, refs))


def version_counter(t: torch.Tensor) -> int | None:
    """``t``'s in-place change counter (``t._version``); None under ``torch.inference_mode``, whose
    tensors keep none (an in-place change there is seen only where the mode shows the call)."""
    return None if t.is_inference() else t._version


__all__ = [
    "ElementwiseForm", "GateForm", "Grid", "LocalEntry", "STEP_OF_CALL", "WindowMeans", "as_columns", "chain_step",
    "constant_column", "evaluate_elementwise_chain", "fits_constant", "product_of_elementwise_chain", "version_counter",
]
