"""Reading checkpoint files safely, unwrapping containers, detecting architectures, loading models.

Every file is made here, in tmp_path, from small randomised models; full-size detection uses
meta tensors shaped like the released checkpoints (../shared/conformance/released_keys.json).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shlex

import pytest
import torch
from safetensors.torch import save_file

from tlc import archs
from tlc.zoo import NOT_IN_WEIGHTS, CheckpointError, choose_model, detect, load_model, read_state_dict, registry

NAFNET_SMALL = {"width": 8, "enc_blk_nums": [1, 2], "middle_blk_num": 2, "dec_blk_nums": [1, 1]}

#: Small configs with non-default settings, each exactly what detect() should return.
SMALL = {
    "nafnet": ("NAFNet", {"img_channel": 3, **NAFNET_SMALL}),
    "nafnet-empty-levels": (
        "NAFNet", {"img_channel": 1, "width": 4, "middle_blk_num": 0, "enc_blk_nums": [0, 1], "dec_blk_nums": [1, 0]},
    ),
    "baseline": (
        "Baseline",
        {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [2, 1],
         "dw_expand": 2, "ffn_expand": 3},
    ),
    "hinet-depth3": ("HINet", {"in_chn": 3, "wf": 8, "depth": 3, "hin_position_left": 1, "hin_position_right": 2}),
    "hinet-depth4": ("HINet", {"in_chn": 1, "wf": 4, "depth": 4, "hin_position_left": 0, "hin_position_right": 1}),
    "hinet-no-hin": ("HINet", {"in_chn": 3, "wf": 4, "depth": 3, "hin_position_left": 0, "hin_position_right": -1}),
    "mprnet-bias": (
        "MPRNet",
        {"in_c": 3, "out_c": 3, "n_feat": 16, "scale_unetfeats": 8, "scale_orsnetfeats": 8, "num_cab": 2,
         "kernel_size": 3, "reduction": 4, "bias": True},
    ),
    "mprnet-k5": (
        "MPRNet",
        {"in_c": 3, "out_c": 3, "n_feat": 8, "scale_unetfeats": 4, "scale_orsnetfeats": 4, "num_cab": 1,
         "kernel_size": 5, "reduction": 2, "bias": False},
    ),
    "restormer-biasfree": (
        "Restormer",
        {"inp_channels": 3, "out_channels": 3, "dim": 8, "num_blocks": [1, 2, 1, 1], "num_refinement_blocks": 2,
         "heads": [1, 2, 2, 4], "ffn_expansion_factor": 2.1, "bias": True, "LayerNorm_type": "BiasFree",
         "dual_pixel_task": False},
    ),
    "restormer-dual-pixel": (
        "Restormer",
        {"inp_channels": 6, "out_channels": 3, "dim": 8, "num_blocks": [1, 0, 1, 1], "num_refinement_blocks": 1,
         "heads": [2, 2, 4, 8], "ffn_expansion_factor": 2.66, "bias": False, "LayerNorm_type": "WithBias",
         "dual_pixel_task": True},
    ),
}


def randomised(arch: str, config: dict, seed: int = 0) -> torch.nn.Module:
    """A small model whose parameters are all moved off their initial values (NAFNet's beta/gamma
    start at zero and would hide mistakes)."""
    torch.manual_seed(seed)
    model = archs.build(arch, **config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def outputs(model: torch.nn.Module, channels: int = 3) -> list[torch.Tensor]:
    """The model's output(s) on a fixed input, as a list (HINet and MPRNet return lists)."""
    x = torch.rand(1, channels, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def assert_same_state(loaded: dict, saved: dict) -> None:
    assert sorted(loaded) == sorted(saved)
    for k, v in saved.items():
        assert torch.equal(loaded[k], v), k


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module, channels: int = 3) -> None:
    for x, y in zip(outputs(a, channels), outputs(b, channels), strict=True):
        assert torch.equal(x, y)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, whose synchronisation a busy machine makes slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def nafnet() -> torch.nn.Module:
    return randomised("NAFNet", NAFNET_SMALL)


# --------------------------------------------------------------------------------------------
# Containers: save -> load round trips


