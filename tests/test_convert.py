"""convert() on small models of our own holding SE blocks, instance norm and group norm."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import tlc

from .conftest import devices


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.ReLU(), nn.Conv2d(c // 2, c, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(self.pool(x))


class Net(nn.Module):
    """Two levels (full and half resolution) with every kind of global op, plus a BatchNorm."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.se1 = SE(c)
        self.inorm = nn.InstanceNorm2d(c, affine=True)
        self.down = nn.Conv2d(c, 2 * c, 2, stride=2)
        self.gnorm = nn.GroupNorm(4, 2 * c)
        self.plain_inorm = nn.InstanceNorm2d(2 * c)
        self.se2 = SE(2 * c)
        self.running = nn.InstanceNorm2d(2 * c, track_running_stats=True)
        self.bn = nn.BatchNorm2d(2 * c)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        y = self.inorm(self.se1(self.head(x)))
        z = self.down(y)
        z = self.se2(self.plain_inorm(self.gnorm(z)))
        z = self.bn(self.running(z))
        return x + self.tail(self.up(z) + y)


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomise every parameter and buffer so no op is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() == 1 else 0.3) + (1.0 if p.dim() == 1 else 0.0))
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model.eval()


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return perturbed(Net())


def test_finds_and_converts_every_global_op(net):
    converted, report = tlc.convert(net, train_size=(32, 32), base_size=(48, 48))
    found = {op.path: (op.rule, op.feature_size, op.window) for op in report.converted}
    assert found == {
        "se1": ("pooled-gate", (32, 32), (48, 48)),
        "inorm": ("instance-norm", (32, 32), (48, 48)),
        "gnorm": ("group-norm", (16, 16), (24, 24)),
        "plain_inorm": ("instance-norm", (16, 16), (24, 24)),
        "se2": ("pooled-gate", (16, 16), (24, 24)),
    }
    assert [(s.path, s.rule) for s in report.skipped] == [("running", "instance-norm")]
    assert "running statistics" in report.skipped[0].reason
    assert converted.se1.pool.window == (48, 48) and converted.se1.fc is not net.se1.fc  # a copy
    assert isinstance(converted.inorm, tlc.LocalInstanceNorm2d)
    assert isinstance(converted.gnorm, tlc.LocalGroupNorm) and converted.gnorm.window == (24, 24)
    assert isinstance(converted.running, nn.InstanceNorm2d)


def test_windows_are_anisotropic_for_anisotropic_training_sizes(net):
    _, report = tlc.convert(net, train_size=(32, 64), base_size=(40, 100))
    windows = {op.path: op.window for op in report.converted}
    assert windows["se1"] == (40, 100)
    assert windows["se2"] == (16 * 40 // 32, 32 * 100 // 64)


def test_default_base_size_is_one_and_a_half_times_train(net):
    _, report = tlc.convert(net, train_size=(32, 20))
    assert report.base_size == (48, 30)
    assert {op.path: op.window for op in report.converted}["se1"] == (48, 30)


def test_reproduces_the_original_at_the_training_size(net):
    converted, report = tlc.convert(net, train_size=(32, 32))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), net(x), rtol=0, atol=1e-5)
    assert report.max_deviation < 1e-5


def test_larger_inputs_differ_from_the_original(net):
    converted, _ = tlc.convert(net, train_size=(32, 32))
    x = torch.rand(1, 3, 96, 130)
    with torch.no_grad():
        assert (converted(x) - net(x)).abs().max() > 1e-3


def test_larger_inputs_match_a_hand_built_local_model(net):
    converted, _ = tlc.convert(net, train_size=(32, 32), base_size=(40, 40))
    manual = copy.deepcopy(net)
    manual.se1.pool = tlc.LocalAvgPool2d(40)
    manual.se2.pool = tlc.LocalAvgPool2d(20)
    for name, window in [("inorm", 40), ("plain_inorm", 20)]:
        old = getattr(manual, name)
        new = tlc.LocalInstanceNorm2d(old.num_features, window, old.eps, old.affine)
        new.weight, new.bias = old.weight, old.bias
        setattr(manual, name, new)
    manual.gnorm = tlc.LocalGroupNorm(4, 16, 20)
    manual.gnorm.weight, manual.gnorm.bias = net.gnorm.weight, net.gnorm.bias
    x = torch.rand(2, 3, 70, 90)
    with torch.no_grad():
        # The SE gates' 1x1 convolutions run as matrix products (other summation order): not bitwise.
        torch.testing.assert_close(converted(x), manual(x), rtol=0, atol=2e-5)
        strict, _ = tlc.convert(net, train_size=(32, 32), base_size=(40, 40), rules=[tlc.rules.GLOBAL_AVG_POOL, tlc.rules.INSTANCE_NORM, tlc.rules.GROUP_NORM], functional=False)
        torch.testing.assert_close(strict(x), manual(x), rtol=0, atol=0)


