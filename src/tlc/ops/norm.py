"""Local instance and group normalisation: statistics over a window instead of the whole map; and
the layer norm of values laid out in columns (pooled values' per-window vectors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import Pair, accumulation_dtype, as_pair, check_feature_map, compute_dtype, tracing
from ._norm_kernels import fused_column_layer_norm, fused_group_norm_applies, fused_local_group_norm
from .pool import clamp_window, opaque_local_mean, opaque_local_mean_applies, replicate_to, valid_local_mean


def local_group_norm(
    x: torch.Tensor,
    num_groups: int,
    window: int | Pair,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Group norm whose mean and variance are taken over a local window of each group.

    For every pixel, the statistics cover the group's channels and the window around the pixel
    (placed as in :func:`tlc.local_mean`): ``mean = E[x]``, ``var = E[x^2] - E[x]^2`` clamped at 0,
    ``(x - mean) / sqrt(var + eps)``, then ``weight``/``bias`` per channel. Statistics are computed
    in float64 on values centred near the group's mean (its mean; in the CPU kernel the mean of 32
    sampled rows), so the variance keeps its digits even for inputs far from zero. A group holding
    NaN or an infinity is NaN throughout, as in torch. A window covering the map is
    ``torch.nn.functional.group_norm`` itself (its bits: a converted model at its training size
    computes what the original did).

    Args:
        x: (N, C, H, W) floating tensor; C divisible by ``num_groups``.
        num_groups: number of channel groups G.
        window: (kh, kw) in pixels of ``x``; clamped to the map.
        weight, bias: optional (C,) affine parameters.
        eps: added to the variance.

    Returns:
        (N, C, H, W) tensor, same dtype as ``x``.
    """
    check_feature_map(x)
    n, c, h, w = x.shape
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"channels ({c}) must be divisible by num_groups ({num_groups})")
    kh, kw = clamp_window(as_pair(window, "window"), (h, w))
    if not tracing() and (kh, kw) == (h, w) and h * w > 1:  # (torch refuses a 1x1 map)
        # One window: torch's own op, so that a converted model keeps the original's bits there.
        return F.group_norm(x, num_groups, _like(weight, x), _like(bias, x), eps)
    if fused_group_norm_applies(x, weight, bias) and not opaque_local_mean_applies(x):
        return fused_local_group_norm(x, num_groups, (kh, kw), weight, bias, eps)
    acc = accumulation_dtype(x)
    groups = x.reshape(n, num_groups, c // num_groups, h, w)

    # Centre on the group's mean (rounded to the working dtype, so that x - center below is exact
    # for x near it): E[x^2] - E[x]^2 then cancels far fewer digits.
    work = compute_dtype(x)
    center = groups.mean(dim=(2, 3, 4), keepdim=True, dtype=acc).to(work)
    centred = groups.to(acc) - center.to(acc)
    if c == num_groups:
        first, second = centred[:, :, 0], centred[:, :, 0].square()
    else:
        first, second = centred.mean(dim=2), centred.square().mean(dim=2)
    del centred
    if opaque_local_mean_applies(first):  # torch.compile: per-pixel statistics, one opaque op each
        mean = opaque_local_mean(first, as_pair(window, "window"))  # (N, G, H, W), relative to center
        var = (opaque_local_mean(second, as_pair(window, "window")) - mean.square()).clamp_min_(0)
        rstd = torch.rsqrt(var + eps).to(work).unsqueeze(2)
        mean = mean.to(work).unsqueeze(2)
    else:
        # (N, G, H-kh+1, W-kw+1), relative to center; first and second are already in acc, so
        # these are sums in acc (on the CPU the fused kernel: 10x faster than prefix sums here).
        mean = valid_local_mean(first, (kh, kw))
        var = (valid_local_mean(second, (kh, kw)) - mean.square()).clamp_min_(0)
        rstd = replicate_to(torch.rsqrt(var + eps).to(work), (h, w)).unsqueeze(2)
        mean = replicate_to(mean.to(work), (h, w)).unsqueeze(2)
    out = (((groups.to(work) - center) - mean) * rstd).reshape(n, c, h, w)
    if weight is not None:
        out = out * weight.to(work).view(1, c, 1, 1)
    if bias is not None:
        out = out + bias.to(work).view(1, c, 1, 1)
    return out.to(x.dtype)


def local_instance_norm(
    x: torch.Tensor,
    window: int | Pair,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Instance norm whose mean and variance are taken over a local window of each channel.

    Equals :func:`local_group_norm` with one group per channel; a window covering the map is
    ``torch.nn.functional.instance_norm`` itself.

    Args:
        x: (N, C, H, W) floating tensor.
        window: (kh, kw) in pixels of ``x``; clamped to the map.
        weight, bias: optional (C,) affine parameters.
        eps: added to the variance.

    Returns:
        (N, C, H, W) tensor, same dtype as ``x``.
    """
    check_feature_map(x)
    size = tuple(x.shape[-2:])
    if not tracing() and clamp_window(as_pair(window, "window"), size) == size and size[0] * size[1] > 1:
        return F.instance_norm(x, weight=_like(weight, x), bias=_like(bias, x), eps=eps)  # as local_group_norm
    return local_group_norm(x, x.shape[1], window, weight, bias, eps)


def _like(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """An affine parameter in ``x``'s dtype (torch's norms take one dtype)."""
    return None if t is None else t.to(x.dtype)


def layer_norm_columns(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """Each column of ``x`` normalised over its rows: ``F.layer_norm(x.t(), (D,), weight, bias,
    eps).t()``, computed in the columns' layout.

    Per-window vectors laid out channel first (GCNet's ``LayerNorm([C, 1, 1])`` on a pooled value
    at every window position) are such columns; torch's layer norm would write them in rows.

    Args:
        x: (D, P) floating tensor, P columns of D values.
        weight, bias: D values each (any shape holding them), or None.
        eps: added to the variance.

    Returns:
        (D, P), dtype of ``x``. On the CPU (float32 / float64, no autograd) one fused pass per
        block of columns, in float64 rounded once; elsewhere torch ops (the means as products:
        torch's ``var_mean`` across rows took 45 ms for 8 x 300k).
    """
    fused = fused_column_layer_norm(x, weight, bias, eps)
    if fused is not None:
        return fused
    # Out of place: this path is the one autograd takes.
    average = x.new_full((1, x.shape[0]), 1.0 / x.shape[0])
    centred = x - average @ x
    out = centred * torch.rsqrt(average @ centred.square() + eps)
    if weight is not None:
        out = out * weight.reshape(-1, 1)
    if bias is not None:
        out = out + bias.reshape(-1, 1)
    return out
