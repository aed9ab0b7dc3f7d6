"""Pooled values followed through whatever the model does with them, made local exactly.

A global pooling gives one vector per image, ``(N, C, 1, 1)``. Made local, it gives one vector per
pixel. Writing that as an ``(N, C, H, W)`` map breaks every consumer that reshapes the vector:
``pool(x).view(b, c)`` before a ``Linear``, selective-kernel fusion's ``view(b, k, C, 1, 1)`` and
softmax over branches, DAT's ``view(N, 1, C)`` against ``(N, H*W, C)`` tokens.

Instead, a *pooled value* keeps two faces:

- the **real** tensor, global shape and value: what the model sees, so its own shape logic
  (``b, c = y.shape[:2]``, ``view(b, c)``) keeps working;
- the **local** counterpart: the value at every valid window position, with the positions folded
  into the batch, shape ``(N * G, *real.shape[1:])``, ``G = Gh * Gw``, ``Gh = H - kh + 1``,
  ``Gw = W - kw + 1`` (row ``n * G + i * Gw + j`` is sample ``n``, window at ``(i, j)``).

Every torch call that takes a pooled value is run twice, by :meth:`PooledValues.handle`: normally
(the real result) and on the local counterparts. Because positions sit in the batch, any per-sample
computation (``linear``, ``conv2d`` on 1x1 maps, ``layer_norm([C, 1, 1])``, ``prelu``, ``softmax``
over branches, ``cat`` along channels, ``view``) is already the per-position computation; only
shape arguments naming the batch (``view(N, C)`` -> ``view(N * G, C)``) and per-sample tensors
that are not pooled values (repeated ``G`` times) need adapting. The local path so costs ``G``
times the global one on vectors: the valid windows, never ``H * W`` pixels.

A pooled value stops being one where it meets a *map*: it broadcasts over dims whose sizes are the
origin map's ``(H, W)`` (``x * gate``, ``expand_as(x)``, ``feats * attn``, ``x + context``) or its
flattened ``H * W`` token axis (``tokens * v``, row-major). There the local counterpart is spread
to every pixel with the edge replication of :func:`tlc.ops.pool.replicate_to` (pixel row ``i`` takes
window row ``clamp(i - (kh-1)//2, 0, Gh-1)``, likewise for columns), the call is made once on the
full-size tensors, and an ordinary tensor comes out. ``x * gate`` on ``(N, C, H, W)`` uses the
fused :func:`tlc.ops.gate.multiply_replicated` and never builds the spread gate.

The real results are computed as well (on vectors, cheap): the model's Python sees true global
values and shapes. A call meeting a map is computed once, at full size, from the local values
(its result shape is found on the meta device first).

Why this form: the result is exact by construction (each window position runs the model's own
code on its own window's value), it needs no graph tracing (so it follows Python control flow
that does not read values), and the bookkeeping is one dict lookup per tensor argument.

Pending values (:meth:`PooledValues.start_pending`): a mean's values over the windows may be put
off until something reads them. Elementwise calls and reshapes on pending values give pending
values; a call changing in place what one is computed from computes it first. A mean nothing
reads is never computed (IMDN's, which only centres its hand-written variance), and one reaching
a gate's narrowing first layer (``Linear`` or 1x1 ``conv2d``) is answered by the layer at every
pixel and the windows' means of its fewer planes (:class:`WindowMeans`). A gate's last steps on
pooled values (a 1x1 layer or ``Linear``, per-branch layers concatenated, a sigmoid, a softmax over
branches, a shared layer's two results summed) stay pending too, knowing what they are
(:class:`GateForm`): ``x * gate`` then computes them a row at a time inside the product.

What cannot be followed exactly raises :class:`PooledValueError` with a one-line reason and the
sources involved, so the caller can leave those poolings global: reading values into Python
(``.item()``, ``if y > 0``), ops along the batch dimension (indexing, reductions, ``cat`` on dim 0,
a reshape changing the batch), a pooled value used as a weight or index or written into another
tensor (``t[:, 0] = y``), pooled values of different grids meeting, a map met other than by
broadcasting (``tokens @ v``), a call whose spread form does not give the real result's shape
(``y.repeat(1, 2, H, W)``), ``out=``. Pooled values that never meet a map and reach the
model's output (a classifier or quality-factor head) are found by :meth:`PooledValues.escaped`.

Also refused, though exact forms exist: a pooled value broadcast against a per-sample tensor that
is not a map (``(N, 1, C) * (N, k, C)`` with the latter not pooled): refused because a map of
another resolution looks the same and would be followed at ``G`` times its size. ``y.squeeze()``
without dims at batch 1 removes the batch and is refused.

Not seen: work outside torch calls that a ``TorchFunctionMode`` does not see (custom C++ ops that
skip ``__torch_function__``, ``torch._C`` calls with torch function disabled). Pooled values that
are stored on modules or globals instead of returned are not followed either.

One file over the usual 400 lines: :class:`PooledValues` (the registry of real tensors and their
local counterparts) and the per-call rules that follow them (which calls carry a pooled value,
how its batch folds and spreads back, what is refused) are one mechanism: each rule reads and
writes the registry's entries, and split apart they would only trade private access for a wide
interface. The per-sample layers computed in the local values' channel-first layout are
functions of tensors alone: they live in :mod:`tlc.convert.channel_first`; the entries and the
pending values' forms the rules fill in, with the chains' one-pass evaluation, in
:mod:`tlc.convert.pooled_forms`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..ops._common import Pair
from ..ops.gate import (
    channel_product, channel_product_layer_norm, combine_replicated, combine_replicated_summing_branches, product_first_is_cheaper,
)
from ..ops.pool import map_mean, replicate_to
from .channel_first import (
    batch_last, batch_norm_scale_shift, bound_arguments, channel_first_layer_norm, inference_batch_norm, pointwise_conv,
)
from .pooled_forms import (
    ElementwiseForm, GateForm, Grid, LocalEntry, WindowMeans, as_columns, chain_step, constant_column,
    evaluate_elementwise_chain, fits_constant, product_of_elementwise_chain, version_counter,
)
from .spare_buffers import SpareBuffers


class PooledValueError(RuntimeError):
    """A pooled value is used in a way that has no exact local form.

    Attributes:
        reason: one line saying what happened.
        sources: the ``source`` labels (given to :meth:`PooledValues.start`) of the values involved.
    """

    def __init__(self, reason: str, sources: Iterable[Hashable] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sources = frozenset(sources)


# ----------------------------------------------------------------------------- call tables

_T = torch.Tensor


def _getters(*names: str) -> set:
    return {getattr(_T, n).__get__ for n in names if hasattr(_T, n)}


# Calls whose result says nothing about the values: answered from the real tensor.
_METADATA: set = {
    _T.size, _T.dim, _T.ndimension, _T.numel, _T.nelement, _T.__len__, _T.is_floating_point,
    _T.is_complex, _T.element_size, _T.stride, _T.is_contiguous, _T.data_ptr, _T.get_device,
    _T.storage_offset, _T.__repr__, _T.__format__, _T.__hash__, torch.numel, torch.is_floating_point,
    torch.is_complex,
} | _getters(
    "shape", "ndim", "dtype", "device", "is_cuda", "requires_grad", "layout", "is_leaf", "grad_fn",
    "names", "is_sparse", "is_quantized", "is_meta", "is_mkldnn", "itemsize", "nbytes", "output_nr",
)

# New tensors shaped like a pooled value but not computed from it: ordinary tensors.
_VALUE_FREE = {
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
    torch.randn_like, _T.new_zeros, _T.new_ones, _T.new_empty, _T.new_full, _T.new_tensor,
}

# Shape arguments whose first entry is the batch size.
_SHAPE_FUNCS = {_T.view, _T.reshape, torch.reshape, _T.expand, _T.broadcast_to, torch.broadcast_to}

# Functions of (input, weights...): only the input may be a pooled value; other tensors are weights.
_WEIGHTED = {
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "linear", "layer_norm", "group_norm", "batch_norm", "instance_norm", "prelu", "rms_norm",
}
_TWO_INPUTS = {"bilinear"}

# Calls taking other tensors for their dtype and device only.
_LIKE = {"type_as", "to"}

_MUL = {torch.mul, _T.mul, _T.__mul__, _T.__rmul__}
_ADD = {torch.add, _T.add, _T.__add__, _T.__radd__}
_SUM = {torch.sum, _T.sum}
_SUB = {torch.sub, _T.sub, _T.__sub__}
_EXPANSIONS = {"expand", "expand_as", "broadcast_to"}

# Arguments naming dims, by function name: (position counting the tensor itself, keyword).
_DIM_ARGS: dict[str, tuple[tuple[int, str], ...]] = {}
for _name in (
    "sum", "mean", "nansum", "nanmean", "prod", "amax", "amin", "max", "min", "argmax", "argmin",
    "logsumexp", "std", "var", "std_mean", "var_mean", "all", "any", "median", "nanmedian", "mode",
    "sort", "argsort", "cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "softmax",
    "log_softmax", "softmin", "count_nonzero", "select", "narrow", "index_select", "gather",
    "scatter", "scatter_add", "scatter_reduce", "index_add", "index_copy", "index_fill", "unbind",
    "unflatten", "glu", "squeeze", "cat", "concat", "concatenate",
):
    _DIM_ARGS[_name] = ((1, "dim"),)
for _name in ("norm", "normalize", "chunk", "split", "tensor_split", "topk", "kthvalue", "diff",
              "cosine_similarity", "repeat_interleave"):
    _DIM_ARGS[_name] = ((2, "dim"),)
_DIM_ARGS.update(
    flip=((1, "dims"),),
    roll=((2, "dims"),),
    transpose=((1, "dim0"), (2, "dim1")),
    swapdims=((1, "dim0"), (2, "dim1")),
    swapaxes=((1, "axis0"), (2, "axis1")),
    movedim=((1, "source"), (2, "destination")),
    moveaxis=((1, "source"), (2, "destination")),
)
_NEW_DIM = {"unsqueeze", "stack"}  # dims counted on the result (one more than the input)
for _name in _NEW_DIM:
    _DIM_ARGS[_name] = ((1, "dim"),)
_SOFTMAX = {"softmax", "log_softmax", "softmin"}

# Reshapes that pending pooled values pass through pending, keeping what they are (WindowMeans).
_RESHAPES = frozenset({"view", "reshape", "flatten", "squeeze", "unsqueeze"})
# Per-sample products that may run on a pending mean's map before its windows' means.
_PRODUCTS = frozenset({"linear", "conv2d"})

# Calls that may end a gate, put off until the gate meets the map (_Call.deferred_gate), besides products.
_GATE_STEPS = frozenset({"sigmoid", "softmax", "cat", "concat", "concatenate", "add", "__add__", "__radd__", "conv1d"})
# Transposes that pending values pass through pending where they move only dims of size 1 (ECA's
# (N, 1, C) <-> (N, C, 1) around its conv1d): the values per position keep their order.
_TRANSPOSES = frozenset({"transpose", "swapaxes", "swapdims"})

# Elementwise calls that pending pooled values pass through pending (see PooledValues.start_pending).
_DEFERRED = frozenset({
    "add", "sub", "mul", "div", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
    "__truediv__", "__rtruediv__", "__div__", "__rdiv__", "pow", "__pow__", "sqrt", "rsqrt", "exp",
    "sigmoid", "tanh", "relu", "neg", "__neg__", "abs", "square", "reciprocal",
})


def _name(func: Callable) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # property getters: Tensor.shape.__get__ -> shape
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    return name


def _member(func: Callable, table: set) -> bool:
    try:
        return func in table
    except TypeError:  # unhashable callables are in no table
        return False


def is_inplace(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether the torch call named ``name`` changes an argument in place (``add_``, ``__iadd__``,
    ``inplace=True``)."""
    if name.endswith("_") and not name.endswith("__"):
        return True
    if name.startswith("__i") and name not in ("__index__", "__int__", "__invert__", "__iter__"):
        return True
    return bool(kwargs.get("inplace"))


