"""convert(..., functional=True): global ops called as functions become local, by call site."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import tlc
from tlc.convert.call_sites import CallSiteConverter, installed, recognise
from tlc.ops import local_var

from .windows import brute_force, image


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomise every parameter so no op is an identity (NAFNet's beta/gamma start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() == 1 else 0.3) + (1.0 if p.dim() == 1 else 0.0))
    return model


def channel_norm(t: torch.Tensor) -> torch.Tensor:
    """NAFNet's LayerNorm2d without affine: statistics over channels, which must stay as they are."""
    mu = t.mean(1, keepdim=True)
    return (t - mu) / ((t - mu).pow(2).mean(1, keepdim=True) + 1e-6).sqrt()


class Net(nn.Module):
    """Two levels of global ops; ``functional`` picks calls or modules, with the same parameters."""

    def __init__(self, functional: bool, c: int = 6) -> None:
        super().__init__()
        self.functional = functional
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c, 1)
        self.inorm = nn.InstanceNorm2d(c, affine=True)
        self.down = nn.Conv2d(c, 2 * c, 2, stride=2)
        self.gnorm = nn.GroupNorm(3, 2 * c)
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.fc2 = nn.Conv2d(2 * c, 2 * c, 1)
        self.up = nn.Conv2d(2 * c, c, 1)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        y = self.head(x)
        if self.functional:
            y = y * torch.sigmoid(self.fc1(y.mean((2, 3), keepdim=True)))
            y = F.instance_norm(y, weight=self.inorm.weight, bias=self.inorm.bias, eps=self.inorm.eps)
        else:
            y = y * torch.sigmoid(self.fc1(self.pool1(y)))
            y = self.inorm(y)
        y = channel_norm(y)
        z = self.down(y)
        if self.functional:
            z = F.group_norm(z, 3, self.gnorm.weight, self.gnorm.bias, self.gnorm.eps)
            z = z * torch.sigmoid(self.fc2(F.adaptive_avg_pool2d(z, 1)))
        else:
            z = self.gnorm(z)
            z = z * torch.sigmoid(self.fc2(self.pool2(z)))
        z = F.interpolate(self.up(z), size=y.shape[-2:])
        return x + self.tail(y + z)


def pair(seed: int = 0) -> tuple[Net, Net]:
    functional, modules = perturbed(Net(True), seed), Net(False)
    modules.load_state_dict(functional.state_dict())
    return functional.eval(), modules.eval()


@pytest.mark.parametrize("fast", [False, True])
def test_functional_sites_equal_module_conversion(fast):
    functional, modules = pair()
    by_calls, report = tlc.convert(functional, 16, rules=(), functional=True, fast=fast)
    by_modules, _ = tlc.convert(modules, 16, fast=fast)
    sites = {s.op: s for s in report.call_sites}
    assert set(sites) == {"mean", "instance_norm", "group_norm", "adaptive_avg_pool2d"}  # no channel means
    assert all(s.converted and s.module == "" for s in report.call_sites)
    assert sites["mean"].window == sites["instance_norm"].window == (24, 24)
    assert sites["group_norm"].feature_size == (8, 8) and sites["adaptive_avg_pool2d"].window == (12, 12)
    assert report.max_deviation < 1e-5

    x = image(2, 3, 37, 45)  # batch 2, odd sizes: 37x45 and 18x22 maps, windows 24 and 12
    with torch.no_grad():
        local, reference, original = by_calls(x), by_modules(x), functional(x)
    assert (local - reference).abs().max().item() < 1e-5
    assert (local - original).abs().max().item() > 1e-3  # the conversion changed something
    assert torch._C._len_torch_function_stack() == 0  # the mode is gone after the forward


