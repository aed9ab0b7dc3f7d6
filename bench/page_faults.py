"""Where a converted network's extra CPU time goes: its local ops, or page faults in layers TLC
never touched.

For each corpus model (built wide, perturbed, as bench/corpus.py times it) the original and the
converted model (``tlc.convert(model, train_size=...)``) take turns in one process. Hooks on the
modules holding the converted sites (e.g. ``enc1.att``) time them and count the process's minor
page faults inside them (``getrusage``, every thread); the rest of the forward is the difference.

What it separates: TLC's own cost (the sites' extra time) from what moves elsewhere. A forward
here faults hundreds of thousands of times (every buffer above glibc's 32 MB limit, and heap memory
glibc returned to the kernel, is mapped afresh and faults once per 4 KB page on its first write);
the gates' temporary maps (5-20 MB each) change how glibc's heap is laid out, so the untouched
layers of the converted model fault more or less than the original's, by tens of thousands of
faults per forward either way, from run to run.

    python bench/page_faults.py                          # the corpus models over 1.10x
    python bench/page_faults.py --only se-linear --repeats 9 --train-size 32
    python bench/page_faults.py --huge-pages --keep-freed-memory   # as tlc with TLC_KEEP_FREED_MEMORY=1
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from common import add_allocator_options, allocator_from, machine, merged, write_csv  # noqa: E402
from corpus import pin_threads  # noqa: E402

import tlc  # noqa: E402
from tests.corpus import CORPUS, build  # noqa: E402
from tests.test_corpus import image  # noqa: E402

DEFAULT_MODELS = ("se-linear", "cbam", "cbam-linear", "eca", "max-attention", "gcnet", "mirnet-skff",
                  "dehaze-skfusion", "ddpm-groupnorm")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class SiteMeter:
    """Wall time (s) and minor page faults spent inside the given submodules of one model, summed
    per forward. The submodules must not nest."""

    def __init__(self, model: torch.nn.Module, paths: list[str]) -> None:
        self.seconds = 0.0
        self.faults = 0
        for path in paths:
            module = model.get_submodule(path)
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave)
        self._start: tuple[float, int] = (0.0, 0)

    def _enter(self, module: torch.nn.Module, args: tuple) -> None:
        self._start = (time.perf_counter(), _faults())

    def _leave(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self.seconds += time.perf_counter() - self._start[0]
        self.faults += _faults() - self._start[1]

    def reset(self) -> None:
        self.seconds, self.faults = 0.0, 0


def site_paths(entry) -> list[str]:
    """The outermost module paths of the entry's local sites (CBAM's two pools share one)."""
    paths = sorted({e.path for e in entry.expected if e.status == "local"})
    return [p for p in paths if not any(p.startswith(q + ".") for q in paths)]


def measure(entry, size: tuple[int, int], train_size: int, repeats: int, allocator: str) -> dict:
    """Interleaved forwards of the original and the converted model: per forward, the medians of
    total time, time in the sites, and faults (whole forward, sites)."""
    original = build(entry, wide=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, _ = tlc.convert(original, train_size=train_size)
    paths = site_paths(entry)
    meters = {"original": SiteMeter(original, paths), "converted": SiteMeter(converted, paths)}
    models = {"original": original, "converted": converted}
    x = image(1, *size, seed=3)
    runs: dict[str, dict[str, list[float]]] = {k: {"ms": [], "site_ms": [], "faults": [], "site_faults": []} for k in models}
    ratios = []
    with torch.no_grad():
        for model in models.values():
            model(x.clone())
        for turn in range(repeats):
            order = ("original", "converted") if turn % 2 == 0 else ("converted", "original")
            took = {}
            for name in order:
                meters[name].reset()
                start, faults = time.perf_counter(), _faults()
                models[name](x.clone())
                took[name] = time.perf_counter() - start
                run = runs[name]
                run["ms"].append(1e3 * took[name])
                run["faults"].append(_faults() - faults)
                run["site_ms"].append(1e3 * meters[name].seconds)
                run["site_faults"].append(meters[name].faults)
            ratios.append(took["converted"] / took["original"])
    med = {k: {m: statistics.median(v) for m, v in run.items()} for k, run in runs.items()}
    o, c = med["original"], med["converted"]
    # Per turn, the rest of the forward (outside the sites), paired like the totals.
    rest = {k: [t - s for t, s in zip(runs[k]["ms"], runs[k]["site_ms"])] for k in runs}
    rest_faults = {k: [t - s for t, s in zip(runs[k]["faults"], runs[k]["site_faults"])] for k in runs}
    return {
        "model": entry.name,
        "size": f"{size[0]}x{size[1]}",
        "train_size": train_size,
        "original_ms": round(o["ms"], 1),
        "converted_ms": round(c["ms"], 1),
        "ratio": round(statistics.median(ratios), 3),
        "sites_original_ms": round(o["site_ms"], 1),
        "sites_converted_ms": round(c["site_ms"], 1),
        "rest_original_ms": round(statistics.median(rest["original"]), 1),
        "rest_converted_ms": round(statistics.median(rest["converted"]), 1),
        "faults_original": int(o["faults"]),
        "faults_converted": int(c["faults"]),
        "rest_faults_original": int(statistics.median(rest_faults["original"])),
        "rest_faults_converted": int(statistics.median(rest_faults["converted"])),
        "stat": f"median of {repeats}, turns interleaved",
        "machine": machine(),
        "allocator": allocator,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated corpus model names (default: the nine over 1.10x)")
    parser.add_argument("--size", default="720x1280", help="HxW (default 720x1280)")
    parser.add_argument("--train-size", type=int, default=256, help="tlc.convert's train_size (default 256)")
    parser.add_argument("--repeats", type=int, default=7, help="turns per model (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    add_allocator_options(parser, "page_faults_cpu")
    args = parser.parse_args()
    csv_name, allocator = allocator_from(args, "page_faults_cpu")
    pin_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    names = args.only.split(",") if args.only else list(DEFAULT_MODELS)
    entries = {e.name: e for e in CORPUS}
    unknown = [n for n in names if n not in entries]
    if unknown:
        parser.error(f"unknown corpus model(s): {', '.join(unknown)}; known: {', '.join(entries)}")
    rows = []
    print("| model | original ms | converted ms | ratio | sites ms (orig -> conv) | rest ms (orig -> conv) "
          "| faults per forward (orig -> conv) | faults outside the sites |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        row = measure(entries[name], size, args.train_size, args.repeats, allocator)
        rows.append(row)
        print(f"| {name} | {row['original_ms']} | {row['converted_ms']} | {row['ratio']:.2f}x "
              f"| {row['sites_original_ms']} -> {row['sites_converted_ms']} "
              f"| {row['rest_original_ms']} -> {row['rest_converted_ms']} "
              f"| {row['faults_original']} -> {row['faults_converted']} "
              f"| {row['rest_faults_original']} -> {row['rest_faults_converted']} |", flush=True)
    path = write_csv(csv_name, merged(csv_name, rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
