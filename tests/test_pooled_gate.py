"""The pooled-gate rule: x * f(pool(x)) modules rebuilt to run f on the valid windows only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tlc
import tlc.ops.gate as gate_ops
from tlc.ops.gate import (
    apply_pointwise, channel_conv1d, channel_product, combine_replicated, into_first, layer_first_is_cheaper, multiply_replicated,
    pooled_pointwise,
)
from tlc.ops.pool import replicate_to, valid_local_mean
from tlc.convert.pooled_gate import GatePlan, gate_plan

from .windows import brute_force

PLAIN_RULES = [tlc.rules.GLOBAL_AVG_POOL, tlc.rules.INSTANCE_NORM, tlc.rules.GROUP_NORM]  # the pooling alone made local


class CALayer(nn.Module):
    """MPRNet / RCAN style: pooling and gate as siblings, combined in forward."""

    def __init__(self, c: int = 8, bias: bool = True) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(c, c // 2, 1, bias=bias), nn.PReLU(), nn.Conv2d(c // 2, c, 1, bias=bias), nn.Sigmoid()
        )

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class SplitGate(nn.Module):
    """Gate children called one by one, multiplied from the left."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.reduce = nn.Conv2d(c, 4, 1)
        self.act = nn.GELU()
        self.expand = nn.Conv2d(4, c, 1)

    def forward(self, x):
        return torch.sigmoid(self.expand(self.act(self.reduce(self.pool(x))))) * x


class PoolAndConv(nn.Module):
    """A global pooling and a 1x1 convolution as children; subclasses combine them."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(c, c, 1)


class AddedGate(PoolAndConv):
    """The pooled map is added, not multiplied: replicated, then the original consumer runs."""

    def forward(self, x):
        return x + self.fc(self.pool(x))


class PooledTwice(PoolAndConv):
    """The pooled map is used twice: through the gate, and added (replicated) to the product."""

    def forward(self, x):
        p = self.pool(x)
        return x * self.fc(p) + p


class Branching(PoolAndConv):
    """Data-dependent control flow: fx cannot trace it (left to the global-avg-pool rule)."""

    def forward(self, x):
        if x.sum() > 0:
            return x * torch.sigmoid(self.fc(self.pool(x)))
        return x


class Holder(nn.Module):
    def __init__(self, block: nn.Module, c: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.block = block
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(self.block(self.head(x)))


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


@pytest.mark.parametrize("block", [CALayer, SplitGate, AddedGate, PooledTwice])
def test_gate_equals_pooling_made_local(block):
    model = randomised(Holder(block()))
    fast, report = tlc.convert(model, train_size=24, base_size=36)
    plain, _ = tlc.convert(model, train_size=24, base_size=36, rules=PLAIN_RULES)
    assert [(op.path, op.rule, op.window) for op in report.converted] == [("block", "pooled-gate", (36, 36))]
    assert type(fast.block).__name__ == f"Local{block.__name__}"
    for shape in [(2, 3, 47, 61), (1, 3, 30, 100), (1, 3, 9, 11), (3, 3, 37, 36)]:
        x = torch.rand(shape)
        with torch.no_grad():
            out = fast(x)
            # 1x1 convolutions as matrix products: the same sums in another order.
            torch.testing.assert_close(out, plain(x), rtol=0, atol=2e-5)
            assert (out - model(x)).abs().max() > 1e-4 or max(shape[-2:]) <= 36


@pytest.mark.parametrize("block", [CALayer, lambda: CBAMChannelGate()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_window_covering_the_map_gives_the_originals_bits(block, dtype):
    """One window: the gate is the global one, computed as the original computes it (the map's
    own mean, the 1x1 convolutions as convolutions, a broadcast multiply), bit for bit."""
    model = randomised(Holder(block())).to(dtype)
    converted, report = tlc.convert(model, train_size=24, base_size=36)
    assert [op.rule for op in report.converted] == ["pooled-gate"] and report.max_deviation == 0
    for shape in [(2, 3, 24, 24), (1, 3, 35, 17), (3, 3, 1, 36)]:
        x = torch.rand(shape, dtype=dtype)
        with torch.no_grad():
            assert torch.equal(converted(x), model(x)), shape
    x = torch.rand(1, 3, 37, 36, dtype=dtype)  # one pixel more than the window: local again
    with torch.no_grad():
        assert (converted(x) - model(x)).abs().max() > 1e-6


def test_apply_pointwise_on_one_pixel_runs_the_layers_themselves():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1), nn.Sigmoid()).eval()
    y = torch.randn(3, 16, 1, 1)
    with torch.no_grad(), torch.profiler.profile() as profile:
        out = apply_pointwise(y, layers)
    assert torch.equal(out, layers(y))
    assert "aten::bmm" not in [event.name for event in profile.events()]


def test_mprnet_channel_attention_is_found_by_tracing():
    from tlc.archs.mprnet import CALayer as MPRNetCALayer

    plan = gate_plan(MPRNetCALayer(16, 4))
    assert plan is not None and plan.pools == (("avg_pool", "avg"),) and plan.layers == ("conv_du",)
    assert plan.fused_multiply
    assert gate_plan(AddedGate()).fused_multiply is False
    assert gate_plan(SplitGate()).layers == ("reduce", "act", "expand")  # torch.sigmoid is not a child
    assert gate_plan(CBAMChannelGate()) == GatePlan((("avg_pool", "avg"), ("max_pool", "max")), ("mlp", "mlp"), True)
    assert gate_plan(AmaxGate()).pools == (("amax", "max"),)


class CBAMChannelGate(nn.Module):
    """CBAM's channel attention: average and max pooling through one shared MLP, summed."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, c, 1))

    def forward(self, x):
        return x * torch.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))


