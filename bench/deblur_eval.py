"""Full-image, tiled and TLC inference of the bundled deblurring model on held-out photographs.

The three TEST photographs of ``train_tiny.py`` (coffee 400x600, rocket 427x640, motorcycle_left
500x741; never trained or validated on), each blurred at full resolution:

- ``blur-varying``: motion that varies across the frame (``tlc.synth.motion_field``: camera
  translation + rotation + zoom and one moving object, longest motion 20 px scaled by U(0.4, 1));
- ``blur-uniform``: the control, one motion of 10 px in a random direction everywhere;

then mild Gaussian noise (sigma 2 on 0..255), exactly as ``make demo`` (``tlc.demo.blurred``), in
three draws per photograph (draw 0 is the demo's). Each set is restored with ``tlc eval`` in ``full``,
``tiles`` (96 px, overlap 24, as the demo) and ``tlc`` (train 48, base 72) modes, plus the
denoiser ``tiny-nafnet`` as a reference; mean PSNR / SSIM (gopro protocol: uint8 RGB) go to
``bench/results/deblur_cpu.csv`` and the table is printed. Then the TLC window is swept on the
varying set (``--base-size`` 48, 72 (the default, 1.5x the crop), 144, 288 px) for the deblurring
models: ``bench/results/deblur_base_cpu.csv``.

    python bench/deblur_eval.py
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_tiny.py

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny import ROOT, TEST_IMAGES, load_photo  # noqa: E402

import tlc  # noqa: E402
from tlc.cli import main as tlc_main  # noqa: E402
from tlc.demo import BLUR_SETS, blurred  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WORK = ROOT / "build" / "deblur_eval"
DRAWS = 3
MODELS = ["tiny-nafnet-deblur", "tiny-unet-in-deblur", "tiny-nafnet"]
BASES = [48, 72, 144, 288]


def write_set(kind: str) -> Path:
    folder = WORK / kind
    for i, name in enumerate(TEST_IMAGES):
        sharp = load_photo(name)
        for draw in range(DRAWS):
            stem = f"{name}-{draw}.png"
            if not (folder / "input" / stem).exists():
                tlc.io.write_image(folder / "target" / stem, sharp, overwrite=True)
                tlc.io.write_image(folder / "input" / stem, blurred(sharp, kind, i + 100 * draw), overwrite=True)
    return folder


def main() -> int:
    rows = []
    for kind in BLUR_SETS:
        pairs = write_set(kind)
        input_scores = [tlc.metrics.PROTOCOLS["gopro"].score(tlc.io.read_image(p).pixels,
                                                             tlc.io.read_image(pairs / "target" / p.name).pixels)
                        for p in sorted((pairs / "input").glob("*.png"))]
        rows.append({"blur": kind, "model": "(blurred input)", "mode": "-",
                     "psnr": np.mean([s[0] for s in input_scores]), "ssim": np.mean([s[1] for s in input_scores]),
                     "images": len(input_scores)})
        for model in MODELS:
            out = pairs / f"results-{model}"
            code = tlc_main(["eval", str(pairs), "--model", model, "--modes", "full,tiles,tlc", "--tile", "96",
                             "--overlap", "24", "--out", str(out), "--device", "cpu"])
            if code:
                return code
            summary = json.loads((out / "summary.json").read_text())
            for mode, s in summary["modes"].items():
                rows.append({"blur": kind, "model": model, "mode": mode, "psnr": s["psnr"], "ssim": s["ssim"],
                             "images": s["images"]})
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "deblur_cpu.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["blur", "model", "mode", "psnr", "ssim", "images"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "psnr": f"{r['psnr']:.3f}", "ssim": f"{r['ssim']:.4f}"})
    for r in rows:
        print(f"{r['blur']:<8} {r['model']:<20} {r['mode']:<6} {r['psnr']:7.2f} dB  {r['ssim']:.4f}")
    sweep = []
    for model in MODELS[:2]:
        for base in BASES:
            out = WORK / "blur-varying" / f"base-{model}-{base}"
            code = tlc_main(["eval", str(WORK / "blur-varying"), "--model", model, "--modes", "tlc", "--base-size",
                             str(base), "--out", str(out), "--device", "cpu"])
            if code:
                return code
            s = json.loads((out / "summary.json").read_text())["modes"]["tlc"]
            sweep.append({"blur": "blur-varying", "model": model, "base": base, "psnr": f"{s['psnr']:.3f}",
                          "ssim": f"{s['ssim']:.4f}", "images": s["images"]})
    with open(RESULTS / "deblur_base_cpu.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["blur", "model", "base", "psnr", "ssim", "images"])
        writer.writeheader()
        writer.writerows(sweep)
    for r in sweep:
        print(f"tlc base {r['base']:>3}  {r['model']:<20} {r['psnr']} dB  {r['ssim']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