def test_original_untouched_and_inplace(net):
    state = copy.deepcopy(net.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
    converted, _ = tlc.convert(net, train_size=(32, 32))
    assert converted is not net
    assert isinstance(net.se1.pool, nn.AdaptiveAvgPool2d)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    same, _ = tlc.convert(net, train_size=(32, 32), inplace=True)
    assert same is net and type(net.se1).__name__ == "LocalSE"


def test_state_dict_keys_unchanged(net):
    converted, _ = tlc.convert(net, train_size=(32, 32))
    assert converted.state_dict().keys() == net.state_dict().keys()
    converted.load_state_dict(net.state_dict(), strict=True)


def test_modes_restored_and_batchnorm_stats_untouched(net):
    net.train()
    net.tail.eval()  # a module with its own flag
    running_mean = net.bn.running_mean.clone()
    converted, _ = tlc.convert(net, train_size=(32, 32))
    assert net.training and converted.training
    assert not net.tail.training and not converted.tail.training
    assert torch.equal(net.bn.running_mean, running_mean)
    assert torch.equal(converted.bn.running_mean, running_mean)


def test_batch_odd_sizes_and_tiny_inputs(net):
    converted, _ = tlc.convert(net, train_size=(32, 32))
    for shape in [(2, 3, 34, 50), (1, 3, 2, 2), (3, 3, 64, 6)]:
        x = torch.rand(shape)
        with torch.no_grad():
            out = converted(x)
            single = torch.cat([converted(x[i : i + 1]) for i in range(shape[0])])
        assert out.shape == shape and torch.isfinite(out).all()
        torch.testing.assert_close(out, single)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(net, dtype, device):
    # The converted model in half precision is as close to its float32 self as the original is.
    converted, report = tlc.convert(copy.deepcopy(net).to(device=device, dtype=dtype), train_size=(32, 32))
    assert len(report.converted) == 5
    converted32, _ = tlc.convert(net, train_size=(32, 32))
    half = copy.deepcopy(net).to(device=device, dtype=dtype)
    x = torch.rand(1, 3, 80, 96)
    with torch.no_grad():
        out = converted(x.to(device=device, dtype=dtype))
        error = (out.float().cpu() - converted32(x)).abs().max()
        original_error = (half(x.to(device=device, dtype=dtype)).float().cpu() - net(x)).abs().max()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert error < 2 * original_error


def test_report_prints_a_table(net):
    _, report = tlc.convert(net, train_size=(32, 32))
    text = str(report)
    assert "train 32x32, base 48x48" in text and "5 converted, 1 skipped" in text
    assert "se2  " in text and "pooled-gate" in text and "16x16" in text and "24x24" in text and "running statistics" in text
    assert report.to_dict()["converted"][0]["window"] == (48, 48)


def test_no_global_ops_warns_and_returns_a_copy():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    with pytest.warns(UserWarning, match="no global operation"):
        converted, report = tlc.convert(model)
    assert converted is not model and not report.converted and not report.skipped
    x = torch.rand(1, 3, 9, 9)
    torch.testing.assert_close(converted(x), model(x))


def test_training_size_too_small_names_the_module():
    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Sequential(*[nn.Conv2d(3, 3, 3, stride=2) for _ in range(4)])
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return x * self.pool(self.down(x))

    with pytest.raises(tlc.ConversionError, match=r"at 8x8 failed in module 'down\.\d' \(Conv2d\)"):
        tlc.convert(Deep(), train_size=8)


def test_shared_module_at_several_sizes_is_left_global():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            small = nn.functional.avg_pool2d(x, 2)
            return self.conv(x) * self.pool(x) + nn.functional.interpolate(small * self.pool(small), scale_factor=2)

    converted, report = tlc.convert(Shared(), train_size=16, functional=False)
    assert not report.converted
    assert "several feature sizes (8x8, 16x16)" in report.skipped[0].reason
    # The run-time view (on by default) takes bare poolings, and says the same of the one call.
    converted, report = tlc.convert(Shared(), train_size=16)
    assert not report.converted
    assert "several input sizes (CxHxW: 3x8x8, 3x16x16)" in report.skipped[0].reason


def test_shared_module_at_one_size_is_replaced_everywhere():
    class TwoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            pool = nn.AdaptiveAvgPool2d(1)
            self.first = nn.Sequential(nn.Conv2d(3, 3, 1), pool)
            self.second = nn.Sequential(nn.Conv2d(3, 3, 1), pool)

        def forward(self, x):
            y = x * self.first(x)
            return y * self.second(y)

    model = TwoBlocks()
    converted, report = tlc.convert(model, train_size=16, functional=False)
    assert report.converted[0].paths == ("first.1", "second.1")
    assert converted.first[1] is converted.second[1] and isinstance(converted.first[1], tlc.LocalAvgPool2d)
    # The run-time view (on by default) names the shared module once; both calls run locally.
    default, report = tlc.convert(model, train_size=16)
    assert [(op.paths, op.rule) for op in report.converted] == [(("first.1",), "adaptive_avg_pool2d")]
    x = torch.rand(2, 3, 40, 33)
    with torch.no_grad():
        torch.testing.assert_close(default(x), converted(x), rtol=1e-5, atol=1e-6)


def test_a_site_whose_local_result_breaks_the_model_stays_global_and_the_rest_converts():
    class LinearSE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 4)
            self.norm = nn.InstanceNorm2d(4)

        def forward(self, x):
            y = self.norm(self.conv(x))
            return y * self.fc(self.pool(y).view(y.shape[0], -1)).sigmoid()[:, :, None, None]

    model = LinearSE()
    converted, report = tlc.convert(model, train_size=16, functional=False)
    assert [op.path for op in report.converted] == ["norm"]
    [skipped] = report.skipped
    assert skipped.path == "pool" and skipped.reason.startswith("the model fails on its local result: RuntimeError")
    assert isinstance(converted.pool, nn.AdaptiveAvgPool2d) and isinstance(converted.norm, tlc.LocalInstanceNorm2d)
    x = torch.rand(1, 3, 40, 40)
    expected = model.norm(model.conv(x))  # by hand: local norm, global pool
    expected = tlc.local_instance_norm(model.conv(x), (24, 24), eps=model.norm.eps)
    gate = model.fc(expected.mean((2, 3))).sigmoid()[:, :, None, None]
    torch.testing.assert_close(converted(x), expected * gate)


