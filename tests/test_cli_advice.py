"""The command line's advice names its flags, never a Python argument; the library's messages
keep the Python advice for Python callers. Also ``tlc eval --skip-missing``."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tlc
from tlc import io as tlc_io
from tlc._util import Hint, exists_error
from tlc.cli import main
from tlc.cli.common import FLAGS, error_text
from tlc.eval.distributed import DistributedError, Launch, process_group
from tlc.zoo import CheckpointError, registry

SRC = Path(tlc.__file__).parent
# Python-style advice: a keyword argument ("strict=False", "key="), a call sketch
# ("read_image(..., "), "pass some_name", or a call of tlc's ("tlc.models.list()").
PYTHON_ADVICE = re.compile(r"\b[a-z][a-z0-9_]*=(?!=)|\(\.\.\.,|\bpass [a-z0-9]+_[a-z0-9_]+\b|\btlc\.[a-z_.]+\(")
# Advice in a message: a verb, then a keyword argument ("pass strict=False", "with fast=False").
ADVICE_VERBS = re.compile(r"\b(pass|with|use|set) [a-z][a-z0-9_]*=|\(\.\.\.,")
MODEL = ("--model", "tiny-nafnet")


def run(*argv) -> int:
    return main([str(a) for a in argv])


def last_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tlc: error:")]
    assert lines, "no error line"
    return lines[-1]


def assert_names_flag(message: str, flag: str, python: str) -> None:
    """``message`` names ``flag`` and neither the Python setting ``python`` nor any other keyword
    given as advice (a description such as "NAFNet(width=16, ...)" or a URL's query may stay)."""
    assert flag in message, message
    assert python not in message and not ADVICE_VERBS.search(message), message


def picture(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


def write_pairs(root: Path, sizes: dict[str, tuple[int, int]], sides: tuple[str, str] = ("input", "target")) -> Path:
    """``sides`` folders (input/ + target/) with one pair per name, of the given (H, W)."""
    for seed, (name, (h, w)) in enumerate(sizes.items()):
        target = picture(seed, h, w)
        tlc_io.write_image(root / sides[1] / f"{name}.png", target)
        tlc_io.write_image(root / sides[0] / f"{name}.png", np.clip(target + 0.05 * picture(seed + 50, h, w), 0, 1))
    return root


@pytest.fixture
def dataset(tmp_path):
    return write_pairs(tmp_path / "pairs", {"a": (24, 32), "b": (24, 32), "c": (24, 32)})


@pytest.fixture
def tiny_state():
    """tiny-nafnet's bundled weights, for checkpoints the tests alter."""
    return load_file(registry.get("tiny-nafnet").bundled_weights)


# --------------------------------------------------------------------------------------------
# tlc eval --skip-missing


def test_skip_missing_lists_skips_and_records(dataset, tmp_path, capsys):
    tlc_io.write_image(dataset / "input" / "lonely.png", picture(7, 24, 32))  # an input without target
    tlc_io.write_image(dataset / "target" / "orphan.png", picture(8, 24, 32))  # a target without input
    out = tmp_path / "r"
    assert run("eval", dataset, *MODEL, "--modes", "full", "--out", out) == 2
    assert_names_flag(last_error(capsys), "--skip-missing", "strict=")

    assert run("eval", dataset, *MODEL, "--modes", "full", "--out", out, "--skip-missing") == 0
    err = capsys.readouterr().err
    assert "skipping 2 unmatched file(s)" in err
    assert "  input/lonely.png" in err.splitlines() and "  target/orphan.png" in err.splitlines()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_missing"] == 2
    assert summary["skipped_missing_files"] == ["input/lonely.png", "target/orphan.png"]
    assert summary["pairs"] == 3 and summary["modes"]["full"]["images"] == 3 and summary["failures"] == []


def test_skip_missing_in_scene_folders_and_many(tmp_path, capsys):
    root = tmp_path / "scenes"
    write_pairs(root / "s1", {"a": (20, 24)}, sides=("blur", "sharp"))
    (root / "s2" / "sharp").mkdir(parents=True)  # a scene whose targets are all missing
    names = [f"x{i:02d}" for i in range(13)]
    for i, name in enumerate(names):
        tlc_io.write_image(root / "s2" / "blur" / f"{name}.png", picture(i, 20, 24))
    out = tmp_path / "r"
    assert run("eval", root, *MODEL, "--modes", "full", "--out", out, "--skip-missing") == 0
    err = capsys.readouterr().err.splitlines()
    assert "skipping 13 unmatched file(s) (--skip-missing; listed in summary.json):" in err
    assert "  s2/blur/x00.png" in err and "  s2/blur/x09.png" in err and "  s2/blur/x10.png" not in err
    assert "  and 3 more" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_missing"] == 13 and summary["pairs"] == 1
    assert summary["skipped_missing_files"] == [f"s2/blur/{name}.png" for name in names]


def test_no_skipped_files_record_zero(dataset, tmp_path, capsys):
    out = tmp_path / "r"
    assert run("eval", dataset, *MODEL, "--modes", "full", "--out", out, "--skip-missing") == 0
    assert "skipping" not in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_missing"] == 0 and summary["skipped_missing_files"] == []


def test_library_keeps_python_advice(dataset):
    tlc_io.write_image(dataset / "input" / "lonely.png", picture(7, 24, 32))
    with pytest.raises(tlc_io.ImageError) as info:
        tlc_io.find_pairs(dataset)
    assert "pass strict=False to skip them" in str(info.value) and "--" not in str(info.value)
    assert error_text(info.value).endswith("pass --skip-missing to skip them")


# --------------------------------------------------------------------------------------------
# The pixel limit: --pixel-limit on restore and eval


def test_restore_pixel_limit(dataset, tmp_path, capsys):
    image = dataset / "input" / "a.png"  # 24 x 32 = 768 pixels
    assert run("restore", image, "-o", tmp_path / "o1", *MODEL, "--pixel-limit", "0.0005") == 1
    message = last_error(capsys)
    assert "over the limit of 0.0005 megapixels" in message
    assert_names_flag(message, "--pixel-limit MEGAPIXELS", "max_pixels=")
    assert run("restore", image, "-o", tmp_path / "o2", *MODEL, "--pixel-limit", "0.000768") == 0
    assert (tmp_path / "o2" / "a.png").is_file()


def test_environment_limit_also_names_the_flag(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(tlc_io.MAX_PIXELS_ENV, "100")
    assert run("restore", dataset / "input" / "a.png", "-o", tmp_path / "o", *MODEL) == 1
    message = last_error(capsys)
    assert_names_flag(message, "--pixel-limit MEGAPIXELS", "max_pixels=")
    assert tlc_io.MAX_PIXELS_ENV in message
    with pytest.raises(tlc_io.ImageError, match=r"raise it with max_pixels=N or the TLC_MAX_PIXELS"):
        tlc_io.read_image(dataset / "input" / "a.png")


def test_eval_pixel_limit_fails_the_large_pair_only(tmp_path, capsys):
    root = write_pairs(tmp_path / "pairs", {"small": (24, 32), "large": (40, 48)})  # 768 and 1920 pixels
    out = tmp_path / "r"
    assert run("eval", root, *MODEL, "--modes", "full", "--out", out, "--pixel-limit", "0.001") == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "large" in failed[0]
    assert_names_flag(failed[0], "--pixel-limit MEGAPIXELS", "max_pixels=")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["full"]["images"] == 1 and len(summary["failures"]) == 1
    assert_names_flag(summary["failures"][0], "--pixel-limit MEGAPIXELS", "max_pixels=")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "lots"])
def test_bad_pixel_limit(dataset, tmp_path, capsys, value):
    assert run("eval", dataset, *MODEL, "--out", tmp_path / "r", f"--pixel-limit={value}") == 2
    assert "--pixel-limit must be a positive number of megapixels" in last_error(capsys)


# --------------------------------------------------------------------------------------------
# Loading: --no-strict, --checkpoint-key, an unknown architecture, weights not at hand


def test_no_strict_loads_a_checkpoint_with_other_keys(tiny_state, tmp_path, capsys):
    extra = {**tiny_state, "extra.weight": torch.ones(3)}
    del extra["intro.bias"]
    path = tmp_path / "extra.pth"
    torch.save(extra, path)
    assert run("inspect", *MODEL, "--weights", path) == 2
    message = capsys.readouterr().err.strip()  # the key listing follows on the next lines
    assert message.startswith("tlc: error:") and "1 missing" in message and "1 unexpected" in message
    assert_names_flag(message, "--no-strict", "strict=")
    assert run("inspect", *MODEL, "--weights", path, "--no-strict") == 0
    with pytest.raises(CheckpointError, match=r"pass strict=False to load it anyway"):
        tlc.load_model("tiny-nafnet", weights=path)
    model = tlc.load_model("tiny-nafnet", weights=path, strict=False)
    assert torch.equal(model.intro.weight, tiny_state["intro.weight"])


def test_no_strict_is_not_offered_for_other_shapes(tiny_state, tmp_path, capsys):
    resized = {**tiny_state, "ending.bias": torch.ones(tiny_state["ending.bias"].numel() + 1)}
    path = tmp_path / "resized.pth"
    torch.save(resized, path)
    assert run("inspect", *MODEL, "--weights", path) == 2
    err = capsys.readouterr().err
    assert "another shape" in err and "--no-strict" not in err and "strict=" not in err


def test_checkpoint_key(tiny_state, tmp_path, capsys):
    path = tmp_path / "two.pth"
    torch.save({"generator_ema": tiny_state, "discriminator": {"w": torch.ones(2)}}, path)
    assert run("inspect", "--weights", path, "--train-size", "32") == 2
    assert_names_flag(last_error(capsys), "--checkpoint-key KEY", "key=")
    assert run("inspect", "--weights", path, "--train-size", "32", "--checkpoint-key", "generator_ema") == 0
    with pytest.raises(CheckpointError, match="pass key=NAME to name the entry"):
        tlc.load_model(path)
    assert isinstance(tlc.load_model(path, key="generator_ema"), torch.nn.Module)


def test_unknown_architecture_names_model_and_weights(dataset, tmp_path, capsys):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.ones(4, 3, 3, 3), "fc.weight": torch.ones(10, 4)}, path)
    assert run("restore", dataset / "input", "-o", tmp_path / "o", "--weights", path) == 2
    message = last_error(capsys)
    assert "not a state_dict of a known architecture" in message
    assert_names_flag(message, "--model NAME, a registry model of that architecture", "arch=")
    assert "this file as --weights" in message


