"""Timing helpers for the benchmarks: side by side in one run, warm-up, median of repeats."""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronised)."""
    return interleaved_median_seconds({"fn": fn}, device, warmup, repeats)["fn"]


def interleaved_median_seconds(
    fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 5
) -> dict[str, float]:
    """Median wall time of each ``fn()``, the functions taking turns (a, b, a, b, ...) so that a
    slow spell of a shared machine falls on all of them alike (CUDA synchronised)."""
    return {name: statistics.median(t) for name, t in interleaved_seconds(fns, device, warmup, repeats).items()}


def interleaved_seconds(
    fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 5
) -> dict[str, list[float]]:
    """Every timed run of each ``fn()``, taking turns as in :func:`interleaved_median_seconds`, each
    turn starting one function later."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for turn in range(repeats):
        # Each turn starts with the next function, so none always runs right after the same one
        # (what one leaves behind, such as freed memory, would otherwise bias the next alike).
        for name, fn in order[turn % len(order) :] + order[: turn % len(order)]:
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def block_seconds(
    fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", block: int = 5, rounds: int = 2
) -> dict[str, list[float]]:
    """Every timed run of each ``fn()``, run in blocks: ``block`` timed runs in a row after one
    untimed, the functions' blocks taking turns for ``rounds`` rounds (each round starting one
    function later). As a tool runs a model on many images in a row: on the CPU, what another
    model's forward leaves behind (its heap's layout) moved the next forward by 10-20% here."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for turn in range(rounds):
        for name, fn in order[turn % len(order) :] + order[: turn % len(order)]:
            fn()
            synchronize(device)
            for _ in range(block):
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    return times


def machine() -> str:
    """A one-line description of where the numbers were measured."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def merged(name: str, rows: list[dict], key: str = "model") -> list[dict]:
    """``rows`` plus the rows already in results/<name>.csv whose ``key`` column names something
    not in ``rows`` (a run for some models keeps the others' figures), in the file's order."""
    path = RESULTS / f"{name}.csv"
    existing = []
    if path.exists():
        with path.open(newline="") as f:
            existing = list(csv.DictReader(f))
    done = {row[key] for row in rows}
    kept = [row for row in existing if row.get(key) not in done]
    order = list(dict.fromkeys([r.get(key) for r in existing] + [r[key] for r in rows]))  # rerun rows keep their place
    return sorted(kept + rows, key=lambda row: order.index(row.get(key)))


def write_csv(name: str, rows: list[dict]) -> Path:
    """Write rows to bench/results/<name>.csv (atomically) and return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.csv"
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        # Every column of every row (rows kept from an older run may lack newer columns).
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def _allocator_csv(csv_name: str, huge: bool, keep: bool) -> str:
    """Where a script's figures under an allocator setting go: corpus_cpu -> corpus_thp_cpu (huge
    pages), corpus_keep_cpu (freed memory kept), corpus_thp_keep_cpu (both: the tlc command with
    TLC_KEEP_FREED_MEMORY=1)."""
    tags = [tag for tag, on in (("thp", huge), ("keep", keep)) if on]
    return "_".join([csv_name.removesuffix("_cpu"), *tags, "cpu"])


def add_allocator_options(parser: argparse.ArgumentParser, csv_name: str) -> None:
    """``--huge-pages`` and ``--keep-freed-memory``: time as the tlc command allocates (huge pages;
    both with TLC_KEEP_FREED_MEMORY=1), or under either setting alone (see :func:`allocator_from`)."""
    parser.add_argument("--huge-pages", action="store_true",
                        help="torch's CPU allocator on transparent huge pages (THP_MEM_ALLOC_ENABLE=1, as the tlc "
                             f"command sets it); the figures go to {_allocator_csv(csv_name, True, False)}.csv")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc's malloc keeps freed memory for reuse (tlc.run.allocator.keep_freed_memory, as the "
                             f"tlc command sets it with TLC_KEEP_FREED_MEMORY=1); the figures go to {_allocator_csv(csv_name, False, True)}.csv, "
                             f"with --huge-pages to {_allocator_csv(csv_name, True, True)}.csv")


def allocator_from(args: argparse.Namespace, csv_name: str) -> tuple[str, str]:
    """Applies the options of :func:`add_allocator_options` to this process (before torch's first
    large allocation, as the tlc command does). Returns (the CSV name to write, the allocator's label)."""
    from tlc.cli.main import HUGE_PAGES_VARIABLE
    from tlc.run.allocator import keep_freed_memory

    if args.huge_pages:
        os.environ[HUGE_PAGES_VARIABLE] = "1"
    if args.keep_freed_memory and not keep_freed_memory():
        raise SystemExit("--keep-freed-memory: this process does not allocate through glibc's malloc")
    label = {(False, False): "default allocator", (True, False): "huge pages",
             (False, True): "freed memory kept", (True, True): "huge pages, freed memory kept"}
    return _allocator_csv(csv_name, args.huge_pages, args.keep_freed_memory), label[args.huge_pages, args.keep_freed_memory]


def peak_rss_mib_during(fn: Callable[[], object]) -> float:
    """MiB the process's peak resident size rises above its current size while ``fn`` runs.

    Linux: writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current size, so
    earlier peaks (loading, conversion, warm-up) do not hide or shrink this one.
    """
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmHWM")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def in_fresh_process(target: Callable, *args: object) -> object:
    """``target(*args, queue)`` run in a new (spawned) process; returns what it puts on the queue."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    value = queue.get()
    process.join()
    return value

