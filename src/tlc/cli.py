"""The ``tlc`` command line: restore, eval, inspect, synth.

Every subcommand has ``--help`` with examples. Bad input gives a one-line ``tlc: error: ...`` and
a non-zero exit code (2 for unusable arguments or inputs, 1 when some files failed), never a
traceback (set TLC_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__

DESCRIPTION = """\
tlc: Test-time Local Converter for image restoration models.

Restoration networks trained on small crops lose quality on whole images because their global
operations (global average pooling, instance norm, transposed attention) aggregate over far more
than they saw in training. tlc makes those operations local, over a window about the training
crop, without retraining.
"""

EXAMPLES = """\
examples:
  tlc restore photo.png -o out/ --model nafnet-gopro-width64 --weights NAFNet-GoPro-width64.pth
  tlc eval datasets/GoPro/test --weights model.pth --modes full,tlc,tiles --out results/
  tlc inspect --model restormer-gopro --size 720x1280
  tlc synth sharp_photos/ synthetic_set/ --noise 5 50 --noise-pattern step
"""


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '720x1280' -> (720, 1280) (height x width)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H or HxW in pixels, got {text!r}") from None
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected H or HxW with positive sizes, got {text!r}")
    return size  # type: ignore[return-value]


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="NAME", help="registry name (see `tlc inspect --list`)")
    group.add_argument("--weights", metavar="PATH", type=Path, help="checkpoint file (.pth, .pt, .safetensors)")
    group.add_argument("--train-size", metavar="H[xW]", type=parse_size,
                       help="training crop size (default: the registry entry's, else 256)")
    group.add_argument("--base-size", metavar="H[xW]", type=parse_size,
                       help="local window in image pixels (default: the paper's setting, else 1.5x train size)")
    group.add_argument("--fast", action="store_true",
                       help="use the reference's approximate fast_imp pooling (not exact)")
    group.add_argument("--functional", action=argparse.BooleanOptionalAction, default=True,
                       help="find global ops by what the model calls at run time (x.mean((2, 3), keepdim=True), "
                            "F.adaptive_avg_pool2d(x, 1), hand-written statistics, ...; see docs/functional.md): "
                            "made local where exact, else reported (default); --no-functional: module rules only")


def _add_run_options(parser: argparse.ArgumentParser, modes: bool) -> None:
    group = parser.add_argument_group("running")
    if modes:
        group.add_argument("--mode", choices=("tlc", "full", "tiles"), default="tlc",
                           help="tlc: converted model on the whole image (default); full: as trained; "
                                "tiles: overlapping tiles blended")
    group.add_argument("--tile", type=int, default=256, metavar="PX", help="tile size for tiles mode (default 256)")
    group.add_argument("--overlap", type=int, default=32, metavar="PX", help="tile overlap (default 32)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    group.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                       help="precision of the model (default float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlc", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tlc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str, examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, epilog=f"examples:\n{examples}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    restore = command(
        "restore", "Restore images with a model, with TLC by default.",
        "  tlc restore blurry.png -o out/ --model nafnet-gopro-width64 --weights NAFNet-GoPro-width64.pth\n"
        "  tlc restore photos/ 'more/*.jpg' -o out/ --weights model.pth --train-size 256 --mode full\n"
        "  tlc restore big.tif -o out/ --weights model.pth --device cuda --dtype float16\n"
        "  tlc restore huge_8k.tif -o out/ --model tiny-nafnet --max-megapixels 2   # tiled TLC, tiles <= 2 MP\n",
    )
    restore.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    restore.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="folder for the results")
    restore.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs never)")
    restore.add_argument("--ext", metavar="SUFFIX", help="output format, e.g. png (default: the input's)")
    _add_model_options(restore)
    _add_run_options(restore, modes=True)
    restore.add_argument("--max-megapixels", metavar="N",
                         help="tlc mode: run the converted model tile by tile, no tile (context margins included) "
                              "over N million pixels, reproducing the whole-image result; bounds memory on huge "
                              "images, e.g. --max-megapixels 4 (default: the whole image at once)")
    restore.add_argument("--tile-margin", metavar="PX",
                         help="with --max-megapixels: context kept around each tile in pixels (default: from the "
                              "model: its largest local window's reach plus its convolutions' reach)")

    evaluate = command(
        "eval", "Score a model on a paired dataset in several modes (resumable).",
        "  tlc eval GoPro/test --model nafnet-gopro-width64 --weights NAFNet-GoPro-width64.pth --out results/\n"
        "  tlc eval my_pairs/ --weights model.pth --modes full,tlc,tiles --tile 256 --overlap 32 --compare\n"
        "  tlc eval SIDD/val --weights model.pth --protocol float\n"
        "\nDATASET holds input/ + target/ (also blur/ + sharp/, lq/ + gt/, or GoPro's scene folders).\n"
        "The default protocol (gopro) rounds outputs to uint8 and scores RGB PSNR and 3-D SSIM,\n"
        "as the reference repositories and MATLAB's ssim on RGB arrays do.\n",
    )
    evaluate.add_argument("dataset", type=Path, metavar="DATASET", help="paired dataset folder")
    evaluate.add_argument("--modes", default="full,tlc", help="comma-separated among full, tlc, tiles (default full,tlc)")
    evaluate.add_argument("--out", type=Path, default=Path("tlc-eval"), metavar="DIR",
                          help="results folder; rerun with the same one to resume (default tlc-eval)")
    evaluate.add_argument("--protocol", default="gopro", help="gopro (default), y, float or per-channel-2d")
    evaluate.add_argument("--y-channel", action="store_true", help="score the Y channel")
    evaluate.add_argument("--crop-border", type=int, default=None, metavar="N", help="ignore N pixels at each border")
    evaluate.add_argument("--save-images", action="store_true", help="write restored images per mode")
    evaluate.add_argument("--compare", action="store_true", help="write side-by-side crops: input | modes | target")
    evaluate.add_argument("--limit", type=int, metavar="N", help="only the first N pairs")
    evaluate.add_argument("--sync-timeout", type=float, default=1800.0, metavar="SECONDS",
                          help="under torchrun: how long a process waits for the others before failing "
                               "(default 1800)")
    _add_model_options(evaluate)
    _add_run_options(evaluate, modes=False)

    inspect = command(
        "inspect", "Show a model's global ops, their feature sizes at training and their windows.",
        "  tlc inspect --model hinet-gopro\n"
        "  tlc inspect --weights model.pth --train-size 256 --size 720x1280\n"
        "  tlc inspect --list\n",
    )
    inspect.add_argument("--list", action="store_true", help="list the registry of released models")
    inspect.add_argument("--size", type=parse_size, metavar="HxW", help="also show windows and activation memory there")
    _add_model_options(inspect)

    synth = command(
        "synth", "Build a paired dataset (GoPro layout) from sharp photos with synthetic degradations.",
        "  tlc synth sharp/ pairs/ --noise 5 50 --noise-pattern step\n"
        "  tlc synth sharp/ pairs/ --blur 0 15 --blur-pattern ramp --noise 2 10 --seed 3\n",
    )
    synth.add_argument("sharp", type=Path, metavar="SHARP_DIR", help="folder of sharp images")
    synth.add_argument("out", type=Path, metavar="OUT_DIR", help="output folder (gets input/, target/, degradations.json)")
    synth.add_argument("--noise", nargs=2, type=float, default=(0.0, 0.0), metavar=("MIN", "MAX"),
                       help="Gaussian noise sigma range on 0..255 (default 0 0)")
    synth.add_argument("--noise-pattern", default="uniform", choices=("uniform", "ramp", "step", "blobs"),
                       help="how the noise level varies across the frame (default uniform)")
    synth.add_argument("--blur", nargs=2, type=float, default=(0.0, 0.0), metavar=("MIN", "MAX"),
                       help="motion blur length range in pixels (default 0 0: none)")
    synth.add_argument("--blur-angle", nargs=2, type=float, default=(0.0, 180.0), metavar=("MIN", "MAX"),
                       help="motion direction range in degrees, one per image (default 0 180: any)")
    synth.add_argument("--blur-pattern", default="uniform", choices=("uniform", "ramp", "step", "blobs"),
                       help="how the blur length varies across the frame (default uniform)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    # --- export (tlc.export.export_onnx; docs/export.md) ---
    export = command(
        "export", "Export a model, converted by default, to ONNX with dynamic batch, height and width.",
        "  tlc export --model tiny-nafnet -o tiny-nafnet-tlc.onnx\n"
        "  tlc export --weights model.pth --train-size 256 -o model.onnx --opset 18\n"
        "  tlc export --model hinet-gopro --weights HINet-GoPro.pth --mode full -o hinet.onnx\n"
        "\nThe file is run in onnxruntime on two sizes and must match PyTorch within 1e-4 before it\n"
        "is written (atomically; an existing file is kept unless --overwrite).\n",
    )
    export.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.onnx", help="the ONNX file to write")
    export.add_argument("--mode", choices=("tlc", "full"), default="tlc",
                        help="tlc: the converted model (default); full: the model as trained")
    export.add_argument("--example-size", type=parse_size, default=(64, 64), metavar="H[xW]",
                        help="size of the tracing input (default 64); the file accepts any size")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    export.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    _add_model_options(export)
    # --- end export ---
    return parser


# ----------------------------------------------------------------------------------------------
# Model selection, shared by restore, eval and inspect


@dataclass
class ChosenModel:
    model: nn.Module
    description: str
    train_size: tuple[int, int]
    base_size: tuple[int, int]


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is available")
    return name


def choose_model(args: argparse.Namespace, need_weights: bool = True) -> ChosenModel:
    """Load the model the flags name; TLC sizes from the flags, else the registry entry."""
    from . import archs, models
    from .checkpoints import load_model

    if args.model:
        try:
            entry = models.get(args.model)
        except KeyError as err:
            raise UsageError(err.args[0]) from None
        if args.weights is None and entry.bundled_weights is None and not need_weights:
            model, description = archs.build(entry.arch, **entry.config).eval(), f"{entry.name} (random weights)"
        else:
            model, description = load_model(entry.name, weights=args.weights), entry.name
        train = args.train_size or entry.train_size
        base = args.base_size or (entry.base_size if args.train_size is None else None)
    elif args.weights is not None:
        model, description = load_model(args.weights), str(args.weights)
        train, base = args.train_size or (256, 256), args.base_size
    else:
        raise UsageError("say which model: --model NAME (with --weights PATH) or --weights PATH")
    base = base or (int(train[0] * 1.5), int(train[1] * 1.5))
    return ChosenModel(model, description, train, base)


def _models_for(
    chosen: ChosenModel, modes: list[str], device: str, dtype: str, fast: bool, functional: bool = True
) -> tuple[dict, str]:
    """mode -> model on the device in the dtype (the TLC one converted), and the report text."""
    from .convert import convert

    model = chosen.model.to(device=device, dtype=getattr(torch, dtype))
    per_mode: dict[str, nn.Module] = {m: model for m in modes if m != "tlc"}
    report = ""
    if "tlc" in modes:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a model without global ops: the report says so
            per_mode["tlc"], conversion = convert(
                model, chosen.train_size, chosen.base_size, fast=fast, functional=functional
            )
        sites = sum(1 for site in conversion.call_sites if site.window is not None) if functional else 0
        report = (f"TLC: {len(conversion.converted) + sites} global ops made local "
                  f"(train {chosen.train_size[0]}x{chosen.train_size[1]}, base {chosen.base_size[0]}x{chosen.base_size[1]})")
    return per_mode, report


def _progress(iterable, total: int | None = None, desc: str = ""):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", disable=None, file=sys.stderr, dynamic_ncols=True)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Subcommands


def run_restore(args: argparse.Namespace) -> int:
    from . import data
    from .inference import RunSettings, restore

    paths, problems = data.collect_inputs(args.inputs)
    for problem in problems:
        _say(f"tlc: warning: {problem}")
    if not paths:
        raise UsageError("no input images found")
    max_megapixels, tile_margin = _tiling_flags(args)
    settings = RunSettings(mode=args.mode, tile=args.tile, overlap=args.overlap, device=_device(args.device),
                           dtype=args.dtype, max_megapixels=max_megapixels, tile_margin=tile_margin)
    chosen = choose_model(args)
    models, report = _models_for(chosen, [args.mode], settings.device, settings.dtype, args.fast, args.functional)
    if report:
        _say(report)
    model = models[args.mode]
    if max_megapixels is not None:
        _say_tile_context(model, tile_margin)
    inputs = {p.resolve() for p in paths}
    planned: dict[Path, Path] = {}
    failed = skipped = written = 0
    for path in paths:
        suffix = f".{args.ext.lstrip('.')}" if args.ext else path.suffix
        target = args.output / f"{path.stem}{suffix}"
        if target in planned:
            _say(f"tlc: error: {path}: its output {target} is also {planned[target]}'s; rename one of them")
            failed += 1
            continue
        planned[target] = path
    for target, path in _progress(planned.items(), total=len(planned), desc="restoring"):
        if target.resolve() in inputs:
            _say(f"tlc: error: {path}: the output would overwrite an input; choose another -o folder")
            failed += 1
            continue
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            image = data.read_image(path)
            if max_megapixels is not None:
                _say_tile_plan(model, path, image.pixels.shape[:2], max_megapixels, tile_margin)
            restored = restore(model, data.to_model_input(image), settings)
            pixels, alpha = data.from_model_output(restored, image)
            lossy = target.suffix.lower() in (".jpg", ".jpeg")  # 8-bit, no alpha: say so rather than fail
            depth = 8 if lossy or target.suffix.lower() in (".webp", ".bmp") else image.bit_depth
            if lossy and alpha is not None:
                _say(f"tlc: warning: {path}: JPEG has no alpha; the alpha channel is dropped")
                alpha = None
            data.write_image(target, pixels, bit_depth=depth, alpha=alpha, overwrite=args.overwrite)
            written += 1
        except data.ImageError as err:  # its message names the file
            _say(f"tlc: error: {err}")
            failed += 1
        except (ValueError, OSError) as err:
            _say(f"tlc: error: {path}: {err}")
            failed += 1
        except (RuntimeError, MemoryError) as err:  # e.g. out of memory: report this file, go on
            _say(f"tlc: error: {path}: {type(err).__name__}: {str(err).splitlines()[0]}")
            failed += 1
    note = f"; {skipped} skipped (already there, use --overwrite)" if skipped else ""
    _say(f"wrote {written} image(s) to {args.output}{note}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _tiling_flags(args: argparse.Namespace) -> tuple[float | None, int | None]:
    """--max-megapixels and --tile-margin checked, with errors naming the flags."""
    import math

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


def _say_tile_context(model: nn.Module, margin: int | None) -> None:
    """One line on the tiles' margin and where it comes from; a warning if it is a guess."""
    from .inference import model_tile_context

    context = model_tile_context(model)
    if margin is not None:
        _say(f"tiled TLC: margin {margin} px (--tile-margin), tiles on a {context.multiple}-px grid")
        return
    measured = "" if context.measured_margin is None or not context.converged else \
        f"; measured seam PSNR over {context.target_psnr:g} dB beyond {context.measured_margin[0]}x{context.measured_margin[1]}"
    _say(f"tiled TLC: margin {context.margin[0]}x{context.margin[1]} px (one window + convolutions "
         f"{context.rule_margin[0]}x{context.rule_margin[1]}{measured}), tiles on a {context.multiple}-px grid")
    if not context.converged:
        _say(f"tlc: warning: this model's seam error was still above {context.target_psnr:g} dB at the largest "
             f"margin measured ({context.margin[0]}x{context.margin[1]} px); --tile-margin sets a larger one")


