"""Norms with spatial statistics, whole-map FFTs, a pooled head that leaves the image path, and a
plain U-Net. Each class is written here from its paper's description and its authors' code
(named in the docstring); the networks are small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .channel_attention import conv

# ----------------------------------------------------------------------------- HINet


class HINBlock(nn.Module):
    """HINet's UNetConvBlock (Chen et al. CVPRW 2021): instance norm on half the channels after the
    first conv, 1x1 identity, optional 4x4 stride-2 downsampling returning (down, skip)."""

    def __init__(self, cin: int, cout: int, downsample: bool, use_hin: bool) -> None:
        super().__init__()
        self.identity = nn.Conv2d(cin, cout, 1)
        self.conv_1 = conv(cin, cout)
        self.relu_1 = nn.LeakyReLU(0.2)
        self.conv_2 = conv(cout, cout)
        self.relu_2 = nn.LeakyReLU(0.2)
        self.use_hin = use_hin
        if use_hin:
            self.norm = nn.InstanceNorm2d(cout // 2, affine=True)
        self.downsample = nn.Conv2d(cout, cout, 4, 2, 1, bias=False) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.conv_1(x)
        if self.use_hin:
            out_1, out_2 = torch.chunk(out, 2, dim=1)
            out = torch.cat([self.norm(out_1), out_2], dim=1)
        out = self.relu_2(self.conv_2(self.relu_1(out)))
        out = out + self.identity(x)
        if self.downsample is not None:
            return self.downsample(out), out
        return out


class HINet(nn.Module):
    """One HINet sub-network: three encoder levels (HIN in the first two), two decoder levels."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv_01 = conv(3, c)
        self.down_path = nn.ModuleList([
            HINBlock(c, c, True, True), HINBlock(c, 2 * c, True, True), HINBlock(2 * c, 2 * c, False, False),
        ])
        self.up = nn.ModuleList([nn.ConvTranspose2d(2 * c, 2 * c, 2, 2), nn.ConvTranspose2d(2 * c, c, 2, 2)])
        self.up_path = nn.ModuleList([HINBlock(4 * c, 2 * c, False, False), HINBlock(2 * c, c, False, False)])
        self.last = conv(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_01(x)
        skips = []
        for block in self.down_path:
            out = block(y)
            if isinstance(out, tuple):
                y, skip = out
                skips.append(skip)
            else:
                y = out
        for up, block, skip in zip(self.up, self.up_path, reversed(skips)):
            y = block(torch.cat([up(y), skip], dim=1))
        return x + self.last(y)


# ----------------------------------------------------------------------------- GroupNorm (DDPM)


class ResnetBlock(nn.Module):
    """DDPM's ResnetBlock (Ho et al. NeurIPS 2020; SR3, DiffIR): GroupNorm-SiLU-conv twice, shortcut."""

    def __init__(self, cin: int, cout: int, groups: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = conv(cin, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = conv(cout, cout)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class DDPMUNet(nn.Module):
    """DDPM's U-Net without the time embedding and self-attention, two levels (factor 4)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv_in = conv(3, c)
        self.down = nn.ModuleList([ResnetBlock(c, c), ResnetBlock(c, 2 * c)])
        self.downsample = nn.ModuleList([nn.Conv2d(c, c, 3, 2), nn.Conv2d(2 * c, 2 * c, 3, 2)])
        self.mid = ResnetBlock(2 * c, 2 * c)
        self.up = nn.ModuleList([ResnetBlock(4 * c, 2 * c), ResnetBlock(3 * c, c)])
        self.upsample = nn.ModuleList([conv(2 * c, 2 * c), conv(2 * c, 2 * c)])
        self.norm_out = nn.GroupNorm(4, c)
        self.conv_out = conv(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h)
            skips.append(h)
            h = down(F.pad(h, (0, 1, 0, 1)))  # DDPM's asymmetric padding before a 3x3 stride-2 conv
        h = self.mid(h)
        for block, up in zip(self.up, self.upsample):
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = block(torch.cat([h, skips.pop()], dim=1))
        return x + self.conv_out(F.silu(self.norm_out(h)))


DDPM_SITES = ("down.0.norm1", "down.0.norm2", "down.1.norm1", "down.1.norm2", "mid.norm1", "mid.norm2",
              "up.0.norm1", "up.0.norm2", "up.1.norm1", "up.1.norm2", "norm_out")


# ----------------------------------------------------------------------------- whole-map layer norm


class WholeMapLayerNorm(nn.Module):
    """Layer normalisation (Ba et al. 2016) over a whole feature map, ``nn.LayerNorm([C, H, W])``
    without affine, built for the training crop (statistics over C, H, W: U-GAT-IT's ILN's layer
    part, Kim et al. ICLR 2020). The original runs only at that size."""

    def __init__(self, c: int = 8, train_size: int = 32) -> None:
        super().__init__()
        self.head = conv(3, c)
        self.norm1 = nn.LayerNorm([c, train_size, train_size], elementwise_affine=False)
        self.down = nn.Conv2d(c, 2 * c, 2, 2)
        self.norm2 = nn.LayerNorm([2 * c, train_size // 2, train_size // 2], elementwise_affine=False)
        self.body = conv(2 * c, 2 * c)
        self.up = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 1), nn.PixelShuffle(2))
        self.tail = conv(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.norm1(self.head(x)))
        g = torch.relu(self.body(self.norm2(self.down(f))))
        return x + self.tail(self.up(g) + f)


# ----------------------------------------------------------------------------- DeepRFT


class ResBlockFFT(nn.Module):
    """DeepRFT's Res FFT-ReLU block (Mao et al. AAAI 2023): rfft2 over the whole map, 1x1 convs on
    the stacked real and imaginary parts, irfft2, added to a conv residual branch."""

    def __init__(self, c: int, norm: str = "backward") -> None:
        super().__init__()
        self.norm = norm
        self.main = nn.Sequential(conv(c, c), nn.ReLU(inplace=True), conv(c, c))
        self.main_fft = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 1), nn.ReLU(inplace=True), nn.Conv2d(2 * c, 2 * c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        y = torch.fft.rfft2(x, norm=self.norm)
        y = self.main_fft(torch.cat([y.real, y.imag], dim=1))
        y_real, y_imag = torch.chunk(y, 2, dim=1)
        y = torch.fft.irfft2(torch.complex(y_real, y_imag), s=(h, w), norm=self.norm)
        return self.main(x) + x + y


class DeepRFT(nn.Module):
    """DeepRFT cut down: an FFT block at full and at half resolution."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = conv(3, c)
        self.enc = ResBlockFFT(c)
        self.down = nn.Conv2d(c, 2 * c, 2, 2)
        self.mid = ResBlockFFT(2 * c)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, 2)
        self.tail = conv(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(self.head(x))
        return x + self.tail(self.up(self.mid(self.down(e))) + e)


# ----------------------------------------------------------------------------- FBCNN


class PlainResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.res = nn.Sequential(conv(c, c), nn.ReLU(inplace=True), conv(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res(x)


class FBCNN(nn.Module):
    """FBCNN (Jiang et al. ICCV 2021): the encoder's deepest features also feed a quality-factor
    predictor (pool, flatten, Linear layers), returned as a second output."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.m_head = conv(3, c)
        self.m_down1 = nn.Sequential(PlainResBlock(c), nn.Conv2d(c, 2 * c, 2, 2))
        self.m_down2 = nn.Sequential(PlainResBlock(2 * c), nn.Conv2d(2 * c, 2 * c, 2, 2))
        self.m_body_encoder = PlainResBlock(2 * c)
        self.qf_pred = nn.Sequential(
            PlainResBlock(2 * c), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(2 * c, 16), nn.ReLU(),
            nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid(),
        )
        self.m_body_decoder = PlainResBlock(2 * c)
        self.m_up2 = nn.Sequential(nn.ConvTranspose2d(2 * c, 2 * c, 2, 2), PlainResBlock(2 * c))
        self.m_up1 = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 2, 2), PlainResBlock(c))
        self.m_tail = conv(c, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.m_head(x)
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        y = self.m_body_encoder(x3)
        qf = self.qf_pred(y)
        y = self.m_body_decoder(y)
        y = self.m_up2(y + x3)
        y = self.m_up1(y + x2)
        return x + self.m_tail(y + x1), qf


# ----------------------------------------------------------------------------- plain U-Net


class UNet(nn.Module):
    """U-Net (Ronneberger et al. MICCAI 2015), two 2x2 max-pool levels, bilinear up: no global op."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()

        def double(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(conv(cin, cout), nn.ReLU(inplace=True), conv(cout, cout), nn.ReLU(inplace=True))

        self.inc = double(3, c)
        self.down1 = double(c, 2 * c)
        self.down2 = double(2 * c, 2 * c)
        self.up1 = double(4 * c, c)
        self.up2 = double(2 * c, c)
        self.outc = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(F.max_pool2d(x1, 2))
        x3 = self.down2(F.max_pool2d(x2, 2))
        up = F.interpolate(x3, size=x2.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up1(torch.cat([up, x2], dim=1))
        up = F.interpolate(y, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up2(torch.cat([up, x1], dim=1))
        return x + self.outc(y)
