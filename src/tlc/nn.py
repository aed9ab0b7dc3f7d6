"""Thin modules around the local ops. The window is fixed when a module is built and shown in repr.

Each module keeps the parameter names of the module it replaces (``weight``, ``bias``), so a
converted model has the same state_dict keys as the original.
"""

from __future__ import annotations

import torch
from torch import nn

from .ops import local_group_norm, local_mean, local_mean_strided
from .ops._common import Pair, as_pair


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
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

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
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input (N, {self.num_features}, H, W), got {tuple(x.shape)}")
        return local_group_norm(x, self.num_features, self.window, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, window={self.window}, eps={self.eps}, affine={self.affine}"
