"""Synthetic degradations: kernels, level maps, blur blending, noise levels, records, reproducibility."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlc.synth import (
    PATTERNS,
    Degradation,
    add_noise,
    degrade,
    degrade_from_record,
    draw_maps,
    level_map,
    motion_blur,
    motion_blur_field,
    motion_field,
    motion_kernel,
)

EVERYTHING = Degradation(
    noise_sigma_min=5,
    noise_sigma_max=40,
    noise_pattern="blobs",
    noise_shot_fraction=0.3,
    blur_length_min=2,
    blur_length_max=17,
    blur_pattern="ramp",
    blur_gamma=2.2,
)


def _texture(h: int, w: int, seed: int = 0, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


def _flat(h: int, w: int, value: float = 0.5) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.float32)


def _std255(a: np.ndarray, value: float = 0.5) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - value) ** 2)) * 255)


def _moments(k: np.ndarray) -> tuple[float, float, float]:
    """(var_x, var_y, cov_xy) of a kernel, x to the right and y up from its centre."""
    r = k.shape[0] // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    y = -y
    return float((k * x * x).sum()), float((k * y * y).sum()), float((k * x * y).sum())


# --- motion_kernel ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 0.3, 1, 4, 9.3, 25])
@pytest.mark.parametrize("angle", [0, 30, 90, 137])
def test_kernel_normalised_odd_and_centred(length: float, angle: float) -> None:
    k = motion_kernel(length, angle)
    assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert k.min() >= 0
    assert abs(k.sum() - 1) < 1e-12
    r = k.shape[0] // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    assert abs((k * x).sum()) < 1e-9 and abs((k * y).sum()) < 1e-9
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)  # point-symmetric


def test_horizontal_kernel_is_one_row_of_about_length() -> None:
    k = motion_kernel(9, 0)
    r = k.shape[0] // 2
    assert k.shape == (11, 11)
    assert np.count_nonzero(k.sum(axis=1)) == 1 and k[r].sum() == pytest.approx(1)
    row = k[r]
    np.testing.assert_allclose(row[r - 3 : r + 4], 1 / 9, rtol=1e-3)  # the segment's interior
    assert np.count_nonzero(row > 1e-4) == 11  # 9 pixels + a linear shoulder either side
    var_x, var_y, _ = _moments(k)
    assert var_x == pytest.approx(81 / 12 + 1 / 6, rel=1e-3)
    assert var_y == 0
    np.testing.assert_allclose(motion_kernel(4, 0)[2], [1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8], atol=1e-3)


def test_vertical_kernel_is_one_column() -> None:
    k = motion_kernel(12, 90)
    r = k.shape[0] // 2
    assert np.count_nonzero(k.sum(axis=0)) == 1 and k[:, r].sum() == pytest.approx(1)
    np.testing.assert_allclose(k, motion_kernel(12, 0).T, atol=1e-12)
    np.testing.assert_array_equal(motion_kernel(12, 270), k)


@pytest.mark.parametrize("angle", [20, 45, 60, 120, 160])
def test_kernel_orientation_follows_angle(angle: float) -> None:
    length = 21
    var_x, var_y, cov = _moments(motion_kernel(length, angle))
    measured = math.degrees(0.5 * math.atan2(2 * cov, var_x - var_y)) % 180
    assert measured == pytest.approx(angle, abs=0.01)
    # Along the motion: the segment's variance plus the tent's, 1/6 in every direction.
    along = (var_x + var_y) / 2 + math.hypot((var_x - var_y) / 2, cov)
    assert along == pytest.approx(length**2 / 12 + 1 / 6, abs=0.005)


def test_kernel_short_lengths_approach_the_impulse() -> None:
    np.testing.assert_array_equal(motion_kernel(0, 33), [[1.0]])
    k = motion_kernel(1e-3, 33)
    assert k[k.shape[0] // 2, k.shape[1] // 2] > 0.999
    # Sub-pixel motion is a slight blur, continuous in length.
    assert motion_kernel(0.5, 0)[1, 1] == pytest.approx(0.875, abs=1e-3)


def test_kernel_size_argument() -> None:
    k = motion_kernel(4, 10)
    big = motion_kernel(4, 10, size=15)
    assert big.shape == (15, 15)
    np.testing.assert_array_equal(big[5:10, 5:10], k)
    assert big.sum() == pytest.approx(1)
    with pytest.raises(ValueError, match="odd"):
        motion_kernel(4, 10, size=8)
    with pytest.raises(ValueError, match=">= 5"):
        motion_kernel(4, 10, size=3)
    with pytest.raises(ValueError, match="length"):
        motion_kernel(-1, 0)
    with pytest.raises(ValueError, match="finite"):
        motion_kernel(3, float("nan"))


# --- motion_blur -----------------------------------------------------------------------------


def test_blur_matches_direct_convolution() -> None:
    img = _texture(40, 52)
    length, angle = 7.5, 25
    k = motion_kernel(length, angle)
    r = k.shape[0] // 2
    padded = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="symmetric")
    x = torch.from_numpy(padded.transpose(2, 0, 1).copy())[:, None]
    direct = F.conv2d(x, torch.from_numpy(k)[None, None])[:, 0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(motion_blur(img, length, angle), direct, atol=2e-6)


def test_horizontal_blur_widens_a_vertical_edge_by_its_length() -> None:
    img = np.zeros((48, 128, 3), np.float32)
    img[:, 64:] = 1.0
    length = 15
    row = motion_blur(img, length, 0)[24, :, 0]
    # A box of the motion length ramps 10-90% over 0.8 of it.
    ramp = np.count_nonzero((row > 0.1) & (row < 0.9))
    assert abs(ramp - 0.8 * length) <= 1
    assert np.all(np.diff(row) >= -1e-6)
    np.testing.assert_allclose(motion_blur(img, length, 90), img, atol=1e-6)


def test_constant_map_equals_scalar_length() -> None:
    img = _texture(32, 40)
    np.testing.assert_array_equal(motion_blur(img, np.full((32, 40), 6.0), 70), motion_blur(img, 6.0, 70))
    np.testing.assert_array_equal(motion_blur(img, 0.0, 70), img)


def test_step_map_is_sharp_where_zero_and_fully_blurred_where_high() -> None:
    img = _texture(32, 64)
    lengths = np.zeros((32, 64))
    lengths[:, 32:] = 20.0
    out = motion_blur(img, lengths, 0)
    np.testing.assert_array_equal(out[:, :32], img[:, :32])
    np.testing.assert_array_equal(out[:, 32:], motion_blur(img, 20.0, 0)[:, 32:])


def test_varying_length_interpolates_between_bank_kernels() -> None:
    img = _texture(24, 30)
    lengths = np.full((24, 30), 5.0)
    lengths[:, 0], lengths[:, -1] = 0.0, 10.0
    b5, b10 = motion_blur(img, 5.0, 30), motion_blur(img, 10.0, 30)
    # Bank {0, 5, 10}: 5 is a member. Bank {0, 10}: halfway between the sharp and the 10-pixel blur.
    np.testing.assert_allclose(motion_blur(img, lengths, 30, bank_size=3)[:, 1:-1], b5[:, 1:-1], atol=1e-6)
    halfway = 0.5 * (img + b10)
    np.testing.assert_allclose(motion_blur(img, lengths, 30, bank_size=2)[:, 1:-1], halfway[:, 1:-1], atol=1e-6)


def test_ramp_map_blurs_more_where_the_map_is_high() -> None:
    img = _texture(64, 256, c=1)
    rng = np.random.default_rng(0)
    lengths = level_map("ramp", 64, 256, 0, 24, rng, angle_deg=0)
    out = motion_blur(img, lengths, 0)
    energy = np.abs(np.diff(out[..., 0], axis=1))
    bands = [energy[:, i : i + 32].mean() for i in range(0, 255, 32)]
    assert all(a > b for a, b in zip(bands, bands[1:]))
    assert bands[0] > 3 * bands[-1]


def test_gamma_blur_brightens_highlights() -> None:
    img = np.zeros((16, 64, 1), np.float32)
    img[:, 30:34] = 1.0
    plain, linear = motion_blur(img, 12, 0), motion_blur(img, 12, 0, gamma=2.2)
    # Averaging in linear light keeps more of a bright streak than averaging stored values.
    assert linear[8, 32, 0] > plain[8, 32, 0] + 0.1
    assert 0 <= linear.min() and linear.max() <= 1


def test_blur_argument_checks() -> None:
    img = _texture(8, 8)
    with pytest.raises(ValueError, match="shape"):
        motion_blur(img, np.zeros((8, 9)), 0)
    with pytest.raises(ValueError, match="length"):
        motion_blur(img, -1.0, 0)
    with pytest.raises(ValueError, match="bank_size"):
        motion_blur(img, 3.0, 0, bank_size=1)
    with pytest.raises(ValueError, match="gamma"):
        motion_blur(img, 3.0, 0, gamma=0)


# --- level_map -------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
def test_level_map_shape_and_range(pattern: str) -> None:
    for seed in range(5):
        m = level_map(pattern, 37, 53, 2.5, 9.0, np.random.default_rng(seed))
        assert m.shape == (37, 53) and m.dtype == np.float64
        assert 2.5 <= m.min() and m.max() <= 9.0
        if pattern == "uniform":
            assert m.min() == m.max()
        else:
            assert m.min() == 2.5 and m.max() == 9.0
    np.testing.assert_array_equal(level_map(pattern, 5, 6, 3.0, 3.0, np.random.default_rng(0)), 3.0)


def test_uniform_level_is_drawn_over_the_range() -> None:
    rng = np.random.default_rng(1)
    values = [level_map("uniform", 2, 2, 10, 20, rng)[0, 0] for _ in range(200)]
    assert 10 <= min(values) < 11 and 19 < max(values) <= 20


def test_ramp_geometry() -> None:
    rng = np.random.default_rng(0)
    m = level_map("ramp", 10, 21, 0, 20, rng, angle_deg=0)
    np.testing.assert_array_equal(m, np.broadcast_to(m[0], m.shape))
    np.testing.assert_allclose(m[0], np.arange(21), atol=1e-12)
    up = level_map("ramp", 11, 7, 1, 3, rng, angle_deg=90)
    assert np.all(up[0] == 3) and np.all(up[-1] == 1) and np.all(np.diff(up[:, 0]) < 0)
    diag = level_map("ramp", 9, 9, 0, 1, rng, angle_deg=45)
    assert diag[-1, 0] == 0 and diag[0, -1] == 1  # low bottom-left, high top-right
    np.testing.assert_allclose(diag, diag.T[::-1, ::-1], atol=1e-12)


def test_step_geometry() -> None:
    rng = np.random.default_rng(0)
    m = level_map("step", 6, 10, 1, 4, rng, angle_deg=0)
    assert np.all(m[:, :5] == 1) and np.all(m[:, 5:] == 4)
    odd = level_map("step", 3, 7, 1, 4, rng, angle_deg=0)
    assert np.all(odd[:, :4] == 1) and np.all(odd[:, 4:] == 4)
    top = level_map("step", 8, 5, 1, 4, rng, angle_deg=90)
    assert np.all(top[:4] == 4) and np.all(top[4:] == 1)
    # A random orientation still splits the frame through its centre.
    for seed in range(5):
        r = level_map("step", 40, 40, 0, 1, np.random.default_rng(seed))
        assert 0.45 <= r.mean() <= 0.55


def test_blobs_are_smooth_and_resolution_independent() -> None:
    for seed in range(6):
        m = level_map("blobs", 96, 128, 0, 1, np.random.default_rng(seed))
        assert np.abs(np.diff(m, axis=0)).max() < 0.05 and np.abs(np.diff(m, axis=1)).max() < 0.05
    small = level_map("blobs", 48, 64, 0, 1, np.random.default_rng(3))
    big = level_map("blobs", 96, 128, 0, 1, np.random.default_rng(3))
    np.testing.assert_allclose(big.reshape(48, 2, 64, 2).mean(axis=(1, 3)), small, atol=0.005)


def test_level_map_checks() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="pattern"):
        level_map("gradient", 4, 4, 0, 1, rng)
    with pytest.raises(ValueError, match="exceeds"):
        level_map("ramp", 4, 4, 2, 1, rng)
    with pytest.raises(ValueError, match="height"):
        level_map("ramp", 0, 4, 0, 1, rng)
    with pytest.raises(TypeError, match="Generator"):
        level_map("ramp", 4, 4, 0, 1, 0)


# --- noise -----------------------------------------------------------------------------------


def test_uniform_noise_std_matches_sigma() -> None:
    out, rec = degrade(_flat(128, 256), Degradation(noise_sigma_min=20, noise_sigma_max=20), seed=1)
    assert _std255(out) == pytest.approx(20, rel=0.02)
    assert abs(out.mean() - 0.5) < 2e-3
    assert rec["noise"]["sigma"] == {"min": 20, "max": 20, "mean": 20}
    assert rec["noise"]["rms"] == pytest.approx(_std255(out), rel=1e-4)
    out, rec = degrade(_flat(128, 256), Degradation(noise_sigma_min=5, noise_sigma_max=30), seed=2)
    sigma = rec["noise"]["sigma"]
    assert 5 <= sigma["min"] == sigma["max"] <= 30
    assert _std255(out) == pytest.approx(sigma["mean"], rel=0.02)


def test_step_noise_left_low_right_high() -> None:
    d = Degradation(noise_sigma_min=5, noise_sigma_max=30, noise_pattern="step", noise_pattern_angle=0)
    out, rec = degrade(_flat(128, 256), d, seed=3)
    assert _std255(out[:, :128]) == pytest.approx(5, rel=0.03)
    assert _std255(out[:, 128:]) == pytest.approx(30, rel=0.03)
    assert rec["noise"]["pattern_angle_deg"] == 0


def test_ramp_noise_rises_across_the_frame() -> None:
    d = Degradation(noise_sigma_min=5, noise_sigma_max=45, noise_pattern="ramp", noise_pattern_angle=0)
    out, _ = degrade(_flat(128, 256), d, seed=4)
    sigma = draw_maps(d, 128, 256, seed=4).noise_sigma
    measured = [_std255(out[:, i : i + 32]) for i in range(0, 256, 32)]
    expected = [float(np.sqrt(np.mean(sigma[:, i : i + 32] ** 2))) for i in range(0, 256, 32)]
    assert all(a < b for a, b in zip(measured, measured[1:]))
    np.testing.assert_allclose(measured, expected, rtol=0.03)


def test_signal_dependent_noise_scales_with_sqrt_of_the_signal() -> None:
    img = np.full((128, 256, 3), 0.1, np.float32)
    img[:, 128:] = 0.4
    d = Degradation(noise_sigma_min=20, noise_sigma_max=20, noise_shot_fraction=1.0)
    out, _ = degrade(img, d, seed=5)
    dark, bright = _std255(out[:, :128], 0.1), _std255(out[:, 128:], 0.4)
    assert dark == pytest.approx(20 * math.sqrt(0.1), rel=0.03)
    assert bright == pytest.approx(20 * math.sqrt(0.4), rel=0.03)


def test_add_noise_is_clipped_and_zero_sigma_is_identity() -> None:
    img = _texture(32, 32)
    np.testing.assert_array_equal(add_noise(img, 0.0, np.random.default_rng(0)), img)
    noisy = add_noise(img, np.full((32, 32), 80.0), np.random.default_rng(0))
    assert noisy.dtype == np.float32 and noisy.min() == 0 and noisy.max() == 1
    with pytest.raises(ValueError, match="sigma"):
        add_noise(img, 300.0, np.random.default_rng(0))


# --- degrade: reproducibility and records ----------------------------------------------------


def test_same_seed_is_bit_exact_and_other_seeds_differ() -> None:
    img = _texture(64, 80)
    a, rec_a = degrade(img, EVERYTHING, seed=11)
    b, rec_b = degrade(img.copy(), EVERYTHING, seed=11)
    np.testing.assert_array_equal(a, b)
    assert rec_a == rec_b
    c, rec_c = degrade(img, EVERYTHING, seed=12)
    assert np.abs(a - c).mean() > 1e-2
    assert rec_c["blur"]["angle_deg"] != rec_a["blur"]["angle_deg"]


def test_record_round_trips_through_json_and_reproduces() -> None:
    img = _texture(48, 72)
    out, rec = degrade(img, EVERYTHING, seed=2024)
    back = json.loads(json.dumps(rec))
    assert back == rec
    np.testing.assert_array_equal(degrade_from_record(img, back), out)
    maps = draw_maps(EVERYTHING, 48, 72, seed=2024)
    assert rec["blur"]["angle_deg"] == maps.blur_angle_deg
    assert rec["blur"]["length"] == {"min": 2, "max": 17, "mean": pytest.approx(maps.blur_length.mean())}
    assert rec["noise"]["sigma"]["min"] == 5 and rec["noise"]["sigma"]["max"] == 40
    assert rec["blur"]["bank_lengths"][0] == 2 and rec["blur"]["bank_lengths"][-1] == 17
    with pytest.raises(ValueError, match="record is for"):
        degrade_from_record(img[:40], back)
    with pytest.raises(ValueError, match="record"):
        degrade_from_record(img, {"seed": 1})


def test_noise_draws_do_not_depend_on_the_blur_settings() -> None:
    img = _flat(40, 40)
    noise_only = Degradation(noise_sigma_min=10, noise_sigma_max=10)
    blurred_too = Degradation(noise_sigma_min=10, noise_sigma_max=10, blur_length_min=5, blur_length_max=9)
    a, _ = degrade(img, noise_only, seed=7)
    b, _ = degrade(img, blurred_too, seed=7)  # blurring a flat image changes nothing
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_no_degradation_is_identity_and_shapes_are_kept() -> None:
    img = _texture(20, 30)
    out, rec = degrade(img, Degradation(), seed=0)
    np.testing.assert_array_equal(out, img)
    assert out is not img and rec["noise"]["rms"] == 0
    gray, _ = degrade(img[..., 0], EVERYTHING, seed=0)
    assert gray.shape == (20, 30) and gray.dtype == np.float32
    assert 0 <= gray.min() and gray.max() <= 1


def test_degrade_input_checks() -> None:
    img = _texture(16, 16)
    with pytest.raises(TypeError, match="uint8"):
        degrade((img * 255).astype(np.uint8), EVERYTHING, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        degrade(img * 2, EVERYTHING, 0)
    with pytest.raises(ValueError, match="transpose"):
        degrade(np.ascontiguousarray(img.transpose(2, 0, 1)), EVERYTHING, 0)
    with pytest.raises(ValueError, match="seed"):
        degrade(img, EVERYTHING, -1)
    with pytest.raises(TypeError, match="seed"):
        degrade(img, EVERYTHING, True)
    with pytest.raises(TypeError, match="Degradation"):
        degrade(img, EVERYTHING.to_dict(), 0)


# --- Degradation -----------------------------------------------------------------------------


def test_degradation_dict_round_trip() -> None:
    d = Degradation(noise_sigma_min=1, noise_sigma_max=2, blur_pattern="step", blur_pattern_angle=90)
    assert isinstance(d.noise_sigma_min, float) and d.blur_pattern_angle == 90.0
    data = json.loads(json.dumps(d.to_dict()))
    assert Degradation.from_dict(data) == d
    assert Degradation.from_dict({}) == Degradation()
    with pytest.raises(ValueError, match="unknown Degradation fields: sigma"):
        Degradation.from_dict({"sigma": 3})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"noise_sigma_min": -1}, ValueError, "noise_sigma"),
        ({"noise_sigma_max": 300}, ValueError, "noise_sigma"),
        ({"noise_sigma_min": 10, "noise_sigma_max": 5}, ValueError, "exceeds"),
        ({"noise_pattern": "ramps"}, ValueError, "noise_pattern"),
        ({"blur_pattern": None}, ValueError, "blur_pattern"),
        ({"blur_length_max": 1000}, ValueError, "blur_length"),
        ({"blur_length_min": 3, "blur_length_max": 2}, ValueError, "exceeds"),
        ({"blur_angle_min": 90, "blur_angle_max": 10}, ValueError, "blur_angle"),
        ({"noise_shot_fraction": 1.5}, ValueError, "noise_shot_fraction"),
        ({"blur_gamma": 0}, ValueError, "blur_gamma"),
        ({"blur_bank_size": 1}, ValueError, "blur_bank_size"),
        ({"blur_bank_size": 2.5}, TypeError, "blur_bank_size"),
        ({"noise_sigma_max": True}, TypeError, "noise_sigma_max"),
        ({"blur_length_max": "5"}, TypeError, "blur_length_max"),
        ({"noise_pattern_angle": float("inf")}, ValueError, "noise_pattern_angle"),
    ],
)
def test_degradation_validation(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Degradation(**kwargs)


# --------------------------------------------------------------------------------------------
# Motion fields: length and direction varying per pixel


def _gather(image: np.ndarray, kernels: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Brute force: out[y, x] = sum_k weight_k[y, x] sum_(i, j) kernel_k[i, j] mirror(image)[y + i - r, x + j - r]."""
    h, w, c = image.shape
    out = np.zeros((h, w, c))
    for kernel, weight in kernels:
        r = kernel.shape[0] // 2
        padded = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="symmetric")
        for y in range(h):
            for x in range(w):
                patch = padded[y : y + 2 * r + 1, x : x + 2 * r + 1]
                # A convolution flips the kernel; line kernels are point-symmetric, so it is the same.
                out[y, x] += weight[y, x] * np.einsum("ij,ijc->c", kernel[::-1, ::-1], patch)
    return out


