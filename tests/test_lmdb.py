"""LMDB copies of test sets as NAFNet distributes them (BasicSR's make_lmdb_from_imgs), built small here."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tlc.cli import main
from tlc.cli.eval import benchmark_protocol
from tlc.io import ImageError
from tlc.io.benchmarks import find_benchmark, identify
from tlc.io.lmdbimages import LmdbPairs, lmdb_keys

lmdb = pytest.importorskip("lmdb")

TINY = ("--model", "tiny-nafnet")


def make_lmdb(folder, images: dict[str, np.ndarray], compress_level: int = 1) -> None:
    """Write ``images`` (as cv2.imread returns them: BGR or gray, uint8 or uint16) the way BasicSR's
    make_lmdb_from_imgs does: PNG bytes from cv2.imencode under the ASCII key, and one meta_info.txt
    line "KEY.png (h,w,c) level" per image."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(folder), map_size=64 * 1024 * 1024)
    txn = env.begin(write=True)
    with open(folder / "meta_info.txt", "w") as meta:
        for key, img in images.items():
            _, img_byte = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
            h, w = img.shape[:2]
            c = 1 if img.ndim == 2 else img.shape[2]
            txn.put(key.encode("ascii"), img_byte)
            meta.write(f"{key}.png ({h},{w},{c}) {compress_level}\n")
    txn.commit()
    env.close()


def pairs_of(rng, keys, h, w, noise=25):
    """RGB uint8 (degraded, target) arrays per key: the target random, the input a noisy copy."""
    out = {}
    for key in keys:
        target = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        degraded = np.clip(target.astype(int) + rng.integers(-noise, noise + 1, target.shape), 0, 255).astype(np.uint8)
        out[key] = (degraded, target)
    return out


def bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def write_lmdb_pair(base, names, arrays, skip_input=(), skip_target=()):
    make_lmdb(base / names[0], {k: bgr(a) for k, (a, _) in arrays.items() if k not in skip_input})
    make_lmdb(base / names[1], {k: bgr(b) for k, (_, b) in arrays.items() if k not in skip_target})


def write_png_folders(root, arrays):
    """The same arrays as PNG files in input/ + target/: an independent path to the same pixels."""
    for folder in ("input", "target"):
        (root / folder).mkdir(parents=True)
    for key, (a, b) in arrays.items():
        assert cv2.imwrite(str(root / "input" / f"{key}.png"), bgr(a))
        assert cv2.imwrite(str(root / "target" / f"{key}.png"), bgr(b))


def evaluate(dataset, out, *extra) -> tuple[int, dict, list[dict]]:
    code = main([str(a) for a in ("eval", dataset, "--out", out, "--modes", "full", *TINY, *extra)])
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    rows = list(csv.DictReader((out / "per_image.csv").open())) if (out / "per_image.csv").exists() else []
    return code, summary, rows


def psnr_by_image(rows):
    return {r["image"]: r["psnr"] for r in rows}


def test_gopro_lmdb_recognised_and_scored_as_the_same_png_folders(tmp_path, capsys):
    rng = np.random.default_rng(0)
    h, w = int(rng.integers(17, 30)), int(rng.integers(31, 45))  # odd, non-square
    keys = ["GOPR0384_11_00-000001", "GOPR0384_11_00-000002", "GOPR0410_11_00-000010"]
    arrays = pairs_of(rng, keys, h, w)
    root = tmp_path / "datasets" / "GoPro"
    write_lmdb_pair(root / "test", ("input.lmdb", "target.lmdb"), arrays)
    assert identify(root) == "gopro" and identify(root / "test") == "gopro"
    assert identify(root / "test" / "target.lmdb") == "gopro"

    pairs = find_benchmark(root)
    assert pairs.benchmark == "gopro" and pairs.layout == "test/input.lmdb/target.lmdb"
    assert [n for n, _, _ in pairs.pairs] == keys
    (degraded,), target = pairs.load(2)
    assert degraded.mode == "rgb" and degraded.bit_depth == 8 and degraded.pixels.shape == (h, w, 3)
    assert np.array_equal(np.rint(degraded.pixels * 255), arrays[keys[2]][0])
    assert np.array_equal(np.rint(target.pixels * 255), arrays[keys[2]][1])

    code, summary, rows = evaluate(root, tmp_path / "out")
    assert code == 0, capsys.readouterr().err
    assert summary["benchmark"] == "gopro" and summary["pairs"] == 3 and summary["protocol"]["name"] == "gopro"
    assert "test/input.lmdb/target.lmdb" in capsys.readouterr().err

    folders = tmp_path / "png"
    write_png_folders(folders, arrays)
    code, _, png_rows = evaluate(folders, tmp_path / "out-png")
    assert code == 0
    assert psnr_by_image(rows) == psnr_by_image(png_rows) and len(rows) == 3
    assert {r["image"]: r["ssim"] for r in rows} == {r["image"]: r["ssim"] for r in png_rows}


