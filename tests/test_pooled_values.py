"""Pooled values followed through their consumers: squeeze-excitation with Linear layers, CBAM,
selective-kernel fusion, DAT's view(N, 1, C) against tokens, GCNet's context block.

Each converted model is checked against an independent per-pixel reference: for every pixel, the
original model runs with each global pooling answered by the pooling of that pixel's window (cut
out by explicit slicing from the placement rule), and the pixel's output is kept.
"""

from __future__ import annotations

import copy
import gc
import importlib
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .conftest import TOLERANCE
from tlc.archs.nafnet import NAFNet
from tlc.ops.pool import local_mean, valid_local_mean, window_sums
from tlc.convert.pooled_values import PooledValueError, PooledValues, WindowMeans

SIZE = (9, 13)
WINDOWS = [(6, 9), (20, 6), (3, 20)]  # smaller than the map; covering one axis only


# ----------------------------------------------------------------------------- recognising pools


def _pool_kind(func, args, kwargs) -> str | None:
    """"mean" / "max" for a global pooling of an (N, C, H, W) map, "att" for GCNet's attention
    pooling ``matmul((N, 1, C, H*W), (N, 1, H*W, 1))`` of a map of size SIZE, else None."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    rest = args[1:]
    if func is torch.matmul and len(args) == 2 and x.shape[1] == 1 and x.shape[-1] == SIZE[0] * SIZE[1]:
        return "att" if args[1].shape == (x.shape[0], 1, x.shape[-1], 1) else None
    if func in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        size = rest[0] if rest else kwargs.get("output_size")
        if size in (1, (1, 1), [1, 1]):
            return "mean" if func is F.adaptive_avg_pool2d else "max"
    if func in (torch.Tensor.mean, torch.mean, torch.Tensor.amax, torch.amax):
        dim = rest[0] if rest else kwargs.get("dim")
        keepdim = rest[1] if len(rest) > 1 else kwargs.get("keepdim", False)
        mean = func in (torch.Tensor.mean, torch.mean)
        if isinstance(dim, (tuple, list)) and sorted(d % 4 for d in dim) == [2, 3] and (keepdim or mean):
            return "mean" if mean else "max"
    return None


def _window_of(x: torch.Tensor, window: tuple[int, int]) -> tuple[int, int]:
    return min(window[0], x.shape[-2]), min(window[1], x.shape[-1])


def _pooled_maps(kind: str, args: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (N, C, H, W) map a pooling reduces, and for "att" its (N, 1, H, W) weights."""
    if kind != "att":
        return args[0], None
    a, b = args
    n, c = a.shape[0], a.shape[2]
    return a.reshape(n, c, *SIZE), b.reshape(n, 1, *SIZE)


class Local(TorchFunctionMode):
    """The converter's part, reduced to what this mechanism needs: global poolings start pooled
    values (valid windows: means by prefix sums, as valid_local_mean's torch path; max by brute
    force), all else goes to handle. valid_local_mean itself feeds one test at the end."""

    def __init__(self, window: tuple[int, int]) -> None:
        super().__init__()
        self.window = window
        self.values = PooledValues()
        self.pools = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _pool_kind(func, args, kwargs)
        if kind is not None and not self.values.is_pooled(args[0]):
            x, weights = _pooled_maps(kind, args)
            real = func(*args, **kwargs)
            kh, kw = _window_of(x, self.window)
            if kind == "mean":
                valid = (window_sums(x, (kh, kw)) / (kh * kw)).to(x.dtype)
            elif kind == "max":
                valid = x.unfold(2, kh, 1).unfold(3, kw, 1).amax((-2, -1))
            else:  # softmax over the window = the global softmax renormalised over the window
                num = (x * weights).unfold(2, kh, 1).unfold(3, kw, 1).sum((-2, -1))
                valid = num / weights.unfold(2, kh, 1).unfold(3, kw, 1).sum((-2, -1))
            self.pools += 1
            return self.values.start(real, valid, x.shape[-2:], source=f"pool{self.pools}")
        out = self.values.handle(func, types, args, kwargs)
        return func(*args, **kwargs) if out is NotImplemented else out


