"""Transposed (channel) attention recognised by what it computes, and its local grid-window form.

Restormer's MDTA, KBNet's ``TransAttention``, Retinexformer's ``IG_MSA`` and DAT's channel
attention are written differently (convolutions or Linear layers, einops or reshape, channels
first or last, ``q @ k^T`` or ``k @ q^T``) but compute the same thing on tokens flattened from an
(h, w) map: q and k (..., d, L) L2-normalised over the L = h*w tokens, ``attn = softmax(q k^T *
scale, dim=-1)`` (d x d per head), ``out = attn @ v``. The sums over L make it a global op.

Recognition (:class:`tlc.convert.attention.TransposedAttentionRecorder`, during the calibration forward): a
:class:`~torch.overrides.TorchFunctionMode` sees every torch call and module hooks give the
innermost module running. It records

- the (h, w) of every convolution's input and output (the feature map sizes),
- every reshape/view/flatten (einops' ``rearrange`` included: it reshapes) that merges two
  adjacent axes (a, b) into one axis of a*b, row-major,

and follows, by tensor identity, ``F.normalize(t, dim=-1)`` of two tensors (q, k) -> a ``matmul``
of one with the other transposed in its last two axes (the Gram, contracting over L) -> optional
multiplications/divisions by a scale -> ``softmax(dim=-1)`` -> optional dropout (identity in eval),
``contiguous``, dtype casts -> ``matmul`` with a value tensor v (..., d, L). A module whose own code
(not a child's) normalises q and k and makes the final product is a transposed attention; the
softmax, scale and dropout may be children (``nn.Softmax``, ``nn.Dropout``). Its tokens have the
layout (h, w) when exactly one merge of a feature-map size (h, w) gave the length L. The window
is then ``(h * base_h // train_h, w * base_w // train_w)`` as for every other site.

Matches of part of the pattern over flattened feature-map tokens that cannot be made local are
reported with the reason (tlc.convert lists them in ``report.skipped``): a softmax over another
axis, a scale that is not per head, q/k/v of different shapes, an ``F.normalize`` with another
``p`` or ``eps``, the normalised q/k or the attention matrix used by anything else, a token
layout that cannot be told inside the module's call. Limits: the pattern must be written with the
calls above (an ``einsum`` Gram, a hand-written normalisation or a scale folded into q before the
Gram are not followed); tokens must come from a reshape of a map some convolution produced or
consumed; a flatten of (w, h) instead of (h, w) is taken as (h, w) (only matters for non-square
windows).

Local version (:class:`LocalTransposedAttention`): an object of a subclass of the matched
module's class (``Local<Class>``) holding the module's parameters, buffers, children and
attributes as they are (state_dict keys unchanged). Its forward runs the original class's forward
under a small mode that defers the normalisations (the windows normalise; a normalised tensor
used elsewhere is normalised then), replaces the Gram by a placeholder (the (d x d) scale and
softmax then run on it for their shapes only) and answers ``attn @ v`` with
:func:`tlc.local_transposed_attention` on the (N, heads*d, h, w) maps: grid windows, overlaps
averaged, exact. The whole-map statistics are never computed. Python code that keeps a normalised
q or k aside (``self.q = q``) would keep the unnormalised one: the calibration cannot see that (it
does see a module returning it, which then stays global). At run time the token layout is read
from a merge inside the module's call whose product is L, else from consecutive integer
arguments (h, w) whose product is L (DAT's ``forward(x, H, W)``).

A window holding every token (inputs up to about 1.5x the training size): the module's own
attention, from the normalised q and k, so the output has the original's bits. A call whose every
attention was so is remembered by what decides its layout (its tensor arguments' shapes, its
other arguments, the module's own numbers such as ``self.H``), and a later call alike runs the
original forward without the mode: at 256x256 a Retinexformer trained at 256 took 1.15x the
original's time with the mode, 1.00x without.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._util import call_signature, output_tensors
from ..ops import local_transposed_attention
from ..ops._common import Pair, as_pair, tracing
from .attention_pattern import Chain, Follower, NotLocal, Tag, attention_plan, layout_in_call


class _LocalChains(Follower):
    """The mode a :class:`LocalTransposedAttention` runs its forward under."""

    defers = True  # the local op normalises per window: the whole-map normalisation is not needed

    def __init__(self, module: LocalTransposedAttention, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.module, self.args, self.kwargs = module, args, kwargs
        self.depth = 0  # > 0 while a child module runs
        self.finals = self.covered_finals = 0  # attentions answered in this call; by the module's own product

    def enter_child(self, module: nn.Module, args: tuple) -> None:
        self.depth += 1

    def leave_child(self, module: nn.Module, args: tuple, output: object) -> None:
        self.depth -= 1

    def owner(self) -> object | None:
        return self.module if self.depth == 0 else None

    def gram(self, func, args, kwargs, chain: Chain) -> torch.Tensor:  # noqa: ANN001
        layout = layout_in_call(chain.length, self.merges, self.args, self.kwargs)
        if self.module.covers(layout):
            # One window holds every token: the module's own attention, from the normalised q and
            # k, so that the output has the original's bits (final() checks the layout again).
            chain.real = True
            return func(*(self.materialize(a, self.tag_of(a)) for a in args), **kwargs)
        # Shape and dtype of q k^T, values unused: the scale and softmax run on it for their shapes.
        q, k = args
        shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (q.shape[-2], k.shape[-1])
        return torch.zeros(shape, dtype=torch.result_type(q, k), device=q.device)

    def final(self, func, args, kwargs, tag: Tag) -> torch.Tensor:  # noqa: ANN001
        chain, v = tag.chain, args[1]
        name = type(self.module).__name__
        if chain.reason is not None:
            raise RuntimeError(f"{name}: its transposed attention cannot run locally here: {chain.reason}")
        try:
            plan = attention_plan(chain, tag.scale, v)
        except NotLocal as err:
            raise RuntimeError(f"{name}: its transposed attention cannot run locally here: {err}") from None
        layout = layout_in_call(chain.length, self.merges, self.args, self.kwargs)
        if isinstance(layout, str):
            raise RuntimeError(f"{name}: {layout}")
        self.finals += 1
        if chain.real and self.module.covers(layout):
            self.covered_finals += 1
            return func(*args, **kwargs)  # softmax(q k^T * scale) computed as the module does, times v
        h, w = layout
        maps = [t.reshape(plan.n, plan.heads * plan.d, h, w) for t in (chain.left.raw, chain.right.raw, v)]
        out = local_transposed_attention(*maps, plan.temperature, plan.heads, self.module.local_window)
        return out.reshape(v.shape).to(torch.result_type(args[0], v))

    def escape(self, func, args, kwargs, tags: list[Tag], what: str) -> object:  # noqa: ANN001
        if any(tag.chain is not None for tag in tags):
            result = func(*args, **kwargs)
            if not any(isinstance(r, torch.Tensor) for r in output_tensors(result)):
                return result
            raise RuntimeError(
                f"{type(self.module).__name__}: its attention matrix is used by {what}, which a local "
                "attention cannot provide"
            )
        if any(tag.deferred for tag in tags):
            name = getattr(func, "__name__", "")
            if (name.endswith("_") and not name.endswith("__")) or name.startswith("__i"):
                raise RuntimeError(f"{type(self.module).__name__}: {what} changes a normalised q or k in place")
            def real(a: object) -> object:
                if type(a) in (list, tuple):
                    return type(a)(self.materialize(b, self.tag_of(b)) for b in a)
                return self.materialize(a, self.tag_of(a))

            args = tuple(real(a) for a in args)
            kwargs = {key: real(a) for key, a in kwargs.items()}
        return func(*args, **kwargs)  # normalised q/k as their real values: any use is fine

    def escape_result(self, result: torch.Tensor, tag: Tag) -> torch.Tensor:
        raise RuntimeError(f"{type(self.module).__name__}: {tag.chain.reason}; it cannot run locally")


class LocalTransposedAttention(nn.Module):
    """A transposed attention module made local: grid windows of ``local_window``, overlaps averaged.

    Never built directly: :meth:`wrap` makes, from a matched module, an object of a subclass of
    both this class and the module's own class (named ``Local<Class>``) holding the module's
    parameters, buffers, children and attributes (state_dict keys and ``strict`` loading unchanged). Its
    forward is the original forward, run under a mode that computes the attention core with
    :func:`tlc.local_transposed_attention` (see the module docstring). The repr ends with the
    window; deepcopy and pickle work (pickle where the original class is importable).

    Attributes:
        local_window: (kh, kw) in tokens of the (h, w) map; a window covering the map gives the
            original module's output.
    """

    _global_class: type[nn.Module]
    local_window: Pair

    @staticmethod
    def wrap(module: nn.Module, window: int | Pair) -> LocalTransposedAttention:
        """``module`` as a local attention with ``window`` (kh, kw), sharing its parameters,
        buffers and children (not copies). ``module`` itself is left as it was."""
        cls = module._global_class if isinstance(module, LocalTransposedAttention) else type(module)
        local = _local_instance(cls)
        # Own containers (parameters, children, hooks...), shared contents.
        state = module.__dict__.items()
        local.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, set)) else v for k, v in state})
        local.__dict__.pop("_covered_calls", None)  # found with another window
        local.local_window = as_pair(window, "window")
        return local

    def covers(self, layout: Pair | str) -> bool:
        """Whether one window holds every token of an (h, w) ``layout`` (not while tracing: the
        graph must hold for every size)."""
        return (
            not isinstance(layout, str) and layout[0] <= self.local_window[0] and layout[1] <= self.local_window[1]
            and not tracing()
        )

    def forward(self, *args: object, **kwargs: object) -> object:
        key = None if tracing() else call_signature(args, kwargs, self)
        covered = self.__dict__.get("_covered_calls")
        if key is not None and covered is not None and key in covered:
            # A call like one whose every attention a single window held: the module as it is.
            return super().forward(*args, **kwargs)
        mode = _LocalChains(self, args, kwargs)
        handles = []
        for child in self.modules():
            if child is not self:
                handles.append(child.register_forward_pre_hook(mode.enter_child))
                handles.append(child.register_forward_hook(mode.leave_child, always_call=True))
        try:
            with mode:
                out = super().forward(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if any(mode.tag_of(t) is not None for t in output_tensors(out)):
            raise RuntimeError(
                f"{type(self).__name__} returns its attention matrix or normalised q/k, which a local attention "
                "does not compute"
            )
        if key is not None and mode.finals and mode.covered_finals == mode.finals:
            if covered is None or len(covered) >= _COVERED_CALLS_KEPT:
                covered = self.__dict__["_covered_calls"] = set()
            covered.add(key)
        return out

    def extra_repr(self) -> str:
        own = super().extra_repr()
        return f"{own}, window={self.local_window}" if own else f"window={self.local_window}"

    def __reduce_ex__(self, protocol: object) -> tuple:
        state = dict(self.__getstate__())
        state.pop("_covered_calls", None)  # calls' shapes seen here: nothing to keep
        return _local_instance, (self._global_class,), state


#: How many call signatures a module keeps as covered before starting afresh (inputs of ever new sizes).
_COVERED_CALLS_KEPT = 32


def _local_instance(cls: type[nn.Module]) -> LocalTransposedAttention:
    """An empty instance of ``Local<cls>`` (state set by the caller)."""
    name = f"Local{cls.__name__}"
    namespace = {"__module__": __name__, "__qualname__": name, "_global_class": cls}
    local_cls = type(name, (LocalTransposedAttention, cls), namespace)
    return local_cls.__new__(local_cls)
