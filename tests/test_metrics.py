"""PSNR/SSIM against the reference repositories' values, float64 brute force and scikit-image."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlc.eval import metrics
from tlc.eval.metrics import PROTOCOLS, Protocol, psnr, ssim, to_uint8

PSNR_TOL = 1e-3  # dB
SSIM_TOL = 1e-4
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


@pytest.fixture(scope="module")
def metric_cases(conformance: Path) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    from safetensors.numpy import load_file

    arrays = load_file(conformance / "metrics.safetensors")
    cases = json.loads((conformance / "metrics.json").read_text())["cases"]
    return [(arrays[f"restored.{c['index']}"], arrays[f"target.{c['index']}"], c) for c in cases]


def _pair(shape: tuple[int, ...], seed: int, noise: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth structured uint8 image and a noisy, shifted copy of it."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 127 + 90 * np.sin(xx / (3 + seed)) * np.cos(yy / (5 + seed)) + 30 * ((xx // 8 + yy // 8) % 2)
    chans = shape[2] if len(shape) == 3 else 1
    img = np.stack([np.roll(base, 3 * c, axis=1) for c in range(chans)], axis=-1).reshape(shape)
    target = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    restored = np.clip(np.rint(img + rng.normal(0, noise, img.shape) + 4), 0, 255).astype(np.uint8)
    return restored, target


def _random_pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)


def _brute_ssim(x: np.ndarray, y: np.ndarray, dims: int) -> float:
    """The reference formulas with an explicit 11^dims Gaussian convolution, float64 and replicate padding."""
    taps = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))  # 11 taps, sigma 1.5, by hand
    k = torch.tensor(taps / taps.sum(), dtype=torch.float64)
    a = torch.tensor(x, dtype=torch.float64)
    b = torch.tensor(y, dtype=torch.float64)
    if dims == 3:
        weight = torch.einsum("i,j,k->ijk", k, k, k)[None, None]

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv3d(F.pad(t[None, None], (5,) * 6, mode="replicate"), weight)[0, 0]

    else:
        weight = torch.outer(k, k)[None, None]

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(F.pad(t[None, None], (5,) * 4, mode="replicate"), weight)[0, 0]

    m1, m2 = blur(a), blur(b)
    s1, s2, s12 = blur(a * a) - m1**2, blur(b * b) - m2**2, blur(a * b) - m1 * m2
    return float(((2 * m1 * m2 + C1) * (2 * s12 + C2) / ((m1**2 + m2**2 + C1) * (s1 + s2 + C2))).mean())


def _luma(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float64)
    return 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255


# --- the reference repositories' numbers -----------------------------------------------------


def test_reproduces_every_reference_value(metric_cases):
    worst = {"psnr_rgb": 0.0, "ssim_rgb3d": 0.0, "psnr_y": 0.0, "ssim_y": 0.0}
    for restored, target, case in metric_cases:
        assert list(restored.shape) == case["shape"]
        for crop in (0, 4):
            ours = {
                "psnr_rgb": psnr(restored, target, crop),
                "ssim_rgb3d": ssim(restored, target, crop),
                "psnr_y": psnr(restored, target, crop, y_channel=True),
                "ssim_y": ssim(restored, target, crop, y_channel=True),
            }
            for key, value in ours.items():
                expected = case[f"{key}_crop{crop}"]
                tol = PSNR_TOL if key.startswith("psnr") else SSIM_TOL
                assert abs(value - expected) <= tol, (case["index"], crop, key, value, expected)
                worst[key] = max(worst[key], abs(value - expected))
    # The references run in float32; their 3-D SSIM loses up to ~2.4e-5 to E[x^2] - E[x]^2 on
    # 0..255 values, everything else agrees to a few 1e-6.
    assert worst["psnr_rgb"] < 1e-9 and worst["psnr_y"] < 1e-5 and worst["ssim_y"] < 1e-6, worst
    assert worst["ssim_rgb3d"] < 5e-5, worst


def test_protocol_presets_on_reference_cases(metric_cases):
    for restored, target, case in metric_cases:
        p, s = PROTOCOLS["gopro"].score(restored, target)
        assert abs(p - case["psnr_rgb_crop0"]) <= PSNR_TOL and abs(s - case["ssim_rgb3d_crop0"]) <= SSIM_TOL
        p, s = PROTOCOLS["y"].score(restored, target)
        assert abs(p - case["psnr_y_crop0"]) <= PSNR_TOL and abs(s - case["ssim_y_crop0"]) <= SSIM_TOL
        p, s = Protocol("y4", y_channel=True, crop_border=4).score(restored, target)
        assert abs(p - case["psnr_y_crop4"]) <= PSNR_TOL and abs(s - case["ssim_y_crop4"]) <= SSIM_TOL
        # Float outputs that round to the same uint8 image score the same under "gopro".
        jitter = np.random.default_rng(case["index"]).uniform(-0.45, 0.45, restored.shape)
        as_float = ((restored + jitter) / 255).astype(np.float32)
        assert PROTOCOLS["gopro"].score(as_float, target) == PROTOCOLS["gopro"].score(restored, target)


# --- the definitions, against independent brute force -----------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 3), (4, 7, 3), (13, 17, 3), (23, 12, 1)])
def test_ssim_3d_matches_brute_force(shape):
    restored, target = _random_pair(shape, seed=sum(shape))
    assert ssim(restored, target) == pytest.approx(_brute_ssim(restored, target, dims=3), abs=1e-12)


@pytest.mark.parametrize("shape", [(3, 5, 3), (19, 14, 3)])
def test_ssim_y_is_2d_replicate_ssim_of_luma(shape):
    restored, target = _pair(shape, seed=2)
    expected = _brute_ssim(_luma(restored), _luma(target), dims=2)
    assert ssim(restored, target, y_channel=True) == pytest.approx(expected, abs=1e-12)


def test_psnr_by_hand():
    restored, target = _pair((20, 30, 3), seed=1)
    mse = np.mean((restored.astype(np.float64) - target) ** 2)
    assert psnr(restored, target) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-12)
    mse_y = np.mean((_luma(restored) - _luma(target)) ** 2)
    assert psnr(restored, target, y_channel=True) == pytest.approx(10 * math.log10(255**2 / mse_y), abs=1e-12)


def test_crop_border_crops_every_side_first():
    restored, target = _pair((40, 33, 3), seed=3)
    inner = restored[4:-4, 4:-4], target[4:-4, 4:-4]
    assert psnr(restored, target, crop_border=4) == psnr(*inner)
    assert ssim(restored, target, crop_border=4) == ssim(*inner)
    assert ssim(restored, target, 4, True) == ssim(*inner, y_channel=True)
    assert ssim(restored, target, 4, mode="2d") == ssim(*inner, mode="2d")
    assert ssim(restored, target, crop_border=4) != ssim(restored, target)


def test_identical_images():
    image, _ = _pair((31, 45, 3), seed=4)
    assert psnr(image, image) == math.inf
    assert psnr(image, image.copy(), y_channel=True) == math.inf
    for mode in ("3d", "2d"):
        assert ssim(image, image.copy(), mode=mode) == pytest.approx(1.0, abs=1e-15)
    assert ssim(image, image, y_channel=True) == pytest.approx(1.0, abs=1e-15)
    assert PROTOCOLS["float"].score(image / 255.0, image / 255.0) == (math.inf, pytest.approx(1.0, abs=1e-15))


def test_torch_numpy_and_grayscale_layouts_agree():
    restored, target = _pair((24, 29, 3), seed=5)
    for crop, y in ((0, False), (3, True)):
        tensors = torch.from_numpy(restored), torch.from_numpy(target)
        assert psnr(*tensors, crop, y) == psnr(restored, target, crop, y)
        assert ssim(*tensors, crop, y) == ssim(restored, target, crop, y)
    gray, gray_t = _pair((24, 29), seed=6)
    for fn in (psnr, ssim):
        assert fn(gray, gray_t) == fn(gray[..., None], gray_t[..., None])
        # A grayscale image is its own luma.
        assert fn(gray, gray_t, y_channel=True) == fn(gray, gray_t)
    assert ssim(gray, gray_t) == pytest.approx(_brute_ssim(gray, gray_t, dims=2), abs=1e-12)


def test_data_range_rescales_to_the_same_values():
    restored, target = _pair((26, 21, 3), seed=7)
    as01 = restored / 255.0, target / 255.0
    assert psnr(*as01, data_range=1.0) == pytest.approx(psnr(restored, target), abs=1e-9)
    assert ssim(*as01, data_range=1.0) == pytest.approx(ssim(restored, target), abs=1e-12)
    wide = restored.astype(np.uint16) * 257, target.astype(np.uint16) * 257
    assert psnr(*wide, data_range=65535) == pytest.approx(psnr(restored, target), abs=1e-9)


# --- quantisation and protocols -------------------------------------------------------------


def test_to_uint8_clamps_and_rounds_half_to_even():
    # x * 255 is exactly k + 0.5 for these float64 values; ties go to the even neighbour.
    halves = np.array([0.5, 1.5, 2.5, 3.5, 253.5, 254.5]) / 255
    assert ((halves * 255) % 1 == 0.5).all()
    assert to_uint8(halves).tolist() == [0, 2, 2, 4, 254, 254]
    assert to_uint8(torch.tensor(halves)).tolist() == [0, 2, 2, 4, 254, 254]
    out = to_uint8(np.array([-0.3, 0.0, 1.0, 1.7, 0.2], dtype=np.float32))
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 255, 255, 51]
    t = to_uint8(torch.rand(2, 5, 3, dtype=torch.float16))
    assert t.dtype == torch.uint8 and t.shape == (2, 5, 3)
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([0.5, np.nan]))
    with pytest.raises(TypeError):
        to_uint8(np.zeros(3, dtype=np.uint8))


def test_to_uint8_matches_scikit_image_and_torch():
    skimage_util = pytest.importorskip("skimage.util")
    rng = np.random.default_rng(8)
    for dtype in (np.float32, np.float64):
        x = np.concatenate([rng.random(20000), (np.arange(511) + 0.0) / 510]).astype(dtype)
        expected = skimage_util.img_as_ubyte(x)
        assert np.array_equal(to_uint8(x), expected)
        assert np.array_equal(to_uint8(torch.from_numpy(x)).numpy(), expected)


def test_float_protocol_scores_unrounded_values():
    restored, target = _pair((30, 36, 3), seed=9)
    rng = np.random.default_rng(9)
    x = np.clip(restored / 255 + rng.uniform(-0.004, 0.004, restored.shape), 0, 1)
    y = target / 255.0
    p, s = PROTOCOLS["float"].score(x, y)
    assert p == pytest.approx(10 * math.log10(1 / np.mean((x - y) ** 2)), abs=1e-9)
    assert s == pytest.approx(_brute_ssim(x * 255, y * 255, dims=3), abs=1e-12)
    # Values outside [0, 1] are clamped, as the references do before scoring.
    assert PROTOCOLS["float"].score(x * 1.5 - 0.25, y) == PROTOCOLS["float"].score(np.clip(x * 1.5 - 0.25, 0, 1), y)
    # A uint8 target is taken as k / 255, and rounding would change the numbers.
    assert PROTOCOLS["float"].score(x, target) == pytest.approx((p, s), abs=1e-12)
    assert PROTOCOLS["gopro"].score(x, target)[0] != pytest.approx(p, abs=1e-3)


def test_protocols_are_frozen_and_validated():
    assert set(PROTOCOLS) == {"gopro", "y", "float", "per-channel-2d", "rain", "dpdd", "sidd", "realblur"}
    assert metrics.DEFAULT_PROTOCOL is PROTOCOLS["gopro"]
    assert all(name == p.name for name, p in PROTOCOLS.items())
    assert PROTOCOLS["gopro"] == Protocol("gopro", y_channel=False, crop_border=0, ssim="3d", quantize=True)
    assert PROTOCOLS["per-channel-2d"] == Protocol("per-channel-2d", ssim="2d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROTOCOLS["gopro"].crop_border = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        PROTOCOLS["new"] = Protocol("new")  # type: ignore[index]
    with pytest.raises(ValueError, match="ssim"):
        Protocol("bad", ssim="4d")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop_border"):
        Protocol("bad", crop_border=-1)


# --- scikit-image parity ---------------------------------------------------------------------

PARITY_SHAPES = [(11, 11, 3), (37, 53, 3), (64, 97, 3), (131, 197, 3), (48, 40, 1)]


@pytest.mark.parametrize("shape", PARITY_SHAPES)
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_per_channel_2d_matches_scikit_image(shape, kind):
    skm = pytest.importorskip("skimage.metrics")
    seed = shape[0] + shape[1]
    restored, target = _random_pair(shape, seed) if kind == "random" else _pair(shape, seed)
    expected = skm.structural_similarity(
        restored,
        target,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1,
    )
    p, s = PROTOCOLS["per-channel-2d"].score(restored, target)
    assert abs(s - expected) <= 1e-10, (s, expected)
    assert p == pytest.approx(skm.peak_signal_noise_ratio(target, restored, data_range=255), abs=1e-9)
    # The 3-D definition is a different number, as the README warns.
    if kind == "structured" and shape[2] == 3:
        assert abs(PROTOCOLS["gopro"].score(restored, target)[1] - s) > 1e-3


def test_per_channel_2d_matches_scikit_image_on_reference_cases(metric_cases):
    skm = pytest.importorskip("skimage.metrics")
    for restored, target, case in metric_cases:
        kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)
        expected = skm.structural_similarity(restored, target, **kwargs)
        s = PROTOCOLS["per-channel-2d"].score(restored, target)[1]
        assert abs(s - expected) <= 1e-10, (case["index"], s, expected)


def test_2d_ssim_on_floats_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(10)
    x, y = rng.random((29, 41, 3)), rng.random((29, 41, 3))
    expected = skm.structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    assert ssim(x, y, mode="2d", data_range=1.0) == pytest.approx(expected, abs=1e-10)


# --- files -----------------------------------------------------------------------------------


def _png_round_trip(image: np.ndarray) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        buffer.seek(0)
        return np.asarray(Image.open(buffer).convert("RGB"))
    try:
        import cv2
    except ImportError:
        pytest.skip("neither Pillow nor OpenCV is installed")
    ok, encoded = cv2.imencode(".png", image[..., ::-1])
    assert ok
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]


def test_psnr_survives_png_round_trip():
    restored, target = _pair((45, 61, 3), seed=11)
    read_back = _png_round_trip(restored), _png_round_trip(target)
    assert read_back[0].dtype == np.uint8 and read_back[0].shape == restored.shape
    assert abs(psnr(*read_back) - psnr(restored, target)) <= PSNR_TOL
    assert abs(ssim(*read_back) - ssim(restored, target)) <= SSIM_TOL


# --- errors ----------------------------------------------------------------------------------


def test_errors():
    a, b = _pair((20, 24, 3), seed=12)
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(a, b[:, :-1])
    with pytest.raises(ValueError, match="shape mismatch"):
        ssim(a, b[..., :1])
    with pytest.raises(ValueError, match="permute"):
        psnr(torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(b).permute(2, 0, 1))
    with pytest.raises(ValueError, match="H x W x 3"):
        ssim(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        psnr(np.zeros((0, 5, 3), np.uint8), np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="crop_border"):
        ssim(a, b, crop_border=10)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, b, crop_border=-1)
    with pytest.raises(TypeError, match="crop_border"):
        psnr(a, b, crop_border=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(a, b, crop_border=5, mode="2d")
    with pytest.raises(ValueError, match="mode"):
        ssim(a, b, mode="3D")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data_range"):
        psnr(a / 255.0, b / 255.0)
    with pytest.raises(TypeError, match="dtype mismatch"):
        psnr(a, b / 255.0, data_range=1.0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(a / 255.0, b / 255.0, data_range=0)
    with pytest.raises(ValueError, match="NaN"):
        psnr(np.full((4, 4, 3), np.nan), np.zeros((4, 4, 3)), data_range=1.0)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        psnr(a.tolist(), b)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PROTOCOLS["gopro"].score(a.astype(np.int32), b)
