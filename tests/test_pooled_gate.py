"""The pooled-gate rule: x * f(pool(x)) modules rebuilt to run f on the valid windows only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tlc
from tlc.ops.gate import apply_pointwise, multiply_replicated
from tlc.ops.pool import replicate_to, valid_local_mean
from tlc.convert.pooled_gate import gate_plan

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
    """The pooled map is used twice: not the pattern (left to the global-avg-pool rule)."""

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


@pytest.mark.parametrize("block", [CALayer, SplitGate, AddedGate])
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


def test_mprnet_channel_attention_is_found_by_tracing():
    from tlc.archs.mprnet import CALayer as MPRNetCALayer

    plan = gate_plan(MPRNetCALayer(16, 4))
    assert plan is not None and plan.pool == "avg_pool" and plan.layers == ("conv_du",) and plan.fused_multiply
    assert gate_plan(AddedGate()).fused_multiply is False
    assert gate_plan(SplitGate()).layers == ("reduce", "act", "expand")  # torch.sigmoid is not a child


@pytest.mark.parametrize("block", [PooledTwice, Branching])
def test_other_patterns_fall_back_to_the_pooling_rule(block):
    model = randomised(Holder(block()))
    assert gate_plan(model.block) is None
    converted, report = tlc.convert(model, train_size=24, base_size=36)
    assert [(op.path, op.rule) for op in report.converted] == [("block.pool", "global-avg-pool")]
    assert isinstance(converted.block.pool, tlc.LocalAvgPool2d)


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
        expected = x * replicate_to(gate, size)
        torch.testing.assert_close(multiply_replicated(x, gate), expected, rtol=0, atol=0)


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
