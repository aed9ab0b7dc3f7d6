"""The ``tlc`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__

DESCRIPTION = """\
tlc: Test-time Local Converter for image restoration models.

Restoration networks trained on small crops lose quality on whole images because their global
operations aggregate over far more than they saw in training; tlc makes those operations local.
The Python API is the way in for now:

    import tlc
    model, report = tlc.convert(model, train_size=(256, 256))
    print(report)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlc", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tlc {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    parser.print_help()
    return 0
