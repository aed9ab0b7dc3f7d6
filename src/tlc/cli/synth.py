"""``tlc synth``: a paired dataset (GoPro layout) from sharp photos with synthetic degradations."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..synth import PATTERNS, Degradation, write_pairs
from .common import UsageError, error_text, progress, say

SUMMARY = "Build a paired dataset (GoPro layout) from sharp photos with synthetic degradations."
EXAMPLES = (
    "  tlc synth sharp/ pairs/ --noise 5 50 --noise-pattern step\n"
    "  tlc synth sharp/ pairs/ --blur 0 15 --blur-pattern ramp --noise 2 10 --seed 3\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sharp", type=Path, metavar="SHARP_DIR", help="folder of sharp images")
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="output folder (gets input/, target/, degradations.json)")
    parser.add_argument("--noise", nargs=2, type=float, default=(0.0, 0.0), metavar=("MIN", "MAX"),
                        help="Gaussian noise sigma range on 0..255 (default 0 0)")
    parser.add_argument("--noise-pattern", default="uniform", choices=PATTERNS,
                        help="how the noise level varies across the frame (default uniform)")
    parser.add_argument("--blur", nargs=2, type=float, default=(0.0, 0.0), metavar=("MIN", "MAX"),
                        help="motion blur length range in pixels (default 0 0: none)")
    parser.add_argument("--blur-angle", nargs=2, type=float, default=(0.0, 180.0), metavar=("MIN", "MAX"),
                        help="motion direction range in degrees, one per image (default 0 180: any)")
    parser.add_argument("--blur-pattern", default="uniform", choices=PATTERNS,
                        help="how the blur length varies across the frame (default uniform)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args: argparse.Namespace) -> int:
    try:
        degradation = Degradation(
            noise_sigma_min=args.noise[0], noise_sigma_max=args.noise[1], noise_pattern=args.noise_pattern,
            blur_length_min=args.blur[0], blur_length_max=args.blur[1], blur_pattern=args.blur_pattern,
            blur_angle_min=args.blur_angle[0], blur_angle_max=args.blur_angle[1],
        )
        report = write_pairs(args.sharp, args.out, degradation, seed=args.seed, overwrite=args.overwrite,
                             progress=progress, log=say)
    except (ValueError, TypeError) as err:
        raise UsageError(error_text(err)) from None
    note = f", {report.skipped} already there (use --overwrite)" if report.skipped else ""
    say(f"wrote {report.written} pair(s) to {args.out} (input/, target/, degradations.json){note}"
        + (f"; {report.failed} failed" if report.failed else ""))
    return 1 if report.failed else 0