def test_nafnet_with_size_dependent_padding_and_channel_means():
    """NAFNet pads by the input size (no fx tracing); its LayerNorm means over channels stay."""
    model = perturbed(tlc.archs.build("NAFNet", width=8, enc_blk_nums=[1], dec_blk_nums=[1], middle_blk_num=1)).eval()
    by_calls, report = tlc.convert(model, 16, rules=(), functional=True)
    by_modules, module_report = tlc.convert(model, 16)
    # The only functional global ops are the three SCA pools; the six LayerNorms' means are not sites.
    assert [(s.module, s.op, s.window) for s in report.call_sites] == [
        ("encoders.0.0.sca.0", "adaptive_avg_pool2d", (24, 24)),
        ("middle_blks.0.sca.0", "adaptive_avg_pool2d", (12, 12)),
        ("decoders.0.0.sca.0", "adaptive_avg_pool2d", (24, 24)),
    ]
    x = image(2, 3, 29, 43)  # padded inside to 30x44
    with torch.no_grad():
        reference = by_modules(x)  # its SCA 1x1 convs run as matrix products: same sums, other order
        assert (by_calls(x) - reference).abs().max().item() < 1e-6 * reference.abs().max().item()

    # With the module rules on, the pools are theirs: no call sites, same model as module-only.
    both, both_report = tlc.convert(model, 16, functional=True)
    assert both_report.call_sites == [] and len(both_report.converted) == len(module_report.converted) == 3
    assert installed(both) is None  # nothing to convert: no hooks left behind
    with torch.no_grad():
        assert torch.equal(both(x), by_modules(x))


def test_channel_means_only_is_no_global_op():
    class LayerNormNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return channel_norm(self.conv(x)) + x.mean(-3, keepdim=True) + x.mean(dim=[0, 1], keepdim=True)

    model = perturbed(LayerNormNet())
    with pytest.warns(UserWarning, match="no global operation found"):
        converted, report = tlc.convert(model, 16, functional=True)
    assert report.call_sites == [] and installed(converted) is None
    x = image(1, 3, 31, 33)
    assert torch.equal(converted(x), model(x))


def test_recognised_forms():
    x, x3 = torch.rand(2, 3, 5, 7), torch.rand(3, 5, 7)
    mean = ("mean", None)
    assert recognise(torch.Tensor.mean, (x, (2, 3)), {"keepdim": True}) == mean
    assert recognise(torch.Tensor.mean, (x, [-1, -2], True)) == mean
    assert recognise(torch.mean, (x,), {"dim": (3, -2), "keepdim": True, "dtype": torch.float64}) == mean
    assert recognise(torch.mean, (x, (2, 3)))[1].startswith("pooled value leaves the map layout (keepdim=False)")
    for not_spatial in ((x, 1), (x, (0, 1)), (x, -3), (x3, (1, 2)), (x3, -1)):
        assert recognise(torch.Tensor.mean, not_spatial, {"keepdim": True}) is None
    assert recognise(torch.Tensor.mean, (x, 3), {"keepdim": True}) == mean  # a strip mean, over W
    for whole in ((x, (1, 2)), (x, (0, 2, 3)), (x,)):  # over H or W with other axes: global, no local form
        assert recognise(torch.Tensor.mean, whole, {"keepdim": True})[1].startswith("pooled value leaves the map layout")
    assert recognise(F.adaptive_avg_pool2d, (x, (1, 1))) == ("adaptive_avg_pool2d", None)
    assert "fixed 2x2 grid" in recognise(F.adaptive_avg_pool2d, (x, 2))[1]  # bins that grow with the map
    assert recognise(F.adaptive_avg_pool2d, (x3, 1)) is None
    assert recognise(F.avg_pool2d, (x, (5, 7))) == ("avg_pool2d", None)
    assert recognise(F.avg_pool2d, (x, 5)) is None  # a local pooling already
    assert recognise(F.avg_pool2d, (x, (5, 7), 1)) is None
    assert recognise(F.instance_norm, (x,)) == ("instance_norm", None)
    assert recognise(F.instance_norm, (x, torch.zeros(3), torch.ones(3)), {"use_input_stats": False}) is None
    assert "running statistics" in recognise(F.instance_norm, (x, torch.zeros(3), torch.ones(3)))[1]
    assert recognise(F.group_norm, (x, 1)) == ("group_norm", None)
    assert recognise(torch.Tensor.var, (x, (2, 3), False, True)) == ("var", None)
    assert recognise(torch.std, (x,), {"dim": (-1, -2), "keepdim": True, "correction": 0}) == ("std", None)
    assert "over all H*W positions together with other axes" in recognise(torch.Tensor.var, (x, False))[1]
    assert recognise(F.adaptive_max_pool2d_with_indices, (x, 1)) == ("adaptive_max_pool2d", None)
    assert recognise(torch.amax, (x, (2, 3), True)) == ("amax", None)
    assert "returns indices" in recognise(F.adaptive_max_pool2d, (x, 1, True))[1]
    assert recognise(torch.Tensor.mean, (torch.zeros(2, 3, 4, 4, dtype=torch.long), (2, 3))) is None


