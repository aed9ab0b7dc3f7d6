"""``tlc download``: released weights into the cache (what ``--model NAME`` does on first use)."""

from __future__ import annotations

import argparse

from ..zoo import registry
from ..zoo.download import DownloadError, cache_dir, cached_weights, ensure_weights, size_text
from .common import UsageError, error_text, say

SUMMARY = "Download released weights into the cache (restore, eval and export --model NAME do it on first use)."
EXAMPLES = (
    "  tlc download nafnet-gopro-width64\n"
    "  tlc download hinet-gopro restormer-gopro --timeout 120\n"
    "  TLC_HOME=/data/tlc tlc download nafnet-sidd-width64     # another cache folder\n"
    "\nThe cache is $TLC_HOME, else $XDG_CACHE_HOME/tlc, else ~/.cache/tlc; `tlc inspect --list` shows\n"
    "what is in it. A download is kept only if it loads safely and fits the model exactly; an\n"
    "interrupted one resumes. Offline (or TLC_OFFLINE=1): put the file at the path the error names,\n"
    "or pass --weights PATH to restore/eval.\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="registry names (see `tlc inspect --list`)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="longest wait for a connection or for data before retrying (default 30)")


def run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    entries = []
    for name in args.names:  # every name checked before anything is downloaded
        try:
            entries.append(registry.get(name))
        except KeyError as err:
            raise UsageError(err.args[0]) from None
    entries = list(dict.fromkeys(entries))
    failed = 0
    for entry in entries:
        found = cached_weights(entry)
        if found is not None:
            where = "bundled with tlc" if entry.bundled_weights is not None else "already in the cache"
            print(f"{entry.name}: {where}: {found} ({size_text(found.stat().st_size)})")
            continue
        try:
            path = ensure_weights(entry, timeout=args.timeout, log=say)
        except DownloadError as err:
            say(f"tlc: error: {error_text(err)}")
            failed += 1
            continue
        print(f"{entry.name}: {path} ({size_text(path.stat().st_size)})")
        if entry.non_commercial:
            say(f"note: {entry.name}'s weights: {entry.licence}")
    if failed:
        say(f"{failed} of {len(entries)} not downloaded; the cache is {cache_dir()}")
    return 1 if failed else 0
