"""TLC's study of global operations, reproduced with the tiny models trained by train_tiny.py.

The paper (Chu et al., ECCV 2022, Sec. 3) tests a plain U-Net, a U-Net with instance norm and one
with squeeze-excitation at growing image sizes: the plain one improves with size, the two with
global ops peak near the training crop and then fall, and TLC removes the fall. Here, for every
trained model and every held-out TEST photograph (never trained on):

- degradations (``tlc.synth.degrade``, Gaussian noise on the 0..255 scale):
  * varying over the frame, where the statistics a global op gathers over the whole image differ
    from those of any training crop (one sigma per crop): ``step`` (left half sigma 5, right half
    50), ``ramp`` (5 at the left edge to 50 at the right), ``blobs`` (smooth blobs from 5 to 50);
  * ``uniform`` sigma 25 everywhere: the control, whose statistics match training crops;
- test sizes: centre crops of 48, 96, 192 and 384 pixels square, and the full photograph; the
  degradation is drawn on each crop (the step always splits the crop in its middle);
- modes (``tlc.run``): ``full`` (the model on the whole input), ``tiles`` (overlapping tiles
  of 1.5x the training crop, the same area as TLC's window, overlap 1/4 tile, feathered blend) and
  ``tlc`` (``tlc.convert(model, train_size=(crop, crop))``, default window 1.5x the crop);
- scores: ``tlc.metrics`` protocol "gopro" (outputs quantised to uint8, PSNR on RGB, 3-D SSIM).

Every mode and model sees bit-identical inputs: each (image, degradation, size) has its own seed.
Writes ``bench/results/study.csv`` (model, degradation, size, mode, image, psnr, ssim; the noisy
inputs' scores appear as model "noisy-input", mode "input"), ``bench/results/study.png`` (mean
PSNR vs test size: one column per model, top row varying noise, bottom row uniform, one line per
mode) and prints the tables in markdown.

    python bench/study.py                        # every model found in src/tlc/weights
    python bench/study.py --models tiny-unet-in --sizes 48 96 full --no-ssim
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_tiny.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny import MODELS, TEST_IMAGES, WEIGHTS, load_photo, load_trained  # noqa: E402

import tlc  # noqa: E402
from tlc.run import RunSettings, restore  # noqa: E402
from tlc.synth import Degradation, degrade  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: Name -> degradation. The first three vary over the frame; "uniform" is the control.
DEGRADATIONS: dict[str, Degradation] = {
    "step": Degradation(noise_sigma_min=5, noise_sigma_max=50, noise_pattern="step", noise_pattern_angle=0),
    "ramp": Degradation(noise_sigma_min=5, noise_sigma_max=50, noise_pattern="ramp", noise_pattern_angle=0),
    "blobs": Degradation(noise_sigma_min=5, noise_sigma_max=50, noise_pattern="blobs"),
    "uniform": Degradation(noise_sigma_min=25, noise_sigma_max=25),
}
VARYING = ("step", "ramp", "blobs")
MODES = ("full", "tiles", "tlc")


def centre_crop(image: np.ndarray, size: str) -> np.ndarray:
    """The centred size x size crop of an H x W x C image ("full": the image itself)."""
    if size == "full":
        return image
    s = int(size)
    h, w = image.shape[:2]
    if s > min(h, w):
        raise ValueError(f"crop {s} larger than the {h}x{w} image")
    y, x = (h - s) // 2, (w - s) // 2
    return image[y : y + s, x : x + s]


def make_inputs(sizes: list[str], seed: int) -> list[dict]:
    """Every (image, degradation, size) case: clean crop, degraded crop, seed. Drawn once."""
    cases = []
    for i, name in enumerate(TEST_IMAGES):
        photo = load_photo(name)
        for j, (deg_name, deg) in enumerate(DEGRADATIONS.items()):
            for k, size in enumerate(sizes):
                clean = np.ascontiguousarray(centre_crop(photo, size))
                case_seed = seed + 10007 * i + 101 * j + k
                noisy, _ = degrade(clean, deg, case_seed)
                cases.append({"image": name, "degradation": deg_name, "size": size, "clean": clean, "noisy": noisy, "seed": case_seed})
    return cases


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()


def score(output: torch.Tensor | np.ndarray, clean: np.ndarray, with_ssim: bool) -> tuple[float, float]:
    """(PSNR, SSIM) under protocol "gopro" (uint8 RGB); SSIM is NaN when skipped."""
    restored = output[0].permute(1, 2, 0) if isinstance(output, torch.Tensor) else output
    if with_ssim:
        return tlc.metrics.PROTOCOLS["gopro"].score(restored, clean)
    return tlc.metrics.psnr(tlc.metrics.to_uint8(restored), tlc.metrics.to_uint8(clean)), float("nan")


def run_model(
    name: str, cases: list[dict], tile_scale: float, overlap_frac: float, with_ssim: bool, weights: Path = WEIGHTS
) -> tuple[list[dict], dict]:
    """Score one trained model on every case in every mode; returns rows and a summary of the run."""
    model, card = load_trained(name, weights)
    crop = card["train_size"][0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted, report = tlc.convert(model, train_size=(crop, crop))
    notes = [str(w.message) for w in caught]
    tile = int(round(crop * tile_scale))
    overlap = int(round(tile * overlap_frac))
    runs = {
        "full": (model, RunSettings(mode="full")),
        "tiles": (model, RunSettings(mode="tiles", tile=tile, overlap=overlap)),
        "tlc": (converted, RunSettings(mode="tlc")),
    }
    rows, seconds = [], defaultdict(float)
    max_tlc_vs_full = 0.0
    for case in cases:
        x = to_tensor(case["noisy"])
        outputs = {}
        for mode, (net, settings) in runs.items():
            start = time.perf_counter()
            outputs[mode] = restore(net, x, settings)
            seconds[mode] += time.perf_counter() - start
            p, s = score(outputs[mode], case["clean"], with_ssim)
            rows.append({"model": name, "degradation": case["degradation"], "size": case["size"], "mode": mode,
                         "image": case["image"], "psnr": round(p, 4), "ssim": round(s, 5)})
        max_tlc_vs_full = max(max_tlc_vs_full, float((outputs["tlc"] - outputs["full"]).abs().max()))
    summary = {
        "converted_ops": len(report.converted),
        "notes": notes,
        "tile": tile,
        "overlap": overlap,
        "seconds": dict(seconds),
        "max_abs_tlc_minus_full": max_tlc_vs_full,
        "parameters": card["parameters"],
        "crop": crop,
    }
    return rows, summary


def mean_table(rows: list[dict]) -> dict[tuple, float]:
    """Mean PSNR by (model, degradation, size, mode) over images."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["degradation"], r["size"], r["mode"])].append(float(r["psnr"]))
    return {k: float(np.mean(v)) for k, v in groups.items()}