def _containers(sd: dict, other: dict) -> dict[str, object]:
    return {
        "bare.pth": sd,
        "params.pth": {"params": sd},
        "params_ema.pth": {"params_ema": sd, "params": other},
        "state_dict.pth": {"epoch": 3, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}},
        "model.pth": {"model": sd},
        "nested.ckpt": {"state_dict": {"model": sd}},
        "module.pt": {f"module.{k}": v for k, v in sd.items()},
    }


@pytest.mark.parametrize("name", [*_containers({}, {}), "file.safetensors", "safetensors-inside.pth", "legacy.pth"])
def test_round_trip_each_container(tmp_path, nafnet, name):
    sd = nafnet.state_dict()
    other = randomised("NAFNet", NAFNET_SMALL, seed=1).state_dict()
    path = tmp_path / name
    if "safetensors" in name:
        save_file(sd, path)  # recognised by content whatever the name
    elif name == "legacy.pth":
        torch.save({"params": sd}, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(_containers(sd, other)[name], path)

    assert_same_state(read_state_dict(path), sd)
    detected = load_model(path)
    explicit = load_model(path, "NAFNet", **NAFNET_SMALL)
    assert not detected.training and not explicit.training
    assert_same_outputs(detected, nafnet)
    assert_same_outputs(explicit, nafnet)


def test_key_forces_one_container_entry(tmp_path, nafnet):
    sd = nafnet.state_dict()
    other = randomised("NAFNet", NAFNET_SMALL, seed=1).state_dict()
    path = tmp_path / "both.pth"
    torch.save({"params_ema": sd, "params": other}, path)
    assert_same_state(read_state_dict(path, key="params"), other)
    with pytest.raises(CheckpointError, match=r"no 'net' entry.*'params_ema'.*'params'"):
        read_state_dict(path, key="net")


def test_half_precision_checkpoint_loads_as_float32(tmp_path, nafnet):
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in nafnet.state_dict().items()}, path)
    model = load_model(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize("case", list(SMALL))
def test_detect_small_configs(tmp_path, case):
    arch, config = SMALL[case]
    model = randomised(arch, config)
    assert detect(model.state_dict()) == (arch, config)

    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(path)
    assert type(loaded) is type(model)
    channels = config.get("img_channel", config.get("in_chn", config.get("in_c", config.get("inp_channels"))))
    assert_same_outputs(loaded, model, channels)


def test_detect_gives_an_equivalent_ffn_factor_where_several_fit(tmp_path):
    # With dim 8, factors 1.875 up to 1.89 all give hidden sizes 15, 30, 60, 120: the shortest
    # decimal among them comes back, and builds the same network.
    config = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "ffn_expansion_factor": 1.875}
    model = randomised("Restormer", config)
    assert detect(model.state_dict())[1]["ffn_expansion_factor"] == 1.88
    torch.save(model.state_dict(), tmp_path / "restormer.pth")
    assert_same_outputs(load_model(tmp_path / "restormer.pth"), model)


def _released() -> dict:
    from .conftest import CONFORMANCE

    path = CONFORMANCE / "released_keys.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _meta_state_dict(keys: dict) -> dict:
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def _with_defaults(arch: str, config: dict) -> dict:
    params = inspect.signature(archs.ARCHITECTURES[arch].__init__).parameters
    filled = {name: p.default for name, p in params.items() if name != "self"}
    filled.update(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in filled.items()}


@pytest.mark.parametrize("name", list(_released()))
def test_detect_released_checkpoints_full_size(conformance, name):
    released = json.loads((conformance / "released_keys.json").read_text())[name]
    arch, config = detect(_meta_state_dict(released["keys"]))
    assert arch == released["arch"]
    expected = _with_defaults(arch, released["config"])
    assert {k: expected[k] for k in config} == config
    assert set(expected) - set(config) <= set(NOT_IN_WEIGHTS.get(arch, ()))
    with torch.device("meta"):
        built = archs.build(arch, **config).state_dict()
    assert {k: list(v.shape) for k, v in built.items()} == released["keys"]
    # The registry entry of the same name says the same.
    entry = registry.get(name)
    assert entry.arch == arch and entry.checkpoint_key == released["checkpoint_key"]
    assert _with_defaults(arch, entry.config) == expected


