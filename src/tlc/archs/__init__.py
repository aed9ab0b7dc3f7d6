"""Restoration networks, one file each, with the reference's state_dict key names."""

from .baseline import Baseline
from .hinet import HINet
from .mprnet import MPRNet
from .nafnet import NAFNet
from .restormer import Restormer

__all__ = ["Baseline", "HINet", "MPRNet", "NAFNet", "Restormer"]
