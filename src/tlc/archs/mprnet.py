"""MPRNet (Zamir et al., CVPR 2021, "Multi-Stage Progressive Image Restoration"), deblurring version.

Three stages over a multi-patch hierarchy: stage 1 runs a small U-Net on the four quarters of the
image, stage 2 on its top and bottom halves, stage 3 an original-resolution subnetwork (ORSNet) on
the whole image. Supervised attention modules (SAM) pass features from one stage to the next and
cross-stage feature fusion (CSFF) feeds stage-1 features into stage 2 and stage-2 features into
stage 3. Every block is a channel attention block (CAB) whose global average pooling is the global
op TLC makes local.

As in the TLC repository, the network returns a one-element list holding the final image only
(the original MPRNet also returns the stage-1 and stage-2 images), and pads the input with zeros at
the bottom and right to a multiple of ``padder_size`` so the halves and quarters down- and upsample
to matching sizes. One ``nn.PReLU`` is shared by every block, so released checkpoints repeat its
single weight under many keys (``...body.1.weight``). State_dict keys follow those checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .nafnet import pad_to_multiple

Features = Sequence[torch.Tensor]


def conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = False) -> nn.Conv2d:
    """Stride-1 convolution that keeps the spatial size (odd ``kernel_size``)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class CALayer(nn.Module):
    """Channel attention: ``x * sigmoid(W2 relu(W1 avgpool(x)))``. (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, reduction: int = 16, bias: bool = False) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=bias),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1, bias=bias),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.avg_pool(x))


class CAB(nn.Module):
    """Channel attention block: conv, activation, conv, channel attention, plus the input."""

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module) -> None:
        super().__init__()
        self.CA = CALayer(n_feat, reduction, bias=bias)  # registered first, as in the checkpoints' key order
        self.body = nn.Sequential(
            conv(n_feat, n_feat, kernel_size, bias=bias), act, conv(n_feat, n_feat, kernel_size, bias=bias)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.CA(self.body(x)) + x


class SAM(nn.Module):
    """Supervised attention module between stages.

    Features (N, C, H, W) and the stage's input image (N, 3, H, W) -> (attended features
    (N, C, H, W), the stage's restored image (N, 3, H, W)).
    """

    def __init__(self, n_feat: int, kernel_size: int, bias: bool) -> None:
        super().__init__()
        self.conv1 = conv(n_feat, n_feat, kernel_size, bias=bias)
        self.conv2 = conv(n_feat, 3, kernel_size, bias=bias)
        self.conv3 = conv(3, n_feat, kernel_size, bias=bias)

    def forward(self, x: torch.Tensor, x_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.conv2(x) + x_img
        attention = torch.sigmoid(self.conv3(img))
        return self.conv1(x) * attention + x, img


class DownSample(nn.Module):
    """Bilinear x0.5 then a 1x1 conv widening C to C + s_factor channels."""

    def __init__(self, in_channels: int, s_factor: int) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, in_channels + s_factor, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class UpSample(nn.Module):
    """Bilinear x2 then a 1x1 conv narrowing C + s_factor to C channels."""

    def __init__(self, in_channels: int, s_factor: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels + s_factor, in_channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class SkipUpSample(UpSample):
    """:class:`UpSample` of ``x`` plus the skip connection ``y``."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.up(x) + y


