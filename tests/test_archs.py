"""The five networks: released key layouts, any input size, batches, plain and converted."""

from __future__ import annotations

import json

import pytest
import torch

import tlc
from tlc.archs import build
from tlc.run import final_output

from .conftest import CONFORMANCE


def released() -> dict:
    path = CONFORMANCE / "released_keys.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("name", sorted(released()))
def test_released_config_has_exact_keys_shapes_and_count(conformance, name):
    entry = json.loads((conformance / "released_keys.json").read_text())[name]
    with torch.device("meta"):
        model = build(entry["arch"], **entry["config"])
    state = model.state_dict()
    assert list(state) == list(entry["keys"])
    assert {k: list(v.shape) for k, v in state.items()} == entry["keys"]
    assert sum(p.numel() for p in model.parameters()) == entry["n_params"]


def test_registry_matches_released_configs(conformance):
    entries = json.loads((conformance / "released_keys.json").read_text())
    by_name = {e.name: e for e in tlc.models.list()}
    for name, entry in entries.items():
        mine = by_name[name.lower()]
        assert (mine.arch, mine.config, mine.checkpoint_key) == (entry["arch"], entry["config"], entry["checkpoint_key"])


SMALL = {
    "NAFNet": dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1]),
    "Baseline": dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1], dw_expand=2),
    "HINet": dict(wf=8, depth=3, hin_position_left=0, hin_position_right=2),
    "MPRNet": dict(n_feat=12, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1, reduction=4),
    "Restormer": dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4]),
}


def small_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(arch, **SMALL[arch]).eval()
    with torch.no_grad():  # a fresh NAFNet block is the identity: perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_any_size_and_batch_plain_and_converted(arch):
    model = small_model(arch)
    local, report = tlc.convert(model, train_size=32)
    scale = max(o.abs().max().item() for o in outputs(model, torch.rand(1, 3, 32, 32)))
    assert report.converted and report.max_deviation <= 1e-5 * max(1.0, scale)  # float32 rounding through deep nets
    for shape in [(1, 3, 37, 53), (2, 3, 50, 29), (1, 3, 1, 1)]:
        x = torch.rand(shape)
        for net in (model, local):
            out = outputs(net, x)
            assert all(o.shape == shape and torch.isfinite(o).all() for o in out)
            if shape[0] > 1:
                single = outputs(net, x[1:2])
                for a, b in zip(out, single):
                    torch.testing.assert_close(a[1:2], b, rtol=0, atol=1e-5 * max(1.0, scale))
    x = torch.rand(1, 3, 96, 80)
    assert (outputs(local, x)[-1] - outputs(model, x)[-1]).abs().max() > 1e-4


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_training_size_is_honoured(arch):
    # The reference's HINet/MPRNet converters always assume 256; tlc uses the size it is given.
    model = small_model(arch)
    _, report64 = tlc.convert(model, train_size=64, base_size=96)
    _, report32 = tlc.convert(model, train_size=32, base_size=48)
    first64, first32 = report64.converted[0], report32.converted[0]
    assert first64.path == first32.path
    assert first64.feature_size == tuple(2 * s for s in first32.feature_size)
    assert first64.window == tuple(2 * s for s in first32.window)


def test_mprnet_windows_are_anisotropic():
    _, report = tlc.convert(small_model("MPRNet"), train_size=64, base_size=96)
    windows = {op.window for op in report.converted}
    assert (48, 96) in windows and (24, 48) in windows  # stage 2 works on 32x64 halves


def test_restormer_attention_is_converted_by_default():
    local, report = tlc.convert(small_model("Restormer"), train_size=32)
    assert {op.rule for op in report.converted} == {"transposed-attention"}
    assert "window=(48, 48)" in repr(local.encoder_level1[0].attn)


def test_build_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown architecture"):
        build("ResNet")
    with pytest.raises(ValueError, match="widht"):
        build("NAFNet", widht=3)


@pytest.mark.parametrize("arch, config", [("HINet", dict(wf=8, depth=3)), ("UNet", dict(width=8, depth=2, norm="instance"))])
def test_padding_mode_is_configurable_and_keeps_keys(arch, config):
    torch.manual_seed(0)
    zeros = tlc.archs.build(arch, **config).eval()
    reflect = tlc.archs.build(arch, padding_mode="reflect", **config).eval()
    reflect.load_state_dict(zeros.state_dict(), strict=True)
    padded = [m for m in reflect.modules() if isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0)]
    assert padded and all(m.padding_mode == "reflect" for m in padded)
    x = torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        a, b = (final_output(m(x)) for m in (zeros, reflect))
    assert a.shape == b.shape == x.shape and (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="padding_mode"):
        tlc.archs.build(arch, padding_mode="circular-ish", **config)