class AmaxGate(PoolAndConv):
    """A max pooling written as a method call, multiplied from the left."""

    def forward(self, x):
        return torch.sigmoid(self.fc(x.amax((2, 3), keepdim=True))) * x


class MethodGate(PoolAndConv):
    """timm's ChannelAttn form: the gate's elementwise calls are Tensor methods."""

    def forward(self, x):
        return x * self.fc(x.amax((2, 3), keepdim=True)).mul(0.5).add(0.25).sigmoid()


class ReturnedGate(PoolAndConv):
    """Only the gate: the product is taken by the caller (made local, a full-size map is returned)."""

    def forward(self, x):
        return self.fc(x.mean((-2, -1), keepdim=True)).sigmoid()


class GateHolder(Holder):
    """The block returns a gate; the holder multiplies."""

    def forward(self, x):
        features = self.head(x)
        return self.tail(features * self.block(features))


class UnusedChild(PoolAndConv):
    """A child with weights that forward never calls: a traced rebuild would drop its keys."""

    def __init__(self, c: int = 8) -> None:
        super().__init__(c)
        self.spare = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * self.fc(self.pool(x))


class SharedGate(PoolAndConv):
    """A pooled map read twice (by the sigmoid and by the product after it): it must not be
    overwritten by the first."""

    def forward(self, x):
        a = self.fc(self.pool(x))
        s = torch.sigmoid(a)
        return x * (s * a + a)


def _gate_by_brute_force(block: nn.Module, x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """The block's output with every global pooling of its input replaced, pixel by pixel, by the
    statistic of that pixel's window (tests/windows.py), the rest of the block as written."""
    means = brute_force(x, window, lambda v: v.mean(-1))
    maxima = brute_force(x, window, lambda v: v.amax(-1))
    if isinstance(block, CBAMChannelGate):
        return x * torch.sigmoid(block.mlp(means) + block.mlp(maxima))
    if isinstance(block, AmaxGate):
        return torch.sigmoid(block.fc(maxima)) * x
    if isinstance(block, SharedGate):
        a = block.fc(means)
        return x * (torch.sigmoid(a) * a + a)
    return block.fc(means).sigmoid()


@pytest.mark.parametrize("block", [CBAMChannelGate, AmaxGate, ReturnedGate, SharedGate])
def test_several_poolings_and_functions_equal_per_pixel_windows(block):
    torch.manual_seed(3)
    gate = randomised(block())
    model = randomised((GateHolder if block is ReturnedGate else Holder)(gate), seed=1)
    converted, report = tlc.convert(model, train_size=12, base_size=18)
    assert [(op.path, op.rule, op.window) for op in report.converted] == [("block", "pooled-gate", (18, 18))]
    assert report.skipped == [] and report.call_sites == []
    head = model.head
    for shape in [(2, 3, 23, 29), (1, 3, 9, 40)]:
        x = torch.rand(shape)
        with torch.no_grad():
            features = head(x)
            out = _gate_by_brute_force(gate, features, (18, 18))
            expected = model.tail(features * out if block is ReturnedGate else out)
            torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)
            assert (converted(x) - model(x)).abs().max() > 1e-3


