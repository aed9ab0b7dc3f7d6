"""What each GPU form of tlc's ops buys, side by side in one run: converted networks with the
Triton kernels on and off, and the local attention with every block at once and the loop.

For each network (released widths, perturbed random weights, train 256 / base 384), the plain
model and the converted one under each setting take turns (median of the repeats):

- ``tlc``: as shipped (Triton kernels for the local mean and the gates' spread; the attention's
  blocks all at once);
- ``no triton``: ``TLC_TRITON=0`` (torch's prefix sums and replication pad);
- ``block loop``: the attention's loop over blocks (``_all_segments_at_once`` off), for the
  networks with transposed attention.

Prints ms and ratios to plain; writes bench/results/gpu_ab_<device>.csv.

    python bench/gpu_ab.py --device cuda --dtype float16
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_median_seconds, machine, merged, write_csv  # noqa: E402
from networks import network_arguments, networks_and_input  # noqa: E402

from tlc.ops import attention  # noqa: E402


@contextlib.contextmanager
def setting(name: str) -> Iterator[None]:
    """The switches of one setting, undone afterwards."""
    saved_env, saved_at_once = os.environ.get("TLC_TRITON"), attention._all_segments_at_once
    if name == "no triton":
        os.environ["TLC_TRITON"] = "0"
    if name == "block loop":
        attention._all_segments_at_once = lambda x: False
    try:
        yield
    finally:
        attention._all_segments_at_once = saved_at_once
        if saved_env is None:
            os.environ.pop("TLC_TRITON", None)
        else:
            os.environ["TLC_TRITON"] = saved_env


def under(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with setting(name):
            return fn()

    return run


def main() -> None:
    parser = network_arguments(__doc__, "NAFNet-width64,MPRNet,Restormer")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"GPU forms at {args.size} on {machine()}, {args.dtype}, median of {args.repeats}")
    rows = []
    for name, arch, plain, local, x in networks_and_input(args):
        settings = ["tlc", "no triton"] + (["block loop"] if arch == "Restormer" else [])
        fns = {"plain": lambda: plain(x)} | {s: under(s, lambda: local(x)) for s in settings}
        with torch.inference_mode():
            times = interleaved_median_seconds(fns, device, repeats=args.repeats)
        cells = "  ".join(f"{k} {1e3 * t:.1f} ms ({t / times['plain']:.2f}x)" for k, t in times.items())
        print(f"  {name:<16}{cells}")
        for k, t in times.items():
            rows.append({"network": name, "setting": k, "size": args.size, "dtype": args.dtype, "ms": round(1e3 * t, 2),
                         "ratio_to_plain": round(t / times["plain"], 3), "run": f"{name} {k} {args.size} {args.dtype}",
                         "machine": machine()})  # fmt: skip
    out = f"gpu_ab_{device.type}"
    print(f"wrote {write_csv(out, merged(out, rows, key='run'))}")


if __name__ == "__main__":
    main()
