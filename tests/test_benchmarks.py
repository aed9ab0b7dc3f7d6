"""Every benchmark in its published layout, built small here, recognised and scored end to end."""

from __future__ import annotations

import csv
import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tlc
from tlc import io as tlc_io
from tlc.cli import main
from tlc.cli.eval import benchmark_protocol, published_scores
from tlc.io.benchmarks import BENCHMARKS, AmbiguousLayout, find_benchmark, identify, natural_key
from tlc.io.matblocks import read_mat_array, write_blocks
from tlc.zoo import registry

H, W = 24, 32
TINY = ("--model", "tiny-nafnet")


def image(rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    return rng.random((H, W, channels), dtype=np.float32)


def put(path, rng, bit_depth=8):
    tlc_io.write_image(path, image(rng), bit_depth=bit_depth)


def evaluate(dataset, out, *extra) -> tuple[int, dict, list[dict]]:
    code = main([str(a) for a in ("eval", dataset, "--out", out, "--modes", "full", *TINY, *extra)])
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    rows = list(csv.DictReader((out / "per_image.csv").open())) if (out / "per_image.csv").exists() else []
    return code, summary, rows


def test_every_benchmark_has_a_known_protocol_or_fallback():
    presets = {"gopro", "y", "float", "per-channel-2d"}
    for b in BENCHMARKS.values():
        assert b.fallback in presets
        assert benchmark_protocol(b.name) in tlc.eval.PROTOCOLS
    assert BENCHMARKS["dpdd-dual"].channels == 6


def test_natural_order_as_natsort():
    names = ["img10", "img2", "img1", "a100b", "a20b"]
    assert sorted(names, key=natural_key) == ["a20b", "a100b", "img1", "img2", "img10"]


def test_gopro_from_root_uses_test_scenes_and_blur_not_blur_gamma(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "GOPRO_Large"
    for split, scenes in (("train", ["GOPR0372_07_00"]), ("test", ["GOPR0384_11_00", "GOPR0385_11_01"])):
        for scene in scenes:
            for folder in ("blur", "blur_gamma", "sharp"):
                for frame in ("000001", "000002"):
                    put(root / split / scene / folder / f"{frame}.png", rng)
    assert identify(root) == "gopro" and identify(root / "test") == "gopro"
    pairs = find_benchmark(root)
    assert [n for n, _, _ in pairs.pairs] == ["GOPR0384_11_00/000001", "GOPR0384_11_00/000002",
                                             "GOPR0385_11_01/000001", "GOPR0385_11_01/000002"]
    assert all(p.parent.name == "blur" and q.parent.name == "sharp" for _, p, q in pairs.pairs)
    code, summary, rows = evaluate(root, tmp_path / "out")
    assert code == 0
    assert summary["benchmark"] == "gopro" and summary["pairs"] == 4 and summary["protocol"]["name"] == "gopro"
    assert len(rows) == 4


def test_hide_subsets_and_overall_means(tmp_path, capsys):
    rng = np.random.default_rng(1)
    root = tmp_path / "HIDE_dataset"
    names = {"test-close-ups": ["1fromGOPR0950", "2fromGOPR1096"], "test-long-shot": ["3fromGOPR0941"]}
    for subset, stems in names.items():
        for stem in stems:
            put(root / "test" / subset / f"{stem}.png", rng)
            put(root / "GT" / f"{stem}.png", rng)
    put(root / "GT" / "9fromGOPR0001.png", rng)  # GT/ holds training targets too: not an unmatched file
    put(root / "train" / "9fromGOPR0001.png", rng)
    assert identify(root) == "hide"
    code, summary, rows = evaluate(root, tmp_path / "out")
    assert code == 0
    assert summary["benchmark"] == "hide" and summary["pairs"] == 3
    psnr = {r["image"]: float(r["psnr"]) for r in rows}
    for subset, stems in names.items():
        expected = np.mean([psnr[f"{subset}/{stem}"] for stem in stems])
        assert summary["subsets"][subset]["full"]["images"] == len(stems)
        assert summary["subsets"][subset]["full"]["psnr"] == pytest.approx(expected, abs=1e-9)
    assert summary["modes"]["full"]["psnr"] == pytest.approx(np.mean(list(psnr.values())), abs=1e-9)
    out = capsys.readouterr().out
    assert "test-close-ups" in out and "test-long-shot" in out


def _realblur(root, rng, which: str, listed: list[tuple[str, int]], unlisted: list[tuple[str, int]]):
    folder = {"J": "RealBlur-J_ECC_IMCORR_centroid_itensity_ref",
              "R": "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref"}[which]
    lines = []
    for scene, n in listed + unlisted:  # blur: the sharp image plus a little noise, so that alignment converges
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        phase = rng.random(3, dtype=np.float32) * 6
        sharp = np.stack([0.5 + 0.3 * np.sin(xx / 3 + p) * np.cos(yy / 4 - p) for p in phase], axis=-1)
        tlc_io.write_image(root / folder / scene / "gt" / f"gt_{n}.png", sharp)
        blurred = np.clip(sharp + 0.02 * rng.standard_normal(sharp.shape), 0, 1)
        tlc_io.write_image(root / folder / scene / "blur" / f"blur_{n}.png", blurred)
    for scene, n in listed:
        lines.append(f"{folder}/{scene}/gt/gt_{n}.png {folder}/{scene}/blur/blur_{n}.png")
    (root / f"RealBlur_{which}_test_list.txt").write_text("\n".join(lines) + "\n")


def test_realblur_list_files_and_the_ambiguous_question(tmp_path, capsys):
    rng = np.random.default_rng(2)
    root = tmp_path / "RealBlur"
    _realblur(root, rng, "J", [("scene230", 1), ("scene230", 12), ("scene231", 2)], [("scene001", 1)])
    _realblur(root, rng, "R", [("scene230", 1)], [])
    with pytest.raises(AmbiguousLayout, match=r"--benchmark realblur-j\|realblur-r"):
        identify(root)
    code, _, _ = evaluate(root, tmp_path / "nothing")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--benchmark realblur-j|realblur-r" in err[0]
    pairs = find_benchmark(root, "realblur-j")
    assert [n for n, _, _ in pairs.pairs] == ["scene230/blur_1", "scene230/blur_12", "scene231/blur_2"]
    assert all(t.name == b.name.replace("blur", "gt") for _, b, t in pairs.pairs)
    code, summary, rows = evaluate(root, tmp_path / "out", "--benchmark", "realblur-r")
    assert code == 0 and summary["benchmark"] == "realblur-r" and len(rows) == 1
    assert summary["protocol"]["name"] == benchmark_protocol("realblur-r")
    # The scene folder itself, without a list: every scene, matched blur_N <-> gt_N.
    scenes = root / "RealBlur-J_ECC_IMCORR_centroid_itensity_ref"
    assert identify(scenes) == "realblur-j" and len(find_benchmark(scenes)) == 4


def test_reds_nested_frames_and_the_300_subset(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "REDS"
    for clip in ("000", "001"):
        for frame in range(0, 20, 3):  # 00000000, 00000003, ..., 00000018: 9 and 18 end in 9? only 9
            put(root / "val" / "val_blur_jpeg" / clip / f"{frame:08d}.jpg", rng)
            put(root / "val" / "val_sharp" / clip / f"{frame:08d}.png", rng)
        put(root / "val" / "val_blur_jpeg" / clip / "00000019.jpg", rng)
        put(root / "val" / "val_sharp" / clip / "00000019.png", rng)
    assert identify(root) == "reds" and identify(root / "val") == "reds"
    full = find_benchmark(root)
    assert len(full) == 16 and full.pairs[0][0] == "000/00000000" and full.pairs[0][1].suffix == ".jpg"
    code, summary, rows = evaluate(root, tmp_path / "out", "--benchmark", "reds-300")
    assert code == 0 and summary["benchmark"] == "reds-300"
    assert sorted(r["image"] for r in rows) == ["000/00000009", "000/00000019", "001/00000009", "001/00000019"]
    # The flattened copy NAFNet and HINet distribute (blur_300/NNN_XXXXXXXX.jpg + sharp_300/).
    flat = tmp_path / "flat"
    for name in ("000_00000009", "001_00000009"):
        put(flat / "blur_300" / f"{name}.jpg", rng)
        put(flat / "sharp_300" / f"{name}.png", rng)
    assert identify(flat) == "reds-300"
    assert [n for n, _, _ in find_benchmark(flat).pairs] == ["000/00000009", "001/00000009"]


def _dpdd(root, rng, stems):
    for stem in stems:
        for folder in ("inputC", "inputL", "inputR", "target"):
            put(root / folder / f"{stem}.png", rng, bit_depth=16)


def test_dpdd_16_bit_with_indoor_outdoor_labels(tmp_path, capsys):
    rng = np.random.default_rng(4)
    root = tmp_path / "DPDD"
    stems = ["1P0A1010", "1P0A2", "1P0A30"]  # natural order 1P0A2, 1P0A30, 1P0A1010
    _dpdd(root, rng, stems)
    np.save(root / "indoor_labels.npy", np.array([1, 3]))
    (root / "outdoor_labels.txt").write_text("2\n")
    with pytest.raises(AmbiguousLayout, match=r"dpdd\|dpdd-dual"):
        identify(root)
    assert tlc_io.read_image(root / "target" / "1P0A2.png").bit_depth == 16
    code, summary, rows = evaluate(root, tmp_path / "out", "--benchmark", "dpdd", "--save-images")
    assert code == 0, capsys.readouterr().err
    assert summary["benchmark"] == "dpdd" and summary["protocol"]["name"] == benchmark_protocol("dpdd")
    assert summary["subsets"]["indoor"]["full"]["images"] == 2
    psnr = {r["image"]: float(r["psnr"]) for r in rows}
    assert summary["subsets"]["outdoor"]["full"]["psnr"] == pytest.approx(psnr["1P0A30"], abs=1e-9)
    indoor = (psnr["1P0A2"] + psnr["1P0A1010"]) / 2  # positions 1 and 3 of the natural order
    assert summary["subsets"]["indoor"]["full"]["psnr"] == pytest.approx(indoor, abs=1e-9)
    assert tlc_io.read_image(tmp_path / "out" / "images" / "full" / "1P0A2.png").bit_depth == 16
    # MAE: each row against the saved 16-bit output and the target, computed here on [0, 1]; the
    # row scores the unrounded output (as the reference script does), the file holds it rounded to
    # 16 bits: they differ by at most half a 16-bit step.
    for r in rows:
        out = cv2.imread(str(tmp_path / "out" / "images" / "full" / f"{r['image']}.png"), cv2.IMREAD_UNCHANGED)
        ref = cv2.imread(str(root / "target" / f"{r['image']}.png"), cv2.IMREAD_UNCHANGED)
        mae = np.abs(out.astype(np.float64) / 65535 - ref.astype(np.float64) / 65535).mean()
        assert float(r["mae"]) == pytest.approx(mae, abs=0.5 / 65535)
    assert summary["modes"]["full"]["mae"] == pytest.approx(np.mean([float(r["mae"]) for r in rows]), abs=1e-12)
    assert "MAE" in capsys.readouterr().out


@pytest.fixture(scope="module")
def dual_weights(tmp_path_factory):
    """A tiny random dual-pixel Restormer (6 input channels), as a checkpoint file."""
    torch.manual_seed(0)
    model = tlc.archs.build("Restormer", inp_channels=6, dual_pixel_task=True, dim=8, num_blocks=[1, 1, 1, 1],
                            num_refinement_blocks=1, heads=[1, 1, 1, 1])
    path = tmp_path_factory.mktemp("dual") / "dual.safetensors"
    save_file(model.state_dict(), path)
    return path


def test_dpdd_dual_feeds_left_and_right_as_six_channels(tmp_path, dual_weights, capsys):
    rng = np.random.default_rng(5)
    root = tmp_path / "DPDD"
    _dpdd(root, rng, ["a1", "a2"])
    model = ("--weights", dual_weights, "--train-size", "16")
    code = main([str(a) for a in ("eval", root, "--benchmark", "dpdd-dual", "--out", tmp_path / "out",
                                  "--modes", "full,tlc", *model)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["benchmark"] == "dpdd-dual" and summary["modes"]["tlc"]["images"] == 2
    # The same model on one RGB image, and a 3-channel model on both views: one line each.
    capsys.readouterr()
    assert main([str(a) for a in ("eval", root, "--benchmark", "dpdd", "--out", tmp_path / "o2", *model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes 6 channels (left and right dual-pixel views)" in err[0] and "dpdd-dual" in err[0]
    assert main([str(a) for a in ("eval", root, "--benchmark", "dpdd-dual", "--out", tmp_path / "o3", *TINY)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tiny-nafnet takes 3 channels" in err[0] and "--benchmark dpdd" in err[0]


def test_restore_dual_views_from_folders(tmp_path, dual_weights, capsys):
    rng = np.random.default_rng(6)
    for stem in ("x", "y"):
        put(tmp_path / "L" / f"{stem}.png", rng, bit_depth=16)
        put(tmp_path / "R" / f"{stem}.png", rng, bit_depth=16)
    model = ("--weights", dual_weights, "--train-size", "16")
    args = ("restore", "--dual", tmp_path / "L", tmp_path / "R", "-o", tmp_path / "out", "--mode", "full", *model)
    assert main([str(a) for a in args]) == 0
    out = tlc_io.read_image(tmp_path / "out" / "x.png")
    assert out.bit_depth == 16 and out.pixels.shape == (H, W, 3)
    # Independent: the model itself on the concatenated views, rounded to 16 bits as written.
    chosen = tlc.zoo.choose_model(None, dual_weights, train_size=(16, 16))
    views = [tlc_io.read_image(tmp_path / s / "x.png") for s in ("L", "R")]
    x = torch.cat([torch.from_numpy(v.pixels.transpose(2, 0, 1).copy())[None] for v in views], dim=1)
    with torch.no_grad():
        expected = chosen.model(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    assert np.abs(out.pixels - expected).max() < 1e-4
    capsys.readouterr()
    assert main([str(a) for a in ("restore", tmp_path / "L" / "x.png", "-o", tmp_path / "o2", *model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes 6 channels" in err[0] and "--dual LEFT RIGHT" in err[0]


def _sidd_blocks(rng, shape=(2, 3, 16, 16, 3)):
    gt = rng.integers(0, 256, shape, dtype=np.uint8)
    noisy = np.clip(gt.astype(int) + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)
    return noisy, gt


def test_sidd_mat_v5_blocks_scored_and_saved_back(tmp_path, capsys):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(7)
    noisy, gt = _sidd_blocks(rng)
    root = tmp_path / "SIDD"
    root.mkdir()
    scipy_io.savemat(root / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": noisy})
    scipy_io.savemat(root / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": gt})
    assert identify(root) == "sidd" and identify(root / "ValidationNoisyBlocksSrgb.mat") == "sidd"
    pairs = find_benchmark(root)
    assert len(pairs) == 6 and pairs.pairs[4][0] == "01_01"
    views, target = pairs.load(4)
    assert np.array_equal(np.rint(views[0].pixels * 255).astype(np.uint8), noisy[1, 1])
    assert np.array_equal(np.rint(target.pixels * 255).astype(np.uint8), gt[1, 1])
    code, summary, rows = evaluate(root, tmp_path / "out", "--save-images")
    assert code == 0, capsys.readouterr().err
    assert summary["benchmark"] == "sidd" and len(rows) == 6
    assert summary["protocol"]["name"] == benchmark_protocol("sidd")
    saved = read_mat_array(tmp_path / "out" / "images" / "full" / "DenoisedBlocksSrgb.mat", "DenoisedBlocksSrgb")
    assert saved.shape == noisy.shape and saved.dtype == np.uint8
    block = tlc_io.read_image(tmp_path / "out" / "images" / "full" / "01_02.png").pixels
    assert np.array_equal(saved[1, 2], np.rint(block * 255).astype(np.uint8))


def test_sidd_published_block_grid(tmp_path, capsys):
    """40 images x 32 blocks as published (blocks shrunk to 4 x 4 pixels), scored on a few."""
    scipy_io = pytest.importorskip("scipy.io")
    noisy, gt = _sidd_blocks(np.random.default_rng(12), (40, 32, 4, 4, 3))
    for key, array in (("ValidationNoisyBlocksSrgb", noisy), ("ValidationGtBlocksSrgb", gt)):
        scipy_io.savemat(tmp_path / f"{key}.mat", {key: array})
    pairs = find_benchmark(tmp_path / "ValidationGtBlocksSrgb.mat")
    assert len(pairs) == 1280 and pairs.pairs[-1][0] == "39_31" and pairs.pairs[32][0] == "01_00"
    assert np.array_equal(np.rint(pairs.load(1279)[0][0].pixels * 255), noisy[39, 31])
    code, summary, rows = evaluate(tmp_path, tmp_path / "out", "--limit", "3", "--save-images")
    assert code == 0, capsys.readouterr().err
    assert [r["image"] for r in rows] == ["00_00", "00_01", "00_02"]
    assert not (tmp_path / "out" / "images" / "full" / "DenoisedBlocksSrgb.mat").exists()  # partial: not written


def test_sidd_mat_v73_is_read_transposed_back(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(8)
    noisy, gt = _sidd_blocks(rng, (2, 3, 8, 12, 3))
    root = tmp_path / "SIDD"
    root.mkdir()
    for key, array in (("ValidationNoisyBlocksSrgb", noisy), ("ValidationGtBlocksSrgb", gt)):
        # As MATLAB's save -v7.3 writes it: a 512-byte header, then HDF5 with the axes reversed.
        with h5py.File(root / f"{key}.mat", "w", userblock_size=512) as f:
            f.create_dataset(key, data=np.ascontiguousarray(array.transpose(4, 3, 2, 1, 0)))
        with (root / f"{key}.mat").open("r+b") as f:
            f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(116))
    views, target = find_benchmark(root, "sidd").load(5)  # block (1, 2)
    assert np.array_equal(np.rint(views[0].pixels * 255).astype(np.uint8), noisy[1, 2])
    assert np.array_equal(np.rint(target.pixels * 255).astype(np.uint8), gt[1, 2])
    write_blocks(tmp_path / "back.mat", "Idenoised", noisy, version="7.3")
    assert np.array_equal(read_mat_array(tmp_path / "back.mat", "Idenoised"), noisy)


def test_rain_original_naming_and_input_target(tmp_path):
    rng = np.random.default_rng(9)
    root = tmp_path / "Rain100L"
    for n in (1, 2, 10):
        put(root / f"rain-{n:03d}.png", rng)
        put(root / f"norain-{n:03d}.png", rng)
    assert identify(root) == "rain"
    code, summary, rows = evaluate(root, tmp_path / "out")
    assert code == 0 and summary["benchmark"] == "rain" and len(rows) == 3
    assert summary["protocol"]["name"] == benchmark_protocol("rain")
    assert all(tlc_io.read_image(p).path.name.startswith("rain-") for _, p, _ in find_benchmark(root).pairs)
    # Restormer's Test100 layout is the generic input/target: a benchmark only when named.
    test100 = tmp_path / "Test100"
    for n in (1, 2):
        put(test100 / "input" / f"{n}.png", rng)
        put(test100 / "target" / f"{n}.png", rng)
    assert identify(test100) is None and find_benchmark(test100).benchmark is None
    assert find_benchmark(test100, "rain").benchmark == "rain"


def test_published_numbers_beside_measured(tmp_path, monkeypatch, capsys):
    assert published_scores("restormer-gopro", "hide") == {
        "full": {"psnr": 31.22, "ssim": 0.942, "source": "Zamir et al. 2022 (Restormer)"}}
    assert set(published_scores("restormer-gopro", "gopro")) == {"full", "tlc"}
    assert published_scores("restormer-dpdd-dual", "dpdd-dual")["full"]["psnr"] == 26.66
    assert published_scores("restormer-dpdd-single", "dpdd-dual") == {}
    assert published_scores("nafnet-reds-width64", "reds-300")["tlc"]["psnr"] == 29.0903
    # A bundled model given published numbers, so that the run needs no download.
    entry = dataclasses.replace(registry.get("tiny-nafnet"), name="tiny-nafnet-published", results=(
        registry.Result("GoPro", 12.3456, 0.5678, source="paper A"),
        registry.Result("GoPro", 23.4567, None, tlc=True, source="paper B")))
    monkeypatch.setattr(registry, "REGISTRY", registry.REGISTRY + (entry,))
    rng = np.random.default_rng(10)
    root = tmp_path / "GoPro" / "test"
    put(root / "GOPR0384_11_00" / "blur" / "000001.png", rng)
    put(root / "GOPR0384_11_00" / "sharp" / "000001.png", rng)
    args = ("eval", root, "--benchmark", "gopro", "--model", "tiny-nafnet-published", "--modes", "full,tlc",
            "--out", tmp_path / "out")
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    full_line = next(line for line in out.splitlines() if line.startswith("full"))
    tlc_line = next(line for line in out.splitlines() if line.startswith("tlc"))
    assert "12.35" in full_line and "0.5678" in full_line and "paper A" in full_line
    assert "23.46" in tlc_line and "paper B" in tlc_line
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["published"]["tlc"] == {"psnr": 23.4567, "ssim": None, "source": "paper B"}


def test_a_named_benchmark_that_is_not_there_says_what_it_expects(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty"), "--benchmark", "hide", *TINY, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test/test-close-ups/" in err[0] and "GT/" in err[0]


def test_report_names_the_benchmark_and_subsets(tmp_path):
    rng = np.random.default_rng(11)
    root = tmp_path / "HIDE"
    for subset, stem in (("test-close-ups", "1fromA"), ("test-long-shot", "2fromB")):
        put(root / "test" / subset / f"{stem}.png", rng)
        put(root / "GT" / f"{stem}.png", rng)
    code, summary, _ = evaluate(root, tmp_path / "out", "--report")
    assert code == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<dt>benchmark</dt><dd>hide</dd>" in page
    assert "subset test-close-ups" in page and f"{summary['subsets']['test-long-shot']['full']['psnr']:.4f} dB" in page


def test_restormer_copies_in_input_target_take_the_named_benchmark(tmp_path):
    rng = np.random.default_rng(13)
    root = tmp_path / "test" / "HIDE"
    for n in (1, 2):
        put(root / "input" / f"{n}.png", rng)
        put(root / "target" / f"{n}.png", rng)
    assert identify(root) is None
    for name in ("gopro", "hide", "realblur-j", "reds"):
        pairs = find_benchmark(root, name)
        assert pairs.benchmark == name and pairs.layout == "input/target" and len(pairs) == 2
    for name in ("dpdd", "dpdd-dual", "sidd"):  # their copies keep the published layout
        with pytest.raises(tlc_io.ImageError, match=f"not the {name if name != 'sidd' else 'SIDD'} layout"):
            find_benchmark(root, name)


def test_realblur_pair_that_does_not_align_fails_alone(tmp_path):
    """ECC cannot align unrelated images: that pair is a failure in summary.json, the others are scored."""
    rng = np.random.default_rng(5)
    root = tmp_path / "RealBlur"
    _realblur(root, rng, "J", [("scene230", 1), ("scene230", 2)], [])
    folder = root / "RealBlur-J_ECC_IMCORR_centroid_itensity_ref" / "scene230"
    tlc_io.write_image(folder / "blur" / "blur_2.png", image(rng), overwrite=True)  # noise, unrelated to gt_2
    code, summary, rows = evaluate(root, tmp_path / "out", "--benchmark", "realblur-j")
    assert code == 1 and [r["image"] for r in rows] == ["scene230/blur_1"]
    assert len(summary["failures"]) == 1 and summary["failures"][0].startswith("scene230/blur_2 [full]: RealBlur alignment failed")
