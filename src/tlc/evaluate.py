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
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data
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
        tile, overlap: tiling for mode "tiles".
        device, dtype: where and in what precision the model runs.
    """

    model: str
    modes: tuple[str, ...]
    protocol: Protocol
    train_size: tuple[int, int]
    base_size: tuple[int, int]
    fast: bool = False
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
    """Aggregates of one mode. Memory in MiB: CUDA peak allocated on a GPU, else peak resident."""

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


def _repair(path: Path) -> list[dict]:
    """Rewrite per_image.csv with its complete rows only, so appending after an interruption
    never glues a new row onto a half-written one."""
    rows = _read_rows(path)
    if path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    return rows


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
) -> EvalResult:
    """Evaluate each mode's model on every pair and write the results to ``out_dir``.

    Args:
        models: mode -> model to run for it (the TLC mode's model already converted), on
            ``settings.device`` in ``settings.dtype``.
        pairs: the paired set to score.
        settings: recorded in run.json; a rerun into the same folder must use the same.
        out_dir: results folder (created).
        save_images, compare: also write restored images / comparison strips.
        progress: wraps the iteration over pairs (e.g. a tqdm progress bar).
        log: where resume and failure notes go.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(out_dir, settings)
    csv_path = out_dir / "per_image.csv"
    rows = _repair(csv_path)
    done = {(r["image"], r["mode"]) for r in rows}
    names = {name for name, _, _ in pairs.pairs}
    resumed = sum(1 for key in done if key[0] in names and key[1] in settings.modes)
    if resumed:
        total = len(pairs.pairs) * len(settings.modes)
        log(f"resuming: {resumed} of {total} (image, mode) rows already in {csv_path}, skipping them")
    peaks = _previous_peaks(out_dir / "summary.json", settings.modes)
    failures: list[str] = []
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new_file:
            writer.writeheader()
        for name, input_path, target_path in progress(pairs.pairs):
            todo = [m for m in settings.modes if (name, m) not in done]
            need_images = compare and not (out_dir / "compare" / f"{name}.png").exists()
            if not todo and not need_images:
                continue
            try:
                degraded, target = data.read_image(input_path), data.read_image(target_path)
            except data.ImageError as err:
                failures.append(f"{name}: {err}")
                continue
            if degraded.pixels.shape[:2] != target.pixels.shape[:2]:
                failures.append(f"{name}: input {degraded.pixels.shape[:2]} and target {target.pixels.shape[:2]} differ in size")
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
                    failures.append(f"{name} [{mode}]: {type(err).__name__}: {str(err).splitlines()[0]}")
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
                if save_images:
                    path = out_dir / "images" / mode / f"{name}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    data.write_image(path, pixels, bit_depth=8, overwrite=True)
            if need_images and outputs:
                strip = side_by_side([degraded.pixels, *outputs.values(), target.pixels])
                path = out_dir / "compare" / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                data.write_image(path, strip, bit_depth=8, overwrite=True)
    for failure in failures:
        log(f"failed: {failure}")
    result = EvalResult(settings, _summarise(_read_rows(csv_path), names, settings.modes, peaks), resumed, failures)
    summary = {
        "modes": {mode: asdict(s) for mode, s in result.modes.items()},
        "protocol": asdict(settings.protocol),
        "model": settings.model,
        "settings": settings.to_dict(),
        "pairs": len(pairs.pairs),
        "layout": pairs.layout,
        "failures": failures,
        "compare_order": ["input", *settings.modes, "target"] if compare else None,
    }
    _write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return result


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
