"""What every subcommand shares: the usage error, size parsing, console output, the device, the
model and running option groups, and error messages in the command line's terms (:data:`FLAGS`)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from .._util import Hint
from ..io import MAX_PIXELS_ENV


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


#: (function, keyword) named by a library error's :class:`~tlc._util.Hint` -> the flag that sets
#: it, as the command line's message names it in the keyword's place ("{value}": the value the
#: hint gives). An error whose hint has no entry keeps its message (tests/test_cli_advice.py
#: checks that every hint the command line can meet has one).
FLAGS: dict[tuple[str, str], str] = {
    ("find_pairs", "strict"): "--skip-missing",
    ("read_image", "max_pixels"): "--pixel-limit MEGAPIXELS",
    ("load_model", "strict"): "--no-strict",
    ("load_model", "weights"): "--weights PATH",
    ("load_model", "tlc.models.list()"): "`tlc inspect --list`",
    ("read_state_dict", "key"): "--checkpoint-key KEY",
    ("load_model", "arch"): "--model NAME, a registry model of that architecture (`tlc inspect --list`), "
                            "with this file as --weights",
    ("atomic_write", "overwrite"): "--overwrite",
    ("export_onnx", "overwrite"): "--overwrite",
    ("export_onnx", "example_size"): "--example-size",
    ("convert", "fast"): "the exact pooling (leave out --fast)",
    ("plan_tiles", "max_megapixels"): "--max-megapixels {value}",
    ("Protocol", "crop_border"): "--crop-border {value}",
    ("process_group", "device"): "--device cuda",
    ("Degradation", "noise_sigma"): "--noise",
    ("Degradation", "blur_length"): "--blur",
    ("Degradation", "blur_angle"): "--blur-angle",
}


def error_text(err: BaseException) -> str:
    """``err``'s message for the command line: where it names a keyword argument of a library
    function (its ``hint``), the flag that sets it instead (:data:`FLAGS`)."""
    hint = getattr(err, "hint", None)
    flag = FLAGS.get((hint.function, hint.parameter)) if isinstance(hint, Hint) else None
    return str(err) if flag is None else hint.message(flag.format(value=hint.value))


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


BaseSpec = tuple  # (H, W) in pixels, or (factor,): that many times the training size


def parse_base_sizes(text: str) -> list[BaseSpec]:
    """'384' -> [(384, 384)]; '1.5x' -> [(1.5,)] (times the training size); a comma-separated list
    of either, e.g. '1x,1.5x,2x,3x' or '256,384,512x768' (a window ablation in `tlc eval`)."""
    specs: list[BaseSpec] = []
    for part in (p.strip() for p in text.split(",")):
        if part.lower().endswith("x") and part[:-1].replace(".", "", 1).isdigit():
            factor = float(part[:-1])
            if not factor > 0:
                raise argparse.ArgumentTypeError(f"a relative base size must be positive, got {part!r}")
            specs.append((factor,))
        else:
            specs.append(parse_size(part))
    if not specs:
        raise argparse.ArgumentTypeError("expected H[xW] or a factor like 1.5x")
    return specs


def resolve_base_size(spec: BaseSpec, train_size: tuple[int, int]) -> tuple[int, int]:
    """A --base-size value in pixels: (H, W) as given, or a factor times the training size."""
    if len(spec) == 2:
        return spec  # type: ignore[return-value]
    return tuple(max(1, round(spec[0] * t)) for t in train_size)  # type: ignore[return-value]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="NAME",
                       help="registry name (see `tlc inspect --list`); without --weights its released weights "
                            "are downloaded into the cache on first use (see `tlc download --help`)")
    group.add_argument("--weights", metavar="PATH", type=Path, help="checkpoint file (.pth, .pt, .safetensors)")
    group.add_argument("--train-size", metavar="H[xW]", type=parse_size,
                       help="training crop size (default: the registry entry's, else 256)")
    group.add_argument("--base-size", metavar="H[xW]|Fx", type=parse_base_sizes,
                       help="local window in image pixels, or a factor of the training size like 1.5x (default: "
                            "the paper's setting, else 1.5x); `tlc eval` takes several, comma-separated "
                            "(1x,1.5x,2x,3x), and scores each: a window ablation")
    group.add_argument("--checkpoint-key", metavar="KEY",
                       help="the checkpoint's entry holding the weights, e.g. params_ema (default: found among "
                            "params_ema, params, state_dict, model, net, ...)")
    group.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                       help="every key of the checkpoint must match the model (default); --no-strict: missing and "
                            "unexpected keys are allowed (missing weights keep their initial values), other "
                            "shapes never")
    group.add_argument("--fast", action="store_true",
                       help="use the reference's approximate fast_imp pooling (not exact)")
    group.add_argument("--functional", action=argparse.BooleanOptionalAction, default=True,
                       help="find global ops by what the model calls at run time (x.mean((2, 3), keepdim=True), "
                            "F.adaptive_avg_pool2d(x, 1), hand-written statistics, ...; see docs/functional.md): "
                            "made local where exact, else reported (default); --no-functional: module rules only")


def add_run_options(parser: argparse.ArgumentParser, modes: bool) -> None:
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
    group.add_argument("--pixel-limit", metavar="MEGAPIXELS",
                       help="refuse images over this many megapixels, checked before decoding (a guard against "
                            f"decompression bombs; default: ${MAX_PIXELS_ENV} in pixels, else 200)")


def positive_megapixels(value: str, flag: str, example: str) -> float:
    """The value of ``flag`` as a positive, finite number of megapixels, else a UsageError
    naming the flag with ``example``."""
    try:
        megapixels = float(value)
    except ValueError:
        megapixels = math.nan
    if not math.isfinite(megapixels) or megapixels <= 0:
        raise UsageError(f"{flag} must be a positive number of megapixels, e.g. {example}; got {value!r}")
    return megapixels


def pixel_limit(args: argparse.Namespace) -> int | None:
    """--pixel-limit in pixels (None: the library's default), checked."""
    if args.pixel_limit is None:
        return None
    return max(1, round(positive_megapixels(args.pixel_limit, "--pixel-limit", "400") * 1e6))


def check_tiles(tile: int, overlap: int) -> None:
    """--tile and --overlap as tiles mode needs them."""
    if tile < 1:
        raise UsageError(f"--tile must be a positive number of pixels, got {tile}")
    if not 0 <= overlap < tile:
        raise UsageError(f"--overlap must be at least 0 and less than --tile ({tile}), got {overlap}")


def device(name: str) -> str:
    """The torch device a --device value names ("auto": cuda when available, else cpu)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        found = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}") from None
    if found.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is available")
    return name


def progress(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "img") -> Iterable:
    """A progress bar on stderr counting ``unit`` (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None, file=sys.stderr, dynamic_ncols=True)


def say(text: str) -> None:
    """One line for the user, on stderr (stdout carries results)."""
    print(text, file=sys.stderr)
