"""Local variance and standard deviation: the stand-ins for ``x.var((2, 3))`` / ``x.std((2, 3))``."""

from __future__ import annotations

import torch

from ._common import Pair, accumulation_dtype, as_pair, centring_means, check_feature_map
from ._local_kernels import fused_local_var, local_kernels_apply
from .pool import clamp_window, replicate_to, window_sums


def _valid_local_var(x: torch.Tensor, window: int | Pair, correction: float) -> torch.Tensor:
    """(N, C, H-kh+1, W-kw+1) variances of the windows inside the map, in the accumulation dtype."""
    check_feature_map(x)
    kh, kw = clamp_window(as_pair(window, "window"), x.shape[-2:])
    acc = accumulation_dtype(x)
    h, w = x.shape[-2:]
    # sum / count, not mean: a mean over (2, 3) here would be one of the calls the run-time view
    # (tlc.convert.call_sites) converts.
    centre = x.sum(dim=(-2, -1), keepdim=True, dtype=acc) / (h * w)
    centred = x.to(acc) - centre
    area = kh * kw
    first = window_sums(centred, (kh, kw), acc)
    second = window_sums(centred.square(), (kh, kw), acc)
    squares = (second - first.square() / area).clamp_min(0)
    # Like torch: zero degrees of freedom give inf (or nan for a constant window).
    return squares / max(area - correction, 0)


def _fused_local_var(
    x: torch.Tensor, window: int | Pair, correction: float, root: bool, valid_only: bool = False,
    totals: torch.Tensor | None = None, means: torch.Tensor | None = None, scale: float = 1.0,
) -> torch.Tensor | None:
    """The CPU kernel's result (running float64 sums of centred values), or None where it does
    not apply (autograd, other devices, tracing, a window covering the map). ``totals``: see
    :func:`tlc.ops._local_kernels.fused_local_var`; its rows are then centred by the map's mean."""
    check_feature_map(x)
    h, w = x.shape[-2:]
    kh, kw = clamp_window(as_pair(window, "window"), (h, w))
    if (kh, kw) == (h, w) or not local_kernels_apply(x):
        return None
    centre = centring_means(x, (-2, -1))
    return fused_local_var(x, centre, (kh, kw), correction, root, valid_only, totals, means, scale)


def _whole_var(x: torch.Tensor, correction: float) -> torch.Tensor:
    """``x.var((2, 3), correction=correction, keepdim=True)`` by two passes (the mean, then the
    centred squares' sum): torch's own takes 3.7 ms on a 16x256x256 map here, these about 1."""
    area = x.shape[2] * x.shape[3]
    if area <= correction:  # no degrees of freedom: torch's inf / nan
        return torch.var(x, dim=(2, 3), correction=correction, keepdim=True)
    centred = x - x.sum(dim=(2, 3), keepdim=True) / area
    return centred.square_().sum(dim=(2, 3), keepdim=True) / (area - correction)


