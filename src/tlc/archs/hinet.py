"""HINet (Chen et al., CVPRW 2021, "HINet: Half Instance Normalization Network for Image Restoration").

Two U-Nets in sequence. The first restores the image once; a Supervised Attention Module (SAM)
turns its last features into an intermediate image and attention-weighted features for the
second. The second U-Net's encoder also takes the first one's encoder and decoder features
(cross-stage feature fusion, CSFF). In the encoder levels chosen by ``hin_position_left`` ..
``hin_position_right``, the first conv of each block is followed by a Half Instance Norm: an
``nn.InstanceNorm2d`` on the first half of the channels, the other half passing unchanged. That
instance norm is the global op TLC makes local. State_dict keys follow the released checkpoints
(e.g. ``down_path_1.3.norm.weight``, ``up_path_2.0.conv_block.conv_1.weight``).
"""

from __future__ import annotations

import torch
from torch import nn

from .nafnet import pad_to_multiple


class HINBlock(nn.Module):
    """Two 3x3 convs with LeakyReLU plus a 1x1-conv shortcut, optionally with Half Instance Norm,
    CSFF inputs and a strided-conv downsampling.

    (N, in_size, H, W) -> (N, out_size, H, W), or with ``downsample`` the pair
    (downsampled (N, out_size, H/2, W/2), full-resolution (N, out_size, H, W)).
    """

    def __init__(
        self,
        in_size: int,
        out_size: int,
        downsample: bool,
        relu_slope: float,
        use_csff: bool = False,
        use_hin: bool = False,
    ) -> None:
        super().__init__()
        self.identity = nn.Conv2d(in_size, out_size, 1)
        self.conv_1 = nn.Conv2d(in_size, out_size, 3, padding=1)
        self.relu_1 = nn.LeakyReLU(relu_slope)
        self.conv_2 = nn.Conv2d(out_size, out_size, 3, padding=1)
        self.relu_2 = nn.LeakyReLU(relu_slope)
        self.use_csff = use_csff and downsample
        if self.use_csff:
            self.csff_enc = nn.Conv2d(out_size, out_size, 3, padding=1)
            self.csff_dec = nn.Conv2d(out_size, out_size, 3, padding=1)
        self.use_hin = use_hin
        if use_hin:
            # A plain InstanceNorm2d, so generic converters (tlc's instance-norm rule) find it.
            self.norm = nn.InstanceNorm2d(out_size // 2, affine=True)
        self.downsample = nn.Conv2d(out_size, out_size, 4, stride=2, padding=1, bias=False) if downsample else None

    def forward(
        self, x: torch.Tensor, enc: torch.Tensor | None = None, dec: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.conv_1(x)
        if self.use_hin:
            normed, kept = out.chunk(2, dim=1)
            out = torch.cat([self.norm(normed), kept], dim=1)
        out = self.relu_2(self.conv_2(self.relu_1(out)))
        out = out + self.identity(x)
        if enc is not None and dec is not None:
            if not self.use_csff:
                raise ValueError("this block was built without cross-stage feature fusion (use_csff=False)")
            out = out + self.csff_enc(enc) + self.csff_dec(dec)
        if self.downsample is not None:
            return self.downsample(out), out
        return out


class HINUpBlock(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip, then a :class:`HINBlock`.

    x (N, in_size, H, W) and bridge (N, out_size, 2H, 2W) -> (N, out_size, 2H, 2W);
    ``in_size`` is twice ``out_size``.
    """

    def __init__(self, in_size: int, out_size: int, relu_slope: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_size, out_size, 2, stride=2)
        self.conv_block = HINBlock(in_size, out_size, False, relu_slope)

    def forward(self, x: torch.Tensor, bridge: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([self.up(x), bridge], dim=1))


class SAM(nn.Module):
    """Supervised Attention Module between the two stages.

    features (N, C, H, W) and the input image (N, img_channels, H, W) -> (attended features
    (N, C, H, W), stage-1 image (N, img_channels, H, W)).
    """

    def __init__(self, n_feat: int, img_channels: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(n_feat, n_feat, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(n_feat, img_channels, kernel_size, padding=pad)
        self.conv3 = nn.Conv2d(img_channels, n_feat, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.conv2(x) + image
        attention = torch.sigmoid(self.conv3(img))
        return self.conv1(x) * attention + x, img


class HINet(nn.Module):
    """HINet. Keyword names and defaults are the reference's.

    Input (N, in_chn, H, W) of any size -> list of two images of the same shape:
    [stage-1 output, final output]. The input is zero-padded at the bottom and right to a multiple
    of ``padder_size`` (0: no padding) and the outputs are cropped back.

    Args:
        in_chn: image channels.
        wf: channels at the first level; level i has ``2**i * wf``.
        depth: number of encoder levels (``depth - 1`` downsamplings).
        relu_slope: LeakyReLU negative slope.
        hin_position_left, hin_position_right: encoder levels (inclusive) that use Half Instance Norm.
        padder_size: the multiple the input is padded to.
        padding_mode: border handling of every padded convolution, ``"zeros"`` as in the
            reference, or ``"reflect"`` / ``"replicate"`` (not in the reference; tlc's own
            ``tiny-hinet`` uses ``"reflect"``: zero padding marks a small training crop's border
            in every feature map, and instance norm trained on 48-pixel crops comes to rely on
            that mark, which whole images do not have). Weights do not depend on it.
    """

    def __init__(
        self,
        in_chn: int = 3,
        wf: int = 64,
        depth: int = 5,
        relu_slope: float = 0.2,
        hin_position_left: int = 0,
        hin_position_right: int = 4,
        padder_size: int = 16,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"padding_mode must be zeros, reflect or replicate, got {padding_mode!r}")
        self.depth = depth
        self.padder_size = padder_size
        self.down_path_1 = nn.ModuleList()
        self.down_path_2 = nn.ModuleList()
        prev = wf
        for i in range(depth):
            use_hin = hin_position_left <= i <= hin_position_right
            down = i + 1 < depth
            self.down_path_1.append(HINBlock(prev, 2**i * wf, down, relu_slope, use_hin=use_hin))
            self.down_path_2.append(HINBlock(prev, 2**i * wf, down, relu_slope, use_csff=down, use_hin=use_hin))
            prev = 2**i * wf
        self.conv_01 = nn.Conv2d(in_chn, wf, 3, padding=1)
        self.conv_02 = nn.Conv2d(in_chn, wf, 3, padding=1)
        self.up_path_1 = nn.ModuleList()
        self.up_path_2 = nn.ModuleList()
        self.skip_conv_1 = nn.ModuleList()
        self.skip_conv_2 = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            out = 2**i * wf
            self.up_path_1.append(HINUpBlock(prev, out, relu_slope))
            self.up_path_2.append(HINUpBlock(prev, out, relu_slope))
            self.skip_conv_1.append(nn.Conv2d(out, out, 3, padding=1))
            self.skip_conv_2.append(nn.Conv2d(out, out, 3, padding=1))
            prev = out
        self.sam12 = SAM(prev, in_chn)
        self.cat12 = nn.Conv2d(2 * prev, prev, 1)
        self.last = nn.Conv2d(prev, in_chn, 3, padding=1)
        for module in self.modules():  # after construction: the blocks keep the reference's signatures
            if isinstance(module, nn.Conv2d) and module.padding != (0, 0):
                module.padding_mode = padding_mode

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        image = pad_to_multiple(x, self.padder_size) if self.padder_size else x

        # Stage 1: a plain U-Net; keep encoder skips and decoder outputs for stage 2's CSFF.
        x1 = self.conv_01(image)
        encs: list[torch.Tensor] = []
        for block in self.down_path_1[:-1]:
            x1, skip = block(x1)
            encs.append(skip)
        x1 = self.down_path_1[-1](x1)
        decs: list[torch.Tensor] = []
        for up, skip_conv, skip in zip(self.up_path_1, self.skip_conv_1, reversed(encs)):
            x1 = up(x1, skip_conv(skip))
            decs.append(x1)
        sam_feature, out_1 = self.sam12(x1, image)

        # Stage 2: fuse the SAM features in, then a U-Net whose encoder also sees stage 1's features.
        x2 = self.cat12(torch.cat([self.conv_02(image), sam_feature], dim=1))
        skips: list[torch.Tensor] = []
        for block, enc, dec in zip(self.down_path_2[:-1], encs, reversed(decs)):
            x2, skip = block(x2, enc, dec)
            skips.append(skip)
        x2 = self.down_path_2[-1](x2)
        for up, skip_conv, skip in zip(self.up_path_2, self.skip_conv_2, reversed(skips)):
            x2 = up(x2, skip_conv(skip))
        out_2 = self.last(x2) + image
        return [out_1[:, :, :h, :w], out_2[:, :, :h, :w]]
