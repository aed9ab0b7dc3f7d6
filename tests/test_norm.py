"""Local instance and group norm against brute-force loops, torch's global norms and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tlc

from .conftest import TOLERANCE, devices


def brute_local_group_norm(x, groups, window, weight=None, bias=None, eps=1e-5):
    """Per pixel: statistics over the group's channels and the window placed as in local_mean."""
    x = x.double()
    n, c, h, w = x.shape
    k1, k2 = min(window[0], h), min(window[1], w)
    out = torch.empty_like(x)
    per = c // groups
    for i in range(h):
        top = min(max(i - (k1 - 1) // 2, 0), h - k1)
        for j in range(w):
            left = min(max(j - (k2 - 1) // 2, 0), w - k2)
            for g in range(groups):
                patch = x[:, g * per : (g + 1) * per, top : top + k1, left : left + k2]
                mean = patch.mean(dim=(1, 2, 3))
                var = patch.var(dim=(1, 2, 3), unbiased=False)
                value = x[:, g * per : (g + 1) * per, i, j]
                out[:, g * per : (g + 1) * per, i, j] = (value - mean[:, None]) / (var[:, None] + eps).sqrt()
    if weight is not None:
        out = out * weight.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)
    return out


@pytest.mark.parametrize("shape,window", [((2, 3, 5, 7), (3, 4)), ((1, 2, 1, 6), (2, 3)), ((1, 1, 4, 4), (1, 9))])
def test_instance_norm_matches_brute_force(shape, window):
    x = torch.randn(shape, dtype=torch.float64)
    weight, bias = torch.randn(shape[1], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    out = tlc.local_instance_norm(x, window, weight, bias)
    torch.testing.assert_close(out, brute_local_group_norm(x, shape[1], window, weight, bias), rtol=0, atol=1e-9)


def test_group_norm_matches_brute_force():
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    weight, bias = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    out = tlc.local_group_norm(x, 3, (3, 2), weight, bias, eps=1e-3)
    torch.testing.assert_close(out, brute_local_group_norm(x, 3, (3, 2), weight, bias, eps=1e-3), rtol=0, atol=1e-9)


def test_covering_window_is_torchs_global_norm():
    # torch's own op, bit for bit: a converted model computes what the original did where one
    # window covers the map (at its training size, say).
    x = 3 + torch.randn(2, 4, 9, 13)
    weight, bias = torch.randn(4), torch.randn(4)
    assert torch.equal(tlc.local_instance_norm(x, (9, 13), weight, bias), F.instance_norm(x, weight=weight, bias=bias))
    assert torch.equal(tlc.local_group_norm(x, 2, (50, 50), weight, bias), F.group_norm(x, 2, weight, bias))
    assert torch.equal(tlc.local_group_norm(x, 1, (50, 50)), F.group_norm(x, 1))
    instance, group = nn.InstanceNorm2d(4, affine=True), nn.GroupNorm(2, 4)
    for module in (instance, group):
        nn.init.normal_(module.weight)
        nn.init.normal_(module.bias)
    local_instance = tlc.nn.LocalInstanceNorm2d(4, (9, 14), affine=True)
    local_group = tlc.nn.LocalGroupNorm(2, 4, (10, 13))
    local_instance.load_state_dict(instance.state_dict())
    local_group.load_state_dict(group.state_dict())
    with torch.no_grad():
        assert torch.equal(local_instance(x), instance(x)) and torch.equal(local_group(x), group(x))
        # One row fewer in the window: the local statistics, within rounding of the brute force.
        narrow = tlc.local_group_norm(x.double(), 2, (8, 13), weight.double(), bias.double())
        torch.testing.assert_close(narrow, brute_local_group_norm(x.double(), 2, (8, 13), weight.double(), bias.double()))
        assert (narrow - F.group_norm(x.double(), 2, weight.double(), bias.double())).abs().max() > 1e-3


def test_a_one_pixel_map_is_normalised_to_its_bias():
    # torch's norms refuse a 1x1 map; the local ones give each value minus itself: the bias.
    x, bias = torch.randn(2, 4, 1, 1), torch.randn(4)
    torch.testing.assert_close(tlc.local_instance_norm(x, 3, None, bias), bias.view(1, 4, 1, 1).expand(2, 4, 1, 1))
    torch.testing.assert_close(tlc.local_group_norm(x, 4, 3, None, bias), bias.view(1, 4, 1, 1).expand(2, 4, 1, 1))


def test_offset_input_keeps_its_digits():
    # Values 1000 +- 0.01: float32 E[x^2] - E[x]^2 would cancel every digit of the variance.
    g = torch.Generator().manual_seed(1)
    x = (1000 + 0.01 * torch.randn(1, 2, 30, 40, generator=g)).float()
    out = tlc.local_instance_norm(x, (9, 13))
    expected = brute_local_group_norm(x, 2, (9, 13))
    assert (out.double() - expected).abs().max().item() < 1e-4


def test_constant_region_gives_zero_not_nan():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:, :] = 3.0  # a step between rows 3 and 4
    out = tlc.local_instance_norm(x, (3, 3))
    assert torch.isfinite(out).all()
    assert out[..., :2, :].abs().max() == 0


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes(dtype, device):
    x = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    out = tlc.local_group_norm(x.to(device=device, dtype=dtype), 2, (4, 5))
    assert out.dtype == dtype
    expected = brute_local_group_norm(x.to(dtype), 2, (4, 5))
    # Normalised values are O(1) but statistics over small windows amplify input rounding.
    atol = {torch.float32: 1e-5, torch.bfloat16: 0.1, torch.float16: 1e-2}[dtype]
    torch.testing.assert_close(out.double().cpu(), expected, rtol=0, atol=max(atol, TOLERANCE[dtype]))


def test_gradcheck_float64():
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: tlc.local_instance_norm(a, (3, 2), b, c), (x, weight, bias))
    assert torch.autograd.gradcheck(lambda a: tlc.local_group_norm(a, 2, (4, 3)), (x,))


def test_bad_groups():
    with pytest.raises(ValueError, match="divisible"):
        tlc.local_group_norm(torch.zeros(1, 5, 4, 4), 2, 3)


@pytest.mark.parametrize("groups,shape,window", [(2, (2, 4, 9, 13), (4, 5)), (4, (1, 4, 7, 6), (20, 3)), (1, (3, 3, 5, 5), (2, 2))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_cpu_kernel_and_torch_path_match_brute_force(groups, shape, window, dtype):
    """Without autograd the CPU takes the fused numba kernel; with it, the torch ops: both exact."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g) * 2 + 5).to(dtype)
    weight, bias = torch.randn(shape[1], generator=g).to(dtype), torch.randn(shape[1], generator=g).to(dtype)
    expected = brute_local_group_norm(x, groups, window, weight, bias)
    fused = tlc.local_group_norm(x, groups, window, weight, bias)
    by_torch = tlc.local_group_norm(x.clone().requires_grad_(), groups, window, weight, bias).detach()
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for out in (fused, by_torch):
        assert out.dtype == dtype
        assert (out.double() - expected).abs().max().item() < tol


def test_zero_eps_on_a_flat_map_is_nan_as_in_torch():
    """eps=0 and no spread at all: 0 / 0, as torch's group_norm computes it, in the fused kernel
    and in the torch path (no error raised)."""
    x = torch.full((1, 4, 6, 7), 2.5)
    assert torch.isnan(F.group_norm(x, 2, eps=0.0)).all()
    fused = tlc.local_group_norm(x, 2, (3, 3), eps=0.0)
    by_torch = tlc.local_group_norm(x.clone().requires_grad_(), 2, (3, 3), eps=0.0).detach()
    assert torch.isnan(fused).all() and torch.isnan(by_torch).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("rows,columns", [(8, 1100), (1, 7), (13, 513)])
@pytest.mark.parametrize("grad", [False, True])
def test_layer_norm_of_columns_equals_torchs_layer_norm_of_rows(dtype, affine, rows, columns, grad):
    """layer_norm_columns(x) = F.layer_norm(x.t()).t(): the fused kernel (no grad; blocks of 512
    columns, so 1100 and 513 end in partial blocks) and the torch path (grad), against torch's own
    norm in float64 (the kernel rounds once from float64: within a float32 step of it)."""
    from tlc.ops.norm import layer_norm_columns

    g = torch.Generator().manual_seed(rows * 1000 + columns)
    x = (torch.randn(rows, columns, generator=g, dtype=torch.float64) * 3 + 5).to(dtype)
    weight = torch.randn(rows, 1, 1, generator=g, dtype=dtype) if affine in ("both", "weight") else None
    bias = torch.randn(rows, 1, 1, generator=g, dtype=dtype) if affine in ("both", "bias") else None
    if grad:
        x.requires_grad_(True)
    out = layer_norm_columns(x, weight, bias, 1e-5)
    w64 = None if weight is None else weight.double().flatten()
    b64 = None if bias is None else bias.double().flatten()
    expected = F.layer_norm(x.detach().double().t(), (rows,), w64, b64, 1e-5).t()
    assert out.dtype == dtype and out.shape == (rows, columns)
    atol = 1e-12 if dtype == torch.float64 else 4e-6
    torch.testing.assert_close(out.detach().double(), expected, rtol=0, atol=atol)
    if grad:  # the torch path keeps the graph
        out.sum().backward()
        assert x.grad is not None and x.grad.isfinite().all()


def test_layer_norm_columns_gradcheck_float64():
    from tlc.ops.norm import layer_norm_columns

    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: layer_norm_columns(a, b, c, 1e-5), (x, weight, bias))


@pytest.mark.parametrize("scale,eps", [(1e20, 1e-5), (1e-25, 0.0), (1.0, 1e-5)])
def test_fused_kernel_keeps_its_digits_at_every_magnitude(scale, eps):
    """The kernel's 1 / sqrt(var + eps) starts from float32's and refines it in float64; where
    var + eps lies beyond float32's range (1e40 here, 1e-50 with eps = 0) it takes the plain
    formula. Either way the float64 result is the brute force's to 1e-10 (normalised values)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 9, 11, generator=g, dtype=torch.float64) * scale
    expected = brute_local_group_norm(x, 2, (4, 5), eps=eps)
    out = tlc.local_group_norm(x, 2, (4, 5), eps=eps)
    assert (out - expected).abs().max().item() < 1e-10


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("row", [0, 20, 69])
def test_fused_kernel_group_holding_nan_or_inf_is_nan_the_others_exact(bad, row):
    """As torch's group norm: a group holding a value that is not finite, wherever it lies (the
    centre's sampled rows or not), is NaN throughout; the other groups are untouched."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 4, 70, 9, generator=g)
    x[0, 3, row, 4] = bad
    assert torch.isnan(F.group_norm(x, 2)[:, 2:]).all()
    out = tlc.local_group_norm(x, 2, (5, 4))
    assert torch.isnan(out[:, 2:]).all()
    expected = brute_local_group_norm(x[:, :2], 1, (5, 4))
    assert (out[:, :2].double() - expected).abs().max().item() < 2e-5


def test_fused_kernel_on_a_tall_map_far_from_zero():
    """On maps taller than the rows the kernel's centre is sampled from (32), values 1e5 +- 0.01
    with a slope down the map still normalise to float32's digits: the float64 sums are of values
    centred near the mean (uncentred, their squares' 1e10 cost the variance 1e-4 two digits)."""
    g = torch.Generator().manual_seed(7)
    slope = torch.linspace(0, 0.05, 150).view(1, 1, 150, 1)
    x = (1e5 + slope + 0.01 * torch.randn(1, 2, 150, 12, generator=g)).float()
    out = tlc.local_instance_norm(x, (9, 5))
    expected = brute_local_group_norm(x, 2, (9, 5))
    assert (out.double() - expected).abs().max().item() < 1e-4
