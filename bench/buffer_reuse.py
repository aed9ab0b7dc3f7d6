"""What reusing the gates' buffers saves: converted corpus models with and without it, side by side.

A local gate's maps are nearly as large as the feature map, and each one allocated afresh costs
page faults (glibc maps buffers above 32 MB anew each time). tlc reuses them two ways: the
pooled-gate rule's graph overwrites maps only one node reads (``apply_pointwise(overwrite=True)``,
``tlc.ops.gate.into_first``), and followed pooled values put their results into dead values'
buffers (``tlc.convert.spare_buffers``). This script converts each model twice and undoes both in
the second copy (the graph's nodes put back to the plain calls, no spare buffers), then times the
original and both copies taking turns in one process (batch 1, float32, CPU). Printed per model:
the median over the turns of each turn's ratio: with / original, without / original, with /
without.

    python bench/buffer_reuse.py                                  # the channel-attention models, 720p, train 32
    python bench/buffer_reuse.py --only cbam,srm --train-size 256 --repeats 9
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import fx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from corpus import pin_threads  # noqa: E402

import tlc  # noqa: E402
from tests.corpus import CORPUS, build  # noqa: E402
from tests.test_corpus import image  # noqa: E402
from tlc.convert.spare_buffers import SpareBuffers  # noqa: E402
from tlc.ops.gate import apply_pointwise, into_first  # noqa: E402

MODELS = "cbam,rcan,mprnet,max-attention,nafnet,srm,imdn,se-linear,cbam-linear,mirnet-skff,eca,gcnet,dehaze-skfusion"
_PLAIN = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "sigmoid": torch.sigmoid,
          "tanh": torch.tanh, "relu": torch.relu}


def without_overwriting(model: torch.nn.Module) -> int:
    """Put the pooled-gate graphs' overwriting calls back to the plain ones; how many were."""
    undone = 0
    for module in model.modules():
        if not isinstance(module, fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.target is into_first:
                node.target, node.args = _PLAIN[node.args[0]], node.args[1:]
                undone += 1
            elif node.target is apply_pointwise and node.kwargs:
                node.kwargs = {}
                undone += 1
        module.recompile()
    return undone


class NoSpares:
    """While active, followed pooled values find no spare buffer."""

    def __enter__(self) -> None:
        self.saved = SpareBuffers.compute_into, SpareBuffers.take
        SpareBuffers.compute_into = lambda self, *args, **kwargs: None
        SpareBuffers.take = lambda self, *args, **kwargs: None

    def __exit__(self, *exc: object) -> None:
        SpareBuffers.compute_into, SpareBuffers.take = self.saved


def time_turns(runs: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Seconds per forward of each model, taking turns (the starting model rotates), after one
    warm-up each; the one named "without" runs with no spare buffers."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    order = list(runs)

    def run(key: str) -> None:
        with NoSpares() if key == "without" else contextlib.nullcontext():
            start = time.perf_counter()
            runs[key](x)
            times[key].append(time.perf_counter() - start)

    with torch.inference_mode():
        for key in order:  # warm-up
            run(key)
        for series in times.values():
            series.clear()
        for turn in range(repeats):
            for key in order[turn % len(order) :] + order[: turn % len(order)]:
                run(key)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=MODELS, help="comma-separated corpus names")
    parser.add_argument("--size", default="720x1280", help="HxW of the timed image")
    parser.add_argument("--train-size", type=int, default=32, help="train_size passed to tlc.convert")
    parser.add_argument("--repeats", type=int, default=7, help="turns (each runs all three once)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pin_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    x = image(1, h, w, seed=3)
    entries = {e.name: e for e in CORPUS}
    print(f"buffer reuse at {h}x{w}, train {args.train_size}, {args.threads} threads, median of {args.repeats} turns")
    for name in args.only.split(","):
        entry = entries[name]
        model = build(entry, wide=True)
        kwargs = {"train_size": args.train_size}
        if entry.in_channels is not None:
            kwargs["in_channels"] = entry.in_channels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reusing, _ = tlc.convert(model, **kwargs)
            plain, _ = tlc.convert(model, **kwargs)
        undone = without_overwriting(plain)
        times = time_turns({"original": model, "with": reusing, "without": plain}, x, args.repeats)

        def ratio(a: str, b: str, times: dict[str, list[float]] = times) -> float:
            return statistics.median(p / q for p, q in zip(times[a], times[b]))

        print(
            f"{name:16s} original {statistics.median(times['original']) * 1e3:7.1f} ms  with {ratio('with', 'original'):.3f}x"
            f"  without {ratio('without', 'original'):.3f}x  with / without {ratio('with', 'without'):.3f}"
            f"  (graph calls undone: {undone})",
            flush=True,
        )


if __name__ == "__main__":
    main()
