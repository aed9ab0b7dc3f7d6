"""combine_replicated with the gate's last layer and sigmoid moved into the multiply (one CPU pass
in float32), against float64 torch references built the long way: the layer at every window
position, torch's sigmoid, the gate replicated to full size, then the product."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from tlc.ops.gate import (
    channel_conv1d, channel_product, channel_product_layer_norm, combine_replicated, combine_replicated_summing_branches,
)
from tlc.ops.norm import layer_norm_columns
from tlc.ops.pool import replicate_to

from .corpus import converted

pooled_values = importlib.import_module("tlc.convert.pooled_values")  # tlc.convert is also a function

# (N, C, D, H, W, gh, gw): odd and non-square maps, batch > 1, a grid of one row or one column,
# a grid as large as the map (nothing replicated) and one of a single window.
CASES = [
    (1, 16, 4, 37, 53, 20, 30),
    (2, 5, 3, 9, 11, 9, 11),
    (3, 6, 2, 7, 8, 1, 5),
    (2, 7, 9, 13, 6, 4, 1),
    (1, 3, 5, 6, 7, 1, 1),
]


def _reference(x, values, weight, bias, op, activation):
    """In float64: the layer at each position, the activation, replicated, combined."""
    gate = values.double()
    if weight is not None:
        gate = torch.einsum("cd,ndhw->nchw", weight.double().flatten(1), gate)
        if bias is not None:
            gate = gate + bias.double().view(1, -1, 1, 1)
    if activation == "sigmoid":
        gate = torch.sigmoid(gate)
    full = replicate_to(gate, tuple(x.shape[-2:]))
    return x.double() * full if op == "mul" else x.double() + full


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["mul", "add"])
@pytest.mark.parametrize("form", ["layer+sigmoid", "layer", "sigmoid", "layer+bias+sigmoid", "conv-weight"])
def test_gate_layer_and_sigmoid_inside_the_combine_equal_the_long_way(case, dtype, op, form):
    n, c, d, h, w, gh, gw = case
    g = torch.Generator().manual_seed(n * 100 + c + d)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    layer = form != "sigmoid"
    values = torch.randn(n, d if layer else c, gh, gw, generator=g).to(dtype)
    weight = (torch.randn(c, d, generator=g) * 0.7).to(dtype) if layer else None
    if form == "conv-weight":
        weight = weight.view(c, d, 1, 1)
    bias = torch.randn(c, generator=g).to(dtype) if form in ("layer+bias+sigmoid", "conv-weight") else None
    activation = "sigmoid" if "sigmoid" in form else None
    got = combine_replicated(x, values, op, activation, weight, bias)
    want = _reference(x, values, weight, bias, op, activation)
    assert got.shape == x.shape and got.dtype == dtype
    # float32: the layer's sums rounded per term (D of them), the sigmoid within 2 ulp, the product.
    tol = 2e-6 if dtype == torch.float32 else 1e-13
    scale = want.abs().max().item() + 1
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * scale * (d + 1))


def fused_multiply_add32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c rounded once to float32 (float32 tensors, broadcast). a * b is exact in float64
    (two 24-bit significands), so the float64 sum r is the exact value or the float64 nearest it,
    and r rounds to the float32 the exact value rounds to unless r is inexact and lies on a
    float32 halfway point (a float32 halfway point strictly between them would be a float64
    nearer the exact value): asserted not to, r's rounding error from Knuth's two-sum."""
    product, addend = a.double() * b.double(), c.double()
    r = product + addend
    part = r - product
    error = (product - (r - part)) + (addend - part)  # exact value - r
    r32 = r.float()
    toward = torch.nextafter(r32, torch.where(r > r32.double(), float("inf"), float("-inf")).float())
    halfway = (r - r32.double()).abs() * 2 == (toward.double() - r32.double()).abs()
    assert not (halfway & (r != r32.double()) & (error != 0)).any()
    return r32