def test_sidd_lmdb_named_benchmark_takes_its_protocol(tmp_path, capsys):
    rng = np.random.default_rng(1)
    keys = [f"{i}_{j}" for i in range(2) for j in range(2)]
    arrays = pairs_of(rng, keys, 16, 16, noise=40)
    val = tmp_path / "SIDD" / "val"
    write_lmdb_pair(val, ("input_crops.lmdb", "gt_crops.lmdb"), arrays)
    assert identify(tmp_path / "SIDD") == "sidd" and identify(val) == "sidd"
    with pytest.raises(ImageError, match="not the GoPro layout"):
        find_benchmark(val, "gopro")

    code, summary, rows = evaluate(val, tmp_path / "out", "--benchmark", "sidd")
    assert code == 0, capsys.readouterr().err
    assert summary["benchmark"] == "sidd" and summary["protocol"]["name"] == benchmark_protocol("sidd")
    assert sorted(psnr_by_image(rows)) == keys

    folders = tmp_path / "png"
    write_png_folders(folders, arrays)
    code, _, png_rows = evaluate(folders, tmp_path / "out-png", "--protocol", benchmark_protocol("sidd"))
    assert code == 0
    assert psnr_by_image(rows) == psnr_by_image(png_rows)


def test_values_decode_16_bit_and_gray_in_rgb_order(tmp_path):
    rng = np.random.default_rng(2)
    rgb16 = rng.integers(0, 65536, (9, 13, 3), dtype=np.uint16)
    gray = rng.integers(0, 256, (9, 13), dtype=np.uint8)
    make_lmdb(tmp_path / "input.lmdb", {"a": bgr(rgb16), "b": gray})
    make_lmdb(tmp_path / "target.lmdb", {"a": bgr(rgb16), "b": gray})
    source = LmdbPairs(tmp_path / "input.lmdb", tmp_path / "target.lmdb")
    deep, _ = source.load("a")
    assert deep.bit_depth == 16 and deep.mode == "rgb"
    assert np.array_equal(np.rint(deep.pixels.astype(np.float64) * 65535), rgb16)
    flat, _ = source.load("b")
    assert flat.mode == "gray" and flat.pixels.shape == (9, 13, 1)
    assert np.array_equal(np.rint(flat.pixels[:, :, 0] * 255), gray)


def test_keys_without_meta_info_come_from_the_database(tmp_path):
    rng = np.random.default_rng(3)
    arrays = pairs_of(rng, ["b2", "a1", "b10"], 8, 8)
    write_lmdb_pair(tmp_path, ("input.lmdb", "target.lmdb"), arrays)
    assert lmdb_keys(tmp_path / "input.lmdb") == ["b2", "a1", "b10"]  # meta_info.txt's order
    for side in ("input.lmdb", "target.lmdb"):
        (tmp_path / side / "meta_info.txt").unlink()
    assert lmdb_keys(tmp_path / "input.lmdb") == ["a1", "b10", "b2"]  # LMDB's byte order
    assert [n for n, _, _ in find_benchmark(tmp_path).pairs] == ["a1", "b2", "b10"]  # natural order


