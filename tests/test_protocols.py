"""The benchmark protocols against float64 re-derivations of the reference evaluation scripts.

Every reference below is written from the published script's formula, in float64, without tlc:
- rain: Restormer Deraining/evaluate_PSNR_SSIM.m (MATLAB rgb2ycbcr Y as uint8, 20 log10(255 /
  RMSE), Wang's SSIM_index with fspecial('gaussian', 11, 1.5) and filter2 'valid');
- dpdd: Restormer Defocus_Deblurring/utils.py (PSNR peak 1, scikit-image's default SSIM with
  data_range=1 per channel, sklearn's MAE per channel);
- sidd: evaluate_SIDD.m (MATLAB psnr and ssim on each single-precision 256 x 256 x 3 block, mean);
- realblur: evaluate_RealBlur.py, re-derived in float64 without OpenCV by bench/realblur_reference.py,
  which froze tests/data/realblur_case.npz.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from tlc.eval import PROTOCOLS, Protocol
from tlc.eval.protocols import align_to_target, matlab_luma

ROOT = Path(__file__).resolve().parent.parent
CASE = ROOT / "tests" / "data" / "realblur_case.npz"

PSNR_TOL = 1e-3  # dB, the bound; the measured gaps are far smaller (docs/benchmarks.md)
SSIM_TOL = 1e-4


def _bench_module():
    spec = importlib.util.spec_from_file_location("realblur_reference", ROOT / "bench" / "realblur_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- independent references --------------------------------------------------------------------


def ref_matlab_y(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact rational rgb2ycbcr Y of uint8 RGB, rounded half up; and where the value is a tie."""
    c = rgb.astype(np.int64)
    num = 16 * 255000 + 65481 * c[..., 0] + 128553 * c[..., 1] + 24966 * c[..., 2]
    return (num + 127500) // 255000, (num % 255000) == 127500


def fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
    half = (size - 1) / 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    k = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return k / k.sum()


def ref_ssim_index(a: np.ndarray, b: np.ndarray, L: float = 255.0) -> float:
    """Wang's SSIM_index.m: filter2(window, ., 'valid') with the 11 x 11 Gaussian, mean2 of the map."""
    w = fspecial_gaussian(11, 1.5)

    def filt(m):
        return np.einsum("ijkl,kl->ij", sliding_window_view(m, (11, 11)), w)

    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    mu1, mu2 = filt(a), filt(b)
    s1 = filt(a * a) - mu1 * mu1
    s2 = filt(b * b) - mu2 * mu2
    s12 = filt(a * b) - mu1 * mu2
    return float(np.mean((2 * mu1 * mu2 + c1) * (2 * s12 + c2) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))))


def ref_rain(restored: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    ys = []
    for img in (restored, target):
        if img.dtype != np.uint8:  # the test script saved PNGs: clamp, * 255, round
            img = np.rint(np.clip(img.astype(np.float64), 0, 1) * 255).astype(np.uint8)
        if img.ndim == 3:
            y, tie = ref_matlab_y(img)
            # At an exact .5 the reference's double arithmetic decides; keep test images off ties.
            assert not tie.any(), "test image holds a colour whose Y is an exact tie; change the seed"
            img = y
        ys.append(img.astype(np.float64))
    a, b = ys
    rmse = math.sqrt(np.mean((a - b) ** 2))
    return 20 * math.log10(255 / rmse), ref_ssim_index(a, b)


def unit(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img / 255.0
    if img.dtype == np.uint16:
        return img / 65535.0
    return np.clip(img.astype(np.float64), 0, 1)


def ref_dpdd(restored: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """utils.PSNR, utils.SSIM (skimage defaults: 7 x 7 box, ddof = 1), utils.MAE on [0, 1]."""
    a, b = unit(target), unit(restored)
    out = {"psnr": 10 * math.log10(1 / np.mean((a - b) ** 2))}
    per_channel = []
    for c in range(3):
        wa = sliding_window_view(a[:, :, c], (7, 7)).reshape(-1, 49)
        wb = sliding_window_view(b[:, :, c], (7, 7)).reshape(-1, 49)
        ma, mb = wa.mean(1), wb.mean(1)
        va, vb = wa.var(1, ddof=1), wb.var(1, ddof=1)
        cov = ((wa - ma[:, None]) * (wb - mb[:, None])).sum(1) / 48
        c1, c2 = 0.01**2, 0.03**2
        per_channel.append(np.mean((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))))
    out["ssim"] = float(np.mean(per_channel))
    out["mae"] = float(np.mean([np.mean(np.abs(a[:, :, c] - b[:, :, c])) for c in range(3)]))
    return out


def ref_matlab_ssim_volume(a: np.ndarray, b: np.ndarray) -> float:
    """MATLAB ssim on an H x W x 3 single array: 3-D Gaussian (11 taps, sigma 1.5), replicate pad, L = 1."""
    t = np.arange(-5, 6)
    z, y, x = np.meshgrid(t, t, t, indexing="ij")
    k = np.exp(-(x * x + y * y + z * z) / (2 * 1.5**2))
    k /= k.sum()

    def filt(m):
        p = np.pad(m, 5, mode="edge")
        return np.einsum("ijkabc,abc->ijk", sliding_window_view(p, (11, 11, 11)), k)

    c1, c2 = 0.01**2, 0.03**2
    mu1, mu2 = filt(a), filt(b)
    s1, s2 = filt(a * a) - mu1**2, filt(b * b) - mu2**2
    s12 = filt(a * b) - mu1 * mu2
    return float(np.mean((2 * mu1 * mu2 + c1) * (2 * s12 + c2) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))))