@pytest.mark.parametrize("d", [3, 6, 9, 13])
def test_the_layer_gives_channel_products_bits_before_the_activation(d):
    """Without an activation, x = 1: the output is the layer's value at each position, and the
    kernel sums in channel_product's order (first product, then each plane's term in turn as a
    fused multiply-add, rounded once, the bias added last): against float32 sums taken one plane
    at a time, for input counts below, at and past the kernel's four planes a pass."""
    g = torch.Generator().manual_seed(0)
    c, gh, gw, h, w = 16, 70, 90, 75, 99  # >= 4096 positions: channel_product's own kernel
    values = torch.randn(1, d, gh, gw, generator=g)
    weight, bias = torch.randn(c, d, generator=g), torch.randn(c, generator=g)
    sums = weight[:, 0, None, None] * values[0, 0]
    for k in range(1, d):
        sums = fused_multiply_add32(weight[:, k, None, None], values[0, k], sums)
    want = replicate_to((sums + bias[:, None, None])[None], (h, w))
    assert torch.equal(replicate_to(channel_product(weight, values.view(d, -1), None, bias).view(1, c, gh, gw), (h, w)), want)
    got = combine_replicated(torch.ones(1, c, h, w), values, "mul", None, weight, bias)
    assert torch.equal(got, want)
    got = combine_replicated(torch.zeros(1, c, h, w), values, "add", None, weight, bias)
    assert torch.equal(got, want)


def test_the_sigmoid_is_within_two_units_in_the_last_place_and_keeps_nan_and_infinities():
    g = torch.cat([torch.linspace(-100, 100, 40001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 87.0, -87.0])])
    gate = torch.stack([g, g]).view(1, 1, 2, -1)  # two rows: a grid of more than one window
    got = combine_replicated(torch.ones(1, 1, 3, g.numel()), gate, "mul", "sigmoid")[0, 0, 0].double()
    want = torch.sigmoid(g.double())
    normal = want > 2**-126  # below, float32 holds subnormals: compared absolutely
    ulp = want.float().abs().double() * 2**-23
    assert ((got - want).abs() / ulp)[normal].max() <= 2
    assert (got - want).abs()[~normal].max() < 1e-38
    special = torch.tensor([float("nan"), float("inf"), -float("inf")]).view(1, 1, 1, 3).expand(1, 1, 2, 3)
    out = combine_replicated(torch.ones(1, 1, 2, 3), special.contiguous(), "mul", "sigmoid")[0, 0, 0]
    assert out[0].isnan() and out[1] == 1 and out[2] == 0  # torch.sigmoid's 0 at -inf
    far = torch.tensor([-1e4, -95.0, -88.5]).view(1, 1, 1, 3).expand(1, 1, 2, 3)  # subnormal or 0 in torch
    out = combine_replicated(torch.ones(1, 1, 2, 3), far.contiguous(), "mul", "sigmoid")[0, 0, 0]
    assert torch.equal(out, torch.zeros(3))


def test_one_window_is_the_originals_order_bit_for_bit():
    """A 1x1 grid (the training size): the layer as a convolution, torch's sigmoid, a broadcast."""
    g = torch.Generator().manual_seed(1)
    x, values = torch.randn(2, 8, 5, 6, generator=g), torch.randn(2, 3, 1, 1, generator=g)
    conv = torch.nn.Conv2d(3, 8, 1)
    with torch.no_grad():
        want = x * torch.sigmoid(conv(values))
        assert torch.equal(combine_replicated(x, values, "mul", "sigmoid", conv.weight, conv.bias), want)


def test_gradients_flow_through_the_fallback():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: combine_replicated(*t[:2], "mul", "sigmoid", *t[2:]), (x, values, weight, bias))
    xf, vf = x.detach().float().requires_grad_(True), values.detach().float()  # float32 with autograd: torch's ops
    out = combine_replicated(xf, vf, "mul", "sigmoid", weight.detach().float(), bias.detach().float())
    out.sum().backward()
    torch.testing.assert_close(xf.grad.double(), torch.sigmoid(_reference(torch.zeros_like(x), values, weight, bias, "add", None)).detach(),
                               rtol=1e-5, atol=1e-6)