def test_missing_weights_file_names_the_list_command(dataset, tmp_path, capsys):
    assert run("restore", dataset / "input", "-o", tmp_path / "o", "--weights", tmp_path / "nope.pth") == 2
    message = last_error(capsys)
    assert message.endswith("is neither an existing checkpoint file nor a registry name (see `tlc inspect --list`)")
    assert_names_flag(message, "`tlc inspect --list`", "tlc.models")
    with pytest.raises(CheckpointError, match=r"\(see tlc\.models\.list\(\)\)"):
        tlc.load_model(tmp_path / "nope.pth")


def test_offline_download_names_weights_flag(dataset, tmp_path, capsys):
    # The test session is offline (tests/conftest.py): a registry model not bundled needs a file.
    assert run("restore", dataset / "input" / "a.png", "-o", tmp_path / "o", "--model", "nafnet-gopro-width32") == 2
    message = last_error(capsys)
    assert "TLC_OFFLINE is set" in message
    assert_names_flag(message, "--weights PATH", "weights=")
    assert run("download", "nafnet-gopro-width32") == 1
    assert_names_flag(last_error(capsys), "--weights PATH", "weights=")


# --------------------------------------------------------------------------------------------
# Running: tiles, tiled TLC, export, synth, torchrun


def test_tiles_flags_checked_up_front(dataset, tmp_path, capsys):
    assert run("restore", dataset / "input", "-o", tmp_path / "o", *MODEL, "--mode", "tiles", "--tile", "16",
               "--overlap", "16") == 2
    assert "--overlap must be at least 0 and less than --tile (16), got 16" in last_error(capsys)
    assert run("eval", dataset, *MODEL, "--modes", "full,tiles", "--tile", "0", "--out", tmp_path / "r") == 2
    assert "--tile must be a positive number of pixels" in last_error(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_max_megapixels_too_small(dataset, tmp_path, capsys):
    assert run("restore", dataset / "input" / "a.png", "-o", tmp_path / "o", *MODEL, "--max-megapixels", "1e-5") == 1
    message = last_error(capsys)
    assert "--max-megapixels 1e-05 is too small for a 24x32 image" in message
    assert_names_flag(message, "--max-megapixels 1e-05", "max_megapixels=")


def test_crop_border_that_leaves_nothing(dataset, tmp_path, capsys):
    assert run("eval", dataset, *MODEL, "--modes", "full", "--out", tmp_path / "r", "--crop-border", "12") == 1
    message = last_error(capsys)
    assert "--crop-border 12 leaves nothing of a 24 x 32 image" in message
    assert_names_flag(message, "--crop-border 12", "crop_border=")


def test_export_advice(tmp_path, capsys):
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"keep")
    assert run("export", *MODEL, "-o", existing) == 2
    assert_names_flag(last_error(capsys), "--overwrite", "overwrite=")
    assert run("export", *MODEL, "-o", tmp_path / "f.onnx", "--fast") == 2
    message = last_error(capsys)
    assert "fast_imp" in message
    assert_names_flag(message, "leave out --fast", "fast=")
    assert run("export", *MODEL, "-o", tmp_path / "s.onnx", "--example-size", "1") == 2
    message = last_error(capsys)
    assert message.startswith("tlc: error: --example-size must be at least 2x2")
    assert_names_flag(message, "--example-size", "example_size")
    assert existing.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize(
    "flags,expected",
    [
        (("--noise", "50", "5"), "tlc: error: --noise: min 50 exceeds max 5"),
        (("--noise", "5", "500"), "tlc: error: --noise must lie in [0, 255], got [5, 500]"),
        (("--blur", "9", "3"), "tlc: error: --blur: min 9 exceeds max 3"),
        (("--blur-angle", "90", "10"), "tlc: error: --blur-angle: min 90 exceeds max 10"),
    ],
)
def test_synth_ranges_name_flags(tmp_path, capsys, flags, expected):
    sharp = tmp_path / "sharp"
    tlc_io.write_image(sharp / "a.png", picture(0, 16, 16))
    assert run("synth", sharp, tmp_path / "out", *flags) == 2
    message = last_error(capsys)
    assert message == expected and not PYTHON_ADVICE.search(message)