class Contrast(nn.Module):
    """Contrast-aware attention style: std and var over H, W; a pooling whose kernel is the map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        s = y.std((2, 3), keepdim=True)
        v = torch.var(y, dim=(-1, -2), keepdim=True, correction=0)
        p = F.avg_pool2d(y, y.shape[-2:])
        return torch.stack([s.expand_as(y), v.expand_as(y), p.expand_as(y)])


def test_var_std_and_full_kernel_avg_pool_equal_brute_force():
    model = perturbed(Contrast()).double()
    converted, report = tlc.convert(model, 4, functional=True)  # window 6x6 at full resolution
    assert [(s.op, s.window) for s in report.call_sites] == [("std", (6, 6)), ("var", (6, 6)), ("avg_pool2d", (6, 6))]
    x = image(2, 2, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        s, v, p = converted(x)
        y = model.conv(x)
    flat = lambda t: t.flatten(2)  # noqa: E731
    assert torch.allclose(s, brute_force(y, (6, 6), lambda t: flat(t).std(-1)), atol=1e-12)
    assert torch.allclose(v, brute_force(y, (6, 6), lambda t: flat(t).var(-1, correction=0)), atol=1e-12)
    assert torch.allclose(p, brute_force(y, (6, 6), lambda t: flat(t).mean(-1)), atol=1e-12)


def test_local_var_is_exact_for_offset_inputs_and_global_when_covering():
    x = (1000 + image(1, 2, 40, 30, dtype=torch.float64)).float()  # variance 1/12 under an offset of 1000
    ref = brute_force(x.double(), (7, 5), lambda t: t.flatten(2).var(-1))
    assert (local_var(x, (7, 5)).double() - ref).abs().max().item() < 1e-8  # float32 rounding of ~0.08
    x = x.double()
    whole = local_var(x, (99, 99), correction=0)
    assert torch.allclose(whole, x.var((2, 3), keepdim=True, correction=0).expand_as(x), atol=1e-12)


class LeftGlobal(nn.Module):
    """A pooled value reshaped for a Linear layer, global maxima, a mean that becomes local, and a
    pooled value read into Python (no local form)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.conv(x)
        flat = self.fc(y.mean((2, 3)))[:, :, None, None]  # keepdim=False, then a Linear layer
        peak = F.adaptive_max_pool2d(y, 1) + y.amax((2, 3), keepdim=True)
        gain = float(y.sum((2, 3)).abs().mean()) / (y.shape[2] * y.shape[3])  # read into Python
        return y * torch.sigmoid(flat + peak) + y.mean((2, 3), keepdim=True) * gain