# (N, C, H, W, gh, gw, k, pad): ECA's 3 and 5 taps, one tap, and more padding than the channels
# reach (no tap reaching every output: the sums start from zero).
TAP_CASES = [
    (1, 16, 37, 53, 20, 30, 3, 1),
    (2, 7, 9, 11, 5, 4, 5, 2),
    (1, 4, 8, 9, 3, 1, 1, 0),
    (2, 3, 7, 6, 2, 5, 7, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["mul", "add"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("case", TAP_CASES)
def test_channel_taps_inside_the_combine_are_channel_conv1d_bit_for_bit(case, with_bias, op, dtype):
    """ECA's conv1d across the gate's channels at each position, inside the combine: the bits of
    channel_conv1d at every position (the CPU kernel in float32, the torch ops in float64), and
    within rounding of float64 F.conv1d; with the sigmoid, within its units in the last place."""
    n, c, h, w, gh, gw, k, pad = case
    g = torch.Generator().manual_seed(k * 100 + c)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    values = torch.randn(n, c, gh, gw, generator=g).to(dtype)
    taps = torch.randn(1, 1, k, generator=g).to(dtype)
    bias = torch.randn(1, generator=g).to(dtype) if with_bias else None
    rows = torch.stack([channel_conv1d(v.reshape(c, -1).contiguous(), taps.flatten(), bias, pad).view(c, gh, gw) for v in values])
    identity = torch.ones_like(x) if op == "mul" else torch.zeros_like(x)
    got = combine_replicated(identity, values, op, None, None, bias, taps, pad)
    assert torch.equal(got, replicate_to(rows, (h, w)))
    signals = values.double().permute(0, 2, 3, 1).reshape(-1, 1, c)
    exact = F.conv1d(signals, taps.double(), None if bias is None else bias.double(), padding=pad)
    exact = exact.reshape(n, gh, gw, c).permute(0, 3, 1, 2)
    torch.testing.assert_close(rows.double(), exact, rtol=0, atol=k * 4 * torch.finfo(dtype).eps * (exact.abs().max().item() + 1))
    got = combine_replicated(x, values, op, "sigmoid", None, bias, taps.flatten(), pad)
    want = x.double() * replicate_to(torch.sigmoid(exact), (h, w)) if op == "mul" else x.double() + replicate_to(torch.sigmoid(exact), (h, w))
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * (x.abs().max().item() + 1))


def test_bad_channel_taps_are_refused():
    x, gate = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="not both"):
        combine_replicated(x, gate, "mul", None, torch.randn(4, 4), None, torch.randn(3), 1)
    with pytest.raises(ValueError, match=r"\(k,\) or \(1, 1, k\)"):
        combine_replicated(x, gate, "mul", None, None, None, torch.randn(2, 3), 1)
    with pytest.raises(ValueError, match="one-element bias"):
        combine_replicated(x, gate, "mul", None, None, torch.randn(4), torch.randn(3), 1)
    with pytest.raises(ValueError, match="does not give x's 4"):
        combine_replicated(x, gate, "mul", None, None, None, torch.randn(3), 0)
    with pytest.raises(ValueError, match="no softmax"):
        combine_replicated(x, gate, "mul", "softmax", None, None, torch.randn(3), 1)


def test_bad_arguments_are_refused():
    x, gate = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="activation"):
        combine_replicated(x, gate, "mul", "tanh")
    with pytest.raises(ValueError, match="bias without a weight"):
        combine_replicated(x, gate, "mul", None, None, torch.randn(4))
    with pytest.raises(ValueError, match=r"\(C, D\)"):
        combine_replicated(x, gate, "mul", None, torch.randn(4, 4, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer", [True, False])
@pytest.mark.parametrize("case", [(1, 3, 16, 4, 37, 53, 20, 30), (2, 2, 5, 3, 9, 11, 4, 6), (1, 3, 4, 2, 8, 9, 1, 1)])
def test_a_softmax_over_branches_inside_the_multiply_equals_the_long_way(case, layer, dtype):
    """Selective-kernel fusion: x (N, k, C, H, W) times the softmax over the k branches of the
    gate's k * C values per position (after the layer stacking each branch's)."""
    n, k, c, d, h, w, gh, gw = case
    g = torch.Generator().manual_seed(k * 10 + c)
    x = torch.randn(n, k, c, h, w, generator=g).to(dtype)
    values = torch.randn(n, d, gh, gw, generator=g).to(dtype) if layer else torch.randn(n, k, c, gh, gw, generator=g).to(dtype)
    weight = torch.randn(k * c, d, generator=g).to(dtype) if layer else None
    bias = torch.randn(k * c, generator=g).to(dtype) if layer else None
    logits = values.double()
    if layer:
        logits = torch.einsum("cd,ndhw->nchw", weight.double(), logits) + bias.double().view(1, -1, 1, 1)
    attention = torch.softmax(logits.reshape(n, k, c, gh, gw), dim=1).reshape(n, k * c, gh, gw)
    want = x.double() * replicate_to(attention, (h, w)).reshape(x.shape)
    got = combine_replicated(x, values, "mul", "softmax", weight, bias)
    assert got.shape == x.shape and got.dtype == dtype
    tol = 2e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * (want.abs().max().item() + 1) * (d + 1))


@pytest.mark.parametrize("op", ["mul", "add"])
@pytest.mark.parametrize("layer", [True, False])
@pytest.mark.parametrize("case", [(1, 2, 16, 4, 37, 53, 20, 30), (2, 3, 5, 3, 9, 11, 4, 6), (1, 4, 3, 2, 12, 7, 1, 7), (3, 3, 2, 5, 6, 9, 6, 1)])
def test_the_branches_sum_from_the_gates_pass_is_torchs_sum_bit_for_bit(case, layer, op):
    """Selective-kernel fusion's weighted branches and their sum over the branches from one pass:
    the weighted branches those of combine_replicated and the sum torch.sum's over dim 1 of them,
    to the bit (the sign of zero included: torch's sum starts from +0), for 2 to 4 branches, odd
    and one-row or one-column grids, batch > 1, values from 1e-8 to 1e8 and -0."""
    n, k, c, d, h, w, gh, gw = case
    g = torch.Generator().manual_seed(k * 10 + c + h)
    x = torch.randn(n, k, c, h, w, generator=g) * torch.logspace(-8, 8, w)
    x[..., 0] = -0.0
    values = torch.randn(n, d, gh, gw, generator=g) if layer else torch.randn(n, k, c, gh, gw, generator=g)
    weight = torch.randn(k * c, d, generator=g) if layer else None
    bias = torch.randn(k * c, generator=g) if layer else None
    if layer:
        values[0, 0, 0, 0] = 1e30  # one position's weights all on one branch: products of exactly 0 and -0
    weighted, total = combine_replicated_summing_branches(x, values, op, weight, bias)
    want = combine_replicated(x, values, op, "softmax", weight, bias)
    summed = torch.sum(want, dim=1)
    assert torch.equal(weighted, want)
    assert total is not None and total.shape == (n, c, h, w)
    assert torch.equal(total, summed) and torch.equal(total.signbit(), summed.signbit())


def test_the_branches_sum_is_left_to_the_caller_where_the_kernel_does_not_sum():
    """Five branches (torch may sum those in another order), float64, a gate of one window
    position, or weights needing gradients: the weighted branches as combine_replicated gives
    them, and no sum."""
    g = torch.Generator().manual_seed(3)
    cases = [
        (torch.randn(1, 5, 2, 9, 10, generator=g), torch.randn(1, 5, 2, 4, 5, generator=g), None),
        (torch.randn(1, 3, 2, 9, 10, generator=g).double(), torch.randn(1, 3, 2, 4, 5, generator=g).double(), None),
        (torch.randn(1, 3, 2, 9, 10, generator=g), torch.randn(1, 3, 2, 1, 1, generator=g), None),
        (torch.randn(1, 2, 2, 9, 10, generator=g), torch.randn(1, 3, 4, 5, generator=g), torch.randn(4, 3, requires_grad=True)),
    ]
    for x, values, weight in cases:
        weighted, total = combine_replicated_summing_branches(x, values, "mul", weight, None)
        assert total is None
        torch.testing.assert_close(weighted, combine_replicated(x, values, "mul", "softmax", weight, None), rtol=0, atol=0)


def test_the_branches_sum_refuses_what_combine_replicated_refuses():
    x = torch.randn(1, 2, 3, 9, 10)
    with pytest.raises(ValueError, match="branches"):
        combine_replicated_summing_branches(x, torch.randn(1, 3, 2, 4, 5))  # (N, C, k): not x's (N, k, C)
    with pytest.raises(ValueError, match="bias without a weight"):
        combine_replicated_summing_branches(x, torch.randn(1, 2, 3, 4, 5), "mul", None, torch.randn(6))


def test_selective_kernel_fusions_sum_comes_from_the_gates_pass(monkeypatch, spy):
    """The corpus's SKFF (three branches) and SKFusion (two) converted: torch.sum over the weighted
    branches is answered from the gate's pass (no sum of the branches runs), the output the same
    bits as with the sum run by torch."""
    g = importlib.import_module("tlc.ops.gate")
    x = torch.rand(1, 3, 80, 104, generator=torch.Generator().manual_seed(8))
    for name in ("mirnet-skff", "dehaze-skfusion"):
        model = converted(name)
        kept = spy(pooled_values.PooledValues, "keep_branch_sum")
        asked = spy(pooled_values.PooledValues, "take_branch_sum")
        with torch.no_grad():
            fused = model(x)
            taken = [total for _, total in asked if total is not None]
            assert kept and len(taken) == len(kept)
            monkeypatch.setattr(g, "_SUMMED_BRANCHES_MAX", 0)
            kept.clear()
            apart = model(x)
            assert not kept
            monkeypatch.undo()
        assert torch.equal(fused, apart), name


def test_a_kept_branches_sum_answers_only_its_own_unchanged_sum():
    """PooledValues' kept sum of weighted branches: answers torch.sum(product, 1) (dim=1, -4,
    (1,), keepdim) of that product once; not another product, another dim, a dtype, a product
    changed in place (its version counted, or under inference mode the call the mode shows), nor
    after the forward finished."""
    values = pooled_values.PooledValues()
    product = torch.randn(1, 3, 2, 4, 5)
    total = product.sum(1)
    for args, kwargs in [((product, 1), {}), ((product,), {"dim": -4}), ((product, (1,)), {}), ((product, 1, True), {})]:
        values.keep_branch_sum(product, total)
        assert values.pending
        for other in [((product.clone(), 1), {}), ((product, 2), {}), ((product, 1), {"dtype": torch.float64}), ((product,), {})]:
            assert values.take_branch_sum(torch.sum, *other) is None
        got = values.take_branch_sum(torch.Tensor.sum, args, kwargs)
        assert got is not None and torch.equal(got, total.unsqueeze(1) if len(args) == 3 else total)
        assert values.take_branch_sum(torch.sum, args, kwargs) is None  # once
    values.keep_branch_sum(product, total)
    product.add_(1)  # the version counts up
    assert values.take_branch_sum(torch.sum, (product, 1), {}) is None
    with torch.inference_mode():
        frozen = torch.randn(1, 2, 2, 3, 3)
        values.keep_branch_sum(frozen, frozen.sum(1))
        values.before_call("mul_", (frozen, 2.0), {})
        assert values.take_branch_sum(torch.sum, (frozen, 1), {}) is None
        values.keep_branch_sum(frozen, frozen.sum(1))
    values.finish(None)
    assert values.take_branch_sum(torch.sum, (frozen, 1), {}) is None
    values.keep_branch_sum(frozen, frozen.sum(1))
    del frozen
    assert not values.pending  # the product gone: nothing kept


def test_a_softmax_needs_branches():
    with pytest.raises(ValueError, match="branches"):
        combine_replicated(torch.randn(1, 6, 5, 5), torch.randn(1, 6, 2, 2), "mul", "softmax")


def test_a_softmax_over_two_branches_keeps_nan_and_infinities():
    """Two branches take one exponential a pair (exp(0) = 1 for the larger): NaN in either logit,
    or +inf in one (inf - inf in torch's), gives NaN in both weights, as torch's softmax does; -inf
    gives its branch no weight."""
    logits = torch.tensor([[0.5, float("nan"), float("inf"), 3.0, -2.0, -float("inf")], [1.5, 0.0, 1.0, 3.0, 40.0, 2.0]])
    gate = logits.view(1, 2, 1, 1, 6).expand(1, 2, 1, 2, 6).contiguous()  # (N, k, C, gh, gw), two rows
    out = combine_replicated(torch.ones(1, 2, 1, 3, 6), gate, "mul", "softmax")[0, :, 0, 0].double()
    want = torch.softmax(logits.double(), dim=0)
    assert out[:, 1].isnan().all() and out[:, 2].isnan().all() and want[:, 2].isnan().all()
    finite = [0, 3, 4, 5]
    torch.testing.assert_close(out[:, finite], want[:, finite], rtol=0, atol=2e-7)


def test_ecas_convolution_across_channels_runs_inside_the_gate(monkeypatch):
    """The corpus's ECA converted: its conv1d across the pooled channels is computed inside the
    gate's multiply (no gate-sized map of its output), with the output of the conv1d computed on
    its own (the same bits: channel_conv1d's sums, then the same sigmoid and product)."""
    model = converted("eca")
    x = torch.rand(1, 3, 96, 136, generator=torch.Generator().manual_seed(5))
    taps_given = []
    original = pooled_values.combine_replicated

    def recorded(*args):
        taps_given.append(len(args) > 6 and args[6] is not None)
        return original(*args)

    monkeypatch.setattr(pooled_values, "combine_replicated", recorded)
    with torch.no_grad():
        fused = model(x)
        assert taps_given and all(taps_given)
        monkeypatch.setattr(pooled_values._Call, "channel_conv1d_form", lambda self: None)
        taps_given.clear()
        apart = model(x)
        assert taps_given and not any(taps_given)
    assert torch.equal(fused, apart)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(16, 8, 5000), (6, 3, 4097), (9, 13, 8192), (4, 4, 100)])
