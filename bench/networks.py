"""Each network converted by TLC against the same network unconverted, side by side.

Random weights (perturbed, so no block is an identity), TLC with train 256 / base 384 as in the
paper, one image of 720x1280 by default, plain and converted runs taking turns (median of 5
each after a warm-up). On the CPU the widths are reduced so a run takes
minutes (--full for the released widths, meant for a GPU). Prints ms per image and the ratio
converted / plain; writes bench/results/networks_<device>.csv.

    python bench/networks.py
    python bench/networks.py --device cuda --full --dtype float16
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_median_seconds, machine, merged, write_csv  # noqa: E402

import tlc  # noqa: E402

REDUCED = {
    "NAFNet": dict(width=16, enc_blk_nums=[1, 1, 1, 4], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]),
    "HINet": dict(wf=16, hin_position_left=3, hin_position_right=4),
    "MPRNet": dict(n_feat=24, scale_unetfeats=12, scale_orsnetfeats=8, num_cab=2),
    "Restormer": dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 4, 8]),
    # Light networks, where the local statistics weigh most (the configurations of the cost issue).
    "NAFNet-w16-light": dict(width=16, enc_blk_nums=[1, 1, 1, 2], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]),
    "HINet-wf16-hin5": dict(wf=16, hin_position_left=0, hin_position_right=4),
}
ARCH = {"NAFNet-w16-light": "NAFNet", "HINet-wf16-hin5": "HINet"}  # reduced entries named otherwise
FULL = {
    "NAFNet-width32": ("NAFNet", dict(width=32, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])),
    "NAFNet-width64": ("NAFNet", dict(width=64, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])),
    "HINet": ("HINet", dict(wf=64, hin_position_left=3, hin_position_right=4)),
    "MPRNet": ("MPRNet", {}),
    "Restormer": ("Restormer", {}),
}


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def network_arguments(description: str, only: str) -> argparse.ArgumentParser:
    """The arguments of the scripts that look into the released-width networks on a GPU
    (gpu_profile.py, gpu_ab.py): --device, --dtype, --size, --only."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--size", default="720x1280")
    parser.add_argument("--only", default=only, help="comma-separated names of FULL")
    return parser


def networks_and_input(args: argparse.Namespace) -> Iterator[tuple[str, str, torch.nn.Module, torch.nn.Module, torch.Tensor]]:
    """(name, architecture, plain, converted, input) for each network of ``args.only`` at the
    released widths (perturbed, train 256 / base 384), one at a time."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    h, w = (int(v) for v in args.size.split("x"))
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    for name in args.only.split(","):
        arch, config = FULL[name]
        plain = perturbed(tlc.archs.build(arch, **config)).to(device, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local, _ = tlc.convert(plain, train_size=256, base_size=384)
        yield name, arch, plain, local, x
        del plain, local


def cuda_peaks(fns: dict) -> dict:
    """Peak CUDA memory of one call of each function, MiB above what was allocated before it."""
    peaks = {}
    with torch.inference_mode():
        for label, fn in fns.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            peaks[label] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--size", default="720x1280", help="HxW of the test image")
    parser.add_argument("--full", action="store_true", help="the released widths (GPU)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each, taking turns")
    parser.add_argument("--only", help="comma-separated names to run")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    dtype = getattr(torch, args.dtype)
    nets = FULL if args.full else {name: (ARCH.get(name, name), config) for name, config in REDUCED.items()}
    if args.only:
        nets = {k: v for k, v in nets.items() if k in args.only.split(",")}
    print(f"networks at {h}x{w} on {machine()}, {args.dtype}, {'released' if args.full else 'reduced'} widths")
    print(f"  {'network':<16}{'params':>10}{'plain ms':>11}{'tlc ms':>10}{'ratio':>8}{'max |diff| at train':>22}")
    rows = []
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(args.device, dtype)
    for name, (arch, config) in nets.items():
        plain = perturbed(tlc.archs.build(arch, **config)).to(args.device, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local, report = tlc.convert(plain, train_size=256, base_size=384)
        with torch.inference_mode():
            times = interleaved_median_seconds({"plain": lambda: plain(x), "tlc": lambda: local(x)}, args.device,
                                               repeats=args.repeats)
        peaks = cuda_peaks({"plain": lambda: plain(x), "tlc": lambda: local(x)}) if x.is_cuda else {}
        params = sum(p.numel() for p in plain.parameters())
        ratio = times["tlc"] / times["plain"]
        print(f"  {name:<16}{params:>10,}{1e3 * times['plain']:>11.1f}{1e3 * times['tlc']:>10.1f}{ratio:>7.2f}x"
              f"{report.max_deviation:>22.2e}")
        rows.append({"network": name, "config": str(config), "params": params, "size": args.size, "device": args.device,
                     "dtype": args.dtype, "plain_ms": round(1e3 * times["plain"], 2), "tlc_ms": round(1e3 * times["tlc"], 2),
                     "ratio": round(ratio, 3), "converted_ops": len(report.converted),
                     "plain_peak_mib": peaks.get("plain", ""), "tlc_peak_mib": peaks.get("tlc", ""),
                     "run": f"{name} {args.size} {args.dtype}", "machine": machine()})
        del plain, local
    name = f"networks_{torch.device(args.device).type}"
    print(f"wrote {write_csv(name, merged(name, rows, key='run'))}")  # other networks, sizes and dtypes are kept


if __name__ == "__main__":
    main()