def test_inplace_conversion_that_fails_leaves_the_model_as_it_was():
    class Tail(nn.Module):  # a user's global op at the output
        def forward(self, x):
            return x - x.mean((2, 3), keepdim=True)

    wrong = tlc.Rule("doubles-channels", lambda m: isinstance(m, Tail), lambda m, site: nn.Conv2d(4, 8, 1))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4), Tail())
    before = dict(model.named_modules())
    with pytest.raises(tlc.ConversionError, match="other shapes"):
        tlc.convert(model, train_size=16, inplace=True, rules=[tlc.rules.INSTANCE_NORM, wrong])
    assert dict(model.named_modules()) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_calibration_feeds_each_forward_its_own_input():
    class ScalesInputInPlace(nn.Module):  # as spandrel's RCAN: x.mul_(img_range) before the head
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            x.mul_(255.0)
            y = self.head(x)
            return y * self.pool(y)

    _, report = tlc.convert(ScalesInputInPlace(), train_size=16)
    # Outputs reach ~1e4 (float32 rounding ~1e-3); a second forward on the scaled input would be 255x off.
    assert report.max_deviation < 1e-2


def test_a_model_that_cannot_be_deep_copied_names_the_module():
    class Unpicklable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.handle = open(__file__)  # file objects refuse deepcopy

        def __deepcopy__(self, memo):
            raise TypeError("cannot pickle '_io.TextIOWrapper' object")

    model = nn.Sequential(nn.Conv2d(3, 3, 1), Unpicklable())
    try:
        with pytest.raises(tlc.ConversionError, match=r"module '1' \(Unpicklable\) fails copy.deepcopy.*inplace=True"):
            tlc.convert(model, train_size=16)
    finally:
        model[1].handle.close()


def test_user_rules_extend_the_defaults():
    class GlobalContext(nn.Module):  # a user's own global op: x minus its spatial mean
        def forward(self, x):
            return x - x.mean(dim=(2, 3), keepdim=True)

    class LocalContext(nn.Module):
        def __init__(self, window):
            super().__init__()
            self.window = window

        def forward(self, x):
            return x - tlc.local_mean(x, self.window)

    rule = tlc.Rule("global-context", lambda m: isinstance(m, GlobalContext), lambda m, site: LocalContext(site.window))
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), GlobalContext(), nn.AdaptiveAvgPool2d(1))
    converted, report = tlc.convert(model, train_size=20, rules=(*tlc.DEFAULT_RULES, rule))
    assert [op.rule for op in report.converted] == ["global-context", "adaptive_avg_pool2d"]
    assert converted[1].window == (30, 30)
    only_mine, report = tlc.convert(model, train_size=20, rules=[rule], functional=False)
    assert [op.rule for op in report.converted] == ["global-context"]
    assert isinstance(only_mine[2], nn.AdaptiveAvgPool2d)
    # By default the run-time view still finds the pool no rule matched, with its source line.
    _, report = tlc.convert(model, train_size=20, rules=[rule])
    assert [(op.rule, op.path, op.location.split(":")[0]) for op in report.converted] == [
        ("global-context", "1", ""), ("adaptive_avg_pool2d", "2", "torch.nn")
    ]