def test_every_registry_entry_has_released_keys(conformance):
    released = {k.lower() for k in json.loads((conformance / "released_keys.json").read_text())}
    downloaded = {entry.name for entry in registry.list() if entry.bundled_weights is None}
    assert downloaded <= released


def test_unknown_state_dict_is_described():
    resnet = {
        "conv1.weight": torch.empty(64, 3, 7, 7),
        "bn1.weight": torch.empty(64),
        "bn1.bias": torch.empty(64),
        "layer1.0.conv1.weight": torch.empty(64, 64, 3, 3),
        "fc.weight": torch.empty(1000, 512),
        "fc.bias": torch.empty(1000),
    }
    with pytest.raises(CheckpointError, match="not a state_dict of a known architecture") as info:
        detect(resnet)
    message = str(info.value)
    assert "6 tensors" in message and "conv1, bn1, layer1, fc" in message and "conv1.weight (64, 3, 7, 7)" in message


def test_detect_reports_what_no_config_explains(nafnet):
    sd = nafnet.state_dict()
    del sd["encoders.0.0.conv3.weight"]
    with pytest.raises(CheckpointError, match=r"(?s)looks like a NAFNet.*1 missing.*encoders\.0\.0\.conv3\.weight"):
        detect(sd)


# --------------------------------------------------------------------------------------------
# Registry


@pytest.fixture
def tiny_entry(monkeypatch) -> registry.ModelEntry:
    entry = dataclasses.replace(
        registry.get("nafnet-gopro-width32"), name="small-nafnet-test", config=NAFNET_SMALL, checkpoint_key="state_dict",
        url="https://example.invalid/tiny.pth",
    )
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, entry))
    return entry


def test_registry_name_with_weights(tmp_path, tiny_entry, nafnet):
    path = tmp_path / "tiny.pth"
    other = randomised("NAFNet", NAFNET_SMALL, seed=1).state_dict()
    # The entry's checkpoint_key wins over the general preference for params.
    torch.save({"params": other, "state_dict": nafnet.state_dict()}, path)
    model = load_model("small-nafnet-test", weights=path)
    assert not model.training
    assert_same_outputs(model, nafnet)


def test_registry_name_without_weights_says_where_to_download(tiny_entry):
    with pytest.raises(CheckpointError, match="https://example.invalid/tiny.pth") as info:
        load_model("small-nafnet-test")
    assert "non-commercial" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"megvii-research/NAFNet"):
        load_model("nafnet-gopro-width32")


def test_choose_model_sizes_from_the_arguments_then_the_entry_then_the_defaults(tmp_path, monkeypatch, nafnet):
    entry = dataclasses.replace(
        registry.get("nafnet-gopro-width32"), name="small-nafnet-test", config=NAFNET_SMALL, checkpoint_key="state_dict",
        train_size=(40, 56), base_size=(64, 100),  # base not 1.5x train: the entry's own setting shows
    )
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, entry))
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": nafnet.state_dict()}, path)
    chosen = choose_model("small-nafnet-test", path)
    assert (chosen.train_size, chosen.base_size, chosen.description) == ((40, 56), (64, 100), "small-nafnet-test")
    assert_same_outputs(chosen.model, nafnet)
    # A training size of one's own drops the entry's window for 1.5x that size (rounded down).
    assert choose_model("small-nafnet-test", path, train_size=(33, 21)).base_size == (49, 31)
    assert choose_model("small-nafnet-test", path, train_size=(33, 21), base_size=(8, 9)).base_size == (8, 9)
    bare = choose_model(None, path)
    assert (bare.train_size, bare.base_size, bare.description) == ((256, 256), (384, 384), str(path))
    unloaded = choose_model("small-nafnet-test", need_weights=False)  # structure only, random weights
    assert unloaded.description == "small-nafnet-test (random weights)" and not unloaded.model.training
    with pytest.raises(CheckpointError, match="needs its weights file"):
        choose_model("small-nafnet-test")
    with pytest.raises(KeyError, match="did you mean"):
        choose_model("small-nafnet-tst", path)
    with pytest.raises(ValueError, match="say which model"):
        choose_model()


@pytest.mark.parametrize("name", [e.name for e in registry.list() if e.non_commercial])
def test_non_commercial_entries_say_so(name):
    with pytest.raises(CheckpointError, match="non-commercial") as info:
        load_model(name)
    assert registry.get(name).url in str(info.value)


