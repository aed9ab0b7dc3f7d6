"""The pattern of transposed (channel) attention, followed by tensor identity: what it is, the
mode that follows it (:class:`Follower`) and how a matched chain maps onto
:func:`tlc.ops.local_transposed_attention`.

Two modes build on :class:`Follower`: :class:`tlc.nn.LocalTransposedAttention`'s (the local form
at run time) and :class:`tlc.convert.attention.TransposedAttentionRecorder` (finding the
attentions at calibration). :mod:`tlc.nn.attention` describes the pattern and its limits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .._util import output_tensors
from ..ops._common import Pair

_T = torch.Tensor

#: torch callables by the role they play in the pattern.
_KINDS: dict[object, str] = {
    F.normalize: "normalize",
    **dict.fromkeys((_T.matmul, _T.__matmul__, torch.matmul, _T.bmm, torch.bmm), "matmul"),
    **dict.fromkeys((_T.mul, _T.__mul__, _T.__rmul__, torch.mul, _T.multiply, torch.multiply), "mul"),
    **dict.fromkeys((_T.div, _T.__truediv__, torch.div, _T.divide, torch.divide, _T.true_divide), "div"),
    **dict.fromkeys((_T.mul_, _T.__imul__, _T.multiply_), "mul_"),
    **dict.fromkeys((_T.div_, _T.__itruediv__, _T.divide_, _T.true_divide_), "div_"),
    **dict.fromkeys((_T.softmax, torch.softmax, F.softmax), "softmax"),
    **dict.fromkeys((F.dropout, torch.dropout), "dropout"),
    **dict.fromkeys(
        (_T.contiguous, _T.clone, torch.clone, _T.to, _T.type_as, _T.float, _T.double, _T.half, _T.bfloat16),
        "same",
    ),
    **dict.fromkeys(
        (_T.transpose, torch.transpose, _T.swapaxes, torch.swapaxes, _T.swapdims, torch.swapdims), "transpose"
    ),
    **dict.fromkeys((_T.permute, torch.permute), "permute"),
    **dict.fromkeys(
        (_T.reshape, torch.reshape, _T.view, _T.flatten, torch.flatten, _T.reshape_as, _T.view_as), "reshape"
    ),
    **dict.fromkeys((torch.conv2d, F.conv2d, torch.conv_transpose2d, F.conv_transpose2d), "conv"),
}
_TRANSPOSE_PROPERTIES = (_T.mT, _T.T)

#: F.normalize's default eps, the one local_transposed_attention uses.
_EPS = 1e-12


def _is_property(func: object, prop: object) -> bool:
    return getattr(func, "__self__", None) is prop


def _kind(func: object) -> str | None:
    if any(_is_property(func, prop) for prop in _TRANSPOSE_PROPERTIES):  # x.mT (x.T on matrices)
        return "transpose"
    try:
        return _KINDS.get(func)
    except TypeError:  # unhashable callables are none of these
        return None


def merged_pairs(before: tuple[int, ...], after: tuple[int, ...]) -> list[Pair]:
    """The pairs of adjacent axes (a, b) that a reshape from ``before`` to ``after`` merges into
    one axis of a*b (row-major), read from the two shapes. Size-1 axes go with the axis after
    them (trailing ones with the last), so a (1, w) or (h, 1) map merged into w or h counts.

    >>> merged_pairs((2, 6, 4, 5), (2, 2, 3, 20))
    [(4, 5)]
    """
    if 0 in before or 0 in after:
        return []
    groups, i, j = [], 0, 0
    while i < len(before) and j < len(after):
        group_in, group_out = [before[i]], [after[j]]
        p_in, p_out = before[i], after[j]
        i, j = i + 1, j + 1
        while p_in != p_out:
            if p_in < p_out and i < len(before):
                p_in *= before[i]
                group_in.append(before[i])
                i += 1
            elif p_out < p_in and j < len(after):
                p_out *= after[j]
                group_out.append(after[j])
                j += 1
            else:
                return []
        groups.append((group_in, group_out))
    if groups:
        groups[-1][0].extend(before[i:])
        groups[-1][1].extend(after[j:])
    pairs = []
    for group_in, group_out in groups:
        merged = group_in if len(group_in) == 2 else [s for s in group_in if s != 1]
        if len(merged) == 2 and len([s for s in group_out if s != 1]) <= 1:
            pairs.append((merged[0], merged[1]))
    return pairs


def _ints(obj: object) -> Iterator[int]:
    """Integers among a call's arguments, in order (tuples, lists, dicts and sizes searched)."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, int):
        yield obj
    elif isinstance(obj, (tuple, list, torch.Size)):
        for item in obj:
            yield from _ints(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _ints(item)


def layout_in_call(length: int, merges: list[Pair], args: tuple, kwargs: dict) -> Pair | str:
    """The (h, w) layout of ``length`` tokens as seen inside one module call, or why it is unknown.

    From a merge seen in the call whose product is ``length``, else from two consecutive integer
    arguments of the call whose product is ``length`` (``forward(x, H, W)``, ``x_size=(H, W)``).
    """
    fitting = {pair for pair in merges if pair[0] * pair[1] == length}
    pairs = {pair for pair in fitting if min(pair) > 1} or fitting  # a map of one row or column last
    if not pairs:
        ints = list(_ints((args, kwargs)))
        pairs = {(a, b) for a, b in zip(ints, ints[1:]) if a > 1 and b > 1 and a * b == length}
    if len(pairs) == 1:
        return next(iter(pairs))
    if pairs:
        shapes = ", ".join(f"{a}x{b}" for a, b in sorted(pairs))
        return f"the {length} tokens could be laid out as any of {shapes}"
    return (
        f"the height and width of the {length} tokens are not visible inside the module's call "
        "(no reshape merging them there, no height and width arguments)"
    )


# ----------------------------------------------------------------------------- following the pattern


@dataclass(eq=False)
class Normed:
    """A tensor normalised over its last axis: the raw input and how."""

    raw: torch.Tensor
    p: float
    eps: float
    owner: object
    escaped: str | None = None
    location: str = ""  # file.py:line of the call, where recorded


@dataclass(eq=False)
class Chain:
    """One Gram of two normalised tensors, followed towards ``softmax(.) @ v``."""

    left: Normed
    right: Normed
    owner: object
    reason: str | None = None
    done: bool = False
    outcome: Pair | str | None = None  # the layout in the call, or why it can't be made local
    real: bool = False  # the Gram computed from the normalised q and k (one window holds every token)

    @property
    def length(self) -> int:
        return self.left.raw.shape[-1]


@dataclass(frozen=True)
class Tag:
    kind: str  # "norm", "normT" (transposed), "gram", "probs"
    normed: Normed | None = None
    chain: Chain | None = None
    scale: tuple[tuple[str, object], ...] = ()
    deferred: bool = False  # "norm"/"normT" holding the raw values: normalised only if used elsewhere


class NotLocal(Exception):
    """The matched pattern cannot be made local; the message says why."""


@dataclass(frozen=True)
class _Plan:
    n: int
    heads: int
    d: int
    temperature: torch.Tensor


def attention_plan(chain: Chain, scale: tuple[tuple[str, object], ...], v: torch.Tensor) -> _Plan:
    """How ``softmax(norm(q) norm(k)^T * scale) @ v`` maps onto local_transposed_attention's
    (N, heads*d, h, w) maps and (heads, 1, 1) temperature; raises NotLocal with the reason."""
    q, k = chain.left.raw, chain.right.raw
    for normed in (chain.left, chain.right):
        if normed.p != 2 or normed.eps != _EPS:
            raise NotLocal(f"F.normalize with p={normed.p}, eps={normed.eps} (the local form uses p=2, eps={_EPS})")
    if q.shape != k.shape or v.shape != q.shape:
        raise NotLocal(f"q, k and v differ in shape ({tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)})")
    lead, d = tuple(q.shape[:-2]), q.shape[-2]
    n, heads = (lead[0] if lead else 1), math.prod(lead[1:])
    total = torch.ones((), dtype=q.dtype, device=q.device)
    for op, operand in scale:
        total = total * operand if op == "mul" else total / operand
    attn = (*lead, d, d)
    if total.dim() > len(attn):
        raise NotLocal(f"a scale of shape {tuple(total.shape)} changes the attention's shape")
    pad = (1,) * (len(attn) - total.dim()) + tuple(total.shape)
    if pad[-1] != 1 or pad[-2] != 1:
        raise NotLocal(f"a scale of shape {tuple(total.shape)} varies within a head's attention matrix")
    if lead and pad[0] != 1:
        raise NotLocal(f"a scale of shape {tuple(total.shape)} varies per image")
    temperature = total.reshape(pad).expand(*(1,) * bool(lead), *lead[1:], 1, 1).reshape(heads, 1, 1)
    return _Plan(n, heads, d, temperature)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: object) -> object:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _last_two_swapped(func: object, kind: str, args: tuple, kwargs: dict, ndim: int) -> bool:
    if _is_property(func, _T.mT):
        return ndim >= 2
    if _is_property(func, _T.T):
        return ndim == 2
    if kind == "transpose":
        a, b = _arg(args, kwargs, 1, "dim0", None), _arg(args, kwargs, 2, "dim1", None)
        return isinstance(a, int) and isinstance(b, int) and {a % ndim, b % ndim} == {ndim - 2, ndim - 1}
    dims = list(args[1:]) if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else None
    if dims is None:
        dims = _arg(args, kwargs, 1, "dims", None)
    if not isinstance(dims, (tuple, list, torch.Size)) or len(dims) != ndim:
        return False
    return [int(d) % ndim for d in dims] == [*range(ndim - 2), ndim - 1, ndim - 2]