def tensor_args(args: tuple, kwargs: dict) -> Iterable[torch.Tensor]:
    """Tensors among the arguments: top level and inside lists/tuples of the top level."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, torch.Tensor):
                    yield item


def _map(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        mapped = [fn(v) if isinstance(v, torch.Tensor) else v for v in value]
        return mapped if isinstance(value, list) else tuple(mapped)
    return value


def _map_args(args: tuple, kwargs: dict, fn: Callable[[torch.Tensor], Any]) -> tuple[tuple, dict]:
    return tuple(_map(a, fn) for a in args), {k: _map(v, fn) for k, v in kwargs.items()}


def meta_call(func: Callable, args: tuple, kwargs: dict) -> Any:
    """``func(*args, **kwargs)`` on meta copies of its tensors (nested ones too): the result's form
    (shapes, dtypes) without computing it. Raises what ``func`` raises, or where it has no meta
    kernel."""
    margs, mkwargs = _map_args(args, kwargs, lambda t: t.to("meta"))
    return func(*margs, **mkwargs)


# Binary elementwise calls whose result takes the broadcast shape of their two operands.
_BROADCASTING = frozenset({
    "add", "sub", "mul", "div", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
    "__truediv__", "__rtruediv__", "__div__", "__rdiv__",  # Tensor.__rtruediv__ is named __rdiv__
})


def _broadcast_result_shape(name: str, args: tuple, kwargs: dict) -> torch.Size | None:
    """The result shape of ``a + b``-like calls (``name`` in ``_BROADCASTING``, two operands, tensors
    or numbers), from broadcasting alone; None for other calls (their shape comes from meta
    tensors, where torch's reference decompositions cost about 0.1 ms a call). Raises as torch does
    where the shapes do not broadcast."""
    if name not in _BROADCASTING or len(args) != 2 or set(kwargs) - {"alpha"}:
        return None
    shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
    if not shapes or any(not isinstance(a, (torch.Tensor, int, float, bool)) for a in args):
        return None
    return torch.broadcast_shapes(*shapes)


def _dims_of(value: object) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (tuple, list, torch.Size)):
        return [d for d in value if isinstance(d, int) and not isinstance(d, bool)]
    return []


def _first_tensor(value: object) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


def _touches_batch(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether a known call names dim 0 (the batch) among its dims."""
    first = _first_tensor(args[0]) if args else None
    if first is None:
        return False
    ndim = first.dim() + (1 if name in _NEW_DIM else 0)
    if name == "permute":
        order = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        order = kwargs.get("dims", order)
        dims = _dims_of(tuple(order))
        return bool(dims) and dims[0] % max(ndim, 1) != 0
    spec = _DIM_ARGS.get(name)
    if spec is None:
        return False
    for position, keyword in spec:
        value = args[position] if len(args) > position else kwargs.get(keyword)
        if name in _SOFTMAX and value is None:
            value = 0 if ndim in (0, 1, 3) else 1  # torch's implicit softmax dim
        if name == "roll" and value is None and len(args) > 1:
            return True  # rolls the flattened tensor, batch included
        if any(d % max(ndim, 1) == 0 for d in _dims_of(value) if -ndim <= d < max(ndim, 1)):
            return True
    return False


def _index_problem(index: object, ndim: int) -> str | None:
    """Why ``y[index]`` is not a per-sample indexing (leaving dim 0 alone), or None."""
    items = index if isinstance(index, tuple) else (index,)
    advanced = sum(isinstance(i, (torch.Tensor, list)) for i in items)
    if advanced > 1:
        return "indexing with several index tensors moves the batch dimension"
    consumed = sum(i is not None and i is not Ellipsis for i in items)
    for item in items:
        if item is None:
            return "indexing adds a dimension before the batch"
        if item is Ellipsis:
            if ndim - consumed >= 1:
                return None
            continue
        if isinstance(item, slice) and item == slice(None):
            return None
        return "indexing along the batch dimension"
    return None


def _reads_of(pooled: Iterable[tuple[torch.Tensor, LocalEntry]]) -> frozenset:
    """What a value computed from the pooled values ``pooled`` ((real tensor, entry) pairs) reads:
    what each is computed from, and their real tensors' memory (an in-place call on one changes its
    local values), as storage addresses for :meth:`PooledValues.before_call`."""
    pairs = list(pooled)
    return frozenset().union(*(e.reads for _, e in pairs), (t.untyped_storage().data_ptr() for t, _ in pairs))


def _means_key(src: torch.Tensor, window: Pair) -> tuple:
    """Where a map's windows' means are filed for :meth:`PooledValues.note_window_means`: its memory
    (the storage address first, as :meth:`PooledValues.before_call` matches it), layout and dtype,
    and the window. Memory is reused: a later map of the same layout can stand at the same
    address, so what is filed there names its map too."""
    return (src.untyped_storage().data_ptr(), src.storage_offset(), tuple(src.shape), src.stride(), src.dtype, tuple(window))


# A value kept with the tensor it was computed from: (a weak reference to that tensor, its version
# then, the value). The memos of PooledValues (windows' means, a map's mean, a branches' sum).
_Kept = tuple[weakref.ref, int | None, torch.Tensor]


def _keep(source: torch.Tensor, value: torch.Tensor) -> _Kept:
    """``value`` kept with ``source`` as it is now."""
    return weakref.ref(source), version_counter(source), value


def _kept_for(kept: _Kept | None, source: torch.Tensor) -> bool:
    """Whether ``kept`` was kept with ``source`` itself, unchanged since (not another tensor
    later at the same memory, nor ``source`` changed in place where versions are counted)."""
    return kept is not None and kept[0]() is source and kept[1] == version_counter(source)


def _unless_written(kept: _Kept | None, addresses: set | frozenset = frozenset()) -> _Kept | None:
    """``kept`` while the tensor it was kept with lives and its memory is none of ``addresses``
    (storage addresses a call writes); else None."""
    source = None if kept is None else kept[0]()
    if source is None or (addresses and source.untyped_storage().data_ptr() in addresses):
        return None
    return kept


def _as_local(valid: torch.Tensor, tail: torch.Size) -> torch.Tensor:
    """(N, C, Gh, Gw) values over the windows as local values (N * Gh * Gw, *tail), C = prod(tail)."""
    n, _, gh, gw = valid.shape
    # A view of the channel-first map when N = 1 (positions are then the fastest axis): per-pixel
    # layers keep that layout (see pointwise_conv), and the gate meets the map without a copy.
    return valid.contiguous().permute(0, 2, 3, 1).reshape(n * gh * gw, *tail)


# ----------------------------------------------------------------------------- the tracker


class PooledValues:
    """The pooled values of one forward, and the answer to every torch call that takes one.

    Use (from a ``TorchFunctionMode`` active during the forward)::

        values = PooledValues()
        # a global pooling at a converted site:
        real = F.adaptive_avg_pool2d(x, 1)
        return values.start(real, valid_local_mean(x, window), x.shape[-2:], source=site)
        # every other call:
        result = values.handle(func, types, args, kwargs)
        return func(*args, **kwargs) if result is NotImplemented else result
        # after the forward:
        leaving = values.finish(output)   # sources whose values reach the output: leave global

    ``handle`` runs torch functions itself, so it must be called where the mode is off: from the
    mode's ``__torch_function__``. A pooling whose input is itself a pooled value is not a new
    pooled value: give that call to ``handle``.

    Attributes:
        applied: sources whose values met a map (were spread to pixels) at least once.
        read: (source, (H, W) of the map) of values started with :meth:`start_pending` whose
            local values something read, where more than one window fits the map.
    """

    def __init__(self) -> None:
        self._entries: dict[int, LocalEntry] = {}
        self._pending: list[LocalEntry] = []  # entries made pending, some perhaps computed since
        self.applied: set[Hashable] = set()
        self.read: set[tuple[Hashable, Pair]] = set()  # (source, map size) of windows' means read
        self._taking: set | None = None  # while a pending value is computed: the means it takes (see _track_pending)
        self.spare = SpareBuffers()  # dead local values' buffers, for the next elementwise results
        self._known_means: dict[tuple, _Kept] = {}  # see note_window_means
        self._last_map_mean: _Kept | None = None  # see map_mean
        self._branch_sum: _Kept | None = None  # see keep_branch_sum

    # --- bookkeeping
    def _track(
        self,
        real: torch.Tensor,
        local: torch.Tensor | None,
        grid: Grid,
        sources: frozenset,
        expanded: tuple | None = None,
        pending: Callable[[bool], torch.Tensor | None] | None = None,
    ) -> LocalEntry:
        key, entries, spare = id(real), self._entries, self.spare
        held = None if local is None else spare.hold(local, real)
        replaced = entries.get(key)
        if replaced is not None and replaced.ref() is real and replaced.held is not None:
            # The same real tensor tracked again (an in-place call): the registry lets go of the
            # old local, so its buffer can come back once nothing else holds it.
            spare.release(replaced.held, replaced.local)

        def forget(ref: weakref.ref) -> None:  # the real tensor died: drop its local counterpart
            entry = entries.get(key)
            if entry is not None and entry.ref is ref:
                del entries[key]
                if entry.held is not None:
                    spare.release(entry.held, entry._local)
                # Nothing reads a dead value (pending ones computed from it hold its real tensor):
                # the lists of pending values and forms that still name the entry keep no memory.
                entry._local = entry.pending = entry.form = None

        entry = entries[key] = LocalEntry(weakref.ref(real, forget), local, grid, sources, expanded, held, pending)
        return entry

    def _track_pending(
        self,
        real: torch.Tensor,
        compute: Callable[[], torch.Tensor],
        grid: Grid,
        sources: frozenset,
        reads: frozenset,
        form: WindowMeans | GateForm | None = None,
        expanded: tuple | None = None,
    ) -> None:
        """Track ``real`` with a local counterpart that ``compute()`` gives when first needed, from
        tensors whose storage addresses are ``reads`` (``form``: what those values are, if known;
        ``expanded``: as for :class:`LocalEntry`)."""
        entry: LocalEntry | None = None
        means_read: set[tuple[Hashable, Pair]] = set()  # the windows' means this value's values took

        def materialise(read: bool) -> torch.Tensor | None:
            # Reads are noted for windows' means themselves (what a pending mean starts from),
            # whether read directly or through a value computed from them. A value computed from
            # a mean without its windows' values (a layer run on the map first:
            # _Call.product_first) leaves them unread, and the mean pending at the next forward.
            # A read where one window covers the map (the training size, where consumers keep the
            # original's order) says nothing of larger maps.
            if entry._local is None:
                outer, self._taking = self._taking, set()
                try:
                    local = compute()
                except PooledValueError:
                    raise
                except (RuntimeError, ValueError, TypeError, IndexError) as err:
                    raise PooledValueError(f"a pooled value computed when first read: {' '.join(str(err).split())[:120]}", sources) from err
                finally:
                    means_read.update(self._taking)
                    self._taking = outer
                if isinstance(form, WindowMeans) and grid.positions > 1:
                    means_read.update((source, grid.size) for source in sources)
            else:
                local = None
            if self._taking is not None:  # a value being computed from this one
                self._taking.update(means_read)
            if read:
                self.read.update(means_read)
            if local is None:
                return None
            owner = entry.ref()
            entry.held = None if owner is None else self.spare.hold(local, owner)
            return local

        entry = self._track(real, None, grid, sources, expanded, pending=materialise)
        entry.reads, entry.form = reads, form
        self._pending.append(entry)

    @property
    def pending(self) -> bool:
        """Whether values started with :meth:`start_pending` (or following them) may still be
        uncomputed, or windows' means noted by :meth:`note_window_means` wait for one."""
        self._branch_sum = _unless_written(self._branch_sum)  # its product gone: the sum freed now
        return (
            bool(self._pending) or bool(self._known_means) or _unless_written(self._last_map_mean) is not None
            or self._branch_sum is not None
        )

    def note_window_means(self, src: torch.Tensor, window: Pair, valid: torch.Tensor) -> None:
        """The windows' means of ``src`` (N, C, Gh, Gw), ``window`` (kh, kw) clamped, that a pass
        computed anyway (a variance's of the same map: :func:`tlc.ops.stats.valid_local_var_mean_and_var`).
        The next pending mean of that map and window computed before the map changes in place takes
        them (once) instead of a pass of its own: IMDN's contrast-aware attention and SRM take the
        variance and the mean of one map. They are filed with the map itself (a weak reference)
        and its version: a mean of another map later allocated at the same address (a block of the
        same width further on) never takes them."""
        self._known_means[_means_key(src, window)] = _keep(src, valid)

    def take_window_means(self, src: torch.Tensor, window: Pair) -> torch.Tensor | None:
        """The windows' means of ``src`` noted by :meth:`note_window_means` (and forgotten: they
        are the caller's now), or None: none noted, or those noted for another map at the same
        memory (the map they were noted for gone, or changed in place since)."""
        noted = self._known_means.pop(_means_key(src, window), None) if self._known_means else None
        return noted[2] if _kept_for(noted, src) else None

    def map_mean(self, src: torch.Tensor) -> torch.Tensor:
        """:func:`tlc.ops.pool.map_mean` of ``src`` (N, C, H, W): (N, C, 1, 1), a new tensor each
        call. The last map's is kept while that map lives unchanged: IMDN's contrast-aware
        attention takes the mean of one map twice (a hand-written mean centring its variance, then
        an average pooling), a pass over the map each (2.3 ms at 16x720x1280). Kept with the map
        itself (a weak reference) and its version, and forgotten when a call changes the map's
        memory in place (:meth:`before_call`): never another map's or a stale mean."""
        if _kept_for(self._last_map_mean, src):
            return self._last_map_mean[2].clone()
        mean = map_mean(src)
        self._last_map_mean = _keep(src, mean.clone())
        return mean

    def keep_branch_sum(self, product: torch.Tensor, total: torch.Tensor) -> None:
        """Keep ``total``, ``torch.sum(product, dim=1)`` to the bit, which the pass that wrote the
        selective-kernel fusion's weighted branches ``product`` (N, k, C, H, W) gave
        (:func:`tlc.ops.gate.combine_replicated_summing_branches`): the fusion's next call sums
        them, and :meth:`take_branch_sum` then answers it without reading the k branches back.
        Kept with the product itself (a weak reference) and its version, forgotten when a call
        changes its memory in place (:meth:`before_call`) or it is gone."""
        self._branch_sum = _keep(product, total)

    def take_branch_sum(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The kept sum (:meth:`keep_branch_sum`) where the call is ``torch.sum(product, 1)`` (or
        ``product.sum(dim=1)``, ``keepdim``, dim -4) of the kept product, unchanged: handed over
        once. None for any other call."""
        kept = self._branch_sum
        if not _member(func, _SUM) or not args or not _kept_for(kept, args[0]):
            return None
        bound = bound_arguments(args, kwargs, ("input", "dim", "keepdim"), {"keepdim": False})
        if bound is None or set(kwargs) - {"dim", "keepdim"}:
            return None
        dim, keepdim = bound.get("dim"), bound["keepdim"]
        if isinstance(dim, (tuple, list)) and len(dim) == 1:
            dim = dim[0]
        if not isinstance(dim, int) or isinstance(dim, bool) or dim % 5 != 1 or not isinstance(keepdim, bool):
            return None
        self._branch_sum = None
        return kept[2].unsqueeze(1) if keepdim else kept[2]

    def before_call(self, name: str, args: tuple, kwargs: dict) -> None:
        """Called by the mode before any torch call while values are pending: a call changing a
        tensor in place (``add_``, ``out=``, ``t[i] = v``) first computes the pending values read
        from that tensor's memory (a map, or a pooled value whose local values they are computed
        from: its real tensor stands for them)."""
        out = kwargs.get("out")
        if not (out is not None or is_inplace(name, args, kwargs) or name == "__setitem__"):
            return
        targets = [t for t in (*args[:1], *tensor_args((out,), {})) if isinstance(t, torch.Tensor)]
        addresses = {t.untyped_storage().data_ptr() for t in targets}
        for key in [k for k in self._known_means if k[0] in addresses]:  # that map changes: forget them
            del self._known_means[key]
        self._last_map_mean = _unless_written(self._last_map_mean, addresses)
        self._branch_sum = _unless_written(self._branch_sum, addresses)
        left = []
        for entry in self._pending:
            if entry._local is not None or entry.ref() is None:
                continue
            if not addresses.isdisjoint(entry.reads):
                entry.compute(read=False)
            else:
                left.append(entry)
        self._pending = left

    def _entry(self, t: torch.Tensor) -> LocalEntry | None:
        entry = self._entries.get(id(t))
        return entry if entry is not None and entry.ref() is t else None

    def _find(self, values: Iterable) -> list[LocalEntry]:
        """Entries of the pooled values among ``values`` (and in lists/tuples among them)."""
        entries, found, tensor = self._entries, [], torch.Tensor
        for value in values:
            if isinstance(value, tensor):
                entry = entries.get(id(value))
                if entry is not None and entry.ref() is value:
                    found.append(entry)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, tensor):
                        entry = entries.get(id(item))
                        if entry is not None and entry.ref() is item:
                            found.append(entry)
        return found

    def is_pooled(self, t: object) -> bool:
        """Whether ``t`` is a pooled value being followed."""
        return isinstance(t, torch.Tensor) and self._entry(t) is not None

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """The local counterpart (N * G, *t.shape[1:]) of the pooled value ``t``."""
        entry = self._entry(t)
        if entry is None:
            raise KeyError("not a pooled value")
        return entry.local

    def grid(self, t: torch.Tensor) -> Grid:
        """The :class:`Grid` of the pooled value ``t``."""
        entry = self._entry(t)
        if entry is None:
            raise KeyError("not a pooled value")
        return entry.grid

    # --- public protocol
    def start(
        self,
        real: torch.Tensor,
        local_valid: torch.Tensor,
        size: tuple[int, int] | torch.Size,
        source: Hashable = None,
    ) -> torch.Tensor:
        """Register the result of a global pooling; returns ``real`` (now a pooled value).

        Args:
            real: the global result, (N, C, 1, 1) or (N, C) (any shape with N first and C values
                per sample).
            local_valid: (N, C, Gh, Gw) values of the same pooling over every window lying inside
                the map (e.g. :func:`tlc.ops.pool.valid_local_mean`, or a local max).
            size: (H, W) of the pooled map; the window is (H - Gh + 1, W - Gw + 1).
            source: a label (e.g. the call site) reported in errors and by :meth:`escaped`.

        Returns:
            ``real``, unchanged.
        """
        n, c, gh, gw = local_valid.shape
        h, w = int(size[0]), int(size[1])
        if real.dim() < 1 or real.shape[0] != n or real.shape[1:].numel() != c:
            raise ValueError(f"real {tuple(real.shape)} does not hold the C values of {tuple(local_valid.shape)}")
        if not (1 <= gh <= h and 1 <= gw <= w):
            raise ValueError(f"valid map {gh}x{gw} does not fit a {h}x{w} map")
        grid = Grid(n, (h, w), (h - gh + 1, w - gw + 1))
        self._track(real, _as_local(local_valid, real.shape[1:]), grid, frozenset(() if source is None else (source,)))
        return real

    def start_pending(
        self,
        real: torch.Tensor,
        means: WindowMeans,
        source: Hashable = None,
        local_valid: Callable[[], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:meth:`start`, with the values over the windows computed only when first read: by a call
        that needs them, or before a call changing in place what they are computed from (``means``'
        map and logits). Calls on pending values alone that compute elementwise (``y / 4``,
        ``y.sqrt()``) or reshape them give pending values in turn. A value nothing reads is never
        computed: a hand-written mean that only centres a hand-written variance (whose own pass
        answers it). A 1x1 layer taking the value, or a ``Linear`` one after a reshape, may run on
        the map before the means instead, where that is cheaper (:meth:`_Call.product_first`).

        Args:
            real: as for :meth:`start`.
            means: what the values over the windows are (the window at most the map's size). Its
                tensors must change in place, if at all, only by calls the mode shows to
                :meth:`before_call`.
            source: as for :meth:`start`.
            local_valid: computes ``means.valid()`` otherwise (into a spare buffer, say); by
                default ``means.valid``.

        Returns:
            ``real``, unchanged.
        """
        (h, w), (kh, kw) = means.src.shape[-2:], means.window
        if not (1 <= kh <= h and 1 <= kw <= w) or real.dim() < 1:
            raise ValueError(f"window {kh}x{kw} does not fit a {h}x{w} map, or real is 0-d")
        grid = Grid(real.shape[0], (h, w), (kh, kw))
        expected, tail = (real.shape[0], real.shape[1:].numel(), *grid.valid), real.shape[1:]
        local_valid = means.valid if local_valid is None else local_valid

        def compute() -> torch.Tensor:
            known = self.take_window_means(means.src, means.window) if means.logits is None else None
            if known is not None:
                valid = known if means.scale == 1 else known * means.scale
            else:
                valid = local_valid()
            if tuple(valid.shape) != expected:
                raise ValueError(f"the windows' values are {tuple(valid.shape)}, not {expected}")
            return _as_local(valid, tail)

        reads = (means.src,) if means.logits is None else (means.src, means.logits)
        addresses = frozenset(t.untyped_storage().data_ptr() for t in reads)
        self._track_pending(real, compute, grid, frozenset(() if source is None else (source,)), addresses, means)
        return real

    def handle(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        """Answer a torch call: ``NotImplemented`` when no argument is a pooled value, else its result.

        The result of a call on pooled values is a pooled value (real result returned, local one
        kept), except where a pooled value meets a map: then it is the ordinary full-size tensor
        computed from the local values.

        Raises:
            PooledValueError: the call has no exact local form.
        """
        if self._branch_sum is not None:
            total = self.take_branch_sum(func, args, kwargs or {})
            if total is not None:
                return total
        if not self._entries:
            return NotImplemented
        found = self._find(args)
        if kwargs:
            found += self._find(kwargs.values())
        else:
            kwargs = {}
        if not found:
            return NotImplemented
        sources = frozenset().union(*(e.sources for e in found))
        grid = found[0].grid
        name = _name(func)
        for other in found[1:]:
            if other.grid != grid:
                raise PooledValueError(
                    f"{name}: pooled values of different grids meet ({grid} and {other.grid})", sources
                )
        if _member(func, _METADATA) or _member(func, _VALUE_FREE):
            return func(*args, **kwargs)
        call = _Call(self, func, name, args, kwargs, grid, sources)
        if any(e.expanded is not None for e in found):
            fused = call.fused_with_map()
            if fused is not None:
                return fused
            # Any other use: the expanded values spread to full size, then the call as usual.
            args, kwargs = _map_args(args, kwargs, self._spread_expanded)
            result = self.handle(func, types, args, kwargs)
            return func(*args, **kwargs) if result is NotImplemented else result
        return call.run()

    def _spread_expanded(self, t: torch.Tensor) -> torch.Tensor:
        e = self._entry(t)
        if e is None or e.expanded is None:
            return t
        return replicate_to(e.grid.valid_map(e.local).contiguous(), e.grid.size).reshape(t.shape)

    def escaped(self, output: object) -> frozenset:
        """Sources of the pooled values found in ``output`` (tensors in nested lists, tuples, dicts):
        values that left the image path without meeting a map."""
        found: set = set()
        stack, seen = [output], set()
        while stack:
            value = stack.pop()
            if isinstance(value, torch.Tensor):
                entry = self._entry(value)
                if entry is not None and entry.expanded is None:  # expanded: it met the map's size
                    found |= entry.sources or {None}
            elif isinstance(value, (list, tuple, set, frozenset)):
                if id(value) not in seen:
                    seen.add(id(value))
                    stack.extend(value)
            elif isinstance(value, dict):
                if id(value) not in seen:
                    seen.add(id(value))
                    stack.extend(value.values())
        return frozenset(found)

    def materialise(self, output: object, sources: set) -> object:
        """``output`` with every pooled value of shape (N, ..., 1, 1) whose sources all lie in
        ``sources`` replaced by its full-size local map (the window values replicated to the
        pixels), in the same containers; ``output`` itself when there is none."""
        if isinstance(output, torch.Tensor):
            e = self._entry(output)
            if e is None or e.expanded is not None or not e.sources or not e.sources <= sources:
                return output
            n, (h, w), (gh, gw) = e.grid.batch, e.grid.size, e.grid.valid
            lead = tuple(output.shape[1:-2])
            if output.dim() < 3 or tuple(output.shape[-2:]) != (1, 1) or tuple(e.local.shape) != (n * gh * gw, *lead, 1, 1):
                return output
            return replicate_to(e.grid.valid_map(e.local).reshape(n, *lead, gh, gw).contiguous(), (h, w))
        if isinstance(output, (list, tuple)):
            items = [self.materialise(v, sources) for v in output]
            if all(a is b for a, b in zip(items, output)):
                return output
            return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
        if isinstance(output, dict):
            items = {k: self.materialise(v, sources) for k, v in output.items()}
            return output if all(items[k] is v for k, v in output.items()) else type(output)(items)
        return output

    def finish(self, output: object) -> frozenset:
        """:meth:`escaped` of the forward's ``output``, then forget every pooled value."""
        leaving = self.escaped(output)
        self._entries.clear()
        self._pending.clear()
        self._known_means.clear()
        self._last_map_mean = None
        self._branch_sum = None
        self.spare.clear()
        return leaving


class _Call:
    """One torch call taking pooled values (all of one grid)."""

    def __init__(
        self, values: PooledValues, func: Callable, name: str, args: tuple, kwargs: dict, grid: Grid,
        sources: frozenset,
    ) -> None:
        self.values, self.func, self.name, self.args, self.kwargs = values, func, name, args, kwargs
        self.grid, self.sources = grid, sources

    def fail(self, reason: str) -> PooledValueError:
        return PooledValueError(f"{self.name}: {reason}", self.sources)

    def run(self) -> Any:
        func, name, args, kwargs, grid = self.func, self.name, self.args, self.kwargs, self.grid
        entry = self.values._entry
        if kwargs.get("out") is not None:
            raise self.fail("writes into out=")
        if func is _T.__getitem__ or func is _T.__setitem__:
            if any(entry(t) is not None for t in tensor_args(args[1:2], {})):
                raise self.fail("a pooled value used as an index reads its values")
            target = args[0]
            if func is _T.__setitem__ and entry(target) is None:
                raise self.fail("a pooled value written into another tensor")
            problem = _index_problem(args[1], target.dim())
            if problem is not None:
                raise self.fail(problem)
        elif _touches_batch(name, args, kwargs):
            raise self.fail("works along the batch dimension")
        weighted = name in _WEIGHTED or name in _TWO_INPUTS
        if weighted:
            inputs = 2 if name in _TWO_INPUTS else 1
            rest = [*args[inputs:], *(v for k, v in kwargs.items() if k not in ("input", "input1", "input2"))]
            if any(entry(t) is not None for t in tensor_args(tuple(rest), {})):
                raise self.fail("a pooled value used as a weight")
            training = args[5] if name == "batch_norm" and len(args) > 5 else kwargs.get("training", False)
            if name == "batch_norm" and training:
                raise self.fail("batch statistics mix the samples")

        h, w = grid.size
        spatial = h * w > 1 and name not in _LIKE
        maps = [t for t in tensor_args(args, kwargs) if entry(t) is None and self.is_map(t)] if spatial else []
        if self.name in _EXPANSIONS or (self.is_expansion() and not maps):
            # A view of the value brought to the map's size (``y.expand(...)``, ``y.expand_as(x)``):
            # tracked unexpanded and spread only if its use needs it.
            real = func(*args, **kwargs)
            placement = self.placement(real.shape) if isinstance(real, torch.Tensor) else None
            if placement is not None:
                deferred = self.deferred_expansion(real, placement)
                return deferred if deferred is not None else self.spread_call(placement, real.shape)
            if not maps:
                return self.follow_deferred(real) if self.values.pending else self.follow(real)
            raise self.fail(f"meets a {h}x{w} map other than by broadcasting over it")
        if maps:  # the result's shape without computing it: a terminal call is computed once
            try:
                shape = _broadcast_result_shape(name, args, kwargs)
                if shape is None:
                    meta = meta_call(func, args, kwargs)
                    shape = meta.shape if isinstance(meta, torch.Tensor) else None
            except Exception:  # no meta kernel: compute it for real
                if is_inplace(name, args, kwargs):
                    raise self.fail("in-place call without a meta kernel") from None
                try:
                    real = func(*args, **kwargs)
                except Exception as err:  # torch.stack([pooled, map]): the shapes do not fit
                    raise self.fail(f"meets a {h}x{w} map other than by broadcasting over it") from err
                shape = real.shape if isinstance(real, torch.Tensor) else None
            if shape is not None:
                placement = self.placement(shape)
                if placement is not None:
                    return self.spread_call(placement, shape)
            raise self.fail(f"meets a {h}x{w} map other than by broadcasting over it")
        inplace = is_inplace(name, args, kwargs)
        if self.values.pending and not inplace and name in _PRODUCTS:
            result = self.product_first()
            if result is not None:
                return result
        if not inplace and name == "layer_norm":
            result = self.layer_then_norm()
            if result is not None:
                return result
        if not inplace and (name in _PRODUCTS or name in _GATE_STEPS):
            result = self.deferred_gate()
            if result is not None:
                return result
        if not inplace and (name in _DEFERRED or name == "batch_norm"):
            result = self.chained()
            if result is not None:
                return result
        if self.values.pending and not inplace and (name in _DEFERRED or name in _RESHAPES or self.is_singleton_transpose()):
            return self.follow_deferred()
        return self.follow(None)

    def is_singleton_transpose(self) -> bool:
        """Whether the call swaps two dims of one tensor, one of them of size 1 (``y.transpose(-1,
        -2)`` of (N, 1, C)): a reshape for the values per position."""
        if self.name not in _TRANSPOSES or len(self.args) != 3 or self.kwargs or not isinstance(self.args[0], torch.Tensor):
            return False
        t, a, b = self.args
        if not (isinstance(a, int) and isinstance(b, int) and -t.dim() <= a < t.dim() and -t.dim() <= b < t.dim()):
            return False
        a, b = a % t.dim(), b % t.dim()
        return a > 0 and b > 0 and (t.shape[a] == 1 or t.shape[b] == 1) and abs(a - b) == 1

    # --- classification
    def is_map(self, t: torch.Tensor) -> bool:
        """A tensor of the origin's spatial extent: (H, W) on two consecutive dims or H * W on one."""
        if isinstance(t, nn.Parameter) or t.dim() < 2 or t.shape[0] not in (self.grid.batch, 1):
            return False
        (h, w), shape = self.grid.size, tuple(t.shape[1:])
        pairs = any(shape[i : i + 2] == (h, w) for i in range(len(shape) - 1))
        return pairs or h * w in shape

    def is_expansion(self) -> bool:
        """Calls that may broadcast a pooled value to the map's size without a map argument."""
        return _member(self.func, _SHAPE_FUNCS) or self.name in ("interpolate", "upsample", "repeat", "tile")

    def placement(self, shape: torch.Size) -> tuple[str, int] | None:
        """Where the pooled values broadcast over the origin map in a result of ``shape``:
        ("grid", a) for dims (a, a+1) of size (H, W), ("tokens", a) for dim a of size H * W."""
        (h, w), rank = self.grid.size, len(shape)
        pooled = [t for t in tensor_args(self.args, self.kwargs) if self.values._entry(t) is not None]
        if rank < 2 or any(t.dim() != rank for t in pooled):
            return None

        def ones(*dims: int) -> bool:
            return all(t.shape[d] == 1 for t in pooled for d in dims)

        for a in range(rank - 2, 0, -1):
            if (shape[a], shape[a + 1]) == (h, w) and ones(a, a + 1):
                return "grid", a
        for a in range(rank - 1, 0, -1):
            if shape[a] == h * w and ones(a):
                return "tokens", a
        return None

    # --- a pooled value meets a map: spread to pixels, computed once at full size
    def spread(self, e: LocalEntry, real_shape: torch.Size, placement: tuple[str, int]) -> torch.Tensor:
        """The pooled value at every pixel: ``real_shape`` with the placement dims at full size."""
        grid = self.grid
        kind, a = placement
        n, (h, w) = grid.batch, grid.size
        tail = tuple(real_shape[1:])
        if grid.positions == 1:
            return e.local  # one window: the real shape, broadcast by the call itself
        if kind == "grid" and a + 2 == len(real_shape):  # trailing (1, 1): replicate padding
            return replicate_to(grid.valid_map(e.local).contiguous(), (h, w)).reshape(n, *tail[:-2], h, w)
        full = e.local.reshape(n, grid.positions, *tail).index_select(1, grid.pixel_index(e.local.device))
        if kind == "grid":
            full = full.squeeze(a + 2).squeeze(a + 1).unflatten(1, (h, w))
            return full.movedim((1, 2), (a, a + 1))
        return full.squeeze(a + 1).movedim(1, a)

    def spread_call(self, placement: tuple[str, int], shape: torch.Size) -> torch.Tensor:
        func, args, kwargs, grid = self.func, self.args, self.kwargs, self.grid
        entry = self.values._entry
        self.values.applied.update(self.sources)
        fused = self.fused_multiply(placement, shape)
        if fused is not None:
            return fused
        pooled = [e for t in tensor_args(args, kwargs) if (e := entry(t)) is not None]
        if self.name in ("repeat", "tile") and len(pooled) == 1:
            # Repeated to the map's size (other factors 1): that is the spread value itself.
            full = self.spread(pooled[0], args[0].shape, placement)
            if full.shape == shape:
                return full.contiguous()
        full_args, full_kwargs = _map_args(
            args, kwargs, lambda t: self.spread(e, t.shape, placement) if (e := entry(t)) is not None else t
        )
        out = func(*full_args, **full_kwargs)
        if not isinstance(out, torch.Tensor) or out.shape != shape:
            raise self.fail(f"has no per-pixel form on the {grid} (result {tuple(shape)})")
        return out

    def fused_multiply(self, placement: tuple[str, int], shape: torch.Size) -> torch.Tensor | None:
        """``x * gate`` or ``x + gate`` with x (N, ..., H, W), gate (N, ..., 1, 1) (any order): the
        gate replicated while combining (:func:`tlc.ops.gate.combine_replicated`)."""
        if placement[0] != "grid" or placement[1] + 2 != len(shape):
            return None
        return self.fused_with_map()

    def fused_with_map(self) -> torch.Tensor | None:
        """The call as :func:`tlc.ops.gate.combine_replicated` when it is ``x * y``, ``x + y`` (either
        order) or ``x - y``, with ``y`` a pooled value of shape (N, ..., 1, 1) (or expanded from one)
        and ``x`` a map of the result's shape; else None."""
        if _member(self.func, _MUL):
            op = "mul"
        elif _member(self.func, _ADD):
            op = "add"
        elif _member(self.func, _SUB) and len(self.args) == 2 and self.values._entry(self.args[0]) is None:
            op = "sub"
        else:
            return None
        if len(self.args) != 2 or self.kwargs:
            return None
        a, b = self.args
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return None
        entry = self.values._entry
        x, y = (a, b) if entry(b) is not None else (b, a)
        e = entry(y)
        if e is None or entry(x) is not None or x.dim() < 3 or x.dtype != y.dtype:
            return None
        n, (h, w), (gh, gw) = self.grid.batch, self.grid.size, self.grid.valid
        lead = tuple(x.shape[1:-2])
        # The value's own shape: expanded ones keep the unexpanded values (see deferred_expansion).
        value_shape = (*y.shape[1:-2], 1, 1) if e.expanded is not None else tuple(y.shape[1:])
        if tuple(x.shape[-2:]) != (h, w) or x.shape[0] != n or value_shape != (*lead, 1, 1):
            return None
        self.values.applied.update(self.sources)
        form = e.form if e._local is None and isinstance(e.form, GateForm) else None
        if form is not None and x.dim() == (5 if form.activation == "softmax" else 4) and form.values.ref() is not None:
            values = self.grid.valid_map(form.values.local)  # (N, D, gh, gw)
            if form.weight is None and values.shape[1] == x.shape[1:-2].numel():
                values = values.reshape(*x.shape[:-2], gh, gw)  # a softmax's (N, k, C, gh, gw)
            if form.channel_taps is not None:
                return combine_replicated(x, values, op, form.activation, None, form.bias, form.channel_taps, form.channel_pad)
            if form.activation == "softmax" and (form.weight is not None or values.shape[1:-2] == x.shape[1:-2]):
                # Selective-kernel fusion sums the weighted branches next: the same pass sums them.
                result, total = combine_replicated_summing_branches(x, values, op, form.weight, form.bias)
                if total is not None:
                    self.values.keep_branch_sum(result, total)
                return result
            if form.weight is not None or values.shape[1:-2] == x.shape[1:-2]:
                return combine_replicated(x, values, op, form.activation, form.weight, form.bias)
        gate = self.grid.valid_map(e.local).reshape(n, *lead, gh, gw)
        return combine_replicated(x, gate, op)

    def deferred_expansion(self, real: torch.Tensor, placement: tuple[str, int]) -> torch.Tensor | None:
        """``y.expand_as(x)`` of a pooled value y (N, ..., 1, 1) to the map's size: ``real`` (the
        expanded view) tracked with y's local values, spread only if its use needs it."""
        kind, a = placement
        pooled = [e for t in tensor_args(self.args, self.kwargs) if (e := self.values._entry(t)) is not None]
        if self.name not in _EXPANSIONS or len(pooled) != 1 or kind != "grid" or a + 2 != real.dim():
            return None
        (e,) = pooled
        source = next(t for t in tensor_args(self.args, self.kwargs) if self.values._entry(t) is e)
        if e.expanded is not None or tuple(source.shape[1:]) != (*real.shape[1:-2], 1, 1):
            return None
        self.values.applied.update(self.sources)
        if e._local is not None:
            self.values._track(real, e._local, self.grid, self.sources, expanded=placement)
            return real
        # Pending (a gate's last steps, say): its form goes along, computed only if read.
        def compute(keep: torch.Tensor = source) -> torch.Tensor:  # keep: the source stays alive while pending
            return e.computed()

        self.values._track_pending(real, compute, self.grid, self.sources, _reads_of([(source, e)]), e.form, placement)
        return real

    # --- a per-sample computation: run again on the local values, batch folded
    def follow_deferred(self, real: Any = None) -> Any:
        """An elementwise call (``y / 4``, ``y.sqrt()``, ``y * z``) or a reshape (``y.view(n, c)``)
        whose only tensors are pooled values, each still pending: its real result (``real``, if
        already computed), its local one pending in turn (computed from theirs when first read;
        a reshape keeps its value's :class:`WindowMeans`). Other calls: :meth:`follow`."""
        func, name, args, kwargs = self.func, self.name, self.args, self.kwargs
        entry = self.values._entry
        tensors = list(tensor_args(args, kwargs))
        parents = [entry(t) for t in tensors]
        if real is None:
            real = func(*args, **kwargs)
        reshape = (name in _RESHAPES or self.is_singleton_transpose()) and len(tensors) == 1
        if (
            any(e is None or e._local is not None for e in parents)
            or not isinstance(real, torch.Tensor)
            or (not reshape and any(t.shape != real.shape for t in tensors))
            or (reshape and real.numel() != tensors[0].numel())
        ):
            return self.follow(real)
        local_of = {id(t): e for t, e in zip(tensors, parents)}
        n, g, dtype = self.grid.batch, self.grid.positions, real.dtype
        spare, shape, fold = self.values.spare, (n * g, *real.shape[1:]), _member(func, _SHAPE_FUNCS)

        def compute() -> torch.Tensor:  # as follow() computes it, from the parents' local values
            largs, lkwargs = _map_args(args, kwargs, lambda t: local_of[id(t)].computed())
            if fold:
                largs, lkwargs = _fold_shape(largs, lkwargs, n, n * g)
            result = None if reshape else spare.compute_into(name, largs, lkwargs, shape, dtype)
            result = func(*largs, **lkwargs) if result is None else result
            if tuple(result.shape) != shape:
                raise ValueError(f"local result {tuple(result.shape)}, expected {shape}")
            return result

        form = parents[0].form if reshape else None
        self.values._track_pending(real, compute, self.grid, self.sources, _reads_of(zip(tensors, parents)), form)
        return real

    def layer_then_norm(self) -> torch.Tensor | None:
        """``layer_norm`` over every dim but the batch of a pending layer's output (a
        :class:`GateForm` with a weight and no activation: GCNet's ``Conv2d(C, C', 1)`` then
        ``LayerNorm([C', 1, 1])`` on its pooled context): both computed at once by
        :func:`tlc.ops.gate.channel_product_layer_norm`, the layer's outputs never written out at
        every window position (the same bits as the layer then the norm, followed). None where this
        does not apply (the call is then followed)."""
        names = ("input", "normalized_shape", "weight", "bias", "eps")
        bound = bound_arguments(self.args, self.kwargs, names, {"weight": None, "bias": None, "eps": 1e-5})
        if bound is None:
            return None
        x, shape, weight, bias = bound.get("input"), bound.get("normalized_shape"), bound["weight"], bound["bias"]
        entry = self.values._entry
        e = entry(x) if isinstance(x, torch.Tensor) else None
        if e is None or e._local is not None or e.pending is None or e.expanded is not None:  # pending, unread
            return None
        form = e.form
        if not isinstance(form, GateForm) or form.weight is None or form.activation is not None or form.channel_taps is not None:
            return None
        if form.values.ref() is None or form.values.expanded is not None:
            return None
        if not isinstance(shape, (tuple, list, torch.Size)) or tuple(shape) != tuple(x.shape[1:]) or x.shape[1:].numel() != form.weight.shape[0]:
            return None
        affine = [t for t in (weight, bias) if t is not None]
        if any(not isinstance(t, torch.Tensor) or entry(t) is not None or t.dtype != x.dtype or t.device != x.device for t in affine):
            return None
        if not isinstance(bound["eps"], (int, float)) or (torch.is_grad_enabled() and any(t.requires_grad for t in affine)):
            return None
        real = self.func(*self.args, **self.kwargs)
        n_g = self.grid.batch * self.grid.positions
        values = as_columns(form.values.local, form.weight.shape[1])  # (D, N * G)
        rows = channel_product_layer_norm(form.weight, values, form.bias, weight, bias, float(bound["eps"]))
        self.check_and_track(real, rows.t().reshape(n_g, *x.shape[1:]))
        return real

    def chained(self) -> Any:
        """An elementwise call (``_DEFERRED``, or ``batch_norm`` with running statistics as its
        multiply-add) on pooled values of the result's shape and per-channel constants, batch 1, at
        enough window positions: the real result, its local values pending with an
        :class:`ElementwiseForm`. When first read they are computed together with the pending
        elementwise values they come from, in one pass over the positions
        (:func:`tlc.ops.chain.evaluate_chain`): SRM's eight calls on its mean and variance and
        IMDN's three cross memory once instead of once each. None where this does not apply (a
        call that is not a chain step, :func:`chain_step`; the call is then followed)."""
        func, name, args, kwargs, grid = self.func, self.name, self.args, self.kwargs, self.grid
        n, g = grid.batch, grid.positions
        if n != 1 or g < _CHAIN_MIN_POSITIONS:
            return None
        if name == "batch_norm":
            return self.chained_batch_norm()
        step = chain_step(name, args, kwargs)
        if step is None:
            return None
        op, step_args = step
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        shape = tensors[0].shape if len(tensors) == 1 else _broadcast_result_shape(name, args, kwargs)
        if shape is None or len(shape) < 1 or shape[0] != 1 or g * shape[1:].numel() < _CHAIN_MIN_VALUES:
            return None
        entry = self.values._entry
        pooled = [(t, e) for t in tensors if (e := entry(t)) is not None]
        if any(e.expanded is not None or t.shape != shape for t, e in pooled):
            return None
        constants = [t for t in tensors if entry(t) is None]
        if not all(fits_constant(t, shape) for t in constants):
            return None
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return None
        real = func(*args, **kwargs)
        if (
            not isinstance(real, torch.Tensor)
            or real.shape != shape
            or real.dtype not in (torch.float32, torch.float64)
            or any(t.dtype != real.dtype and t.dim() > 0 for t in tensors)  # promoted: computed in another dtype
        ):
            return self.follow(real)
        operands = tuple(
            entry(a) if isinstance(a, torch.Tensor) and entry(a) is not None else constant_column(a, shape, real.dtype)
            for a in step_args
        )
        self.track_chained(real, ElementwiseForm(op, operands), shape[1:].numel(), pooled, constants)
        return real

    def chained_batch_norm(self) -> torch.Tensor | None:
        """:meth:`chained` for ``batch_norm`` with running statistics: its multiply-add per channel
        (the arithmetic of :func:`tlc.convert.channel_first.inference_batch_norm`)."""
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        bound = bound_arguments(self.args, self.kwargs, names)
        if bound is None:
            return None
        x, mean, var = bound.get("input"), bound.get("running_mean"), bound.get("running_var")
        e = self.values._entry(x) if isinstance(x, torch.Tensor) else None
        if bound.get("training", False) or e is None or e.expanded is not None or x.dim() < 2 or x.shape[0] != 1:
            return None
        if self.grid.positions * x.shape[1:].numel() < _CHAIN_MIN_VALUES:
            return None
        if not (isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor)) or mean.shape != (x.shape[1],):
            return None
        tensors = [t for t in (x, mean, var, bound.get("weight"), bound.get("bias")) if isinstance(t, torch.Tensor)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return None
        if x.dtype not in (torch.float32, torch.float64) or any(t.dtype != x.dtype for t in tensors):
            return None
        scale, shift = batch_norm_scale_shift(mean, var, bound.get("weight"), bound.get("bias"), bound.get("eps", 1e-5))
        per_channel = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        real = self.func(*self.args, **self.kwargs)
        operands = (constant_column(shift.view(per_channel), x.shape, x.dtype), e, constant_column(scale.view(per_channel), x.shape, x.dtype))
        form = ElementwiseForm("addcmul", operands)
        self.track_chained(real, form, x.shape[1:].numel(), [(x, e)], [t for t in tensors if t is not x])
        return real

    def track_chained(
        self, real: torch.Tensor, form: ElementwiseForm, width: int, pooled: list[tuple[torch.Tensor, LocalEntry]], constants: list[torch.Tensor]
    ) -> None:
        """Track ``real`` pending with ``form``, its D = ``width`` values per position computed by
        the chain ending in it (:func:`evaluate_elementwise_chain`)."""
        grid, spare, tail = self.grid, self.values.spare, real.shape[1:]
        dtype, device = real.dtype, real.device

        def compute(keep: tuple = tuple(t for t, _ in pooled)) -> torch.Tensor:  # keep: the operands stay alive
            g = grid.positions
            buffer = spare.take((g, width), (1, g), dtype, device)  # positions fastest, as _as_local lays values out
            if buffer is None:
                buffer = torch.empty((width, g), dtype=dtype, device=device).t()
            evaluate_elementwise_chain(form, width, buffer.t())
            return buffer.view(g, *tail)

        reads = _reads_of(pooled) | {t.untyped_storage().data_ptr() for t in constants if not isinstance(t, nn.Parameter)}
        self.values._track_pending(real, compute, grid, self.sources, reads, form)

    def deferred_gate(self) -> torch.Tensor | None:
        """A gate's last steps on pooled values, on the CPU in float32 where more than one window
        fits the map: a layer (``linear``, a 1x1 ``conv2d``), layers of one input concatenated along
        the channels (selective-kernel fusion's one per branch), then a ``sigmoid`` or a
        ``softmax`` over dim 1 of (N, k, C, 1, 1) values (across the branches). The real result;
        its local values pending with a :class:`GateForm`, so that meeting the map in ``x * gate``
        or ``x + gate`` computes them a row at a time inside the product (:meth:`fused_with_map`).
        Anything else reading them computes them as :meth:`follow` would (the same bits). None
        where this does not apply (the call is then followed)."""
        if self.grid.positions == 1:  # one window: the original's order
            return None
        found = self.gate_form()
        if found is None:
            return None
        form, pooled = found
        args, kwargs, grid, func = self.args, self.kwargs, self.grid, self.func
        real = func(*args, **kwargs)
        if not isinstance(real, torch.Tensor) or real.dim() < 1 or real.shape[0] != grid.batch:
            return self.follow(real)
        shape, dtype = (grid.batch * grid.positions, *real.shape[1:]), real.dtype
        parents = {id(t): e for t, e in pooled}

        def compute() -> torch.Tensor:  # as follow() computes it (args keeps the sources alive)
            fused = self.layer_of_pending_chain(form, shape)
            if fused is not None:
                return fused
            largs, lkwargs = _map_args(args, kwargs, lambda t: parents[id(t)].computed() if id(t) in parents else t)
            result = self.local_call(largs, lkwargs, shape, dtype)
            if not isinstance(result, torch.Tensor) or tuple(result.shape) != shape:
                raise ValueError(f"local result of {_name(func)}: not of shape {shape}")
            return result

        self.values._track_pending(real, compute, grid, self.sources, _reads_of(pooled), form)
        return real

    def layer_of_pending_chain(self, form: GateForm, shape: tuple) -> torch.Tensor | None:
        """A layer's local values (``form``: a :class:`GateForm` with a weight and no activation)
        where the pooled value it takes is a pending chain of elementwise calls
        (:class:`ElementwiseForm`, IMDN's ``sqrt(var) + mean``): the chain and the product in one
        pass, the chain's values never written (:func:`product_of_elementwise_chain`; the same
        bits as computing them and then the layer), laid out channel first as
        :meth:`local_call` lays out a layer's values. The chain's own values stay pending. None
        where this does not apply."""
        e = form.values
        if form.weight is None or form.activation is not None or form.channel_taps is not None or self.grid.batch != 1:
            return None
        if e._local is not None or e.pending is None or not isinstance(e.form, ElementwiseForm):
            return None
        product = product_of_elementwise_chain(e.form, form.weight.shape[1], form.weight.dtype, form.weight, form.bias)
        return None if product is None else product.t().reshape(shape)

    def gate_form(self) -> tuple[GateForm, list[tuple[torch.Tensor, LocalEntry]]] | None:
        """For :meth:`deferred_gate`: the call's result as a :class:`GateForm` and the pooled
        tensors it takes with their entries; None for other calls or settings."""
        args, kwargs, name, entry = self.args, self.kwargs, self.name, self.values._entry
        weight = bias = None
        if _member(self.func, _ADD):
            return self.shared_layer_sum()
        if name in ("cat", "concat", "concatenate"):
            parts, dim = (args[0] if args else kwargs.get("tensors")), (args[1] if len(args) > 1 else kwargs.get("dim", 0))
            if len(args) > 2 or set(kwargs) - {"tensors", "dim"} or not isinstance(parts, (list, tuple)) or not parts:
                return None
            pooled = [(t, entry(t)) for t in parts if isinstance(t, torch.Tensor)]
            forms = [e.form if e is not None and e._local is None else None for _, e in pooled]
            if len(pooled) != len(parts) or not all(isinstance(f, GateForm) and f.weight is not None for f in forms):
                return None
            if any(f.activation is not None or f.values is not forms[0].values for f in forms):
                return None
            if any(t.dim() not in (2, 4) or dim % t.dim() != 1 or t.shape[2:].numel() != 1 for t in parts):
                return None
            if len({f.bias is None for f in forms}) != 1:
                return None
            biases = None if forms[0].bias is None else torch.cat([f.bias for f in forms])
            form = GateForm(forms[0].values, torch.cat([f.weight for f in forms]), biases)
            tensors = [t for t, _ in pooled]
        elif name in ("sigmoid", "softmax"):
            source = args[0] if args else kwargs.get("input")
            if name == "sigmoid" and (len(args) != 1 or kwargs):
                return None
            if name == "softmax":
                dim = args[1] if len(args) > 1 else kwargs.get("dim")
                if len(args) > 2 or set(kwargs) - {"input", "dim", "_stacklevel", "dtype"} or kwargs.get("dtype") is not None:
                    return None
                if not isinstance(source, torch.Tensor) or source.dim() != 5 or source.shape[-2:] != (1, 1) or dim not in (1, -4):
                    return None
            e = entry(source) if isinstance(source, torch.Tensor) else None
            if e is None:
                return None
            if isinstance(e.form, GateForm) and e._local is None and e.form.activation is None:
                form = replace(e.form, activation=name)
            else:
                form = GateForm(e, activation=name)
            pooled, tensors = [(source, e)], [source]
        elif name == "conv1d":
            found = self.channel_conv1d_form()
            if found is None:
                return None
            form, pooled, tensors = found
        else:
            bound = _bound_product(name, args, kwargs)
            if bound is None:
                return None
            source, weight, bias = bound
            e = entry(source) if isinstance(source, torch.Tensor) else None
            if e is None or not isinstance(weight, torch.Tensor):
                return None
            d = _product_width(name, source, weight, bias)
            if d is None or entry(weight) is not None or (bias is not None and entry(bias) is not None):
                return None
            form = GateForm(e, weight.reshape(weight.shape[0], d), bias)
            pooled, tensors = [(source, e)], [source, weight, *([] if bias is None else [bias])]
        if any(e.expanded is not None for _, e in pooled):
            return None
        if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
            return None
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return None
        return form, pooled

    def channel_conv1d_form(self) -> tuple[GateForm, list[tuple[torch.Tensor, LocalEntry]], list[torch.Tensor]] | None:
        """For :meth:`gate_form`: ``conv1d(y (N, 1, D), weight (1, 1, k), bias, stride 1, zero
        padding p, dilation 1, groups 1)`` of a pooled value (ECA's convolution across the
        channels) as a :class:`GateForm` with its taps; None for other settings."""
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        bound = bound_arguments(self.args, self.kwargs, names, {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
        if bound is None:
            return None
        source, weight, bias = bound.get("input"), bound.get("weight"), bound["bias"]
        single = {k: v[0] if isinstance(v, (tuple, list)) and len(v) == 1 else v for k, v in bound.items() if k in ("stride", "padding", "dilation")}
        if (single["stride"], single["dilation"], bound["groups"]) != (1, 1, 1) or type(single["padding"]) is not int:
            return None
        e = self.values._entry(source) if isinstance(source, torch.Tensor) else None
        if e is None or source.dim() != 3 or source.shape[1] != 1 or not isinstance(weight, torch.Tensor) or weight.shape[:2] != (1, 1):
            return None
        if self.values._entry(weight) is not None or (bias is not None and (not isinstance(bias, torch.Tensor) or self.values._entry(bias) is not None or bias.numel() != 1)):
            return None
        d, k, pad = source.shape[2], weight.shape[2], single["padding"]
        if pad < 0 or d + 2 * pad - k + 1 < 1:
            return None
        form = GateForm(e, None, bias, channel_taps=weight.reshape(k), channel_pad=pad)
        return form, [(source, e)], [source, weight, *([] if bias is None else [bias])]

    def shared_layer_sum(self) -> tuple[GateForm, list[tuple[torch.Tensor, LocalEntry]]] | None:
        """``f(a) + f(b)`` of two pending layers with one weight (CBAM's shared MLP on the average- and
        max-pooled vectors): the layer once on ``a + b`` (a new pending value of the layer's D inputs
        instead of two of its C outputs), its biases added, as :func:`tlc.ops.gate.pointwise_sum`
        computes it. For :meth:`gate_form`; None for other sums."""
        args, entry = self.args, self.values._entry
        if len(args) != 2 or self.kwargs or not all(isinstance(t, torch.Tensor) for t in args):
            return None
        pooled = [(t, entry(t)) for t in args]
        forms = [e.form if e is not None and e._local is None else None for _, e in pooled]
        if not all(isinstance(f, GateForm) and f.weight is not None and f.activation is None for f in forms):
            return None
        (fa, fb), (a, b) = forms, args
        same = fa.weight.data_ptr() == fb.weight.data_ptr() and fa.weight.stride() == fb.weight.stride()
        if not same or fa.weight.shape != fb.weight.shape or (fa.bias is None) != (fb.bias is None) or a.shape != b.shape:
            return None
        ea, eb = fa.values, fb.values
        ra, rb = ea.ref(), eb.ref()
        if ra is None or rb is None or ra.shape != rb.shape or ea.grid != eb.grid or ea.expanded or eb.expanded:
            return None
        total = ra + rb  # the real sum of the layer's inputs, kept alive by the form (keep)

        def compute(keep: tuple = (ra, rb)) -> torch.Tensor:  # keep: the inputs stay alive while pending
            return torch.add(ea.computed(), eb.computed())

        inputs = [(ra, ea), (rb, eb)]
        self.values._track_pending(total, compute, self.grid, ea.sources | eb.sources, _reads_of(inputs))
        bias = None if fa.bias is None else fa.bias + fb.bias
        return GateForm(self.values._entry(total), fa.weight, bias, keep=total), pooled

    def product_first(self) -> torch.Tensor | None:
        """``linear(y, W, b)`` or a 1x1 ``conv2d(y, W, b)`` of a pending value ``y`` that is the
        windows' means of a map (N, C, H, W) (:class:`WindowMeans`; ``y`` (N, C) or (N, C, 1, 1)),
        computed in the cheaper order where :func:`tlc.ops.gate.product_first_is_cheaper` says
        so: the product at every pixel of the map, then the windows' means of its fewer output
        planes (a window mean and a product commute; the same values up to float rounding, as
        :func:`tlc.ops.gate.pooled_pointwise` for 1x1 layers), then the bias. ``y``'s own values
        are then never computed. None where this does not apply (the call is then followed)."""
        bound = _bound_product(self.name, self.args, self.kwargs)
        entry = self.values._entry
        if bound is None:
            return None
        x, weight, bias = bound
        e = entry(x) if isinstance(x, torch.Tensor) else None
        if e is None or e._local is not None or not isinstance(e.form, WindowMeans) or not isinstance(weight, torch.Tensor):
            return None
        if entry(weight) is not None or (isinstance(bias, torch.Tensor) and entry(bias) is not None):
            return None
        src, window = e.form.src, e.form.window
        n, c, h, w = src.shape
        outputs = weight.shape[0]
        if (
            _product_width(self.name, x, weight, bias) != c
            or x.shape[0] != n
            or src.dtype not in (torch.float32, torch.float64)
            or weight.dtype != src.dtype
            or (torch.is_grad_enabled() and any(t.requires_grad for t in (src, weight, bias) if t is not None))
            or not product_first_is_cheaper((h, w), c, outputs, window)
        ):
            return None
        matrix = weight.reshape(outputs, c)
        if n == 1:
            mapped = channel_product(matrix, src.reshape(c, h * w)).view(1, outputs, h, w)
        else:
            mapped = torch.nn.functional.conv2d(src, matrix.view(outputs, c, 1, 1))
        valid = replace(e.form, src=mapped).valid()
        real = self.func(*self.args, **self.kwargs)
        local = _as_local(valid, real.shape[1:])
        if bias is not None:
            local = local.add_(bias.view(outputs, *real.shape[2:]))
        self.values._track(real, local, self.grid, self.sources)
        return real

    def follow(self, real: Any) -> Any:
        func, args, kwargs, grid = self.func, self.args, self.kwargs, self.grid
        entry = self.values._entry
        n, g = grid.batch, grid.positions
        pooled = [e for t in tensor_args(args, kwargs) if (e := entry(t)) is not None]
        rank = max(e.local.dim() for e in pooled)
        weighted = self.name in _WEIGHTED or self.name in _TWO_INPUTS
        indexing = func is _T.__getitem__ or func is _T.__setitem__
        like = self.name in _LIKE
        inplace = is_inplace(self.name, args, kwargs)

        def local(t: torch.Tensor) -> torch.Tensor:
            e = entry(t)
            if e is not None:
                return e.local
            if weighted or like or isinstance(t, nn.Parameter) or t.dim() != rank or t.shape[0] != n:
                return t  # weights and constants broadcast over the batch
            # A pooled value spread over another per-sample tensor's extent would be followed at G
            # times that size (a map of another resolution, say): not followed.
            ones = [d for d in range(1, rank) if all(e.local.dim() == rank and e.local.shape[d] == 1 for e in pooled)]
            if any(t.shape[d] > 1 for d in ones):
                raise self.fail(f"a pooled value broadcast over a {tuple(t.shape)} tensor that is not its map")
            if n == 1 and not inplace:  # the same for each window position: a view will do
                return t.expand(g, *t.shape[1:])
            return t.repeat_interleave(g, dim=0)  # per sample: the same for each window position

        if indexing:  # the index stays as it is
            largs = (local(args[0]), args[1], *(_map(a, local) for a in args[2:]))
            lkwargs = kwargs
        else:
            largs, lkwargs = _map_args(args, kwargs, local)
        if _member(func, _SHAPE_FUNCS):
            largs, lkwargs = _fold_shape(largs, lkwargs, n, n * g)
        if real is None:  # after the local arguments: an in-place call may change its inputs
            real = func(*args, **kwargs)
        tensors = isinstance(real, (tuple, list)) and real and all(isinstance(r, torch.Tensor) for r in real)
        if not isinstance(real, torch.Tensor) and not tensors and func is not _T.__setitem__:
            raise self.fail("reads the pooled value into Python")
        try:
            into = (n * g, *real.shape[1:]) if isinstance(real, torch.Tensor) and not inplace else None
            result = self.local_call(largs, lkwargs, into, real.dtype if into is not None else None)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise self.fail(f"has no local form ({' '.join(str(err).split())[:120]})") from err
        if func is _T.__setitem__:
            return real
        if isinstance(real, torch.Tensor):
            self.check_and_track(real, result)
            return real
        for r, l in zip(real, result, strict=True):
            self.check_and_track(r, l)
        return real

    def local_call(self, largs: tuple, lkwargs: dict, shape: tuple | None, dtype: torch.dtype | None) -> Any:
        """The call on local arguments: into a spare buffer where the result (of ``shape`` and
        ``dtype``, None for an in-place call or one not giving a tensor) is elementwise, else in the
        channel-first layout where a form for it exists (:mod:`tlc.convert.channel_first`), else as
        torch computes it."""
        func, name, spare = self.func, self.name, self.values.spare
        result = None if shape is None else spare.compute_into(name, largs, lkwargs, shape, dtype)
        if result is None:
            result = pointwise_conv(name, largs, lkwargs, spare.take)
        if result is None and name in ("cat", "concat", "concatenate", "softmax"):
            result = batch_last(name, largs, lkwargs, spare.take)
        if result is None and func is torch.nn.functional.batch_norm:
            result = inference_batch_norm(largs, lkwargs)
        if result is None and func is torch.nn.functional.layer_norm:
            result = channel_first_layer_norm(largs, lkwargs)
        return func(*largs, **lkwargs) if result is None else result

    def check_and_track(self, real: torch.Tensor, local: torch.Tensor) -> None:
        n, g = self.grid.batch, self.grid.positions
        if real.dim() < 1 or real.shape[0] != n:
            raise self.fail(f"changes the batch dimension ({tuple(real.shape)}, batch {n})")
        if not isinstance(local, torch.Tensor) or tuple(local.shape) != (n * g, *real.shape[1:]):
            shown = tuple(local.shape) if isinstance(local, torch.Tensor) else type(local).__name__
            raise self.fail(f"mixes the samples (local result {shown} for {tuple(real.shape)})")
        self.values._track(real, local, self.grid, self.sources)


# Chains on fewer positions (or values) are computed call by call: blocks would gain nothing.
_CHAIN_MIN_POSITIONS = 1024
_CHAIN_MIN_VALUES = 1 << 16


def _bound_product(name: str, args: tuple, kwargs: dict) -> tuple[Any, Any, Any] | None:
    """(input, weight, bias) of ``linear(...)`` or of a ``conv2d(...)`` with stride 1, no padding,
    dilation 1 and one group; None for other calls or settings."""
    names = ("input", "weight", "bias") if name == "linear" else ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = bound_arguments(args, kwargs, names) if name in _PRODUCTS else None
    if bound is None:
        return None
    if name == "conv2d":
        settings = (bound.get("stride", 1), bound.get("padding", 0), bound.get("dilation", 1), bound.get("groups", 1))
        if settings[0] not in (1, (1, 1), [1, 1]) or settings[1] not in (0, (0, 0), [0, 0], "valid"):
            return None
        if settings[2] not in (1, (1, 1), [1, 1]) or settings[3] != 1:
            return None
    if "input" not in bound or "weight" not in bound:
        return None
    return bound["input"], bound["weight"], bound.get("bias")


def _product_width(name: str, x: torch.Tensor, weight: torch.Tensor, bias: Any) -> int | None:
    """D where ``linear(x, weight, bias)`` / 1x1 ``conv2d`` (:func:`_bound_product`) takes per-sample
    values x (N, D) / (N, D, 1, 1) with weight (O, D) / (O, D, 1, 1) and bias None or (O,); None for
    other shapes."""
    d, linear = x.shape[1:].numel(), name == "linear"
    if tuple(x.shape) != ((x.shape[0], d) if linear else (x.shape[0], d, 1, 1)):
        return None
    if weight.shape[1:] != ((d,) if linear else (d, 1, 1)):
        return None
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != weight.shape[:1]):
        return None
    return d


def _fold_shape(args: tuple, kwargs: dict, n: int, folded: int) -> tuple[tuple, dict]:
    """Shape arguments of view/reshape/expand with a first entry ``n`` -> ``folded``."""

    def fold(shape: tuple | list) -> tuple:
        items = list(shape)
        if items and isinstance(items[0], int) and not isinstance(items[0], bool) and items[0] == n:
            items[0] = folded
        return tuple(items)

    for key in ("size", "shape"):
        if key in kwargs and isinstance(kwargs[key], (tuple, list)):
            return args, {**kwargs, key: fold(kwargs[key])}
    if len(args) == 2 and isinstance(args[1], (tuple, list)):
        return (args[0], fold(args[1])), kwargs
    if len(args) >= 2 and all(isinstance(a, int) for a in args[1:]):
        return (args[0], *fold(args[1:])), kwargs
    return args, kwargs


__all__ = ["ElementwiseForm", "GateForm", "Grid", "PooledValueError", "PooledValues", "WindowMeans"]