def test_neither_a_file_nor_a_registry_name(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing checkpoint file nor a registry name; did you mean"):
        load_model("nafnet-gopro-width31")
    with pytest.raises(CheckpointError, match="neither"):
        load_model(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="weights= goes with a registry name"):
        load_model("NAFNet", weights=tmp_path / "x.pth")


# --------------------------------------------------------------------------------------------
# Security and damaged files


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: os.PathLike) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("wrap", [lambda p, sd: {"params": p}, lambda p, sd: {"params": sd, "extra": p}])
def test_code_in_a_pickle_is_refused(tmp_path, nafnet, wrap):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save(wrap(Payload(marker), nafnet.state_dict()), path)
    for load in (read_state_dict, load_model):
        with pytest.raises(CheckpointError, match="arbitrary code.*refuses.*state_dict"):
            load(path)
    assert not marker.exists()


def test_damaged_files(tmp_path, nafnet):
    sd = nafnet.state_dict()
    good_pth, good_st = tmp_path / "good.pth", tmp_path / "good.safetensors"
    torch.save(sd, good_pth)
    save_file(sd, good_st)
    cases = {
        "half.pth": (good_pth.read_bytes()[: good_pth.stat().st_size // 2], "truncated or corrupt"),
        "half.safetensors": (good_st.read_bytes()[: good_st.stat().st_size // 2], "truncated or corrupt"),
        "notes.pth": (b"these are my notes\n", "not a PyTorch checkpoint or a safetensors file"),
        "page.pth": (b"<!DOCTYPE html><html>", "web page"),
        "empty.pth": (b"", "empty"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            read_state_dict(tmp_path / name)
    with pytest.raises(CheckpointError, match="directory"):
        read_state_dict(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_state_dict(tmp_path / "absent.pth")


def test_files_without_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pth")
    with pytest.raises(CheckpointError, match=r"contains no tensors.*'epoch' \(int\), 'lr' \(float\)"):
        read_state_dict(tmp_path / "no_tensors.pth")
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="no state_dict found.*a list of length 1.*key="):
        read_state_dict(tmp_path / "list.pth")


# --------------------------------------------------------------------------------------------
# Mismatches


@pytest.fixture
def saved(tmp_path, nafnet):
    def save(sd: dict):
        path = tmp_path / "edited.pth"
        torch.save(sd, path)
        return path

    return save


def _load_explicit(path, **kwargs):
    return load_model(path, "NAFNet", **NAFNET_SMALL, **kwargs)


def test_mismatch_messages(nafnet, saved):
    sd = nafnet.state_dict()
    dropped = dict(sd)
    del dropped["intro.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing.*: intro\.bias$"):
        _load_explicit(saved(dropped))

    with pytest.raises(CheckpointError, match=r"1 unexpected.*: extra\.weight$"):
        _load_explicit(saved({**sd, "extra.weight": torch.ones(3)}))

    resized = {**sd, "ending.bias": torch.ones(4)}
    with pytest.raises(CheckpointError, match=r"1 with another shape.*ending\.bias: \(4,\) vs \(3,\)"):
        _load_explicit(saved(resized))


def test_long_mismatches_stay_short(nafnet, saved):
    sd = {k: v for i, (k, v) in enumerate(nafnet.state_dict().items()) if i % 4}
    missing = len(nafnet.state_dict()) - len(sd)
    with pytest.raises(CheckpointError) as info:
        _load_explicit(saved(sd))
    message = str(info.value)
    assert f"{missing} missing" in message and f"and {missing - 8} more" in message
    assert len(message.splitlines()) <= 3 and len(message) < 1200
    assert "leave arch and its config out" in message


def test_not_strict_allows_missing_and_unexpected_but_not_shapes(nafnet, saved):
    sd = {**nafnet.state_dict(), "extra.weight": torch.ones(3)}
    del sd["intro.bias"]
    model = _load_explicit(saved(sd), strict=False)
    assert torch.equal(model.intro.weight, nafnet.intro.weight)
    assert not model.intro.bias.is_meta
    with pytest.raises(CheckpointError, match="another shape"):
        _load_explicit(saved({**sd, "ending.bias": torch.ones(4)}), strict=False)