def test_broken_user_rule_is_reported():
    rule = tlc.Rule("wrong", lambda m: isinstance(m, nn.AdaptiveAvgPool2d), lambda m, site: nn.Identity())
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tlc.convert(model, train_size=20, rules=[rule])
    assert any("differs from the original" in str(w.message) for w in caught)


def test_in_channels_found_when_another_conv_is_registered_first():
    class LateIntro(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(8, 8, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.intro = nn.Conv2d(1, 8, 3, padding=1)

        def forward(self, x):
            y = self.body(self.intro(x))
            return y * self.pool(y)

    _, report = tlc.convert(LateIntro(), train_size=16)
    assert report.converted[0].feature_size == (16, 16)
    with pytest.raises(tlc.ConversionError, match="channels"):
        tlc.convert(LateIntro(), train_size=16, in_channels=3)


def test_in_channels_found_when_the_first_conv_sees_the_input_with_its_mean():
    class IlluminationFirst(nn.Module):  # Retinexformer: the estimator's conv (4 channels) registered first
        def __init__(self):
            super().__init__()
            self.estimator = nn.Conv2d(4, 3, 1)
            self.body = nn.Conv2d(3, 8, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            light = self.estimator(torch.cat([x, x.mean(1, keepdim=True)], 1))
            y = self.body(x * light + x)
            return y * self.pool(y)

    _, report = tlc.convert(IlluminationFirst(), train_size=16)
    assert report.in_channels == 3


class LookAlikeConv(nn.Module):  # DO-Conv style: a conv of its own, not an nn.Conv2d
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.in_channels = in_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3) * 0.1)

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.weight, padding=1)


def test_in_channels_from_a_look_alike_conv_fed_the_input():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.deep = nn.Conv2d(128, 6, 1)  # registered first, as in DeepRFT
            self.intro = LookAlikeConv(3, 128)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            y = self.deep(self.intro(x))
            return y * self.pool(y)

    _, report = tlc.convert(Model(), train_size=16)
    assert report.in_channels == 3


def test_bad_arguments():
    with pytest.raises(ValueError):
        tlc.convert(nn.Conv2d(3, 3, 1), train_size=0)
    with pytest.raises(TypeError):
        tlc.convert(nn.Conv2d(3, 3, 1), train_size="256")
    with pytest.raises(tlc.ConversionError, match="matches the model itself"):
        tlc.convert(nn.AdaptiveAvgPool2d(1))


@pytest.mark.parametrize("train,base", [((33, 33), (50, 50)), ((20, 36), (31, 50)), ((32, 24), (47, 41))])
def test_windows_at_non_integral_ratios_follow_the_formula(train, base):
    """Window = floor(feature * base / train) per axis, computed here from the feature sizes the
    network has at ``train`` (full, then halved by the stride-2 conv, rounding up with padding 1)."""

    class TwoLevels(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 4, 3, padding=1)
            self.norm1 = nn.InstanceNorm2d(4)
            self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
            self.norm2 = nn.InstanceNorm2d(4)

        def forward(self, x):
            return self.norm2(self.down(self.norm1(self.head(x))))

    _, report = tlc.convert(TwoLevels(), train_size=train, base_size=base, functional=False)
    half = ((train[0] + 1) // 2, (train[1] + 1) // 2)
    expected = {
        "norm1": (train, (train[0] * base[0] // train[0], train[1] * base[1] // train[1])),
        "norm2": (half, (int(half[0] * base[0] / train[0]), int(half[1] * base[1] / train[1]))),
    }
    assert {op.path: (op.feature_size, op.window) for op in report.converted} == expected


def test_invariance_at_the_training_size_measured_here():
    """The converted model equals the original at the training size, measured by running both
    (not from the report's own deviation)."""
    torch.manual_seed(1)
    model = perturbed(Net())
    converted, _ = tlc.convert(model, train_size=(32, 32))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert (converted(x) - model(x)).abs().max().item() < 1e-5
