"""The local ops against the global ops they replace, side by side in one run.

Each pair runs in turns (``interleaved_median_seconds``), so a busy spell of a shared machine
falls on both. The global op returns a pooled (N, C, 1, 1) / strip / (N, C) result, the local op a
full (N, C, H, W) map: the ratio includes writing that map. Writes
bench/results/local_ops_<device>.csv.

    OMP_NUM_THREADS=1 python bench/local_ops.py            # 1x32x720x1280 float32, window 384
    python bench/local_ops.py --shape 1x16x360x640 --window 192
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_median_seconds, machine, write_csv  # noqa: E402

from tlc.ops import (  # noqa: E402
    local_axis_max,
    local_axis_mean,
    local_group_norm,
    local_max,
    local_mean,
    local_softmax_pool,
    local_std,
    local_var,
)


def gcnet_context(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """GCNet's global context pooling: softmax over all pixels, weighted sum -> (N, C)."""
    weights = torch.softmax(logits.flatten(2), dim=-1)
    return (x.flatten(2) * weights).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1x32x720x1280", help="NxCxHxW")
    parser.add_argument("--window", type=int, default=384, help="window in pixels (the TLC default at level 0)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-wide-logits", action="store_true", help="skip the wide-logit softmax case")
    args = parser.parse_args()
    # Importing numba (through tlc) can raise torch's OpenMP thread count past OMP_NUM_THREADS:
    # set both explicitly, so the ratio compares like with like.
    threads = int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        kernel_threads = numba.get_num_threads()
    except ImportError:
        kernel_threads = 0
    shape = tuple(int(v) for v in args.shape.split("x"))
    k = args.window
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    logits = 3 * torch.randn(shape[0], 1, *shape[2:], generator=g)
    # A ramp from -1e4 to 1e4 across W: windows at the left lie far below the map's maximum, so no
    # single shift is exact and the per-window-maximum (online softmax) kernel runs.
    scale, shift = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    wide = torch.linspace(-1e4, 1e4, shape[3]).expand(shape[0], 1, shape[2], shape[3]).contiguous()

    cases = [
        ("local_mean (existing, for scale)", "x.mean((2, 3))",
         lambda: local_mean(x, k), lambda: x.mean((2, 3), keepdim=True)),
        ("local_max", "x.amax((2, 3))", lambda: local_max(x, k), lambda: x.amax((2, 3), keepdim=True)),
        ("local_axis_max dim=-1", "x.amax(-1)", lambda: local_axis_max(x, k, -1), lambda: x.amax(-1, keepdim=True)),
        ("local_axis_mean dim=-1", "x.mean(-1) (AdaptiveAvgPool2d((None,1)))",
         lambda: local_axis_mean(x, k, -1), lambda: x.mean(-1, keepdim=True)),
        ("local_axis_mean dim=-2", "x.mean(-2) (AdaptiveAvgPool2d((1,None)))",
         lambda: local_axis_mean(x, k, -2), lambda: x.mean(-2, keepdim=True)),
        ("local_softmax_pool logits 3*randn", "softmax(HW) + weighted sum",
         lambda: local_softmax_pool(x, logits, k), lambda: gcnet_context(x, logits)),
        ("local_var", "x.var((2, 3))", lambda: local_var(x, k), lambda: x.var((2, 3), keepdim=True)),
        ("local_std", "x.std((2, 3))", lambda: local_std(x, k), lambda: x.std((2, 3), keepdim=True)),
        # Both write a full map: the ratio is the local statistics' own cost.
        ("local_group_norm 4 groups, affine", "F.group_norm",
         lambda: local_group_norm(x, 4, k, scale, shift), lambda: torch.nn.functional.group_norm(x, 4, scale, shift)),
    ]
    if not args.skip_wide_logits:
        cases.append(("local_softmax_pool logits ramp +-1e4 (no one shift)", "softmax(HW) + weighted sum",
                      lambda: local_softmax_pool(x, wide, k), lambda: gcnet_context(x, wide)))

    notes = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {torch.get_num_threads()}, "
             f"numba threads {kernel_threads}, load average before {os.getloadavg()[0]:.1f} (2-core machine shared)")
    print(f"local ops vs global ops on {machine()}, {args.shape} float32, window {k}, median of {args.repeats}")
    print(notes)
    print(f"\n  {'local op':<50}{'ms':>9}  {'global op':<42}{'ms':>8}{'local/global':>14}")
    rows = []
    for name, global_name, local_fn, global_fn in cases:
        times = interleaved_median_seconds({"local": local_fn, "global": global_fn}, repeats=args.repeats)
        ratio = times["local"] / times["global"]
        local_ms, global_ms = 1e3 * times["local"], 1e3 * times["global"]
        print(f"  {name:<50}{local_ms:>9.1f}  {global_name:<42}{global_ms:>8.1f}{ratio:>13.1f}x")
        rows.append({"local_op": name, "global_op": global_name, "shape": args.shape, "window": k,
                     "local_ms": round(1e3 * times["local"], 2), "global_ms": round(1e3 * times["global"], 2),
                     "ratio_local_over_global": round(ratio, 2), "machine": machine(), "notes": notes})
    print(f"\nwrote {write_csv('local_ops_cpu', rows)}")


if __name__ == "__main__":
    main()
