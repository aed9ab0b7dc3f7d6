"""``tlc restore``: restore image files with a model, with TLC by default."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from torch import nn

from .. import io
from .._util import one_line
from ..run import RunSettings, TileContext, model_tile_plan, restore, tile_context
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
from .chooser import chosen_model, models_for

SUMMARY = "Restore images with a model, with TLC by default."
EXAMPLES = (
    "  tlc restore blurry.png -o out/ --model nafnet-gopro-width64     # weights downloaded on first use\n"
    "  tlc restore blurry.png -o out/ --model nafnet-gopro-width64 --weights NAFNet-GoPro-width64.pth\n"
    "  tlc restore photos/ 'more/*.jpg' -o out/ --weights model.pth --train-size 256 --mode full\n"
    "  tlc restore big.tif -o out/ --weights model.pth --device cuda --dtype float16\n"
    "  tlc restore huge_8k.tif -o out/ --model tiny-nafnet --max-megapixels 2   # tiled TLC, tiles <= 2 MP\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="folder for the results")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs never)")
    parser.add_argument("--ext", metavar="SUFFIX", help="output format, e.g. png (default: the input's)")
    add_model_options(parser)
    add_run_options(parser, modes=True)
    parser.add_argument("--max-megapixels", metavar="N",
                        help="tlc mode: run the converted model tile by tile, no tile (context margins included) "
                             "over N million pixels, reproducing the whole-image result; bounds memory on huge "
                             "images, e.g. --max-megapixels 4 (default: the whole image at once)")
    parser.add_argument("--tile-margin", metavar="PX",
                        help="with --max-megapixels: context kept around each tile in pixels (default: from the "
                             "model: its largest local window's reach plus its convolutions' reach)")


def run(args: argparse.Namespace) -> int:
    paths, problems = io.collect_inputs(args.inputs)
    for problem in problems:
        say(f"tlc: warning: {problem}")
    if not paths:
        raise UsageError("no input images found")
    max_megapixels, tile_margin = _tiling_flags(args)
    if args.mode == "tiles":
        check_tiles(args.tile, args.overlap)
    max_pixels = pixel_limit(args)
    settings = RunSettings(mode=args.mode, tile=args.tile, overlap=args.overlap, device=device(args.device),
                           dtype=args.dtype, max_megapixels=max_megapixels, tile_margin=tile_margin)
    chosen = chosen_model(args)
    models, report = models_for(chosen, [args.mode], settings.device, settings.dtype, args.fast, args.functional)
    if report:
        say(report)
    model = models[args.mode]
    context = None
    if max_megapixels is not None:  # measured once per model, used for every image
        context = tile_context(model)
        _say_tile_context(context, tile_margin)
    planned, failed = _plan_outputs(paths, args.output, args.ext)
    inputs = {p.resolve() for p in paths}
    skipped = written = 0
    for target, path in progress(planned.items(), total=len(planned), desc="restoring"):
        if target.resolve() in inputs:
            say(f"tlc: error: {path}: the output would overwrite an input; choose another -o folder")
            failed += 1
            continue
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            _restore_file(model, path, target, settings, context, args.overwrite, max_pixels)
            written += 1
        except io.ImageError as err:  # its message names the file
            say(f"tlc: error: {error_text(err)}")
            failed += 1
        except (ValueError, OSError) as err:
            say(f"tlc: error: {path}: {error_text(err)}")
            failed += 1
        except (RuntimeError, MemoryError) as err:  # e.g. out of memory: report this file, go on
            say(f"tlc: error: {path}: {one_line(err, typed=True)}")
            failed += 1
    note = f"; {skipped} skipped (already there, use --overwrite)" if skipped else ""
    say(f"wrote {written} image(s) to {args.output}{note}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _plan_outputs(paths: list[Path], output: Path, ext: str | None) -> tuple[dict[Path, Path], int]:
    """output path -> input path, and how many inputs were refused for an output another one has."""
    planned: dict[Path, Path] = {}
    failed = 0
    for path in paths:
        suffix = f".{ext.lstrip('.')}" if ext else path.suffix
        target = output / f"{path.stem}{suffix}"
        if target in planned:
            say(f"tlc: error: {path}: its output {target} is also {planned[target]}'s; rename one of them")
            failed += 1
            continue
        planned[target] = path
    return planned, failed


def _restore_file(
    model: nn.Module, path: Path, target: Path, settings: RunSettings, context: TileContext | None, overwrite: bool,
    max_pixels: int | None,
) -> None:
    """Read one image (refused over ``max_pixels``), restore it and write the result (8-bit where the
    format needs it)."""
    image = io.read_image(path, max_pixels=max_pixels)
    if settings.max_megapixels is not None:
        _say_tile_plan(model, path, image.pixels.shape[:2], settings, context)
    restored = restore(model, io.to_model_input(image), settings, context)
    pixels, alpha = io.from_model_output(restored, image)
    lossy = target.suffix.lower() in (".jpg", ".jpeg")  # 8-bit, no alpha: say so rather than fail
    depth = 8 if lossy or target.suffix.lower() in (".webp", ".bmp") else image.bit_depth
    if lossy and alpha is not None:
        say(f"tlc: warning: {path}: JPEG has no alpha; the alpha channel is dropped")
        alpha = None
    io.write_image(target, pixels, bit_depth=depth, alpha=alpha, overwrite=overwrite)


def _tiling_flags(args: argparse.Namespace) -> tuple[float | None, int | None]:
    """--max-megapixels and --tile-margin checked, with errors naming the flags."""
    if args.max_megapixels is None:
        if args.tile_margin is not None:
            raise UsageError("--tile-margin goes with --max-megapixels (it is the tiles' context)")
        return None, None
    try:
        megapixels = float(args.max_megapixels)
    except ValueError:
        megapixels = math.nan
    if not math.isfinite(megapixels) or megapixels <= 0:
        raise UsageError(f"--max-megapixels must be a positive number of megapixels, e.g. 4; got {args.max_megapixels!r}")
    if args.mode != "tlc":
        raise UsageError(f"--max-megapixels runs TLC tile by tile; --mode {args.mode} "
                         + ("is the whole image in one pass" if args.mode == "full" else "is bounded by --tile already"))
    margin = None
    if args.tile_margin is not None:
        try:
            margin = int(args.tile_margin)
        except ValueError:
            margin = -1
        if margin < 0:
            raise UsageError(f"--tile-margin must be a whole number of pixels >= 0; got {args.tile_margin!r}")
    return megapixels, margin


def _say_tile_context(context: TileContext, margin: int | None) -> None:
    """One line on the tiles' margin and where it comes from; a warning if it is a guess."""
    if margin is not None:
        say(f"tiled TLC: margin {margin} px (--tile-margin), tiles on a {context.multiple}-px grid")
        return
    measured = "" if context.measured_margin is None or not context.converged else \
        f"; measured seam PSNR over {context.target_psnr:g} dB beyond {context.measured_margin[0]}x{context.measured_margin[1]}"
    say(f"tiled TLC: margin {context.margin[0]}x{context.margin[1]} px (one window + convolutions "
        f"{context.rule_margin[0]}x{context.rule_margin[1]}{measured}), tiles on a {context.multiple}-px grid")
    if not context.converged:
        say(f"tlc: warning: this model's seam error was still above {context.target_psnr:g} dB at the largest "
            f"margin measured ({context.margin[0]}x{context.margin[1]} px); --tile-margin sets a larger one")


def _say_tile_plan(
    model: nn.Module, path: Path, size: tuple[int, int], settings: RunSettings, context: TileContext | None
) -> None:
    """One line per image on how it is tiled, and a warning when tiles are mostly margin."""
    plan = model_tile_plan(model, size, settings.max_megapixels, margin=settings.tile_margin, context=context)
    if len(plan.tiles) > 1:
        say(f"{path.name}: {plan}")
    if plan.overhead > 3:
        say(f"tlc: warning: {path.name}: the tiles are mostly context margin ({plan.overhead:.1f}x the pixels of "
            "one pass); a larger --max-megapixels runs faster")
