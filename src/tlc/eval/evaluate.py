"""Evaluation on paired folders: several modes on the same pairs, resumable, with a summary.

Results go to an output folder:

- ``per_image.csv``: one row per (image, mode): psnr (dB), ssim, seconds (model time only).
  Rows are appended and flushed as they are computed, so an interrupted run resumes: a rerun
  with the same folder and settings skips the (image, mode) rows already there.
- ``run.json``: the settings the rows were computed with; a rerun with other settings is refused
  rather than mixing results.
- ``summary.json``: per mode: mean PSNR and SSIM, images, seconds per image, peak memory, and the
  protocol, model and settings; the dataset's unmatched files (``skipped_missing``: how many,
  ``skipped_missing_files``: their names), found with ``find_pairs(strict=False)``;
  the benchmark, per-subset means (HIDE's close-ups and long shots,
  DPDD's indoor and outdoor scenes) and the published numbers where given.
- with ``save_images``: ``images/<mode>/<name>.png``; with ``compare``: ``compare/<name>.png``,
  centre crops side by side in the fixed order input | full | tiles | tlc | target (the modes
  evaluated), each under a label with its name and PSNR/SSIM against the target.
- with ``report``: ``report.html``, one self-contained page (summary, sortable per-image table,
  PSNR chart, a split-view viewer), and ``views/<name>/``: the viewer's centre crops of the first
  pairs, kept so that a resumed run need not restore them again.

Under torchrun (several processes, one or more machines) the pairs with work left are shared
round robin; process k appends its rows to ``per_image.rank<k>.csv`` and rank 0 merges them into
``per_image.csv`` in the single-process order (pairs, then modes) at the end, so the results
equal a single-process run. An interrupted run leaves those files; the next run, with any
number of processes, folds them in first and skips their rows. docs/distributed.md has more.
"""

from __future__ import annotations

import csv
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import io
from .._util import one_line, write_atomically
from ..io import PairedSet
from ..run import RunSettings, restore
from .distributed import Group, shard
from .memory import PeakMemory
from .metrics import Protocol
from .records import (
    CSV_FIELDS,
    EvaluationError,
    check_resume,
    merge_rows,
    previous_peaks,
    rank_files,
    row_order,
)
from .ablation import ablation_text, mode_kind, window_ablation
from .report import centre_crop, panel_label, panel_order, side_by_side, summarise
from .report_html import VIEW_CROP, VIEW_IMAGES, build_report, load_views, views_complete
from .summary import ModeSummary


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
        return RunSettings(mode=mode_kind(mode), tile=self.tile, overlap=self.overlap, device=self.device, dtype=self.dtype)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["modes"] = list(self.modes)
        return record



@dataclass
class EvalResult:
    """What an evaluation found.

    Attributes:
        settings: what the numbers were computed with.
        modes: mode -> means over every pair.
        resumed_rows: rows an earlier run had already written.
        failures: one line per pair or (pair, mode) that could not be scored.
        benchmark: the benchmark evaluated (e.g. "hide"), or None.
        subsets: subset -> mode -> means over that subset's pairs.
        published: mode -> the published score it is compared with: {"psnr", "ssim", "source"}
            ("full" against the number without TLC, "tlc" against the one with).
    """

    settings: EvalSettings
    modes: dict[str, ModeSummary]
    resumed_rows: int = 0
    failures: list[str] = field(default_factory=list)
    benchmark: str | None = None
    subsets: dict[str, dict[str, ModeSummary]] = field(default_factory=dict)
    published: dict[str, dict] = field(default_factory=dict)
    ablation: dict | None = None

    def table(self) -> str:
        """The per-mode results as an aligned text table: the published PSNR/SSIM beside the
        measured ones where known, then the means of each subset."""
        width = max([8, *(len(m) + 1 for m in self.modes)])
        head = f"{'mode':<{width}}{'images':>8}{'PSNR (dB)':>12}{'SSIM':>10}{'s/image':>10}{'peak MiB':>10}"
        maes = any(s.mae is not None for s in self.modes.values())
        if maes:
            head += f"{'MAE':>10}"
        if self.published:
            head += f"{'published PSNR':>16}{'SSIM':>8}"
        lines = [head]
        for mode, s in self.modes.items():
            memory = f"{s.peak_memory_mib:.0f}" if s.peak_memory_mib is not None else "-"
            line = f"{mode:<{width}}{s.images:>8}{s.psnr:>12.4f}{s.ssim:>10.4f}{s.seconds_per_image:>10.3f}{memory:>10}"
            if maes:
                line += f"{s.mae:>10.5f}" if s.mae is not None else f"{'-':>10}"
            if mode in self.published:
                ref = self.published[mode]
                ssim = f"{ref['ssim']:.4f}" if ref.get("ssim") is not None else "-"
                line += f"{ref['psnr']:>16.2f}{ssim:>8}  ({ref.get('source', '')})"
            elif self.published:
                line += f"{'-':>16}{'-':>8}"
            lines.append(line)
        if self.subsets:
            lines.append(f"{'subset':<16}{'mode':<8}{'images':>8}{'PSNR (dB)':>12}{'SSIM':>10}")
            for subset, per_mode in self.subsets.items():
                for mode, s in per_mode.items():
                    lines.append(f"{subset:<16}{mode:<8}{s.images:>8}{s.psnr:>12.4f}{s.ssim:>10.4f}")
        if self.ablation is not None:
            lines.append(ablation_text(self.ablation))
        return "\n".join(lines)