def test_pooled_values_reshaped_become_local_and_values_read_into_python_stay_global():
    model = perturbed(LeftGlobal())
    converted, report = tlc.convert(model, 16, functional=True)
    kept = {s.op: s.reason for s in report.call_sites if not s.converted}
    assert list(kept) == ["sum"] and kept["sum"].startswith("pooled value leaves the map layout")
    assert [s.op for s in report.call_sites if s.converted] == ["mean", "adaptive_max_pool2d", "amax", "mean"]
    text = str(report)
    assert "run-time call sites: 4 converted, 1 left global" in text and "pooled value" in text

    x = image(2, 3, 33, 35)
    with torch.no_grad():
        y = converted.conv(x)
        peak = brute_force(y, (24, 24), lambda t: t.flatten(2).amax(-1))
        mean = brute_force(y, (24, 24), lambda t: t.flatten(2).mean(-1))
        flat = model.fc(mean.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # the Linear layer at every pixel
        gain = float(y.sum((2, 3)).abs().mean()) / (33 * 35)
        expected = y * torch.sigmoid(flat + 2 * peak) + mean * gain
        assert (converted(x) - expected).abs().max().item() < 1e-5


class Pool(nn.Module):
    def forward(self, t):
        return t.mean((2, 3), keepdim=True)


def spatial_mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean((-2, -1), keepdim=True)


class Levels(nn.Module):
    """A pooling module shared by two levels, and a helper called at two levels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.shared = Pool()

    def forward(self, x):
        y = self.conv(x)
        z = y[:, :, ::2, ::2]
        shared = self.shared(y) + self.shared(z).mean()
        helper = [spatial_mean(t) for t in (y, z)]
        return y * shared + helper[0] + F.interpolate(helper[1] * z, size=y.shape[-2:])


def test_sites_are_told_apart_by_occurrence_and_shared_modules_are_reported():
    model = perturbed(Levels())
    converted, report = tlc.convert(model, 16, functional=True)
    by_module = {}
    for s in report.call_sites:
        by_module.setdefault(s.module, []).append(s)
    [shared] = by_module["shared"]
    assert not shared.converted and "several input sizes (CxHxW: 3x8x8, 3x16x16)" in shared.reason
    helper = by_module[""]
    assert [(s.occurrence, s.window, s.function) for s in helper if s.location.startswith("test_functional")] == [
        (0, (24, 24), "spatial_mean"),
        (1, (12, 12), "spatial_mean"),
    ]
    assert "#1" in str(report)
    x = image(2, 3, 41, 39)
    with torch.no_grad():
        y = model.conv(x)
        z = y[:, :, ::2, ::2]
        shared_ref = y.mean((2, 3), keepdim=True) + z.mean((2, 3), keepdim=True).mean()
        expected = y * shared_ref + tlc.local_mean(y, 24) + F.interpolate(tlc.local_mean(z, 12) * z, size=y.shape[-2:])
        assert (converted(x) - expected).abs().max().item() < 1e-5


def test_functional_false_leaves_calls_global():
    functional, _ = pair()
    converted, report = tlc.convert(functional, 16, functional=False)  # the idle nn modules are matched, never called
    assert report.call_sites == [] and not report.functional and "call sites" not in str(report)
    assert installed(converted) is None
    x = image(1, 3, 35, 37)
    with torch.no_grad():
        assert torch.equal(converted(x), functional(x))


class Flattening(nn.Module):
    """Squeeze-excitation with a Linear: the pooled map is flattened, so it cannot be full size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.conv(x)
        se = self.fc(y.mean((2, 3), keepdim=True).flatten(1))[:, :, None, None]
        return y * torch.sigmoid(se) + F.adaptive_avg_pool2d(y, 1)


def test_a_site_whose_full_size_local_result_breaks_the_model_becomes_a_pooled_value():
    model = perturbed(Flattening())
    converted, report = tlc.convert(model, 16, functional=True)
    mean, pool = report.call_sites
    assert mean.converted and pool.converted and report.max_deviation < 1e-5
    x = image(2, 3, 30, 26)
    with torch.no_grad():
        y = model.conv(x)
        local = brute_force(y, (24, 24), lambda t: t.flatten(2).mean(-1))
        se = model.fc(local.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # the Linear at every pixel's window
        expected = y * torch.sigmoid(se) + local
        assert (converted(x) - expected).abs().max().item() < 1e-5


class Raising(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.inner = nn.Sequential(nn.Conv2d(3, 3, 1), Pool())
        self.fail = False

    def forward(self, x):
        y = self.conv(x)
        y = y * self.inner(y)
        if self.fail:
            raise ValueError("boom")
        if x.shape[-1] > 20:  # control flow that calibration (at 16) never took
            y = y + F.instance_norm(y)
        return y


def test_exceptions_do_not_leak_the_mode_and_unseen_sites_stay_global():
    model = perturbed(Raising())
    converted, report = tlc.convert(model, 16, functional=True)
    assert [(s.module, s.window) for s in report.call_sites] == [("inner.1", (24, 24))]
    x = image(1, 3, 31, 30)
    with torch.no_grad():
        y = model.conv(x)
        expected = y * tlc.local_mean(model.inner[0](y), 24)
        expected = expected + F.instance_norm(expected)
        with pytest.warns(UserWarning, match="instance_norm at .* was not met at calibration; it stays global"):
            first = converted(x)
        assert (first - expected).abs().max().item() < 1e-5
        converted.fail = True
        with pytest.raises(ValueError, match="boom"):
            converted(x)
        assert torch._C._len_torch_function_stack() == 0
        assert installed(converted)._stack() == []
        # A submodule called on its own runs converted too; outside the model torch is untouched.
        assert torch.equal(converted.inner[1](y), tlc.local_mean(y, 24))
        assert y.mean((2, 3), keepdim=True).shape == (1, 3, 1, 1)
        converted.fail = False
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once per site, not on every forward
            assert torch.equal(converted(x), first)


def test_deepcopy_pickle_and_state_dict_keep_the_conversion():
    functional, _ = pair()
    converted, _ = tlc.convert(functional, 16, rules=(), functional=True)
    assert list(converted.state_dict()) == list(functional.state_dict())
    x = image(1, 3, 40, 36)
    with torch.no_grad():
        expected = converted(x)
        twin = copy.deepcopy(converted)
        assert installed(twin) is not installed(converted) and isinstance(installed(twin), CallSiteConverter)
        assert torch.equal(twin(x), expected)
        buffer = io.BytesIO()
        torch.save(converted, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert torch.equal(loaded(x), expected)
        # Converting again replaces the earlier functional conversion instead of stacking a second.
        again, report = tlc.convert(converted, 16, rules=(), functional=True)
        assert sum(1 for h in again._forward_pre_hooks.values() if type(h).__name__ == "Enter") == 1
        assert len(report.call_sites) == 4 and torch.equal(again(x), expected)
    assert installed(functional) is None  # the input model is untouched


def test_gradients_flow_through_local_sites():
    functional, _ = pair(seed=3)
    converted, _ = tlc.convert(functional.double(), 4, rules=(), functional=True)  # windows 6 and 3
    x = image(1, 3, 7, 9, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(converted, (x,), eps=1e-6, atol=1e-6)
    converted(x).square().sum().backward()
    grads = [p.grad for p in converted.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_module_rules_come_first_and_their_skips_stay_global():
    class Running(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = nn.InstanceNorm2d(4, track_running_stats=True)

        def forward(self, x):
            return self.norm(self.conv(x))

    model = perturbed(Running()).eval()
    converted, report = tlc.convert(model, 16, functional=True)
    assert [s.path for s in report.skipped] == ["norm"] and report.call_sites == []
    # Without the module rules the running-stats norm is an affine map per pixel: not a site either.
    with pytest.warns(UserWarning, match="no global operation found"):
        _, report = tlc.convert(model, 16, rules=(), functional=True)
    assert report.call_sites == []


def test_report_lists_windows_and_serialises():
    functional, _ = pair()
    _, report = tlc.convert(functional, 16, rules=(), functional=True)
    text = str(report)
    assert "run-time call sites: 4 converted, 0 left global" in text
    assert "(model) test_functional.py:" in text and "adaptive_avg_pool2d  8x8" in text and "12x12" in text
    data = report.to_dict()
    assert data["functional"] is True
    assert data["call_sites"][0]["op"] == "mean" and data["call_sites"][0]["window"] == (24, 24)


def test_a_mode_the_model_leaves_open_survives_and_ours_is_removed():
    class Counting(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.mode = None

        def forward(self, x):
            y = self.conv(x)
            if self.mode is not None:
                self.mode.__enter__()  # entered, never left: still active after the forward
            return y * y.mean((2, 3), keepdim=True)

    converted, _ = tlc.convert(perturbed(Leaky()), 16, functional=True)
    converted.mode = mode = Counting()
    x = image(1, 3, 30, 30)
    try:
        with torch.no_grad():
            out = converted(x)
        assert torch._C._len_torch_function_stack() == 1 and torch._C._get_function_stack_at(0) is mode
        assert mode.calls > 0
    finally:
        mode.__exit__(None, None, None)
    y = converted.conv(x)
    assert torch._C._len_torch_function_stack() == 0
    assert (out - y * tlc.local_mean(y, 24)).abs().max().item() < 1e-5


def test_calls_inside_torch_modules_keep_their_site_whoever_runs_the_model():
    """A pooling module no rule matched, in a model of torch modules only: its call site is named
    the same at calibration (run by tlc) and when the caller runs the converted model."""
    model = perturbed(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1)))
    converted, report = tlc.convert(model, 16, rules=[])
    [site] = report.call_sites
    assert (site.module, site.location, site.converted) == ("1", "torch.nn", True)
    x = image(1, 3, 30, 26)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "was not met at calibration" would be a warning
        out = converted(x)
    with torch.no_grad():
        expected = brute_force(model[0](x), (24, 24), lambda t: t.mean(-1))
    assert (out - expected).abs().max().item() < 1e-5


def test_torch_calls_inside_tlc_local_ops_are_not_sites():
    """A model already holding tlc's local ops (a user's module calling tlc.local_mean, a converted
    model converted again): the torch calls inside those ops are no global ops of the model."""

    class UsesLocalMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y - tlc.local_mean(y, 24) + tlc.ops.local_max(y, 24)

    with pytest.warns(UserWarning, match="no global operation found") as caught:
        converted, report = tlc.convert(perturbed(UsesLocalMean()), 16, rules=[])
    assert report.call_sites == [] and len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted(image(1, 3, 40, 36))


def test_the_hooks_read_module_inputs_unseen_by_the_mode(monkeypatch):
    """The module hooks read each module's input size with torch functions off: through the mode,
    every ``dim()`` and ``shape`` there was a call it looked at (115 of 196 per forward of a
    16-block network). The mode sees the forward's own calls only: here one ``y.shape``."""
    from tlc.convert.call_sites.hooks import LocalCalls

    functional, _ = pair()
    converted, _ = tlc.convert(functional, 16, rules=(), functional=True)
    seen = []
    looks = LocalCalls.__torch_function__

    def counting(self, func, types, args=(), kwargs=None):
        seen.append(getattr(func, "__name__", ""))
        return looks(self, func, types, args, kwargs)

    monkeypatch.setattr(LocalCalls, "__torch_function__", counting)
    with torch.no_grad():
        converted(image(1, 3, 37, 45))
    assert "dim" not in seen
    assert seen.count("__get__") == 1  # y.shape in Net.forward
    assert "conv2d" in seen  # the mode did run


def test_the_hooks_show_in_repr_and_go_with_them():
    model = perturbed(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Pool()))
    converted, _ = tlc.convert(model, 16, rules=[])
    assert "1 run-time call site(s) made local by forward hooks" in repr(converted)
    assert "forward hooks" in repr(copy.deepcopy(converted)) and "forward hooks" not in repr(model)
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    buffer.seek(0)
    assert "forward hooks" in repr(torch.load(buffer, weights_only=False))
    tlc.functional.remove_call_site_conversion(converted)
    assert "forward hooks" not in repr(converted) and installed(converted) is None


def function_mode_depths(model: nn.Module, module: nn.Module, sizes: list[tuple[int, int]]) -> list[int]:
    """How many torch function modes were active in ``module``'s forward, per input size (batch 2)."""
    depths = []
    handle = module.register_forward_pre_hook(lambda m, args: depths.append(torch._C._len_torch_function_stack()))
    try:
        with torch.no_grad():
            for size in sizes:
                model(image(2, 3, *size))
    finally:
        handle.remove()
    return depths


def test_inputs_no_larger_than_the_calibration_input_run_as_the_original():
    """Every window covers its map at the training size: there, and below it, local equals global,
    so the converted model runs as the original (no function mode, the same bits). Above it the
    local forms run, even where the windows still cover (and agree with the original)."""
    functional, _ = pair()
    converted, report = tlc.convert(functional, 16, rules=(), functional=True)
    assert report.max_deviation < 1e-5 and all(s.converted for s in report.call_sites)
    small = [(16, 16), (9, 13), (16, 2)]
    above = [(17, 16), (16, 20), (23, 17), (37, 45)]
    assert function_mode_depths(converted, converted.tail, small + above) == [0] * 3 + [1] * 4
    with torch.no_grad():
        for size in small:
            x = image(2, 3, *size)
            assert torch.equal(converted(x), functional(x)), size
        for size in above[:3]:  # windows 24 and 12 still cover the 23x17 and 12x9 maps
            x = image(2, 3, *size)
            assert (converted(x) - functional(x)).abs().max().item() < 1e-5, size
        x = image(2, 3, *above[3])
        assert (converted(x) - functional(x)).abs().max().item() > 1e-3
    assert torch._C._len_torch_function_stack() == 0


def test_inputs_whose_windows_cover_every_map_give_the_originals_bits_then_run_as_it():
    """Above the calibration input, while every window still covers its map (24 and 12 here),
    each converted site's global call is its local form: the original's bits at once, and a call
    alike (the same shapes) runs as the original from then on. Larger maps run locally, before
    and after."""
    functional, _ = pair()
    converted, _ = tlc.convert(functional, 16, rules=(), functional=True)
    covered, local = [(17, 16), (16, 20), (23, 17), (24, 24)], (37, 45)
    assert function_mode_depths(converted, converted.tail, [*covered, local, *covered, local]) == [1] * 5 + [0] * 4 + [1]
    with torch.no_grad():
        for size in covered:
            x = image(2, 3, *size)
            assert torch.equal(converted(x), functional(x)), size
            x = image(1, 3, *size)  # a new batch size: a call not seen yet, through the mode
            assert torch.equal(converted(x), functional(x)), size
        x = image(2, 3, *local)
        expected = tlc.convert(functional, 16, rules=(), functional=True)[0](x)
        assert torch.equal(converted(x), expected)
        assert (expected - functional(x)).abs().max().item() > 1e-3


class SummedInParts(nn.Module):
    """IMDN's hand-written mean: a sum over W, then over H, divided by H * W, as a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.head(x)
        mean = y.sum(3, keepdim=True).sum(2, keepdim=True) / (y.size(2) * y.size(3))
        return y * torch.sigmoid(self.fc(mean))


def test_sums_in_parts_over_a_covered_map_are_the_originals_and_local_beyond():
    model = perturbed(SummedInParts()).eval()
    converted, report = tlc.convert(model, 16, rules=[])
    assert [s.window for s in report.call_sites] == [(24, 24), (24, 1)]
    with torch.no_grad():
        for size in [(20, 23), (20, 23), (24, 17)]:
            x = image(2, 3, *size)
            assert torch.equal(converted(x), model(x)), size
        x = image(2, 3, 37, 30)
        y = model.head(x)
        expected = y * torch.sigmoid(model.fc(brute_force(y, (24, 24), lambda t: t.mean(-1))))
        for _ in range(2):
            torch.testing.assert_close(converted(x), expected, rtol=0, atol=1e-5)
        assert (expected - model(x)).abs().max().item() > 1e-3


class Upscaling(nn.Module):
    """A gate after an optional 2x upsampling chosen by a keyword argument."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = MeanGate()

    def forward(self, x, upscale=False):
        y = self.head(x)
        return self.gate(F.interpolate(y, scale_factor=2) if upscale else y)


def test_keyword_arguments_and_failed_forwards_never_make_a_call_run_as_the_original():
    model = perturbed(Upscaling()).eval()
    converted, report = tlc.convert(model, 16, rules=[])
    assert [s.window for s in report.call_sites] == [(24, 24)]
    x = image(1, 3, 20, 20)
    with torch.no_grad():
        for _ in range(2):  # 20x20: covered, then run as the original
            assert torch.equal(converted(x), model(x))
        big = converted(x, upscale=True)  # 40x40 maps: local
        assert (big - model(x, upscale=True)).abs().max().item() > 1e-3
        gate = model.gate
        y = F.interpolate(model.head(x), scale_factor=2)
        expected = y * torch.sigmoid(gate.fc(brute_force(y, (24, 24), lambda t: t.mean(-1))))
        torch.testing.assert_close(big, expected, rtol=0, atol=1e-5)
        # A forward failing before any site runs leaves nothing behind for its call.
        failing = converted.head.register_forward_pre_hook(lambda m, args: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            converted(image(2, 3, 40, 40))
        failing.remove()
        assert function_mode_depths(converted, converted.gate, [(40, 40)])[0] == 1


def test_windows_smaller_than_the_map_run_locally_at_every_size():
    functional, modules = pair()
    with pytest.warns(UserWarning, match="differs from the original"):  # as it should, windows < maps
        converted, report = tlc.convert(functional, 16, base_size=12, rules=(), functional=True)
    with pytest.warns(UserWarning, match="differs from the original"):
        by_modules, _ = tlc.convert(modules, 16, base_size=12)  # the module rules' local ops
    assert {s.window for s in report.call_sites} == {(12, 12), (6, 6)}
    assert function_mode_depths(converted, converted.tail, [(16, 16), (9, 13)]) == [1, 1]
    x = image(2, 3, 16, 16)
    with torch.no_grad():
        local, expected = converted(x), by_modules(x)
    assert (local - expected).abs().max().item() < 1e-5
    assert (local - functional(x)).abs().max().item() > 1e-3


def test_a_traced_forward_takes_the_local_forms_at_any_size(monkeypatch):
    """A graph traced at a small size must still hold at larger ones: no shortcut while tracing."""
    functional, _ = pair()
    converted, _ = tlc.convert(functional, 16, rules=(), functional=True)
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert function_mode_depths(converted, converted.tail, [(16, 16)]) == [1]


class MeanGate(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def test_a_part_of_the_model_run_alone_never_takes_the_shortcut():
    """The gate sees 8x8 maps when the model runs at the training size 16 (window 12). Run alone on
    a 14x14 map, smaller than the model's calibration input but larger than its window, it must
    pool locally."""
    model = perturbed(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), MeanGate()))
    converted, report = tlc.convert(model, 16, rules=[])
    assert [(s.feature_size, s.window) for s in report.call_sites] == [((8, 8), (12, 12))]
    x = image(2, 4, 14, 14)
    with torch.no_grad():
        local = converted[1](x)
        gate = model[1]
        expected = x * torch.sigmoid(gate.fc(brute_force(x, (12, 12), lambda t: t.mean(-1))))
    assert (local - expected).abs().max().item() < 1e-5
    assert (local - gate(x)).abs().max().item() > 1e-4


def test_a_forward_that_raises_inside_leaves_no_shortcut_behind():
    functional, _ = pair()
    converted, _ = tlc.convert(functional, 16, rules=(), functional=True)
    failing = converted.down.register_forward_pre_hook(lambda m, args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        converted(image(1, 3, 16, 16))  # taken as the original, until it raises
    failing.remove()
    assert function_mode_depths(converted, converted.tail, [(37, 45), (16, 16)]) == [1, 0]