def valid_local_var_mean_and_var(
    x: torch.Tensor, window: int | Pair, correction: float = 0.0, root: bool = False, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """:func:`valid_local_var_and_var` and, where the CPU kernel runs, the windows' means from the
    same sums (``sum(x - centre) / area + centre`` in float64, rounded once: within a unit in the
    last place of :func:`tlc.ops.pool.valid_local_mean`'s, not always its bits); None elsewhere.
    A model taking both a map's variance and its mean (IMDN's contrast-aware attention, SRM) then
    makes one pass over the map instead of two.

    ``scale``: the windows' statistics times ``scale``, the bits of ``valid.mul_(scale)`` (in the
    kernel's pass where it runs: a sum of squares written by hand, IMDN's, is its variance times
    the map's area); the map's own statistic is not scaled.

    Returns:
        (variances or standard deviations (N, C, H - kh + 1, W - kw + 1), the windows' means of
        that shape or None, the map's own statistic (N, C, 1, 1)).
    """
    return _valid_var(x, window, correction, root, with_means=True, scale=scale)


def valid_local_var_and_var(
    x: torch.Tensor, window: int | Pair, correction: float = 0.0, root: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`valid_local_var` and the map's own variance (standard deviation with ``root``)
    ``x.var((2, 3), correction=correction, keepdim=True)``, from one pass over ``x`` where the
    CPU kernel applies (its float64 sums over the whole map come with the windows'). torch's own
    ``var`` is a second, slower pass (55 ms at 16x720x1280 on 2 threads).

    Args:
        x: (N, C, H, W) floating tensor.
        window: (kh, kw) in pixels of ``x``; clamped to the map.
        correction: subtracted from the pixel count in the divisor (1: unbiased).
        root: standard deviations (the square root taken before rounding to the dtype of ``x``).

    Returns:
        ((N, C, H - kh + 1, W - kw + 1), (N, C, 1, 1)), both in the dtype of ``x``.
    """
    valid, _, whole = _valid_var(x, window, correction, root, with_means=False)
    return valid, whole


def _valid_var(
    x: torch.Tensor, window: int | Pair, correction: float, root: bool, with_means: bool, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    n, c, h, w = x.shape
    kh, kw = clamp_window(as_pair(window, "window"), (h, w))
    if (kh, kw) == (h, w):  # one window: the map's own statistic
        whole = _whole_var(x, correction)
        whole = whole.sqrt() if root else whole
        return (whole * scale if scale != 1 else whole), None, whole
    area = h * w
    totals = torch.empty(n * c, 2, dtype=torch.float64)
    kernel = x.device.type == "cpu" and area > correction
    means = None
    if kernel and with_means and x.dtype in (torch.float32, torch.float64):
        means = torch.empty((n, c, h - kh + 1, w - kw + 1), dtype=x.dtype)
    valid = (
        _fused_local_var(x, window, correction, root, valid_only=True, totals=totals, means=means, scale=scale)
        if kernel else None
    )
    if valid is None:
        whole = torch.std if root else torch.var
        valid = valid_local_var(x, window, correction, root)
        return (valid.mul_(scale) if scale != 1 else valid), None, whole(x, dim=(2, 3), correction=correction, keepdim=True)
    # Sums of d = x - centre: var = (sum d^2 - (sum d)^2 / area) / (area - correction), centre near the mean.
    var = ((totals[:, 1] - totals[:, 0].square() / area) / (area - correction)).clamp_min(0)
    return valid, means, (var.sqrt() if root else var).view(n, c, 1, 1).to(x.dtype)


def valid_local_var(x: torch.Tensor, window: int | Pair, correction: float = 1.0, root: bool = False) -> torch.Tensor:
    """Variances (standard deviations with ``root``) of every window lying fully inside the map:
    :func:`local_var` / :func:`local_std` before the edge replication (``tlc.ops.pool.replicate_to``
    completes them). Layers applied per pixel to this smaller map and then replicated give the
    same result as on the full map, for less work.

    Args:
        x: (N, C, H, W) floating tensor.
        window: (kh, kw) in pixels of ``x``; clamped to the map.
        correction: subtracted from the window's pixel count in the divisor (1: unbiased).
        root: the square root (taken before rounding to the dtype of ``x``).

    Returns:
        (N, C, H - kh + 1, W - kw + 1) tensor, dtype of ``x``.
    """
    fused = _fused_local_var(x, window, correction, root, valid_only=True)
    if fused is not None:
        return fused
    var = _valid_local_var(x, window, correction)
    return (var.sqrt() if root else var).to(x.dtype)


def local_var(x: torch.Tensor, window: int | Pair, correction: float = 1.0) -> torch.Tensor:
    """Variance over a local window around each pixel (windows placed as in :func:`tlc.local_mean`).

    Sums are taken in float64 on values centred by the map's global mean, so offsets do not cost
    digits. A window covering the map gives ``torch.var(x, (2, 3), keepdim=True, correction=...)``
    broadcast to (N, C, H, W).

    Args:
        x: (N, C, H, W) floating tensor.
        window: (kh, kw) in pixels of ``x``; clamped to the map.
        correction: subtracted from the window's pixel count in the divisor (1: unbiased). With no
            degrees of freedom left (window area <= correction) the result is inf, or nan where
            the window is constant, as with torch.

    Returns:
        (N, C, H, W) tensor, dtype of ``x``. NaN or inf in ``x`` makes the whole map NaN (the
        centring uses the map's mean).
    """
    fused = _fused_local_var(x, window, correction, root=False)
    if fused is not None:
        return fused
    var = _valid_local_var(x, window, correction)
    return replicate_to(var.to(x.dtype), x.shape[-2:])


def local_std(x: torch.Tensor, window: int | Pair, correction: float = 1.0) -> torch.Tensor:
    """Standard deviation over a local window around each pixel: the square root of
    :func:`local_var` (taken in float64 before rounding). A window covering the map gives
    ``torch.std(x, (2, 3), keepdim=True, correction=...)`` broadcast to (N, C, H, W).

    Args:
        x: (N, C, H, W) floating tensor.
        window: (kh, kw) in pixels of ``x``; clamped to the map.
        correction: subtracted from the window's pixel count in the divisor (1: unbiased).

    Returns:
        (N, C, H, W) tensor, dtype of ``x``.
    """
    fused = _fused_local_var(x, window, correction, root=True)
    if fused is not None:
        return fused
    std = _valid_local_var(x, window, correction).sqrt()
    return replicate_to(std.to(x.dtype), x.shape[-2:])