class AtPixel(TorchFunctionMode):
    """Reference: every global pooling answered by the pooling of pixel (i, j)'s window only."""

    def __init__(self, window: tuple[int, int], pixel: tuple[int, int]) -> None:
        super().__init__()
        self.window, self.pixel = window, pixel

    def placement(self, x: torch.Tensor) -> tuple[int, int]:
        """(top, left) of the pixel's window on x, placed as tlc.ops.pool documents: (k-1)//2
        before the pixel, shifted to lie inside the map."""
        (h, w), (kh, kw) = x.shape[-2:], _window_of(x, self.window)
        top = min(max(self.pixel[0] - (kh - 1) // 2, 0), h - kh)
        left = min(max(self.pixel[1] - (kw - 1) // 2, 0), w - kw)
        return top, left

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _pool_kind(func, args, kwargs)
        out = func(*args, **kwargs)
        if kind is None:
            return out
        x, weights = _pooled_maps(kind, args)
        (kh, kw), (top, left) = _window_of(x, self.window), self.placement(x)
        patch = x[:, :, top : top + kh, left : left + kw]
        if kind == "mean":
            value = patch.mean((2, 3), keepdim=True)
        elif kind == "max":
            value = patch.amax((2, 3), keepdim=True)
        else:
            p = weights[:, :, top : top + kh, left : left + kw]
            value = (patch * p).sum((2, 3)) / p.sum((2, 3))
        return value.reshape(out.shape).to(out.dtype)


@pytest.fixture(autouse=True)
def _torch_threads_as_found():
    """numba's OpenMP kernels (multiply_replicated, valid_local_mean) set the OpenMP thread count
    torch shares, overriding OMP_NUM_THREADS; on a busy machine the following torch ops then
    slow down a hundredfold. Each test leaves torch's thread count as it found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_local(model: nn.Module, x: torch.Tensor, window) -> tuple[torch.Tensor, PooledValues]:
    mode = Local(window)
    with torch.no_grad(), mode:
        out = model(x)
    return out, mode.values


def per_pixel_reference(model: nn.Module, x: torch.Tensor, window, tokens: bool = False) -> torch.Tensor:
    """For each pixel: the model run with its poolings answered by that pixel's window, output at
    the pixel. Pixels whose windows coincide share one run."""
    h, w = x.shape[-2:]
    with torch.no_grad():
        ref = model(x).clone()
        done = {}
        for i in range(h):
            for j in range(w):
                mode = AtPixel(window, (i, j))
                key = mode.placement(x)
                if key not in done:
                    with mode:
                        done[key] = model(x)
                out = done[key]
                if tokens:
                    ref[:, i * w + j] = out[:, i * w + j]
                else:
                    ref[..., i, j] = out[..., i, j]
    return ref


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random parameters and running statistics everywhere (defaults hide mistakes: zero biases,
    unit norms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    return model.eval()


# ----------------------------------------------------------------------------- consumers


class SELinear(nn.Module):
    """Squeeze-excitation with Linear layers (RCAN / SENet code)."""

    def __init__(self, c: int = 8, r: int = 2) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // r), nn.ReLU(inplace=True), nn.Linear(c // r, c), nn.Sigmoid())

    def forward(self, x):
        x = self.head(x)
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class CBAM(nn.Module):
    """CBAM's channel gate: a shared Flatten-Linear MLP on avg- and max-pooled vectors, summed.
    (Its spatial gate mixes neighbouring pixels, so the per-pixel reference would not apply.)"""

    def __init__(self, c: int = 8, r: int = 2) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c))
        self.max_pool = nn.AdaptiveMaxPool2d(1)

    def forward(self, x):
        x = self.head(x)
        att = None
        for pool in ("avg", "max"):
            pooled = F.adaptive_avg_pool2d(x, 1) if pool == "avg" else self.max_pool(x)
            raw = self.mlp(pooled)
            att = raw if att is None else att + raw
        scale = torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)
        return x * scale


class SKFF(nn.Module):
    """MIRNet's selective kernel feature fusion, on branches computed from the input."""

    def __init__(self, c: int = 6, height: int = 3, reduction: int = 2) -> None:
        super().__init__()
        self.height = height
        self.branches = nn.ModuleList([nn.Conv2d(3, c, 2 * i + 1, padding=i) for i in range(height)])
        d = max(c // reduction, 2)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(c, d, 1), nn.PReLU())
        self.fcs = nn.ModuleList([nn.Conv2d(d, c, 1) for _ in range(height)])
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        inp_feats = [branch(x) for branch in self.branches]
        batch_size, n_feats = inp_feats[0].shape[0], inp_feats[0].shape[1]
        inp_feats = torch.cat(inp_feats, dim=1)
        inp_feats = inp_feats.view(batch_size, self.height, n_feats, inp_feats.shape[2], inp_feats.shape[3])
        feats_u = torch.sum(inp_feats, dim=1)
        feats_s = self.avg_pool(feats_u)
        feats_z = self.conv_du(feats_s)
        attention = torch.cat([fc(feats_z) for fc in self.fcs], dim=1)
        attention = self.softmax(attention.view(batch_size, self.height, n_feats, 1, 1))
        return torch.sum(inp_feats * attention, dim=1)


class DATChannel(nn.Module):
    """DAT's channel interaction: a pooled gate viewed as (N, 1, C) scales (N, H*W, C) tokens."""

    def __init__(self, c: int = 8, permute: bool = True) -> None:
        super().__init__()
        self.permute = permute
        self.embed = nn.Conv2d(3, c, 3, padding=1)
        self.dwconv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.interaction = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 2, 1), nn.BatchNorm2d(c // 2), nn.GELU(), nn.Conv2d(c // 2, c, 1)
        )
        self.proj = nn.Linear(c, c)

    def forward(self, x):
        h, w = x.shape[-2:]
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        b, _, c = tokens.shape
        conv_x = self.dwconv(tokens.transpose(1, 2).reshape(b, c, h, w))
        channel_map = torch.sigmoid(self.interaction(conv_x))
        if self.permute:
            v = channel_map.permute(0, 2, 3, 1).contiguous().view(b, 1, c)
        else:
            v = channel_map.view(b, 1, c)
        return self.proj(tokens) * v


class ContextBlock(nn.Module):
    """GCNet's context block with mean pooling: 1x1 conv, LayerNorm([C', 1, 1]), ReLU, 1x1 conv, add."""

    def __init__(self, c: int = 8, r: int = 2) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(c, c // r, 1), nn.LayerNorm([c // r, 1, 1]), nn.ReLU(inplace=True), nn.Conv2d(c // r, c, 1)
        )

    def forward(self, x):
        x = self.head(x)
        context = x.mean((2, 3), keepdim=True)
        return x + self.channel_add(context)


class AttentionContext(nn.Module):
    """GCNet's context block as published: attention pooling (1x1 conv mask, softmax over H*W,
    matmul), then the channel-add transform."""

    def __init__(self, c: int = 8, r: int = 2) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.conv_mask = nn.Conv2d(c, 1, 1)
        self.softmax = nn.Softmax(dim=2)
        self.channel_add = nn.Sequential(
            nn.Conv2d(c, c // r, 1), nn.LayerNorm([c // r, 1, 1]), nn.ReLU(inplace=True), nn.Conv2d(c // r, c, 1)
        )

    def forward(self, x):
        x = self.head(x)
        batch, channel, height, width = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)
        context_mask = self.softmax(self.conv_mask(x).view(batch, 1, height * width)).unsqueeze(-1)
        context = torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)
        return x + self.channel_add(context)


class ECA(nn.Module):
    """ECA-Net: a 1-d convolution across the channels of the pooled vector."""

    def __init__(self, c: int = 8, k: int = 3) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        x = self.head(x)
        y = self.conv(self.avg_pool(x).squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y).expand_as(x)


class SKConv(nn.Module):
    """SKNet's selection: Linear squeeze, one Linear per branch unsqueezed in place, softmax over
    branches, then unsqueezed to (N, k, C, 1, 1)."""

    def __init__(self, c: int = 6, branches: int = 2, d: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, c, 3, padding=1 + i, dilation=1 + i) for i in range(branches)])
        self.fc = nn.Linear(c, d)
        self.fcs = nn.ModuleList([nn.Linear(d, c) for _ in range(branches)])
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        feas = torch.cat([conv(x).unsqueeze_(dim=1) for conv in self.convs], dim=1)
        fea_s = F.adaptive_avg_pool2d(torch.sum(feas, dim=1), 1).flatten(1)
        fea_z = self.fc(fea_s)
        vectors = torch.cat([fc(fea_z).unsqueeze_(dim=1) for fc in self.fcs], dim=1)
        vectors = self.softmax(vectors).unsqueeze(-1).unsqueeze(-1)
        return (feas * vectors).sum(dim=1)


class ManyOps(nn.Module):
    """A pooled value through item assignment, normalize, stack, max over a dim (a named tuple),
    where, view_as, clamp, None-indexing, expand to the map by sizes, and addcmul with a map."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.lin = nn.Linear(c, c)

    def forward(self, x):
        x = self.head(x)
        b, c, h, w = x.shape
        y = x.mean((2, 3), keepdim=True)
        z = y.clone()
        z[:, 0] = 0.5 * z[:, 1]
        v = F.normalize(z.flatten(1), dim=1)
        m = torch.max(torch.stack([v, self.lin(v)], dim=1), dim=1)
        u = torch.where(m.values > 0, m.values, -m.values).view_as(v)
        u = torch.clamp(u, -0.3, 0.7)[:, :, None, None]
        return torch.addcmul(x, u.expand(b, c, h, w), y.expand_as(x)) + x * u


class ConvGate(nn.Module):
    """MPRNet's CALayer (1x1 conv gate), x * gate: the fused replicated multiply."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.conv_du = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(2, c, 1), nn.Sigmoid())

    def forward(self, x):
        x = self.head(x)
        return x * self.conv_du(F.adaptive_avg_pool2d(x, 1))


class ChannelsLast(nn.Module):
    """A (N, C) pooled vector (mean without keepdim) gating a channels-last (N, H, W, C) map: the
    map's (H, W) are not the trailing dims."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.fc = nn.Linear(c, c)

    def forward(self, x):
        x = self.head(x)
        y = torch.sigmoid(self.fc(x.mean((2, 3))))
        return (x.permute(0, 2, 3, 1) * y[:, None, None, :]).permute(0, 3, 1, 2)


class FiLM(nn.Module):
    """Scale and shift from one pooled vector (chunk), brought to the map by expand, repeat and
    interpolate."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.mlp = nn.Sequential(nn.Conv2d(c, 4, 1), nn.GELU(), nn.Conv2d(4, 2 * c, 1))

    def forward(self, x):
        x = self.head(x)
        h, w = x.shape[-2:]
        scale, shift = self.mlp(F.adaptive_avg_pool2d(x, 1)).type_as(x).chunk(2, dim=1)
        scaled = x * scale.expand(-1, -1, h, w)
        shifted = shift.repeat(1, 1, h, w)
        return scaled + shifted + F.interpolate(torch.tanh(scale), size=(h, w), mode="nearest")


class InPlace(nn.Module):
    """Pooled values applied in place: ``x += context`` and ``x.mul_(gate)`` (each applied once)."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.context = nn.Conv2d(c, c, 1)
        self.gate = nn.Conv2d(c, c, 1)

    def forward(self, x):
        x = self.head(x)
        pooled = F.adaptive_avg_pool2d(x, 1)
        x += self.context(pooled)
        return x.mul_(torch.sigmoid(self.gate(pooled)))


CONSUMERS = {
    "se-linear": (SELinear, False),
    "cbam": (CBAM, False),
    "skff-2": (lambda: SKFF(height=2), False),
    "skff-3": (lambda: SKFF(height=3), False),
    "dat-permute": (lambda: DATChannel(permute=True), True),
    "dat-view": (lambda: DATChannel(permute=False), True),
    "gcnet": (ContextBlock, False),
    "gcnet-attention": (AttentionContext, False),
    "conv-gate": (ConvGate, False),
    "channels-last": (ChannelsLast, False),
    "film": (FiLM, False),
    "in-place": (InPlace, False),
    "eca": (ECA, False),
    "sknet": (SKConv, False),
    "many-ops": (ManyOps, False),
}


def _input(seed: int, dtype=torch.float64, size=SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, *size, generator=g).to(dtype)


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}x{w[1]}")
@pytest.mark.parametrize("name", list(CONSUMERS))
def test_matches_per_pixel_reference(name, window):
    factory, tokens = CONSUMERS[name]
    seed = 1 + list(CONSUMERS).index(name) + 10 * WINDOWS.index(window)
    model = randomise(factory(), seed).double()
    x = _input(seed)
    ref = per_pixel_reference(model, x, window, tokens)
    out, values = run_local(model, x, window)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=TOLERANCE[torch.float64])
    # The local result really varies over the map (not the global value everywhere)...
    with torch.no_grad():
        global_out = model(x)
    assert (out - global_out).abs().max() > 1e-3
    # ...every pooled value met its map and none reaches the output.
    assert values.applied == {f"pool{i + 1}" for i in range(2 if name == "cbam" else 1)}
    assert values.finish(out) == frozenset()


@pytest.mark.parametrize("name", list(CONSUMERS))
def test_batch_of_one_matches_per_pixel_reference(name):
    """At batch 1 the folded positions are the values' fastest axis (channel first), and the calls
    computed in that layout (products, cat, softmax, layer norm, batch norm, ECA's conv1d) give
    each pixel's window result too."""
    factory, tokens = CONSUMERS[name]
    seed = 200 + list(CONSUMERS).index(name)
    model = randomise(factory(), seed).double()
    x = _input(seed)[:1]
    ref = per_pixel_reference(model, x, (5, 7), tokens)
    out, _ = run_local(model, x, (5, 7))
    torch.testing.assert_close(out, ref, rtol=0, atol=TOLERANCE[torch.float64])


@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_norms_of_values_laid_out_channel_first_equal_torch(affine):
    from tlc.convert.channel_first import channel_first_layer_norm, inference_batch_norm

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 1, 1, 50, generator=g, dtype=torch.float64).movedim(-1, 0)  # (50, 6, 1, 1), channel first
    weight = torch.randn(6, 1, 1, generator=g, dtype=torch.float64) if affine in ("both", "weight") else None
    bias = torch.randn(6, 1, 1, generator=g, dtype=torch.float64) if affine in ("both", "bias") else None
    out = channel_first_layer_norm((x, [6, 1, 1], weight, bias, 1e-5), {})
    torch.testing.assert_close(out, F.layer_norm(x.contiguous(), [6, 1, 1], weight, bias, 1e-5), rtol=0, atol=1e-12)
    assert out.movedim(0, -1).is_contiguous()
    mean, var = torch.randn(6, generator=g, dtype=torch.float64), torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    w = None if weight is None else weight.flatten()
    b = None if bias is None else bias.flatten()
    out = inference_batch_norm((x, mean, var, w, b, False, 0.1, 1e-3), {})
    torch.testing.assert_close(out, F.batch_norm(x.contiguous(), mean, var, w, b, False, 0.1, 1e-3), rtol=0, atol=1e-12)
    assert out.movedim(0, -1).is_contiguous()
    assert inference_batch_norm((x, mean, var, w, b, True, 0.1, 1e-3), {}) is None  # batch statistics


@pytest.mark.parametrize("name", list(CONSUMERS))
def test_window_covering_the_map_is_the_original_model(name):
    factory, _ = CONSUMERS[name]
    model = randomise(factory(), 100 + list(CONSUMERS).index(name)).double()
    x = _input(7)
    out, _ = run_local(model, x, (40, 40))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=TOLERANCE[torch.float64])


