"""Local average pooling: the stand-in for global average pooling at test time.

Semantics (those of the TLC reference): the mean over every k-window lying fully inside the map
(stride 1), edge-replicated back to the input size with ``(k-1)//2`` rows/columns before and
``k//2`` after. Put differently, each pixel takes the mean of a k-window roughly centred on it,
shifted to lie inside the map. A window at least the map's size on an axis covers that whole axis;
covering both axes gives the global mean. Windows are clamped to the map, never padded.

Sums are accumulated in float64 (see ``accumulation_dtype``), so the result is exact to the output
dtype, at O(HW) cost whatever the window: on the CPU without autograd by a fused kernel
(``_kernels``), otherwise by prefix sums taken one axis at a time (differentiable, any device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import Pair, accumulation_dtype, as_pair, check_feature_map, tracing
from ._kernels import fused_local_mean, fused_local_mean_available, plane_sums
from ._triton import triton_applies, triton_local_mean, triton_local_mean_applies, triton_spread


def sliding_sum(x: torch.Tensor, k: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Sums of ``k`` consecutive entries along ``dim`` (valid positions only), in ``dtype``.

    Output length along ``dim`` is ``L - k + 1``. Uses one prefix sum and one difference.
    """
    length = x.shape[dim]
    if tracing():  # export/compile: one branch-free form, valid whatever the (symbolic) length
        prefix = torch.cumsum(x, dim=dim, dtype=dtype)
        prefix = torch.cat([torch.zeros_like(prefix.narrow(dim, 0, 1)), prefix], dim=dim)
        return prefix.narrow(dim, k, length - k + 1) - prefix.narrow(dim, 0, length - k + 1)
    if k == length:
        return x.sum(dim=dim, keepdim=True, dtype=dtype)
    if k == 1:
        return x.to(dtype)
    prefix = torch.cumsum(x, dim=dim, dtype=dtype)
    out = prefix.narrow(dim, k - 1, length - k + 1).clone()
    out.narrow(dim, 1, length - k).sub_(prefix.narrow(dim, 0, length - k))
    return out


def clamp_window(window: int | Pair, size: tuple[int, int]) -> Pair:
    """The window actually used on a map of ``size`` (H, W): each axis clamped to the map."""
    kh, kw = as_pair(window, "window")
    # sym_min is min for ints; on the symbolic sizes of export/compile it stays symbolic.
    return torch.sym_min(kh, size[0]), torch.sym_min(kw, size[1])


