"""Evaluation on paired folders: several modes on the same pairs, resumable, with a summary.

Results go to an output folder:

- ``per_image.csv``: one row per (image, mode): psnr (dB), ssim, seconds (model time only).
  Rows are appended and flushed as they are computed, so an interrupted run resumes: a rerun
  with the same folder and settings skips the (image, mode) rows already there.
- ``run.json``: the settings the rows were computed with; a rerun with other settings is refused
  rather than mixing results.
- ``summary.json``: per mode: mean PSNR and SSIM, images, seconds per image, peak memory, and the
  protocol, model and settings.
- with ``save_images``: ``images/<mode>/<name>.png``; with ``compare``: ``compare/<name>.png``,
  centre crops side by side in the order input | modes... | target.

Under torchrun (several processes, one or more machines) the pairs with work left are shared
round robin; process k appends its rows to ``per_image.rank<k>.csv`` and rank 0 merges them into
``per_image.csv`` in the single-process order (pairs, then modes) at the end, so the results
equal a single-process run. An interrupted run leaves those files; the next run, with any
number of processes, folds them in first and skips their rows. docs/distributed.md has more.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data
from .distributed import Group, shard
from .inference import RunSettings, restore
from .metrics import Protocol

CSV_FIELDS = ("image", "mode", "psnr", "ssim", "seconds")


class EvaluationError(RuntimeError):
    """The evaluation cannot start or go on (the message says why and what to do)."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides the numbers of an evaluation (recorded in run.json).

    Attributes:
        model: description of the model (registry name or weights path).
        modes: modes to run, among "full", "tiles", "tlc".
        protocol: how outputs are scored.
        train_size, base_size: TLC setting, (H, W) in pixels.
        fast: the approximate fast_imp pooling for TLC.
        functional: TLC also converts global ops found at run time (``convert(functional=...)``, default True).
        tile, overlap: tiling for mode "tiles".
        device, dtype: where and in what precision the model runs.
    """

    model: str
    modes: tuple[str, ...]
    protocol: Protocol
    train_size: tuple[int, int]
    base_size: tuple[int, int]
    fast: bool = False
    functional: bool = True
    tile: int = 256
    overlap: int = 32
    device: str = "cpu"
    dtype: str = "float32"

    def run_settings(self, mode: str) -> RunSettings:
        return RunSettings(mode=mode, tile=self.tile, overlap=self.overlap, device=self.device, dtype=self.dtype)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["modes"] = list(self.modes)
        return record


@dataclass
class ModeSummary:
    """Aggregates of one mode.

    seconds_per_image is the mean model time per image (the forward pass, tiling included;
    reading, scoring and writing excluded), each image timed in the process that ran it: a
    latency, not wall time divided by images. peak_memory_mib: CUDA peak allocated on a GPU, else
    peak resident memory of the process; with several processes, the largest of any of them.
    """

    images: int = 0
    psnr: float = float("nan")
    ssim: float = float("nan")
    seconds_per_image: float = float("nan")
    peak_memory_mib: float | None = None


@dataclass
class EvalResult:
    settings: EvalSettings
    modes: dict[str, ModeSummary]
    resumed_rows: int = 0
    failures: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The per-mode results as an aligned text table."""
        lines = [f"{'mode':<8}{'images':>8}{'PSNR (dB)':>12}{'SSIM':>10}{'s/image':>10}{'peak MiB':>10}"]
        for mode, s in self.modes.items():
            memory = f"{s.peak_memory_mib:.0f}" if s.peak_memory_mib is not None else "-"
            lines.append(f"{mode:<8}{s.images:>8}{s.psnr:>12.4f}{s.ssim:>10.4f}{s.seconds_per_image:>10.3f}{memory:>10}")
        return "\n".join(lines)


