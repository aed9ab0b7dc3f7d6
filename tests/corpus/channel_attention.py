"""Channel attention as real networks write it: pooled gates with 1x1 convs or Linear layers, max
pools, strip pools, hand-written means and standard deviations, 1-D convs over channels,
selective-kernel fusion and softmax context pooling. Each class is written here from its paper's
description and its authors' code (named in the docstring); the networks around them are small.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def conv(cin: int, cout: int, k: int = 3, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias)


# ----------------------------------------------------------------------------- a small U-shaped shell


class ResBlock(nn.Module):
    """conv-ReLU-conv, then the attention module ``att``, plus the input (RCAB-style)."""

    def __init__(self, c: int, att: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(c, c), nn.ReLU(inplace=True), conv(c, c))
        self.att = att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.att(self.body(x))


class UShell(nn.Module):
    """Two stride-2 levels (factor 4) around five attention blocks: enc1, enc2, mid, dec2, dec1.

    Widths c, 2c, 2c. Any size that is a multiple of 4. (N, 3, H, W) -> (N, 3, H, W).
    """

    def __init__(self, att: Callable[[int], nn.Module], c: int = 8) -> None:
        super().__init__()
        self.head = conv(3, c)
        self.enc1 = ResBlock(c, att(c))
        self.down1 = nn.Conv2d(c, 2 * c, 2, 2)
        self.enc2 = ResBlock(2 * c, att(2 * c))
        self.down2 = nn.Conv2d(2 * c, 2 * c, 2, 2)
        self.mid = ResBlock(2 * c, att(2 * c))
        self.up2 = nn.Sequential(nn.Conv2d(2 * c, 8 * c, 1), nn.PixelShuffle(2))
        self.dec2 = ResBlock(2 * c, att(2 * c))
        self.up1 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 1), nn.PixelShuffle(2))
        self.dec1 = ResBlock(c, att(c))
        self.tail = conv(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(self.head(x))
        e2 = self.enc2(self.down1(e1))
        m = self.mid(self.down2(e2))
        d2 = self.dec2(self.up2(m) + e2)
        d1 = self.dec1(self.up1(d2) + e1)
        return x + self.tail(d1)


#: the attention blocks of a :class:`UShell`
SHELL_BLOCKS = ("enc1", "enc2", "mid", "dec2", "dec1")


# ----------------------------------------------------------------------------- RCAN (conv SE, in-place input)


class MeanShift(nn.Conv2d):
    """EDSR/RCAN's fixed 1x1 convolution adding (sign=+1) or subtracting (-1) the DIV2K RGB mean."""

    def __init__(self, rgb_range: float, sign: int) -> None:
        super().__init__(3, 3, 1)
        mean = torch.tensor([0.4488, 0.4371, 0.4040])
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * mean)
        for p in self.parameters():
            p.requires_grad = False


