"""Buffers of dead local values, reused for the next elementwise results of the same layout.

Followed at full resolution, a gate's local values are maps nearly the size of the feature map
(13 M floats for 16 channels at 720p), and every elementwise call on them (``sqrt``, ``x * w``,
``sigmoid``...) makes a new one. glibc hands each buffer of that size afresh from the kernel, and
the first write to each page faults: measured here, ``torch.sigmoid`` of such a map took 18 ms
into a new tensor and 3.8 ms into a reused one (``torch.add``: 19.5 and 3.6 ms). A forward of
SRM-style gates makes eight of them per gate.

:class:`SpareBuffers` keeps a few local values whose real tensors died (so no model code can read
them again) and no other local value shares: the next elementwise call whose result has the same
shape, strides and dtype is computed into one with ``out=``. The numbers are the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..ops._common import tracing

# Elementwise calls by name: the torch function computing them with ``out=``, and whether the
# first two arguments swap (``b.__rsub__(a)`` is ``a - b``: ``torch.sub(a, b)``).
_WITH_OUT: dict[str, tuple[Callable, bool]] = {
    **{name: (torch.mul, False) for name in ("mul", "__mul__", "multiply")},
    "__rmul__": (torch.mul, True),
    **{name: (torch.add, False) for name in ("add", "__add__")},
    "__radd__": (torch.add, True),
    **{name: (torch.sub, False) for name in ("sub", "__sub__", "subtract")},
    "__rsub__": (torch.sub, True),
    **{name: (torch.div, False) for name in ("div", "__truediv__", "true_divide", "divide")},
    "__rtruediv__": (torch.div, True),
    **{name: (getattr(torch, name), False) for name in ("sigmoid", "sqrt", "rsqrt", "exp", "tanh", "reciprocal", "abs")},
    **{name: (torch.neg, False) for name in ("neg", "__neg__", "negative")},
    "addcmul": (torch.addcmul, False),
    "addcdiv": (torch.addcdiv, False),
}
_KEPT = 3  # buffers kept at most: a gate's chain needs two or three; each is a gate-sized map


def _dense_layout(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether a tensor of this shape and stride reaches each of ``prod(shape)`` consecutive
    elements once (any order of the dims)."""
    expected = 1
    for size, step in sorted(zip(shape, stride), key=lambda p: p[1]):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill its storage exactly, each once (any order of the dims)."""
    if t.numel() * t.element_size() != t.untyped_storage().nbytes() or t.storage_offset() != 0:
        return False
    return _dense_layout(tuple(t.shape), t.stride())


class SpareBuffers:
    """The spare buffers of one forward.

    Use (by :class:`tlc.convert.pooled_values.PooledValues`): :meth:`hold` each local value when it
    is tracked, :meth:`release` it when its real tensor dies, and :meth:`compute_into` before an
    elementwise call on local values computes its result afresh.
    """

    def __init__(self) -> None:
        self._holders: dict[int, int] = {}  # storage address -> local values holding it
        self._spare: list[torch.Tensor] = []

    def hold(self, local: torch.Tensor, real: torch.Tensor) -> int | None:
        """Count ``local`` among its storage's holders; the key to :meth:`release` it with, or None
        when it may never be reused (it shares the real tensor's memory, or autograd's, or is no
        dense buffer of its own)."""
        if local.requires_grad or tracing() or local.device != real.device or not local.is_floating_point():
            return None
        address = local.untyped_storage().data_ptr()
        if address == real.untyped_storage().data_ptr() or not _dense(local):
            return None
        self._holders[address] = self._holders.get(address, 0) + 1
        return address

    def release(self, address: int, local: torch.Tensor) -> None:
        """``local``'s real tensor died: keep its buffer once no other local value holds it."""
        left = self._holders.get(address, 0) - 1
        if left > 0:
            self._holders[address] = left
            return
        self._holders.pop(address, None)
        self._keep(local)

    def compute_into(self, name: str, args: tuple, kwargs: dict, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """The elementwise call ``name`` on local values ``args``, computed into a spare buffer of
        the result's ``shape`` and ``dtype`` laid out as the first argument of that shape; None
        when the call is not one of these or no buffer fits (then the caller computes it)."""
        form = _WITH_OUT.get(name)
        if form is None or not self._spare or "out" in kwargs:
            return None
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return None
        like = next((t for t in tensors if tuple(t.shape) == shape), None)
        function, swap = form
        if like is None or swap and (len(args) != 2 or not isinstance(args[1], torch.Tensor)):
            return None  # no argument of the result's layout; torch.sub(2.0, t) has no tensor first
        buffer = self.take(shape, like.stride(), dtype, like.device)
        if buffer is None:
            return None
        if swap:
            args = (args[1], args[0])
        try:
            return function(*args, **kwargs, out=buffer)
        except (RuntimeError, TypeError, ValueError):  # a form torch's out= variant refuses
            self.give_back(buffer)
            return None

    def take(self, shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """A spare buffer seen with this layout, now the caller's (it writes a result into it); None
        when none is kept. Any kept buffer of as many elements serves a dense layout: kept buffers
        are dense themselves (a gate's (B, C, 1, 1) values serve a (B, C) product)."""
        if not _dense_layout(shape, stride):
            return None
        count = math.prod(shape)
        for i, buffer in enumerate(self._spare):
            if buffer.numel() == count and buffer.dtype == dtype and buffer.device == device:
                buffer = self._spare.pop(i)
                same = tuple(buffer.shape) == tuple(shape) and buffer.stride() == tuple(stride)
                return buffer if same else buffer.as_strided(shape, stride, 0)
        return None

    def give_back(self, buffer: torch.Tensor) -> None:
        """A buffer :meth:`take` gave out and nothing was written into (the computation it was
        taken for made its own result): spare again."""
        self._keep(buffer)

    def _keep(self, buffer: torch.Tensor) -> None:
        # Over the limit, the smallest buffer goes: a large one costs the most page faults to make
        # afresh. (Dropping the oldest lost selective-kernel fusion's 58 MB softmax buffer to three
        # 19 MB branch outputs dying just before the next fusion's softmax.)
        self._spare.append(buffer)
        if len(self._spare) > _KEPT:
            self._spare.pop(min(range(len(self._spare)), key=lambda i: self._spare[i].numel() * self._spare[i].element_size()))

    def clear(self) -> None:
        """Forget every buffer (the forward ended)."""
        self._holders.clear()
        self._spare.clear()


__all__ = ["SpareBuffers"]
