"""The models trained here ship with tlc: they load by name, with their own training size."""

from __future__ import annotations

import json

import pytest
import torch

import tlc
from tlc import demo
from tlc.cli import main

BUNDLED = [e for e in tlc.models.list() if e.bundled_weights is not None]
#: PSNR gain (dB) the deblurring model must give on the held-out crop of the test below, per blur
#: set; measured +0.89 (varying) and +2.02 (uniform) with the shipped weights.
MARGIN_DB = {"blur-varying": 0.4, "blur-uniform": 1.0}


def test_every_bundled_model_is_in_the_registry():
    assert {e.name for e in BUNDLED} == {"tiny-unet", "tiny-unet-in", "tiny-unet-se", "tiny-nafnet", "tiny-hinet",
                                        "tiny-nafnet-deblur", "tiny-unet-in-deblur"}


@pytest.mark.parametrize("entry", BUNDLED, ids=lambda e: e.name)
def test_loads_by_name_and_matches_its_card(entry):
    card = json.loads(entry.bundled_weights.with_suffix(".json").read_text())
    assert entry.bundled_weights.stat().st_size <= 2 * 2**20
    assert (card["arch"], card["config"], tuple(card["train_size"])) == (entry.arch, entry.config, entry.train_size)
    model = tlc.load_model(entry.name)
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        out = tlc.run.final_output(model(x))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_restore_with_a_bundled_model_needs_no_weights(tmp_path, capsys):
    image = tmp_path / "in" / "noisy.png"
    tlc.io.write_image(image, torch.rand(40, 60, 3).numpy())
    assert main(["restore", str(image), "-o", str(tmp_path / "out"), "--model", "tiny-nafnet"]) == 0
    assert (tmp_path / "out" / "noisy.png").exists()
    assert "train 48x48, base 72x72" in capsys.readouterr().err


def test_the_deblurring_entry_says_what_it_does():
    entry = tlc.models.get("tiny-nafnet-deblur")
    card = json.loads(entry.bundled_weights.with_suffix(".json").read_text())
    assert "deblurring" in entry.task and "deblurring" in card["task"]["kind"]
    assert (entry.train_size, entry.base_size) == ((48, 48), (72, 72))
    # Held out: the demo's and the benchmark's photographs were neither trained nor validated on.
    assert not set(card["data"]["test_images"]) & set(card["data"]["train_images"] + card["data"]["validation_images"])


def _psnr(image, target) -> float:
    return tlc.metrics.PROTOCOLS["gopro"].score(image, target)[0]


@pytest.mark.parametrize("kind", demo.BLUR_SETS)
def test_the_deblurring_model_deblurs_a_held_out_photograph(kind):
    sharp = demo.photograph("coffee")[150:246, 200:328]  # a held-out photograph, 96 x 128
    blurred = demo.blurred(sharp, kind, seed=11)
    model = tlc.load_model("tiny-nafnet-deblur")
    with torch.no_grad():
        out = tlc.run.final_output(model(torch.from_numpy(blurred).permute(2, 0, 1)[None]))
    restored = out[0].permute(1, 2, 0).clamp(0, 1).numpy()
    before, after = _psnr(blurred, sharp), _psnr(restored, sharp)
    assert after > before + MARGIN_DB[kind], (before, after)


def test_the_denoiser_does_not_deblur():
    """The control: the bundled denoiser leaves blur as it is (within 0.5 dB)."""
    sharp = demo.photograph("coffee")[150:246, 200:328]
    blurred = demo.blurred(sharp, "blur-uniform", seed=11)
    with torch.no_grad():
        out = tlc.run.final_output(tlc.load_model("tiny-nafnet")(torch.from_numpy(blurred).permute(2, 0, 1)[None]))
    assert abs(_psnr(out[0].permute(1, 2, 0).clamp(0, 1).numpy(), sharp) - _psnr(blurred, sharp)) < 0.5


def test_the_demo_deblurring_part_runs(tmp_path, capsys):
    photos = {"coffee": demo.photograph("coffee")[100:140, 200:256],
              "rocket": demo.photograph("rocket")[200:248, 300:340]}
    assert demo.deblur(photos, tmp_path, tile=32, overlap=8) == 0
    for kind in demo.BLUR_SETS:
        summary = json.loads((tmp_path / kind / "results" / "summary.json").read_text())
        assert set(summary["modes"]) == {"full", "tiles", "tlc"} and summary["modes"]["tlc"]["images"] == 2
        strips = sorted(p.name for p in (tmp_path / kind / "results" / "compare").glob("*.png"))
        assert strips == ["coffee.png", "rocket.png"]
        for name, sharp in photos.items():
            pair = tlc.io.read_image(tmp_path / kind / "input" / f"{name}.png").pixels
            assert _psnr(pair, sharp) < 40  # blurred, not a copy
    out = capsys.readouterr().out
    assert "tiny-nafnet-deblur trained on 48x48 crops" in out and out.count("blurred input: ") == 2