def test_torchrun_device_advice():
    launch = Launch(rank=0, world_size=2, local_rank=0)
    with pytest.raises(DistributedError) as info:
        with process_group(launch, device="cuda:1", timeout_s=5):
            pass
    assert str(info.value).endswith("pass device='cuda'")
    assert error_text(info.value).endswith("pass --device cuda")


def test_existing_file_names_overwrite(tmp_path):
    err = exists_error(tmp_path / "x.png")
    assert "pass overwrite=True" in str(err)
    assert error_text(err) == f"{tmp_path / 'x.png'}: already exists (pass --overwrite to replace it)"


def test_error_text_leaves_other_errors_alone():
    assert error_text(ValueError("plain")) == "plain"
    unknown = ValueError("x")
    unknown.hint = Hint("no_such_function", "flag=1", "a ", " b")
    assert error_text(unknown) == "x"  # no entry: the message is kept as raised


# --------------------------------------------------------------------------------------------
# Guards over the source: every hint has a flag; no other message gives Python advice


def _hints() -> list[tuple[Path, int, str, str | None]]:
    """(file, line, function, keyword or None where the setting is not a literal) of every Hint(...) in tlc."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Hint" and len(node.args) >= 2:
                function, setting = node.args[0], node.args[1]
                assert isinstance(function, ast.Constant), f"{path}:{node.lineno}: name the function literally"
                head = setting.value if isinstance(setting, ast.Constant) else (
                    setting.values[0].value if isinstance(setting, ast.JoinedStr)
                    and isinstance(setting.values[0], ast.Constant) else None)
                keyword = head.split("=", 1)[0] if head is not None else None
                found.append((path, node.lineno, function.value, keyword))
    return found


def test_every_hint_has_a_flag():
    hints = _hints()
    assert len(hints) >= 12  # the scan sees them
    for path, line, function, keyword in hints:
        if keyword is None:  # check_range(name=...): its callers' names are listed by function
            assert any(f == function for f, _ in FLAGS), f"{path}:{line}: no flag for {function}"
        else:
            assert (function, keyword) in FLAGS, f"{path}:{line}: no flag for {function}({keyword}=)"


#: Python advice the command line never shows, and why (file relative to src/tlc, text).
UNREACHABLE = {
    ("archs/hinet.py", "use_csff=False"): "a model's own assertion; the CLI builds HINet with its config",
    ("convert/calibrate.py", "pass in_channels="): "every model the CLI loads has a convolution",
    ("convert/core.py", "pass inplace=True"): "the CLI converts each freshly loaded model once",
    ("convert/pooled_values.py", "writes into out="): "describes a torch call in a conversion report",
    ("eval/metrics.py", "pass data_range"): "the CLI scores through a Protocol, which sets the range",
    ("eval/metrics.py", "it needs y_channel=True"): "the CLI refuses --y-channel/--crop-border on such presets first",
    ("eval/metrics.py", "it needs ssim='2d'"): "the CLI refuses --y-channel/--crop-border on such presets first",
    ("eval/metrics.py", "blocks must be"): "the CLI passes SIDD's blocks as the .mat files hold them",
    ("export.py", "pass in_channels"): "every model the CLI loads has a convolution",
    ("io/write.py", "bit_depth=8"): "the CLI writes 8-bit to formats without 16-bit",
    ("nn/attention_pattern.py", "p="): "describes a torch call in a conversion report",
    ("nn/attention_pattern.py", "eps="): "describes a torch call in a conversion report",
    ("run/modes.py", "overlap="): "the CLI checks --tile and --overlap first (cli.common.check_tiles)",
    ("zoo/load.py", "weights= goes with"): "the CLI passes weights only with a registry name",
}


def _advice_in_messages() -> list[tuple[str, int, str]]:
    """(file, line, text) of string pieces of raised errors and of say/speak/log/warn calls that
    read as Python advice, leaving out the settings of Hint(...) calls."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            messages = []
            if isinstance(node, ast.Raise) and node.exc is not None:
                messages.append(node.exc)
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                    "say", "speak", "log", "warn"):
                messages.append(node)
            for message in messages:
                settings = {id(sub) for call in ast.walk(message) if isinstance(call, ast.Call)
                            and getattr(call.func, "id", None) == "Hint" and len(call.args) > 1
                            for sub in ast.walk(call.args[1])}
                for piece in ast.walk(message):
                    if (isinstance(piece, ast.Constant) and isinstance(piece.value, str)
                            and id(piece) not in settings and PYTHON_ADVICE.search(piece.value)):
                        found.append((name, piece.lineno, piece.value))
    return found


def test_no_message_gives_python_advice_the_cli_can_show():
    found = _advice_in_messages()
    unexplained = [(name, line, text) for name, line, text in found
                   if not any(name == f and snippet in text for f, snippet in UNREACHABLE)]
    assert unexplained == []
    stale = [key for key in UNREACHABLE if not any(name == key[0] and key[1] in text for name, _, text in found)]
    assert stale == []  # each exception still matches a message


@pytest.mark.parametrize("flag", [["--y-channel"], ["--crop-border", "4"]])
def test_presets_with_their_own_region_refuse_luma_and_crop_flags(tmp_path, capsys, flag):
    """realblur scores RGB over the region its alignment leaves: the flags get one usage line."""
    for side in ("input", "target"):
        tlc.io.write_image(tmp_path / side / "a.png", np.full((16, 16, 3), 0.4))
    code = main(["eval", str(tmp_path), "--protocol", "realblur", *flag, "--model", "tiny-nafnet",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "the realblur protocol scores as its reference script does" in err, err
    assert not (tmp_path / "out").exists()
