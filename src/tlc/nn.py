"""Thin modules around the local ops. The window is fixed when a module is built and shown in repr.

Each module keeps the parameter names of the module it replaces (``weight``, ``bias``), so a
converted model has the same state_dict keys as the original.
"""

from __future__ import annotations

import torch
from torch import nn

from .ops import local_axis_mean, local_group_norm, local_max, local_mean, local_mean_strided
from .ops._common import Pair, as_pair, check_feature_map
from .ops.pool import opaque_local_mean_applies
from .ops.gate import apply_pointwise
from .ops.pool import replicate_to, valid_local_mean


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


def _affine_parameters(module: nn.Module, channels: int, affine: bool) -> None:
    """``weight``/``bias`` per channel as torch's norms name them (None when not affine)."""
    if affine:
        module.weight = nn.Parameter(torch.ones(channels))
        module.bias = nn.Parameter(torch.zeros(channels))
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


class LocalGroupNorm(nn.Module):
    """Group norm with statistics over a local window (:func:`tlc.local_group_norm`).

    Same constructor arguments and parameters as ``nn.GroupNorm``, plus ``window`` (kh, kw) in
    feature pixels. Input and output (N, C, H, W).
    """

    def __init__(
        self, num_groups: int, num_channels: int, window: int | Pair, eps: float = 1e-5, affine: bool = True
    ) -> None:
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.window = as_pair(window, "window")
        self.eps = eps
        self.affine = affine
        _affine_parameters(self, num_channels, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_group_norm(x, self.num_groups, self.window, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, window={self.window}, eps={self.eps}, affine={self.affine}"


class LocalInstanceNorm2d(nn.Module):
    """Instance norm with statistics over a local window (:func:`tlc.local_instance_norm`).

    Same arguments and parameters as ``nn.InstanceNorm2d`` without running statistics, plus
    ``window`` (kh, kw) in feature pixels. Input and output (N, C, H, W).
    """

    def __init__(self, num_features: int, window: int | Pair, eps: float = 1e-5, affine: bool = False) -> None:
        super().__init__()
        self.num_features = num_features
        self.window = as_pair(window, "window")
        self.eps = eps
        self.affine = affine
        _affine_parameters(self, num_features, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input (N, {self.num_features}, H, W), got {tuple(x.shape)}")
        return local_group_norm(x, self.num_features, self.window, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, window={self.window}, eps={self.eps}, affine={self.affine}"


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
        y = apply_pointwise(valid_local_mean(x, pool.window), layers)
        return replicate_to(y, x.shape[-2:])


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
