"""A recognised call (:class:`Call`): its input, the axes it works across and its local form at a
site; the small helpers the parsers share, and the whole-map poolings a pooled value can answer."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...ops import local_axis_max, local_axis_mean, local_max, local_mean, local_mean_strided
from ...ops.extrema import valid_local_max
from ...ops.pool import clamp_window, valid_local_mean_and_mean
from ..pooled_values import PooledValues, WindowMeans
from ..rules import Site
from .sites import POOLED_VALUE


@dataclass
class Call:
    """A call that may be a global op: its input, the axes it works across, and, where it is a
    spatial op on an (N, C, H, W) map, how to compute it locally at a site.

    Attributes:
        op: name shown in reports.
        x: the tensor whose axes ``dims`` are watched (recorded per calibration forward).
        dims: non-negative axes of ``x`` whose whole length the result depends on.
        kind: "map" (reductions, pools, norms: local where ``dims`` are the map's H and/or W),
            "tokens" (softmax, normalisation, contractions: global only if the probe forwards show
            ``dims`` grow with the image), "fft".
        reason: why a spatial op must stay global whatever the sizes; None when it has a local form.
        local: the local form at a site (None when it has none).
        mark: how the result relates to the input for the centred-square patterns (see ``Mark``):
            "mean", "sum" or None.
        valid: for a whole-map statistic :data:`POOLINGS` does not name (``var``, ``std``), its
            value over every window inside the map, (N, C, H - kh + 1, W - kw + 1), at a site,
            the windows' means of the map where the same pass gives them (else None) and its
            value over the whole map, (N, C, 1, 1), from the same pass (see :func:`valid_pooling`).
    """

    op: str
    x: torch.Tensor
    dims: tuple[int, ...]
    kind: str = "map"
    reason: str | None = None
    local: Callable[[Site], torch.Tensor] | None = None
    mark: str | None = None
    valid: Callable[[Site], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] | None = None


def is_map(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point() and x.shape[-2:].numel() > 0


def table_entry(table: dict, func: object) -> Any:
    """``table[func]``, or None (also for unhashable callables, which are none of ours)."""
    try:
        return table.get(func)
    except TypeError:
        return None


def bind(args: tuple, kwargs: dict, names: tuple[str, ...]) -> dict[str, Any] | None:
    if len(args) > len(names):
        return None
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def axes(dim: object, ndim: int) -> tuple[int, ...] | None:
    """``dim`` as sorted non-negative axes (None or () meaning all), or None if it is not a dim."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    if isinstance(dim, (bool, str)):
        return None
    dims = list(dim) if isinstance(dim, (tuple, list, torch.Size)) else [dim]
    try:
        indices = [operator.index(d) for d in dims]
    except TypeError:
        return None
    if any(isinstance(d, bool) for d in dims) or not all(-ndim <= d < ndim for d in indices):
        return None
    return tuple(sorted({d % ndim for d in indices}))


def maybe_spatial(x: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """Worth watching: a 4-D tensor is taken as (N, C, H, W) (or (B, heads, ., .)): only calls
    across its last two axes can be spatial; other ranks may hold flattened tokens anywhere."""
    return bool(dims) and (x.dim() != 4 or 2 in dims or 3 in dims)


def local_pool(x: torch.Tensor, site: Site) -> torch.Tensor:
    return local_mean_strided(x, site.window, site.max_stride) if site.fast else local_mean(x, site.window)


def axis_window(site: Site, dim: int) -> int:
    return site.window[dim - 2]


def local_mean_over(x: torch.Tensor, dims: tuple[int, ...], site: Site) -> torch.Tensor:
    """Local mean over the spatial ``dims`` ((2, 3), (2,) or (3,)) of an (N, C, H, W) map."""
    if dims == (2, 3):
        return local_pool(x, site)
    return local_axis_mean(x, axis_window(site, dims[0]), dims[0])


def local_max_over(x: torch.Tensor, dims: tuple[int, ...], site: Site) -> torch.Tensor:
    if dims == (2, 3):
        return local_max(x, site.window)
    return local_axis_max(x, axis_window(site, dims[0]), dims[0])


def spatial_only(x: torch.Tensor, dims: tuple[int, ...]) -> bool:
    return x.dim() == 4 and x.is_floating_point() and bool(dims) and all(d in (2, 3) for d in dims)


def no_keepdim(op: str) -> str:
    return f"{POOLED_VALUE} (keepdim=False): {op}'s result has no spatial dimensions to hold local values"


# Whole-map poolings whose result can be carried as a pooled value (see tlc.convert.pooled_values):
# op -> how its value over a window is computed.
POOLINGS = {
    "mean": "mean", "adaptive_avg_pool2d": "mean", "avg_pool2d": "mean", "sum": "sum",
    "amax": "max", "adaptive_max_pool2d": "max", "max_pool2d": "max",
}


def poolable(call: Call) -> bool:
    """Whether ``call`` pools a whole (N, C, H, W) map and may be answered with a pooled value."""
    return (
        (call.op in POOLINGS or call.valid is not None) and call.dims == (2, 3) and call.x.dim() == 4
        and (call.reason is None or call.reason.startswith(POOLED_VALUE))
    )


def valid_pooling(call: Call, site: Site, values: PooledValues) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The pooling of ``call`` over every window inside the map, (N, C, H - kh + 1, W - kw + 1),
    and its value over the whole map, (N, C, 1, 1), where the windows' pass gives it (None
    elsewhere: torch's own pooling then gives it). A variance's pass gives the map's windows'
    means too: they are noted in ``values`` for a mean of the same map, and a mean takes them
    from there where they are at hand (:meth:`PooledValues.note_window_means`)."""
    if call.valid is not None:
        valid, means, whole = call.valid(site)
        if means is not None:
            values.note_window_means(call.x, clamp_window(site.window, call.x.shape[-2:]), means)
        return valid, whole
    x, kind = call.x, POOLINGS[call.op]
    if kind == "max":
        # The windows inside the map cover every pixel: the largest of their maxima is the map's
        # maximum, exactly (NaN included), from a pass over the smaller map.
        valid = valid_local_max(x, site.window)
        return valid, valid.amax((2, 3), keepdim=True)
    area = x.shape[2] * x.shape[3] if kind == "sum" else 1
    # The mean from the kernel's float64 sums; a sum's scale in the kernel's pass.
    known = known_window_means(values, x, clamp_window(site.window, x.shape[-2:]), area)
    valid, mean = known if known is not None else valid_local_mean_and_mean(x, site.window, scale=area)
    if mean is not None and area != 1:
        mean = mean * area
    return valid, mean


def known_window_means(
    values: PooledValues, x: torch.Tensor, window: tuple[int, int], scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`tlc.ops.pool.valid_local_mean_and_mean` of ``x`` (the windows' means times ``scale``,
    the map's mean) from windows' means a variance's pass of the same map already gave
    (:meth:`PooledValues.take_window_means`; the map's mean from the plane-sums kernel, the
    windows' pass's bits); None where none are at hand. ``window``: clamped to the map."""
    known = values.take_window_means(x, window)
    if known is None:
        return None
    return (known if scale == 1 else known * scale), values.map_mean(x)


def pending_windows(values: PooledValues, call: Call, site: Site) -> tuple[WindowMeans, torch.Tensor] | None:
    """For a whole-map mean or sum (``call``) to answer with a pending pooled value: what its
    windows' values are (computed only if something reads them, or never where a layer computes
    its own from the map first; see :class:`tlc.convert.pooled_forms.WindowMeans`), and its value
    over the whole map, (N, C, 1, 1), as :func:`valid_pooling` gives it (to the bit), without the
    windows. None for other poolings (maxima; statistics with their own windows' form)."""
    kind = POOLINGS.get(call.op)
    x = call.x
    if call.valid is not None or kind not in ("mean", "sum") or x.dim() != 4:
        return None
    (h, w), window = x.shape[-2:], clamp_window(site.window, x.shape[-2:])
    scale = float(h * w) if kind == "sum" else 1.0
    whole = values.map_mean(x)
    return WindowMeans(x, window, scale), whole if scale == 1 else whole * scale