class CALayer(nn.Module):
    """RCAN's (Zhang et al. ECCV 2018) and MPRNet's channel attention: x * conv_du(avg_pool(x))."""

    def __init__(self, c: int, reduction: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(c, c // reduction, 1, bias=bias), nn.ReLU(inplace=True),
            nn.Conv2d(c // reduction, c, 1, bias=bias), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x)
        y = self.conv_du(y)
        return x * y


class RCAB(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(c, c), nn.ReLU(inplace=True), conv(c, c), CALayer(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualGroup(nn.Module):
    def __init__(self, c: int, blocks: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*[RCAB(c) for _ in range(blocks)], conv(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class RCAN(nn.Module):
    """RCAN (Zhang et al. ECCV 2018; spandrel's arch), scale 1: residual groups of channel-attention
    blocks between MeanShift convs; like spandrel's it scales its input in place (``x.mul_``)."""

    def __init__(self, c: int = 16, groups: int = 2, blocks: int = 2, rgb_range: float = 255.0) -> None:
        super().__init__()
        self.rgb_range = rgb_range
        self.sub_mean = MeanShift(rgb_range, -1)
        self.head = conv(3, c)
        self.body = nn.Sequential(*[ResidualGroup(c, blocks) for _ in range(groups)], conv(c, c))
        self.tail = conv(c, 3)
        self.add_mean = MeanShift(rgb_range, +1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sub_mean(x.mul_(self.rgb_range))
        x = self.head(x)
        x = self.body(x) + x
        return self.add_mean(self.tail(x)) / self.rgb_range


RCAN_SITES = tuple(f"body.{g}.body.{b}.body.3" for g in range(2) for b in range(2))


# ----------------------------------------------------------------------------- MPRNet


class CAB(nn.Module):
    """MPRNet's channel attention block: conv-PReLU-conv, CALayer, plus the input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(c, c, bias=False), nn.PReLU(), conv(c, c, bias=False))
        self.CA = CALayer(c, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.CA(self.body(x))


class DownSample(nn.Module):
    def __init__(self, c: int, extra: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
                                  nn.Conv2d(c, c + extra, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class SkipUpSample(nn.Module):
    def __init__(self, c: int, extra: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(c + extra, c, 1, bias=False))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x) + skip


class MPRNetStage(nn.Module):
    """One MPRNet (Zamir et al. CVPR 2021) encoder-decoder stage with CABs at two levels."""

    def __init__(self, c: int = 12, extra: int = 4) -> None:
        super().__init__()
        self.shallow = nn.Sequential(conv(3, c, bias=False), CAB(c))
        self.encoder_level1 = nn.Sequential(CAB(c))
        self.down12 = DownSample(c, extra)
        self.encoder_level2 = nn.Sequential(CAB(c + extra))
        self.decoder_level2 = nn.Sequential(CAB(c + extra))
        self.up21 = SkipUpSample(c, extra)
        self.decoder_level1 = nn.Sequential(CAB(c))
        self.tail = conv(c, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.encoder_level1(self.shallow(x))
        e2 = self.encoder_level2(self.down12(e1))
        d2 = self.decoder_level2(e2)
        d1 = self.decoder_level1(self.up21(d2, e1))
        return x + self.tail(d1)


MPRNET_SITES = ("shallow.1.CA", "encoder_level1.0.CA", "encoder_level2.0.CA", "decoder_level2.0.CA",
                "decoder_level1.0.CA")


# ----------------------------------------------------------------------------- NAFNet


class LayerNormFunction(torch.autograd.Function):
    """NAFNet's LayerNorm2d as its authors wrote it: an autograd Function, statistics over channels."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # noqa: ANN001, ANN205
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + eps).sqrt()
        return weight.view(1, -1, 1, 1) * y + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        raise NotImplementedError("inference only")


class LayerNorm2d(nn.Module):
    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LayerNormFunction.apply(x, self.weight, self.bias, self.eps)


class SimpleGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """NAFNet's block (Chen et al. ECCV 2022): LayerNorm2d, SimpleGate, simplified channel attention."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.conv3 = nn.Conv2d(c, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFNet(nn.Module):
    """NAFNet (Chen et al. ECCV 2022), one level: pads to a multiple of 2 as ``check_image_size`` does."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.intro = nn.Conv2d(3, c, 3, padding=1)
        self.ending = nn.Conv2d(c, 3, 3, padding=1)
        self.encoders = nn.ModuleList([nn.Sequential(NAFBlock(c))])
        self.downs = nn.ModuleList([nn.Conv2d(c, 2 * c, 2, 2)])
        self.middle_blks = nn.Sequential(NAFBlock(2 * c), NAFBlock(2 * c))
        self.ups = nn.ModuleList([nn.Sequential(nn.Conv2d(2 * c, 4 * c, 1, bias=False), nn.PixelShuffle(2))])
        self.decoders = nn.ModuleList([nn.Sequential(NAFBlock(c))])
        self.padder_size = 2

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h, w = inp.shape[-2:]
        x = F.pad(inp, (0, (-w) % self.padder_size, 0, (-h) % self.padder_size))
        x = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, skips[::-1]):
            x = decoder(up(x) + skip)
        x = self.ending(x)
        return (x + F.pad(inp, (0, x.shape[-1] - w, 0, x.shape[-2] - h)))[..., :h, :w]


NAFNET_SITES = ("encoders.0.0.sca", "middle_blks.0.sca", "middle_blks.1.sca", "decoders.0.0.sca")


# ----------------------------------------------------------------------------- SE with Linear layers


class SELayer(nn.Module):
    """Squeeze-and-excitation (Hu et al. CVPR 2018) as the common PyTorch SELayer writes it."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(c, c // reduction, bias=False), nn.ReLU(inplace=True),
            nn.Linear(c // reduction, c, bias=False), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


# ----------------------------------------------------------------------------- CBAM


class ChannelGate(nn.Module):
    """CBAM's channel attention (Woo et al. ECCV 2018) with the shared MLP as 1x1 convs on the
    average- and max-pooled maps (as in many restoration repositories)."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(nn.Conv2d(c, c // reduction, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(c // reduction, c, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))


class SpatialGate(nn.Module):
    """CBAM's spatial attention: 7x7 conv of the channel mean and max (per pixel: not global)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.ca = ChannelGate(c)
        self.sa = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sa(self.ca(x))


class LinearChannelGate(nn.Module):
    """CBAM's channel attention as its authors' code writes it: ``F.avg_pool2d``/``F.max_pool2d``
    with the whole map as kernel, an MLP of ``nn.Flatten`` and Linear layers."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, c // reduction), nn.ReLU(),
                                 nn.Linear(c // reduction, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.size(2), x.size(3))
        att = self.mlp(F.avg_pool2d(x, size, stride=size)) + self.mlp(F.max_pool2d(x, size, stride=size))
        return x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)


class ChannelPoolSpatialGate(nn.Module):
    """CBAM's spatial gate as its authors write it: ChannelPool (max and mean over channels),
    7x7 conv with batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3, bias=False), nn.BatchNorm2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAMLinear(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.ca = LinearChannelGate(c)
        self.sa = ChannelPoolSpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sa(self.ca(x))


# ----------------------------------------------------------------------------- coordinate attention


class CoordAtt(nn.Module):
    """Coordinate attention (Hou et al. CVPR 2021): means over each row and each column."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        mip = max(8, c // reduction)
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.conv1 = nn.Conv2d(c, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, c, 1)
        self.conv_w = nn.Conv2d(mip, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        return x * self.conv_h(x_h).sigmoid() * self.conv_w(x_w).sigmoid()


# ----------------------------------------------------------------------------- ECA


class ECA(nn.Module):
    """ECA-Net (Wang et al. CVPR 2020): a 1-D convolution across the pooled channels."""

    def __init__(self, c: int, k: int = 3) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * self.sigmoid(y).expand_as(x)


# ----------------------------------------------------------------------------- SRM (functional mean/var)


class SRM(nn.Module):
    """Style-based recalibration (Lee et al. ICCV 2019): per-channel mean and std, written with
    ``x.mean((2, 3), keepdim=True)`` and ``x.var((2, 3), keepdim=True)``, a channel-wise FC."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cfc = nn.Parameter(torch.zeros(c, 2))
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((2, 3), keepdim=True)
        std = (x.var((2, 3), keepdim=True) + 1e-5).sqrt()
        z = mean * self.cfc[:, 0].view(1, -1, 1, 1) + std * self.cfc[:, 1].view(1, -1, 1, 1)
        return x * torch.sigmoid(self.bn(z))


# ----------------------------------------------------------------------------- global max via amax


class MaxChannelAttn(nn.Module):
    """The max branch of CBAM's channel attention as timm's ``ChannelAttn`` writes it:
    ``x.amax((2, 3), keepdim=True)`` through 1x1 convs."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // reduction, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(c // reduction, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True)))).sigmoid()


# ----------------------------------------------------------------------------- GCNet


class ContextBlock(nn.Module):
    """GCNet's context block (Cao et al. ICCVW 2019; also MIRNet-v2): softmax over H*W of a 1x1
    mask, weighted sum of the map (matmul), LayerNorm([C', 1, 1]) transform, added."""

    def __init__(self, c: int, ratio: float = 0.5) -> None:
        super().__init__()
        planes = int(c * ratio)
        self.conv_mask = nn.Conv2d(c, 1, 1)
        self.softmax = nn.Softmax(dim=2)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(c, planes, 1), nn.LayerNorm([planes, 1, 1]), nn.ReLU(inplace=True), nn.Conv2d(planes, c, 1)
        )

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        batch, channel, height, width = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)
        context_mask = self.conv_mask(x).view(batch, 1, height * width)
        context_mask = self.softmax(context_mask).unsqueeze(-1)
        return torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.channel_add_conv(self.spatial_pool(x))


# ----------------------------------------------------------------------------- IMDN


def mean_channels(f: torch.Tensor) -> torch.Tensor:
    spatial_sum = f.sum(3, keepdim=True).sum(2, keepdim=True)
    return spatial_sum / (f.size(2) * f.size(3))


def stdv_channels(f: torch.Tensor) -> torch.Tensor:
    f_mean = mean_channels(f)
    f_variance = (f - f_mean).pow(2).sum(3, keepdim=True).sum(2, keepdim=True) / (f.size(2) * f.size(3))
    return f_variance.pow(0.5)


class CCALayer(nn.Module):
    """IMDN's contrast-aware channel attention (Hui et al. ACM MM 2019): hand-written std plus mean."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.contrast = stdv_channels
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(c, c // reduction, 1), nn.ReLU(inplace=True), nn.Conv2d(c // reduction, c, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.contrast(x) + self.avg_pool(x)
        return x * self.conv_du(y)


class IMDModule(nn.Module):
    """IMDN's information multi-distillation block: three distillation steps, CCA, 1x1 fusion."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.distilled = c // 4
        self.remaining = c - self.distilled
        self.c1 = conv(c, c)
        self.c2 = conv(self.remaining, c)
        self.c3 = conv(self.remaining, c)
        self.c4 = conv(self.remaining, self.distilled)
        self.act = nn.LeakyReLU(0.05)
        self.c5 = nn.Conv2d(4 * self.distilled, c, 1)
        self.cca = CCALayer(4 * self.distilled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = (self.distilled, self.remaining)
        d1, r1 = torch.split(self.act(self.c1(x)), split, dim=1)
        d2, r2 = torch.split(self.act(self.c2(r1)), split, dim=1)
        d3, r3 = torch.split(self.act(self.c3(r2)), split, dim=1)
        out = torch.cat([d1, d2, d3, self.c4(r3)], dim=1)
        return self.c5(self.cca(out)) + x


class IMDN(nn.Module):
    """IMDN (Hui et al. ACM MM 2019) at scale 1: three IMDModules, 1x1 fusion of their outputs."""

    def __init__(self, c: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.fea_conv = conv(3, c)
        self.blocks = nn.ModuleList([IMDModule(c) for _ in range(blocks)])
        self.c = nn.Sequential(nn.Conv2d(blocks * c, c, 1), nn.LeakyReLU(0.05))
        self.LR_conv = conv(c, c)
        self.tail = conv(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs, y = [], fea
        for block in self.blocks:
            y = block(y)
            outs.append(y)
        y = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return x + self.tail(y)


# ----------------------------------------------------------------------------- selective kernel fusion


class SKFF(nn.Module):
    """MIRNet's selective kernel feature fusion (Zamir et al. ECCV 2020): pooled sum of the branches,
    one 1x1 conv per branch, ``view(N, k, C, 1, 1)`` and softmax over the branches."""

    def __init__(self, c: int, height: int = 3, reduction: int = 8) -> None:
        super().__init__()
        self.height = height
        d = max(c // reduction, 4)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(c, d, 1, bias=False), nn.PReLU())
        self.fcs = nn.ModuleList([nn.Conv2d(d, c, 1, bias=False) for _ in range(height)])
        self.softmax = nn.Softmax(dim=1)

    def forward(self, inp_feats: list[torch.Tensor]) -> torch.Tensor:
        batch_size, n_feats = inp_feats[0].shape[:2]
        feats = torch.cat(inp_feats, dim=1)
        feats = feats.view(batch_size, self.height, n_feats, feats.shape[2], feats.shape[3])
        feats_u = torch.sum(feats, dim=1)
        feats_z = self.conv_du(self.avg_pool(feats_u))
        attention = torch.cat([fc(feats_z) for fc in self.fcs], dim=1)
        attention = self.softmax(attention.view(batch_size, self.height, n_feats, 1, 1))
        return torch.sum(feats * attention, dim=1)


class MultiScaleBlock(nn.Module):
    """A MIRNet multi-scale residual block cut down: streams at 1, 1/2 and 1/4 resolution fused by SKFF."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.streams = nn.ModuleList([nn.Sequential(conv(c, c), nn.PReLU()) for _ in range(3)])
        self.skff = SKFF(c, 3)
        self.out = conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for i, stream in enumerate(self.streams):
            y = stream(F.avg_pool2d(x, 2**i) if i else x)
            feats.append(F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False) if i else y)
        return x + self.out(self.skff(feats))


class MIRNetLite(nn.Module):
    def __init__(self, c: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.head = conv(3, c)
        self.blocks = nn.Sequential(*[MultiScaleBlock(c) for _ in range(blocks)])
        self.tail = conv(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tail(self.blocks(self.head(x)))


class SKFusion(nn.Module):
    """DehazeFormer's / MixDehazeNet's SKFusion (Song et al. TIP 2023): pooled sum of 2 branches,
    an MLP to ``C * height`` channels, ``view(N, height, C, 1, 1)``, softmax over the branches."""

    def __init__(self, c: int, height: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.height = height
        d = max(c // reduction, 4)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(nn.Conv2d(c, d, 1, bias=False), nn.ReLU(), nn.Conv2d(d, c * height, 1, bias=False))
        self.softmax = nn.Softmax(dim=1)

    def forward(self, in_feats: list[torch.Tensor]) -> torch.Tensor:
        b, c, h, w = in_feats[0].shape
        feats = torch.cat(in_feats, dim=1).view(b, self.height, c, h, w)
        attn = self.mlp(self.avg_pool(torch.sum(feats, dim=1)))
        attn = self.softmax(attn.view(b, self.height, c, 1, 1))
        return torch.sum(feats * attn, dim=1)


class ConvBlock(nn.Module):
    """MixDehazeNet-style conv block: BN, 1x1, depthwise 5x5, GELU, 1x1, plus the input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 5, padding=2, groups=c),
                                  nn.GELU(), nn.Conv2d(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DehazeUNet(nn.Module):
    """DehazeFormer/MixDehazeNet layout: patch embed, two stride-2 levels, SKFusion at both skips,
    output ``K * x - B + x`` from a 4-channel head."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.patch_embed = conv(3, c)
        self.layer1 = ConvBlock(c)
        self.down1 = nn.Conv2d(c, 2 * c, 2, 2)
        self.layer2 = ConvBlock(2 * c)
        self.down2 = nn.Conv2d(2 * c, 2 * c, 2, 2)
        self.layer3 = ConvBlock(2 * c)
        self.up2 = nn.Sequential(nn.Conv2d(2 * c, 8 * c, 1), nn.PixelShuffle(2))
        self.fusion2 = SKFusion(2 * c)
        self.layer4 = ConvBlock(2 * c)
        self.up1 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 1), nn.PixelShuffle(2))
        self.fusion1 = SKFusion(c)
        self.layer5 = ConvBlock(c)
        self.patch_unembed = conv(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.layer1(self.patch_embed(x))
        e2 = self.layer2(self.down1(e1))
        y = self.layer3(self.down2(e2))
        y = self.layer4(self.fusion2([self.up2(y), e2]))
        y = self.layer5(self.fusion1([self.up1(y), e1]))
        k, b = self.patch_unembed(y).split((1, 3), dim=1)
        return k * x - b + x