@dataclass
class _Plan:
    """What rank 0 decides before the work starts, shared with every process.

    Attributes:
        names: the pair names, in order (each process checks it found the same pairs).
        done: (image, mode) rows already in per_image.csv.
        pending: (pair index, compare strip still needed, report views still needed) of the
            pairs with work left, in order.
        resumed: rows of this run's pairs and modes already done.
        peaks: peak memory per mode recorded by an earlier run into the folder (MiB or None).
        token: written to SHARED_CHECK by rank 0; each process reads it back to prove that it
            sees the same folder (None for a single process).
    """

    names: list[str]
    done: set[tuple[str, str]]
    pending: list[tuple[int, bool, bool]]
    resumed: int
    peaks: dict[str, float | None]
    token: str | None = None


SHARED_CHECK = ".tlc-shared-check"


def _prepare(out_dir: Path, pairs: PairedSet, settings: EvalSettings, compare: bool, report: bool,
             world_size: int, log: Callable[[str], None]) -> _Plan:
    """Rank 0: check run.json, fold in rows left by an interrupted run, and plan the work left."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check_resume(out_dir, settings.to_dict())
    leftovers = rank_files(out_dir)
    rows, per_file = merge_rows(out_dir, row_order(pairs, settings.modes))
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
        need_views = report and index < VIEW_IMAGES and not views_complete(out_dir, name, settings.modes)
        if need_strip or need_views or any((name, mode) not in done for mode in settings.modes):
            pending.append((index, need_strip, need_views))
    token = None
    if world_size > 1:
        token = uuid.uuid4().hex
        write_atomically(out_dir / SHARED_CHECK, token)
    return _Plan(names, done, pending, resumed, previous_peaks(out_dir / "summary.json", settings.modes), token)


def _check_plan(plan: _Plan, pairs: PairedSet, out_dir: Path) -> None:
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
    pairs: PairedSet,
    settings: EvalSettings,
    out_dir: Path,
    plan: _Plan,
    share: list[tuple[int, bool, bool]],
    csv_path: Path,
    *,
    save_images: bool,
    progress: Callable[[Iterable], Iterable],
    read: Callable[[Path], io.Image],
) -> tuple[dict[str, float | None], list[tuple[int, str]], int]:
    """Run this process's pairs, appending a row to ``csv_path`` per (image, mode) as it goes.

    Returns:
        peak memory per mode in MiB (None where not measured), the failures as (pair index,
        message), and the number of rows written.
    """
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new_file:
            writer.writeheader()
            f.flush()
        runner = _ShareRunner(models, settings, out_dir, writer, f, save_images, read)
        for index, need_strip, need_views in progress(share):
            name = pairs.pairs[index][0]
            runner.pair(index, pairs, [m for m in settings.modes if (name, m) not in plan.done],
                        need_strip, need_views)
    return runner.peaks, runner.failures, runner.written


class _ShareRunner:
    """One process's pairs: runs each mode, appends rows, writes images; counts what happened."""

    def __init__(self, models: dict[str, nn.Module], settings: EvalSettings, out_dir: Path, writer: csv.DictWriter,
                 file: object, save_images: bool, read: Callable[[Path], io.Image]) -> None:
        self.models, self.settings, self.out_dir = models, settings, out_dir
        self.writer, self.file, self.save_images, self.read = writer, file, save_images, read
        self.peaks: dict[str, float | None] = {mode: None for mode in settings.modes}
        self.failures: list[tuple[int, str]] = []
        self.written = 0

    def pair(self, index: int, pairs: PairedSet, todo: list[str], need_strip: bool, need_views: bool) -> None:
        """Score the modes in ``todo`` on pair ``index``; also the compare strip and the report's
        views where asked (every mode is then run, its score recomputed as the row has it)."""
        name = pairs.pairs[index][0]
        try:
            views, target = pairs.load(index, self.read)
        except io.ImageError as err:
            self.failures.append((index, f"{name}: {err}"))
            return
        degraded = views[0]  # the image shown and scored as "input" (dual-pixel: the left view)
        if degraded.pixels.shape[:2] != target.pixels.shape[:2]:
            self.failures.append((index, f"{name}: input {degraded.pixels.shape[:2]} and target "
                                         f"{target.pixels.shape[:2]} differ in size"))
            return
        depth = target.bit_depth  # restored images are saved at the target's bit depth (16 for DPDD)
        x = torch.cat([io.to_model_input(v) for v in views], dim=1) if len(views) > 1 else io.to_model_input(degraded)
        need_images = need_strip or need_views
        outputs, scores = {}, {}
        for mode in self.settings.modes:
            if mode not in todo and not need_images:
                continue
            try:
                pixels, seconds = self._restore(mode, x, degraded)
            except (RuntimeError, MemoryError) as err:  # out of memory and the like: skip, go on
                self.failures.append((index, f"{name} [{mode}]: {one_line(err, typed=True)}"))
                continue
            outputs[mode] = pixels
            if mode in todo or need_images:
                try:
                    value_psnr, value_ssim, mae = self._score(pixels, target.pixels)
                    scores[mode] = (value_psnr, value_ssim)
                except ValueError as err:
                    if not self.settings.protocol.align:
                        raise
                    # RealBlur's alignment may not converge on an image: that pair fails, the rest go on.
                    self.failures.append((index, f"{name} [{mode}]: {one_line(err)}"))
                    continue
            if mode in todo:
                self.writer.writerow({"image": name, "mode": mode, "psnr": f"{scores[mode][0]:.6f}",
                                      "ssim": f"{scores[mode][1]:.6f}", "seconds": f"{seconds:.4f}",
                                      "mae": "" if mae is None else f"{mae:.8f}"})
                self.file.flush()
                self.written += 1
            if self.save_images:
                self._write(self.out_dir / "images" / mode / f"{name}.png", pixels, depth)
        if not (need_images and outputs):
            return
        try:
            scores["input"] = self._score(degraded.pixels, target.pixels)[:2]
        except ValueError:
            if not self.settings.protocol.align:
                raise
            scores["input"] = (float("nan"), float("nan"))  # it does not align: its panel shows the name only
        images = {"input": degraded.pixels, **outputs, "target": target.pixels}
        panels = panel_order(outputs)
        if need_strip:
            labels = [panel_label(p, *(v if v == v else None for v in scores.get(p, (None, None)))) for p in panels]
            self._write(self.out_dir / "compare" / f"{name}.png", side_by_side([images[p] for p in panels], labels))
        if need_views:
            self._write_views(name, {p: images[p] for p in panels}, scores["input"])

    def _score(self, pixels: np.ndarray, target: np.ndarray) -> tuple[float, float, float | None]:
        """(PSNR, SSIM, MAE or None) from one scoring of the pair: PSNR and SSIM as per_image.csv
        stores them (6 decimals), so labels show the rows' numbers; MAE where the protocol scores it."""
        values = self.settings.protocol.score_all(pixels, target)
        return float(f"{values['psnr']:.6f}"), float(f"{values['ssim']:.6f}"), values.get("mae")

    def _write_views(self, name: str, images: dict[str, np.ndarray], input_score: tuple[float, float]) -> None:
        """The report viewer's centre crops of one pair (PNG, lossless: the viewer is for judging
        restorations) and the input's score, which per_image.csv does not hold."""
        folder = self.out_dir / "views" / name
        for panel, pixels in images.items():
            self._write(folder / f"{panel}.png", centre_crop(pixels, VIEW_CROP))
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / "input.json", json.dumps({"psnr": input_score[0], "ssim": input_score[1]}))

    def _restore(self, mode: str, x: torch.Tensor, like: io.Image) -> tuple[np.ndarray, float]:
        """The restored pixels of one mode and its model time in seconds; peak memory recorded."""
        with PeakMemory(self.settings.device) as memory:
            start = time.perf_counter()
            restored = restore(self.models[mode], x, self.settings.run_settings(mode))
            seconds = time.perf_counter() - start
        if memory.peak_mib is not None:
            self.peaks[mode] = max(self.peaks[mode] or 0.0, memory.peak_mib)
        return io.from_model_output(restored, like)[0], seconds

    @staticmethod
    def _write(path: Path, pixels: np.ndarray, bit_depth: int = 8) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_image(path, pixels, bit_depth=bit_depth, overwrite=True)