def test_motion_blur_field_matches_a_per_pixel_gather_of_the_blended_kernels():
    rng = np.random.default_rng(7)
    h, w = 9, 13
    image = _texture(h, w, seed=3)
    length = np.where(rng.random((h, w)) < 0.5, 3.0, 6.0)
    length[0, 0] = 4.5  # halfway between the two bank lengths
    angle = rng.choice([0.0, 90.0, 45.0, 175.0, -30.0], size=(h, w))
    out = motion_blur_field(image, length, angle, length_bank=3, angle_bank=2)
    # Bank: lengths 3, 4.5, 6; angles 0, 90. Angle index a / 90 wraps: 175 -> 1.944, 0.056 from 0 (= 180).
    ang_weights = {0.0: {0.0: 1.0}, 90.0: {90.0: 1.0}, 45.0: {0.0: 0.5, 90.0: 0.5},
                   175.0: {0.0: 1 - 5 / 90, 90.0: 5 / 90}, -30.0: {90.0: 1 - 60 / 90, 0.0: 60 / 90}}
    kernels = []
    for lj in (3.0, 4.5, 6.0):
        for aj in (0.0, 90.0):
            weight = np.array([[ang_weights[a].get(aj, 0.0) * (lv == lj) for lv, a in zip(lrow, arow)]
                               for lrow, arow in zip(length, angle)])
            size = 2 * (math.ceil(6.0 / 2 + 1) - 1) + 1
            kernels.append((motion_kernel(lj, aj, size=size), weight))
    expected = _gather(image, kernels)
    np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=2e-5)