def test_fast_mode_keeps_max_poolings_exact():
    model = randomised(Holder(CBAMChannelGate()))
    converted, report = tlc.convert(model, train_size=12, base_size=18, fast=True)
    assert [op.rule for op in report.converted] == ["pooled-gate"]
    assert converted.block.avg_pool.fast and isinstance(converted.block.max_pool, tlc.nn.LocalMaxPool2d)


@pytest.mark.parametrize("block", [Branching, UnusedChild])
def test_other_patterns_fall_back_to_the_pooling_rule(block):
    model = randomised(Holder(block()))
    assert gate_plan(model.block) is None
    converted, report = tlc.convert(model, train_size=24, base_size=36, functional=False)
    assert [(op.path, op.rule) for op in report.converted] == [("block.pool", "global-avg-pool")]
    assert isinstance(converted.block.pool, tlc.LocalAvgPool2d)
    # By default the run-time view takes the bare pooling, as a pooled value: the same numbers.
    default, report = tlc.convert(model, train_size=24, base_size=36)
    assert [(op.path, op.rule) for op in report.converted] == [("block.pool", "adaptive_avg_pool2d")]
    x = torch.rand(2, 3, 61, 50)
    with torch.no_grad():
        features = model.head(x)
        gate = model.block.fc(brute_force(features, (36, 36), lambda v: v.mean(-1)))
        if isinstance(model.block, Branching):
            gate = gate.sigmoid()
        torch.testing.assert_close(default(x), model.tail(features * gate), rtol=1e-5, atol=1e-5)


def test_keys_are_kept_and_released_weights_load_strictly():
    model = randomised(Holder(CALayer()))
    converted, _ = tlc.convert(model, train_size=24)
    assert list(converted.state_dict()) == list(model.state_dict())
    fresh, _ = tlc.convert(Holder(CALayer()).eval(), train_size=24)
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), converted(x), rtol=0, atol=0)


def test_fast_mode_swaps_only_the_pooling():
    model = randomised(Holder(CALayer()))
    converted, report = tlc.convert(model, train_size=24, fast=True)
    assert report.converted[0].rule == "pooled-gate"
    assert isinstance(converted.block, CALayer) and converted.block.avg_pool.fast
    approx, _ = tlc.convert(model, train_size=24, fast=True, rules=PLAIN_RULES)
    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), approx(x), rtol=0, atol=0)


def test_gradients_match_the_pooling_rule():
    model = randomised(Holder(CALayer())).double()
    fast, _ = tlc.convert(model, train_size=12, base_size=18)
    plain, _ = tlc.convert(model, train_size=12, base_size=18, rules=PLAIN_RULES)
    x = torch.rand(2, 3, 23, 29, dtype=torch.float64)
    grads = []
    for net in (fast, plain):
        xi = x.clone().requires_grad_(True)
        net(xi).square().sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [(37, 53), (5, 5), (1, 9)])
