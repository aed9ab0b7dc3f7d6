"""The modules are thin: they equal their functions, keep parameter names and hold no state."""

from __future__ import annotations

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
    torch.testing.assert_close(norm(x), tlc.local_instance_norm(x, (5, 6), weight, bias), rtol=0, atol=0)
    group = tlc.LocalGroupNorm(2, 4, (5, 6), eps=1e-3)
    group.weight.data, group.bias.data = weight, bias
    torch.testing.assert_close(group(x), tlc.local_group_norm(x, 2, (5, 6), weight, bias, 1e-3), rtol=0, atol=0)
    fast = tlc.LocalAvgPool2d((10, 10), fast=True, max_stride=(2, 3))
    torch.testing.assert_close(fast(x), tlc.local_mean_strided(x, (10, 10), (2, 3)), rtol=0, atol=0)


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
