"""Pure tensor functions: windows are passed in, nothing is stored."""

from .attention import local_transposed_attention, transposed_attention, window_starts
from .norm import local_group_norm, local_instance_norm
from .pool import local_mean, local_mean_strided, window_sums

__all__ = [
    "local_group_norm",
    "local_instance_norm",
    "local_mean",
    "local_mean_strided",
    "local_transposed_attention",
    "transposed_attention",
    "window_sums",
    "window_starts",
]