def test_multiply_replicated_equals_replicate_then_multiply(dtype, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size).to(dtype)
    for window in [(3, 4), (1, 1), size, (2, 9)]:
        gate = valid_local_mean(torch.rand(2, 3, *size).to(dtype), window)
        full = replicate_to(gate, size)
        torch.testing.assert_close(multiply_replicated(x, gate), x * full, rtol=0, atol=0)
        # The other combinations, bit for bit too (x - gate runs as x + (-gate)).
        torch.testing.assert_close(combine_replicated(x, gate, "add"), x + full, rtol=0, atol=0)
        torch.testing.assert_close(combine_replicated(x, gate, "sub"), x - full, rtol=0, atol=0)
    with pytest.raises(ValueError, match="'mul', 'add' or 'sub'"):
        combine_replicated(x, gate, "div")


def test_combine_replicated_integer_maps():
    # No compiled kernel for "sub" (floating gates run as "add" of the negation): integer maps
    # take torch's form, for every op.
    x = torch.randint(-50, 50, (2, 3, 11, 13), generator=torch.Generator().manual_seed(0))
    gate = torch.randint(-9, 9, (2, 3, 4, 6), generator=torch.Generator().manual_seed(1))
    full = gate[..., [0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3], :][..., [0, 0, 0, 0, 1, 2, 3, 4, 5, 5, 5, 5, 5]]
    assert torch.equal(combine_replicated(x, gate, "sub"), x - full)
    assert torch.equal(combine_replicated(x, gate, "add"), x + full)
    assert torch.equal(combine_replicated(x, gate, "mul"), x * full)


def test_apply_pointwise_runs_one_by_one_convolutions_as_matrix_products():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(6, 3, 1), nn.GELU(), nn.Conv2d(3, 5, 1, bias=False)).eval()
    y = torch.randn(2, 6, 13, 17)
    with torch.no_grad():
        torch.testing.assert_close(apply_pointwise(y, layers), layers(y), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(apply_pointwise(y, list(layers)), layers(y), rtol=1e-5, atol=1e-6)
        # One bmm per convolution on the map as it lies: no copies in or out (matmul of a matrix
        # with a batch of maps copied both ways; 0.35 s of MPRNet's 17 s at 720x1280).
        with torch.profiler.profile() as profile:
            apply_pointwise(y, layers)
        ops = [event.name for event in profile.events()]
        assert ops.count("aten::bmm") == 2
        assert "aten::copy_" not in ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "outputs, channels, positions",
    [(4, 16, 4096), (16, 4, 9001), (48, 4, 12289), (3, 7, 100), (6, 9, 5000), (2, 1, 4097), (5, 6, 8192), (7, 64, 4100), (24, 96, 4099), (3, 3, 4100)],
)
def test_channel_product_against_float64_matmul(dtype, outputs, channels, positions):
    """A gate's 1x1 layer on many positions (the CPU kernel past one block of 4096 positions, its
    input rows four a pass and the rest one by one; torch.mm below): weight @ values within a few
    float roundings of a float64 product, into out= as given, the same numbers either way; with
    a bias, the product's own numbers plus the bias (added last, as mm then add_ would)."""
    g = torch.Generator().manual_seed(outputs * positions)
    weight = torch.randn(outputs, channels, generator=g, dtype=dtype)
    values = torch.randn(channels, positions, generator=g, dtype=dtype)
    reference = weight.double() @ values.double()
    result = channel_product(weight, values)
    assert result.dtype == dtype and result.shape == (outputs, positions)
    tolerance = 2e-6 if dtype == torch.float32 else 1e-14
    assert (result.double() - reference).abs().max().item() <= tolerance * channels * values.abs().max().item()
    out = torch.full((outputs, positions), float("nan"), dtype=dtype)
    assert channel_product(weight, values, out=out) is out
    assert torch.equal(out, result)
    bias = torch.randn(outputs, generator=g, dtype=dtype)
    assert torch.equal(channel_product(weight, values, bias=bias), result + bias[:, None])
    assert channel_product(weight, values, out=out, bias=bias) is out
    assert torch.equal(out, result + bias[:, None])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "length, k, pad, positions, with_bias",
    [(16, 3, 1, 9001, False), (7, 5, 2, 4097, True), (12, 5, 4, 100, True), (5, 9, 4, 5000, False), (8, 1, 0, 4096, True),
     (9, 3, 0, 4100, False)],
)
def test_channel_conv1d_is_torchs_conv1d_with_the_torch_ops_bits(dtype, length, k, pad, positions, with_bias):
    """ECA's conv1d across channels at every position (values (L, P)): F.conv1d's numbers (each
    position a signal; taps past either end, padding wider than the kernel, no tap reaching every
    output), and the CPU kernel (past one block of positions) gives the bits of the torch ops its
    docstring lists, which autograd takes."""
    g = torch.Generator().manual_seed(length * k + pad)
    values = torch.randn(length, positions, generator=g, dtype=dtype)
    weight = torch.randn(k, generator=g, dtype=dtype)
    bias = torch.randn(1, generator=g, dtype=dtype) if with_bias else None
    out = channel_conv1d(values, weight, bias, pad)
    reference = F.conv1d(values.t().double().unsqueeze(1), weight.double().view(1, 1, k), None if bias is None else bias.double(),
                         1, pad).squeeze(1).t()
    assert out.dtype == dtype and out.shape == reference.shape
    tolerance = 2e-6 if dtype == torch.float32 else 1e-14
    assert (out.double() - reference).abs().max().item() <= tolerance * k * values.abs().max().item()
    with torch.enable_grad():
        taps = weight.clone().requires_grad_()
        by_torch = channel_conv1d(values, taps, bias, pad)
        by_torch.sum().backward()
    assert by_torch.requires_grad and torch.equal(out, by_torch.detach())
    assert taps.grad is not None and taps.grad.shape == (k,)


