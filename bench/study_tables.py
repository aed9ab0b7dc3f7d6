"""Tables and plot of ``bench/study.py`` from its CSV, e.g. after merging runs of several models.

    python bench/study_tables.py bench/results/study.csv --models tiny-unet tiny-nafnet --png bench/results/study.png
    python bench/study_tables.py a.csv b.csv --out merged.csv   # later files replace a model's rows

Prints the markdown tables (mean PSNR over the TEST photographs per model, mode and test size, and
TLC - full at the largest size); with ``--png`` draws the PSNR-vs-size plot; with ``--out`` writes
the merged rows (the noisy-input rows are identical in every run of the same seed and sizes).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import markdown, mean_table, plot  # noqa: E402


def merged_rows(paths: list[Path]) -> list[dict]:
    """Rows of every CSV; a model (or the noisy input) found in a later file replaces earlier rows."""
    rows: list[dict] = []
    for path in paths:
        with path.open(newline="") as f:
            new = list(csv.DictReader(f))
        replaced = {r["model"] for r in new}
        rows = [r for r in rows if r["model"] not in replaced] + new
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", type=Path, help="study.csv files, merged in order")
    parser.add_argument("--models", nargs="+", help="models to show, in this order (default: all in the CSVs)")
    parser.add_argument("--rename", nargs="+", default=[], metavar="OLD=NEW", help="rename models while merging")
    parser.add_argument("--png", type=Path, help="write the PSNR-vs-size plot here")
    parser.add_argument("--crop", type=int, default=48, help="training crop, for the plot's axis label (default 48)")
    parser.add_argument("--out", type=Path, help="write the merged rows here")
    args = parser.parse_args()
    rows = merged_rows(args.csv)
    renames = dict(item.split("=", 1) for item in args.rename)
    for r in rows:
        r["model"] = renames.get(r["model"], r["model"])
    models = args.models or list(dict.fromkeys(r["model"] for r in rows if r["model"] != "noisy-input"))
    sizes = list(dict.fromkeys(r["size"] for r in rows if r["model"] == "noisy-input"))
    table = mean_table(rows)
    print(markdown(table, models, sizes))
    if args.png:
        plot(table, models, sizes, args.crop, args.png)
        print(f"wrote {args.png}")
    if args.out:
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
