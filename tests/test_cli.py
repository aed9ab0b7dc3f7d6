"""End-to-end runs of every subcommand on small images the tests make."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tlc
from tlc import io as tlc_io
from tlc.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small perturbed NAFNet checkpoint and a folder of sharp photos (scikit-image's)."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = tlc.archs.build("NAFNet", width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_file(model.state_dict(), root / "model.safetensors")
    skimage_data = pytest.importorskip("skimage.data")
    sharp = root / "sharp"
    for name in ("astronaut", "coffee", "chelsea"):
        pixels = getattr(skimage_data, name)()[:96, :120].astype(np.float32) / 255
        tlc_io.write_image(sharp / f"{name}.png", pixels)
    return root


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


MODEL = ("--train-size", "32")


def weights(ws):
    return ("--weights", ws / "model.safetensors", *MODEL)


@pytest.mark.parametrize("command", ["restore", "eval", "inspect", "synth"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_synth_builds_a_seeded_paired_set(workspace, tmp_path):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    for out in (out1, out2):
        assert run("synth", workspace / "sharp", out, "--noise", "5", "50", "--noise-pattern", "step", "--seed", "3") == 0
    names = sorted(p.name for p in (out1 / "input").iterdir())
    assert names == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert sorted(p.name for p in (out1 / "target").iterdir()) == names
    for name in names:
        assert (out1 / "input" / name).read_bytes() == (out2 / "input" / name).read_bytes()
        sharp = tlc_io.read_image(workspace / "sharp" / name).pixels
        assert np.array_equal(tlc_io.read_image(out1 / "target" / name).pixels, sharp)
    records = json.loads((out1 / "degradations.json").read_text())
    sigma = records["coffee.png"]["noise"]["sigma"]
    assert sigma["min"] == pytest.approx(5) and sigma["max"] == pytest.approx(50)


def test_synth_blur_lengths_and_angles(workspace, tmp_path):
    out = tmp_path / "blurred"
    assert run("synth", workspace / "sharp", out, "--blur", "3", "9", "--blur-pattern", "ramp",
               "--blur-angle", "10", "20") == 0
    record = json.loads((out / "degradations.json").read_text())["astronaut.png"]["blur"]
    assert 10 <= record["angle_deg"] <= 20
    assert record["length"]["min"] == pytest.approx(3) and record["length"]["max"] == pytest.approx(9)
    assert run("synth", workspace / "sharp", tmp_path / "bad", "--blur", "9", "3") == 2


@pytest.fixture(scope="module")
def pairs(workspace):
    out = workspace / "pairs"
    assert run("synth", workspace / "sharp", out, "--noise", "5", "30", "--noise-pattern", "ramp") == 0
    return out


def test_restore_writes_every_image_and_keeps_inputs(workspace, pairs, tmp_path, capsys):
    out = tmp_path / "out"
    assert run("restore", pairs / "input", "-o", out, *weights(workspace)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "chelsea.png", "coffee.png"]
    restored = tlc_io.read_image(out / "coffee.png")
    assert restored.pixels.shape == (96, 120, 3) and restored.bit_depth == 8
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run("restore", pairs / "input", "-o", out, *weights(workspace)) == 0
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before  # skipped, not rewritten
    assert "3 skipped" in capsys.readouterr().err
    originals = {p: p.read_bytes() for p in (pairs / "input").iterdir()}
    assert run("restore", pairs / "input", "-o", pairs / "input", *weights(workspace), "--overwrite") == 1
    assert {p: p.read_bytes() for p in (pairs / "input").iterdir()} == originals
    assert "would overwrite an input" in capsys.readouterr().err


def test_restore_modes_give_different_results(workspace, pairs, tmp_path):
    results = {}
    for mode in ("tlc", "full", "tiles"):
        out = tmp_path / mode
        assert run("restore", pairs / "input" / "coffee.png", "-o", out, *weights(workspace), "--mode", mode,
                   "--tile", "48", "--overlap", "8") == 0
        results[mode] = tlc_io.read_image(out / "coffee.png").pixels
    assert not np.array_equal(results["tlc"], results["full"])
    assert not np.array_equal(results["tiles"], results["full"])


def test_restore_gray_alpha_and_16_bit(workspace, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    tlc_io.write_image(inputs / "gray.png", rng.random((40, 50, 1), dtype=np.float32))
    alpha = rng.random((40, 50), dtype=np.float32)
    tlc_io.write_image(inputs / "rgba.png", rng.random((40, 50, 3), dtype=np.float32), alpha=alpha)
    tlc_io.write_image(inputs / "deep.png", rng.random((40, 50, 3), dtype=np.float32), bit_depth=16)
    out = tmp_path / "out"
    assert run("restore", inputs, "-o", out, *weights(workspace)) == 0
    gray, rgba, deep = (tlc_io.read_image(out / n) for n in ("gray.png", "rgba.png", "deep.png"))
    assert gray.mode == "gray" and gray.pixels.shape == (40, 50, 1)
    assert rgba.mode == "rgba" and np.array_equal(rgba.alpha, tlc_io.read_image(inputs / "rgba.png").alpha)
    assert deep.bit_depth == 16


def test_restore_bad_files_are_skipped_and_reported(workspace, pairs, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = (pairs / "input" / "coffee.png").read_bytes()
    (inputs / "good.png").write_bytes(good)
    (inputs / "truncated.png").write_bytes(good[: len(good) // 2])
    (inputs / "text.png").write_text("not an image")
    (inputs / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert run("restore", inputs, "-o", out, *weights(workspace)) == 1
    err = capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["good.png"]
    for name in ("truncated.png", "text.png", "empty.jpg"):
        line = next(line for line in err.splitlines() if name in line)
        assert line.startswith("tlc: error:") and "Traceback" not in err
    assert "3 failed" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (("restore", "missing.png", "-o", "x", "--weights", "model.safetensors"), "no input images"),
        (("restore", "{pairs}/input", "-o", "x"), "say which model"),
        (("restore", "{pairs}/input", "-o", "x", "--weights", "nope.pth"), "neither an existing checkpoint"),
        (("restore", "{pairs}/input", "-o", "x", "--model", "nafnet-gopro-w64"), "did you mean"),
        (("restore", "{pairs}/input", "-o", "x", "--model", "restormer-gopro"), "non-commercial"),
        (("eval", "{pairs}/input", "--weights", "model.safetensors"), "layout"),
        (("eval", "{pairs}", "--weights", "model.safetensors", "--modes", "full,best"), "--modes"),
        (("eval", "{pairs}", "--weights", "model.safetensors", "--protocol", "psnr"), "unknown protocol"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(workspace, pairs, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    assert run(*(a.format(pairs=pairs) for a in argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tlc: error:") and message in err[-1]


def rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_eval_three_modes_then_resume(workspace, pairs, tmp_path, capsys):
    out = tmp_path / "results"
    argv = ("eval", pairs, *weights(workspace), "--modes", "full,tlc,tiles", "--tile", "48", "--overlap", "8",
            "--out", out, "--save-images", "--compare")
    assert run(*argv) == 0
    table = capsys.readouterr().out
    assert all(mode in table for mode in ("full", "tlc", "tiles"))
    first = rows(out / "per_image.csv")
    assert len(first) == 9 and {r["mode"] for r in first} == {"full", "tlc", "tiles"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["tlc"]["images"] == 3 and summary["protocol"]["name"] == "gopro"
    assert summary["settings"]["train_size"] == [32, 32] and summary["compare_order"] == ["input", "full", "tiles", "tlc", "target"]
    means = {m: np.mean([float(r["psnr"]) for r in first if r["mode"] == m]) for m in ("full", "tlc")}
    assert summary["modes"]["full"]["psnr"] == pytest.approx(means["full"]) and summary["modes"]["tlc"]["psnr"] != summary["modes"]["full"]["psnr"]
    # Anyone recomputing PSNR from the saved uint8 outputs gets the reported value.
    for r in first:
        saved = tlc_io.read_image(out / "images" / r["mode"] / f"{r['image']}.png").pixels
        target = tlc_io.read_image(pairs / "target" / f"{r['image']}.png").pixels
        mse = np.mean((np.rint(saved * 255.0) - np.rint(target * 255.0)) ** 2)  # 8-bit samples, by hand
        value = 10 * np.log10(255.0**2 / mse)
        assert value == pytest.approx(float(r["psnr"]), abs=1e-3)
    assert len(list((out / "compare").iterdir())) == 3
    # An interruption: the last row half written, two rows lost.
    text = (out / "per_image.csv").read_text().splitlines()
    (out / "per_image.csv").write_text("\n".join(text[:-3]) + "\n" + text[-3][:10])
    assert run(*argv) == 0
    assert "resuming: 6 of 9" in capsys.readouterr().err
    again = rows(out / "per_image.csv")
    assert len(again) == 9
    assert {(r["image"], r["mode"]): r["psnr"] for r in again} == {(r["image"], r["mode"]): r["psnr"] for r in first}


def test_eval_refuses_to_mix_settings(workspace, pairs, tmp_path, capsys):
    out = tmp_path / "results"
    assert run("eval", pairs, *weights(workspace), "--modes", "full", "--out", out) == 0
    assert run("eval", pairs, *weights(workspace), "--modes", "full", "--out", out, "--y-channel") == 2
    assert "other settings (protocol differ)" in capsys.readouterr().err


def test_eval_protocol_options(workspace, pairs, tmp_path):
    out = tmp_path / "results"
    assert run("eval", pairs, *weights(workspace), "--modes", "full", "--out", out, "--y-channel",
               "--crop-border", "4", "--limit", "2") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == {"name": "gopro+y+crop4", "y_channel": True, "crop_border": 4, "ssim": "3d", "quantize": True,
                                   "y_rounded": False, "mae": False, "align": False}
    assert summary["modes"]["full"]["images"] == 2


def test_eval_unmatched_files_are_listed(workspace, pairs, tmp_path, capsys):
    broken = tmp_path / "broken"
    for side in ("input", "target"):
        (broken / side).mkdir(parents=True)
        for p in (pairs / side).iterdir():
            (broken / side / p.name).write_bytes(p.read_bytes())
    (broken / "input" / "extra.png").write_bytes((pairs / "input" / "coffee.png").read_bytes())
    assert run("eval", broken, *weights(workspace), "--out", tmp_path / "r") == 2
    assert "extra" in capsys.readouterr().err


def test_inspect(workspace, capsys):
    assert run("inspect", *weights(workspace), "--size", "96x128") == 0
    out = capsys.readouterr().out
    assert "NAFNet" in out and "encoders.0.0.sca" in out and "48x48" in out and "96x128" in out
    assert "activation memory" in out
    assert run("inspect", "--list") == 0
    listing = capsys.readouterr().out
    assert "nafnet-gopro-width64" in listing and "restormer-gopro" in listing and "non-commercial" in listing
    assert run("inspect", "--model", "hinet-gopro") == 0
    assert "down_path_1.3.norm" in capsys.readouterr().out


def test_out_of_memory_on_one_image_is_reported_and_the_rest_continue(workspace, pairs, tmp_path, capsys, monkeypatch):
    import tlc.cli.restore as restore_command

    real = restore_command.restore

    def flaky(model, image, settings, context=None):
        if image.shape[-1] == 120 and flaky.calls == 0:
            flaky.calls += 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail")
        return real(model, image, settings, context)

    flaky.calls = 0
    monkeypatch.setattr(restore_command, "restore", flaky)
    out = tmp_path / "out"
    assert run("restore", pairs / "input", "-o", out, *weights(workspace)) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB" in err and "more detail" not in err
    assert len(list(out.iterdir())) == 2


def test_functional_flag_is_recorded_and_reported(workspace, pairs, tmp_path, capsys):
    out = tmp_path / "results"
    assert run("eval", pairs, *weights(workspace), "--modes", "tlc", "--out", out, "--functional") == 0
    assert json.loads((out / "run.json").read_text())["functional"] is True
    assert run("eval", pairs, *weights(workspace), "--modes", "tlc", "--out", out) == 0  # on by default
    assert run("eval", pairs, *weights(workspace), "--modes", "tlc", "--out", out, "--no-functional") == 2
    assert "functional differ" in capsys.readouterr().err
    assert run("inspect", *weights(workspace), "--functional") == 0
    assert "run-time call sites: 0 converted, 0 left global" in capsys.readouterr().out
