"""``tlc inspect``: a model's global ops, their feature sizes at training and their windows."""

from __future__ import annotations

import argparse
import warnings

from ..convert import convert
from ..inspection import activation_memory
from ..zoo import registry
from ..zoo.download import cache_dir, cached_weights
from .common import add_model_options, parse_size
from .chooser import chosen_model

SUMMARY = "Show a model's global ops, their feature sizes at training and their windows."
EXAMPLES = (
    "  tlc inspect --model hinet-gopro\n"
    "  tlc inspect --weights model.pth --train-size 256 --size 720x1280\n"
    "  tlc inspect --list          # every registry entry, and whether its weights are here\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true",
                        help="list the registry of released models, each bundled, cached or not downloaded yet")
    parser.add_argument("--size", type=parse_size, metavar="HxW", help="also show windows and activation memory there")
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    if args.list:
        for entry in registry.list():
            state = "bundled" if entry.bundled_weights is not None else \
                "cached" if cached_weights(entry) is not None else "not downloaded"
            print(f"{entry} [{state}]")
        print(f"weights cache: {cache_dir() / 'weights'} (downloaded on first use, or `tlc download NAME`)")
        return 0
    chosen = chosen_model(args, need_weights=False)
    model = chosen.model
    count = sum(p.numel() for p in model.parameters())
    print(f"model: {chosen.description} ({type(model).__name__}), {count:,} parameters")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, report = convert(model, chosen.train_size, chosen.base_size, fast=args.fast,
                                    functional=args.functional)
    print(report)
    if args.size:
        print(activation_memory(model, converted, report, args.size))
    return 0
