"""The ``tlc`` command line: restore, eval, inspect, download, synth, export.

Every subcommand has ``--help`` with examples. Bad input gives a one-line ``tlc: error: ...`` and
a non-zero exit code (2 for unusable arguments or inputs, 1 when some files failed), never a
traceback (set TLC_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .. import __version__
from ..convert import ConversionError
from ..eval.records import EvaluationError
from ..io import ImageError, VideoError
from ..run.allocator import keep_freed_memory_if_asked
from ..zoo import CheckpointError
from . import eval as eval_command
from . import download, export, inspect, restore, synth
from .common import UsageError, error_text, say

DESCRIPTION = """\
tlc: Test-time Local Converter for image restoration models.

Restoration networks trained on small crops lose quality on whole images because their global
operations (global average pooling, instance norm, transposed attention) aggregate over far more
than they saw in training. tlc makes those operations local, over a window about the training
crop, without retraining.
"""

EXAMPLES = """\
examples:
  tlc restore photo.png -o out/ --model nafnet-gopro-width64     # weights downloaded on first use
  tlc restore photo.png -o out/ --model nafnet-gopro-width64 --weights NAFNet-GoPro-width64.pth
  tlc eval datasets/GoPro/test --weights model.pth --modes full,tlc,tiles --out results/
  tlc inspect --model restormer-gopro --size 720x1280
  tlc download hinet-gopro                                         # into ~/.cache/tlc (or $TLC_HOME)
  tlc synth sharp_photos/ synthetic_set/ --noise 5 50 --noise-pattern step

environment (CPU memory, Linux): the command puts large buffers on transparent huge pages
(THP_MEM_ALLOC_ENABLE=0 turns that off). TLC_KEEP_FREED_MEMORY=1 has glibc keep freed memory for
the next buffers: CPU forwards up to 2x faster, but peak memory on 4K images up to 1.9x higher.
"""

#: name -> the module with its SUMMARY, EXAMPLES, add_arguments(parser) and run(args) -> exit code.
COMMANDS = {"restore": restore, "eval": eval_command, "inspect": inspect, "download": download, "synth": synth,
            "export": export}

# torch's CPU allocator reads this once, at its first large allocation: 1 puts buffers of 2 MB and
# more on transparent huge pages (madvise), 512x fewer page faults on each fresh buffer.
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"

KNOWN_ERRORS = (UsageError, CheckpointError, ConversionError, FileNotFoundError, ImageError, VideoError, EvaluationError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlc", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tlc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(
            name, help=command.SUMMARY, description=command.SUMMARY, epilog=f"examples:\n{command.EXAMPLES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ))
    return parser


def ask_for_huge_pages() -> bool:
    """Have torch's CPU allocator put large buffers on transparent huge pages, unless the user set
    ``THP_MEM_ALLOC_ENABLE`` (to 0 to turn this off). Returns whether it is asked for now.

    Why: glibc maps every buffer above 32 MB afresh and each first write to a 4 KB page faults;
    a 720p forward of a restoration network makes 0.3-0.9 M such faults, a third or more of its
    time on the CPU here (bench/huge_pages.py: the same forwards 1.3-1.6x faster with huge pages,
    the outputs bit for bit the same). Effective only before torch's first large allocation, so
    :func:`main` calls it first; Linux only (elsewhere torch ignores the variable).
    """
    if HUGE_PAGES_VARIABLE in os.environ or not sys.platform.startswith("linux"):
        return False
    os.environ[HUGE_PAGES_VARIABLE] = "1"
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    ask_for_huge_pages()
    # Opt-in (TLC_KEEP_FREED_MEMORY=1): 720p forwards 1.2-2x faster here, but peak memory at 4K up
    # 1.5-1.9x (tlc.run.allocator; bench/memory.py and bench/page_faults.py --keep-freed-memory).
    try:
        keep_freed_memory_if_asked()
    except ValueError as err:
        say(f"tlc: error: {err}")
        return 2
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command].run(args)
    except KNOWN_ERRORS as err:
        say(f"tlc: error: {error_text(err)}")
        return 2
    except KeyboardInterrupt:
        say("tlc: interrupted")
        return 130
    except Exception as err:  # a bug or an environment problem: still one line unless asked
        if os.environ.get("TLC_DEBUG"):
            traceback.print_exc()
        else:
            say(f"tlc: error: {type(err).__name__}: {error_text(err)} (set TLC_DEBUG=1 for a traceback)")
        return 1
