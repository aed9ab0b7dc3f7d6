"""``tlc eval``: score a model on a paired dataset in several modes (resumable, torchrun-aware)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import io
from ..eval.ablation import base_of
from ..eval.distributed import DistributedError, PeerFailed, detect_launch, process_group
from ..eval.evaluate import EvalSettings, evaluate
from ..eval.metrics import PROTOCOLS, Protocol
from ..eval.records import EvaluationError
from ..io.benchmarks import BENCHMARKS, AmbiguousLayout, find_benchmark
from ..io.lmdbimages import LmdbPairs
from ..io.matblocks import MatBlocks, write_blocks
from ..zoo import registry
from .common import (
    UsageError,
    add_model_options,
    add_run_options,
    check_tiles,
    device,
    error_text,
    pixel_limit,
    progress,
    say,
)
from .chooser import base_sizes, check_channels, chosen_model, models_for

_LISTED = 10  # unmatched files named one per line before "and N more"

SUMMARY = "Score a model on a paired dataset in several modes (resumable)."
EXAMPLES = (
    "  tlc eval GoPro/test --model nafnet-gopro-width64 --out results/   # weights downloaded on first use\n"
    "  tlc eval GoPro/test --model nafnet-gopro-width64 --weights NAFNet-GoPro-width64.pth --out results/\n"
    "  tlc eval my_pairs/ --weights model.pth --modes full,tlc,tiles --tile 256 --overlap 32 --compare --report\n"
    "  tlc eval SIDD/val --weights model.pth --protocol float\n"
    "  tlc eval my_pairs/ --weights model.pth --skip-missing     # pairs lacking a side are listed, skipped\n"
    "  tlc eval HIDE_dataset --benchmark hide --model restormer-gopro   # published numbers beside measured\n"
    "  tlc eval DPDD/test --benchmark dpdd-dual --model restormer-dpdd-dual   # inputL + inputR as 6 channels\n"
    "  tlc eval SIDD/ --benchmark sidd --weights model.pth --save-images   # .mat blocks in, restored .mat out\n"
    "  tlc eval my_pairs/ --model tiny-nafnet --base-size 1x,1.5x,2x,3x   # window ablation: the best is named\n"
    "\nDATASET holds input/ + target/ (also blur/ + sharp/, lq/ + gt/, or GoPro's scene folders), or a\n"
    "benchmark in its published layout: --benchmark sets the layout and the scoring protocol of\n"
    "its published tables (docs/benchmarks.md); a layout that identifies itself needs no --benchmark.\n"
    "The default protocol (gopro) rounds outputs to uint8 and scores RGB PSNR and 3-D SSIM,\n"
    "as the reference repositories and MATLAB's ssim on RGB arrays do.\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, metavar="DATASET",
                        help="paired dataset folder, or a benchmark's in its published layout (see --benchmark)")
    parser.add_argument("--modes", default="full,tlc", help="comma-separated among full, tlc, tiles (default full,tlc)")
    parser.add_argument("--out", type=Path, default=Path("tlc-eval"), metavar="DIR",
                        help="results folder; rerun with the same one to resume (default tlc-eval)")
    parser.add_argument("--benchmark", choices=tuple(BENCHMARKS), metavar="NAME",
                        help="the dataset's published layout and protocol: " + ", ".join(BENCHMARKS)
                             + " (default: recognised from the layout)")
    parser.add_argument("--protocol", default=None,
                        help="gopro (the default without a benchmark), y, float or per-channel-2d; "
                             "overrides the benchmark's")
    parser.add_argument("--y-channel", action="store_true", help="score the Y channel")
    parser.add_argument("--crop-border", type=int, default=None, metavar="N", help="ignore N pixels at each border")
    parser.add_argument("--save-images", action="store_true", help="write restored images per mode")
    parser.add_argument("--compare", action="store_true",
                        help="write side-by-side crops, each labelled with its mode and PSNR/SSIM: "
                             "input | full | tiles | tlc | target (the modes evaluated)")
    parser.add_argument("--report", action="store_true",
                        help="write report.html: one offline page with the summary, a sortable per-image table, "
                             "a PSNR chart and a split-view viewer (zoom, pan) of the first images")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N pairs")
    parser.add_argument("--skip-missing", action="store_true",
                        help="an input without a target (or the reverse) is listed and skipped, and counted in "
                             "summary.json, instead of stopping the run")
    parser.add_argument("--sync-timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="under torchrun: how long a process waits for the others before failing "
                             "(default 1800)")
    add_model_options(parser)
    add_run_options(parser, modes=False)


def benchmark_protocol(name: str | None) -> str:
    """The protocol a benchmark's published tables use, or its fallback preset where that
    protocol is not (yet) among :data:`PROTOCOLS`; "gopro" without a benchmark."""
    if name is None:
        return "gopro"
    benchmark = BENCHMARKS[name]
    return benchmark.protocol if benchmark.protocol in PROTOCOLS else benchmark.fallback


def published_scores(model: str | None, benchmark: str | None) -> dict[str, dict]:
    """mode -> the registry's published score of ``model`` on ``benchmark``: "full" the one
    without TLC, "tlc" the one with; empty for a model or benchmark without one."""
    if not model or not benchmark:
        return {}
    try:
        entry = registry.get(model)
    except KeyError:
        return {}
    return {("tlc" if r.tlc else "full"): {"psnr": r.psnr, "ssim": r.ssim, "source": r.source}
            for r in entry.results if r.benchmark == benchmark}


def _protocol(args: argparse.Namespace, benchmark: str | None = None) -> Protocol:
    name = args.protocol or benchmark_protocol(benchmark)
    if name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    if args.crop_border is not None and args.crop_border < 0:
        raise UsageError("--crop-border must be >= 0")
    try:
        if args.y_channel:
            protocol = replace(protocol, y_channel=True)
        if args.crop_border is not None:
            protocol = replace(protocol, crop_border=args.crop_border)
    except ValueError:  # presets that fix their own channels and region (rain's luma, RealBlur's alignment)
        raise UsageError(f"the {name} protocol scores as its reference script does: leave out --y-channel "
                         "and --crop-border") from None
    if args.y_channel or args.crop_border:
        protocol = replace(protocol, name=f"{protocol.name}{'+y' if protocol.y_channel else ''}"
                                          f"{f'+crop{protocol.crop_border}' if protocol.crop_border else ''}")
    return protocol


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in ("full", "tlc", "tiles") for m in modes):
        raise UsageError(f"--modes takes full, tlc and tiles, got {text!r}")
    return modes


def _say_skipped(pairs: io.PairedSet, speak: Callable[[str], None]) -> None:
    """The unmatched files --skip-missing skips: one line each, the first few."""
    names = pairs.unmatched_names()
    if not names:
        return
    speak(f"skipping {len(names)} unmatched file(s) (--skip-missing; listed in summary.json):")
    for name in names[:_LISTED]:
        speak(f"  {name}")
    if len(names) > _LISTED:
        speak(f"  and {len(names) - _LISTED} more")


def _read(path: Path, max_pixels: int | None) -> io.Image:
    """A pair's image, refused over --pixel-limit; the error's advice names the flags."""
    try:
        return io.read_image(path, max_pixels=max_pixels)
    except io.ImageError as err:
        raise io.ImageError(error_text(err)) from None


class _AdvisedPairs:
    """An LMDB pair source whose read errors name the CLI's flags, as :func:`_read` does for files."""

    def __init__(self, source: LmdbPairs) -> None:
        self._source = source

    def load(self, name: str) -> tuple[io.Image, io.Image]:
        try:
            return self._source.load(name)
        except io.ImageError as err:
            raise io.ImageError(error_text(err)) from None

    def __getattr__(self, attr: str) -> object:
        return getattr(self._source, attr)


