"""Pure tensor functions: windows are passed in, nothing is stored."""

from .attention import local_transposed_attention, transposed_attention, window_starts
from .axis import local_axis_mean
from .context import local_softmax_pool
from .extrema import local_axis_max, local_max
from .norm import local_group_norm, local_instance_norm
from .pool import local_mean, local_mean_strided, window_sums
from .stats import local_std, local_var

__all__ = [
    "local_axis_max",
    "local_axis_mean",
    "local_group_norm",
    "local_instance_norm",
    "local_max",
    "local_mean",
    "local_mean_strided",
    "local_softmax_pool",
    "local_std",
    "local_transposed_attention",
    "local_var",
    "transposed_attention",
    "window_sums",
    "window_starts",
]
