"""The modules are thin: they equal their functions, keep parameter names and hold no state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tlc


def test_modules_equal_functions():
    x = torch.randn(2, 4, 13, 17)
    weight, bias = torch.randn(4), torch.randn(4)
    pool = tlc.LocalAvgPool2d((5, 6))
    torch.testing.assert_close(pool(x), tlc.local_mean(x, (5, 6)), rtol=0, atol=0)
    norm = tlc.LocalInstanceNorm2d(4, (5, 6), affine=True)
    norm.weight.data, norm.bias.data = weight, bias
    torch.testing.assert_close(norm(x), tlc.local_instance_norm(x, (5, 6), norm.weight, norm.bias), rtol=0, atol=0)
    group = tlc.LocalGroupNorm(2, 4, (5, 6), eps=1e-3)
    group.weight.data, group.bias.data = weight, bias
    torch.testing.assert_close(group(x), tlc.local_group_norm(x, 2, (5, 6), group.weight, group.bias, 1e-3), rtol=0, atol=0)
    fast = tlc.LocalAvgPool2d((10, 10), fast=True, max_stride=(2, 3))
    torch.testing.assert_close(fast(x), tlc.ops.local_mean_strided(x, (10, 10), (2, 3)), rtol=0, atol=0)


def test_no_hidden_state_across_sizes():
    pool = tlc.LocalAvgPool2d((4, 4))
    norm = tlc.LocalInstanceNorm2d(3, (4, 4))
    sizes = [(9, 9), (5, 21), (2, 2), (9, 9)]
    for h, w in sizes:
        x = torch.randn(1, 3, h, w)
        torch.testing.assert_close(pool(x), tlc.local_mean(x, (4, 4)), rtol=0, atol=0)
        torch.testing.assert_close(norm(x), tlc.local_instance_norm(x, (4, 4)), rtol=0, atol=0)
    assert pool.window == (4, 4) and norm.window == (4, 4)


def test_repr_shows_window():
    assert "window=(12, 7)" in repr(tlc.LocalAvgPool2d((12, 7)))
    assert "window=(3, 3)" in repr(tlc.LocalInstanceNorm2d(8, 3, affine=True))
    assert "window=(3, 4)" in repr(tlc.LocalGroupNorm(2, 8, (3, 4)))
    assert "fast=True" in repr(tlc.LocalAvgPool2d(5, fast=True))


def test_state_dict_keys_match_torch_modules():
    pairs = [
        (nn.InstanceNorm2d(8, affine=True), tlc.LocalInstanceNorm2d(8, 3, affine=True)),
        (nn.InstanceNorm2d(8), tlc.LocalInstanceNorm2d(8, 3)),
        (nn.GroupNorm(2, 8), tlc.LocalGroupNorm(2, 8, 3)),
        (nn.GroupNorm(2, 8, affine=False), tlc.LocalGroupNorm(2, 8, 3, affine=False)),
        (nn.AdaptiveAvgPool2d(1), tlc.LocalAvgPool2d(3)),
    ]
    for torch_module, local in pairs:
        assert torch_module.state_dict().keys() == local.state_dict().keys()
        local.load_state_dict(torch_module.state_dict(), strict=True)


def test_pooled_sequential_equals_pool_then_layers():
    torch.manual_seed(0)
    layers = [nn.Conv2d(6, 3, 1), nn.ReLU(), nn.Conv2d(3, 6, 1), nn.Sigmoid()]
    fused = tlc.LocalPooledSequential(tlc.LocalAvgPool2d((5, 7)), layers)
    plain = nn.Sequential(tlc.LocalAvgPool2d((5, 7)), *layers)
    for shape in [(2, 6, 13, 17), (1, 6, 3, 4), (1, 6, 1, 1)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=1e-6)
    assert fused.state_dict().keys() == nn.Sequential(nn.AdaptiveAvgPool2d(1), *layers).state_dict().keys()


def test_pointwise_detection():
    from tlc.nn import is_pointwise

    assert is_pointwise(nn.Conv2d(4, 4, 1)) and is_pointwise(nn.Conv2d(4, 4, 1, groups=2)) and is_pointwise(nn.GELU())
    assert not is_pointwise(nn.Conv2d(4, 4, 3, padding=1)) and not is_pointwise(nn.Conv2d(4, 4, 1, stride=2))
    assert not is_pointwise(nn.Upsample(scale_factor=2))


def test_converter_uses_the_fused_form_only_for_pointwise_sequences():
    se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())
    odd = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 3, padding=1))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.se, self.odd = nn.Conv2d(3, 4, 3, padding=1), se, odd

        def forward(self, x):
            y = self.head(x)
            return y * self.se(y) + self.odd(y)

    # Module rules alone: a 3x3 conv after the pool sees zero padding around a full-size map
    # instead of a 1x1 one; not equivalent at the training size, and the converter says so.
    with pytest.warns(UserWarning, match="differs from the original"):
        converted, report = tlc.convert(Net(), train_size=16, functional=False)
    assert {op.path: op.rule for op in report.converted} == {"se": "global-avg-pool+pointwise", "odd.0": "global-avg-pool"}
    assert isinstance(converted.se, tlc.LocalPooledSequential) and isinstance(converted.odd[0], tlc.LocalAvgPool2d)
    # By default the bare pool is a pooled value: the 3x3 conv runs on each window's 1x1 mean
    # (only its centre tap meets it), exact at the training size.
    net = Net()
    converted, report = tlc.convert(net, train_size=16)
    assert {op.path: op.rule for op in report.converted} == {"se": "global-avg-pool+pointwise", "odd.0": "adaptive_avg_pool2d"}
    assert report.max_deviation < 1e-6
    x = torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        y = net.head(x)
        means = tlc.local_mean(y, 24)
        centre = nn.functional.conv2d(means, net.odd[1].weight[:, :, 1:2, 1:2], net.odd[1].bias)
        expected = y * torch.sigmoid(net.se[1](means)) + centre
        torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)
