"""A small U-Net for the TLC paper's study of global operations (Chu et al., ECCV 2022, Sec. 3).

The paper trains three U-Nets that differ only in one kind of layer and tests them at growing
image sizes: a plain U-Net (convolutions only: nothing global), UNet-IN (instance norm after the
convolutions: per-channel mean and variance over the whole map) and UNet-SE (squeeze-excitation:
channel weights from a global average pool). :class:`UNet` builds all three from the ``norm`` and
``attention`` switches, so ``tlc.convert`` finds ``nn.InstanceNorm2d`` / ``nn.AdaptiveAvgPool2d(1)``
exactly where the variants put them and nothing in the plain one.

Layout, with ``depth`` downsamplings (input padded to a multiple of ``2**depth``)::

    intro 3x3 conv -> encoders[i] (width * 2**i channels) -> downs[i] (2x2 stride-2 conv) ...
    -> middle -> ups[i] (2x2 stride-2 transposed conv) -> concat skip -> decoders[i] ...
    -> ending 3x3 conv, plus the input (global residual)

The middle keeps the deepest encoder's channels instead of doubling them once more: at width 16
and depth 3 that is 16/32/64/64 channels and 0.37 M parameters (doubling gives 0.62 M).
"""

from __future__ import annotations

import torch
from torch import nn

from .nafnet import pad_to_multiple

NORMS = ("none", "instance")
ATTENTIONS = ("none", "se")
PADDING_MODES = ("zeros", "reflect", "replicate")


class SqueezeExcitation(nn.Module):
    """Squeeze-excitation (Hu et al., 2018) with 1x1 convs: x * sigmoid(W2 relu(W1 mean(x))).

    The mean is ``nn.AdaptiveAvgPool2d(1)``, the global op; the 1x1 convs keep the (N, C, 1, 1)
    map four-dimensional, so a local pool (a full-size map of means) works in its place.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))


class ConvBlock(nn.Sequential):
    """``blocks`` x (3x3 conv -> [InstanceNorm2d(affine=True)] -> LeakyReLU(0.2)), then [SE].

    The first conv maps ``in_channels`` to ``out_channels``; the others keep ``out_channels``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, blocks: int, norm: str, attention: str, padding_mode: str = "zeros"
    ) -> None:
        layers: list[nn.Module] = []
        for i in range(blocks):
            cin = in_channels if i == 0 else out_channels
            layers.append(nn.Conv2d(cin, out_channels, 3, padding=1, padding_mode=padding_mode))
            if norm == "instance":
                layers.append(nn.InstanceNorm2d(out_channels, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        if attention == "se":
            layers.append(SqueezeExcitation(out_channels))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net with concatenated skips and a global residual (module docstring for the layout).

    Args:
        in_channels: image channels (input and output).
        width: channels at full resolution; level i has ``width * 2**i`` (the middle as the deepest).
        depth: number of downsamplings (>= 1); inputs are padded inside to a multiple of ``2**depth``
            with zeros at the bottom and right, and the output is cropped back, so any H x W works.
        blocks: 3x3 convs per level (>= 1).
        norm: ``"none"`` or ``"instance"`` (``nn.InstanceNorm2d(affine=True)`` after every 3x3 conv
            of every level).
        attention: ``"none"`` or ``"se"`` (a :class:`SqueezeExcitation` ending every level).
        padding_mode: border handling of the 3x3 convolutions: ``"zeros"`` (the usual) or
            ``"reflect"`` / ``"replicate"``. Zero padding marks a crop's border in every feature
            map, and a network with instance norm trained on small crops can come to depend on
            it (measured: see the README's results); reflection leaves no such mark.

    Input (N, in_channels, H, W) -> output of the same shape: input + the network's residual.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 16,
        depth: int = 3,
        blocks: int = 2,
        norm: str = "none",
        attention: str = "none",
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        if depth < 1 or blocks < 1 or width < 1:
            raise ValueError(f"width, depth and blocks must be >= 1, got {width}, {depth}, {blocks}")
        level = [width * 2**i for i in range(depth)]  # channels of encoder/decoder level i
        deepest = level[-1]

        def block(cin: int, cout: int) -> ConvBlock:
            return ConvBlock(cin, cout, blocks, norm, attention, padding_mode)

        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        self.intro = nn.Conv2d(in_channels, width, 3, padding=1, padding_mode=padding_mode)
        self.encoders = nn.ModuleList(block(c, c) for c in level)
        self.downs = nn.ModuleList(nn.Conv2d(c, n, 2, stride=2) for c, n in zip(level, [*level[1:], deepest]))
        self.middle = block(deepest, deepest)
        # Decoders run from the deepest level up; ups[i] brings the level below to level i's channels.
        self.ups = nn.ModuleList(nn.ConvTranspose2d(b, c, 2, stride=2) for c, b in zip(level, [*level[1:], deepest]))
        self.decoders = nn.ModuleList(block(2 * c, c) for c in level)
        self.ending = nn.Conv2d(width, in_channels, 3, padding=1, padding_mode=padding_mode)
        self.padder_size = 2**depth

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h, w = inp.shape[-2:]
        x0 = pad_to_multiple(inp, self.padder_size)
        x = self.intro(x0)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for i in reversed(range(len(self.decoders))):
            x = self.decoders[i](torch.cat([self.ups[i](x), skips[i]], dim=1))
        x = self.ending(x) + x0
        return x[:, :, :h, :w]


__all__ = ["UNet", "SqueezeExcitation", "ConvBlock"]
