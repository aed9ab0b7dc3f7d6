"""Restoration networks, one file each, with the reference's state_dict key names."""

from .baseline import Baseline
from .nafnet import NAFNet

__all__ = ["Baseline", "NAFNet"]
