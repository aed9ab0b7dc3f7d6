"""Tiled TLC on a 4K image: does tile-by-tile reproduce whole-image TLC, and what memory does it save?

For each model (bundled, converted with its model card's TLC setting), one 2160x3840 noisy image
(a mosaic of scikit-image photographs, noise stepping from sigma 5 to 50 across the frame) is
restored by the converted model on the whole image, then tile by tile under a few
``--max-megapixels`` budgets with the default margin (:func:`tlc.run.tile_context`), and,
at the largest budget, with smaller margins to show what the margin buys. Every run is a fresh
process, so its peak resident memory (sampled every 5 ms) is its own.

Reported per run: tile grid, largest tile, pixels run over the image's (overhead), seconds, peak
resident memory (MiB, whole process; and above the process's memory just before the run, which
holds the model, the input and the Python runtime), and PSNR / max |difference| of the output
(clamped to [0, 1], as written to files) against the whole-image TLC output.

    python bench/tiled_tlc.py                       # prints a table, writes results/tiled_tlc_cpu.csv
    python bench/tiled_tlc.py --models tiny-hinet   # rerun one model; the others' rows are kept
    python bench/tiled_tlc.py --sweep               # margin sweep, writes results/tiled_tlc_margins_cpu.csv

``--sweep`` isolates the margin: a held-out photograph (coffee, 400x600, sigma 25) cut into a fixed
4x6 grid of ~100-px cores, run with margins from 0 to the exact bound; PSNR against whole-image TLC.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, merged, write_csv  # noqa: E402

import tlc  # noqa: E402
from tlc import synth  # noqa: E402
from tlc.demo import photograph  # noqa: E402
from tlc.eval.memory import PeakMemory, resident_mib  # noqa: E402
from tlc.run import RunSettings, grid_plan, model_tile_plan, restore, run_plan, tile_context  # noqa: E402

SIZE = (2160, 3840)
PHOTOS = ("coffee", "rocket", "motorcycle_left", "astronaut", "chelsea", "immunohistochemistry")


def mosaic(size: tuple[int, int] = SIZE) -> np.ndarray:
    """A ``size`` H x W x 3 float32 image: a 3x4 grid of photographs, each resized (bicubic,
    antialiased) to cover its cell and centre-cropped; real textures at about their native scale."""
    rows, cols = 3, 4
    ch, cw = -(-size[0] // rows), -(-size[1] // cols)
    out = np.zeros((rows * ch, cols * cw, 3), dtype=np.float32)
    for k in range(rows * cols):
        photo = torch.from_numpy(photograph(PHOTOS[k % len(PHOTOS)])).permute(2, 0, 1)[None]
        if k >= len(PHOTOS):
            photo = photo.flip(-1)  # the second use of a photograph is mirrored
        scale = max(ch / photo.shape[-2], cw / photo.shape[-1])
        h, w = math.ceil(photo.shape[-2] * scale), math.ceil(photo.shape[-1] * scale)
        photo = torch.nn.functional.interpolate(photo, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (h - ch) // 2, (w - cw) // 2
        r, c = divmod(k, cols)
        out[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = photo[0, :, top : top + ch, left : left + cw].permute(1, 2, 0).clamp(0, 1).numpy()
    return np.ascontiguousarray(out[: size[0], : size[1]])


def noisy_input(path: Path, size: tuple[int, int]) -> None:
    degradation = synth.Degradation(noise_sigma_min=5, noise_sigma_max=50, noise_pattern="step", noise_pattern_angle=0)
    noisy, _ = synth.degrade(mosaic(size), degradation, seed=0)
    np.save(path, np.ascontiguousarray(noisy.transpose(2, 0, 1)[None], dtype=np.float32))


def converted(name: str) -> torch.nn.Module:
    entry = tlc.models.get(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tlc.convert(tlc.load_model(name), entry.train_size, entry.base_size)[0]


def child(job: dict) -> dict:
    """One run in this (fresh) process; returns its row."""
    torch.set_num_threads(job["threads"])
    image = torch.from_numpy(np.load(job["input"]))
    size = tuple(image.shape[-2:])
    model = converted(job["model"])
    row = {"model": job["model"], "run": job["run"], "max_megapixels": job.get("max_megapixels") or "", "margin_px": "",
           "grid": "1x1", "tiles": 1, "largest_tile": f"{size[0]}x{size[1]}", "overhead": 1.0}
    settings, context = RunSettings(mode="tlc"), None
    if job["run"] != "whole":
        context = tile_context(model)
        margin = {"default": None, "none": 0, "one window": context.window_reach[0],
                  "rule": context.rule_margin[0]}[job["margin"]]
        plan = model_tile_plan(model, size, job["max_megapixels"], margin=margin, context=context)
        settings = RunSettings(mode="tlc", max_megapixels=job["max_megapixels"], tile_margin=margin)
        row.update(margin_px=plan.margin[0], grid=f"{plan.grid[0]}x{plan.grid[1]}", tiles=len(plan.tiles),
                   largest_tile=f"{plan.largest_tile[0]}x{plan.largest_tile[1]}", overhead=round(plan.overhead, 3))
    restore(model, image[:, :, :64, :64])  # warm-up: kernels compiled, pools allocated, outside the measurement
    gc.collect()
    start_mib = resident_mib()
    with PeakMemory("cpu") as memory:
        start = time.perf_counter()
        out = restore(model, image, settings, context).clamp(0, 1)
        seconds = time.perf_counter() - start
    row.update(seconds=round(seconds, 1), peak_rss_mib=round(memory.peak_mib), peak_above_start_mib=round(memory.peak_mib - start_mib))
    if job["run"] == "whole":
        np.save(job["whole"], out.numpy())
        row.update(psnr_vs_whole_db="", max_abs_diff="")
    else:
        diff = out.double() - torch.from_numpy(np.load(job["whole"])).double()
        mse = diff.square().mean().item()
        row.update(psnr_vs_whole_db=round(10 * math.log10(1 / mse), 2) if mse else math.inf,
                   max_abs_diff=f"{diff.abs().max().item():.2e}")
    return row


def margin_sweep(models: list[str]) -> list[dict]:
    """PSNR against whole-image TLC for margins from 0 to the exact bound, cores fixed."""
    image = synth.add_noise(photograph("coffee"), 25.0, np.random.default_rng(0))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    rows = []
    for name in models:
        model = converted(name)
        context = tile_context(model)
        with torch.inference_mode():
            whole = restore(model, x).clamp(0, 1)
            margins = sorted({0, 16, 32, 48, 64, 96, 128, 192, context.window_reach[0], context.rule_margin[0],
                              context.margin[0], context.exact_margin[0]})
            for margin in margins:
                plan = grid_plan(tuple(x.shape[-2:]), (margin, margin), context.multiple, 4, 6)
                start = time.perf_counter()
                out = run_plan(model, x, plan).clamp(0, 1)
                seconds = time.perf_counter() - start
                mse = (out.double() - whole.double()).square().mean().item()
                names = {context.window_reach[0]: "one window", context.rule_margin[0]: "rule",
                         context.margin[0]: "default", context.exact_margin[0]: "exact bound"}
                rule = names.get(margin, "")
                if margin == context.margin[0] and margin == context.rule_margin[0]:
                    rule = "default (rule)"
                row = {"model": name, "image": "coffee 400x600 sigma 25", "grid": "4x6", "margin_px": margin,
                       "margin_rule": rule, "overhead": round(plan.overhead, 3), "seconds": round(seconds, 1),
                       "psnr_vs_whole_db": round(10 * math.log10(1 / mse), 2) if mse else math.inf,
                       "max_abs_diff": f"{(out - whole).abs().max().item():.2e}"}
                rows.append(row)
                print(f"  {name:<12} margin {margin:>4} {rule:<12} overhead {row['overhead']:6.2f}x  "
                      f"PSNR vs whole {row['psnr_vs_whole_db']:>7} dB  max diff {row['max_abs_diff']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny-nafnet,tiny-hinet", help="comma-separated registry names")
    parser.add_argument("--budgets", default="2,0.5", help="comma-separated --max-megapixels values")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default="2160x3840", help="HxW of the image (smaller for a quick check)")
    parser.add_argument("--sweep", action="store_true", help="the margin sweep on a 400x600 photograph instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.sweep:
        torch.set_num_threads(args.threads)
        print(f"margin sweep on {machine()}", flush=True)
        rows = margin_sweep(args.models.split(","))
        print(f"wrote {write_csv('tiled_tlc_margins_cpu', merged('tiled_tlc_margins_cpu', rows))}")
        return
    budgets = [float(b) for b in args.budgets.split(",")]
    size = tuple(int(v) for v in args.size.lower().split("x"))
    print(f"tiled TLC at {size[0]}x{size[1]} on {machine()} ({args.threads} threads)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        noisy_input(Path(tmp) / "input.npy", size)
        for name in args.models.split(","):
            context = tile_context(converted(name))
            print(f"{name}: {context}", flush=True)
            whole = str(Path(tmp) / f"whole-{name}.npy")
            jobs = [{"run": "whole"}]
            jobs += [{"run": "tiled", "max_megapixels": b, "margin": "default"} for b in budgets]
            context = tile_context(converted(name))
            extra = ("one window", "none") if context.margin == context.rule_margin else ("rule", "one window", "none")
            jobs += [{"run": "tiled", "max_megapixels": max(budgets), "margin": m} for m in extra]
            for job in jobs:
                job.update(model=name, input=str(Path(tmp) / "input.npy"), whole=whole, threads=args.threads)
                done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                                      capture_output=True, text=True, check=False)
                if done.returncode:
                    sys.exit(f"{name} {job}: failed:\n{done.stderr}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["margin_rule"] = job.get("margin", "")
                rows.append(row)
                print(f"  {row['run']:<6} {str(row['max_megapixels']):>5} MP  margin {str(row['margin_px']):>4} "
                      f"({row['margin_rule'] or '-'}): {row['grid']:>5} tiles, largest {row['largest_tile']:>9}, "
                      f"overhead {row['overhead']:.2f}x, {row['seconds']:6.1f} s, peak {row['peak_rss_mib']:>5} MiB "
                      f"(+{row['peak_above_start_mib']}), PSNR vs whole {row['psnr_vs_whole_db'] or '-'} dB, "
                      f"max diff {row['max_abs_diff'] or '-'}", flush=True)
    name = "tiled_tlc_cpu" if size == SIZE else f"tiled_tlc_cpu_{size[0]}x{size[1]}"
    path = write_csv(name, merged(name, rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