def _say_tile_plan(model: nn.Module, path: Path, size: tuple[int, int], max_megapixels: float, margin: int | None) -> None:
    """One line per image on how it is tiled, and a warning when tiles are mostly margin."""
    from .inference import model_tile_plan

    plan = model_tile_plan(model, size, max_megapixels, margin=margin)
    if len(plan.tiles) > 1:
        _say(f"{path.name}: {plan}")
    if plan.overhead > 3:
        _say(f"tlc: warning: {path.name}: the tiles are mostly context margin ({plan.overhead:.1f}x the pixels of "
             "one pass); a larger --max-megapixels runs faster")


def _protocol(args: argparse.Namespace):
    from dataclasses import replace

    from .metrics import PROTOCOLS

    if args.protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {args.protocol!r}; choose from {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[args.protocol]
    if args.y_channel:
        protocol = replace(protocol, y_channel=True)
    if args.crop_border is not None:
        if args.crop_border < 0:
            raise UsageError("--crop-border must be >= 0")
        protocol = replace(protocol, crop_border=args.crop_border)
    if args.y_channel or args.crop_border:
        protocol = replace(protocol, name=f"{protocol.name}{'+y' if protocol.y_channel else ''}"
                                          f"{f'+crop{protocol.crop_border}' if protocol.crop_border else ''}")
    return protocol


def run_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from . import data
    from .distributed import DistributedError, PeerFailed, detect_launch, process_group
    from .evaluate import EvalSettings, EvaluationError, evaluate

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("full", "tlc", "tiles")]
    if unknown or not modes:
        raise UsageError(f"--modes takes full, tlc and tiles, got {args.modes!r}")
    if not args.sync_timeout > 0:
        raise UsageError(f"--sync-timeout must be a positive number of seconds, got {args.sync_timeout:g}")
    protocol = _protocol(args)
    pairs = data.find_pairs(args.dataset)
    if args.limit is not None:
        pairs = replace(pairs, pairs=pairs.pairs[: args.limit])
    device = _device(args.device)
    try:
        launch = detect_launch()  # torchrun's RANK, WORLD_SIZE, ...; a plain run is rank 0 of 1
    except DistributedError as err:
        raise UsageError(str(err)) from None
    say = _say if launch.rank == 0 else (lambda text: None)  # rank 0 speaks for the run; the others only fail
    try:
        with process_group(launch, device=device, timeout_s=args.sync_timeout) as group:
            per_mode, report, chosen, error = None, "", None, None
            try:
                chosen = choose_model(args)
                per_mode, report = _models_for(chosen, modes, device, args.dtype, args.fast, args.functional)
            except Exception as err:  # told to the others, so none of them waits for this process
                if not launch.distributed:
                    raise
                error = err
            group.agree(error, "loading the model")
            if report:
                say(report)
            settings = EvalSettings(model=chosen.description, modes=tuple(modes), protocol=protocol,
                                    train_size=chosen.train_size, base_size=chosen.base_size, fast=args.fast,
                                    functional=args.functional,
                                    tile=args.tile, overlap=args.overlap, device=device, dtype=args.dtype)
            processes = f", {launch.world_size} processes" if launch.distributed else ""
            say(f"{len(pairs.pairs)} pairs ({pairs.layout} layout), modes {', '.join(modes)}, "
                f"protocol {protocol.name}{processes}")
            desc = "evaluating (rank 0's share)" if launch.distributed else "evaluating"
            result = evaluate(per_mode, pairs, settings, args.out, save_images=args.save_images,
                              compare=args.compare, progress=lambda it: _progress(it, desc=desc), log=say,
                              group=group)
    except PeerFailed:
        # Rank 0 names the failed process. Exiting 0 lets torchrun wait for rank 0 to say so (a
        # non-zero exit here would make torchrun kill rank 0 first); the launch fails with rank 0.
        return 0
    except DistributedError as err:
        raise EvaluationError(f"{err}; the rows finished so far are kept: rerun to resume") from None
    if launch.rank == 0:
        print(result.table())
        say(f"results in {args.out}/ (per_image.csv, summary.json)")
    return 1 if result.failures else 0


