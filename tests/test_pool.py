"""local_mean and its approximation against brute-force loops, a float64 reference and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tlc
from tlc.ops import local_mean_strided, window_sums
from tlc.ops.pool import map_mean, replicate_to, valid_local_mean_and_mean

from .conftest import TOLERANCE, devices


def brute_local_mean(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Each pixel takes the mean of the k-window roughly centred on it, shifted to lie inside."""
    n, c, h, w = x.shape
    k1, k2 = min(window[0], h), min(window[1], w)
    out = torch.empty_like(x, dtype=torch.float64)
    for i in range(h):
        top = min(max(i - (k1 - 1) // 2, 0), h - k1)
        for j in range(w):
            left = min(max(j - (k2 - 1) // 2, 0), w - k2)
            out[:, :, i, j] = x[:, :, top : top + k1, left : left + k2].double().mean(dim=(-2, -1))
    return out


def reference_float64(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """The reference algorithm (2-D prefix sums, four corners, edge replication) in float64."""
    h, w = x.shape[-2:]
    k1, k2 = min(h, window[0]), min(w, window[1])
    s = F.pad(x.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    valid = (s[..., k1:, k2:] - s[..., :-k1, k2:] - s[..., k1:, :-k2] + s[..., :-k1, :-k2]) / (k1 * k2)
    return F.pad(valid, ((k2 - 1) // 2, k2 // 2, (k1 - 1) // 2, k1 // 2), mode="replicate")


SMALL_CASES = [
    ((1, 1, 1, 1), (1, 1)),
    ((1, 1, 1, 1), (5, 5)),
    ((2, 3, 1, 7), (1, 3)),
    ((2, 3, 1, 7), (5, 5)),
    ((1, 2, 5, 3), (2, 2)),
    ((1, 2, 5, 3), (3, 1)),
    ((1, 2, 5, 3), (9, 2)),
    ((1, 2, 5, 3), (1, 9)),
    ((3, 2, 9, 11), (4, 6)),
    ((3, 2, 9, 11), (9, 11)),
    ((3, 2, 9, 11), (1, 1)),
]


@pytest.mark.parametrize("shape,window", SMALL_CASES)
def test_matches_brute_force_loop(shape, window):
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(tlc.local_mean(x, window), brute_local_mean(x, window), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape,window", SMALL_CASES)
def test_matches_reference_algorithm(shape, window):
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(tlc.local_mean(x, window), reference_float64(x, window), rtol=0, atol=1e-12)


def test_window_covering_the_map_is_the_global_mean():
    x = torch.randn(2, 3, 6, 10)
    expected = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    torch.testing.assert_close(tlc.local_mean(x, (6, 10)), expected)
    torch.testing.assert_close(tlc.local_mean(x, (100, 1000)), expected)


def test_window_covering_one_axis_only_is_local_along_the_other():
    x = torch.randn(1, 2, 6, 10, dtype=torch.float64)
    out = tlc.local_mean(x, (50, 3))
    torch.testing.assert_close(out, brute_local_mean(x, (6, 3)), rtol=0, atol=1e-12)
    assert not torch.allclose(out, x.mean(dim=(-2, -1), keepdim=True).expand_as(x))


def test_int_window_means_square():
    x = torch.randn(1, 1, 8, 9, dtype=torch.float64)
    torch.testing.assert_close(tlc.local_mean(x, 3), tlc.local_mean(x, (3, 3)))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_keep_dtype_and_accuracy(dtype, device):
    x = torch.randn(2, 3, 17, 23, dtype=torch.float64)
    out = tlc.local_mean(x.to(device=device, dtype=dtype), (5, 8))
    assert out.dtype == dtype and out.device.type == device
    expected = brute_local_mean(x.to(dtype).double(), (5, 8))  # the input as rounded to dtype
    torch.testing.assert_close(out.double().cpu(), expected, rtol=0, atol=TOLERANCE[dtype])


def test_large_float32_map_is_exact_to_1e5():
    # 4K map far from zero: the reference float32 algorithm is off by ~1.5e-4 here.
    g = torch.Generator().manual_seed(0)
    x = 10 + torch.randn(1, 4, 2160, 3840, generator=g)
    err = (tlc.local_mean(x, (384, 384)).double() - reference_float64(x, (384, 384))).abs().max().item()
    assert err <= 1e-5, err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_4k_ones_are_exactly_one(dtype):
    x = torch.ones(1, 2, 2160, 3840, dtype=dtype)
    for window in [(384, 384), (2160, 3840), (7, 5000)]:
        out = tlc.local_mean(x, window)
        assert out.dtype == dtype
        assert torch.equal(out, x), window


def test_half_precision_large_values_do_not_overflow():
    # fp16 tops out at 65504: summing in fp16 would give inf after a few thousand pixels.
    x = torch.full((1, 1, 1080, 1920), 60000.0, dtype=torch.float16)
    out = tlc.local_mean(x, (200, 300))
    assert torch.isfinite(out).all() and torch.equal(out, x)


def test_gradcheck_float64():
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    for window in [(3, 4), (1, 1), (6, 2), (10, 10)]:
        assert torch.autograd.gradcheck(lambda t: tlc.local_mean(t, window), (x,))


def test_window_sums_are_valid_window_sums():
    x = torch.arange(12.0, dtype=torch.float64).view(1, 1, 3, 4)
    sums = window_sums(x, (2, 3))
    assert sums.shape == (1, 1, 2, 2) and sums.dtype == torch.float64
    assert sums[0, 0].tolist() == [[0 + 1 + 2 + 4 + 5 + 6, 1 + 2 + 3 + 5 + 6 + 7], [4 + 5 + 6 + 8 + 9 + 10, 5 + 6 + 7 + 9 + 10 + 11]]


@pytest.mark.parametrize(
    "x,window,error",
    [
        (torch.zeros(3, 4, 5), (2, 2), ValueError),
        (torch.zeros(1, 1, 4, 5, dtype=torch.int64), (2, 2), TypeError),
        (torch.zeros(1, 1, 0, 5), (2, 2), ValueError),
        (torch.zeros(1, 1, 4, 5), (0, 2), ValueError),
        (torch.zeros(1, 1, 4, 5), (2, 2, 2), TypeError),
        (torch.zeros(1, 1, 4, 5), (2.5, 2), TypeError),
        (torch.zeros(1, 1, 4, 5), "3", TypeError),
    ],
)
def test_bad_arguments_raise_clear_errors(x, window, error):
    with pytest.raises(error):
        tlc.local_mean(x, window)


class TestStridedApproximation:
    def test_covering_window_is_global_mean(self):
        x = torch.randn(1, 2, 10, 15)
        torch.testing.assert_close(local_mean_strided(x, (10, 15)), x.mean((-2, -1), keepdim=True).expand_as(x))

    def test_stride_one_is_a_one_off_window(self):
        # With stride 1 the approximation averages the window that starts one sample later.
        x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
        out = local_mean_strided(x, (3, 3), max_stride=1)
        valid = F.avg_pool2d(x[..., 1:, 1:], 3, stride=1)  # windows starting at 1..4
        torch.testing.assert_close(out, F.pad(valid, (1, 2, 1, 2), mode="replicate"))

    def test_subsampled_by_largest_dividing_stride(self):
        x = torch.randn(1, 1, 20, 20, dtype=torch.float64)
        out = local_mean_strided(x, (10, 10), max_stride=5)
        # stride 5: samples every 5th pixel, window 2 samples, nearest upsampling gives 5x5 blocks
        assert torch.equal(out[..., 5:10, 5:10], out[..., 5:6, 5:6].expand(1, 1, 5, 5))
        assert not torch.allclose(out, tlc.local_mean(x, (10, 10)))

    def test_tiny_map_falls_back_to_exact(self):
        x = torch.randn(1, 1, 1, 9, dtype=torch.float64)
        torch.testing.assert_close(local_mean_strided(x, (4, 4)), tlc.local_mean(x, (4, 4)))


class TestFusedKernel:
    """The fused CPU kernel (numba) and the torch prefix-sum path compute the same thing."""

    @pytest.mark.parametrize(
        "shape,window",
        [((2, 3, 37, 53), (13, 20)), ((1, 1, 1, 7), (1, 3)), ((1, 2, 5, 3), (9, 2)), ((3, 4, 64, 48), (64, 1)), ((1, 5, 100, 90), (3, 90))],
    )
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
    def test_agrees_with_prefix_sums(self, shape, window, dtype):
        from tlc.ops._kernels import fused_local_mean_available
        from tlc.ops.pool import local_mean_by_prefix_sums

        x = (5 + torch.randn(shape, dtype=torch.float64)).to(dtype)
        assert fused_local_mean_available(x)
        fused = tlc.local_mean(x, window)
        assert fused.dtype == dtype
        ulp = max(torch.finfo(dtype).eps * 8, 1e-12)  # one rounding near 5; float64 running sums drift ~1e-14
        torch.testing.assert_close(fused, local_mean_by_prefix_sums(x, window), rtol=0, atol=ulp)

    def test_not_used_when_autograd_needs_the_graph(self):
        from tlc.ops._kernels import fused_local_mean_available

        x = torch.randn(1, 1, 4, 4, requires_grad=True)
        assert not fused_local_mean_available(x)
        with torch.no_grad():
            assert fused_local_mean_available(x)
        assert tlc.local_mean(x, 2).requires_grad


def test_kernels_keep_torch_thread_count():
    """numba's OpenMP layer resets the process's thread count on its first launch: a process limited
    to one thread must stay limited (a fresh interpreter, so the first launch happens here)."""
    import subprocess
    import sys

    code = (
        "import torch, numba, tlc\n"
        "torch.set_num_threads(1)\n"
        "tlc.local_mean(torch.rand(1, 2, 30, 30), 7)\n"
        "tlc.ops.local_max(torch.rand(1, 2, 30, 30), 7)\n"
        "print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["1", "1"]


@pytest.mark.parametrize("shape,window", [((2, 3, 9, 13), (4, 5)), ((1, 2, 7, 6), (20, 3)), ((1, 1, 1, 8), (3, 3))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prefix_sum_path_equals_brute_force(shape, window, dtype):
    """The torch path (autograd, export, GPUs) on its own against explicit window slicing."""
    from tlc.ops.pool import local_mean_by_prefix_sums

    x = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 3
    expected = brute_local_mean(x, window)
    out = local_mean_by_prefix_sums(x.to(dtype), window)
    assert out.dtype == dtype
    assert (out.double() - expected).abs().max().item() < (1e-12 if dtype == torch.float64 else 2e-6)


@pytest.mark.parametrize("shape,window", [((2, 3, 7, 11), (3, 4)), ((1, 2, 13, 10), (5, 6)), ((2, 1, 6, 5), (9, 9)), ((1, 2, 1, 9), (4, 4))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_valid_mean_comes_with_the_maps_own_mean(shape, window, dtype):
    """valid_local_mean_and_mean: the windows' means and, from the kernel's float64 sums of every
    row, the whole map's (None where the kernel does not run: autograd, a window covering the map)."""
    x = (torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)) * 2 + 1e3).to(dtype)
    h, w = shape[-2:]
    kh, kw = min(window[0], h), min(window[1], w)
    ref = torch.empty(*shape[:2], h - kh + 1, w - kw + 1, dtype=torch.float64)
    for top in range(h - kh + 1):
        for left in range(w - kw + 1):
            ref[:, :, top, left] = x[:, :, top : top + kh, left : left + kw].double().mean(dim=(-2, -1))
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4  # float32 values of 1e3 carry ~6e-5 each
    if dtype == torch.float32 and (kh, kw) == (h, w):
        tolerance = 2.5e-4  # one window: torch's own float32 mean, summed in float32 (two ulps at 1e3)
    valid, mean = valid_local_mean_and_mean(x, window)
    assert valid.dtype == dtype
    torch.testing.assert_close(valid.double(), ref, rtol=0, atol=tolerance)
    if (kh, kw) == (h, w):  # one window: torch's own mean of the map, which is also the window's
        assert torch.equal(mean, x.mean((2, 3), keepdim=True)) and torch.equal(valid, mean)
        return
    assert mean.dtype == dtype and mean.shape == (*shape[:2], 1, 1)
    exact = x.double().mean(dim=(2, 3), keepdim=True)
    assert (mean.double() - exact).abs().max().item() <= (1e-12 if dtype == torch.float64 else 6.2e-5)
    with torch.enable_grad():  # torch's path: no mean from it
        assert valid_local_mean_and_mean(x.clone().requires_grad_(), window)[1] is None
    # Into a given buffer where it fits (the same numbers); a new tensor where it does not.
    buffer = torch.full_like(ref, float("nan"), dtype=dtype)
    into, _ = valid_local_mean_and_mean(x, window, out=buffer)
    assert into.data_ptr() == buffer.data_ptr() and torch.equal(into, valid)
    strided = torch.empty(*ref.shape[:-1], 2 * ref.shape[-1], dtype=dtype)[..., ::2]
    assert not strided.is_contiguous()
    for unfit in (strided, buffer[:, :, :, :-1].contiguous(), torch.empty_like(buffer, dtype=torch.float16)):
        got, _ = valid_local_mean_and_mean(x, window, out=unfit)
        assert got.data_ptr() != unfit.data_ptr() and torch.equal(got, valid)


@pytest.mark.parametrize("shape", [(2, 3, 7, 11), (1, 8, 13, 10), (2, 4, 1, 9)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_map_mean_is_the_mean_from_the_windows_pass(shape, dtype):
    """map_mean, without the windows: the whole map's mean valid_local_mean_and_mean gives (to the
    bit, one plane or four at a time), within rounding of the exact mean; torch's under autograd."""
    x = (torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 + 1e3).to(dtype)
    window = (shape[2], max(1, shape[3] - 2))
    _, from_windows = valid_local_mean_and_mean(x, window)
    mean = map_mean(x)
    assert mean.dtype == dtype and torch.equal(mean, from_windows)
    exact = x.double().mean(dim=(2, 3), keepdim=True)
    assert (mean.double() - exact).abs().max().item() <= (1e-12 if dtype == torch.float64 else 6.2e-5)
    with torch.enable_grad():
        assert torch.equal(map_mean(x.clone().requires_grad_()), x.mean((2, 3), keepdim=True))


@pytest.mark.parametrize("shape,window", [((2, 4, 11, 13), (3, 5)), ((1, 3, 6, 9), (6, 9)), ((1, 8, 17, 10), (4, 4))])
@pytest.mark.parametrize("grad", [False, True])
def test_valid_local_mean_and_mean_scaled_windows(shape, window, grad):
    """scale multiplies the windows' means (the kernel's pass, torch's path, one window), never the
    map's mean: each window's sum times scale / area, against a float64 brute force."""
    torch.manual_seed(sum(shape))
    x = torch.rand(shape) * 4 - 1
    h, w = shape[-2:]
    kh, kw = window
    sums = F.avg_pool2d(x.double(), window, stride=1) * (kh * kw)
    scale = float(h * w)  # a hand-written sum over H and W, made local
    with torch.set_grad_enabled(grad):
        valid, mean = valid_local_mean_and_mean(x.clone().requires_grad_(grad), window, scale=scale)
        plain, _ = valid_local_mean_and_mean(x.clone().requires_grad_(grad), window)
    torch.testing.assert_close(valid.detach().double(), sums * scale / (kh * kw), rtol=2e-7, atol=1e-5)
    torch.testing.assert_close(valid.detach(), plain.detach() * scale, rtol=2e-7, atol=1e-5)
    if mean is not None:
        torch.testing.assert_close(mean.double(), x.double().mean((2, 3), keepdim=True), rtol=0, atol=1e-6)


@pytest.mark.parametrize("valid_only", [True, False])
@pytest.mark.parametrize("shape,window", [((8, 21, 34), (5, 9)), ((4, 9, 50), (9, 1)), ((12, 30, 7), (4, 7)),
                                          ((8, 21, 34), (5, 34)), ((4, 1, 40), (1, 13))])
def test_local_mean_four_planes_at_a_time_are_the_one_plane_kernels_bits(shape, window, valid_only):
    """The local mean's kernel four planes a task (plane counts a multiple of 4): the same
    arithmetic per plane, so the same bits and plane totals as one plane a task; both against a
    float64 brute force (odd sizes, a window as tall as the map, one pixel wide, as wide as the
    map, a map one row high)."""
    from tlc.ops import _kernels

    torch.manual_seed(sum(shape))
    x = torch.randn(shape) * 3 + 1
    p, h, w = shape
    (k1, k2) = window
    size = (h - k1 + 1, w - k2 + 1) if valid_only else (h, w)
    results = []
    for kernel in (_kernels._compiled, _kernels._quads_compiled):
        out = torch.full((p, *size), float("nan"))
        totals = torch.full((p,), float("nan"), dtype=torch.float64)
        kernel(x.numpy(), k1, k2, 1.0, out.numpy(), totals.numpy())
        results.append((out, totals))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    valid = F.avg_pool2d(x.double()[None], window, stride=1)[0]
    expected = valid if valid_only else replicate_to(valid[None], (h, w))[0]
    torch.testing.assert_close(results[1][0].double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(results[1][1], x.double().sum((1, 2)), rtol=1e-12, atol=1e-9)