class PeakMemory:
    """Peak memory while the block runs: CUDA peak allocated, or resident memory sampled on Linux."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.peak_mib: float | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif _resident_mib() is not None:
            self.peak_mib = _resident_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mib = max(self.peak_mib or 0.0, _resident_mib() or 0.0)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        elif self.peak_mib is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, _resident_mib() or 0.0)


def _resident_mib() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _read_rows(path: Path) -> list[dict]:
    """The complete rows of a per_image.csv (a row cut short by an interruption is dropped)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != CSV_FIELDS:
            raise EvaluationError(f"{path} does not look like a tlc per_image.csv; use another --out folder")
        rows = list(reader)
    return [r for r in rows if all(r.get(k) not in (None, "") for k in CSV_FIELDS) and _is_number(r["seconds"])]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rank_files(out_dir: Path) -> list[Path]:
    """The per-process row files (per_image.rank<k>.csv) of a run with several processes, by rank."""
    found = []
    for path in out_dir.glob("per_image.rank*.csv"):
        rank = path.name[len("per_image.rank"):-len(".csv")]
        if rank.isdigit() and path.is_file():
            found.append((int(rank), path))
    return [path for _, path in sorted(found)]


def _row_order(pairs: data.PairedSet, modes: tuple[str, ...]) -> Callable[[tuple[int, dict]], tuple]:
    """Sort key for (position, row): the single-process order (pairs in order, then modes in
    order); rows of images or modes outside this run keep their relative order at the end."""
    pair_index = {name: i for i, (name, _, _) in enumerate(pairs.pairs)}
    mode_index = {mode: i for i, mode in enumerate(modes)}

    def key(item: tuple[int, dict]) -> tuple:
        position, row = item
        if row["image"] not in pair_index:
            return (1, 0, 0, position)
        return (0, pair_index[row["image"]], mode_index.get(row["mode"], len(modes)), position)

    return key


