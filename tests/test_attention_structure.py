"""Transposed attention recognised by what it computes, whatever the class or how it reshapes.

Four blocks written from the published code's structure (Restormer's MDTA with einops, KBNet's
TransAttention with plain reshapes, Retinexformer's IG_MSA on channels-last maps with ``k @ q^T``,
DAT's channel attention on tokens with H, W as arguments), each inside a small network. The local
result at 4x the training size is checked against attention computed by hand, window by window.
"""

from __future__ import annotations

import copy
import pickle

import einops
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tlc
from tlc.nn.attention import LocalTransposedAttention
from tlc.nn.attention_pattern import layout_in_call, merged_pairs

from .conftest import TOLERANCE
from .test_attention import reference_starts

TRAIN = 16


# ----------------------------------------------------------------------------- the four blocks


class RestormerAttention(nn.Module):
    """Restormer's MDTA as published: einops rearranges, q k^T scaled by a per-head temperature."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = einops.rearrange(q, "b (head c) h w -> b head c (h w)", head=self.num_heads)
        k = einops.rearrange(k, "b (head c) h w -> b head c (h w)", head=self.num_heads)
        v = einops.rearrange(v, "b (head c) h w -> b head c (h w)", head=self.num_heads)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = attn.softmax(dim=-1)
        out = attn @ v
        out = einops.rearrange(out, "b head c (h w) -> b (head c) h w", head=self.num_heads, h=h, w=w)
        return self.project_out(out)


class TransAttention(nn.Module):
    """KBNet's TransAttention: the same computation, plain reshapes, softmax as a child module."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(1, num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.softmax = nn.Softmax(dim=-1)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = q.reshape(b, self.num_heads, c // self.num_heads, h * w)
        k = k.reshape(b, self.num_heads, c // self.num_heads, h * w)
        v = v.reshape(b, self.num_heads, c // self.num_heads, h * w)
        q = torch.nn.functional.normalize(q, dim=-1)
        k = torch.nn.functional.normalize(k, dim=-1)
        attn = self.softmax(torch.matmul(q, k.mT) * self.temperature)
        return self.project_out(torch.matmul(attn, v).reshape(b, c, h, w))


class IGMSA(nn.Module):
    """Retinexformer's illumination-guided attention: (b, h, w, c) maps, Linear q/k/v on tokens,
    v times the illumination features, ``k @ q^T``, and a positional conv branch on v. Heads split
    with reshape/permute here; tests/corpus spells the same block with einops."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_k = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_v = nn.Linear(dim, dim_head * heads, bias=False)
        self.rescale = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(dim_head * heads, dim, bias=True)
        self.pos_emb = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False, groups=dim),
        )
        self.dim = dim

    def forward(self, x_in, illu_fea_trans):
        b, h, w, c = x_in.shape
        x = x_in.reshape(b, h * w, c)
        q_inp, k_inp, v_inp = self.to_q(x), self.to_k(x), self.to_v(x)
        illu_attn = illu_fea_trans.flatten(1, 2)

        def heads(t):  # b n (h d) -> b h n d
            return t.reshape(b, h * w, self.num_heads, -1).permute(0, 2, 1, 3)

        q, k, v, illu_attn = heads(q_inp), heads(k_inp), heads(v_inp), heads(illu_attn)
        v = v * illu_attn
        q, k, v = q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1)
        q = F.normalize(q, dim=-1, p=2)
        k = F.normalize(k, dim=-1, p=2)
        attn = k @ q.transpose(-2, -1)
        attn = attn * self.rescale
        attn = attn.softmax(dim=-1)
        x = attn @ v
        x = x.permute(0, 3, 1, 2)
        x = x.reshape(b, h * w, self.num_heads * self.dim_head)
        out_c = self.proj(x).view(b, h, w, c)
        out_p = self.pos_emb(v_inp.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return out_c + out_p


class ChannelAttention(nn.Module):
    """DAT's channel attention on (B, N, C) tokens with the map's H and W as arguments."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k, v = q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1)
        q = torch.nn.functional.normalize(q, dim=-1)
        k = torch.nn.functional.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj(x)


# ----------------------------------------------------------------------------- networks holding them


class MapNet(nn.Module):
    """conv in, ``x + block(x)`` on (N, C, H, W) maps, conv out."""

    def __init__(self, block: nn.Module, dim: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, dim, 3, padding=1)
        self.stage = nn.ModuleDict({"attn": block})
        self.conv_out = nn.Conv2d(dim, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv_in(x)
        return self.conv_out(y + self.stage["attn"](y))


class RetinexNet(nn.Module):
    """conv in and an illumination conv, the IG-MSA block on channels-last maps, conv out."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, dim, 3, padding=1)
        self.illumination = nn.Conv2d(3, dim, 3, padding=1)
        self.block = IGMSA(dim, dim // heads, heads)
        self.conv_out = nn.Conv2d(dim, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv_in(x)
        z = self.block(y.permute(0, 2, 3, 1), self.illumination(x).permute(0, 2, 3, 1))
        return self.conv_out(y + z.permute(0, 3, 1, 2))


class TokenNet(nn.Module):
    """A stride-2 conv in, the block on (B, H*W, C) tokens with H, W passed, conv out and upsampling."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, dim, 3, stride=2, padding=1)
        self.layers = nn.ModuleList([ChannelAttention(dim, heads)])
        self.conv_out = nn.Conv2d(dim, 12, 3, padding=1)

    def forward(self, x):
        y = self.conv_in(x)
        b, c, h, w = y.shape
        tokens = y.flatten(2).transpose(1, 2)
        tokens = tokens + self.layers[0](tokens, h, w)
        return F.pixel_shuffle(self.conv_out(tokens.transpose(1, 2).reshape(b, c, h, w)), 2)


def randomised(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("temperature", "rescale")):
                p.copy_(torch.rand_like(p) * 2 + 0.5)  # never 1
            else:
                p.copy_(torch.randn_like(p) * 0.4)
    return model.eval()


def restormer_net() -> nn.Module:
    return randomised(MapNet(RestormerAttention(8, 2, bias=True), 8), 1)


def kbnet_net() -> nn.Module:
    return randomised(MapNet(TransAttention(8, 2, bias=False), 8), 2)


def retinex_net() -> nn.Module:
    return randomised(RetinexNet(8, 2), 3)


def dat_net() -> nn.Module:
    return randomised(TokenNet(12, 3), 4)


NETS = {
    "restormer": (restormer_net, "stage.attn", (TRAIN, TRAIN)),
    "kbnet": (kbnet_net, "stage.attn", (TRAIN, TRAIN)),
    "retinexformer": (retinex_net, "block", (TRAIN, TRAIN)),
    "dat": (dat_net, "layers.0", (TRAIN // 2, TRAIN // 2)),
}


# ----------------------------------------------------------------------------- the reference


def windowed_attention(q, k, v, temperature, heads, window):
    """Attention in each grid window on (N, C, H, W) maps, outputs averaged where windows overlap."""
    n, c, h, w = q.shape
    kh, kw = min(h, window[0]), min(w, window[1])
    total, count = torch.zeros_like(v), torch.zeros(h, w, dtype=v.dtype)
    for y in reference_starts(h, window[0]):
        for x in reference_starts(w, window[1]):
            parts = [t[:, :, y : y + kh, x : x + kw].reshape(n, heads, c // heads, kh * kw) for t in (q, k, v)]
            qn = parts[0] / parts[0].norm(dim=-1, keepdim=True).clamp_min(1e-12)
            kn = parts[1] / parts[1].norm(dim=-1, keepdim=True).clamp_min(1e-12)
            attn = torch.softmax(torch.einsum("bhil,bhjl->bhij", qn, kn) * temperature.reshape(heads, 1, 1), dim=-1)
            total[:, :, y : y + kh, x : x + kw] += torch.einsum("bhij,bhjl->bhil", attn, parts[2]).reshape(n, c, kh, kw)
            count[y : y + kh, x : x + kw] += 1
    return total / count


def reference_restormer(net: MapNet, x: torch.Tensor, window) -> torch.Tensor:
    block = net.stage["attn"]
    y = F.conv2d(x, net.conv_in.weight, net.conv_in.bias, padding=1)
    qkv = F.conv2d(y, block.qkv.weight, block.qkv.bias)
    qkv = F.conv2d(qkv, block.qkv_dwconv.weight, block.qkv_dwconv.bias, padding=1, groups=qkv.shape[1])
    q, k, v = qkv.chunk(3, dim=1)
    out = windowed_attention(q, k, v, block.temperature, block.num_heads, window)
    out = F.conv2d(out, block.project_out.weight, block.project_out.bias)
    return F.conv2d(y + out, net.conv_out.weight, net.conv_out.bias, padding=1)


def reference_retinex(net: RetinexNet, x: torch.Tensor, window) -> torch.Tensor:
    block = net.block
    y = F.conv2d(x, net.conv_in.weight, net.conv_in.bias, padding=1)
    illumination = F.conv2d(x, net.illumination.weight, net.illumination.bias, padding=1)
    # q, k, v as (N, C, H, W) maps: channel c of pixel (i, j) is the Linear layer's output c there.
    q, k, v = (torch.einsum("oc,nchw->nohw", layer.weight, y) for layer in (block.to_q, block.to_k, block.to_v))
    # Attention of k against q (the block computes k q^T) over v times the illumination.
    out = windowed_attention(k, q, v * illumination, block.rescale, block.num_heads, window)
    out = torch.einsum("oc,nchw->nohw", block.proj.weight, out) + block.proj.bias.reshape(1, -1, 1, 1)
    pos = F.conv2d(v, block.pos_emb[0].weight, padding=1, groups=v.shape[1])
    pos = F.conv2d(F.gelu(pos), block.pos_emb[2].weight, padding=1, groups=v.shape[1])
    return F.conv2d(y + out + pos, net.conv_out.weight, net.conv_out.bias, padding=1)


def reference_dat(net: TokenNet, x: torch.Tensor, window) -> torch.Tensor:
    block = net.layers[0]
    y = F.conv2d(x, net.conv_in.weight, net.conv_in.bias, stride=2, padding=1)
    qkv = torch.einsum("oc,nchw->nohw", block.qkv.weight, y) + block.qkv.bias.reshape(1, -1, 1, 1)
    q, k, v = qkv.chunk(3, dim=1)
    out = windowed_attention(q, k, v, block.temperature, block.num_heads, window)
    out = torch.einsum("oc,nchw->nohw", block.proj.weight, out) + block.proj.bias.reshape(1, -1, 1, 1)
    return F.pixel_shuffle(F.conv2d(y + out, net.conv_out.weight, net.conv_out.bias, padding=1), 2)


REFERENCES = {
    "restormer": reference_restormer,
    "kbnet": reference_restormer,
    "retinexformer": reference_retinex,
    "dat": reference_dat,
}


# ----------------------------------------------------------------------------- tests


def run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("name", sorted(NETS))
def test_found_converted_and_exact(name):
    make, path, layout = NETS[name]
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    block_type = type(model.get_submodule(path))
    local, report = tlc.convert(model, train_size=TRAIN)

    window = (layout[0] * 24 // TRAIN, layout[1] * 24 // TRAIN)
    assert [(op.paths, op.rule, op.feature_size, op.window) for op in report.converted] == [
        ((path,), "transposed-attention", layout, window)
    ]
    assert not report.skipped
    converted_block = local.get_submodule(path)
    assert isinstance(converted_block, LocalTransposedAttention) and isinstance(converted_block, block_type)
    assert f"window={window}" in repr(converted_block)

    # The caller's model is untouched.
    assert type(model.get_submodule(path)) is block_type
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # Same keys, strict loading both ways.
    assert list(local.state_dict()) == list(before)
    local.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(local.state_dict(), strict=True)

    # The same at the training size, local at 4x and equal to the attention computed by hand.
    torch.manual_seed(5)
    x = torch.rand(1, 3, TRAIN, TRAIN)
    assert (run(local, x) - run(model, x)).abs().max() <= 1e-5
    big = torch.rand(2, 3, 4 * TRAIN, 4 * TRAIN + 4)
    out = run(local, big)
    assert (out - run(model, big)).abs().max() > 1e-3
    with torch.no_grad():
        expected = REFERENCES[name](model, big, window)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", ["restormer", "retinexformer"])
def test_non_square_training_size(name):
    make, path, _ = NETS[name]
    model = make()
    local, report = tlc.convert(model, train_size=(12, 20), base_size=(18, 26))
    assert [(op.path, op.feature_size, op.window) for op in report.converted] == [(path, (12, 20), (18, 26))]
    x = torch.rand(1, 3, 45, 31)
    with torch.no_grad():
        torch.testing.assert_close(run(local, x), REFERENCES[name](model, x, (18, 26)), rtol=0, atol=2e-5)


def test_deepcopy_pickle_and_repr():
    local, _ = tlc.convert(restormer_net(), train_size=TRAIN)
    block = local.stage["attn"]
    assert type(block).__name__ == "LocalRestormerAttention" and block.local_window == (24, 24)
    x = torch.rand(1, 3, 50, 41)
    expected = run(local, x)
    for clone in (copy.deepcopy(local), pickle.loads(pickle.dumps(local))):
        assert isinstance(clone.stage["attn"], LocalTransposedAttention)
        assert clone.stage["attn"].temperature is not block.temperature
        torch.testing.assert_close(run(clone, x), expected, rtol=0, atol=0)


def test_wrap_shares_parameters_and_leaves_the_module():
    block = RestormerAttention(4, 2, bias=False)
    local = LocalTransposedAttention.wrap(block, (5, 7))
    assert type(block) is RestormerAttention and local.qkv is block.qkv and local.temperature is block.temperature
    local.extra = nn.Identity()
    assert not hasattr(block, "extra")
    again = LocalTransposedAttention.wrap(local, 9)
    assert type(again).__mro__[2] is RestormerAttention and again.local_window == (9, 9)


def test_gradients_flow_to_the_parameters():
    local, _ = tlc.convert(kbnet_net(), train_size=TRAIN)
    local(torch.rand(1, 3, 40, 40)).square().mean().backward()
    block = local.stage["attn"]
    assert block.temperature.grad is not None and block.temperature.grad.abs().sum() > 0
    assert block.qkv.weight.grad.abs().sum() > 0


def test_tlc_restormer_uses_the_generic_path():
    model = tlc.archs.build("Restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])
    _, report = tlc.convert(model.eval(), train_size=32)
    assert {op.rule for op in report.converted} == {"transposed-attention"}
    assert {op.path: op.window for op in report.converted}["latent.0.attn"] == (6, 6)  # 4x4 tokens at 32x32


# ----------------------------------------------------------------------------- a window holding every token


BLOCKS = {  # a block and its arguments for an (h, w) map
    "restormer": (lambda: RestormerAttention(8, 2, bias=True), lambda h, w: (torch.randn(2, 8, h, w),)),
    "kbnet": (lambda: TransAttention(8, 2, bias=False), lambda h, w: (torch.randn(2, 8, h, w),)),
    "retinexformer": (lambda: IGMSA(8, 4, 2), lambda h, w: (torch.randn(2, h, w, 8), torch.randn(2, h, w, 8))),
    "dat": (lambda: ChannelAttention(12, 3), lambda h, w: (torch.randn(2, h * w, 12), h, w)),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_a_covering_window_gives_the_modules_own_bits(name, spy):
    make, inputs = BLOCKS[name]
    block = randomised(make(), 6)
    local = LocalTransposedAttention.wrap(block, (12, 20))
    followed = spy(tlc.nn.attention._LocalChains, "final")
    torch.manual_seed(7)
    small, wide, big = inputs(9, 20), inputs(12, 11), inputs(13, 20)  # covered, covered, one row too many
    with torch.no_grad():
        for args in (small, small, wide, small, wide):  # first calls followed, the repeats not
            assert torch.equal(local(*args), block(*args))
        assert len(followed) == 2
        # A size the window does not cover is local, after the covered calls as before them.
        expected = LocalTransposedAttention.wrap(block, (12, 20))(*big)
        assert not torch.allclose(expected, block(*big), atol=1e-4)
        assert torch.equal(local(*big), expected) and torch.equal(local(*big), expected)
        assert len(followed) == 5  # the reference's call and both of these


class AttributeLayout(RestormerAttention):
    """Tokens (N, H*W, C) laid out by attributes a parent sets (``self.size = (h, w)``)."""

    size = (1, 1)

    def forward(self, tokens):
        n, length, c = tokens.shape
        return super().forward(tokens.transpose(1, 2).reshape(n, c, *self.size)).flatten(2).transpose(1, 2)


def test_a_layout_set_by_attributes_is_not_taken_for_another():
    block = randomised(AttributeLayout(8, 2, bias=False), 8)
    local = LocalTransposedAttention.wrap(block, (16, 16))
    tokens = torch.randn(1, 256, 8)
    with torch.no_grad():
        block.size = local.size = (16, 16)  # covered
        assert torch.equal(local(tokens), block(tokens)) and torch.equal(local(tokens), block(tokens))
        block.size = local.size = (8, 32)  # as many tokens, wider than the window
        expected = LocalTransposedAttention.wrap(block, (16, 16))(tokens)
        assert not torch.allclose(expected, block(tokens), atol=1e-4)
        torch.testing.assert_close(local(tokens), expected, rtol=0, atol=0)


def test_covered_calls_are_not_kept_by_copies_with_another_window():
    block = randomised(RestormerAttention(8, 2, bias=False), 9)
    local = LocalTransposedAttention.wrap(block, 16)
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        local(x)
        narrower = LocalTransposedAttention.wrap(local, 8)
        assert torch.equal(narrower(x), LocalTransposedAttention.wrap(block, 8)(x))
        assert not torch.allclose(narrower(x), block(x), atol=1e-4)
        assert "_covered_calls" not in pickle.loads(pickle.dumps(local)).__dict__


# ----------------------------------------------------------------------------- partial patterns: reported


class OverQueries(RestormerAttention):
    """The softmax runs over the other axis of the attention matrix."""

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, self.num_heads, -1, h * w) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        return self.project_out((attn.softmax(dim=-2) @ v).reshape(b, c, h, w))


class BlindChannelAttention(ChannelAttention):
    """DAT's attention without the H, W arguments: the tokens' layout cannot be seen inside."""

    def forward(self, x):
        return super().forward(x, None, None)


class BlindTokenNet(TokenNet):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim, heads)
        self.layers = nn.ModuleList([BlindChannelAttention(dim, heads)])

    def forward(self, x):
        y = self.conv_in(x)
        b, c, h, w = y.shape
        tokens = y.flatten(2).transpose(1, 2)
        tokens = tokens + self.layers[0](tokens)
        return F.pixel_shuffle(self.conv_out(tokens.transpose(1, 2).reshape(b, c, h, w)), 2)


class ShowsAttention(TransAttention):
    """Keeps its attention matrix for later (a use outside the attention)."""

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, self.num_heads, -1, h * w) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        attn = self.softmax((F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).mT) * self.temperature)
        self.entropy = -(attn * attn.log()).sum()
        return self.project_out((attn @ v).reshape(b, c, h, w))


@pytest.mark.parametrize(
    "net, path, reason",
    [
        (MapNet(OverQueries(8, 2, bias=False), 8), "stage.attn", "softmax runs over dim -2"),
        (BlindTokenNet(12, 3), "layers.0", "height and width of the 64 tokens are not visible"),
        (MapNet(ShowsAttention(8, 2, bias=False), 8), "stage.attn", "attention matrix is also used by log"),
    ],
)
def test_partial_patterns_are_reported(net, path, reason):
    model = randomised(net, 6)
    local, report = tlc.convert(model, train_size=TRAIN)
    assert not report.converted
    assert [(s.paths, s.rule) for s in report.skipped] == [((path,), "transposed-attention")]
    assert reason in report.skipped[0].reason
    x = torch.rand(1, 3, 40, 40)
    torch.testing.assert_close(run(local, x), run(model, x), rtol=0, atol=0)


def test_window_attention_over_channels_is_not_taken_for_tokens():
    # SwinV2-style cosine attention inside 4x4 windows: q, k normalised over channels, softmax over
    # the 16 tokens of a window. Local already: nothing to convert, nothing to report.
    class Cosine(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Conv2d(4, 12, 1)

        def forward(self, x):
            b, c, h, w = x.shape

            def windows(t):  # (b, c, h, w) -> (b * windows, 16, c)
                t = t.reshape(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 3, 5, 1)
                return t.reshape(-1, 16, c)

            q, k, v = (windows(t) for t in self.qkv(x).chunk(3, dim=1))
            attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)).softmax(dim=-1)
            out = (attn @ v).reshape(b, h // 4, w // 4, 4, 4, c).permute(0, 5, 1, 3, 2, 4)
            return x + out.reshape(b, c, h, w)

    model = nn.Sequential(nn.Conv2d(3, 4, 1), Cosine())
    with pytest.warns(UserWarning, match="no global operation"):
        _, report = tlc.convert(model, train_size=8)
    assert not report.converted and not report.skipped


# ----------------------------------------------------------------------------- pieces


def test_merged_pairs():
    assert merged_pairs((2, 8, 5, 7), (2, 2, 4, 35)) == [(5, 7)]  # heads split, tokens merged
    assert merged_pairs((2, 5, 7, 8), (2, 35, 8)) == [(5, 7)]  # channels last
    assert merged_pairs((2, 8, 1, 7), (2, 8, 7)) == [(1, 7)]
    assert merged_pairs((2, 3, 4), (2, 12, 1)) == [(3, 4)]
    assert merged_pairs((2, 3, 4), (2, 3, 2, 2)) == []
    assert merged_pairs((6, 4), (24,)) == [(6, 4)]


def test_layout_in_call():
    assert layout_in_call(35, [(2, 4), (5, 7)], (), {}) == (5, 7)
    assert layout_in_call(35, [], (torch.zeros(1), 5, 7), {}) == (5, 7)
    assert layout_in_call(35, [], (torch.zeros(1),), {"x_size": (5, 7)}) == (5, 7)
    assert "any of 5x7, 7x5" in layout_in_call(35, [(5, 7), (7, 5)], (), {})
    assert "not visible" in layout_in_call(35, [], (3, 4), {})


# ----------------------------------------------------------------------------- with other global ops inside


class InteractingChannelAttention(ChannelAttention):
    """DAT's channel attention with a pooled channel gate on its output map (its C-map branch)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__(dim, num_heads)
        self.channel_interaction = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1), nn.Sigmoid())

    def forward(self, x, H, W):
        out = super().forward(x, H, W)
        B, N, C = out.shape
        out = out.transpose(1, 2).reshape(B, C, H, W)
        return (out * self.channel_interaction(out)).flatten(2).transpose(1, 2)


def test_global_ops_inside_the_attention_are_converted_too():
    model = TokenNet(12, 3)
    model.layers = nn.ModuleList([InteractingChannelAttention(12, 3)])
    model = randomised(model, 7)
    local, report = tlc.convert(model, train_size=TRAIN)
    assert [(op.path, op.rule, op.window) for op in report.converted] == [
        ("layers.0", "transposed-attention", (12, 12)),
        ("layers.0.channel_interaction", "global-avg-pool+pointwise", (12, 12)),
    ]
    block = local.layers[0]
    assert isinstance(block, LocalTransposedAttention)
    assert isinstance(block.channel_interaction, tlc.LocalPooledSequential)
    assert list(local.state_dict()) == list(model.state_dict())
    x = torch.rand(1, 3, TRAIN, TRAIN)
    assert (run(local, x) - run(model, x)).abs().max() <= 1e-5
    big = torch.rand(1, 3, 64, 64)
    assert (run(local, big) - run(model, big)).abs().max() > 1e-3
    # Either op alone local gives something else: both are local in the converted model.
    only_attention, _ = tlc.convert(model, train_size=TRAIN, rules=[tlc.rules.TRANSPOSED_ATTENTION])
    only_pool, _ = tlc.convert(model, train_size=TRAIN, rules=[tlc.rules.POOLED_POINTWISE])
    for partial in (only_attention, only_pool):
        assert (run(local, big) - run(partial, big)).abs().max() > 1e-4


def test_reason_names_the_source_line():
    model = randomised(MapNet(OverQueries(8, 2, bias=False), 8), 6)
    _, report = tlc.convert(model, train_size=TRAIN)
    lines = open(__file__).read().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "attn = (F.normalize(q, dim=-1) @" in text)
    assert report.skipped[0].reason.endswith(f"(attention at test_attention_structure.py:{line})")


class FoldedHeads(nn.Module):
    """Heads folded into the batch ((B*heads, d, L) and bmm), a scalar scale: divided by a 0-d
    parameter, then multiplied in place by a Python float."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.tau = nn.Parameter(torch.tensor(0.7))
        self.qkv = nn.Conv2d(dim, dim * 3, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b * self.heads, c // self.heads, h * w) for t in self.qkv(x).chunk(3, dim=1))
        attn = torch.bmm(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(1, 2)) / self.tau
        attn *= 3.0
        return torch.bmm(F.softmax(attn, dim=-1), v).reshape(b, c, h, w)


def test_folded_heads_and_scalar_scales():
    model = randomised(MapNet(FoldedHeads(8, 2), 8), 8)
    local, report = tlc.convert(model, train_size=TRAIN)
    assert [(op.path, op.window) for op in report.converted] == [("stage.attn", (24, 24))]
    x = torch.rand(1, 3, TRAIN, TRAIN)
    assert (run(local, x) - run(model, x)).abs().max() <= 1e-5
    big = torch.rand(2, 3, 53, 70)
    block = model.stage["attn"]
    with torch.no_grad():
        y = model.conv_in(big)
        q, k, v = F.conv2d(y, block.qkv.weight, block.qkv.bias).chunk(3, dim=1)
        temperature = (3.0 / block.tau).expand(2, 1, 1)
        expected = model.conv_out(y + windowed_attention(q, k, v, temperature, 2, (24, 24)))
    torch.testing.assert_close(run(local, big), expected, rtol=0, atol=2e-5)
    assert (run(local, big) - run(model, big)).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes(dtype):
    model = restormer_net().to(dtype)
    local, report = tlc.convert(model, train_size=TRAIN)
    assert [op.path for op in report.converted] == ["stage.attn"]
    big = torch.rand(1, 3, 50, 44, dtype=dtype)
    out = run(local, big)
    assert out.dtype == dtype
    with torch.no_grad():
        expected = reference_restormer(restormer_net().double(), big.double(), (24, 24))
        global_error = (run(model, big).double() - expected).abs().max()
    error, scale = (out.double() - expected).abs().max(), expected.abs().max()
    assert error <= TOLERANCE[dtype] * scale
    assert error < global_error / 2  # bfloat16 rounding, not the global attention


def test_the_rules_do_not_import_the_model_zoo():
    import ast
    from pathlib import Path

    root = Path(tlc.__file__).parent
    for path in [p for layer in ("ops", "nn", "convert") for p in (root / layer).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(name == "archs" or ".archs" in name or name.startswith("archs") for name in names), path


class SometimesUsesQ(TransAttention):
    """Uses its normalised q elsewhere, but only beyond the training size (unseen at calibration)."""

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, self.num_heads, -1, h * w) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        out = self.project_out((self.softmax((q @ k.mT) * self.temperature) @ v).reshape(b, c, h, w))
        if h * w > TRAIN * TRAIN:
            out = out + q.square().sum(-1).mean()  # 1: the rows of q have unit norm
        return out


def test_normalised_q_used_elsewhere_has_its_real_value():
    # The local block leaves q unnormalised while only the attention uses it.
    model = randomised(MapNet(SometimesUsesQ(8, 2, bias=False), 8), 9)
    plain = MapNet(TransAttention(8, 2, bias=False), 8).eval()
    plain.load_state_dict(model.state_dict(), strict=True)
    local, report = tlc.convert(model, train_size=TRAIN)
    local_plain, _ = tlc.convert(plain, train_size=TRAIN)
    assert [op.path for op in report.converted] == ["stage.attn"]
    y = torch.rand(1, 8, 4 * TRAIN, 4 * TRAIN)
    with torch.no_grad():
        difference = local.stage["attn"](y) - local_plain.stage["attn"](y)
    torch.testing.assert_close(difference, torch.ones_like(difference), rtol=0, atol=1e-5)