def test_channel_product_falls_back_to_torch_where_the_kernel_does_not_apply():
    """Gradients, a transposed (non-contiguous) operand and wide layers take torch.mm: autograd
    flows and the numbers are the product's."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 16, generator=g).requires_grad_()
    values = torch.randn(16, 5000, generator=g)
    channel_product(weight, values).sum().backward()
    # float32 sums of 5000 terms in another order than the float64 reference: within ~n * eps * |v|
    bound = 5000 * 2**-24 * values.abs().max().item()
    torch.testing.assert_close(weight.grad.double(), values.double().sum(1).expand(4, -1), rtol=0, atol=bound)
    bias = torch.randn(4, requires_grad=True)
    channel_product(weight.detach(), values, bias=bias).sum().backward()
    torch.testing.assert_close(bias.grad, torch.full((4,), 5000.0))
    with torch.no_grad():
        transposed = torch.randn(5000, 16).t()
        torch.testing.assert_close(channel_product(weight, transposed), weight @ transposed)
        wide = torch.randn(96, 96)
        torch.testing.assert_close(channel_product(wide, torch.randn(96, 5000)).shape, torch.Size([96, 5000]))


def test_apply_pointwise_on_one_large_image_uses_the_product_kernel():
    """One image of a gate's size: the 1x1 layers as channel products (no bmm), the result the
    layers' own within float tolerance."""
    torch.manual_seed(1)
    layers = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1), nn.Sigmoid()).eval()
    y = torch.randn(1, 16, 67, 91)  # 6097 positions: past one block
    with torch.no_grad():
        with torch.profiler.profile() as profile:
            result = apply_pointwise(y, layers)
        torch.testing.assert_close(result, layers(y), rtol=1e-5, atol=1e-6)
    ops = [event.name for event in profile.events()]
    assert "aten::bmm" not in ops and "aten::mm" not in ops


def test_fast_mode_with_method_poolings():
    """x.amax stays exact with fast (max has no approximation); x.mean gets the approximate pooling."""
    x = torch.rand(1, 3, 40, 50)
    model = randomised(Holder(AmaxGate()))
    exact, _ = tlc.convert(model, train_size=12, base_size=18)
    fast, report = tlc.convert(model, train_size=12, base_size=18, fast=True)
    assert [op.rule for op in report.converted] == ["pooled-gate"]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), exact(x), rtol=1e-5, atol=1e-6)
    model = randomised(GateHolder(ReturnedGate()))
    fast, _ = tlc.convert(model, train_size=12, base_size=18, fast=True)
    assert [m.fast for m in fast.block.modules() if isinstance(m, tlc.LocalAvgPool2d)] == [True]


