"""The rows of an evaluation on disk: per_image.csv (and per-process files under torchrun),
run.json's settings check, and merging rows in the single-process order."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from .._util import atomic_write, write_atomically
from ..io import PairedSet

# "mae": the mean absolute error, for protocols that score it (DPDD), else empty. Files from
# before it was added (the first five columns) are read as they are.
CSV_FIELDS = ("image", "mode", "psnr", "ssim", "seconds", "mae")
REQUIRED_FIELDS = CSV_FIELDS[:5]


class EvaluationError(RuntimeError):
    """The evaluation cannot start or go on (the message says why and what to do)."""



def read_rows(path: Path) -> list[dict]:
    """The complete rows of a per_image.csv (a row cut short by an interruption is dropped)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None and tuple(reader.fieldnames) not in (CSV_FIELDS, REQUIRED_FIELDS):
            raise EvaluationError(f"{path} does not look like a tlc per_image.csv; use another --out folder")
        rows = list(reader)
    return [r for r in rows if all(r.get(k) not in (None, "") for k in REQUIRED_FIELDS) and _is_number(r["seconds"])]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def rank_files(out_dir: Path) -> list[Path]:
    """The per-process row files (per_image.rank<k>.csv) of a run with several processes, by rank."""
    found = []
    for path in out_dir.glob("per_image.rank*.csv"):
        rank = path.name[len("per_image.rank"):-len(".csv")]
        if rank.isdigit() and path.is_file():
            found.append((int(rank), path))
    return [path for _, path in sorted(found)]


def row_order(pairs: PairedSet, modes: tuple[str, ...]) -> Callable[[tuple[int, dict]], tuple]:
    """Sort key for (position, row): the single-process order (pairs in order, then modes in
    order); rows of images or modes outside this run keep their relative order at the end."""
    pair_index = {name: i for i, (name, _, _) in enumerate(pairs.pairs)}
    mode_index = {mode: i for i, mode in enumerate(modes)}

    def key(item: tuple[int, dict]) -> tuple:
        position, row = item
        if row["image"] not in pair_index:
            return (1, 0, 0, position)
        return (0, pair_index[row["image"]], mode_index.get(row["mode"], len(modes)), position)

    return key


def merge_rows(out_dir: Path, order: Callable[[tuple[int, dict]], tuple]) -> tuple[list[dict], dict[Path, int]]:
    """Fold the per-process row files into per_image.csv, in ``order``, and remove them.

    per_image.csv is rewritten atomically with its complete rows only (so appending after an
    interruption never glues a new row onto a half-written one), then the process files are
    removed: a crash in between leaves duplicates, and the first copy of an (image, mode) wins.

    Returns:
        the rows now in per_image.csv, and the number of complete rows read from each process file.
    """
    csv_path = out_dir / "per_image.csv"
    rows = read_rows(csv_path)
    seen = {(r["image"], r["mode"]) for r in rows}
    per_file = {}
    per_rank = rank_files(out_dir)
    for path in per_rank:
        found = read_rows(path)
        per_file[path] = len(found)
        for r in found:
            if (r["image"], r["mode"]) not in seen:
                seen.add((r["image"], r["mode"]))
                rows.append(r)
    rows = [r for _, r in sorted(enumerate(rows), key=order)]
    if csv_path.exists() or per_rank:
        with atomic_write(csv_path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    for path in per_rank:
        path.unlink()
    return rows, per_file



def check_resume(out_dir: Path, record: dict) -> None:
    """Write run.json with the settings ``record``, or check that an existing one has the same
    (the modes may differ: a rerun may add or drop modes)."""
    path = out_dir / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        comparable = {k: v for k, v in previous.items() if k != "modes"}
        current = {k: v for k, v in json.loads(json.dumps(record)).items() if k != "modes"}
        if comparable != current:
            changed = sorted(k for k in current if comparable.get(k) != current[k])
            raise EvaluationError(
                f"{out_dir} holds results computed with other settings ({', '.join(changed)} differ); "
                "use another --out folder or delete it"
            )
    write_atomically(path, json.dumps(record, indent=2))


def previous_peaks(path: Path, modes: tuple[str, ...]) -> dict[str, float | None]:
    """Peak memory recorded by an earlier run into the same folder (kept when resuming)."""
    try:
        previous = json.loads(path.read_text())["modes"]
        return {mode: previous.get(mode, {}).get("peak_memory_mib") for mode in modes}
    except (OSError, ValueError, KeyError, AttributeError):
        return {mode: None for mode in modes}
