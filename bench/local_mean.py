"""local_mean against the reference algorithm and its fast_imp approximation, side by side.

The reference algorithm (TLC's AvgPool2d): float32 cumsum along W then H, zero pad, four-corner
difference, edge replication. Its fast_imp subsamples before the cumsums. Prints time ratios and
the max abs error of each against a float64 computation; writes bench/results/local_mean_<device>.csv.

    python bench/local_mean.py                 # 1x32x720x1280 and 1x16x2160x3840, CPU
    python bench/local_mean.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, write_csv  # noqa: E402

import tlc  # noqa: E402
from tlc.ops.pool import local_mean_by_prefix_sums  # noqa: E402


def reference_local_mean(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """The reference's exact path, re-implemented from its description (in x's dtype)."""
    h, w = x.shape[-2:]
    k1, k2 = min(h, window[0]), min(w, window[1])
    s = F.pad(x.cumsum(dim=-1).cumsum_(dim=-2), (1, 0, 1, 0))
    out = (s[..., k1:, k2:] + s[..., :-k1, :-k2] - s[..., :-k1, k2:] - s[..., k1:, :-k2]) / (k1 * k2)
    return F.pad(out, ((k2 - 1) // 2, k2 // 2, (k1 - 1) // 2, k1 // 2), mode="replicate")


def reference_fast_imp(x: torch.Tensor, window: tuple[int, int], max_stride: tuple[int, int]) -> torch.Tensor:
    """The reference's fast_imp path, re-implemented from its description (float32 cumsums)."""
    h, w = x.shape[-2:]
    r1 = min(max_stride[0], next(r for r in (5, 4, 3, 2, 1) if h % r == 0))
    r2 = min(max_stride[1], next(r for r in (5, 4, 3, 2, 1) if w % r == 0))
    s = x[..., ::r1, ::r2].cumsum(dim=-1).cumsum(dim=-2)
    k1, k2 = min(s.shape[-2] - 1, window[0] // r1), min(s.shape[-1] - 1, window[1] // r2)
    out = (s[..., :-k1, :-k2] - s[..., :-k1, k2:] - s[..., k1:, :-k2] + s[..., k1:, k2:]) / (k1 * k2)
    out = F.interpolate(out, scale_factor=(r1, r2))
    _h, _w = out.shape[-2:]
    return F.pad(out, ((w - _w) // 2, (w - _w + 1) // 2, (h - _h) // 2, (h - _h + 1) // 2), mode="replicate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default="1x32x720x1280,1x16x2160x3840", help="comma-separated NxCxHxW")
    parser.add_argument("--window", type=int, default=384, help="window in pixels (the TLC default at level 0)")
    args = parser.parse_args()
    device = torch.device(args.device)
    window = (args.window, args.window)
    print(f"local_mean benchmark on {machine()}, window {window}, median of {args.repeats}")
    rows = []
    for spec in args.shapes.split(","):
        shape = tuple(int(v) for v in spec.split("x"))
        g = torch.Generator().manual_seed(0)
        x = (10 + torch.randn(shape, generator=g)).to(device)  # offset values: where float32 sums lose digits
        exact = reference_local_mean(x.double(), window)
        candidates = {
            "reference (float32)": lambda: reference_local_mean(x, window),
            "reference fast_imp": lambda: reference_fast_imp(x, window, (5, 5)),
            "tlc.local_mean": lambda: tlc.local_mean(x, window),
        }
        if device.type != "cpu":  # the kernels (Triton on CUDA) against tlc's own torch-ops path
            candidates["tlc torch ops"] = lambda: local_mean_by_prefix_sums(x, window)
        times, errors = {}, {}
        for name, fn in candidates.items():
            errors[name] = (fn().double() - exact).abs().max().item()
            times[name] = median_seconds(fn, device, repeats=args.repeats)
        base = times["reference (float32)"]
        print(f"\n{spec}")
        print(f"  {'method':<22}{'ms':>10}{'speed-up vs ref':>18}{'max abs error':>16}")
        for name in candidates:
            print(f"  {name:<22}{1e3 * times[name]:>10.2f}{base / times[name]:>17.2f}x{errors[name]:>16.2e}")
            rows.append({"shape": spec, "device": device.type, "method": name, "ms": round(1e3 * times[name], 3),
                         "speedup_vs_reference": round(base / times[name], 3), "max_abs_error": errors[name],
                         "machine": machine()})
        del exact
    print(f"\nwrote {write_csv(f'local_mean_{device.type}', rows)}")


if __name__ == "__main__":
    main()