def test_apply_pointwise_overwrites_only_its_own_maps():
    """Activations after a 1x1 convolution run in place on the product; the input and any map the
    caller passes stay as they are, and the result equals the layers run one by one."""
    torch.manual_seed(1)
    layers = nn.Sequential(nn.Sigmoid(), nn.Conv2d(6, 3, 1), nn.ReLU(), nn.Conv2d(3, 6, 1), nn.Sigmoid(), nn.Tanh())
    y = torch.randn(2, 6, 11, 13)
    before = y.clone()
    with torch.no_grad():
        torch.testing.assert_close(apply_pointwise(y, layers.eval()), layers(y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, before, rtol=0, atol=0)
    g = y.clone().requires_grad_(True)  # with autograd: the same values, gradients flow
    out = apply_pointwise(g, layers)
    out.sum().backward()
    assert g.grad is not None and torch.isfinite(g.grad).all()


def test_gate_maps_read_once_are_overwritten_and_shared_ones_are_not():
    """The rewritten graphs: CBAM's gate runs its shared MLP's first layers on each branch, sums the
    hidden maps in place, and runs the last layer once and the sigmoid in the multiply
    (combine_with_shared_layer; the max branch's layers may write into its pooled map, the mean and
    its layers are one call, pooled_pointwise, whose means are its own); a pooled map read twice is
    left alone."""
    cbam = tlc.convert(randomised(Holder(CBAMChannelGate())), train_size=12, base_size=18)[0].block
    code = cbam.code
    assert code.count("overwrite = True") == 2 and code.count("pooled_pointwise(x, [") == 1
    assert "combine_with_shared_layer(x, pooled_pointwise_1, apply_pointwise_2, mlp_7, 'sigmoid', overwrite = True)" in code
    assert "sigmoid(" not in code and "pointwise_sum(" not in code
    shared = tlc.convert(randomised(Holder(SharedGate())), train_size=12, base_size=18)[0].block.code
    assert "into_first('sigmoid'" not in shared  # a is read again by s * a
    assert "into_first('mul', sigmoid, " in shared  # s is not: s * a may go into s
    assert "into_first('add', mul, " in shared


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "sigmoid", "tanh", "relu"])
def test_into_first_equals_the_plain_op_and_writes_into_a_only_where_it_fits(op):
    torch.manual_seed(0)
    plain = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}.get(op) or getattr(torch, op)
    unary = op in ("sigmoid", "tanh", "relu")
    others = [None] if unary else [torch.randn(2, 3, 5, 7), torch.randn(1, 3, 1, 1), 1.5, torch.randn(2, 3, 5, 7).double()]
    for b in others:
        a = torch.randn(2, 3, 5, 7)
        want = plain(a) if unary else plain(a, b)
        got = into_first(op, a.clone()) if unary else into_first(op, a.clone(), b)
        assert torch.equal(got, want) and got.dtype == want.dtype
        a_copy = a.clone()
        got = into_first(op, a_copy) if unary else into_first(op, a_copy, b)
        written = isinstance(b, float) or unary or (b.dtype == a.dtype)
        assert (got.data_ptr() == a_copy.data_ptr()) == written
    if not unary:  # a result larger than a: a new tensor, a untouched
        a, b = torch.randn(1, 3, 1, 1), torch.randn(2, 3, 5, 7)
        before = a.clone()
        assert torch.equal(into_first(op, a, b), plain(before, b)) and torch.equal(a, before)
    a = torch.randn(2, 3, requires_grad=True)  # autograd needs a: never overwritten
    out = into_first(op, a * 1) if unary else into_first(op, a * 1, 2.0)
    out.sum().backward()
    assert a.grad is not None
    with pytest.raises(ValueError, match="one of"):
        into_first("pow", a, 2.0)