def test_motion_blur_field_with_constant_maps_is_the_uniform_blur_and_zero_is_identity():
    image = _texture(17, 12, seed=5)
    field = motion_blur_field(image, np.full((17, 12), 5.0), np.full((17, 12), 60.0), angle_bank=6)
    np.testing.assert_allclose(field, _gather(image, [(motion_kernel(5.0, 60.0), np.ones((17, 12)))]), atol=2e-5)
    assert np.array_equal(motion_blur_field(image, np.zeros((17, 12)), np.zeros((17, 12))), image)
    gray = image[:, :, 0]
    assert motion_blur_field(gray, 3.0, 10.0).shape == gray.shape


def test_motion_blur_field_rejects_bad_maps():
    image = _texture(8, 8)
    with pytest.raises(ValueError):
        motion_blur_field(image, np.full((8, 8), -1.0), np.zeros((8, 8)))
    with pytest.raises(ValueError):
        motion_blur_field(image, np.ones((8, 8)), np.full((8, 8), np.nan))
    with pytest.raises(ValueError):
        motion_blur_field(image, np.ones((8, 8)), np.zeros((8, 8)), angle_bank=0)


@pytest.mark.parametrize("seed", range(6))
def test_motion_field_affine_is_a_similarity_motion(seed):
    """d(p) = t + M (p - c) with M = [[s, -r], [r, s]] makes |d|^2 = A (x^2 + y^2) + B x + C y + D:
    equal second differences along x and y, no mixed term, zero third differences."""
    h, w, top = 23, 31, 18.0
    length, angle = motion_field(h, w, top, np.random.default_rng(seed))
    assert length.shape == angle.shape == (h, w)
    assert 0.4 * top - 1e-9 <= length.max() <= top + 1e-9 and (angle >= 0).all() and (angle < 180).all()
    q = length**2
    dxx, dyy = np.diff(q, 2, axis=1)[1:-1, :], np.diff(q, 2, axis=0)[:, 1:-1]
    np.testing.assert_allclose(dxx, dxx.mean(), atol=1e-9 * top**2)
    np.testing.assert_allclose(dyy, dxx.mean(), atol=1e-9 * top**2)
    np.testing.assert_allclose(np.diff(np.diff(q, axis=0), axis=1), 0.0, atol=1e-9 * top**2)
    again = motion_field(h, w, top, np.random.default_rng(seed))
    assert np.array_equal(length, again[0]) and np.array_equal(angle, again[1])


def test_motion_field_uniform_camera_and_objects():
    length, angle = motion_field(20, 30, 12.0, np.random.default_rng(1), camera="uniform")
    assert np.ptp(length) == 0 and np.ptp(angle) == 0 and 4.8 <= length[0, 0] <= 12.0
    # A moving object replaces the (uniform) camera motion inside a disc: two distinct motions.
    length, angle = motion_field(64, 64, 12.0, np.random.default_rng(4), camera="uniform", objects=1)
    assert length.max() <= 12.0 and len(np.unique(np.round(length, 6))) > 2
    assert np.array_equal(motion_field(5, 6, 0.0, np.random.default_rng(0))[0], np.zeros((5, 6)))
    with pytest.raises(ValueError):
        motion_field(5, 6, 3.0, np.random.default_rng(0), camera="spin")