@pytest.mark.parametrize("name", ["se-linear", "skff-3", "dat-permute"])
def test_float32(name):
    factory, tokens = CONSUMERS[name]
    model = randomise(factory(), 55).double()
    x = _input(8)
    ref = per_pixel_reference(model, x, (6, 9), tokens)
    out, _ = run_local(model.float(), x.float(), (6, 9))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=4 * TOLERANCE[torch.float32])


@pytest.mark.parametrize("name", ["se-linear", "conv-gate"])
def test_gate_expanded_to_its_map_is_never_spread(name):
    """``x * y.expand_as(x)`` (SENet code): the expanded gate is multiplied in while replicated
    (one pass) and never written out at full size by replicate padding (46 ms of 1.35 s in a
    720p SE network)."""
    factory, _ = CONSUMERS[name]
    model = randomise(factory(), 5)
    x = _input(5, torch.float32)
    with torch.profiler.profile() as profile:
        run_local(model, x, (6, 9))
    ops = [event.name for event in profile.events()]
    assert not [op for op in ops if "replication_pad" in op or op == "aten::index_select"]


@pytest.mark.parametrize("name", ["skff-3", "sknet"])
def test_branch_softmax_keeps_the_values_layout(name):
    """Selective-kernel fusion: the per-branch products are concatenated and softmaxed over the
    branches with the window positions kept the fastest axis, so no transposing copy of the
    values is made where they meet the map (185 ms of MIRNet's fusion at 720p)."""
    factory, _ = CONSUMERS[name]
    model = randomise(factory(), 6)
    x = _input(6, torch.float32, (30, 41))[:1]  # batch 1: the positions alone are the folded batch
    with torch.profiler.profile(record_shapes=True) as profile:
        run_local(model, x, (6, 9))
    windows = (30 - 6 + 1) * (41 - 9 + 1)
    copies = [s for e in profile.events() if e.name == "aten::copy_" for s in e.input_shapes[:1]]
    # Neither the values folded (positions first) nor their map of windows (N, k, C, Gh, Gw).
    assert not [s for s in copies if s and (s[0] == windows or (len(s) == 5 and s[-2:] == [25, 33]))], copies


