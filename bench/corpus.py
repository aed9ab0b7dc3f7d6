"""The corpus (tests/corpus) converted by the default ``tlc.convert(model, train_size=32)``: what was
found, exactness, effect, and the cost of the converted model against the original.

For every corpus model (fixed seed, perturbed parameters, eval mode; some built wider so that a
720p forward takes >= 30 ms):

- global ops: the kinds the model holds (tests/corpus's expectations);
- converted / reported: how many of the expected local / reported sites the report shows as such
  (matched on module paths, as tests/test_corpus.py does), plus any site it shows unexpectedly;
- invariance: max |converted - original| at the training size (batch 1), or the conversion's own
  check there (its local forms run) where larger;
- effect: max |converted - original| at 4x the training size;
- time: median (with --stat min, the fastest) forward of the original and of the converted model
  at --size (batch 1, float32, CPU), taking turns (each converted model with the original alone,
  the original's time over both pairs); the ratio converted / original only where the
  original takes >= 30 ms (below that the ratio is noise). With --stat paired the ratio is the
  median over the turns of each turn's ratio (the most robust here: one lucky or slow run moves
  one pair, not the figure). Timed twice converted: at the corpus's training size (32, so
  the window is 48 pixels and nearly every window position of a 720p map is one the local ops
  compute) and at --train-size-2 (default 256, the crops the paper's networks are trained on:
  a 384-pixel window, a third as many positions at full resolution).

Prints a markdown table; writes bench/results/corpus_cpu.csv (a --only run keeps the other rows).

    python bench/corpus.py                       # 720x1280, every model
    python bench/corpus.py --only rcan,cbam --size 180x320
    python bench/corpus.py --stat paired --repeats 9   # the figures in docs/performance.md
    python bench/corpus.py --stat blocks --repeats 5 --keep-freed-memory   # each model's forwards in a row
    python bench/corpus.py --stat paired --repeats 9 --huge-pages --keep-freed-memory   # as tlc with TLC_KEEP_FREED_MEMORY=1
    python bench/corpus.py --width 64 --stat paired --keep-freed-memory   # at the published networks' width
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import statistics  # noqa: E402

from common import add_allocator_options, allocator_from, block_seconds, interleaved_seconds, machine, merged, write_csv  # noqa: E402

import tlc  # noqa: E402
from tests.corpus import CORPUS, Entry, build  # noqa: E402
from tests.test_corpus import image, max_diff, observed_sites, outputs, site_mismatch  # noqa: E402

MIN_ORIGINAL_MS = 30.0


def pin_threads(n: int) -> None:
    """torch and numba (tlc's CPU kernels) both on ``n`` threads.

    numba's OpenMP threading layer, on its first launch, sets the OpenMP thread count to its own
    (the CPU count) whatever OMP_NUM_THREADS says, and torch then runs on those threads too; the
    original and the converted model would otherwise be timed on different thread counts.
    """
    try:
        import numba
    except ImportError:
        pass
    else:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # launches numba's threads
    torch.set_num_threads(n)  # after numba's launch, which resets it


def _one_line(err: BaseException, limit: int = 120) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# How a model's ratio comes from its timed turns: the ratio of the median (or fastest) times, or
# "paired": the median over turns of each turn's converted / original (the runs of one turn are
# back to back, so a slow spell or a lucky run of one side moves one pair's ratio, not the figure).
# "blocks": the ratio of median times, each model's forwards run in blocks (bench/common.py's
# block_seconds) rather than in turns.
STATS = {"median": statistics.median, "min": min, "paired": statistics.median, "blocks": statistics.median}


def measure(
    entry: Entry, size: tuple[int, int], repeats: int, threads: int, train_2: int, stat: str = "median",
    width: int | None = None, warmup: int = 1,
) -> dict:
    """One table row for ``entry``: sites, invariance and effect (small widths, as the tests build
    it) and timings at ``size`` (the bench width, or ``width`` channels: ``entry.at_width``)."""
    row: dict = {"model": entry.name, "global_ops": entry.kinds, "size": f"{size[0]}x{size[1]}"}
    want_local = [e for e in entry.expected if e.status == "local"]
    want_reported = [e for e in entry.expected if e.status == "reported"]
    t = entry.train_size
    model = build(entry)
    kwargs = {"train_size": t} if entry.in_channels is None else {"train_size": t, "in_channels": entry.in_channels}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            converted, report = tlc.convert(model, **kwargs)
            error = None
        except tlc.ConversionError as err:
            converted, report, error = None, None, err
    if report is not None:
        missing, extra = site_mismatch(entry.expected, observed_sites(report))
        row["converted"] = f"{sum(e not in missing for e in want_local)}/{len(want_local)}"
        row["reported"] = f"{sum(e not in missing for e in want_reported)}/{len(want_reported)}"
        if extra:
            row["reported"] += f" (+{len(extra)} unexpected)"
        x = image(1, t, t, seed=1)
        # The report's check runs the local forms; a caller's forward at the training size may
        # not (tlc runs it as the original where every window covers its map).
        row["invariance"] = f"{max(report.max_deviation, max_diff(outputs(converted, x), outputs(model, x))):.1e}"
        x = image(1, *entry.large, seed=2)
        try:
            row["effect"] = f"{max_diff(outputs(converted, x), outputs(model, x)):.1e}"
        except RuntimeError:  # the original runs at the training size only
            row["effect"] = "original fails"
        row["note"] = ""
    else:
        row.update(converted="-", reported="-", invariance="-", effect="-", note=f"conversion fails: {_one_line(error)}")

    # Timing at the benchmark width: the same conversion of the (possibly wider) model.
    wide = build(entry, wide=True) if width is None else build(entry, width=width)
    converted_2 = None
    if report is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if entry.bench is not None or width is not None:
                converted, _ = tlc.convert(wide, **kwargs)
            if not entry.fixed_size:
                converted_2, _ = tlc.convert(wide, **{**kwargs, "train_size": train_2})
    x = image(1, *size, seed=3)
    row["params"] = sum(p.numel() for p in wide.parameters())
    fns = {"original": lambda: wide(x.clone())}
    if report is not None:
        fns["converted"] = lambda: converted(x.clone())
        if converted_2 is not None:
            fns["converted_2"] = lambda: converted_2(x.clone())
        outputs(converted, image(1, t, t, seed=4))  # tlc's kernels launch (and set their threads) here
        if torch.get_num_threads() != threads:
            row["note"] = (row["note"] + "; " if row["note"] else "") + (
                f"tlc's first forward set torch's threads {threads} -> {torch.get_num_threads()} (reset)"
            )
    pin_threads(threads)
    # Each converted model takes turns with the original alone: with all three taking turns, what
    # the train-32 model leaves behind (its heap's shape, its huge pages) moved the train-256
    # model's times and not the original's alike (the same GCNet: 1.35x among three, 1.16x in two).
    pairs = {name: {"original": fns["original"], name: fn} for name, fn in fns.items() if name != "original"}
    try:
        with torch.inference_mode():
            if not pairs:
                pairs = {"original": {"original": fns["original"]}}
            if stat == "blocks":
                runs = {name: block_seconds(pair, "cpu", block=repeats) for name, pair in pairs.items()}
            else:
                runs = {name: interleaved_seconds(pair, "cpu", warmup=warmup, repeats=repeats) for name, pair in pairs.items()}
        originals = [t for pair in runs.values() for t in pair["original"]]
        times = {"original": STATS[stat](originals)} | {name: STATS[stat](runs[name][name]) for name in fns if name in runs}
    except RuntimeError as err:
        row.update(original_ms="", converted_ms="", ratio="", converted_2_ms="", ratio_2="")
        row["note"] = (row["note"] + "; " if row["note"] else "") + f"no forward at {row['size']}: {_one_line(err, 60)}"
        return row
    row["original_ms"] = round(1e3 * times["original"], 1)
    row["converted_ms"] = round(1e3 * times["converted"], 1) if "converted" in times else ""
    row["converted_2_ms"] = round(1e3 * times["converted_2"], 1) if "converted_2" in times else ""
    big_enough = row["original_ms"] >= MIN_ORIGINAL_MS

    def ratio(name: str) -> float | str:
        if name not in times or not big_enough:
            return ""
        pair = runs[name]
        if stat == "paired":
            return round(statistics.median(c / o for c, o in zip(pair[name], pair["original"])), 3)
        return round(STATS[stat](pair[name]) / STATS[stat](pair["original"]), 3)

    row["ratio"], row["ratio_2"] = ratio("converted"), ratio("converted_2")
    row["train_2"] = train_2
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="720x1280", help="HxW of the timed image")
    parser.add_argument("--only", help="comma-separated corpus names")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each, taking turns")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and numba threads")
    parser.add_argument("--warmup", type=int, default=1, metavar="N",
                        help="untimed forwards of each before the turns (default 1). With freed memory kept, "
                             "the heap settles over a converted model's first 2-3 forwards: a fragment too small "
                             "for a large buffer grows the heap, and each new 4 KB page then faults once (13 us "
                             "a page here: IMDN's 48-channel 1x1 convolution 29 -> 300 ms); --warmup 3 times "
                             "the forwards of a long run")
    parser.add_argument("--stat", choices=tuple(STATS), default="median",
                        help="per-model time from the runs: their median (default) or their minimum, the run "
                             "least disturbed by the rest of a shared machine; 'paired': median times, and each "
                             "ratio the median over turns of that turn's converted / original; 'blocks': median "
                             "times, each model's forwards --repeats in a row (two rounds), as a tool runs one "
                             "model on many images")
    add_allocator_options(parser, "corpus_cpu")
    parser.add_argument("--width", type=int, metavar="C",
                        help="time the models at C channels (their first level; the same blocks) instead of "
                             "the light widths, e.g. 64, the width of RCAN, IMDN, MIRNet and HINet; models "
                             "without one width are left out; writes corpus_w{C}_cpu.csv")
    parser.add_argument("--train-size-2", type=int, default=256, metavar="PX",
                        help="second training size the converted models are timed at (default 256)")
    args = parser.parse_args()
    if args.width is not None and args.width < 4:
        parser.error("--width must be at least 4")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    csv_name, allocator = allocator_from(args, "corpus_cpu" if args.width is None else f"corpus_w{args.width}_cpu")
    pin_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    entries = list(CORPUS)
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {e.name for e in CORPUS}
        if unknown:
            parser.error(f"not in the corpus: {', '.join(sorted(unknown))}")
        entries = [e for e in CORPUS if e.name in names]
    if args.width is not None:
        entries = [e for e in entries if e.at_width is not None]
    widths = "light widths" if args.width is None else f"{args.width} channels"
    print(f"corpus at {args.size} ({widths}) on {machine()}, float32, batch 1, {args.stat} of {args.repeats} "
          f"taking turns after {args.warmup} untimed, {allocator}\n")
    t2 = args.train_size_2
    header = ["model", "global ops", "converted", "reported", "invariance", "effect", "original ms",
              "converted ms", "ratio", f"converted ms (train {t2})", f"ratio (train {t2})", "note"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows = []
    for entry in entries:
        row = measure(entry, size, args.repeats, args.threads, t2, args.stat, args.width, args.warmup)
        row["width"] = "" if args.width is None else args.width
        row["stat"] = f"{args.stat} of {args.repeats}" + (f", {args.warmup} warm-up" if args.warmup != 1 else "")
        row["machine"] = machine()
        row["allocator"] = allocator
        rows.append(row)
        cells = [row["model"], row["global_ops"], row["converted"], row["reported"], row["invariance"], row["effect"],
                 row["original_ms"], row["converted_ms"], f"{row['ratio']}x" if row["ratio"] != "" else "-",
                 row["converted_2_ms"], f"{row['ratio_2']}x" if row["ratio_2"] != "" else "-", row["note"]]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    print(f"\nwrote {write_csv(csv_name, merged(csv_name, rows))}")


if __name__ == "__main__":
    main()