def test_apply_pointwise_writes_into_its_input_only_when_told():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(8, 2, 1), nn.ReLU(), nn.Conv2d(2, 8, 1), nn.Sigmoid()).eval()
    y = torch.randn(2, 8, 13, 17)
    with torch.no_grad():
        want = layers(y)
        kept = y.clone()
        out = apply_pointwise(kept, layers)
        assert torch.equal(kept, y) and out.data_ptr() != kept.data_ptr()
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        mine = y.clone()
        out = apply_pointwise(mine, layers, overwrite=True)
        assert out.data_ptr() == mine.data_ptr()  # the second product went into the pooled map
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    y = torch.randn(2, 8, 13, 17, requires_grad=True)  # with autograd: nothing overwritten
    out = apply_pointwise(y, layers, overwrite=True)
    out.sum().backward()
    assert y.grad is not None and out.data_ptr() != y.data_ptr()
    y = torch.randn(2, 8, 13, 17)  # the first product keeps y for the weight's gradient
    layers.zero_grad()
    apply_pointwise(y.clone(), layers, overwrite=True).sum().backward()
    grads = [p.grad.clone() for p in layers.parameters()]
    layers.zero_grad()
    layers(y).sum().backward()
    for have, want in zip(grads, [p.grad for p in layers.parameters()]):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4)


def test_gate_method_calls_read_once_are_overwritten_too():
    """``y.mul(0.5)``: Tensor methods on maps the gate made go into those maps, as their function
    forms do, and ``y.sigmoid()`` before the multiply moves into it; the converted model still
    equals the brute-force local gate."""
    torch.manual_seed(3)
    model = randomised(Holder(MethodGate()))
    converted = tlc.convert(model, train_size=12, base_size=18)[0]
    code = converted.block.code
    assert "into_first('mul', apply_pointwise, 0.5)" in code and "into_first('add', mul, 0.25)" in code
    assert "combine_replicated(x, add, 'mul', 'sigmoid')" in code and "sigmoid(" not in code.replace("'sigmoid'", "")
    x = torch.randn(2, 8, 23, 31)
    maxima = brute_force(x, (18, 18), lambda w: w.amax(-1))
    with torch.no_grad():
        expected = x * model.block.fc(maxima).mul(0.5).add(0.25).sigmoid()
        torch.testing.assert_close(converted.block(x), expected, rtol=1e-5, atol=1e-6)


def _squeeze_excitation(c: int, hidden: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(c * 31 + hidden)
    return nn.Sequential(nn.Conv2d(c, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, c, 1), nn.Sigmoid()).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n, h, w, window, hidden, first",
    [(1, 37, 53, (9, 9), 4, True), (2, 24, 17, (5, 11), 4, True), (1, 40, 40, (28, 28), 8, False),
     (3, 9, 13, (4, 3), 4, True), (2, 33, 21, (30, 2), 8, False)],
)
def test_pooled_pointwise_is_the_layers_on_the_valid_windows_means(dtype, n, h, w, window, hidden, first, spy):
    """pooled_pointwise(x, layers, window), in either order, against the layers run in float64 on
    float64 valid-window means (avg_pool2d with stride 1): odd and non-square sizes, batch > 1,
    both dtypes; where the layer goes first (16 -> 4 channels; not 16 -> 8 with few positions),
    the mean is taken over its planes."""
    c = 16
    layers = _squeeze_excitation(c, hidden, dtype)
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(h * w), dtype=dtype) + 0.5
    reference = _squeeze_excitation(c, hidden, torch.float64)(F.avg_pool2d(x.double(), window, stride=1))
    averaged = spy(gate_ops, "valid_local_mean")
    with torch.no_grad():
        result = pooled_pointwise(x, layers, window)
    assert result.dtype == dtype and result.shape == reference.shape
    tolerance = 2e-6 if dtype == torch.float32 else 1e-13
    assert (result.double() - reference).abs().max().item() <= tolerance
    assert layer_first_is_cheaper((h, w), layers[0], window) == first
    assert [args[0].shape[1] for args, _ in averaged] == [hidden if first else c]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pooled_pointwise_in_half_precision_takes_the_means_first(dtype):
    """Half precision: the means first whatever the cost (per-pixel products rounded to half
    would swamp small means): the numbers of apply_pointwise on the valid windows' means."""
    layers = _squeeze_excitation(16, 4, dtype)
    x = torch.randn(1, 16, 37, 53, dtype=dtype)
    assert layer_first_is_cheaper((37, 53), layers[0], 9)
    with torch.no_grad():
        assert torch.equal(pooled_pointwise(x, layers, 9), apply_pointwise(valid_local_mean(x, 9), layers))


