"""Forwards on the CPU with and without transparent huge pages, plain and converted, side by side.

torch's CPU allocator puts buffers of 2 MB and more on transparent huge pages when
``THP_MEM_ALLOC_ENABLE=1`` is set before its first large allocation; the ``tlc`` command sets it
(``tlc.cli.main.ask_for_huge_pages``). The setting is read once per process, so each measurement
runs in a fresh process, the two settings taking turns (off, on, off, on, ...): each process
builds one network (perturbed weights), converts it (train 256 / base 384), and times plain and
converted forwards taking turns. Reported per network: the median over processes of each
process's median forward, the speed-up on / off, converted / plain under each setting, minor page
faults per forward, and whether the outputs are the same bit for bit. Linux only. Writes
bench/results/huge_pages_cpu.csv.

    python bench/huge_pages.py                         # 720x1280, the reduced networks
    python bench/huge_pages.py --only NAFNet-w16-light --rounds 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import in_fresh_process, machine, merged, write_csv  # noqa: E402
from networks import ARCH, REDUCED, perturbed  # noqa: E402

import tlc  # noqa: E402
from tlc.cli.main import HUGE_PAGES_VARIABLE  # noqa: E402


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _measure(name: str, size: tuple[int, int], repeats: int, threads: int, queue: mp.Queue) -> None:
    """In a fresh process: median ms and faults per forward of the plain and converted network,
    and a checksum of their outputs."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)  # the same weights in every process
    plain = perturbed(tlc.archs.build(ARCH.get(name, name), **REDUCED[name]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local, _ = tlc.convert(plain, train_size=256, base_size=384)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    models = {"plain": plain, "tlc": local}
    seconds: dict[str, list[float]] = {k: [] for k in models}
    faults: dict[str, list[int]] = {k: [] for k in models}
    outputs = {}
    with torch.inference_mode():
        for label, model in models.items():  # warm-up: kernels compiled, allocator warm
            out = model(x)
            out = out[-1] if isinstance(out, (list, tuple)) else out  # HINet, MPRNet: one image per stage
            outputs[label] = out.double().sum().item()
        torch.set_num_threads(threads)  # numba's first launch may reset it
        for turn in range(repeats):
            for label in (("plain", "tlc") if turn % 2 == 0 else ("tlc", "plain")):
                before, start = _faults(), time.perf_counter()
                models[label](x)
                seconds[label].append(time.perf_counter() - start)
                faults[label].append(_faults() - before)
    queue.put({label: (1e3 * statistics.median(seconds[label]), statistics.median(faults[label]), outputs[label])
               for label in models})


def run(name: str, size: tuple[int, int], repeats: int, threads: int, huge: bool) -> dict:
    """:func:`_measure` in a fresh process with huge pages asked for or not."""
    os.environ[HUGE_PAGES_VARIABLE] = "1" if huge else "0"  # the child inherits it
    return in_fresh_process(_measure, name, size, repeats, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="720x1280", help="HxW of the test image")
    parser.add_argument("--only", help=f"comma-separated names of {', '.join(REDUCED)}")
    parser.add_argument("--rounds", type=int, default=3, help="processes per setting, taking turns")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards of each model per process")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        parser.error("Linux only: torch reads THP_MEM_ALLOC_ENABLE there only")
    size = tuple(int(v) for v in args.size.split("x"))
    names = args.only.split(",") if args.only else list(REDUCED)
    unknown = set(names) - set(REDUCED)
    if unknown:
        parser.error(f"unknown networks: {', '.join(sorted(unknown))}")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text().strip() if thp.exists() else "unknown"
    print(f"huge pages at {args.size} on {machine()}, float32, transparent_hugepage: {mode}")
    print(f"  {'network':<18}{'plain off':>10}{'plain on':>10}{'tlc off':>9}{'tlc on':>8}{'speed-up':>10}"
          f"{'tlc/plain off':>15}{'tlc/plain on':>14}{'faults off':>12}{'faults on':>11}  same")
    rows = []
    for name in names:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.rounds):
            for huge in (False, True):
                runs[huge].append(run(name, size, args.repeats, args.threads, huge))
        ms = {(huge, label): statistics.median(r[label][0] for r in runs[huge]) for huge in runs for label in ("plain", "tlc")}
        faults = {huge: statistics.median(r["plain"][1] for r in runs[huge]) for huge in runs}
        same = all(r[label][2] == runs[False][0][label][2] for huge in runs for r in runs[huge] for label in ("plain", "tlc"))
        row = {
            "network": name, "size": args.size,
            "plain_off_ms": round(ms[False, "plain"], 1), "plain_on_ms": round(ms[True, "plain"], 1),
            "tlc_off_ms": round(ms[False, "tlc"], 1), "tlc_on_ms": round(ms[True, "tlc"], 1),
            "plain_speedup": round(ms[False, "plain"] / ms[True, "plain"], 3),
            "tlc_speedup": round(ms[False, "tlc"] / ms[True, "tlc"], 3),
            "ratio_off": round(ms[False, "tlc"] / ms[False, "plain"], 3),
            "ratio_on": round(ms[True, "tlc"] / ms[True, "plain"], 3),
            "plain_faults_off": int(faults[False]), "plain_faults_on": int(faults[True]), "same_outputs": same,
            "rounds": args.rounds, "repeats": args.repeats, "thp_mode": mode, "machine": machine(),
        }
        rows.append(row)
        print(f"  {name:<18}{row['plain_off_ms']:>10}{row['plain_on_ms']:>10}{row['tlc_off_ms']:>9}{row['tlc_on_ms']:>8}"
              f"{row['plain_speedup']:>9.2f}x{row['ratio_off']:>14.3f}x{row['ratio_on']:>13.3f}x"
              f"{row['plain_faults_off']:>12}{row['plain_faults_on']:>11}  {same}", flush=True)
    print(f"wrote {write_csv('huge_pages_cpu', merged('huge_pages_cpu', rows, key='network'))}")  # others kept


if __name__ == "__main__":
    main()
