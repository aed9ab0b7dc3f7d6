"""The Baseline of the NAFNet paper: NAFNet's U-Net with GELU and a squeeze-excitation channel
attention (global average pooling, 1x1 conv, ReLU, 1x1 conv, Sigmoid). Keys follow the released
checkpoints (e.g. ``encoders.0.0.se.1.weight``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .nafnet import LayerNorm2d, UNetOfBlocks


class BaselineBlock(nn.Module):
    def __init__(self, c: int, dw_expand: int = 1, ffn_expand: int = 2) -> None:
        super().__init__()
        dw = c * dw_expand
        ffn = c * ffn_expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw, c, 1)
        # Squeeze-excitation channel attention: the block's global op.
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dw, dw // 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dw // 2, dw, 1),
            nn.Sigmoid(),
        )
        self.gelu = nn.GELU()
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.se(x))
        y = inp + x * self.beta
        x = self.conv5(self.gelu(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class Baseline(UNetOfBlocks):
    """The NAFNet paper's Baseline. Keyword names are the reference's."""

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        dw_expand: int = 1,
        ffn_expand: int = 2,
    ) -> None:
        super().__init__(
            BaselineBlock, img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums,
            dw_expand=dw_expand, ffn_expand=ffn_expand,
        )