def test_a_key_on_one_side_only_stops_or_is_skipped(tmp_path, capsys):
    rng = np.random.default_rng(4)
    arrays = pairs_of(rng, ["k1", "k2", "k3", "k4"], 12, 10)
    test = tmp_path / "GoPro" / "test"
    write_lmdb_pair(test, ("input.lmdb", "target.lmdb"), arrays, skip_input={"k4"}, skip_target={"k2"})
    # A key listed in meta_info.txt that the database lacks counts as missing as well.
    with open(test / "target.lmdb" / "meta_info.txt", "a") as meta:
        meta.write("k5.png (12,10,3) 1\n")

    code = main(["eval", str(test), "--out", str(tmp_path / "a"), "--modes", "full", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "2 file(s)" in err[0] and "input.lmdb/k2" in err[0] and "target.lmdb/k4" in err[0]

    code, summary, rows = evaluate(test, tmp_path / "b", "--skip-missing")
    assert code == 0
    assert sorted(psnr_by_image(rows)) == ["k1", "k3"]
    assert summary["skipped_missing"] == 2
    assert summary["skipped_missing_files"] == ["input.lmdb/k2", "target.lmdb/k4"]


def test_a_corrupt_value_fails_that_pair_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(5)
    arrays = pairs_of(rng, ["p1", "p2", "p3"], 11, 14)
    write_lmdb_pair(tmp_path, ("input.lmdb", "target.lmdb"), arrays)
    env = lmdb.open(str(tmp_path / "input.lmdb"), map_size=64 * 1024 * 1024)
    with env.begin(write=True) as txn:
        whole = bytes(txn.get(b"p2"))
        txn.put(b"p2", whole[: len(whole) // 2])  # a PNG cut short: no IEND
    env.close()
    code, summary, rows = evaluate(tmp_path, tmp_path / "out")
    assert code == 1
    assert sorted(psnr_by_image(rows)) == ["p1", "p3"]
    assert len(summary["failures"]) == 1
    failure = summary["failures"][0]
    assert "\n" not in failure and failure.startswith("p2: ") and "input.lmdb/p2" in failure
    assert "truncated" in failure or "corrupt" in failure


def test_a_truncated_database_is_one_line_not_a_crash(tmp_path):
    """LMDB maps data.mdb: reading a page past the end of a cut file would kill the process (SIGBUS),
    so this runs in a child process, where a crash is a failure rather than the end of the suite."""
    rng = np.random.default_rng(6)
    arrays = pairs_of(rng, [f"x{i}" for i in range(6)], 40, 40)
    write_lmdb_pair(tmp_path / "test", ("input.lmdb", "target.lmdb"), arrays)
    data = tmp_path / "test" / "target.lmdb" / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    script = ("import sys\nfrom tlc.cli import main\n"
              f"sys.exit(main(['eval', {str(tmp_path)!r}, '--out', {str(tmp_path / 'out')!r}, '--modes', 'full', "
              "'--model', 'tiny-nafnet']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(err) == 1 and "target.lmdb" in err[0] and "truncated" in err[0]

    garbage = tmp_path / "test" / "input.lmdb" / "data.mdb"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(ImageError, match=r"input\.lmdb: cannot open this LMDB database \(MDB_INVALID"):
        find_benchmark(tmp_path)


def test_pixel_limit_applies_to_database_images(tmp_path):
    rng = np.random.default_rng(7)
    arrays = pairs_of(rng, ["q1", "q2"], 20, 30)  # 600 pixels each
    write_lmdb_pair(tmp_path, ("input.lmdb", "target.lmdb"), arrays)
    code, summary, rows = evaluate(tmp_path, tmp_path / "small", "--pixel-limit", "0.0005")  # 500 pixels
    assert code == 1 and rows == [] and len(summary["failures"]) == 2
    assert all("over the limit" in f and "input.lmdb/q" in f for f in summary["failures"])
    assert all("--pixel-limit" in f and "max_pixels" not in f for f in summary["failures"])  # CLI advice
    code, _, rows = evaluate(tmp_path, tmp_path / "enough", "--pixel-limit", "0.0006")
    assert code == 0 and len(rows) == 2


def test_meta_info_names_with_dots_keep_all_but_the_extension(tmp_path):
    rng = np.random.default_rng(8)
    arrays = pairs_of(rng, ["scene.v2_001", "scene.v2_002"], 6, 7)
    write_lmdb_pair(tmp_path, ("input.lmdb", "target.lmdb"), arrays)
    assert lmdb_keys(tmp_path / "target.lmdb") == ["scene.v2_001", "scene.v2_002"]
    (degraded,), _ = find_benchmark(tmp_path).load(1)
    assert np.array_equal(np.rint(degraded.pixels * 255), arrays["scene.v2_002"][0])