def _finish(
    out_dir: Path,
    pairs: PairedSet,
    settings: EvalSettings,
    plan: _Plan,
    reports: list[tuple[dict, list, int]],
    *,
    compare: bool,
    report: bool,
    world_size: int,
    log: Callable[[str], None],
    published: dict[str, dict] | None = None,
) -> EvalResult:
    """Rank 0: merge every process's rows into per_image.csv and write summary.json (and report.html)."""
    rows, per_file = merge_rows(out_dir, row_order(pairs, settings.modes))
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
    names = set(plan.names)
    subsets = {subset: summarise(rows, names & set(members), settings.modes, {})
               for subset, members in pairs.subsets.items()}
    result = EvalResult(settings, summarise(rows, names, settings.modes, peaks), plan.resumed, failures,
                        pairs.benchmark, subsets, dict(published or {}))
    result.ablation = window_ablation(result.modes, settings.train_size)
    summary = {
        "benchmark": pairs.benchmark,
        "modes": {mode: asdict(s) for mode, s in result.modes.items()},
        "protocol": asdict(settings.protocol),
        "model": settings.model,
        "settings": settings.to_dict(),
        "pairs": len(pairs.pairs),
        "layout": pairs.layout,
        "skipped_missing": len(pairs.unmatched_inputs) + len(pairs.unmatched_targets),
        "skipped_missing_files": pairs.unmatched_names(),
        "processes": world_size,
        "failures": failures,
        "compare_order": panel_order(settings.modes) if compare else None,
        "subsets": {subset: {mode: asdict(s) for mode, s in per_mode.items()} for subset, per_mode in subsets.items()},
        "published": result.published,
        "window_ablation": result.ablation,
    }
    text = json.dumps(summary, indent=2, default=str)
    write_atomically(out_dir / "summary.json", text)
    if report:
        mine = [r for r in rows if r["image"] in names and r["mode"] in settings.modes]
        views = load_views(out_dir, plan.names[:VIEW_IMAGES], settings.modes)
        write_atomically(out_dir / "report.html", build_report(json.loads(text), mine, views))
    return result