def run(args: argparse.Namespace) -> int:
    modes = _modes(args.modes)
    if not args.sync_timeout > 0:
        raise UsageError(f"--sync-timeout must be a positive number of seconds, got {args.sync_timeout:g}")
    if "tiles" in modes:
        check_tiles(args.tile, args.overlap)
    max_pixels = pixel_limit(args)
    try:
        pairs = find_benchmark(args.dataset, args.benchmark, strict=not args.skip_missing)
    except AmbiguousLayout as err:
        raise UsageError(str(err)) from None
    if isinstance(pairs.blocks, LmdbPairs):
        pairs.blocks.max_pixels = max_pixels  # its images are decoded from the databases, not read by _read
        pairs = replace(pairs, blocks=_AdvisedPairs(pairs.blocks))
    protocol = _protocol(args, pairs.benchmark)
    if args.limit is not None:
        pairs = replace(pairs, pairs=pairs.pairs[: args.limit])
    where = device(args.device)
    try:
        launch = detect_launch()  # torchrun's RANK, WORLD_SIZE, ...; a plain run is rank 0 of 1
    except DistributedError as err:
        raise UsageError(str(err)) from None
    speak = say if launch.rank == 0 else (lambda text: None)  # rank 0 speaks for the run; the others only fail
    _say_skipped(pairs, speak)
    try:
        with process_group(launch, device=where, timeout_s=args.sync_timeout) as group:
            per_mode, report, chosen, error = None, "", None, None
            try:
                chosen = chosen_model(args, several_bases=True)
                check_channels(chosen, pairs.channels, f"--benchmark {pairs.benchmark}" if pairs.benchmark else "")
                bases = base_sizes(args, chosen)
                if len(bases) > 1 and "tlc" not in modes:
                    raise UsageError("several --base-size values compare TLC windows: add tlc to --modes")
                per_mode, report = models_for(chosen, modes, where, args.dtype, args.fast, args.functional, bases)
            except Exception as err:  # told to the others, so none of them waits for this process
                if not launch.distributed:
                    raise
                error = err
            group.agree(error, "loading the model")
            if report:
                speak(report)
            # With a window ablation, "tlc" is one mode per base size ("tlc@384", ...), in its place.
            modes = [m for mode in modes for m in (sorted((k for k in per_mode if base_of(k)), key=base_of) or ["tlc"]
                                                   if mode == "tlc" else [mode])]
            settings = EvalSettings(model=chosen.description, modes=tuple(modes), protocol=protocol,
                                    train_size=chosen.train_size, base_size=chosen.base_size, fast=args.fast,
                                    functional=args.functional,
                                    tile=args.tile, overlap=args.overlap, device=where, dtype=args.dtype)
            processes = f", {launch.world_size} processes" if launch.distributed else ""
            bench = f"benchmark {pairs.benchmark}, " if pairs.benchmark else ""
            speak(f"{len(pairs.pairs)} pairs ({bench}{pairs.layout} layout), modes {', '.join(modes)}, "
                  f"protocol {protocol.name}{processes}")
            published = published_scores(args.model, pairs.benchmark)
            desc = "evaluating (rank 0's share)" if launch.distributed else "evaluating"
            result = evaluate(per_mode, pairs, settings, args.out, save_images=args.save_images,
                              compare=args.compare, report=args.report,
                              progress=lambda it: progress(it, desc=desc), log=speak, group=group,
                              read=lambda path: _read(path, max_pixels), published=published)
    except PeerFailed:
        # Rank 0 names the failed process. Exiting 0 lets torchrun wait for rank 0 to say so (a
        # non-zero exit here would make torchrun kill rank 0 first); the launch fails with rank 0.
        return 0
    except DistributedError as err:
        raise EvaluationError(f"{error_text(err)}; the rows finished so far are kept: rerun to resume") from None
    if launch.rank == 0:
        print(result.table())
        if isinstance(pairs.blocks, MatBlocks) and args.save_images:
            for mode in modes:
                saved = _save_blocks(args.out, mode, pairs)
                if saved:
                    speak(f"{mode}: restored blocks in {saved}")
        written = "per_image.csv, summary.json" + (", report.html" if args.report else "")
        speak(f"results in {args.out}/ ({written})")
    return 1 if result.failures else 0


def _save_blocks(out: Path, mode: str, pairs: io.PairedSet) -> Path | None:
    """The restored blocks of ``mode`` (images/MODE/II_BB.png) gathered into one .mat file of the
    input's layout (images x blocks x H x W x 3, uint8) beside them; None while some are missing."""
    folder = out / "images" / mode
    names = [name for name, _, _ in pairs.pairs]
    if not all((folder / f"{name}.png").is_file() for name in names):
        return None
    shape = pairs.blocks.arrays()[0].shape
    if len(names) != shape[0] * shape[1]:  # --limit: a partial array would read as a whole one
        return None
    blocks = np.zeros(shape, dtype=np.uint8)
    for name in names:
        i, j = (int(part) for part in name.split("_"))
        blocks[i, j] = np.rint(io.read_image(folder / f"{name}.png").pixels * 255).astype(np.uint8)
    return write_blocks(folder / "DenoisedBlocksSrgb.mat", "DenoisedBlocksSrgb", blocks)
