"""Hand-written statistics: marks carried by the results of spatial means and sums, so that a
variance written by hand (``((x - mean) ** 2)`` reduced over H and W) becomes the local variance,
and the pooled value (:func:`pooled_statistic`) that answers a chain completed over H and W."""

from __future__ import annotations

from collections.abc import Callable, Set as AbstractSet
from dataclasses import dataclass, replace

import torch

from ...ops.pool import valid_local_mean_and_mean
from ...ops.stats import valid_local_var_mean_and_var
from ..pooled_forms import version_counter
from ..pooled_values import PooledValues, WindowMeans
from ..rules import Site
from .calls import Call, bind, known_window_means
from .sites import SiteKey

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
    return mark if version_counter(t) == version and version_counter(mark.src) == src_version else None


def set_mark(t: object, mark: Mark) -> None:
    if isinstance(t, torch.Tensor):
        t.__dict__[_MARK] = (mark, version_counter(t), version_counter(mark.src))


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


def sum_factor(call: Call) -> float:
    """What a sum multiplies the mean by: the lengths of the axes it reduces (1 for a mean)."""
    factor = 1.0
    if call.mark == "sum":
        for d in call.dims:
            factor *= call.x.shape[d]
    return factor


def _valid_buffer(values: PooledValues, src: torch.Tensor, window: tuple[int, int]) -> torch.Tensor | None:
    """A spare buffer for the valid windows' means of ``src`` (see tlc.convert.spare_buffers), or
    None (autograd needs them, or none is at hand)."""
    if src.dtype not in (torch.float32, torch.float64) or torch.is_grad_enabled() and src.requires_grad:
        return None
    n, c, h, w = src.shape
    gh, gw = h - window[0] + 1, w - window[1] + 1
    return values.spare.take((n, c, gh, gw), (c * gh * gw, gh * gw, gw, 1), src.dtype, src.device)


def _window_means(
    values: PooledValues, src: torch.Tensor, window: tuple[int, int], scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`valid_local_mean_and_mean` of ``src`` (the windows' means times ``scale``, into a spare
    buffer where one is at hand; the map's mean where the kernel gives it)."""
    known = known_window_means(values, src, window, scale)
    if known is not None:  # a variance's pass of the same map gave them
        return known
    buffer = _valid_buffer(values, src, window)
    # A sum's scale in the kernel's pass (a pass over the windows' map less than multiplying after).
    valid, real = valid_local_mean_and_mean(src, window, out=buffer, scale=scale)
    if buffer is not None and valid.data_ptr() != buffer.data_ptr():  # the kernel did not run
        values.spare.give_back(buffer)
    return valid, real


def pooled_statistic(
    values: PooledValues, key: SiteKey, call: Call, site: Site, read: AbstractSet | None = None
) -> torch.Tensor | None:
    """A mean, sum or centred square reduced over H and W by hand (the chain of calls ending at
    ``call``, read from the marks), as a pooled value: its global value, carrying its value
    over every window inside the map. The result is marked as a mean for what follows. None
    where the chain is not whole-map local (the marked map path then answers).

    Unless ``read`` (the (site, map size) pairs whose pending values a forward read) holds this
    site and map size, a mean's values over the windows are computed only if something reads them
    (:meth:`PooledValues.start_pending`): IMDN's hand-written mean only centres a hand-written
    variance, whose own pass answers it; its windows' pass would be work for nothing."""
    m = mark_of(call.x)
    dims = call.dims
    if m is None:
        m = Mark("mean", call.x)
    kind = "mean" if m.kind == "mean" else "var" if m.kind in ("sq", "sqsum") else None
    if kind is None or set(m.done) & set(dims) or tuple(sorted(m.done + dims)) != (2, 3):
        return None
    factor = sum_factor(call)
    windows = dict((m.windows if m.kind != "sq" else ()) + tuple((d, site.window[d - 2]) for d in dims))
    src = m.src
    if None in windows.values() or src.dim() != 4 or src.dtype != call.x.dtype or (kind == "var" and windows != dict(m.centre)):
        return None
    scale = factor * (m.scale if m.kind in ("mean", "sqsum") else 1.0)
    (h, w), window = src.shape[-2:], (min(windows[2], src.shape[2]), min(windows[3], src.shape[3]))
    if kind == "mean" and read is not None and (key, (h, w)) not in read:
        real = values.map_mean(src)
        out = values.start_pending(
            real if scale == 1 else real * scale, WindowMeans(src, window, scale), key,
            local_valid=lambda: _window_means(values, src, window, scale)[0],  # into a spare buffer
        )
        set_mark(out, Mark("mean", src, (2, 3), scale, tuple(sorted(windows.items()))))
        return out
    if kind == "mean":  # the map's mean from the windows' pass where the kernel runs
        valid, real = _window_means(values, src, window, scale)
        real = src.mean((2, 3), keepdim=True) if real is None else real
        if scale != 1:
            real = real * scale
    else:  # the map's variance from the windows' pass (torch.var: 55 ms more at 16x720x1280)
        valid, means, real = valid_local_var_mean_and_var(src, window, scale=scale)  # scaled in its pass
        if means is not None:  # the same pass's means, for a mean of this map the model takes too
            values.note_window_means(src, window, means)
        if scale != 1:
            real = real * scale
    out = values.start(real, valid, (h, w), source=key)
    if kind == "mean":
        set_mark(out, Mark("mean", src, (2, 3), scale, tuple(sorted(windows.items()))))
    return out
