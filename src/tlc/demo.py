"""``make demo`` (``python -m tlc.demo``): TLC's effect on held-out photographs, denoising and
deblurring, in a minute or two.

1. Writes the held-out test photographs of the bundled ``tiny-nafnet`` (scikit-image's, never
   trained on) to ``demo-output/sharp/``.
2. Denoising: builds two paired sets with ``tlc synth``: noise that varies across the frame (one
   side sigma 5, the other 50, as real noise varies with signal and exposure) and, as the control,
   uniform noise (sigma 25), and restores them with ``tiny-nafnet``.
3. Deblurring: blurs the same photographs by motion that varies across the frame (camera shake,
   rotation and zoom, a moving object: :func:`tlc.synth.motion_field`) and, as the control, by one
   uniform motion of 10 px, plus mild noise, and restores them with ``tiny-nafnet-deblur``.

Each set is restored in full, tiles and tlc modes with ``tlc eval`` (models trained on 48x48
crops), printing PSNR/SSIM tables and writing comparison strips (input | full | tiles | tlc |
target) to ``demo-output/<set>/results/compare/``. Rerunning reuses what is there (the
evaluation resumes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from . import io
from .zoo import registry
from .cli import main as tlc_main
from .cli.main import ask_for_huge_pages
from .metrics import DEFAULT_PROTOCOL
from .synth import add_noise, motion_blur_field, motion_field

MODEL = "tiny-nafnet"
SETS = {
    "varying": ["--noise", "5", "50", "--noise-pattern", "step"],
    "uniform": ["--noise", "25", "25", "--noise-pattern", "uniform"],
}
DEBLUR_MODEL = "tiny-nafnet-deblur"
#: Blur sets of the deblurring demo: motion varying across the frame, and the uniform control.
BLUR_SETS = ("blur-varying", "blur-uniform")
#: Longest motion (pixels) of the varying set, the motion of the uniform one, the noise sigma (0..255).
BLUR_VARYING_MAX, BLUR_UNIFORM, BLUR_SIGMA = 20.0, 10.0, 2.0


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


def blurred(image: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """``image`` (H x W x 3 in [0, 1]) motion-blurred and noised as the deblurring demo does.

    ``kind`` ``"blur-varying"``: a :func:`tlc.synth.motion_field` (camera translation, rotation and
    zoom, one moving object; longest motion 20 px scaled by U(0.4, 1)); ``"blur-uniform"``: one
    10 px motion in a random direction. Then Gaussian noise of sigma 2 (0..255). Everything random
    follows from ``seed``. Returns a float32 array of ``image``'s shape.
    """
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    if kind == "blur-varying":
        length, angle = motion_field(h, w, BLUR_VARYING_MAX, rng, objects=1)
    elif kind == "blur-uniform":
        length, angle = np.full((h, w), BLUR_UNIFORM), np.full((h, w), rng.uniform(0.0, 180.0))
    else:
        raise ValueError(f"kind must be one of {BLUR_SETS}, got {kind!r}")
    return add_noise(motion_blur_field(image, length, angle), BLUR_SIGMA, rng)


def deblur(photos: dict[str, np.ndarray], out: Path, tile: int = 96, overlap: int = 24) -> int:
    """The deblurring part: pairs of each set in ``out/<set>/`` from ``photos`` (name -> H x W x 3
    in [0, 1]), restored by ``tiny-nafnet-deblur`` in full, tiles and tlc modes. Returns an exit code."""
    entry = registry.get(DEBLUR_MODEL)
    for kind in BLUR_SETS:
        print(f"\n== {kind.replace('-', ' ')} ({_blur_text(kind)}), {DEBLUR_MODEL} trained on "
              f"{entry.train_size[0]}x{entry.train_size[1]} crops", flush=True)
        pairs = out / kind
        scores = []
        for i, (name, image) in enumerate(photos.items()):
            if not (pairs / "input" / f"{name}.png").exists():
                io.write_image(pairs / "target" / f"{name}.png", image, overwrite=True)
                io.write_image(pairs / "input" / f"{name}.png", blurred(image, kind, i), overwrite=True)
            scores.append(DEFAULT_PROTOCOL.score(io.read_image(pairs / "input" / f"{name}.png").pixels, image))
        print(f"blurred input: {np.mean([p for p, _ in scores]):.4f} dB, SSIM {np.mean([s for _, s in scores]):.4f}")
        code = tlc_main(["eval", str(pairs), "--model", DEBLUR_MODEL, "--modes", "full,tiles,tlc", "--tile", str(tile),
                         "--overlap", str(overlap), "--out", str(pairs / "results"), "--compare", "--device", "cpu"])
        if code:
            return code
    return 0


def _blur_text(kind: str) -> str:
    if kind == "blur-varying":
        return f"motion varying across the frame, up to {BLUR_VARYING_MAX:g} px, noise sigma {BLUR_SIGMA:g}"
    return f"one {BLUR_UNIFORM:g} px motion everywhere, noise sigma {BLUR_SIGMA:g}"


def run(out: Path = Path("demo-output")) -> int:
    ask_for_huge_pages()  # as the tlc command does, before any large tensor
    entry = registry.get(MODEL)
    card = json.loads(entry.bundled_weights.with_suffix(".json").read_text())
    sharp = out / "sharp"
    photos = {}
    for name in card["data"]["test_images"]:
        path = sharp / f"{name}.png"
        photos[name] = photograph(name)
        if not path.exists():
            io.write_image(path, photos[name])
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
    code = deblur(photos, out, 2 * crop, crop // 2)
    if code:
        return code
    print(f"\ncomparison strips (input | full | tiles | tlc | target): {out}/*/results/compare/")
    return 0


if __name__ == "__main__":
    sys.exit(run())