def _merge_rows(out_dir: Path, order: Callable[[tuple[int, dict]], tuple]) -> tuple[list[dict], dict[Path, int]]:
    """Fold the per-process row files into per_image.csv, in ``order``, and remove them.

    per_image.csv is rewritten atomically with its complete rows only (so appending after an
    interruption never glues a new row onto a half-written one), then the process files are
    removed: a crash in between leaves duplicates, and the first copy of an (image, mode) wins.

    Returns:
        the rows now in per_image.csv, and the number of complete rows read from each process file.
    """
    csv_path = out_dir / "per_image.csv"
    rows = _read_rows(csv_path)
    seen = {(r["image"], r["mode"]) for r in rows}
    per_file = {}
    rank_files = _rank_files(out_dir)
    for path in rank_files:
        found = _read_rows(path)
        per_file[path] = len(found)
        for r in found:
            if (r["image"], r["mode"]) not in seen:
                seen.add((r["image"], r["mode"]))
                rows.append(r)
    rows = [r for _, r in sorted(enumerate(rows), key=order)]
    if csv_path.exists() or rank_files:
        tmp = csv_path.with_name(f".{csv_path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, csv_path)
    for path in rank_files:
        path.unlink()
    return rows, per_file


def _check_resume(out_dir: Path, settings: EvalSettings) -> None:
    """Write run.json, or check that an existing one has the same settings."""
    record = settings.to_dict()
    path = out_dir / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        comparable = {k: v for k, v in previous.items() if k != "modes"}
        current = {k: v for k, v in json.loads(json.dumps(record)).items() if k != "modes"}
        if comparable != current:
            changed = sorted(k for k in current if comparable.get(k) != current[k])
            raise EvaluationError(
                f"{out_dir} holds results computed with other settings ({', '.join(changed)} differ); "
                "use another --out folder or delete it"
            )
    _write_text(path, json.dumps(record, indent=2))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return pixels[top : top + size, left : left + size]


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def side_by_side(panels: list[np.ndarray], crop: int = 256, gap: int = 4) -> np.ndarray:
    """Centre crops of H x W x C float images, left to right, separated by white gaps."""
    crops = [_as_rgb(_centre_crop(p, crop)) for p in panels]
    height = max(c.shape[0] for c in crops)
    columns = []
    for i, c in enumerate(crops):
        padded = np.ones((height, c.shape[1], 3), np.float32)
        padded[: c.shape[0]] = c
        columns.append(padded)
        if i < len(crops) - 1:
            columns.append(np.ones((height, gap, 3), np.float32))
    return np.concatenate(columns, axis=1)


@dataclass
class _Plan:
    """What rank 0 decides before the work starts, shared with every process.

    Attributes:
        names: the pair names, in order (each process checks it found the same pairs).
        done: (image, mode) rows already in per_image.csv.
        pending: (pair index, compare strip still needed) of the pairs with work left, in order.
        resumed: rows of this run's pairs and modes already done.
        peaks: peak memory per mode recorded by an earlier run into the folder (MiB or None).
        token: written to SHARED_CHECK by rank 0; each process reads it back to prove that it
            sees the same folder (None for a single process).
    """

    names: list[str]
    done: set[tuple[str, str]]
    pending: list[tuple[int, bool]]
    resumed: int
    peaks: dict[str, float | None]
    token: str | None = None


SHARED_CHECK = ".tlc-shared-check"


def _prepare(out_dir: Path, pairs: data.PairedSet, settings: EvalSettings, compare: bool, world_size: int,
             log: Callable[[str], None]) -> _Plan:
    """Rank 0: check run.json, fold in rows left by an interrupted run, and plan the work left."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(out_dir, settings)
    leftovers = _rank_files(out_dir)
    rows, per_file = _merge_rows(out_dir, _row_order(pairs, settings.modes))
    if leftovers:
        log(f"merged {sum(per_file.values())} row(s) left by an interrupted run with several processes "
            f"({', '.join(p.name for p in leftovers)}) into per_image.csv")
    done = {(r["image"], r["mode"]) for r in rows}
    names = [name for name, _, _ in pairs.pairs]
    resumed = sum(1 for name in names for mode in settings.modes if (name, mode) in done)
    if resumed:
        total = len(names) * len(settings.modes)
        log(f"resuming: {resumed} of {total} (image, mode) rows already in {out_dir / 'per_image.csv'}, skipping them")
    pending = []
    for index, name in enumerate(names):
        need_strip = compare and not (out_dir / "compare" / f"{name}.png").exists()
        if need_strip or any((name, mode) not in done for mode in settings.modes):
            pending.append((index, need_strip))
    token = None
    if world_size > 1:
        token = uuid.uuid4().hex
        _write_text(out_dir / SHARED_CHECK, token)
    return _Plan(names, done, pending, resumed, _previous_peaks(out_dir / "summary.json", settings.modes), token)


def _check_plan(plan: _Plan, pairs: data.PairedSet, out_dir: Path) -> None:
    """A process other than rank 0: does it see the same pairs and the same results folder?"""
    if plan.names != [name for name, _, _ in pairs.pairs]:
        raise EvaluationError("this process found other pairs in the dataset than rank 0 did; "
                              "every node needs the same dataset")
    try:
        seen = (out_dir / SHARED_CHECK).read_text()
    except OSError:
        seen = None
    if seen != plan.token:
        raise EvaluationError(f"{out_dir} is not the folder rank 0 writes to; with several nodes, --out must be "
                              "on a filesystem they all share")


def _evaluate_share(
    models: dict[str, nn.Module],
    pairs: data.PairedSet,
    settings: EvalSettings,
    out_dir: Path,
    plan: _Plan,
    share: list[tuple[int, bool]],
    csv_path: Path,
    *,
    save_images: bool,
    progress: Callable[[Iterable], Iterable],
) -> tuple[dict[str, float | None], list[tuple[int, str]], int]:
    """Run this process's pairs, appending a row to ``csv_path`` per (image, mode) as it goes.

    Returns:
        peak memory per mode in MiB (None where not measured), the failures as (pair index,
        message), and the number of rows written.
    """
    peaks: dict[str, float | None] = {mode: None for mode in settings.modes}
    failures: list[tuple[int, str]] = []
    written = 0
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new_file:
            writer.writeheader()
            f.flush()
        for index, need_images in progress(share):
            name, input_path, target_path = pairs.pairs[index]
            todo = [m for m in settings.modes if (name, m) not in plan.done]
            try:
                degraded, target = data.read_image(input_path), data.read_image(target_path)
            except data.ImageError as err:
                failures.append((index, f"{name}: {err}"))
                continue
            if degraded.pixels.shape[:2] != target.pixels.shape[:2]:
                failures.append((index, f"{name}: input {degraded.pixels.shape[:2]} and target "
                                        f"{target.pixels.shape[:2]} differ in size"))
                continue
            x = data.to_model_input(degraded)
            outputs = {}
            for mode in settings.modes:
                if mode not in todo and not need_images:
                    continue
                try:
                    with PeakMemory(settings.device) as memory:
                        start = time.perf_counter()
                        restored = restore(models[mode], x, settings.run_settings(mode))
                        seconds = time.perf_counter() - start
                except (RuntimeError, MemoryError) as err:  # out of memory and the like: skip, go on
                    failures.append((index, f"{name} [{mode}]: {type(err).__name__}: {str(err).splitlines()[0]}"))
                    continue
                if memory.peak_mib is not None:
                    peaks[mode] = max(peaks[mode] or 0.0, memory.peak_mib)
                pixels, _ = data.from_model_output(restored, degraded)
                outputs[mode] = pixels
                if mode in todo:
                    value_psnr, value_ssim = settings.protocol.score(pixels, target.pixels)
                    writer.writerow({"image": name, "mode": mode, "psnr": f"{value_psnr:.6f}",
                                     "ssim": f"{value_ssim:.6f}", "seconds": f"{seconds:.4f}"})
                    f.flush()
                    written += 1
                if save_images:
                    path = out_dir / "images" / mode / f"{name}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    data.write_image(path, pixels, bit_depth=8, overwrite=True)
            if need_images and outputs:
                strip = side_by_side([degraded.pixels, *outputs.values(), target.pixels])
                path = out_dir / "compare" / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                data.write_image(path, strip, bit_depth=8, overwrite=True)
    return peaks, failures, written


def _finish(
    out_dir: Path,
    pairs: data.PairedSet,
    settings: EvalSettings,
    plan: _Plan,
    reports: list[tuple[dict, list, int]],
    *,
    compare: bool,
    world_size: int,
    log: Callable[[str], None],
) -> EvalResult:
    """Rank 0: merge every process's rows into per_image.csv and write summary.json."""
    rows, per_file = _merge_rows(out_dir, _row_order(pairs, settings.modes))
    if world_size > 1:
        for rank, (_, _, written) in enumerate(reports):
            path = out_dir / f"per_image.rank{rank}.csv"
            if per_file.get(path, 0) < written:
                raise EvaluationError(
                    f"rank {rank} wrote {written} row(s) but {per_file.get(path, 0)} are readable in {path}; "
                    "with several nodes, --out must be on a filesystem they all share")
    peaks = dict(plan.peaks)
    for rank_peaks, _, _ in reports:  # peak memory: the largest of any process
        for mode, value in rank_peaks.items():
            if value is not None:
                peaks[mode] = max(peaks.get(mode) or 0.0, value)
    failures = [text for _, text in sorted((f for _, rank_failures, _ in reports for f in rank_failures),
                                           key=lambda f: f[0])]
    for failure in failures:
        log(f"failed: {failure}")
    result = EvalResult(settings, _summarise(rows, set(plan.names), settings.modes, peaks), plan.resumed, failures)
    summary = {
        "modes": {mode: asdict(s) for mode, s in result.modes.items()},
        "protocol": asdict(settings.protocol),
        "model": settings.model,
        "settings": settings.to_dict(),
        "pairs": len(pairs.pairs),
        "layout": pairs.layout,
        "processes": world_size,
        "failures": failures,
        "compare_order": ["input", *settings.modes, "target"] if compare else None,
    }
    _write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return result


def evaluate(
    models: dict[str, nn.Module],
    pairs: data.PairedSet,
    settings: EvalSettings,
    out_dir: Path,
    *,
    save_images: bool = False,
    compare: bool = False,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
    log: Callable[[str], None] = print,
    group: Group | None = None,
) -> EvalResult:
    """Evaluate each mode's model on every pair and write the results to ``out_dir``.

    With several processes (``group`` from :func:`tlc.distributed.process_group`, under torchrun)
    every process calls this with the same arguments: rank 0 checks run.json, folds in rows left
    by an interrupted run and plans the pairs with work left; they are shared round robin; each
    process appends its rows to ``per_image.rank<k>.csv``; rank 0 then merges them into
    per_image.csv in the single-process order and writes summary.json. Every process returns the
    same result. A failure in one process stops all of them with rank 0 naming it; the rows
    written so far are kept, and a rerun, with any number of processes, resumes.

    Args:
        models: mode -> model to run for it (the TLC mode's model already converted), on
            ``settings.device`` in ``settings.dtype``.
        pairs: the paired set to score.
        settings: recorded in run.json; a rerun into the same folder must use the same.
        out_dir: results folder (created); shared by all processes.
        save_images, compare: also write restored images / comparison strips.
        progress: wraps the iteration over rank 0's pairs (e.g. a tqdm progress bar).
        log: where rank 0's resume and failure notes go (other ranks log nothing).
        group: the processes of the run; None: this process alone.

    Raises:
        EvaluationError: the folder holds other settings (or, seen from a process other than
            rank 0, is not the folder rank 0 writes to).
        tlc.distributed.DistributedError: (rank 0) another process failed, naming it and its
            error; (any rank) the others stopped answering within the group's timeout.
        tlc.distributed.PeerFailed: (ranks other than 0) another process failed; rank 0 says which.
    """
    group = group or Group()
    distributed = group.world_size > 1
    plan = group.run_on_rank0(lambda: _prepare(out_dir, pairs, settings, compare, group.world_size, log),
                              "checking the results folder")
    if distributed:
        error = None
        if group.rank != 0:
            try:
                _check_plan(plan, pairs, out_dir)
            except EvaluationError as err:
                error = err
        group.agree(error, "checking that every process sees the same files")
        if group.rank == 0:
            (out_dir / SHARED_CHECK).unlink(missing_ok=True)
    share = shard(plan.pending, group.rank, group.world_size)
    csv_path = out_dir / (f"per_image.rank{group.rank}.csv" if distributed else "per_image.csv")
    report, error = None, None
    try:
        report = _evaluate_share(models, pairs, settings, out_dir, plan, share, csv_path, save_images=save_images,
                                 progress=progress if group.rank == 0 else (lambda it: it))
    except Exception as err:  # shared with the others below: nobody waits for a process that gave up
        if not distributed:
            raise
        error = err
    group.agree(error, "evaluating its pairs")
    reports = group.all_gather(report, "collecting the results")
    return group.run_on_rank0(
        lambda: _finish(out_dir, pairs, settings, plan, reports, compare=compare, world_size=group.world_size,
                        log=log),
        "merging the results")


def _previous_peaks(path: Path, modes: tuple[str, ...]) -> dict[str, float | None]:
    """Peak memory recorded by an earlier run into the same folder (kept when resuming)."""
    try:
        previous = json.loads(path.read_text())["modes"]
        return {mode: previous.get(mode, {}).get("peak_memory_mib") for mode in modes}
    except (OSError, ValueError, KeyError, AttributeError):
        return {mode: None for mode in modes}


def _summarise(rows: list[dict], names: set[str], modes: tuple[str, ...], peaks: dict) -> dict[str, ModeSummary]:
    summaries = {}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode and r["image"] in names]
        if not mine:
            summaries[mode] = ModeSummary(peak_memory_mib=peaks.get(mode))
            continue
        summaries[mode] = ModeSummary(
            images=len(mine),
            psnr=float(np.mean([float(r["psnr"]) for r in mine])),
            ssim=float(np.mean([float(r["ssim"]) for r in mine])),
            seconds_per_image=float(np.mean([float(r["seconds"]) for r in mine])),
            peak_memory_mib=peaks.get(mode),
        )
    return summaries
