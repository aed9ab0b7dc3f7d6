"""`tlc eval` under torchrun: 2 CPU processes (gloo) give the single-process results, a failed
process stops the run with rank 0 naming it, and reruns with 2 or 1 processes resume.

The launches are real (`python -m torch.distributed.run --standalone --nproc_per_node=2 -m tlc
eval ...`) on 5 small pairs of odd sizes with the bundled tiny-nafnet; one thread per process.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tlc import io as tlc_io
from tlc.cli import main
from tlc.eval.distributed import DistributedError, Launch, detect_launch, process_group, shard

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                      "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID")
SIZES = [(81, 97), (64, 75), (99, 70), (57, 88), (90, 90)]  # pairs img0..img4
MODEL = ("--model", "tiny-nafnet", "--modes", "full,tlc")
SENTINEL = "9.8765"  # a seconds value no real run writes: proves a row was kept, not recomputed


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """5 pairs: smooth colour patterns with noise growing left to right."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        yy, xx = np.mgrid[0:h, 0:w] / 20.0
        clean = np.stack([0.5 + 0.4 * np.sin(xx * (c + 1) + yy) for c in range(3)], -1).astype(np.float32)
        noise = rng.normal(0, 0.1, clean.shape) * (xx / xx.max())[..., None]
        tlc_io.write_image(root / "target" / f"img{i}.png", clean)
        tlc_io.write_image(root / "input" / f"img{i}.png", np.clip(clean + noise, 0, 1).astype(np.float32))
    return root


