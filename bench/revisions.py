"""Two revisions of tlc side by side in one process: each corpus model converted by both, timed in
turns against the original.

This host's spread between runs (0.02-0.10 on a converted/original ratio) is larger than most
single changes, so a change is measured against its parent here, in one process: ``--rev``'s
``src/tlc`` is extracted (``git archive``) into a temporary folder as a package of another name
(tlc's imports within itself are relative), every model is converted by it and by the working
tree's tlc, and the original, the old conversion and the new one take turns (order reversed every
other turn). Per turn the ratios new/original, old/original and new/old are taken; their medians
are printed. The old package's numba kernels compile afresh on first use (its files are new to
numba's cache): the first model takes a minute longer.

    python bench/revisions.py --rev HEAD~1 --only cbam,gcnet --train-size 32 --repeats 9
    python bench/revisions.py --rev 9b23353 --train-size 32,256 --keep-freed-memory

A whole model's ratio cannot resolve a millisecond here (a change 1.1 ms slower at each of five
sites read 0.984, faster), so ``--ops`` times the local ops themselves instead, old
against new in turns, at a light shell's full-resolution site (16 channels at ``--size``, the
window of each ``--train-size`` at level 0: 1.5 times it) and says whether their outputs have the
same bits:

    python bench/revisions.py --rev HEAD~1 --ops --train-size 32,256 --repeats 15
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_allocator_options, allocator_from, interleaved_seconds  # noqa: E402

OLD_NAME = "tlc_at_revision"
#: the corpus models with channel attention (the ones a kernel change moves)
GATES = ("rcan,mprnet,nafnet,se-linear,cbam,cbam-linear,eca,srm,max-attention,gcnet,imdn,mirnet-skff,"
         "dehaze-skfusion")


def extract_package(rev: str, into: Path) -> None:
    """``rev``'s ``src/tlc`` written to ``into / OLD_NAME``."""
    try:
        archive = subprocess.run(["git", "archive", rev, "src/tlc"], cwd=ROOT, check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"--rev {rev}: git archive failed: {err.stderr.decode().strip()}") from None
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "src" / "tlc").rename(into / OLD_NAME)


@dataclass(frozen=True)
class OpCase:
    """One timed call: ``tlc.ops.<module>.<function>(*args, **kwargs)`` (the same name in both
    revisions)."""

    name: str
    module: str
    function: str
    args: tuple
    kwargs: dict