def evaluate(
    models: dict[str, nn.Module],
    pairs: PairedSet,
    settings: EvalSettings,
    out_dir: Path,
    *,
    save_images: bool = False,
    compare: bool = False,
    report: bool = False,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
    log: Callable[[str], None] = print,
    group: Group | None = None,
    read: Callable[[Path], io.Image] | None = None,
    published: dict[str, dict] | None = None,
) -> EvalResult:
    """Evaluate each mode's model on every pair and write the results to ``out_dir``.

    With several processes (``group`` from :func:`tlc.eval.distributed.process_group`, under torchrun)
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
        save_images, compare, report: also write restored images / comparison strips / report.html.
        progress: wraps the iteration over rank 0's pairs (e.g. a tqdm progress bar).
        log: where rank 0's resume and failure notes go (other ranks log nothing).
        group: the processes of the run; None: this process alone.
        read: reads a pair's image files (default :func:`tlc.io.read_image`; e.g. one with a pixel
            limit); an :class:`~tlc.io.ImageError` it raises fails that pair, with its message.
        published: mode -> published score ({"psnr", "ssim", "source"}) shown beside the measured
            one in the table and summary.json.

    Raises:
        EvaluationError: the folder holds other settings (or, seen from a process other than
            rank 0, is not the folder rank 0 writes to).
        tlc.eval.distributed.DistributedError: (rank 0) another process failed, naming it and its
            error; (any rank) the others stopped answering within the group's timeout.
        tlc.eval.distributed.PeerFailed: (ranks other than 0) another process failed; rank 0 says which.
    """
    group = group or Group()
    distributed = group.world_size > 1
    plan = group.run_on_rank0(lambda: _prepare(out_dir, pairs, settings, compare, report, group.world_size, log),
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
    outcome, error = None, None
    try:
        outcome = _evaluate_share(models, pairs, settings, out_dir, plan, share, csv_path, save_images=save_images,
                                  progress=progress if group.rank == 0 else (lambda it: it),
                                  read=read or io.read_image)
    except Exception as err:  # shared with the others below: nobody waits for a process that gave up
        if not distributed:
            raise
        error = err
    group.agree(error, "evaluating its pairs")
    reports = group.all_gather(outcome, "collecting the results")
    return group.run_on_rank0(
        lambda: _finish(out_dir, pairs, settings, plan, reports, compare=compare, report=report,
                        world_size=group.world_size, log=log, published=published),
        "merging the results")