def test_pooled_pointwise_where_one_window_covers_the_map_is_the_original_order():
    """A window as large as the map: the map's mean, then the layers, bit for bit as the module
    computes them (the order the converted model keeps at its training size)."""
    layers = _squeeze_excitation(16, 4)
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        assert torch.equal(pooled_pointwise(x, layers, (12, 10)), layers(x.mean((2, 3), keepdim=True)))
        assert torch.equal(pooled_pointwise(x, layers, (40, 40)), layers(x.mean((2, 3), keepdim=True)))


def test_layer_first_is_cheaper_where_the_layer_narrows_and_most_positions_are_windows():
    """The order's choice: a gate's first layer narrowing 16 -> 4 channels goes first at 720p
    (window 48 or 384: fewer planes to average); one that keeps 16 channels, a 64 -> 16 layer with
    a third of the positions, a window covering the map and other layers do not."""
    narrowing, keeping, wide = nn.Conv2d(16, 4, 1), nn.Conv2d(16, 16, 1), nn.Conv2d(64, 16, 1)
    assert layer_first_is_cheaper((720, 1280), narrowing, 48)
    assert layer_first_is_cheaper((720, 1280), narrowing, (384, 384))
    assert layer_first_is_cheaper((720, 1280), wide, 48)
    assert not layer_first_is_cheaper((720, 1280), wide, 384)
    assert not layer_first_is_cheaper((720, 1280), keeping, 48)
    assert not layer_first_is_cheaper((720, 1280), narrowing, (720, 1280))
    assert not layer_first_is_cheaper((720, 1280), nn.ReLU(), 48)
    assert not layer_first_is_cheaper((720, 1280), nn.Conv2d(16, 4, 3), 48)


def test_pooled_pointwise_gradients_in_float64():
    layers = _squeeze_excitation(6, 2, torch.float64)
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64, requires_grad=True)
    assert layer_first_is_cheaper((9, 11), layers[0], 3)
    torch.autograd.gradcheck(lambda t: pooled_pointwise(t, layers, (3, 3)), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,h,w", [(1, 70, 61), (2, 9, 13), (1, 1, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_sum_is_the_layer_on_each_map_summed(dtype, n, h, w, bias):
    """pointwise_sum(a, b, conv) = conv(a) + conv(b) (one image on the CPU: the product kernel;
    two: torch's convolution), a overwritten only when told; one pixel: the original's bits."""
    from tlc.ops.gate import pointwise_sum

    torch.manual_seed(n * 100 + h)
    layer = randomised(nn.Conv2d(6, 10, 1, bias=bias)).to(dtype)
    a, b = torch.randn(n, 6, h, w, dtype=dtype), torch.randn(n, 6, h, w, dtype=dtype)
    with torch.no_grad():
        expected = layer(a) + layer(b)
        kept = a.clone()
        out = pointwise_sum(a, b, layer)
        assert torch.equal(a, kept)
        if h * w == 1:
            assert torch.equal(out, expected)
        atol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(out, expected, rtol=0, atol=atol)
        out = pointwise_sum(a, b, layer, overwrite=True)
        torch.testing.assert_close(out, expected, rtol=0, atol=atol)
        if h * w > 1:
            torch.testing.assert_close(a, kept + b, rtol=0, atol=0)  # the sum went into a
    with pytest.raises(ValueError, match="1x1"):
        pointwise_sum(a, b, nn.Conv2d(6, 10, 3, padding=1).to(dtype))