def test_gradients_flow_through_local_values():
    model = randomise(SELinear(), 3).double()
    x = _input(3).requires_grad_(True)
    mode = Local((4, 5))
    with mode:
        out = model(x)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- leaving the image path


class Classifier(nn.Module):
    """Pooled features -> Linear logits: the pooled value is the output."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.head(x), 1).flatten(1))


class QualityHead(nn.Module):
    """FBCNN-like: an image and a quality factor predicted from a pooled vector; a second pooling
    gates the image."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.qf = nn.Sequential(nn.Linear(c, 4), nn.ReLU(), nn.Linear(4, 1), nn.Sigmoid())
        self.gate = nn.Conv2d(c, c, 1)

    def forward(self, x):
        f = self.head(x)
        qf = self.qf(f.mean((2, 3), keepdim=True).view(f.shape[0], -1))
        image = f * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(f, 1)))
        return image, {"qf": qf}


def test_pooled_value_as_output_is_flagged():
    model = randomise(Classifier(), 4).double()
    x = _input(4)
    out, values = run_local(model, x, (4, 5))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # the model sees the global value
    assert values.escaped(out) == {"pool1"}
    assert values.applied == set()
    assert values.finish(out) == {"pool1"}
    assert not values.is_pooled(out)  # finish forgets everything