def window_sums(x: torch.Tensor, window: int | Pair, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sums over every window lying fully inside the map.

    Args:
        x: (N, C, H, W) floating tensor.
        window: (kh, kw) in pixels of ``x``; clamped to (H, W).
        dtype: accumulation and output dtype; default float64 (float32 on MPS).

    Returns:
        (N, C, H - kh + 1, W - kw + 1) tensor of sums in ``dtype``; (N, C, 1, 1) when the window
        covers the map.
    """
    check_feature_map(x)
    kh, kw = clamp_window(window, x.shape[-2:])
    dtype = dtype or accumulation_dtype(x)
    if not tracing() and kh == x.shape[-2] and kw == x.shape[-1]:
        return x.sum(dim=(-2, -1), keepdim=True, dtype=dtype)
    if dtype == torch.float64 and triton_local_mean_applies(x):  # CUDA: the kernels' float64 sums
        return triton_local_mean(x, (kh, kw), valid_only=True, sums=True, dtype=torch.float64)
    # Along W first: the map shrinks to W - kw + 1 columns before the second prefix sum.
    return sliding_sum(sliding_sum(x, kw, -1, dtype), kh, -2, dtype)


def replicate_to(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Edge-replicate a map of valid-window values back to ``size`` (H, W).

    A valid map of height ``H - k + 1`` gets ``(k-1)//2`` rows on top and ``k//2`` below (likewise
    for columns), which centres each window on the pixel it is assigned to.
    """
    h, w = size
    vh, vw = valid.shape[-2:]
    if tracing():  # export/compile: no branch on the (symbolic) sizes; pads may be zero
        left, top = (w - vw) // 2, (h - vh) // 2  # after = total - before: provably sums to (h, w)
        return F.pad(valid, (left, w - vw - left, top, h - vh - top), mode="replicate")
    if (vh, vw) == (h, w):
        return valid
    if (vh, vw) == (1, 1):
        return valid.expand(*valid.shape[:-2], h, w).contiguous()
    if triton_applies(valid) and vh <= h and vw <= w:
        return triton_spread(valid, (h, w))  # CUDA: torch's replication pad was 0.28 ms a call on an H200
    pad = ((w - vw) // 2, (w - vw + 1) // 2, (h - vh) // 2, (h - vh + 1) // 2)
    return F.pad(valid, pad, mode="replicate")


def local_mean(x: torch.Tensor, window: int | Pair) -> torch.Tensor:
    """Mean over a local window around each pixel: TLC's replacement for global average pooling.

    Args:
        x: (N, C, H, W) tensor, float16/bfloat16/float32/float64, any H, W >= 1.
        window: (kh, kw) in pixels of ``x`` (an int means square). Each axis is clamped to the map;
            a window covering the whole map gives the global mean at every pixel.

    Returns:
        (N, C, H, W) tensor of local means, same dtype and device as ``x``. Accumulated in float64,
        so the only error is the final rounding to ``x.dtype``.
    """
    check_feature_map(x)
    if opaque_local_mean_applies(x):  # torch.compile: one opaque op, no window-sized shapes
        return opaque_local_mean(x, as_pair(window, "window"))
    return _local_mean_now(x, window)


def _local_mean_now(x: torch.Tensor, window: int | Pair) -> torch.Tensor:
    kh, kw = clamp_window(window, x.shape[-2:])
    if (kh, kw) != tuple(x.shape[-2:]):
        if fused_local_mean_available(x):
            return fused_local_mean(x, (kh, kw))
        if triton_local_mean_applies(x):
            return triton_local_mean(x, (kh, kw))
    return local_mean_by_prefix_sums(x, (kh, kw))


# ----------------------------------------------------------------------------- torch.compile
# ``local_mean`` as one opaque op (``torch.ops.tlc.local_mean``) for ``torch.compile``.
#
# Compiled, the local ops would otherwise be traced into window-dependent shapes (``min(k, H)``);
# with dynamic sizes, Inductor's C++ code generation fails on those combined with a network's own
# padding arithmetic (``Mod``), a PyTorch bug. As a custom op the local mean is a single graph
# node whose output has the input's shape: Dynamo traces through it without a graph break,
# Inductor calls it as an external kernel, and at run time it is the eager :func:`tlc.local_mean`
# (the fused numba kernel on the CPU). It has no autograd formula: where gradients are needed,
# and under ``torch.export`` / ONNX export, the branch-free torch forms are traced instead.

def _local_mean_eager(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    # At run time the op is eager: the fastest path (fused kernel on the CPU) for this input.
    return _local_mean_now(x, (kh, kw))


if hasattr(torch.library, "custom_op") and hasattr(torch.compiler, "is_exporting"):  # torch >= 2.5
    _op = torch.library.custom_op("tlc::local_mean", _local_mean_eager, mutates_args=())

    @_op.register_fake
    def _(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
else:  # pragma: no cover
    _op = None


def opaque_local_mean_applies(x: torch.Tensor) -> bool:
    """Whether :func:`tlc.local_mean` on ``x`` becomes the opaque op: under ``torch.compile``
    (not ``torch.export``), with no gradient to carry."""
    return (
        _op is not None
        and torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


def opaque_local_mean(x: torch.Tensor, window: Pair) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W) local means through ``torch.ops.tlc.local_mean``; ``window``
    (kh, kw) ints, unclamped (the op clamps at run time, so no size enters the graph)."""
    return _op(x, window[0], window[1])


def valid_local_mean(x: torch.Tensor, window: int | Pair) -> torch.Tensor:
    """Means over every window lying fully inside the map: :func:`local_mean` before the edge
    replication (``replicate_to`` completes it). Pointwise layers applied to this smaller map and
    then replicated give the same result as on the full map, for less work.

    Args:
        x: (N, C, H, W) floating tensor.
        window: (kh, kw), clamped to the map.

    Returns:
        (N, C, H - kh + 1, W - kw + 1) tensor, dtype of ``x``.
    """
    check_feature_map(x)
    kh, kw = clamp_window(window, x.shape[-2:])
    if (kh, kw) == tuple(x.shape[-2:]) and not tracing():
        # One window: the map's own mean, as the global pooling computes it (bit for bit), at a
        # sixth of the float64 sum's time.
        return x.mean((2, 3), keepdim=True)
    if fused_local_mean_available(x):
        return fused_local_mean(x, (kh, kw), valid_only=True)
    if triton_local_mean_applies(x):
        return triton_local_mean(x, (kh, kw), valid_only=True)
    return (window_sums(x, (kh, kw)) / (kh * kw)).to(x.dtype)


def valid_local_mean_and_mean(
    x: torch.Tensor, window: int | Pair, out: torch.Tensor | None = None, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`valid_local_mean` and the map's own mean ``x.mean((2, 3), keepdim=True)`` from the
    same pass where the CPU kernel applies (its float64 sums of every row; None elsewhere, where
    torch's own mean is a pass of its own anyway).

    Args:
        x: (N, C, H, W) map.
        window: (kh, kw) in pixels (an int means square), clamped to the map.
        out: optional contiguous (N, C, H - kh + 1, W - kw + 1) tensor of ``x``'s dtype (float32
            or float64) that the CPU kernel writes the windows' means into, and returns; ignored
            where the kernel does not run.
        scale: the windows' means come multiplied by it (in the kernel's pass, rounded once:
            a hand-written sum over H and W made local is the window's mean times H * W); the
            map's mean does not.

    Returns:
        ((N, C, H - kh + 1, W - kw + 1), (N, C, 1, 1) or None), in the dtype of ``x``.
    """
    check_feature_map(x)
    n, c, h, w = x.shape
    kh, kw = clamp_window(window, (h, w))
    if (kh, kw) == (h, w):  # one window: the map's own mean
        whole = x.mean((2, 3), keepdim=True)
        return (whole if scale == 1 else whole * scale), whole
    if not fused_local_mean_available(x):
        valid = valid_local_mean(x, (kh, kw))
        return (valid if scale == 1 else valid * scale), None
    totals = torch.empty(n * c, dtype=torch.float64)
    valid = fused_local_mean(x, (kh, kw), valid_only=True, totals=totals, out=out, scale=scale)
    return valid, (totals / (h * w)).view(n, c, 1, 1).to(x.dtype)


def map_mean(x: torch.Tensor) -> torch.Tensor:
    """The map's own mean (N, C, 1, 1) as :func:`valid_local_mean_and_mean` gives it (to the bit),
    without the windows: from float64 sums rounded once where its CPU kernel applies, else
    ``x.mean((2, 3))``.

    Args:
        x: (N, C, H, W) map.
    """
    check_feature_map(x)
    n, c, h, w = x.shape
    if not fused_local_mean_available(x):
        return x.mean((2, 3), keepdim=True)
    return (plane_sums(x) / (h * w)).view(n, c, 1, 1).to(x.dtype)


def local_mean_by_prefix_sums(x: torch.Tensor, window: int | Pair) -> torch.Tensor:
    """:func:`local_mean` computed with torch ops only (differentiable, any device)."""
    check_feature_map(x)
    kh, kw = clamp_window(window, x.shape[-2:])
    sums = window_sums(x, (kh, kw))
    return replicate_to((sums / (kh * kw)).to(x.dtype), x.shape[-2:])


# The reference's subsampling strides, tried largest first (`fast_imp`).
_STRIDES = (5, 4, 3, 2, 1)


def local_mean_strided(x: torch.Tensor, window: int | Pair, max_stride: int | Pair = 5) -> torch.Tensor:
    """The reference's ``fast_imp`` approximation of :func:`local_mean`. Not exact by design.

    The map is subsampled by a stride r per axis (the largest of 5, 4, 3, 2, 1 that divides the
    size, capped by ``max_stride``), windows of ``k // r`` samples are averaged without the zero
    border of the prefix sums (so each window sits one sample off), the result is upsampled by
    nearest neighbour and edge-replicated. It matches the reference's outputs, not local means.
    Tiny maps where the subsampled window would be empty fall back to the exact :func:`local_mean`.

    Args:
        x: (N, C, H, W) floating tensor.
        window: (kh, kw) in pixels of ``x``.
        max_stride: cap on the stride per axis; ``convert`` sets ``max(1, 5 * h_train // train_h)``.

    Returns:
        (N, C, H, W) tensor, same dtype as ``x``.
    """
    check_feature_map(x)
    kh, kw = as_pair(window, "window")
    cap_h, cap_w = as_pair(max_stride, "max_stride")
    h, w = x.shape[-2:]
    if kh >= h and kw >= w:
        return local_mean(x, (h, w))
    rh = min(cap_h, next(r for r in _STRIDES if h % r == 0))
    rw = min(cap_w, next(r for r in _STRIDES if w % r == 0))
    sub = x[:, :, ::rh, ::rw]
    sh, sw = sub.shape[-2:]
    k1, k2 = min(sh - 1, kh // rh), min(sw - 1, kw // rw)
    if k1 < 1 or k2 < 1:
        return local_mean(x, (kh, kw))
    prefix = torch.cumsum(torch.cumsum(sub, dim=-1, dtype=accumulation_dtype(x)), dim=-2)
    sums = prefix[..., k1:, k2:] - prefix[..., :-k1, k2:] - prefix[..., k1:, :-k2] + prefix[..., :-k1, :-k2]
    valid = (sums / (k1 * k2)).to(x.dtype)
    valid = valid.repeat_interleave(rh, dim=-2).repeat_interleave(rw, dim=-1)
    return replicate_to(valid, (h, w))