class Follower(TorchFunctionMode):
    """Follows the pattern by tensor identity. Subclasses decide who owns a normalisation, what
    the Gram and the final product return, and what a use outside the pattern means."""

    # What it follows is the model's own attention; the local attention it calls (in final) is
    # tlc's and may run without it (tlc.ops._common.unseen_by_tlc_modes).
    ignores_tlc_ops = True

    #: Whether normalisations return their input, normalised only where used outside the pattern.
    defers = False

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, tuple[torch.Tensor, Tag]] = {}  # strong references: ids stay unique
        self.merges: list[Pair] = []

    # --- to be provided
    def owner(self) -> object | None:
        raise NotImplementedError

    def gram(self, func, args, kwargs, chain: Chain) -> torch.Tensor:  # noqa: ANN001
        raise NotImplementedError

    def final(self, func, args, kwargs, tag: Tag) -> torch.Tensor:  # noqa: ANN001
        raise NotImplementedError

    def escape(self, func, args, kwargs, tags: list[Tag], what: str) -> object:  # noqa: ANN001
        raise NotImplementedError

    def on_conv(self, x: torch.Tensor, result: torch.Tensor) -> None:
        pass

    # --- bookkeeping
    def tag_of(self, x: object) -> Tag | None:
        if not isinstance(x, torch.Tensor):
            return None
        entry = self.tags.get(id(x))
        return entry[1] if entry is not None and entry[0] is x else None

    def tag(self, x: torch.Tensor, tag: Tag) -> torch.Tensor:
        self.tags[id(x)] = (x, tag)
        return x

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        kwargs = kwargs or {}
        kind = _kind(func)
        tagged = [(i, t) for i, a in enumerate(args) if (t := self.tag_of(a)) is not None]
        nested = [a for a in args if not isinstance(a, torch.Tensor)] + [kwargs]
        hidden = [t for x in output_tensors(nested) if (t := self.tag_of(x)) is not None]
        if hidden:
            tagged.append((-1, None))  # in a list or a keyword argument: no step of the pattern
        if not tagged:
            if kind == "normalize":
                return self.normalize(func, args, kwargs)
            result = func(*args, **kwargs)
            if kind == "reshape" and isinstance(result, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
                self.merges.extend(merged_pairs(tuple(args[0].shape), tuple(result.shape)))
            elif kind == "conv" and isinstance(result, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
                self.on_conv(args[0], result)
            return result
        result = self.step(func, kind, args, kwargs, tagged)
        if result is not _NO_STEP:
            return result
        name = getattr(func, "__name__", None) or repr(func)
        return self.escape(func, args, kwargs, [t for _, t in tagged if t is not None] + hidden, name)

    def normalize(self, func, args, kwargs):  # noqa: ANN001
        x = _arg(args, kwargs, 0, "input", None)
        dim = _arg(args, kwargs, 2, "dim", 1)
        owner = self.owner()
        if owner is None or not isinstance(x, torch.Tensor) or x.dim() < 2 or not isinstance(dim, int):
            return func(*args, **kwargs)
        if dim % x.dim() != x.dim() - 1 or _arg(args, kwargs, 4, "out", None) is not None:
            return func(*args, **kwargs)
        normed = Normed(x, float(_arg(args, kwargs, 1, "p", 2.0)), float(_arg(args, kwargs, 3, "eps", _EPS)), owner)
        self.on_normed(normed)
        if self.defers:
            return self.tag(x.view_as(x), Tag("norm", normed=normed, deferred=True))
        return self.tag(func(*args, **kwargs), Tag("norm", normed=normed))

    def on_normed(self, normed: Normed) -> None:
        pass

    @staticmethod
    def materialize(x: object, tag: Tag | None) -> object:
        """The real value of a deferred normalisation (``x`` itself otherwise)."""
        if tag is None or not tag.deferred:
            return x
        normed = tag.normed
        value = F.normalize(normed.raw, p=normed.p, dim=-1, eps=normed.eps)
        return value.transpose(-2, -1) if tag.kind == "normT" else value

    def step(self, func, kind, args, kwargs, tagged):  # noqa: ANN001, C901 (one case per step)
        if len(tagged) == 2 and kind == "matmul" and [i for i, _ in tagged] == [0, 1]:
            (_, left), (_, right) = tagged
            if left.kind == "norm" and right.kind == "normT":
                chain = Chain(left.normed, right.normed, left.normed.owner)
                if right.normed.owner is not left.normed.owner:
                    chain.reason = "q and k are normalised in different modules"
                return self.tag(self.gram(func, args, kwargs, chain), Tag("gram", chain=chain))
            return _NO_STEP
        if len(tagged) != 1:
            return _NO_STEP
        i, tag = tagged[0]
        if tag is None:
            return _NO_STEP
        if kind == "same" and i == 0:
            real = self.materialize(args[0], tag)
            return self.tag(func(real, *args[1:], **kwargs), replace(tag, deferred=False))
        if kind in ("transpose", "permute") and i == 0 and tag.kind in ("norm", "normT"):
            if not _last_two_swapped(func, kind, args, kwargs, args[0].dim()):
                return _NO_STEP
            flipped = "normT" if tag.kind == "norm" else "norm"
            return self.tag(func(*args, **kwargs), replace(tag, kind=flipped))
        if tag.kind == "gram" and kind in ("mul", "div", "mul_", "div_") and len(args) == 2:
            if kind in ("div", "mul_", "div_") and i != 0:
                return _NO_STEP
            operand = args[1 - i]
            if not isinstance(operand, (torch.Tensor, int, float)) or isinstance(operand, bool):
                return _NO_STEP
            scaled = Tag("gram", chain=tag.chain, scale=(*tag.scale, (kind.rstrip("_"), operand)))
            return self.tag(func(*args, **kwargs), scaled)
        if tag.kind == "gram" and kind == "softmax" and i == 0:
            dim = _arg(args, kwargs, 1, "dim", None)
            result = func(*args, **kwargs)
            if isinstance(dim, int) and dim % args[0].dim() == args[0].dim() - 1:
                return self.tag(result, Tag("probs", chain=tag.chain, scale=tag.scale))
            tag.chain.reason = tag.chain.reason or f"the softmax runs over dim {dim}, not over the last axis"
            return self.escape_result(result, tag)
        if tag.kind == "probs" and kind == "dropout" and i == 0:
            p = _arg(args, kwargs, 1, "p", 0.5)
            training = _arg(args, kwargs, 2, "training" if func is F.dropout else "train", True)
            if training and p > 0:
                return _NO_STEP
            return self.tag(func(*args, **kwargs), tag)
        if tag.kind == "probs" and kind == "matmul" and i == 0 and isinstance(args[1], torch.Tensor):
            return self.final(func, args, kwargs, tag)
        return _NO_STEP

    def escape_result(self, result: torch.Tensor, tag: Tag) -> torch.Tensor:
        """A step that ends the pattern (a softmax over another axis): the result is real here."""
        return result


_NO_STEP = object()
