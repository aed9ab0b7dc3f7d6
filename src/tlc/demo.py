"""``make demo`` (``python -m tlc.demo``): TLC's effect on held-out photographs, in about a minute.

1. Writes the held-out test photographs of the bundled ``tiny-nafnet`` (scikit-image's, never
   trained on) to ``demo-output/sharp/``.
2. Builds two paired sets with ``tlc synth``: noise that varies across the frame (one side
   sigma 5, the other 50, as real noise varies with signal and exposure) and, as the control,
   uniform noise (sigma 25).
3. Restores both with ``tiny-nafnet`` (trained on 48x48 crops with one noise level each) in full,
   tiles and tlc modes with ``tlc eval``, printing PSNR/SSIM tables and writing comparison strips
   (input | full | tiles | tlc | target) to ``demo-output/<set>/results/compare/``.

Rerunning reuses what is there (the evaluation resumes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from . import io
from .zoo import registry
from .cli import main as tlc_main

MODEL = "tiny-nafnet"
SETS = {
    "varying": ["--noise", "5", "50", "--noise-pattern", "step"],
    "uniform": ["--noise", "25", "25", "--noise-pattern", "uniform"],
}


def photograph(name: str) -> np.ndarray:
    """A scikit-image photograph by name (``motorcycle_left``/``_right`` for the stereo pair), as
    H x W x 3 float32 in [0, 1], gray repeated to RGB."""
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        image = skimage.data.stereo_motorcycle()[0 if name == "motorcycle_left" else 1]
    else:
        image = getattr(skimage.data, name)()
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3], dtype=np.float32) / 255.0


def run(out: Path = Path("demo-output")) -> int:
    entry = registry.get(MODEL)
    card = json.loads(entry.bundled_weights.with_suffix(".json").read_text())
    sharp = out / "sharp"
    for name in card["data"]["test_images"]:
        path = sharp / f"{name}.png"
        if not path.exists():
            io.write_image(path, photograph(name))
    crop = entry.train_size[0]
    tile = ["--tile", str(2 * crop), "--overlap", str(crop // 2)]
    for label, noise in SETS.items():
        print(f"\n== {label} noise ({' '.join(noise)}), {MODEL} trained on {crop}x{crop} crops", flush=True)
        pairs = out / label
        code = tlc_main(["synth", str(sharp), str(pairs), *noise, "--seed", "0"])
        code = code or tlc_main(["eval", str(pairs), "--model", MODEL, "--modes", "full,tiles,tlc", *tile,
                                 "--out", str(pairs / "results"), "--compare", "--device", "cpu"])
        if code:
            return code
    print(f"\ncomparison strips (input | full | tiles | tlc | target): {out}/*/results/compare/")
    return 0


if __name__ == "__main__":
    sys.exit(run())