def op_cases(size: tuple[int, int], window: int) -> list[OpCase]:
    """The local ops at a light shell's full-resolution site: 16 channels at ``size``, a square
    ``window``; the gates' values over the valid windows; seeded."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    k = min(window, h, w)
    gh, gw = h - k + 1, w - k + 1

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    x, half = randn(1, 16, h, w), randn(1, 32, h // 2, w // 2)
    return [
        OpCase("windows' means (valid)", "pool", "valid_local_mean", (x, k), {}),
        OpCase("local mean (replicated)", "pool", "local_mean", (x, k), {}),
        OpCase("windows' maxima (valid)", "extrema", "valid_local_max", (x, k), {}),
        OpCase("local variance", "stats", "local_var", (x, k), {}),
        OpCase("softmax pooling (GCNet)", "context", "local_softmax_pool", (x, randn(1, 1, h, w), k), {"valid_only": True}),
        OpCase("gate 4 -> 16, sigmoid, x", "gate", "combine_replicated",
               (x, randn(1, 4, gh, gw), "mul", "sigmoid", randn(16, 4), randn(16)), {}),
        OpCase("gate 8 -> 16, + (GCNet)", "gate", "combine_replicated",
               (x, randn(1, 8, gh, gw), "add", None, randn(16, 8), randn(16)), {}),
        OpCase("gate ECA taps, sigmoid, x", "gate", "combine_replicated",
               (x, randn(1, 16, gh, gw), "mul", "sigmoid"), {"channel_taps": randn(3), "channel_pad": 1}),
        OpCase("gate sigmoid, x", "gate", "combine_replicated", (x, randn(1, 16, gh, gw), "mul", "sigmoid"), {}),
        OpCase("1x1 layer 16 -> 8, every pixel", "gate", "channel_product", (randn(8, 16), x.view(16, h * w)), {}),
        OpCase("layer norm of 8-row columns", "norm", "layer_norm_columns",
               (randn(8, gh * gw), torch.rand(8, generator=g) + 0.5, randn(8)), {}),
        OpCase("group norm, 32 ch at half size", "norm", "local_group_norm", (half, 8, max(1, k // 2)), {}),
    ]


def compare_ops(args: argparse.Namespace, trains: list[int]) -> None:
    """``--ops``: each of :func:`op_cases` by the old revision and the new, in turns."""
    print(f"{args.rev} (old) against the working tree (new), the local ops at 16 x {args.size[0]} x {args.size[1]}, "
          f"{args.threads} threads, median of {args.repeats} turns' times")
    print("| op | window | old ms | new ms | new / old | outputs |")
    print("|---|---|---|---|---|---|")
    for train in trains:
        window = round(1.5 * train)
        for case in op_cases(args.size, window):
            new_fn = getattr(importlib.import_module(f"tlc.ops.{case.module}"), case.function)
            try:
                old_fn = getattr(importlib.import_module(f"{OLD_NAME}.ops.{case.module}"), case.function)
            except (ImportError, AttributeError):
                print(f"| {case.name} | {window} | - | - | - | not in {args.rev} |", flush=True)
                continue
            fns: dict[str, Callable[[], object]] = {
                "old": lambda f=old_fn: f(*case.args, **case.kwargs), "new": lambda f=new_fn: f(*case.args, **case.kwargs)}
            with torch.inference_mode():
                old_out, new_out = fns["old"](), fns["new"]()
                same = "same bits" if torch.equal(old_out, new_out) else f"max diff {(old_out - new_out).abs().max().item():.1e}"
                times = interleaved_seconds(fns, "cpu", warmup=0, repeats=args.repeats)  # the calls above warmed up
            old_ms, new_ms = (1e3 * statistics.median(times[key]) for key in ("old", "new"))
            ratio = statistics.median(a / b for a, b in zip(times["new"], times["old"]))
            print(f"| {case.name} | {window} | {old_ms:.2f} | {new_ms:.2f} | {ratio:.3f} | {same} |", flush=True)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return h, w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the git revision to compare the working tree with")
    parser.add_argument("--only", default=GATES, help="comma-separated corpus names (default: the gate models)")
    parser.add_argument("--train-size", default="32", help="comma-separated training sizes (default 32)")
    parser.add_argument("--size", type=parse_size, default=(720, 1280), help="HxW of the timed image")
    parser.add_argument("--repeats", type=int, default=7, help="turns (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--ops", action="store_true",
                        help="time the local ops at a full-resolution site instead of the corpus models (--only unused)")
    add_allocator_options(parser, "revisions")
    args = parser.parse_args()
    allocator_from(args, "revisions")
    torch.set_num_threads(args.threads)

    import tlc
    from tests.corpus import CORPUS, build
    from tests.test_corpus import image

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    entries = {e.name: e for e in CORPUS}
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise SystemExit(f"--only: no corpus model {', '.join(unknown)} (known: {', '.join(entries)})")
    trains = [int(t) for t in args.train_size.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        extract_package(args.rev, Path(folder))
        sys.path.insert(0, folder)
        if args.ops:
            compare_ops(args, trains)  # imports the old revision's ops modules by name
            return
        old_tlc = importlib.import_module(OLD_NAME)
        print(f"{args.rev} (old) against the working tree (new), {args.size[0]}x{args.size[1]}, "
              f"{args.threads} threads, median of {args.repeats} turns' ratios")
        print("| model | train | original ms | old / original | new / original | new / old | max abs(new - old) |")
        print("|---|---|---|---|---|---|---|")
        for name in names:
            entry = entries[name]
            model = build(entry, wide=True)
            x = image(1, *args.size, seed=3)
            for train in trains:
                kwargs = {"train_size": train} if entry.in_channels is None else {
                    "train_size": train, "in_channels": entry.in_channels}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    new, _ = tlc.convert(model, **kwargs)
                    old, _ = old_tlc.convert(model, **kwargs)
                fns = {"original": model, "old": old, "new": new}
                times: dict[str, list[float]] = {k: [] for k in fns}
                with torch.inference_mode():
                    difference = (old(x.clone()) - new(x.clone())).abs().max().item()
                    for fn in fns.values():  # warm-up
                        fn(x.clone())
                    for turn in range(args.repeats):
                        for key in (list(fns) if turn % 2 == 0 else list(fns)[::-1]):
                            start = time.perf_counter()
                            fns[key](x.clone())
                            times[key].append(time.perf_counter() - start)

                def ratio(a: str, b: str) -> float:
                    return statistics.median(p / q for p, q in zip(times[a], times[b]))

                print(f"| {name} | {train} | {1e3 * statistics.median(times['original']):.1f} | "
                      f"{ratio('old', 'original'):.3f} | {ratio('new', 'original'):.3f} | {ratio('new', 'old'):.3f} | "
                      f"{difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
