"""Local modules: thin wrappers around :mod:`tlc.ops` whose window is fixed at construction and
shown in repr. They keep the parameter names of the modules they replace."""

from .attention import LocalTransposedAttention
from .norm import LocalGroupNorm, LocalInstanceNorm2d
from .pool import LocalAvgPool2d, LocalMaxPool2d, LocalPooledSequential, LocalStripAvgPool2d, is_pointwise

__all__ = [
    "LocalAvgPool2d",
    "LocalGroupNorm",
    "LocalInstanceNorm2d",
    "LocalMaxPool2d",
    "LocalPooledSequential",
    "LocalStripAvgPool2d",
    "LocalTransposedAttention",
    "is_pointwise",
]