def test_head_leaving_the_image_path_is_told_apart_from_the_gate():
    model = randomise(QualityHead(), 5).double()
    x = _input(5)
    out, values = run_local(model, x, (4, 5))
    assert values.escaped(out) == {"pool1"}  # the quality factor
    assert values.applied == {"pool2"}  # the gate met its map
    assert values.escaped(out[0]) == frozenset()


# ----------------------------------------------------------------------------- what is refused


class Uses(nn.Module):
    def __init__(self, use) -> None:
        super().__init__()
        self.use = use

    def forward(self, x):
        return self.use(x, F.adaptive_avg_pool2d(x, 1))


REFUSED = {
    "item": (lambda x, y: x * y[:, 0].item(), "reads the pooled value into Python", 1),
    "tolist": (lambda x, y: x * y.tolist()[0][0][0][0], "reads the pooled value into Python", 2),
    "python-if": (lambda x, y: x * y if bool((y > 0).all()) else x, "changes the batch dimension", 2),
    "batch-index": (lambda x, y: x * y[0], "indexing along the batch", 2),
    "batch-cat": (lambda x, y: x * torch.cat([y, y], dim=0)[:2], "works along the batch", 2),
    "batch-softmax": (lambda x, y: x * torch.softmax(y, dim=0), "works along the batch", 2),
    "batch-sum-keepdim": (lambda x, y: x * y.sum(0, keepdim=True), "works along the batch", 1),
    "batch-reshape": (lambda x, y: x * y.reshape(-1).sum(), "changes the batch dimension", 2),
    "other-grid": (lambda x, y: x[:, :, ::2, ::2] * y, "not its map", 2),
    "grids-cross": (lambda x, y: x * (y + F.adaptive_avg_pool2d(x[:, :, 1:, 2:], 1)), "different grids", 2),
    "matmul-tokens": (
        lambda x, y: x.flatten(2).transpose(1, 2) @ y.flatten(1).unsqueeze(2), "other than by broadcasting", 2
    ),
    "as-weight": (lambda x, y: F.conv2d(x, y), "used as a weight", 2),
    "repeat-channels": (lambda x, y: x * y.repeat(1, 2, 9, 13)[:, :3], "no per-pixel form", 2),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_use_raises_with_reason(name):
    use, reason, batch = REFUSED[name]
    x = _input(6)[:batch]
    with pytest.raises(PooledValueError, match=reason) as info:
        run_local(Uses(use), x, (4, 5))
    assert "pool1" in info.value.sources
    assert "\n" not in str(info.value)


def test_nothing_tracked_is_not_handled():
    values = PooledValues()
    x = torch.randn(2, 3, 4, 4)
    assert values.handle(torch.add, (), (x, x), {}) is NotImplemented
    y = values.start(x.mean((2, 3), keepdim=True), window_sums(x, 2) / 4, x.shape[-2:])
    assert values.handle(torch.add, (), (x, x), {}) is NotImplemented
    assert values.handle(torch.Tensor.size, (), (y,), {}) == torch.Size([2, 3, 1, 1])
    assert values.local(y).shape == (2 * 9, 3, 1, 1)


def test_local_layout_is_sample_major_row_major():
    """The local counterpart's row n * G + i * Gw + j holds sample n, window (i, j)."""
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    values = PooledValues()
    y = values.start(x.mean((2, 3), keepdim=True), window_sums(x, (3, 2)) / 6, (5, 6))
    local = values.local(y)
    gh, gw = 3, 5
    for n in range(2):
        for i in range(gh):
            for j in range(gw):
                expected = x[n, :, i : i + 3, j : j + 2].mean((1, 2))
                torch.testing.assert_close(local[n * gh * gw + i * gw + j, :, 0, 0], expected)


def test_local_values_are_freed_with_their_real_tensors():
    x = torch.randn(2, 3, 6, 7)
    values = PooledValues()
    y = values.start(x.mean((2, 3), keepdim=True), window_sums(x, 3) / 9, x.shape[-2:])
    z = values.handle(torch.sigmoid, (), (y,), {})
    local_y, local_z = weakref.ref(values.local(y)), weakref.ref(values.local(z))
    del y
    gc.collect()
    assert local_z() is not None
    # A few dead local values are kept for reuse (tlc.convert.spare_buffers) until the forward ends.
    made = [values.handle(torch.sigmoid, (), (z,), {}) for _ in range(6)]
    locals_made = [weakref.ref(values.local(t)) for t in made]
    del made
    gc.collect()
    assert sum(r() is not None for r in [local_y, *locals_made]) <= 3
    del z
    values.finish(None)
    gc.collect()
    assert local_y() is None and local_z() is None and all(r() is None for r in locals_made)
    assert values.handle(torch.add, (), (x, x), {}) is NotImplemented


def test_pending_values_are_computed_once_and_only_when_read():
    """start_pending: elementwise calls on pending values give pending values; meeting the map
    computes them (once), from the source as it was before an in-place call (before_call)."""
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    source = x.clone()
    computed = []

    def windows() -> torch.Tensor:
        computed.append(1)
        return window_sums(x, (3, 4)) / 12

    values = PooledValues()
    y = values.start_pending(x.mean((2, 3), keepdim=True), WindowMeans(x, (3, 4)), "s", local_valid=windows)
    z = values.handle(torch.Tensor.__truediv__, (), (y, 4.0), {})
    z = values.handle(torch.sigmoid, (), (z,), {})
    unread = values.handle(torch.exp, (), (y,), {})
    assert computed == [] and values.read == set() and values.pending
    torch.testing.assert_close(z, torch.sigmoid(x.mean((2, 3), keepdim=True) / 4), rtol=0, atol=0)
    values.before_call("add", (x, 1.0), {})  # not in place: nothing computed
    values.before_call("mul_", (source, 2.0), {})  # another tensor changed in place: nothing either
    assert computed == []
    values.before_call("mul_", (x[:, 1], 2.0), {})  # a view of what they are computed from
    x.mul_(2)
    assert computed == [1] and values.read == set()  # computed as a precaution, not read
    out = values.handle(torch.mul, (), (source, z), {})
    assert values.read == {("s", (6, 7))}
    expected = source * torch.sigmoid(local_mean(source, (3, 4)) / 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(values.local(unread), torch.exp(values.local(y)), rtol=0, atol=0)
    assert computed == [1]
    values.finish(out)
    assert not values.pending


def test_a_mean_a_layer_takes_first_is_not_read_and_stays_pending():
    """A Linear layer on a pending mean runs on the map before the windows' means where that is
    cheaper (CBAM's Linear MLP): the means themselves are never computed, and reading what follows
    from the layer notes no read of them, so the converter keeps the mean pending at the next
    forward (a read would make it compute the means at once, and the layer then run after them).
    A value computed from the means themselves notes the read."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 40, 50, generator=g)
    weight, bias = torch.randn(4, 16, generator=g), torch.randn(4, generator=g)
    computed = []

    def windows() -> torch.Tensor:
        computed.append(1)
        return valid_local_mean(x, (5, 5))

    values = PooledValues()
    y = values.start_pending(x.mean((2, 3), keepdim=True), WindowMeans(x, (5, 5)), "s", local_valid=windows)
    flat = values.handle(torch.flatten, (), (y, 1), {})
    hidden = values.handle(F.linear, (), (flat, weight, bias), {})
    gate = values.handle(torch.sigmoid, (), (hidden,), {})
    want = torch.sigmoid(F.linear(valid_local_mean(x, (5, 5)).permute(0, 2, 3, 1), weight, bias)).reshape(-1, 4)
    torch.testing.assert_close(values.local(gate), want, rtol=0, atol=1e-5)
    assert computed == [] and values.read == set()
    means = values.handle(torch.exp, (), (y,), {})
    values.local(means)
    assert computed == [1] and values.read == {("s", (40, 50))}


def test_pending_value_computed_before_its_parent_changes_in_place():
    """A pending value made from a pooled value is computed before that value changes in place
    (its local values change with it)."""
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    values = PooledValues()
    y = values.start_pending(x.mean((2, 3), keepdim=True), WindowMeans(x, (3, 3)), local_valid=lambda: window_sums(x, 3) / 9)
    z = values.handle(torch.Tensor.__mul__, (), (y, 3.0), {})
    values.local(y)  # y computed (read); z still pending
    values.before_call("mul_", (y, 2.0), {})
    values.handle(torch.Tensor.mul_, (), (y, 2.0), {})
    expected = valid_local_mean(x, 3).permute(0, 2, 3, 1).reshape(-1, 2, 1, 1)
    torch.testing.assert_close(values.local(z), 3 * expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(values.local(y), 2 * expected, rtol=0, atol=1e-15)


def test_pending_value_whose_windows_fail_raises_pooled_value_error():
    x = torch.randn(1, 3, 6, 7)
    values = PooledValues()
    y = values.start_pending(x.mean((2, 3), keepdim=True), WindowMeans(x, (3, 4)), "s", local_valid=lambda: torch.zeros(1, 3, 2, 2))
    with pytest.raises(PooledValueError, match="first read") as err:
        values.handle(torch.mul, (), (x, y), {})
    assert err.value.sources == {"s"}


class FullMapMeans(TorchFunctionMode):
    """Global average poolings answered by full-size local_mean maps: where every consumer is
    per-pixel, the same numbers by an independent route."""

    def __init__(self, window: tuple[int, int]) -> None:
        super().__init__()
        self.window = window

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _pool_kind(func, args, kwargs) == "mean":
            return local_mean(args[0], self.window)
        return func(*args, **kwargs)


def test_whole_network_matches_full_map_local_means():
    """NAFNet (simplified channel attention in every block, at three levels)."""
    model = randomise(NAFNet(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), 12).double()
    x = _input(12, size=(12, 20))
    with torch.no_grad(), FullMapMeans((5, 7)):
        expected = model(x)
    out, values = run_local(model, x, (5, 7))
    assert len(values.applied) == 5 and values.finish(out) == frozenset()
    scale = expected.abs().max()
    torch.testing.assert_close(out / scale, expected / scale, rtol=0, atol=1e-12)


def test_fed_by_valid_local_mean():
    """The converter's feed: valid_local_mean (its compiled kernel where available). Last in the
    file: see :class:`Local`."""
    model = randomise(ConvGate(), 9).double()
    x = _input(9)
    ref = per_pixel_reference(model, x, (6, 9))
    values = PooledValues()

    class Converter(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if _pool_kind(func, args, kwargs) == "mean":
                x = args[0]
                return values.start(func(*args, **kwargs), valid_local_mean(x, (6, 9)), x.shape[-2:], source="site")
            out = values.handle(func, types, args, kwargs)
            return func(*args, **kwargs) if out is NotImplemented else out

    with torch.no_grad(), Converter():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=TOLERANCE[torch.float64])
    assert values.applied == {"site"} and values.finish(out) == frozenset()


@pytest.mark.parametrize("c_in,c_out,k,padding", [(1, 1, 3, 1), (2, 3, 5, 2), (3, 2, 1, 0)])
def test_conv1d_on_folded_values_equals_torch_conv1d(c_in, c_out, k, padding):
    """Conv1d across pooled vectors (ECA) runs as one product per tap: the same sums as F.conv1d."""
    from tlc.convert.channel_first import conv1d_as_products

    g = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(7, c_in, 11, generator=g), torch.randn(c_out, c_in, k, generator=g), torch.randn(c_out, generator=g)
    torch.testing.assert_close(conv1d_as_products((x, weight, bias, 1, padding)), F.conv1d(x, weight, bias, 1, padding))
    assert conv1d_as_products((x, weight, bias, 2, padding)) is None  # strided: left to torch


@pytest.mark.parametrize("k,padding", [(3, 1), (5, 2), (3, 0), (1, 0), (5, 4), (9, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv1d_on_values_laid_out_channel_first_keeps_the_layout(k, padding, with_bias):
    """ECA's conv1d of (B, 1, C) values whose positions are the fastest axis: the same sums as
    F.conv1d (taps past either end, padding wider than the kernel), and the result laid out the
    same way (no transposing copy later)."""
    from tlc.convert.channel_first import conv1d_as_products

    g = torch.Generator().manual_seed(k + padding)
    x = torch.randn(1, 7, 40, generator=g, dtype=torch.float64).movedim(-1, 0)  # (40, 1, 7), channel first
    weight = torch.randn(1, 1, k, generator=g, dtype=torch.float64)
    bias = torch.randn(1, generator=g, dtype=torch.float64) if with_bias else None
    with torch.profiler.profile() as profile:
        out = conv1d_as_products((x, weight, bias, 1, padding))
    torch.testing.assert_close(out, F.conv1d(x.contiguous(), weight, bias, 1, padding), rtol=0, atol=1e-12)
    assert out.movedim(0, -1).is_contiguous()
    if k == 2 * padding + 1:  # "same" padding: the centre tap starts the sum, no zeros written first
        assert not [e.name for e in profile.events() if e.name in ("aten::zeros", "aten::fill_", "aten::zero_")]


@pytest.mark.parametrize(
    "func, a, b",
    [
        (torch.add, (2, 8, 9, 13), (2, 8, 1, 1)),
        (torch.Tensor.__mul__, (1, 8, 1, 1), (3, 1, 9, 13)),
        (torch.Tensor.__rtruediv__, (4, 1, 1), 2.0),
        (torch.sub, (5,), (2, 8, 9, 5)),
    ],
)
def test_the_shape_of_a_pooled_value_meeting_a_map_by_broadcasting_is_torchs(func, a, b):
    """Where a pooled value meets a map by ``+ - * /``, the result's shape is told by broadcasting
    (a meta call costs ~0.1 ms): the same as torch's meta kernel gives, and the same error."""
    from tlc.convert.pooled_values import meta_call
    from tlc.convert import pooled_values

    args = (torch.randn(a), torch.randn(b) if isinstance(b, tuple) else b)
    assert pooled_values._broadcast_result_shape(func.__name__, args, {}) == meta_call(func, args, {}).shape
    assert pooled_values._broadcast_result_shape("matmul", args, {}) is None  # not elementwise: a meta call
    with pytest.raises(RuntimeError):
        pooled_values._broadcast_result_shape("add", (torch.randn(2, 3), torch.randn(4)), {})


# ----------------------------------------------------------------------------- a gate's last steps inside the multiply


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", list(CONSUMERS))
def test_float32_matches_the_float64_per_pixel_reference(name, batch):
    """In float32 a gate's last layer and its sigmoid wait, pending, for the map and are computed
    inside the multiply or sum (GateForm, tlc.ops.gate.combine_replicated): still each pixel's
    window result (against the reference run in float64)."""
    factory, tokens = CONSUMERS[name]
    seed = 300 + list(CONSUMERS).index(name)
    model = randomise(factory(), seed)
    x = _input(seed, torch.float32)[:batch]
    ref = per_pixel_reference(copy.deepcopy(model).double(), x.double(), (5, 7), tokens)
    out, _ = run_local(model, x, (5, 7))
    assert out.dtype == torch.float32
    scale = ref.abs().max()
    torch.testing.assert_close(out.double() / scale, ref / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("se-linear", ("mul", "sigmoid", True)),  # Linear, Sigmoid, view, expand_as, x * y
        ("conv-gate", ("mul", "sigmoid", True)),  # 1x1 conv, Sigmoid, x * y
        ("eca", ("mul", "sigmoid", True)),  # conv1d across channels (its taps), sigmoid
        ("gcnet", ("add", None, True)),  # LayerNorm, ReLU, 1x1 conv, x + y
        ("skff-3", ("mul", "softmax", True)),  # one 1x1 conv per branch, cat, view, softmax over branches
        ("cbam", ("mul", "sigmoid", True)),  # mlp(avg) + mlp(max): the shared last layer once, on the sum
    ],
)
def test_a_gates_last_steps_reach_the_multiply_unrun(monkeypatch, name, expected):
    """Where the values meet the map, combine_replicated receives the hidden values with the
    layer's weight (or ECA's channel taps) and the activation: the C-plane gate was never computed
    at every window."""
    pooled_values = importlib.import_module("tlc.convert.pooled_values")  # tlc.convert is also a function
    seen = []
    real_combine = pooled_values.combine_replicated

    def spy(x, gate, op="mul", activation=None, weight=None, bias=None, channel_taps=None, channel_pad=0):
        seen.append((op, activation, weight is not None or channel_taps is not None))
        return real_combine(x, gate, op, activation, weight, bias, channel_taps, channel_pad)

    real_summing = pooled_values.combine_replicated_summing_branches

    def summing_spy(x, gate, op="mul", weight=None, bias=None):  # a softmax over branches, and their sum
        seen.append((op, "softmax", weight is not None))
        return real_summing(x, gate, op, weight, bias)

    monkeypatch.setattr(pooled_values, "combine_replicated", spy)
    monkeypatch.setattr(pooled_values, "combine_replicated_summing_branches", summing_spy)
    factory, _ = CONSUMERS[name]
    model = randomise(factory(), 7)
    run_local(model, _input(7, torch.float32)[:1], (5, 7))
    assert seen == [expected]
    seen.clear()
    run_local(model.double(), _input(7)[:1], (5, 7))  # float64: followed call by call, as before
    assert seen == [(expected[0], None, False)]


def test_a_pending_gate_read_elsewhere_or_before_its_source_changes_is_computed_as_followed():
    """Read by anything but the multiply, a pending layer's values are the layer's on the source's
    local values (as computed when the layer was called: an in-place change of the source after
    it first computes them)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 6, 9, 13, generator=g)
    weight, bias = torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    values = PooledValues()
    y = values.start(x.mean((2, 3), keepdim=True).view(1, 6), valid_local_mean(x, (4, 5)).contiguous(), (9, 13), "s")
    before = values.local(y).clone()
    h = values.handle(F.linear, (), (y, weight, bias), {})
    s = values.handle(torch.sigmoid, (), (h,), {})
    torch.testing.assert_close(h, F.linear(y, weight, bias), rtol=0, atol=0)  # the real values at once
    values.before_call("mul_", (y, 2.0), {})
    values.handle(torch.Tensor.mul_, (), (y, 2.0), {})
    torch.testing.assert_close(values.local(y), 2 * before, rtol=0, atol=0)
    expected = before.double() @ weight.double().T + bias.double()
    torch.testing.assert_close(values.local(h).double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(values.local(s).double(), torch.sigmoid(expected), rtol=0, atol=1e-6)


def test_noted_window_means_are_taken_by_their_own_map_only():
    """Windows' means noted for a map (a variance's pass gave them) go to a mean of that map, once;
    not to another map at the same memory and layout (the first gone: memory is reused), nor to
    the map changed in place since (its version counted up)."""
    window = (3, 4)
    memory = torch.rand(1, 2, 6, 7, generator=torch.Generator().manual_seed(0))
    means = valid_local_mean(memory, window)

    values = PooledValues()
    first = memory.view(1, 2, 6, 7)
    values.note_window_means(first, window, means)
    assert values.take_window_means(first, window) is means
    assert values.take_window_means(first, window) is None  # once

    values.note_window_means(first, window, means)
    del first
    gc.collect()
    later = memory.view(1, 2, 6, 7)  # another map, at the same address and of the same layout
    assert later.untyped_storage().data_ptr() == memory.untyped_storage().data_ptr()
    assert values.take_window_means(later, window) is None

    values.note_window_means(later, window, means)
    later.mul_(2)  # outside the mode: no before_call, but the version counts
    assert values.take_window_means(later, window) is None
    assert not values.pending


def test_a_maps_mean_is_computed_once_while_the_map_lives_unchanged(spy):
    """PooledValues.map_mean: the second mean of one map (IMDN takes two) comes without a pass of
    its own, as a tensor of its own with the same bits; not for another map at the same memory,
    nor after the map changed in place (its version counted up, or, under inference mode where
    none is counted, a call the mode shows), and not after the forward finished."""
    pooled_values = importlib.import_module("tlc.convert.pooled_values")

    passes = spy(pooled_values, "map_mean")
    memory = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(1))
    values = PooledValues()
    first = memory.view(1, 3, 6, 7)
    a = values.map_mean(first)
    b = values.map_mean(first)
    assert len(passes) == 1 and a is not b and torch.equal(a, b)
    torch.testing.assert_close(a, first.double().mean((2, 3), keepdim=True).float(), rtol=0, atol=1e-7)
    b.mul_(5)  # the caller's own tensor: what is kept is not changed
    assert torch.equal(values.map_mean(first), a) and len(passes) == 1

    del first
    gc.collect()
    later = memory.view(1, 3, 6, 7)  # another map at the same address and of the same layout
    values.map_mean(later)
    assert len(passes) == 2

    later.add_(1)  # the version counts up
    torch.testing.assert_close(values.map_mean(later), later.mean((2, 3), keepdim=True), rtol=0, atol=1e-6)
    assert len(passes) == 3

    with torch.inference_mode():
        frozen = torch.rand(1, 3, 6, 7)
        values.map_mean(frozen)
        assert values.pending  # so that the mode shows it every call changing a tensor in place
        values.before_call("add_", (frozen, 1.0), {})
        frozen.add_(1.0)
        torch.testing.assert_close(values.map_mean(frozen), frozen.mean((2, 3), keepdim=True), rtol=0, atol=1e-6)
        assert len(passes) == 5
    values.finish(None)
    values.map_mean(frozen)
    assert len(passes) == 6