def structured(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Ramps, a checkerboard and a disc, with a little noise: uint8 RGB."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 200.0 * (((x // 3) + (y // 3)) % 2)], -1)
    img[(x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 4) ** 2] = (250, 20, 120)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).round().astype(np.uint8)


def degrade(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(img.astype(np.float64) + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


# --- rain ----------------------------------------------------------------------------------------


def test_matlab_luma_is_rounded_rgb2ycbcr_on_every_colour():
    r = np.arange(256)
    mismatches = ties = 0
    for red in range(0, 256, 3):
        g, b = np.meshgrid(r, r, indexing="ij")
        rgb = np.stack([np.full_like(g, red), g, b], -1).astype(np.uint8)
        exact, tie = ref_matlab_y(rgb)
        mismatches += int(((matlab_luma(rgb) != exact) & ~tie).sum())
        ties += int(tie.sum())
    # Exact ties (value .5) go the way double arithmetic does; every other colour is exact.
    assert mismatches == 0
    assert ties < 100
    assert matlab_luma(np.zeros((1, 1, 3), np.uint8))[0, 0] == 16
    assert matlab_luma(np.full((1, 1, 3), 255, np.uint8))[0, 0] == 235


@pytest.mark.parametrize("shape", [(11, 11), (23, 31), (40, 57)])
@pytest.mark.parametrize("kind", ["random", "structured", "float", "gray"])
def test_rain_matches_evaluate_psnr_ssim_m(shape, kind):
    rng = np.random.default_rng(zlib.crc32(repr((shape, kind)).encode()))
    h, w = shape
    target = structured(h, w, rng) if kind != "random" else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    restored = degrade(target, rng, 12.0)
    if kind == "float":
        restored = restored / 255.0 + rng.uniform(-0.4, 0.4, restored.shape) / 255.0
    if kind == "gray":
        target, restored = target[:, :, 1], restored[:, :, 1]
    ref_p, ref_s = ref_rain(restored, target)
    got = PROTOCOLS["rain"].score_all(restored, target)
    assert set(got) == {"psnr", "ssim"}
    assert got["psnr"] == pytest.approx(ref_p, abs=1e-9)
    assert got["ssim"] == pytest.approx(ref_s, abs=1e-10)


def test_rain_differs_from_unrounded_luma():
    rng = np.random.default_rng(3)
    target = structured(32, 48, rng)
    restored = degrade(target, rng, 3.0)
    rain = PROTOCOLS["rain"].score(restored, target)
    basicsr_y = Protocol("y2d", y_channel=True, ssim="2d").score(restored, target)
    assert abs(rain[0] - basicsr_y[0]) > 1e-3  # the rounding of Y is part of the protocol


# --- dpdd ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 7), (19, 26), (45, 33)])
@pytest.mark.parametrize(
    "dtypes", [("float32", "uint16"), ("uint16", "uint16"), ("float64", "uint8"), ("uint8", "uint8")]
)
def test_dpdd_matches_restormer_utils(shape, dtypes):
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtypes)).encode()))
    h, w = shape
    base = rng.uniform(0.05, 0.95, (h, w, 3))
    base[: h // 2] = np.linspace(0, 1, w)[None, :, None]  # structured half: ramps
    noisy = np.clip(base + rng.normal(0, 0.03, base.shape), -0.02, 1.02)  # restored overshoots [0, 1]

    def cast(img, dtype):
        if dtype == "uint16":
            return np.rint(np.clip(img, 0, 1) * 65535).astype(np.uint16)
        if dtype == "uint8":
            return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
        return img.astype(dtype)

    restored, target = cast(noisy, dtypes[0]), cast(base, dtypes[1])
    ref = ref_dpdd(restored, target)
    got = PROTOCOLS["dpdd"].score_all(restored, target)
    assert set(got) == {"psnr", "ssim", "mae"}
    assert got["psnr"] == pytest.approx(ref["psnr"], abs=1e-9)
    assert got["ssim"] == pytest.approx(ref["ssim"], abs=1e-10)
    assert got["mae"] == pytest.approx(ref["mae"], abs=1e-12)
    skm = pytest.importorskip("skimage.metrics")  # the function the reference calls
    sk = skm.structural_similarity(unit(target), unit(restored), data_range=1, channel_axis=-1)
    assert got["ssim"] == pytest.approx(sk, abs=1e-10)


def test_dpdd_scores_16_bit_targets_from_16_bits():
    rng = np.random.default_rng(11)
    target16 = rng.integers(0, 65536, (24, 24, 3), dtype=np.uint16)
    restored = np.clip(target16 / 65535.0 + rng.normal(0, 0.0005, target16.shape), 0, 1)
    p16 = PROTOCOLS["dpdd"].score_all(restored, target16)["psnr"]
    p8 = PROTOCOLS["dpdd"].score_all(restored, np.rint(target16 / 257.0).astype(np.uint8))["psnr"]
    assert p16 == pytest.approx(ref_dpdd(restored, target16)["psnr"], abs=1e-9)
    assert p16 - p8 > 3.0  # 8-bit rounding of the target would cost several dB here
    t = torch.from_numpy(target16.astype(np.int32)).to(torch.uint16)
    assert PROTOCOLS["dpdd"].score_all(torch.from_numpy(restored), t)["psnr"] == pytest.approx(p16, abs=1e-12)


# --- sidd ----------------------------------------------------------------------------------------


def test_sidd_blocks_match_evaluate_sidd_m():
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 256, (2, 3, 17, 14, 3), dtype=np.uint8)  # (40, 32, 256, 256, 3) in the benchmark
    gt[0, 1] = structured(17, 14, rng)
    denoised = np.clip(gt / 255.0 + rng.normal(0, 0.05, gt.shape), 0, 1).astype(np.float32)
    psnrs, ssims = [], []
    for i in range(2):
        for k in range(3):
            a, b = denoised[i, k].astype(np.float64), gt[i, k] / 255.0  # im2single(gt)
            psnrs.append(10 * math.log10(1 / np.mean((a - b) ** 2)))
            ssims.append(ref_matlab_ssim_volume(a, b))
    got = PROTOCOLS["sidd"].score_blocks(denoised, gt)
    assert set(got) == {"psnr", "ssim"}
    assert got["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-9)
    assert got["ssim"] == pytest.approx(np.mean(ssims), abs=1e-10)
    one = PROTOCOLS["sidd"].score_all(denoised[1, 2], gt[1, 2])
    assert one["psnr"] == pytest.approx(psnrs[5], abs=1e-9)
    assert PROTOCOLS["sidd"].score_blocks(denoised[1, 2], gt[1, 2]) == pytest.approx(one)


# --- realblur ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def realblur_case():
    with np.load(CASE) as data:
        return {key: data[key] for key in data.files}


def _displacement(a: np.ndarray, b: np.ndarray, h: int, w: int) -> float:
    """Largest distance between where two homographies send the pixels of an h x w image."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.stack([x, y, np.ones_like(x)], -1)
    pa, pb = p @ a.T, p @ b.T
    return float(np.hypot(*(pa[..., :2] / pa[..., 2:] - pb[..., :2] / pb[..., 2:]).transpose(2, 0, 1)).max())


def test_realblur_alignment_recovers_the_known_homography(realblur_case):
    target, restored = realblur_case["target"], realblur_case["restored"]
    h, w = target.shape[:2]
    aligned, mask, warp = align_to_target(restored / 255.0, target / 255.0)
    truth = np.linalg.inv(realblur_case["homography"])
    assert warp.shape == (3, 3) and warp[2, 2] == 1.0
    assert _displacement(warp, truth / truth[2, 2], h, w) < 0.1  # pixels, anywhere in the image
    assert _displacement(warp, realblur_case["warp"], h, w) < 1e-4  # the float64 ECC (3e-6 measured)
    assert aligned.shape == target.shape and mask.shape == (h, w) and mask.dtype == bool
    assert 0.9 < mask.mean() < 1.0  # the rotation pulls a sliver of the border from outside
    assert np.all(aligned[~mask] == 0)
    # Aligned and intensity-matched: 0.9 gain undone, residual within 8-bit rounding.
    assert np.abs(aligned[mask] - target[mask] / 255.0).mean() < 2 / 255


def test_realblur_scores_match_the_frozen_float64_reference(realblur_case):
    target, restored = realblur_case["target"], realblur_case["restored"]
    got = PROTOCOLS["realblur"].score_all(restored, target)
    assert set(got) == {"psnr", "ssim"}
    assert got["psnr"] == pytest.approx(float(realblur_case["psnr"]), abs=PSNR_TOL)
    assert got["ssim"] == pytest.approx(float(realblur_case["ssim"]), abs=SSIM_TOL)
    # Float outputs are quantised to 8 bits first, as the reference reads saved PNGs.
    as_float = restored / 255.0 + np.random.default_rng(0).uniform(-0.4, 0.4, restored.shape) / 255.0
    assert PROTOCOLS["realblur"].score_all(as_float.astype(np.float32), target) == got


def test_realblur_scoring_given_the_warp_matches_the_rederivation(realblur_case):
    bench = _bench_module()
    target, restored = realblur_case["target"] / 255.0, realblur_case["restored"] / 255.0
    _, _, warp = align_to_target(restored, target)
    ref_p, ref_s = bench.score_with_warp(restored, target, warp)
    got = PROTOCOLS["realblur"].score_all(realblur_case["restored"], realblur_case["target"])
    assert got["psnr"] == pytest.approx(ref_p, abs=1e-4)
    assert got["ssim"] == pytest.approx(ref_s, abs=1e-7)


def test_realblur_rejects_what_it_cannot_align():
    with pytest.raises(ValueError, match="all zeros"):
        PROTOCOLS["realblur"].score_all(np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 9, np.uint8))
    with pytest.raises(ValueError, match="11 x 11"):
        align_to_target(np.ones((8, 20, 3)), np.ones((8, 20, 3)))


# --- the interface -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_score_is_the_psnr_and_ssim_of_score_all(name):
    rng = np.random.default_rng(9)
    target = structured(24, 30, rng)
    restored = degrade(target, rng, 6.0)
    scores = PROTOCOLS[name].score_all(restored, target)
    assert PROTOCOLS[name].score(restored, target) == (scores["psnr"], scores["ssim"])
    assert ("mae" in scores) == PROTOCOLS[name].mae
    json.dumps(dataclasses.asdict(PROTOCOLS[name]))  # summary.json records the protocol


def test_new_fields_are_validated():
    with pytest.raises(ValueError, match="y_rounded"):
        Protocol("bad", y_rounded=True)
    with pytest.raises(ValueError, match="y_rounded"):
        Protocol("bad", y_channel=True, y_rounded=True, quantize=False)
    with pytest.raises(ValueError, match="align"):
        Protocol("bad", align=True)  # the default 3-D SSIM is not RealBlur's
    with pytest.raises(ValueError, match="align"):
        Protocol("bad", align=True, ssim="2d", crop_border=2)
    with pytest.raises(TypeError):
        Protocol("bad", mae=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="box7"):
        Protocol("bad", ssim="box9")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="uint16"):
        PROTOCOLS["dpdd"].score_all(np.zeros((8, 8, 3), np.int32), np.zeros((8, 8, 3), np.uint8))
