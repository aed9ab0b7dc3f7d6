"""``tlc restore``: restore image and video files with a model, with TLC by default."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
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
    positive_megapixels,
    progress,
    say,
)
from .chooser import check_channels, chosen_model, models_for
from .video import FRAME_NAME, frame_path, restore_video, restore_video_frames

SUMMARY = "Restore images and videos with a model, with TLC by default."
EXAMPLES = (
    "  tlc restore blurry.png -o out/ --model nafnet-gopro-width64     # weights downloaded on first use\n"
    "  tlc restore blurry.png -o out/ --model nafnet-gopro-width64 --weights NAFNet-GoPro-width64.pth\n"
    "  tlc restore photos/ 'more/*.jpg' -o out/ --weights model.pth --train-size 256 --mode full\n"
    "  tlc restore big.tif -o out/ --weights model.pth --device cuda --dtype float16\n"
    "  tlc restore huge_8k.tif -o out/ --model tiny-nafnet --max-megapixels 2   # tiled TLC, tiles <= 2 MP\n"
    "  tlc restore clip.mp4 -o restored.mp4 --model tiny-nafnet   # frame rate, frames, size and audio kept\n"
    "  tlc restore clips/ -o out/ --model tiny-nafnet --lossless   # every video in clips/, RGB stored exactly\n"
    "  tlc restore clip.mp4 --frames-out frames/ --model tiny-nafnet   # frames/frame_000001.png, ...\n"
    "  tlc restore --dual left.png right.png -o out/ --model restormer-dpdd-dual   # dual-pixel views, 6 channels\n"
    "  tlc restore --dual DPDD/inputL DPDD/inputR -o out/ --model restormer-dpdd-dual   # folders paired by name\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image or video (.mp4, .mov, .mkv, .avi, .webm) files, folders or glob patterns")
    parser.add_argument("--dual", nargs=2, type=Path, metavar=("LEFT", "RIGHT"),
                        help="dual-pixel input instead of INPUT: the left and right views, two images or two folders "
                             "whose images pair by file name (DPDD's inputL/ and inputR/), fed to the model as 6 "
                             "channels; outputs are named after the left views")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT",
                        help="folder for the results; for a single video input also a video file, e.g. out.mp4")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs never)")
    parser.add_argument("--ext", metavar="SUFFIX",
                        help="output format, e.g. png or mkv: images take an image suffix, videos a video one "
                             "(default: the input's)")
    video = parser.add_argument_group("video")
    video.add_argument("--frames-out", type=Path, metavar="DIR",
                       help="write each video's restored frames as PNG files instead of a video: DIR/frame_000001.png, "
                            "... (DIR/NAME/frame_000001.png, ... for several videos)")
    video.add_argument("--lossless", action="store_true",
                       help="encode videos losslessly, RGB stored exactly (libx264rgb QP 0; lossless VP9 for .webm), "
                            "for evaluation: files are many times larger (default: H.264 yuv420p CRF 18, VP9 for "
                            ".webm)")
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
    if args.dual is not None:
        return _run_dual(args)
    if not args.inputs:
        raise UsageError("give the images or videos to restore (INPUT ...), or --dual LEFT RIGHT")
    paths, problems = io.collect_inputs(args.inputs, io.IMAGE_SUFFIXES | io.VIDEO_SUFFIXES)
    for problem in problems:
        say(f"tlc: warning: {problem}")
    if not paths:
        raise UsageError("no input images or videos found")
    planned, failed = _plan_outputs(paths, args.output, args.ext, args.frames_out)
    max_megapixels, tile_margin = _tiling_flags(args)
    if args.mode == "tiles":
        check_tiles(args.tile, args.overlap)
    max_pixels = pixel_limit(args)
    settings = RunSettings(mode=args.mode, tile=args.tile, overlap=args.overlap, device=device(args.device),
                           dtype=args.dtype, max_megapixels=max_megapixels, tile_margin=tile_margin)
    chosen = chosen_model(args)
    check_channels(chosen, 3)
    models, report = models_for(chosen, [args.mode], settings.device, settings.dtype, args.fast, args.functional)
    if report:
        say(report)
    model = models[args.mode]
    context = None
    if max_megapixels is not None:  # measured once per model, used for every image
        context = tile_context(model)
        _say_tile_context(context, tile_margin)
    inputs = {p.resolve() for p in paths}
    skipped = 0
    written = {"image": 0, "video": 0, "frames": 0}
    for target, (path, kind) in progress(planned.items(), total=len(planned), desc="restoring"):
        if _overwrites_input(target, kind, inputs):
            flag = "--frames-out folder" if kind == "frames" else "-o folder or file"
            say(f"tlc: error: {path}: the output would overwrite an input; choose another {flag}")
            failed += 1
            continue
        if (frame_path(target, 1) if kind == "frames" else target).exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            if kind == "image":
                _restore_file(model, path, target, settings, context, args.overwrite, max_pixels)
                written["image"] += 1
            else:
                if settings.max_megapixels is not None:
                    info = io.probe_video(path)
                    _say_tile_plan(model, path, (info.height, info.width), settings, context)
                if kind == "frames":
                    restore_video_frames(model, path, target, settings, context, overwrite=args.overwrite)
                    written["frames"] += 1
                else:
                    restore_video(model, path, target, settings, context, lossless=args.lossless,
                                  overwrite=args.overwrite)
                    written["video"] += 1
        except (io.ImageError, io.VideoError) as err:  # its message names the file
            say(f"tlc: error: {error_text(err)}")
            failed += 1
        except (ValueError, OSError) as err:
            say(f"tlc: error: {path}: {error_text(err)}")
            failed += 1
        except (RuntimeError, MemoryError) as err:  # e.g. out of memory: report this file, go on
            say(f"tlc: error: {path}: {one_line(err, typed=True)}")
            failed += 1
    note = f"; {skipped} skipped (already there, use --overwrite)" if skipped else ""
    files = [f"{written[kind]} {kind}(s)" for kind in ("image", "video") if written[kind]]
    done = [f"{' and '.join(files)} to {args.output}"] if files else []
    done += [f"the frames of {written['frames']} video(s) to {args.frames_out}"] if written["frames"] else []
    say(f"wrote {'; '.join(done) or 'nothing'}{note}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _plan_outputs(
    paths: list[Path], output: Path | None, ext: str | None, frames_out: Path | None
) -> tuple[dict[Path, tuple[Path, str]], int]:
    """output path -> (input path, kind), and how many inputs were refused for an output another
    one has. kind is "image", "video" (to a video file) or "frames" (to a folder of PNG frames)."""
    suffix = f".{ext.lstrip('.')}".lower() if ext else None
    videos = [p for p in paths if io.is_video_file(p)]
    if output is not None and io.is_video_file(output) and not output.is_dir():
        if len(paths) != 1 or not videos or frames_out is not None:
            raise UsageError(f"-o {output} names a video file: give one video input (without --frames-out), "
                             "or make -o a folder")
        return {output: (paths[0], "video")}, 0
    if output is None and (len(videos) < len(paths) or frames_out is None):
        raise UsageError("say where the results go: -o FOLDER (or -o FILE.mp4 for one video, "
                         "or --frames-out DIR for videos' frames)")
    planned: dict[Path, tuple[Path, str]] = {}
    failed = 0
    image_suffix = suffix if suffix and suffix not in io.VIDEO_SUFFIXES else None
    video_suffix = suffix if suffix in io.VIDEO_SUFFIXES else None
    for path in paths:
        if not io.is_video_file(path):
            kind, target = "image", output / f"{path.stem}{image_suffix or path.suffix}"
        elif frames_out is not None:
            kind, target = "frames", frames_out if len(videos) == 1 else frames_out / path.stem
        else:
            kind, target = "video", output / f"{path.stem}{video_suffix or path.suffix}"
        if target in planned:
            say(f"tlc: error: {path}: its output {target} is also {planned[target][0]}'s; rename one of them")
            failed += 1
            continue
        planned[target] = (path, kind)
    return planned, failed


def _overwrites_input(target: Path, kind: str, inputs: set[Path]) -> bool:
    """Whether writing ``target`` (a file, or for "frames" a folder of numbered PNGs) would replace an input."""
    if kind != "frames":
        return target.resolve() in inputs
    folder = target.resolve()
    pattern = re.compile(re.escape(FRAME_NAME).replace(r"\{:06d\}", r"\d{6,}"))
    return any(p.parent == folder and pattern.fullmatch(p.name) for p in inputs)


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
    megapixels = positive_megapixels(args.max_megapixels, "--max-megapixels", "4")
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


def dual_pairs(left: Path, right: Path) -> list[tuple[Path, Path]]:
    """(left, right) views named by --dual: two image files, or two folders paired by file stem.

    Raises:
        UsageError: a path is missing, one is a file and the other a folder, or a folder's image
            has no counterpart of the same name in the other.
    """
    for p in (left, right):
        if not p.exists():
            raise UsageError(f"--dual: {p}: no such file or folder")
    if left.is_dir() != right.is_dir():
        raise UsageError("--dual takes two image files or two folders, not one of each")
    if not left.is_dir():
        return [(left, right)]
    lefts, rights = io.images_by_stem(left), io.images_by_stem(right)
    lone = sorted(set(lefts) ^ set(rights))
    if lone:
        raise UsageError(f"--dual: {len(lone)} view(s) without a counterpart of the same name in the other folder: "
                         f"{', '.join(lone[:10])}")
    if not lefts:
        raise UsageError(f"--dual: {left} has no image files")
    return [(lefts[stem], rights[stem]) for stem in sorted(lefts)]


def _run_dual(args: argparse.Namespace) -> int:
    """Restore dual-pixel pairs: left and right views concatenated to the 6 channels the model takes."""
    if args.inputs:
        raise UsageError("give either INPUT files or --dual LEFT RIGHT, not both")
    if args.output is None:
        raise UsageError("say where the results go: -o FOLDER")
    pairs = dual_pairs(*args.dual)
    max_megapixels, tile_margin = _tiling_flags(args)
    settings = RunSettings(mode=args.mode, tile=args.tile, overlap=args.overlap, device=device(args.device),
                           dtype=args.dtype, max_megapixels=max_megapixels, tile_margin=tile_margin)
    chosen = chosen_model(args)
    check_channels(chosen, 6, "--dual")
    models, report = models_for(chosen, [args.mode], settings.device, settings.dtype, args.fast, args.functional)
    if report:
        say(report)
    model = models[args.mode]
    suffix = f".{args.ext.lstrip('.')}".lower() if args.ext else None
    written = skipped = failed = 0
    for left, right in progress(pairs, total=len(pairs), desc="restoring"):
        target = args.output / f"{left.stem}{suffix or left.suffix}"
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            views = io.read_image(left), io.read_image(right)
            if views[0].pixels.shape[:2] != views[1].pixels.shape[:2]:
                raise io.ImageError(f"{left} is {views[0].width} x {views[0].height} but {right} is "
                                    f"{views[1].width} x {views[1].height}")
            x = torch.cat([io.to_model_input(v) for v in views], dim=1)
            pixels, _ = io.from_model_output(restore(model, x, settings), views[0])
            depth = views[0].bit_depth if target.suffix.lower() in (".png", ".tif", ".tiff") else 8
            io.write_image(target, pixels, bit_depth=depth, overwrite=args.overwrite)
            written += 1
        except io.ImageError as err:
            say(f"tlc: error: {err}")
            failed += 1
        except (ValueError, OSError, RuntimeError, MemoryError) as err:
            say(f"tlc: error: {left}: {one_line(err, typed=True)}")
            failed += 1
    note = f"; {skipped} skipped (already there, use --overwrite)" if skipped else ""
    say(f"wrote {written} image(s) to {args.output}{note}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0