def _cabs(n: int, n_feat: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(*[CAB(n_feat, kernel_size, reduction, bias, act) for _ in range(n)])


class Encoder(nn.Module):
    """U-Net encoder of three levels (n_feat, n_feat + s, n_feat + 2s channels at full, 1/2,
    1/4 size), two CABs each. With ``csff`` it adds 1x1-conv projections of the previous stage's
    encoder and decoder features at every level."""

    def __init__(
        self,
        n_feat: int,
        kernel_size: int,
        reduction: int,
        act: nn.Module,
        bias: bool,
        scale_unetfeats: int,
        csff: bool,
    ) -> None:
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        self.encoder_level1 = _cabs(2, widths[0], kernel_size, reduction, bias, act)
        self.encoder_level2 = _cabs(2, widths[1], kernel_size, reduction, bias, act)
        self.encoder_level3 = _cabs(2, widths[2], kernel_size, reduction, bias, act)
        self.down12 = DownSample(widths[0], scale_unetfeats)
        self.down23 = DownSample(widths[1], scale_unetfeats)
        if csff:
            for i, c in enumerate(widths, start=1):
                setattr(self, f"csff_enc{i}", nn.Conv2d(c, c, 1, bias=bias))
            for i, c in enumerate(widths, start=1):
                setattr(self, f"csff_dec{i}", nn.Conv2d(c, c, 1, bias=bias))

    def _fuse(
        self, level: int, x: torch.Tensor, encoder_outs: Features | None, decoder_outs: Features | None
    ) -> torch.Tensor:
        if encoder_outs is None or decoder_outs is None:
            return x
        enc = getattr(self, f"csff_enc{level}")(encoder_outs[level - 1])
        dec = getattr(self, f"csff_dec{level}")(decoder_outs[level - 1])
        return x + enc + dec

    def forward(
        self, x: torch.Tensor, encoder_outs: Features | None = None, decoder_outs: Features | None = None
    ) -> list[torch.Tensor]:
        """(N, n_feat, H, W) -> features at full, 1/2 and 1/4 size."""
        enc1 = self._fuse(1, self.encoder_level1(x), encoder_outs, decoder_outs)
        enc2 = self._fuse(2, self.encoder_level2(self.down12(enc1)), encoder_outs, decoder_outs)
        enc3 = self._fuse(3, self.encoder_level3(self.down23(enc2)), encoder_outs, decoder_outs)
        return [enc1, enc2, enc3]


class Decoder(nn.Module):
    """U-Net decoder mirroring :class:`Encoder`; skips pass through a CAB before being added."""

    def __init__(
        self, n_feat: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool, scale_unetfeats: int
    ) -> None:
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        self.decoder_level1 = _cabs(2, widths[0], kernel_size, reduction, bias, act)
        self.decoder_level2 = _cabs(2, widths[1], kernel_size, reduction, bias, act)
        self.decoder_level3 = _cabs(2, widths[2], kernel_size, reduction, bias, act)
        self.skip_attn1 = CAB(widths[0], kernel_size, reduction, bias, act)
        self.skip_attn2 = CAB(widths[1], kernel_size, reduction, bias, act)
        self.up21 = SkipUpSample(widths[0], scale_unetfeats)
        self.up32 = SkipUpSample(widths[1], scale_unetfeats)

    def forward(self, outs: Features) -> list[torch.Tensor]:
        """Encoder features [full, 1/2, 1/4] -> decoder features in the same order."""
        enc1, enc2, enc3 = outs
        dec3 = self.decoder_level3(enc3)
        dec2 = self.decoder_level2(self.up32(dec3, self.skip_attn2(enc2)))
        dec1 = self.decoder_level1(self.up21(dec2, self.skip_attn1(enc1)))
        return [dec1, dec2, dec3]


class ORB(nn.Module):
    """Original-resolution block: ``num_cab`` CABs and a conv, plus the input."""

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool, num_cab: int) -> None:
        super().__init__()
        cabs = [CAB(n_feat, kernel_size, reduction, bias, act) for _ in range(num_cab)]
        # The closing conv has no bias whatever ``bias`` says (as in the released checkpoints).
        self.body = nn.Sequential(*cabs, conv(n_feat, n_feat, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class ORSNet(nn.Module):
    """Stage 3: three ORBs at full resolution (n_feat + scale_orsnetfeats channels), each followed
    by 1x1-conv projections of the stage-2 encoder and decoder features, upsampled to full size."""

    def __init__(
        self,
        n_feat: int,
        scale_orsnetfeats: int,
        kernel_size: int,
        reduction: int,
        act: nn.Module,
        bias: bool,
        scale_unetfeats: int,
        num_cab: int,
    ) -> None:
        super().__init__()
        width = n_feat + scale_orsnetfeats
        width2 = n_feat + scale_unetfeats
        self.orb1 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.orb2 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.orb3 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.up_enc1 = UpSample(n_feat, scale_unetfeats)
        self.up_dec1 = UpSample(n_feat, scale_unetfeats)
        # Two x2 steps take the 1/4-size level-3 features to full size.
        self.up_enc2 = nn.Sequential(UpSample(width2, scale_unetfeats), UpSample(n_feat, scale_unetfeats))
        self.up_dec2 = nn.Sequential(UpSample(width2, scale_unetfeats), UpSample(n_feat, scale_unetfeats))
        for i in (1, 2, 3):
            setattr(self, f"conv_enc{i}", nn.Conv2d(n_feat, width, 1, bias=bias))
        for i in (1, 2, 3):
            setattr(self, f"conv_dec{i}", nn.Conv2d(n_feat, width, 1, bias=bias))

    def forward(self, x: torch.Tensor, encoder_outs: Features, decoder_outs: Features) -> torch.Tensor:
        """(N, n_feat + scale_orsnetfeats, H, W) and stage-2 features -> same shape as ``x``."""
        x = self.orb1(x)
        x = x + self.conv_enc1(encoder_outs[0]) + self.conv_dec1(decoder_outs[0])
        x = self.orb2(x)
        x = x + self.conv_enc2(self.up_enc1(encoder_outs[1])) + self.conv_dec2(self.up_dec1(decoder_outs[1]))
        x = self.orb3(x)
        x = x + self.conv_enc3(self.up_enc2(encoder_outs[2])) + self.conv_dec3(self.up_dec2(decoder_outs[2]))
        return x


def _cat_each(a: Features, b: Features, dim: int) -> list[torch.Tensor]:
    return [torch.cat((x, y), dim) for x, y in zip(a, b)]


class MPRNet(nn.Module):
    """MPRNet for deblurring. Keyword names are the reference's; the defaults build the released
    GoPro model. ``padder_size=0`` turns the input padding off (then H and W must be multiples of 8).

    Input (N, in_c, H, W) of any size -> ``[restored]`` with restored (N, out_c, H, W)
    (``out_c`` must equal ``in_c``: the output is a residual on the input).
    """

    def __init__(
        self,
        in_c: int = 3,
        out_c: int = 3,
        n_feat: int = 96,
        scale_unetfeats: int = 48,
        scale_orsnetfeats: int = 32,
        num_cab: int = 8,
        kernel_size: int = 3,
        reduction: int = 4,
        bias: bool = False,
        padder_size: int = 8,
    ) -> None:
        super().__init__()
        self.padder_size = padder_size
        act = nn.PReLU()  # one module, hence one weight, for the whole network

        def shallow() -> nn.Sequential:
            return nn.Sequential(conv(in_c, n_feat, kernel_size, bias), CAB(n_feat, kernel_size, reduction, bias, act))

        self.shallow_feat1 = shallow()
        self.shallow_feat2 = shallow()
        self.shallow_feat3 = shallow()
        self.stage1_encoder = Encoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats, csff=False)
        self.stage1_decoder = Decoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats)
        self.stage2_encoder = Encoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats, csff=True)
        self.stage2_decoder = Decoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats)
        self.stage3_orsnet = ORSNet(
            n_feat, scale_orsnetfeats, kernel_size, reduction, act, bias, scale_unetfeats, num_cab
        )
        self.sam12 = SAM(n_feat, kernel_size=1, bias=bias)
        self.sam23 = SAM(n_feat, kernel_size=1, bias=bias)
        self.concat12 = conv(n_feat * 2, n_feat, kernel_size, bias)
        self.concat23 = conv(n_feat * 2, n_feat + scale_orsnetfeats, kernel_size, bias)
        self.tail = conv(n_feat + scale_orsnetfeats, out_c, kernel_size, bias)

    def forward(self, x3_img: torch.Tensor) -> list[torch.Tensor]:
        h0, w0 = x3_img.shape[-2:]
        if self.padder_size > 0:
            x3_img = pad_to_multiple(x3_img, self.padder_size)
        h, w = x3_img.shape[-2:]

        # Multi-patch hierarchy: two halves for stage 2, four quarters for stage 1.
        x2top_img, x2bot_img = x3_img[:, :, : h // 2], x3_img[:, :, h // 2 :]
        quarters = [half[..., side] for half in (x2top_img, x2bot_img) for side in (slice(w // 2), slice(w // 2, w))]

        # Stage 1: encode each quarter, join left and right, decode each half.
        ltop, rtop, lbot, rbot = (self.stage1_encoder(self.shallow_feat1(q)) for q in quarters)
        feat1_top, feat1_bot = _cat_each(ltop, rtop, 3), _cat_each(lbot, rbot, 3)
        res1_top = self.stage1_decoder(feat1_top)
        res1_bot = self.stage1_decoder(feat1_bot)
        x2top_samfeats, _ = self.sam12(res1_top[0], x2top_img)
        x2bot_samfeats, _ = self.sam12(res1_bot[0], x2bot_img)

        # Stage 2: each half, fused with stage-1 features; join top and bottom, then decode.
        x2top_cat = self.concat12(torch.cat([self.shallow_feat2(x2top_img), x2top_samfeats], 1))
        x2bot_cat = self.concat12(torch.cat([self.shallow_feat2(x2bot_img), x2bot_samfeats], 1))
        feat2_top = self.stage2_encoder(x2top_cat, feat1_top, res1_top)
        feat2_bot = self.stage2_encoder(x2bot_cat, feat1_bot, res1_bot)
        feat2 = _cat_each(feat2_top, feat2_bot, 2)
        res2 = self.stage2_decoder(feat2)
        x3_samfeats, _ = self.sam23(res2[0], x3_img)

        # Stage 3: the whole image at full resolution.
        x3_cat = self.concat23(torch.cat([self.shallow_feat3(x3_img), x3_samfeats], 1))
        x3_cat = self.stage3_orsnet(x3_cat, feat2, res2)
        out = self.tail(x3_cat) + x3_img
        return [out[:, :, :h0, :w0]]
