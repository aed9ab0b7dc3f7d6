"""Hand-written statistics: marks carried by the results of spatial means and sums, so that a
variance written by hand (``((x - mean) ** 2)`` reduced over H and W) becomes the local variance."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .calls import bind

# A mean written by hand (``x.sum(3, keepdim=True).sum(2, keepdim=True) / (H * W)``) converts
# site by site: axis means are separable, so the chain is the local mean. A variance written by
# hand, ``((x - mean) ** 2)`` reduced the same way, does not: each pixel's square would be centred
# by the mean of its own window, not by that of the window being reduced. Results of spatial means
# and sums therefore carry a mark saying what they are; the subtraction, square and reduction that
# follow carry it on, and the reduction completing a centred square over H and W returns the local
# variance of the marked source instead.


@dataclass(frozen=True)
class Mark:
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


def mark_of(t: object) -> Mark | None:
    """The mark of ``t``, unless ``t`` or its source changed in place since it was set."""
    entry = t.__dict__.get(_MARK) if isinstance(t, torch.Tensor) else None
    if entry is None:
        return None
    mark, version, src_version = entry
    return mark if _version(t) == version and _version(mark.src) == src_version else None


def set_mark(t: object, mark: Mark) -> None:
    if isinstance(t, torch.Tensor):
        t.__dict__[_MARK] = (mark, _version(t), _version(mark.src))


def _version(t: torch.Tensor) -> int | None:
    """In-place change counter; None under ``torch.inference_mode``, whose tensors keep none (an
    in-place change there goes unseen)."""
    return None if t.is_inference() else t._version


def _mark_sub(args: tuple, kwargs: dict) -> Mark | None:
    if len(args) == 2 and kwargs.get("alpha", 1) == 1:
        for a, b in (args, args[::-1]):
            m = mark_of(b)
            if m is not None and m.kind == "mean" and m.done == (2, 3) and m.src is a and abs(m.scale - 1) < 1e-9:
                return Mark("dev", a, centre=m.windows)
    return None


def _squared(t: object, exponent: object) -> Mark | None:
    m = mark_of(t)
    if m is not None and m.kind == "dev" and exponent == 2 and not isinstance(exponent, bool):
        return Mark("sq", m.src, centre=m.centre)
    return None


def _mark_pow(args: tuple, kwargs: dict) -> Mark | None:
    b = bind(args, kwargs, ("input", "exponent"))
    return None if b is None else _squared(b.get("input", b.get("self")), b.get("exponent"))


def _mark_square(args: tuple, kwargs: dict) -> Mark | None:
    return _squared(args[0], 2) if args and not kwargs else None


def _mark_scale(divide: bool) -> Callable[[tuple, dict], Mark | None]:
    """``mul``/``div``: a scaled mark stays a mark (``sum / (H * W)`` is a mean); ``d * d`` is a square."""

    def mark(args: tuple, kwargs: dict) -> Mark | None:
        if len(args) != 2 or kwargs:
            return None
        a, b = args
        if not divide and a is b and (m := _squared(a, 2)) is not None:
            return m
        for t, number in ((a, b),) if divide else ((a, b), (b, a)):
            m = mark_of(t)
            if m is not None and m.kind in ("mean", "sqsum") and isinstance(number, (int, float)) and not isinstance(number, bool) and number:
                return replace(m, scale=m.scale / number if divide else m.scale * number)
        return None

    return mark


#: Marks of a chain's intermediate maps (full size, read only by the chain's next step where
#: calibration saw so; see tlc.convert.call_sites.partials).
INTERMEDIATE = ("dev", "sq")

_SCALE, _DIVIDE = _mark_scale(False), _mark_scale(True)

#: The arithmetic of hand-written statistics: function -> ``mark_for(args, kwargs)``, the mark that
#: the call's arguments' marks give its result (None: no mark).
MARKERS: dict[object, Callable[[tuple, dict], Mark | None]] = {
    torch.sub: _mark_sub,
    torch.Tensor.sub: _mark_sub,
    torch.Tensor.__sub__: _mark_sub,
    torch.Tensor.__rsub__: _mark_sub,
    torch.pow: _mark_pow,
    torch.Tensor.pow: _mark_pow,
    torch.Tensor.__pow__: _mark_pow,
    torch.square: _mark_square,
    torch.Tensor.square: _mark_square,
    torch.mul: _SCALE,
    torch.Tensor.mul: _SCALE,
    torch.Tensor.__mul__: _SCALE,
    torch.Tensor.__rmul__: _SCALE,
    torch.div: _DIVIDE,
    torch.Tensor.div: _DIVIDE,
    torch.Tensor.__truediv__: _DIVIDE,
}
