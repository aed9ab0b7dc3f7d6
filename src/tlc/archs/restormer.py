"""Restormer (Zamir et al., CVPR 2022, "Restormer: Efficient Transformer for High-Resolution Image
Restoration").

A four-level U-Net of transformer blocks. Each block is a channel layer norm, Multi-Dconv Head
Transposed Attention (MDTA: attention across channels, whose ``q k^T`` statistic sums over the
whole map, the global op TLC makes local), another layer norm and a Gated-Dconv Feed-Forward
Network. State_dict keys follow the released checkpoints (e.g. ``encoder_level1.0.attn.qkv.weight``).

The global attention becomes local through the rule ``tlc.rules.TRANSPOSED_ATTENTION`` (one of
:data:`tlc.DEFAULT_RULES`), which recognises it by what it computes, as any other transposed
attention (:mod:`tlc.nn.attention`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import transposed_attention
from .nafnet import pad_to_multiple

#: Three 2x downsamplings: the input is padded to a multiple of 8 so the skips line up.
PADDER_SIZE = 8


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each pixel of an (N, C, H, W) map, eps 1e-5.

    With ``with_bias=False`` (Restormer's 'BiasFree' variant) the input is only scaled by its
    standard deviation, not centred, and there is no ``bias`` parameter.
    """

    def __init__(self, channels: int, with_bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        if with_bias:
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("bias", None)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.var(1, keepdim=True, unbiased=False)
        if self.bias is None:
            return x / (var + self.eps).sqrt() * self.weight.view(1, -1, 1, 1)
        y = (x - x.mean(1, keepdim=True)) / (var + self.eps).sqrt()
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, with_bias={self.bias is not None}, eps={self.eps}"


class LayerNorm(nn.Module):
    """Restormer's layer norm: a :class:`ChannelNorm` held as ``body`` (the checkpoints' key layout).

    ``LayerNorm_type`` is 'WithBias' or 'BiasFree'.
    """

    def __init__(self, dim: int, LayerNorm_type: str = "WithBias") -> None:  # noqa: N803 (reference name)
        super().__init__()
        if LayerNorm_type not in ("WithBias", "BiasFree"):
            raise ValueError(f"LayerNorm_type must be 'WithBias' or 'BiasFree', got {LayerNorm_type!r}")
        self.body = ChannelNorm(dim, with_bias=LayerNorm_type == "WithBias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FeedForward(nn.Module):
    """Gated-Dconv Feed-Forward Network: (N, C, H, W) -> (N, C, H, W).

    1x1 conv to two branches of ``int(dim * ffn_expansion_factor)`` channels, depthwise 3x3,
    ``gelu(first) * second``, 1x1 conv back to ``dim``.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class _TransposedAttentionBlock(nn.Module):
    """MDTA's parameters and q/k/v projection."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.has_bias = bias
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, dim, H, W) -> q, k, v, each (N, dim, H, W), always from the whole map."""
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        return q, k, v

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, bias={self.has_bias}"


class Attention(_TransposedAttentionBlock):
    """Multi-Dconv Head Transposed Attention over the whole map: (N, dim, H, W) -> same shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        return self.project_out(transposed_attention(q, k, v, self.temperature, self.num_heads))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm1(x))``, then ``+ ffn(norm2(.))``. Shape-preserving."""

    def __init__(
        self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, LayerNorm_type: str  # noqa: N803
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class OverlapPatchEmbed(nn.Module):
    """3x3 conv embedding: (N, in_c, H, W) -> (N, embed_dim, H, W).

    Restormer builds it without bias whatever its own ``bias`` (the checkpoints have no such key).
    """

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """3x3 conv halving the channels, then pixel-unshuffle: (N, C, H, W) -> (N, 2C, H/2, W/2)."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv doubling the channels, then pixel-shuffle: (N, C, H, W) -> (N, C/2, 2H, 2W)."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Restormer(nn.Module):
    """Restormer. Keyword names are the reference's, so released configs can be passed as they are.

    Input (N, inp_channels, H, W) of any size -> output (N, out_channels, H, W). The input is
    zero-padded at the bottom and right to a multiple of 8 and the output cropped back. The output
    is the input plus a predicted residual, except for the dual-pixel task (``inp_channels=6,
    dual_pixel_task=True``), which predicts the image directly with an extra skip from level 1.

    Args:
        dim: channels at level 1 (levels 2..4 have 2x, 4x, 8x).
        num_blocks: transformer blocks per level (encoder levels 1..3 and the latent level 4;
            decoder levels 3..1 reuse the counts of 3..1).
        num_refinement_blocks: blocks after decoder level 1.
        heads: attention heads per level.
        LayerNorm_type: 'WithBias' or 'BiasFree'.
    """

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # noqa: N803 (reference name)
        dual_pixel_task: bool = False,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f"num_blocks and heads need 4 entries each, got {num_blocks} and {heads}")

        def level(channels: int, count: int, num_heads: int) -> nn.Sequential:
            args = (channels, num_heads, ffn_expansion_factor, bias, LayerNorm_type)
            return nn.Sequential(*(TransformerBlock(*args) for _ in range(count)))

        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        # Registration order fixes the state_dict order: keep it as in the checkpoints.
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = level(d1, num_blocks[0], heads[0])
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = level(d2, num_blocks[1], heads[1])
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = level(d3, num_blocks[2], heads[2])
        self.down3_4 = Downsample(d3)
        self.latent = level(d4, num_blocks[3], heads[3])
        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, 1, bias=bias)
        self.decoder_level3 = level(d3, num_blocks[2], heads[2])
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, 1, bias=bias)
        self.decoder_level2 = level(d2, num_blocks[1], heads[1])
        # Level 1 of the decoder keeps the concatenated 2*dim channels (no reducing conv).
        self.up2_1 = Upsample(d2)
        self.decoder_level1 = level(d2, num_blocks[0], heads[0])
        self.refinement = level(d2, num_refinement_blocks, heads[0])
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(d1, d2, 1, bias=bias)
        self.output = nn.Conv2d(d2, out_channels, 3, padding=1, bias=bias)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        h, w = inp_img.shape[-2:]
        x = pad_to_multiple(inp_img, PADDER_SIZE)

        emb1 = self.patch_embed(x)
        enc1 = self.encoder_level1(emb1)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))

        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        dec1 = self.refinement(dec1)

        if self.dual_pixel_task:
            out = self.output(dec1 + self.skip_conv(emb1))
        else:
            out = self.output(dec1) + x
        return out[:, :, :h, :w]
