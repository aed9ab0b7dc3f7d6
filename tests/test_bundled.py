"""The models trained here ship with tlc: they load by name, with their own training size."""

from __future__ import annotations

import json

import pytest
import torch

import tlc
from tlc.cli import main

BUNDLED = [e for e in tlc.models.list() if e.bundled_weights is not None]


def test_every_bundled_model_is_in_the_registry():
    assert {e.name for e in BUNDLED} == {"tiny-unet", "tiny-unet-in", "tiny-unet-se", "tiny-nafnet", "tiny-hinet"}


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
