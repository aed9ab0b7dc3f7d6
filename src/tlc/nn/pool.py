"""Local poolings as thin modules: average, max and strip pooling, and a pooling followed by
per-pixel layers. The window is fixed when a module is built and shown in repr."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import local_axis_mean, local_max, local_mean, local_mean_strided
from ..ops._common import Pair, as_pair, check_feature_map
from ..ops.gate import pooled_pointwise
from ..ops.pool import opaque_local_mean_applies, replicate_to


class LocalAvgPool2d(nn.Module):
    """Local average pooling, the local stand-in for ``nn.AdaptiveAvgPool2d(1)``.

    Input (N, C, H, W) -> output (N, C, H, W): each pixel gets the mean of the window around it
    (:func:`tlc.local_mean`). With ``fast=True`` it uses the reference's subsampled approximation
    (:func:`tlc.ops.local_mean_strided`) instead.

    Args:
        window: (kh, kw) in feature pixels.
        fast: use the approximate ``fast_imp`` algorithm.
        max_stride: cap on the approximation's subsampling stride per axis.
    """

    def __init__(self, window: int | Pair, fast: bool = False, max_stride: int | Pair = 5) -> None:
        super().__init__()
        self.window = as_pair(window, "window")
        self.fast = bool(fast)
        self.max_stride = as_pair(max_stride, "max_stride")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return local_mean_strided(x, self.window, self.max_stride)
        return local_mean(x, self.window)

    def extra_repr(self) -> str:
        if self.fast:
            return f"window={self.window}, fast=True, max_stride={self.max_stride}"
        return f"window={self.window}"


# Layers that act on each pixel on its own: they commute with edge replication.
POINTWISE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Sigmoid, nn.Hardsigmoid, nn.GELU, nn.SiLU, nn.Hardswish,
    nn.Tanh, nn.Identity,
)


def is_pointwise(module: nn.Module) -> bool:
    """True for 1x1 stride-1 unpadded convolutions and per-pixel activations."""
    if isinstance(module, nn.Conv2d):
        return module.kernel_size == (1, 1) and module.stride == (1, 1) and module.padding in ((0, 0), "valid")
    return isinstance(module, POINTWISE_LAYERS)


class LocalPooledSequential(nn.Sequential):
    """``nn.Sequential(AdaptiveAvgPool2d(1), pointwise layers...)`` made local, computed cheaply.

    Channel attention and squeeze-excitation apply 1x1 convs and activations to the pooled map;
    made local, that map is full size. The layers commute with edge replication, so they run on
    the valid windows' means (about a third of a 720p map at the default window) and the result
    is replicated afterwards: the same output as pooling then the layers, for less work.
    Index 0 holds the :class:`LocalAvgPool2d`, the layers keep their indices (and state_dict keys).
    Input (N, C, H, W) -> output (N, C', H, W).
    """

    def __init__(self, pool: LocalAvgPool2d, layers: list[nn.Module]) -> None:
        super().__init__(pool, *layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool, layers = self[0], list(self)[1:]
        # fast: the approximation has no valid-map form. torch.compile: the local mean is one
        # opaque full-size op (tlc.ops.pool), so the layers run on the full map.
        if pool.fast or opaque_local_mean_applies(x):
            y = pool(x)
            for layer in layers:
                y = layer(y)
            return y
        # the layers on the valid windows' means (a narrowing first layer may run before the mean)
        return replicate_to(pooled_pointwise(x, layers, pool.window), x.shape[-2:])


class LocalMaxPool2d(nn.Module):
    """Local max pooling, the local stand-in for ``nn.AdaptiveMaxPool2d(1)`` (CBAM, ``amax``).

    Input (N, C, H, W) -> output (N, C, H, W): each pixel gets the maximum of the window around it
    (:func:`tlc.ops.local_max`).

    Args:
        window: (kh, kw) in feature pixels (an int means square).
    """

    def __init__(self, window: int | Pair) -> None:
        super().__init__()
        self.window = as_pair(window, "window")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_max(x, self.window)

    def extra_repr(self) -> str:
        return f"window={self.window}"


class LocalStripAvgPool2d(nn.Module):
    """Local strip pooling, the local stand-in for coordinate attention's strip pools:
    ``nn.AdaptiveAvgPool2d((None, 1))`` (a mean over W) with ``dim=-1``, ``nn.AdaptiveAvgPool2d((1,
    None))`` (a mean over H) with ``dim=-2``.

    Input (N, C, H, W) -> output (N, C, H, W): each pixel gets the mean of the ``window`` entries
    of its row (``dim=-1``) or column (``dim=-2``) around it (:func:`tlc.ops.local_axis_mean`).

    Args:
        window: window length in feature pixels along ``dim``.
        dim: -1 (or 3) to average along W, -2 (or 2) to average along H.
    """

    def __init__(self, window: int, dim: int) -> None:
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        if dim not in (-1, -2, 2, 3):
            raise ValueError(f"dim must be -1 (W) or -2 (H), got {dim!r}")
        self.window = window
        self.dim = dim - 4 if dim >= 0 else dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x)
        return local_axis_mean(x, self.window, self.dim)

    def extra_repr(self) -> str:
        return f"window={self.window}, dim={self.dim}"
