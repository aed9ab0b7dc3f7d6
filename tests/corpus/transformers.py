"""Attention over channels (Restormer's MDTA in its many spellings) and over whole rows/columns.

Each class is written here from its paper's description and its authors' code (named in the
docstring); the networks around them are small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .channel_attention import LayerNorm2d, conv

# ----------------------------------------------------------------------------- Restormer, with einops


class WithBiasLayerNorm(nn.Module):
    """Restormer's LayerNorm: over channels of the (h w) tokens, via einops ``to_3d``/``to_4d``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        t = rearrange(x, "b c h w -> b (h w) c")
        mu = t.mean(-1, keepdim=True)
        sigma = t.var(-1, keepdim=True, unbiased=False)
        t = (t - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias
        return rearrange(t, "b (h w) c -> b c h w", h=h, w=w)


class GDFN(nn.Module):
    """Restormer's gated-Dconv feed-forward network."""

    def __init__(self, dim: int, factor: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * factor)
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class MDTA(nn.Module):
    """Restormer's multi-Dconv head transposed attention (Zamir et al. CVPR 2022), with einops:
    q and k L2-normalised over the H*W tokens, attention across channels."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = rearrange(q, "b (head c) h w -> b head c (h w)", head=self.num_heads)
        k = rearrange(k, "b (head c) h w -> b head c (h w)", head=self.num_heads)
        v = rearrange(v, "b (head c) h w -> b head c (h w)", head=self.num_heads)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = attn.softmax(dim=-1)
        out = attn @ v
        out = rearrange(out, "b head c (h w) -> b (head c) h w", head=self.num_heads, h=h, w=w)
        return self.project_out(out)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = WithBiasLayerNorm(dim)
        self.attn = MDTA(dim, heads)
        self.norm2 = WithBiasLayerNorm(dim)
        self.ffn = GDFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Restormer(nn.Module):
    """Restormer (Zamir et al. CVPR 2022) with three levels (PixelUnshuffle down, PixelShuffle up)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.patch_embed = conv(3, dim, bias=False)
        self.encoder_level1 = nn.Sequential(TransformerBlock(dim, 1))
        self.down1_2 = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        self.encoder_level2 = nn.Sequential(TransformerBlock(2 * dim, 2))
        self.down2_3 = nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        self.latent = nn.Sequential(TransformerBlock(4 * dim, 2))
        self.up3_2 = nn.Sequential(nn.Conv2d(4 * dim, 8 * dim, 3, padding=1, bias=False), nn.PixelShuffle(2))
        self.reduce_chan_level2 = nn.Conv2d(4 * dim, 2 * dim, 1, bias=False)
        self.decoder_level2 = nn.Sequential(TransformerBlock(2 * dim, 2))
        self.up2_1 = nn.Sequential(nn.Conv2d(2 * dim, 4 * dim, 3, padding=1, bias=False), nn.PixelShuffle(2))
        self.decoder_level1 = nn.Sequential(TransformerBlock(2 * dim, 1))
        self.output = conv(2 * dim, 3, bias=False)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        e1 = self.encoder_level1(self.patch_embed(inp))
        e2 = self.encoder_level2(self.down1_2(e1))
        latent = self.latent(self.down2_3(e2))
        d2 = self.reduce_chan_level2(torch.cat([self.up3_2(latent), e2], 1))
        d2 = self.decoder_level2(d2)
        d1 = self.decoder_level1(torch.cat([self.up2_1(d2), e1], 1))
        return self.output(d1) + inp


RESTORMER_SITES = ("encoder_level1.0.attn", "encoder_level2.0.attn", "latent.0.attn", "decoder_level2.0.attn",
                   "decoder_level1.0.attn")


# ----------------------------------------------------------------------------- KBNet


class TransAttention(nn.Module):
    """KBNet's TransAttention (Zhang et al. 2023): Restormer's transposed attention in a class of its
    own, written here with reshape instead of einops."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3)
        self.project_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = q.reshape(b, self.num_heads, c // self.num_heads, h * w)
        k = k.reshape(b, self.num_heads, c // self.num_heads, h * w)
        v = v.reshape(b, self.num_heads, c // self.num_heads, h * w)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        out = (attn.softmax(dim=-1) @ v).reshape(b, c, h, w)
        return self.project_out(out)


class KBTransformerBlock(nn.Module):
    """KBNet_l's transformer block: LayerNorm2d, TransAttention, LayerNorm2d, gated FFN."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = TransAttention(dim, heads)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = GDFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class KBNet(nn.Module):
    """KBNet_l (Zhang et al. 2023) cut down to two levels."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.intro = conv(3, dim)
        self.encoders = nn.Sequential(KBTransformerBlock(dim, 1))
        self.down = nn.Conv2d(dim, 2 * dim, 2, 2)
        self.middle = nn.Sequential(KBTransformerBlock(2 * dim, 2))
        self.up = nn.Sequential(nn.Conv2d(2 * dim, 4 * dim, 1, bias=False), nn.PixelShuffle(2))
        self.decoders = nn.Sequential(KBTransformerBlock(dim, 1))
        self.ending = conv(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoders(self.intro(x))
        y = self.decoders(self.up(self.middle(self.down(e))) + e)
        return x + self.ending(y)


KBNET_SITES = ("encoders.0.attn", "middle.0.attn", "decoders.0.attn")


# ----------------------------------------------------------------------------- DAT


class AdaptiveChannelAttention(nn.Module):
    """DAT's Adaptive_Channel_Attention (Chen et al. ICCV 2023) on (B, N, C) tokens with H, W passed
    in: transposed attention plus a depthwise-conv branch, mixed by the adaptive interaction module
    (a pooled channel map and a per-pixel spatial map)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.dwconv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.BatchNorm2d(dim), nn.GELU())
        self.channel_interaction = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim // 4, 1), nn.BatchNorm2d(dim // 4), nn.GELU(),
            nn.Conv2d(dim // 4, dim, 1),
        )
        self.spatial_interaction = nn.Sequential(
            nn.Conv2d(dim, dim // 4, 1), nn.BatchNorm2d(dim // 4), nn.GELU(), nn.Conv2d(dim // 4, 1, 1)
        )

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:  # noqa: N803 (DAT's names)
        B, N, C = x.shape  # noqa: N806
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0].transpose(-2, -1), qkv[1].transpose(-2, -1), qkv[2].transpose(-2, -1)
        v_ = v.reshape(B, C, N).contiguous().view(B, C, H, W)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        attened_x = (attn @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        conv_x = self.dwconv(v_)
        attention_reshape = attened_x.transpose(-2, -1).contiguous().view(B, C, H, W)
        channel_map = self.channel_interaction(attention_reshape)
        spatial_map = self.spatial_interaction(conv_x).permute(0, 2, 3, 1).contiguous().view(B, N, 1)
        attened_x = attened_x * torch.sigmoid(spatial_map)
        conv_x = (conv_x * torch.sigmoid(channel_map)).permute(0, 2, 3, 1).contiguous().view(B, N, C)
        return self.proj(attened_x + conv_x)


class AdaptiveSpatialMix(nn.Module):
    """DAT's Adaptive_Spatial_Attention without its window attention (local already): the conv branch,
    whose pooled channel map reaches the tokens through ``view(B, 1, C)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.v = nn.Linear(dim, dim)
        self.dwconv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.BatchNorm2d(dim), nn.GELU())
        self.channel_interaction = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim // 4, 1), nn.BatchNorm2d(dim // 4), nn.GELU(),
            nn.Conv2d(dim // 4, dim, 1),
        )
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:  # noqa: N803
        B, N, C = x.shape  # noqa: N806
        v = self.v(x)
        conv_x = self.dwconv(v.transpose(1, 2).contiguous().view(B, C, H, W))
        channel_map = self.channel_interaction(conv_x).permute(0, 2, 3, 1).contiguous().view(B, 1, C)
        return self.proj(v * torch.sigmoid(channel_map) + conv_x.flatten(2).transpose(1, 2))


class DATBlock(nn.Module):
    def __init__(self, dim: int, attn: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:  # noqa: N803
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.ffn(self.norm2(x))


class DAT(nn.Module):
    """DAT (Chen et al. ICCV 2023) at one resolution: tokens (B, H*W, C), a channel block and a spatial block."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.conv_first = conv(3, dim)
        self.blocks = nn.ModuleList([DATBlock(dim, AdaptiveChannelAttention(dim, 2)), DATBlock(dim, AdaptiveSpatialMix(dim))])
        self.norm = nn.LayerNorm(dim)
        self.conv_last = conv(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        t = self.conv_first(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            t = block(t, h, w)
        y = self.norm(t).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.conv_last(y)


# ----------------------------------------------------------------------------- Retinexformer


class IlluminationEstimator(nn.Module):
    """Retinexformer's estimator: its first conv takes the image and its channel mean (4 channels)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, c, 1)
        self.depth_conv = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.conv2 = nn.Conv2d(c, 3, 1)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean_c = img.mean(dim=1).unsqueeze(1)
        illu_fea = self.depth_conv(self.conv1(torch.cat([img, mean_c], dim=1)))
        return illu_fea, self.conv2(illu_fea)


class IGMSA(nn.Module):
    """Retinexformer's illumination-guided MSA (Cai et al. ICCV 2023): tokens (b, h, w, c), values
    weighted by the illumination features, attention across channels."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_k = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_v = nn.Linear(dim, dim_head * heads, bias=False)
        self.rescale = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(dim_head * heads, dim)
        self.pos_emb = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False, groups=dim), nn.GELU(),
                                     nn.Conv2d(dim, dim, 3, padding=1, bias=False, groups=dim))

    def forward(self, x_in: torch.Tensor, illu_fea_trans: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x_in.shape
        x = x_in.reshape(b, h * w, c)
        q_inp, k_inp, v_inp = self.to_q(x), self.to_k(x), self.to_v(x)
        q, k, v, illu = (rearrange(t, "b n (h d) -> b h n d", h=self.num_heads)
                         for t in (q_inp, k_inp, v_inp, illu_fea_trans.flatten(1, 2)))
        v = v * illu
        q, k, v = q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1)
        q = F.normalize(q, dim=-1, p=2)
        k = F.normalize(k, dim=-1, p=2)
        attn = ((k @ q.transpose(-2, -1)) * self.rescale).softmax(dim=-1)
        x = (attn @ v).permute(0, 3, 1, 2).reshape(b, h * w, self.num_heads * self.dim_head)
        out_c = self.proj(x).view(b, h, w, c)
        out_p = self.pos_emb(v_inp.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return out_c + out_p


class IGAB(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = IGMSA(dim, dim // heads, heads)
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1, bias=False), nn.GELU(),
                                nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim, bias=False), nn.GELU(),
                                nn.Conv2d(2 * dim, dim, 1, bias=False))

    def forward(self, x: torch.Tensor, illu_fea: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = self.attn(x, illu_fea.permute(0, 2, 3, 1)) + x
        x = self.ff(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x
        return x.permute(0, 3, 1, 2)


class Denoiser(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.embedding = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.enc = IGAB(c, 1)
        self.fea_down = nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False)
        self.illu_down = nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False)
        self.bottleneck = IGAB(2 * c, 2)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, 2)
        self.fusion = nn.Conv2d(2 * c, c, 1, bias=False)
        self.dec = IGAB(c, 1)
        self.mapping = nn.Conv2d(c, 3, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, illu_fea: torch.Tensor) -> torch.Tensor:
        e = self.enc(self.embedding(x), illu_fea)
        m = self.bottleneck(self.fea_down(e), self.illu_down(illu_fea))
        d = self.dec(self.fusion(torch.cat([self.up(m), e], dim=1)), illu_fea)
        return self.mapping(d) + x


class Retinexformer(nn.Module):
    """Retinexformer (Cai et al. ICCV 2023), one stage: the estimator is registered first."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.estimator = IlluminationEstimator(c)
        self.denoiser = Denoiser(c)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        illu_fea, illu_map = self.estimator(img)
        return self.denoiser(img * illu_map + img, illu_fea)


RETINEXFORMER_SITES = ("denoiser.enc.attn", "denoiser.bottleneck.attn", "denoiser.dec.attn")


# ----------------------------------------------------------------------------- Stripformer


class StripAttention(nn.Module):
    """Multi-head self-attention within each whole row (``axis="row"``: W tokens) or column."""

    def __init__(self, dim: int, heads: int, axis: str) -> None:
        super().__init__()
        self.heads, self.axis = heads, axis
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.axis == "row":
            t = x.permute(0, 2, 3, 1).reshape(b * h, w, c)
        else:
            t = x.permute(0, 3, 2, 1).reshape(b * w, h, c)
        n, length, _ = t.shape
        qkv = self.qkv(t).reshape(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        out = self.proj((attn @ v).transpose(1, 2).reshape(n, length, c))
        if self.axis == "row":
            return out.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return out.reshape(b, w, h, c).permute(0, 3, 2, 1)


class IntraSA(nn.Module):
    """Stripformer's intra-strip attention (Tsai et al. ECCV 2022): half the channels attend within
    rows, half within columns; 1x1 fusion; conv feed-forward."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.conv_input = nn.Conv2d(dim, dim, 1)
        self.attn_h = StripAttention(dim // 2, heads, "row")
        self.attn_v = StripAttention(dim // 2, heads, "column")
        self.fuse_out = nn.Conv2d(dim, dim, 1)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, 2 * dim, 3, padding=1,
                                 groups=2 * dim), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_h, x_v = torch.chunk(self.conv_input(self.norm(x)), 2, dim=1)
        x = x + self.fuse_out(torch.cat([self.attn_h(x_h), self.attn_v(x_v)], dim=1))
        return x + self.mlp(x)


class Stripformer(nn.Module):
    """Stripformer cut down: a stride-2 embedding, two intra-strip blocks, transposed-conv decoder."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = conv(3, c)
        self.down = nn.Conv2d(c, 2 * c, 3, 2, 1)
        self.body = nn.Sequential(IntraSA(2 * c), IntraSA(2 * c))
        self.up = nn.ConvTranspose2d(2 * c, c, 2, 2)
        self.tail = conv(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.head(x))
        return x + self.tail(self.up(self.body(self.down(f))) + f)
