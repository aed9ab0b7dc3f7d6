"""Local normalisations as thin modules. The window is fixed when a module is built and shown in repr.

Each module keeps the parameter names of the module it replaces (``weight``, ``bias``), so a
converted model has the same state_dict keys as the original.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import local_group_norm, local_instance_norm
from ..ops._common import Pair, as_pair


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
        return local_instance_norm(x, self.window, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, window={self.window}, eps={self.eps}, affine={self.affine}"
