"""Restoration networks, one file each, with the reference's state_dict key names.

:func:`build` makes one by name with the reference's constructor keywords, so a published config
can be used as it is::

    model = tlc.archs.build("NAFNet", width=64, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1,
                            dec_blk_nums=[1, 1, 1, 1])
"""

from __future__ import annotations

import inspect

from torch import nn

from .baseline import Baseline
from .hinet import HINet
from .mprnet import MPRNet
from .nafnet import NAFNet
from .restormer import Restormer
from .unet import UNet

#: Architecture name (as in the reference configs) -> class.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "NAFNet": NAFNet,
    "Baseline": Baseline,
    "HINet": HINet,
    "MPRNet": MPRNet,
    "Restormer": Restormer,
    "UNet": UNet,  # the small study network (plain, instance norm or squeeze-excitation)
}


def build(arch: str, **config: object) -> nn.Module:
    """Build architecture ``arch`` (e.g. "NAFNet") with the reference's keyword arguments.

    Names are matched case-insensitively; an unknown name or keyword raises a ValueError that
    lists the valid ones (a typo is never silently ignored).
    """
    by_lower = {name.lower(): cls for name, cls in ARCHITECTURES.items()}
    cls = by_lower.get(arch.lower())
    if cls is None:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        valid = ", ".join(p for p in accepted if p != "self")
        raise ValueError(f"{cls.__name__} got unknown arguments {unknown}; it accepts: {valid}")
    return cls(**config)


__all__ = ["ARCHITECTURES", "Baseline", "HINet", "MPRNet", "NAFNet", "Restormer", "UNet", "build"]
