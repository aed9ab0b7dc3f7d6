"""``tlc export``: a model, converted by default, to ONNX (tlc.export.export_onnx; docs/export.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import export as onnx_export
from .common import UsageError, add_model_options, error_text, parse_size, say
from .chooser import chosen_model, models_for

SUMMARY = "Export a model, converted by default, to ONNX with dynamic batch, height and width."
EXAMPLES = (
    "  tlc export --model tiny-nafnet -o tiny-nafnet-tlc.onnx\n"
    "  tlc export --weights model.pth --train-size 256 -o model.onnx --opset 18\n"
    "  tlc export --model hinet-gopro --weights HINet-GoPro.pth --mode full -o hinet.onnx\n"
    "\nThe file is run in onnxruntime on two sizes and must match PyTorch within 1e-4 before it\n"
    "is written (atomically; an existing file is kept unless --overwrite).\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.onnx", help="the ONNX file to write")
    parser.add_argument("--mode", choices=("tlc", "full"), default="tlc",
                        help="tlc: the converted model (default); full: the model as trained")
    parser.add_argument("--example-size", type=parse_size, default=(64, 64), metavar="H[xW]",
                        help="size of the tracing input (default 64); the file accepts any size")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    chosen = chosen_model(args)
    per_mode, report = models_for(chosen, [args.mode], "cpu", "float32", args.fast, args.functional)
    if report:
        say(report)
    try:
        # Looked up on the module at call time (tests replace it with a stand-in).
        result = onnx_export.export_onnx(per_mode[args.mode], args.output, example_size=args.example_size,
                                         opset=args.opset, overwrite=args.overwrite, check=not args.no_check)
    except (onnx_export.ExportError, FileExistsError, ValueError) as err:
        raise UsageError(error_text(err)) from None
    print(result)
    return 0
