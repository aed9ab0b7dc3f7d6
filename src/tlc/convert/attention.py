"""Transposed (channel) attention found by what it computes, during the calibration forward.

:class:`TransposedAttentionRecorder` follows the pattern of :mod:`tlc.nn.attention` (whose
docstring describes it and its local form) with module hooks giving the innermost module running,
and records the (h, w) of every convolution's input and output and every reshape merging two
adjacent axes, so that each attention's token layout can be told.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import attention_pattern as _followed
from ..nn.attention_pattern import Chain, Follower, Normed, NotLocal, Tag, attention_plan, layout_in_call
from .._util import output_tensors
from ..ops._common import Pair

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
# The follower's frames (the mode and its calls back into the recorder) are not model code.
_OWN_FILES = (__file__, _followed.__file__)


def _caller_location() -> str:
    """``file.py:line`` of the model code making the current torch call (first frame outside
    torch and tlc's attention follower)."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_TORCH_DIR) or frame.f_code.co_filename in _OWN_FILES
    ):
        frame = frame.f_back
    return "<unknown>" if frame is None else f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"



@dataclass(eq=False)
class _ModuleCall:
    module: nn.Module
    args: tuple
    kwargs: dict
    first_merge: int
    normed: list[Normed] = field(default_factory=list)
    chains: list[Chain] = field(default_factory=list)


class TransposedAttentionRecorder(Follower):
    """Finds transposed attentions by what they compute, during one forward of ``model``.

    Use as a context manager around a forward (no grad, eval mode: tlc.convert's calibration).
    Afterwards :attr:`found` maps each module whose own code ran the pattern (or part of it over
    flattened feature-map tokens) to its token layout (h, w), or to why it stays global.

    Args:
        model: the model whose modules are watched (hooks for the duration only).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.found: dict[nn.Module, Pair | str] = {}
        self._results: dict[nn.Module, list[Pair | str]] = {}
        self._stack: list[_ModuleCall] = []
        self._handles: list = []
        self._sizes: set[Pair] = set()  # (h, w) of every convolution's input and output

    def __enter__(self) -> TransposedAttentionRecorder:
        for module in self.model.modules():
            self._handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._leave, always_call=True))
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.tags.clear()
        for module, results in self._results.items():
            reasons = [r for r in results if isinstance(r, str)]
            layouts = sorted({r for r in results if not isinstance(r, str)})
            if reasons:
                self.found[module] = reasons[0]
            elif len(layouts) > 1:
                sizes = ", ".join(f"{h}x{w}" for h, w in layouts)
                self.found[module] = f"attention over tokens of several layouts ({sizes}); give each its own module"
            else:
                self.found[module] = layouts[0]

    # --- hooks
    def _enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._stack.append(_ModuleCall(module, args, kwargs, len(self.merges)))

    def _leave(self, module: nn.Module, args: tuple, output: object) -> None:
        if not self._stack or self._stack[-1].module is not module:
            return  # its pre-hook never ran
        call = self._stack.pop()
        for t in output_tensors(output):
            tag = self.tag_of(t)
            if tag is not None and tag.chain is not None and tag.chain.owner is call:
                tag.chain.reason = tag.chain.reason or "the module returns its attention matrix"
            elif tag is not None and tag.normed is not None and tag.normed.owner is call:
                tag.normed.escaped = tag.normed.escaped or "the module's output"
        results = self._results.setdefault(call.module, []) if call.chains or call.normed else None
        for chain in call.chains:
            layout = self._layout(chain.length)
            if layout is None:
                continue  # not an axis of flattened feature-map tokens
            reason = None
            if chain.reason is not None:
                reason = chain.reason
            elif not chain.done:
                reason = "q k^T over the tokens is not followed by softmax(dim=-1) and a product with v"
            elif isinstance(layout, str) or isinstance(chain.outcome, str):
                reason = layout if isinstance(layout, str) else chain.outcome
            elif chain.outcome != layout:
                reason = f"tokens of layout {layout[0]}x{layout[1]} read as {chain.outcome[0]}x{chain.outcome[1]}"
            results.append(layout if reason is None else f"{reason} (attention at {chain.left.location})")
        for normed in call.normed:
            if normed.escaped is not None and self._layout(normed.raw.shape[-1]) is not None:
                results.append(
                    f"q or k normalised over all the tokens is also used by {normed.escaped} ({normed.location})"
                )
        if results == []:
            del self._results[call.module]
        self.tags = {key: entry for key, entry in self.tags.items() if self._owner_of(entry[1]) is not call}

    @staticmethod
    def _owner_of(tag: Tag) -> object:
        return tag.normed.owner if tag.normed is not None else tag.chain.owner

    def _layout(self, length: int) -> Pair | str | None:
        """The (h, w) of ``length`` tokens flattened from a feature map; a reason if several
        layouts fit; None if no feature map was flattened to that length."""
        pairs = {pair for pair in self.merges if pair[0] * pair[1] == length and pair in self._sizes}
        if len(pairs) > 1:
            shapes = ", ".join(f"{a}x{b}" for a, b in sorted(pairs))
            return f"the {length} tokens could come from feature maps of {shapes}"
        return next(iter(pairs)) if pairs else None

    # --- the follower's decisions
    def owner(self) -> object | None:
        return self._stack[-1] if self._stack else None

    def on_normed(self, normed: Normed) -> None:
        normed.owner.normed.append(normed)
        normed.location = _caller_location()

    def on_conv(self, x: torch.Tensor, result: torch.Tensor) -> None:
        for t in (x, result):
            if t.dim() >= 3:
                self._sizes.add((t.shape[-2], t.shape[-1]))

    def gram(self, func, args, kwargs, chain: Chain) -> torch.Tensor:  # noqa: ANN001
        chain.owner.chains.append(chain)
        return func(*args, **kwargs)

    def final(self, func, args, kwargs, tag: Tag) -> torch.Tensor:  # noqa: ANN001
        chain, call = tag.chain, self._stack[-1] if self._stack else None
        result = func(*args, **kwargs)
        if chain.done:
            chain.reason = chain.reason or "the attention matrix is applied to more than one value tensor"
            return result
        chain.done = True
        if call is not chain.owner:
            chain.reason = chain.reason or "the product with v runs in another module than the normalisation"
            return result
        try:
            attention_plan(chain, tag.scale, args[1])
        except NotLocal as err:
            chain.reason = chain.reason or str(err)
            return result
        merges = self.merges[call.first_merge :]
        chain.outcome = layout_in_call(chain.length, merges, call.args, call.kwargs)
        return result

    def escape(self, func, args, kwargs, tags: list[Tag], what: str) -> object:  # noqa: ANN001
        result = func(*args, **kwargs)
        if not any(isinstance(r, torch.Tensor) for r in output_tensors(result)):
            return result  # sizes, dims, dtypes: not a use of the values
        for tag in tags:
            if tag.normed is not None:
                tag.normed.escaped = tag.normed.escaped or what
            else:
                tag.chain.reason = tag.chain.reason or f"its attention matrix is also used by {what}"
        return result