def varying_mean(table: dict[tuple, float], model: str, size: str, mode: str) -> float:
    return float(np.mean([table[(model, d, size, mode)] for d in VARYING]))


def markdown(table: dict[tuple, float], models: list[str], sizes: list[str]) -> str:
    """Tables of mean PSNR (dB) over the TEST photographs, one per degradation group."""
    lines = []
    groups = [("varying (mean of step, ramp, blobs)", None), *[(d, d) for d in DEGRADATIONS]]
    for title, deg in groups:
        lines += [f"**{title}**", "", "| model | mode | " + " | ".join(sizes) + " |", "|---|---|" + "---|" * len(sizes)]
        get = (lambda m, s, mode: varying_mean(table, m, s, mode)) if deg is None else (lambda m, s, mode, d=deg: table[(m, d, s, mode)])
        noisy = [get("noisy-input", s, "input") for s in sizes]
        lines.append("| (noisy input) | | " + " | ".join(f"{v:.2f}" for v in noisy) + " |")
        for m in models:
            for mode in MODES:
                lines.append(f"| {m} | {mode} | " + " | ".join(f"{get(m, s, mode):.2f}" for s in sizes) + " |")
        lines.append("")
    big = sizes[-1]
    lines += [f"**TLC - full (dB) at test size {big}, by degradation**", "",
              "| model | " + " | ".join(DEGRADATIONS) + " | varying mean |", "|---|" + "---|" * (len(DEGRADATIONS) + 1)]
    for m in models:
        diffs = [table[(m, d, big, "tlc")] - table[(m, d, big, "full")] for d in DEGRADATIONS]
        vm = varying_mean(table, m, big, "tlc") - varying_mean(table, m, big, "full")
        lines.append(f"| {m} | " + " | ".join(f"{v:+.2f}" for v in diffs) + f" | {vm:+.2f} |")
    return "\n".join(lines) + "\n"