@pytest.mark.parametrize("affine", [False, True])
def test_a_layer_then_its_layer_norm_at_once_equal_the_two_calls(shape, affine, dtype):
    """channel_product_layer_norm: the layer's outputs normalised in cache give the bits of
    channel_product then layer_norm_columns (the CPU kernels, or torch below their sizes), and
    F.layer_norm of F.linear in float64 within rounding."""
    c, o, p = shape
    g = torch.Generator().manual_seed(o * 7 + c)
    weight, values = torch.randn(o, c, generator=g).to(dtype), torch.randn(c, p, generator=g).to(dtype)
    bias = torch.randn(o, generator=g).to(dtype)
    norm_weight = torch.randn(o, 1, 1, generator=g).to(dtype) if affine else None
    norm_bias = torch.randn(o, 1, 1, generator=g).to(dtype) if affine else None
    got = channel_product_layer_norm(weight, values, bias, norm_weight, norm_bias, 1e-5)
    assert torch.equal(got, layer_norm_columns(channel_product(weight, values, None, bias), norm_weight, norm_bias, 1e-5))
    exact = F.layer_norm(F.linear(values.double().t(), weight.double(), bias.double()), (o,),
                         None if norm_weight is None else norm_weight.double().flatten(),
                         None if norm_bias is None else norm_bias.double().flatten(), 1e-5).t()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol)


def test_gcnets_layer_and_layer_norm_run_at_once(monkeypatch, spy):
    """The corpus's GCNet converted: its 16 -> 8 layer and LayerNorm([8, 1, 1]) on the pooled
    context at every window position computed together, with the output of the two followed one
    after the other."""
    model = converted("gcnet")
    x = torch.rand(1, 3, 96, 136, generator=torch.Generator().manual_seed(6))
    calls = spy(pooled_values, "channel_product_layer_norm")
    with torch.no_grad():
        together = model(x)
        assert calls
        monkeypatch.setattr(pooled_values._Call, "layer_then_norm", lambda self: None)
        calls.clear()
        apart = model(x)
        assert not calls
    assert torch.equal(together, apart)