@pytest.fixture
def single_process_env(monkeypatch):
    """In-process runs as one process with one thread, like each torchrun worker."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def scores(table):
    return [(r["image"], r["mode"], r["psnr"], r["ssim"]) for r in table]


@pytest.fixture(scope="module")
def reference(pairs, tmp_path_factory):
    """A single-process run: its rows and summary."""
    out = tmp_path_factory.mktemp("reference") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = {name: os.environ.pop(name) for name in TORCHRUN_VARIABLES if name in os.environ}
    try:
        assert main(["eval", str(pairs), *MODEL, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
        os.environ.update(saved)
    reference_rows = rows(out / "per_image.csv")
    in_order = [(f"img{i}", mode) for i in range(5) for mode in ("full", "tlc")]
    assert [(r["image"], r["mode"]) for r in reference_rows] == in_order
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["tlc"]["psnr"] != summary["modes"]["full"]["psnr"]
    return reference_rows, summary


def torchrun(pairs, out, *extra, nproc=2):
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tlc", "eval", str(pairs), *MODEL, "--out", str(out), *extra]
    start = time.monotonic()
    # The timeout only guards the test suite: a run that hangs fails here instead of stalling it.
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    return done, time.monotonic() - start


@pytest.fixture(scope="module")
def interrupted(pairs, reference, tmp_path_factory):
    """A 2-process run in which rank 1 fails at once (a folder sits where its row file goes)."""
    out = tmp_path_factory.mktemp("interrupted") / "out"
    (out / "per_image.rank1.csv").mkdir(parents=True)
    done, seconds = torchrun(pairs, out, "--sync-timeout", "120")
    return out, done, seconds


def test_a_failed_process_stops_the_run_and_rank_0_names_it(interrupted, reference):
    out, done, seconds = interrupted
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("tlc: error:")]
    assert len(errors) == 1  # rank 0 speaks for the run; rank 1 stops quietly
    assert "rank 1 failed while evaluating its pairs: IsADirectoryError" in errors[0]
    assert "rerun to resume" in errors[0]
    assert seconds < 120  # rank 0 did not sit out its timeout waiting for rank 1
    # Rank 0 finished its share (img0, img2, img4: round robin) and kept its rows.
    kept = rows(out / "per_image.rank0.csv")
    expected = [r for r in reference[0] if r["image"] in ("img0", "img2", "img4")]
    assert scores(kept) == scores(expected)
    assert not (out / "summary.json").exists() and not (out / "per_image.csv").exists()
    assert "PSNR" not in done.stdout


def _with_sentinel_seconds(path):
    kept = rows(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows({**r, "seconds": SENTINEL} for r in kept)
    return {(r["image"], r["mode"]) for r in kept}


def test_resume_with_two_processes_equals_a_single_process_run(pairs, interrupted, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(interrupted[0], out)
    (out / "per_image.rank1.csv").rmdir()
    kept = _with_sentinel_seconds(out / "per_image.rank0.csv")
    done, _ = torchrun(pairs, out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "merged 6 row(s) left by an interrupted run" in done.stderr
    assert "resuming: 6 of 10" in done.stderr
    # Both processes computed (img1 on rank 0, img3 on rank 1); rank 0 printed the only table.
    assert done.stdout.count("PSNR (dB)") == 1 and done.stderr.count("TLC: 7 global ops made local") == 1
    merged = rows(out / "per_image.csv")
    assert scores(merged) == scores(reference[0])  # same rows, same order, every digit
    assert {(r["image"], r["mode"]) for r in merged if r["seconds"] == SENTINEL} == kept
    summary = json.loads((out / "summary.json").read_text())
    for mode in ("full", "tlc"):
        mine, theirs = summary["modes"][mode], reference[1]["modes"][mode]
        assert (mine["images"], mine["psnr"], mine["ssim"]) == (theirs["images"], theirs["psnr"], theirs["ssim"])
        assert mine["peak_memory_mib"] > 0
    assert summary["processes"] == 2 and summary["failures"] == []
    assert sorted(p.name for p in out.iterdir()) == ["per_image.csv", "run.json", "summary.json"]


def test_resume_with_one_process_after_two_and_three(pairs, interrupted, reference, tmp_path, single_process_env,
                                                     capsys):
    """Rows left by a 2-process run and by an older 3-process one (with a half-written row)."""
    out = tmp_path / "out"
    shutil.copytree(interrupted[0], out)
    (out / "per_image.rank1.csv").rmdir()
    kept = _with_sentinel_seconds(out / "per_image.rank0.csv")
    img1 = [r for r in reference[0] if r["image"] == "img1"]
    (out / "per_image.rank2.csv").write_text(
        "image,mode,psnr,ssim,seconds\n"
        + "".join(f"{r['image']},{r['mode']},{r['psnr']},{r['ssim']},{SENTINEL}\n" for r in img1)
        + "img3,full,33.1")
    kept |= {("img1", "full"), ("img1", "tlc")}
    assert main(["eval", str(pairs), *MODEL, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "merged 8 row(s)" in err and "per_image.rank0.csv, per_image.rank2.csv" in err
    assert "resuming: 8 of 10" in err
    merged = rows(out / "per_image.csv")
    assert scores(merged) == scores(reference[0])
    assert {(r["image"], r["mode"]) for r in merged if r["seconds"] == SENTINEL} == kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["tlc"]["psnr"] == reference[1]["modes"]["tlc"]["psnr"]
    assert summary["processes"] == 1
    assert not list(out.glob("per_image.rank*"))


def test_run_json_guard_applies_to_leftover_rows(pairs, interrupted, tmp_path, single_process_env, capsys):
    out = tmp_path / "out"
    shutil.copytree(interrupted[0], out)
    assert main(["eval", str(pairs), *MODEL, "--out", str(out), "--y-channel"]) == 2
    assert "other settings (protocol differ)" in capsys.readouterr().err
    assert (out / "per_image.rank0.csv").exists()  # nothing merged or lost


# ----------------------------------------------------------------------------------------------
# The pieces, without launching


def test_detect_launch_reads_torchruns_variables():
    assert detect_launch({}) == Launch(0, 1, 0) and not detect_launch({}).distributed
    assert detect_launch({"WORLD_SIZE": "1", "RANK": "0"}) == Launch()
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    assert detect_launch(env) == Launch(rank=3, world_size=4, local_rank=1) and detect_launch(env).distributed
    for broken, message in [
        ({**env, "RANK": "x"}, "RANK='x' is not an integer"),
        ({**env, "RANK": "4"}, "RANK=4 is outside 0..3"),
        ({k: v for k, v in env.items() if k != "RANK"}, "RANK is not"),
        ({k: v for k, v in env.items() if k != "MASTER_ADDR"}, "MASTER_ADDR is not"),
        ({**env, "WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ]:
        with pytest.raises(DistributedError, match=message):
            detect_launch(broken)


def test_shards_are_disjoint_cover_everything_and_balanced():
    for n in range(10):
        items = list(range(n))
        for world in (1, 2, 3, 4):
            shares = [shard(items, rank, world) for rank in range(world)]
            assert sorted(x for s in shares for x in s) == items
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shard(list("abcde"), 1, 2) == ["b", "d"]
    with pytest.raises(ValueError):
        shard([1], 2, 2)


def test_a_missing_peer_fails_after_the_timeout(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    start = time.monotonic()
    with pytest.raises(DistributedError, match="rank 0: could not join the other 1 process"):
        with process_group(Launch(rank=0, world_size=2), timeout_s=1):
            pass
    assert time.monotonic() - start < 30
    assert not torch.distributed.is_initialized()


def test_bad_launch_variables_are_one_line_errors(pairs, tmp_path, single_process_env, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", str(pairs), *MODEL, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tlc: error: WORLD_SIZE=2 is set but RANK is not; launch several processes with torchrun"]
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["eval", str(pairs), *MODEL, "--out", str(tmp_path / "r"), "--sync-timeout", "0"]) == 2
    assert "--sync-timeout must be a positive" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