def plot(table: dict[tuple, float], models: list[str], sizes: list[str], crop: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(models), figsize=(3.2 * len(models), 6.2), squeeze=False, sharex=True)
    x = np.arange(len(sizes))
    colours = {"full": "C3", "tiles": "C0", "tlc": "C2"}
    for c, m in enumerate(models):
        for r, (title, get) in enumerate([
            ("noise varying over the frame", lambda s, mode: varying_mean(table, m, s, mode)),
            ("uniform noise, sigma 25", lambda s, mode: table[(m, "uniform", s, mode)]),
        ]):
            ax = axes[r][c]
            for mode in MODES:
                ax.plot(x, [get(s, mode) for s in sizes], marker="o", ms=4, color=colours[mode], label=mode,
                        linestyle="-" if r == 0 else "--", lw=1.6 if mode != "full" else 2.2)
            ax.set_title(f"{m}\n{title}" if r == 0 else title, fontsize=9)
            ax.set_xticks(x, sizes)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("mean PSNR (dB)")
            if r == 1:
                ax.set_xlabel(f"test size (training crop {crop})")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("TLC study: tiny models trained on one-sigma crops, held-out photographs (PSNR, uint8 RGB)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="trained model names (default: every card in --weights)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="folder of the trained models (default src/tlc/weights)")
    parser.add_argument("--sizes", nargs="+", default=["48", "96", "192", "384", "full"], help="centre-crop sides, and/or 'full'")
    parser.add_argument("--tile-scale", type=float, default=1.5, help="tile side as a multiple of the training crop (default 1.5)")
    parser.add_argument("--overlap", type=float, default=0.25, help="tile overlap as a fraction of the tile (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the degradations (default 0)")
    parser.add_argument("--no-ssim", action="store_true", help="skip SSIM (faster)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for study.csv and study.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    models = args.models or [m for m in MODELS if (args.weights / f"{m}.json").exists()]
    if not models:
        parser.error(f"no trained model in {args.weights}: run bench/train_tiny.py first")
    cases = make_inputs(args.sizes, args.seed)
    rows = []
    for case in cases:
        p, s = score(case["noisy"], case["clean"], not args.no_ssim)
        rows.append({"model": "noisy-input", "degradation": case["degradation"], "size": case["size"], "mode": "input",
                     "image": case["image"], "psnr": round(p, 4), "ssim": round(s, 5)})
    crops = set()
    for name in models:
        start = time.perf_counter()
        model_rows, summary = run_model(name, cases, args.tile_scale, args.overlap, not args.no_ssim, args.weights)
        rows += model_rows
        crops.add(summary["crop"])
        notes = "; ".join(summary["notes"]) or "-"
        print(f"{name}: {summary['parameters']} parameters, {summary['converted_ops']} ops converted (notes: {notes}); "
              f"tiles {summary['tile']}/{summary['overlap']}; max |tlc - full| {summary['max_abs_tlc_minus_full']:.3g}; "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "study.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = mean_table(rows)
    print()
    print(markdown(table, models, args.sizes))
    plot(table, models, args.sizes, min(crops), args.out / "study.png")
    print(f"wrote {args.out / 'study.csv'} and {args.out / 'study.png'}")


if __name__ == "__main__":
    main()
