"""Half precision: converted models in float16 / bfloat16 against float32, and a 4K run.

For each bundled model (tlc.models entries with weights in the package), on the held-out
photographs of its model card with noise varying across the frame (a step from sigma 5 to 50):
PSNR of the TLC output in float32, float16 and bfloat16, and the largest |PSNR difference| to
float32. Then one 2160x3840 image through each converted model in each half dtype, checking that
the output has no inf/NaN. Local statistics accumulate in float64 (pooling, norms) or float32
(attention) whatever the model's dtype.

    python bench/half_precision.py
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, merged, write_csv  # noqa: E402

import tlc  # noqa: E402
from tlc import synth  # noqa: E402
from tlc.demo import photograph  # noqa: E402
from tlc.run import RunSettings, restore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-4k", action="store_true", help="skip the 2160x3840 run")
    parser.add_argument("--models", nargs="+", help="bundled model names (default: all)")
    parser.add_argument("--only-4k", action="store_true", help="skip the PSNR comparison (CPU half precision is slow)")
    args = parser.parse_args()
    entries = [e for e in tlc.models.list() if e.bundled_weights is not None and (not args.models or e.name in args.models)]
    degradation = synth.Degradation(noise_sigma_min=5, noise_sigma_max=50, noise_pattern="step", noise_pattern_angle=0)
    print(f"half precision on {machine()}")
    rows = []
    for entry in entries:
        card = json.loads(entry.bundled_weights.with_suffix(".json").read_text())
        model = tlc.load_model(entry.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local, _ = tlc.convert(model, train_size=entry.train_size, base_size=entry.base_size)
        scores = {}
        for dtype in () if args.only_4k else ("float32", "float16", "bfloat16"):
            net = local.to(args.device, getattr(torch, dtype))
            values = []
            for name in card["data"]["test_images"]:
                sharp = photograph(name)
                noisy, _ = synth.degrade(sharp, degradation, seed=0)
                x = torch.from_numpy(noisy).permute(2, 0, 1)[None]
                out = restore(net, x, RunSettings(mode="tlc", device=args.device, dtype=dtype))[0].permute(1, 2, 0).numpy()
                values.append(tlc.metrics.psnr(tlc.metrics.to_uint8(out), tlc.metrics.to_uint8(sharp)))
            scores[dtype] = float(np.mean(values))
        finite = {}
        if not args.no_4k:
            x = torch.rand(1, 3, 2160, 3840, generator=torch.Generator().manual_seed(0))
            for dtype in ("float16", "bfloat16"):
                out = restore(local.to(args.device, getattr(torch, dtype)), x, RunSettings(mode="tlc", device=args.device, dtype=dtype))
                finite[dtype] = bool(torch.isfinite(out).all())
        worst = max((abs(scores[d] - scores["float32"]) for d in ("float16", "bfloat16") if d in scores), default=float("nan"))
        psnrs = "  ".join(f"{d} {v:.3f}" for d, v in scores.items())
        print(f"  {entry.name:<14} PSNR {psnrs or 'skipped'}  max |diff| {worst:.3f} dB  4K finite {finite or 'skipped'}", flush=True)
        rows.append({"model": entry.name, **{f"psnr_{d}": round(v, 4) for d, v in scores.items()},
                     "max_abs_diff_db": round(worst, 4), **{f"finite_4k_{d}": v for d, v in finite.items()},
                     "machine": machine()})
    if rows:
        suffix = "_4k" if args.only_4k else ""
        name = f"half_precision{suffix}_{torch.device(args.device).type}"
        print(f"wrote {write_csv(name, merged(name, rows))}")  # --models keeps the other rows


if __name__ == "__main__":
    main()
