"""The window ablation: `tlc eval --base-size 1x,1.5x,3x` scores TLC at each base size on the
same pairs, and names the best."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import tlc
from tlc.cli import main
from tlc.cli.common import parse_base_sizes, resolve_base_size
from tlc.eval.ablation import ablation_mode, base_of, window_ablation
from tlc.eval.report import ModeSummary, panel_order


def _pairs(root, n=3, size=(96, 128)):
    """Noisy photographs-like pairs: smooth targets, noise whose level steps across the frame."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    for i in range(n):
        target = np.stack([0.5 + 0.35 * np.sin(xx / (4 + i + c) + c) * np.cos(yy / (5 + c)) for c in range(3)], -1)
        sigma = np.where(xx < size[1] / 2, 0.03, 0.15)[..., None]
        noisy = np.clip(target + sigma * rng.standard_normal(target.shape), 0, 1)
        tlc.io.write_image(root / "input" / f"p{i}.png", noisy)
        tlc.io.write_image(root / "target" / f"p{i}.png", target)


def _rows(out):
    return list(csv.DictReader((out / "per_image.csv").open()))


def test_parse_base_sizes_absolute_relative_and_lists():
    assert parse_base_sizes("384") == [(384, 384)]
    assert parse_base_sizes("1x,1.5x, 2x,384x512") == [(1.0,), (1.5,), (2.0,), (384, 512)]
    assert resolve_base_size((1.5,), (48, 64)) == (72, 96)
    assert resolve_base_size((256, 320), (48, 64)) == (256, 320)
    for bad in ("0x", "abc", "1.5y"):
        with pytest.raises(Exception):
            parse_base_sizes(bad)


def test_mode_names_and_the_panel_order():
    assert ablation_mode((72, 72)) == "tlc@72" and ablation_mode((72, 96)) == "tlc@72x96"
    assert base_of("tlc@72x96") == (72, 96) and base_of("tlc@144") == (144, 144) and base_of("full") is None
    assert panel_order(["tlc@144", "full", "tlc@48", "tlc@72"]) == ["input", "full", "tlc@48", "tlc@72", "tlc@144", "target"]


def test_the_best_is_the_highest_psnr_and_ties_go_to_the_smaller_window():
    s = {"full": ModeSummary(2, 20.0, 0.5), "tlc@72": ModeSummary(2, 25.0, 0.7), "tlc@48": ModeSummary(2, 25.0, 0.6),
         "tlc@144": ModeSummary(2, 24.0, 0.8)}
    ablation = window_ablation(s, (48, 48))
    assert [p["mode"] for p in ablation["points"]] == ["tlc@48", "tlc@72", "tlc@144"]
    assert [p["relative"] for p in ablation["points"]] == [1.0, 1.5, 3.0]
    assert ablation["best"] == "tlc@48" and ablation["full_psnr"] == 20.0
    assert window_ablation({"tlc": ModeSummary(1, 1.0, 1.0)}, (48, 48)) is None


def test_eval_scores_each_window_on_the_same_pairs_as_separate_runs(tmp_path, capsys):
    data = tmp_path / "data"
    _pairs(data)
    out = tmp_path / "ablation"
    code = main(["eval", str(data), "--model", "tiny-nafnet", "--modes", "full,tlc", "--base-size", "1x,1.5x,3x",
                 "--out", str(out), "--report"])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    modes = ["full", "tlc@48", "tlc@72", "tlc@144"]  # tiny-nafnet trains on 48-pixel crops
    assert summary["settings"]["modes"] == modes and list(summary["modes"]) == modes
    rows = _rows(out)
    assert sorted({r["mode"] for r in rows}) == sorted(modes) and len(rows) == 3 * len(modes)
    # Each window's numbers are those of an evaluation with that one base size.
    for mode, base in (("tlc@48", "48"), ("tlc@144", "144")):
        single = tmp_path / f"single-{base}"
        assert main(["eval", str(data), "--model", "tiny-nafnet", "--modes", "tlc", "--base-size", base,
                     "--out", str(single)]) == 0
        expected = {r["image"]: float(r["psnr"]) for r in _rows(single)}
        got = {r["image"]: float(r["psnr"]) for r in rows if r["mode"] == mode}
        assert got == expected
    # The best is the highest mean PSNR over the rows, found independently here.
    means = {m: np.mean([float(r["psnr"]) for r in rows if r["mode"] == m]) for m in modes[1:]}
    ablation = summary["window_ablation"]
    assert ablation["best"] == max(means, key=means.get)
    assert [p["base_size"] for p in ablation["points"]] == [[48, 48], [72, 72], [144, 144]]
    assert all(abs(p["psnr"] - means[p["mode"]]) < 1e-9 for p in ablation["points"])
    assert "window ablation" in printed and "<- best" in printed
    assert len({round(v, 6) for v in means.values()}) == 3  # the windows really differ
    page = (out / "report.html").read_text()
    assert "Window ablation" in page and ablation["best"] in page


def test_several_base_sizes_are_for_eval_only(tmp_path, capsys):
    tlc.io.write_image(tmp_path / "a.png", np.full((16, 16, 3), 0.5))
    code = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", "tiny-nafnet",
                 "--base-size", "1x,2x"])
    assert code == 2 and "several --base-size values are for `tlc eval`" in capsys.readouterr().err
    data = tmp_path / "data"
    _pairs(data, n=1, size=(24, 24))
    code = main(["eval", str(data), "--model", "tiny-nafnet", "--modes", "full", "--base-size", "1x,2x",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "add tlc to --modes" in capsys.readouterr().err