def run_inspect(args: argparse.Namespace) -> int:
    from . import models
    from .convert import convert
    from .inspection import activation_memory

    if args.list:
        for entry in models.list():
            print(entry)
        return 0
    chosen = choose_model(args, need_weights=False)
    model = chosen.model
    count = sum(p.numel() for p in model.parameters())
    print(f"model: {chosen.description} ({type(model).__name__}), {count:,} parameters")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, report = convert(model, chosen.train_size, chosen.base_size, fast=args.fast,
                                    functional=args.functional)
    print(report)
    if args.size:
        print(activation_memory(model, converted, report, args.size))
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from .synth_cli import synthesize

    return synthesize(args, progress=_progress, log=_say)


COMMANDS = {"restore": run_restore, "eval": run_eval, "inspect": run_inspect, "synth": run_synth}


# --- export (tlc.export.export_onnx; docs/export.md) ---
def run_export(args: argparse.Namespace) -> int:
    from .export import ExportError, export_onnx

    chosen = choose_model(args)
    per_mode, report = _models_for(chosen, [args.mode], "cpu", "float32", args.fast, args.functional)
    if report:
        _say(report)
    try:
        result = export_onnx(per_mode[args.mode], args.output, example_size=args.example_size, opset=args.opset,
                             overwrite=args.overwrite, check=not args.no_check)
    except (ExportError, FileExistsError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(result)
    return 0


COMMANDS["export"] = run_export
# --- end export ---


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .checkpoints import CheckpointError
    from .convert import ConversionError

    known: tuple[type[BaseException], ...] = (UsageError, CheckpointError, ConversionError, FileNotFoundError)
    try:
        from .data import ImageError
        from .evaluate import EvaluationError

        known += (ImageError, EvaluationError)
        return COMMANDS[args.command](args)
    except known as err:
        _say(f"tlc: error: {err}")
        return 2
    except KeyboardInterrupt:
        _say("tlc: interrupted")
        return 130
    except Exception as err:  # a bug or an environment problem: still one line unless asked
        if os.environ.get("TLC_DEBUG"):
            traceback.print_exc()
        else:
            _say(f"tlc: error: {type(err).__name__}: {err} (set TLC_DEBUG=1 for a traceback)")
        return 1
