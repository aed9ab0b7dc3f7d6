"""local_axis_mean, local_softmax_pool and local_var/local_std against brute-force per-pixel loops,
their global versions when the window covers the map, extreme logits, every dtype and gradcheck."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlc.nn import LocalStripAvgPool2d
from tlc.ops import local_axis_mean, local_softmax_pool, local_std, local_var
from tlc.ops.stats import valid_local_var, valid_local_var_and_var, valid_local_var_mean_and_var

from .conftest import TOLERANCE


def window_span(length: int, k: int, i: int) -> tuple[int, int]:
    """[start, stop) of the window given to entry ``i``: the k-window (k clamped to the axis)
    whose valid index is i - (k-1)//2, kept between 0 and length - k."""
    k = min(k, length)
    start = min(max(i - (k - 1) // 2, 0), length - k)
    return start, start + k


def both_paths(fn, x: torch.Tensor, *args) -> list[torch.Tensor]:
    """``fn`` without autograd (on the CPU: the compiled kernels) and with it (torch ops)."""
    return [fn(x, *args), fn(x.clone().requires_grad_(), *args).detach()]


def brute_axis_mean(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    x = x.double()
    length = x.shape[dim]
    pieces = []
    for i in range(length):
        start, stop = window_span(length, k, i)
        pieces.append(x.narrow(dim, start, stop - start).sum(dim=dim, keepdim=True) / (stop - start))
    return torch.cat(pieces, dim=dim)


def brute_per_pixel(x: torch.Tensor, window: tuple[int, int], reduce) -> torch.Tensor:
    """out[:, :, i, j] = reduce(window of pixel (i, j)), the window as a (N, C, kh, kw) tensor."""
    n, c, h, w = x.shape
    out = torch.empty(n, c, h, w, dtype=torch.float64)
    for i in range(h):
        top, bottom = window_span(h, window[0], i)
        for j in range(w):
            left, right = window_span(w, window[1], j)
            out[:, :, i, j] = reduce(top, bottom, left, right)
    return out


def brute_softmax_pool(x: torch.Tensor, logits: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    x, logits = x.double(), logits.double()

    def reduce(top, bottom, left, right):
        scores = logits[:, :, top:bottom, left:right].flatten(2)
        weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))  # the window's own maximum
        values = x[:, :, top:bottom, left:right].flatten(2)
        return (values * weights).sum(-1) / weights.sum(-1)

    return brute_per_pixel(x, window, reduce)


def brute_var(x: torch.Tensor, window: tuple[int, int], correction: float) -> torch.Tensor:
    x = x.double()

    def reduce(top, bottom, left, right):
        patch = x[:, :, top:bottom, left:right].flatten(2)
        deviations = patch - patch.sum(-1, keepdim=True) / patch.shape[-1]
        return deviations.square().sum(-1) / (patch.shape[-1] - correction)

    return brute_per_pixel(x, window, reduce)


# ----------------------------------------------------------------------------- local_axis_mean


@pytest.mark.parametrize(
    "shape,window,dim",
    [
        ((2, 17, 5), 4, 1),  # (N, L, C) tokens
        ((2, 17, 5), 40, 1),
        ((2, 17, 5), 1, 1),
        ((2, 3, 7, 11), 4, -1),  # coordinate attention: along W
        ((2, 3, 7, 11), 6, -2),  # along H
        ((2, 3, 1, 9), 3, -1),
        ((2, 3, 13, 1), 5, 2),
        ((2, 3, 13, 1), 5, 3),
        ((9,), 4, 0),
        ((2, 3, 4, 6, 13), 6, 4),
        ((2, 3, 11, 6, 2), 3, 2),
    ],
)
def test_axis_mean_matches_brute_force(shape, window, dim):
    x = torch.randn(shape, dtype=torch.float64)
    out = local_axis_mean(x, window, dim)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, brute_axis_mean(x, window, dim), rtol=0, atol=1e-12)
    # The differentiable path (prefix sums) gives the same numbers as the CPU kernel.
    with_grad = local_axis_mean(x.clone().requires_grad_(), window, dim)
    torch.testing.assert_close(with_grad.detach(), out, rtol=0, atol=1e-12)


def test_axis_mean_random_shapes():
    rng = random.Random(5)
    for _ in range(20):
        rank = rng.randint(1, 5)
        shape = tuple(rng.randint(1, 9) for _ in range(rank))
        dim = rng.randrange(-rank, rank)
        k = rng.randint(1, 12)
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(local_axis_mean(x, k, dim), brute_axis_mean(x, k, dim), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_axis_mean_dtypes(dtype):
    x = torch.randn(2, 19, 6).to(dtype)
    for requires_grad in (False, True):
        out = local_axis_mean(x.clone().requires_grad_(requires_grad), 5, 1)
        assert out.dtype == dtype
        err = (out.double() - brute_axis_mean(x, 5, 1)).abs().max().item()
        assert err <= TOLERANCE[dtype], err


def test_axis_mean_keeps_digits_with_an_offset():
    x = torch.randn(1, 2, 3, 4000, dtype=torch.float32) + 1e4
    out = local_axis_mean(x, 33, -1)
    ref = brute_axis_mean(x, 33, -1)
    assert (out.double() - ref).abs().max().item() <= 1e4 * 2 * 2**-24  # the output's rounding only


def test_axis_mean_covering_window_is_the_global_strip_pool():
    x = torch.randn(2, 3, 7, 11)
    expected = nn.AdaptiveAvgPool2d((None, 1))(x.double()).expand_as(x).float()
    torch.testing.assert_close(local_axis_mean(x, 11, -1), expected, rtol=0, atol=TOLERANCE[torch.float32])
    expected = nn.AdaptiveAvgPool2d((1, None))(x.double()).expand_as(x).float()
    torch.testing.assert_close(local_axis_mean(x, 50, -2), expected, rtol=0, atol=TOLERANCE[torch.float32])


def test_gradcheck_axis_mean_float64():
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: local_axis_mean(t, 4, 1), (x,))
    y = torch.randn(1, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: local_axis_mean(t, 3, -1), (y,))


def test_strip_pool_module_equals_function():
    x = torch.randn(2, 3, 9, 14)
    for window, dim in [(4, -1), (6, -2), (5, 3), (3, 2)]:
        module = LocalStripAvgPool2d(window, dim)
        assert torch.equal(module(x), local_axis_mean(x, window, dim))
        assert f"window={window}" in repr(module) and f"dim={module.dim}" in repr(module)
    assert LocalStripAvgPool2d(4, 3).dim == -1 and LocalStripAvgPool2d(4, 2).dim == -2
    with pytest.raises(ValueError):
        LocalStripAvgPool2d(4, 1)
    with pytest.raises(ValueError):
        LocalStripAvgPool2d(0, -1)
    with pytest.raises(ValueError):
        LocalStripAvgPool2d(3, -1)(torch.randn(2, 3, 4))


# ----------------------------------------------------------------------------- local_softmax_pool

POOL_CASES = [
    ((1, 1, 1, 1), (3, 3)),
    ((2, 3, 7, 11), (1, 1)),
    ((2, 3, 7, 11), (3, 4)),
    ((2, 3, 7, 11), (7, 2)),
    ((2, 3, 7, 11), (20, 30)),
    ((2, 2, 1, 9), (4, 4)),
    ((2, 2, 13, 1), (5, 2)),
    ((1, 2, 12, 10), (5, 6)),
]


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("shape,window", POOL_CASES)
def test_softmax_pool_matches_brute_force(shape, window, shared):
    x = torch.randn(shape, dtype=torch.float64)
    logits = 3 * torch.randn(shape[0], 1 if shared else shape[1], *shape[2:], dtype=torch.float64)
    ref = brute_softmax_pool(x, logits, window)
    for out in both_paths(local_softmax_pool, x, logits, window):
        assert out.shape == x.shape and out.dtype == x.dtype
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def valid_part(full: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """The windows inside the map, from a replicated result: (N, C, H - kh + 1, W - kw + 1)."""
    h, w = full.shape[-2:]
    kh, kw = min(window[0], h), min(window[1], w)
    top, left = (kh - 1) // 2, (kw - 1) // 2
    return full[..., top : top + h - kh + 1, left : left + w - kw + 1]


@pytest.mark.parametrize("spread", [3.0, 2000.0])  # one shift holds them / partial sums need their own
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("shape,window", POOL_CASES)
def test_softmax_pool_valid_only_is_each_inside_window(shape, window, shared, spread):
    x = torch.randn(shape, dtype=torch.float64)
    logits = spread * torch.randn(shape[0], 1 if shared else shape[1], *shape[2:], dtype=torch.float64)
    ref = valid_part(brute_softmax_pool(x, logits, window), window)
    for out in both_paths(lambda *a: local_softmax_pool(*a, valid_only=True), x, logits, window):
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("scale", [1e4, 1e3])
def test_softmax_pool_exact_for_logits_spanning_a_huge_range(scale, shared):
    torch.manual_seed(int(scale) + shared)
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64) + 5
    logits = (2 * torch.rand(2, 1 if shared else 3, 11, 13, dtype=torch.float64) - 1) * scale
    for window in [(3, 4), (5, 5), (11, 2), (1, 13)]:
        ref = brute_softmax_pool(x, logits, window)
        for out in both_paths(local_softmax_pool, x, logits, window):
            assert torch.isfinite(out).all()
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
        ref32 = brute_softmax_pool(x.float(), logits.float(), window)
        for out32 in both_paths(local_softmax_pool, x.float(), logits.float(), window):
            assert (out32.double() - ref32).abs().max().item() <= 6 * 2**-24 * 8  # rounding of values ~6


@pytest.mark.parametrize("shared", [True, False])
def test_softmax_pool_far_apart_bands_mixing_within_windows(shared):
    # A band of columns 1500 below the rest (no single shift is exact for windows inside it),
    # logits within each band close together, so the weights mix many pixels per window (random
    # logits of 1e4 make nearly one-hot windows).
    x = torch.randn(2, 3, 9, 23, dtype=torch.float64)
    logits = 0.5 * torch.randn(2, 1 if shared else 3, 9, 23, dtype=torch.float64)
    logits[..., :4] -= 1500
    for window in [(3, 4), (4, 7), (9, 23), (2, 1)]:
        ref = brute_softmax_pool(x, logits, window)
        for out in both_paths(local_softmax_pool, x, logits, window):
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-11)


def test_softmax_pool_where_a_shared_shift_would_underflow_whole_windows():
    # One corner 5000 above the rest: exp(l - 5000) is 0 in every window away from it.
    x = torch.randn(1, 2, 9, 12, dtype=torch.float64)
    logits = torch.randn(1, 1, 9, 12, dtype=torch.float64)
    logits[0, 0, 0, 0] = 5000.0
    logits[0, 0, 8, 11] = -5000.0
    for out in both_paths(local_softmax_pool, x, logits, (3, 3)):
        torch.testing.assert_close(out, brute_softmax_pool(x, logits, (3, 3)), rtol=0, atol=1e-10)
        # That window's weight is all on the corner.
        torch.testing.assert_close(out[:, :, 0, 0], x[:, :, 0, 0], rtol=0, atol=1e-10)


def rounding_bound(ref: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What a float32 result of the exact ``ref`` (float64) may be off by: half a float32 step of
    the value, plus the running sums' allowance (``TOLERANCE`` of max|x|)."""
    ref32 = ref.float()
    step = (torch.nextafter(ref32.abs(), torch.tensor(float("inf"))) - ref32.abs()).double()
    return step / 2 + 1e-10 * x.abs().max().double() + 1e-30


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("shape, window", [((2, 3, 23, 17), (5, 4)), ((1, 4, 40, 31), (9, 13)), ((1, 2, 64, 47), (16, 15)),
                                           ((2, 2, 9, 50), (9, 7)), ((2, 8, 19, 30), (6, 11))])
def test_softmax_pool_float32_is_the_exact_value_rounded(shape, window, shared):
    # float32 inputs with mild logits (the running sums' case on the CPU): every output within
    # half a float32 step of the exact value (plus the running sums' 1e-10 of max|x|), valid
    # windows and replicated, batch > 1, odd and non-square sizes.
    torch.manual_seed(shape[2] * 100 + shared)
    x = torch.randn(shape) * 3 + 1
    logits = 2 * torch.randn(shape[0], 1 if shared else shape[1], *shape[2:])
    ref = brute_softmax_pool(x, logits, window)
    (kh, kw), (h, w) = window, shape[2:]
    top, left = (kh - 1) // 2, (kw - 1) // 2
    for valid_only in (False, True):
        out = local_softmax_pool(x, logits, window, valid_only=valid_only)
        want = ref[..., top : top + h - kh + 1, left : left + w - kw + 1] if valid_only else ref
        assert out.dtype == torch.float32 and out.shape == want.shape
        assert ((out.double() - want).abs() <= rounding_bound(want, x)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_softmax_pool_half_inputs_round_the_exact_value(dtype):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 21, 26).to(dtype)
    logits = torch.randn(2, 1, 21, 26).to(dtype)
    out = local_softmax_pool(x, logits, (6, 9))
    ref = brute_softmax_pool(x, logits, (6, 9))
    assert out.dtype == dtype
    step = torch.finfo(dtype).eps * ref.abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((out.double() - ref).abs() <= step).all()


def test_running_sums_run_only_where_their_bound_allows():
    from tlc.ops._running_kernels import running_softmax_pool

    torch.manual_seed(4)
    x = torch.randn(1, 2, 20, 60)
    mild = torch.randn(1, 1, 20, 60, dtype=torch.float64)
    pooled = running_softmax_pool(x, torch.exp(mild - mild.max()), (5, 7))
    assert pooled is not None
    ref = brute_softmax_pool(x, mild, (5, 7))
    assert ((pooled.double() - ref).abs() <= rounding_bound(ref, x)).all()
    # Columns 30 and up 30 below the rest: the windows there sum to ~1e-13 of those on the left,
    # and a running sum sliding in from the left would keep ~1e-16 of the left's weight as error
    # (1e-3 of the result). Refused; the public op still gives the exact value (block sums).
    steep = torch.zeros(1, 1, 20, 60, dtype=torch.float64)
    steep[..., 30:] = -30
    assert running_softmax_pool(x, torch.exp(steep), (5, 7)) is None
    out = local_softmax_pool(x, steep.float(), (5, 7))
    ref = brute_softmax_pool(x, steep, (5, 7))
    assert ((out.double() - ref).abs() <= rounding_bound(ref, x)).all()


@pytest.mark.parametrize("valid_only", [True, False])
@pytest.mark.parametrize("h,w,kh,kw", [(21, 34, 5, 9), (21, 34, 5, 34), (1, 40, 1, 13)])
def test_running_sums_four_planes_at_a_time_are_the_one_plane_kernels_bits(valid_only, h, w, kh, kw):
    """Channels sharing one weight plane go through the kernel four at a time: the same arithmetic
    per plane, so the same bits as the one-plane kernel (batch 2, eight channels, odd sizes, a
    window as wide as the map, a map one row high)."""
    from tlc.ops import _running_kernels as kernels

    torch.manual_seed(6)
    n, c = 2, 8
    x = torch.randn(n * c, h, w) * 3 + 1
    logits = torch.randn(n, h, w, dtype=torch.float64)
    e = torch.exp(logits - logits.amax())
    den = F.avg_pool2d(e[:, None], (kh, kw), stride=1)[:, 0] * (kh * kw)
    size = (h - kh + 1, w - kw + 1) if valid_only else (h, w)
    outs = []
    for kernel in (kernels._weighted_pool_compiled, kernels._weighted_pool_quads_compiled):
        out = x.new_full((n * c, *size), float("nan"))
        kernel(x.numpy(), e.numpy(), c, den.reciprocal().numpy(), kh, kw, out.numpy())
        outs.append(out)
    assert not outs[0].isnan().any()
    assert torch.equal(outs[0], outs[1])


def test_softmax_pool_moderate_range_needing_the_window_maxima():
    # Range 900 overall (over the float64 reach of one shift), but every window holds a high logit.
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    logits = torch.randn(1, 1, 10, 10, dtype=torch.float64)
    logits[0, 0, 5, 5] = -900.0
    logits[0, 0, ::2, ::2] += 10
    for out in both_paths(local_softmax_pool, x, logits, (3, 3)):
        torch.testing.assert_close(out, brute_softmax_pool(x, logits, (3, 3)), rtol=0, atol=1e-12)


def test_softmax_pool_covering_window_is_gcnet_context():
    x = torch.randn(2, 4, 7, 11, dtype=torch.float64)
    for channels in (1, 4):
        logits = 4 * torch.randn(2, channels, 7, 11, dtype=torch.float64)
        # GCNet's context modelling, as its authors write it for one attention map.
        weights = torch.softmax(logits.flatten(2), dim=-1)
        context = (x.flatten(2) * weights).sum(-1)[:, :, None, None].expand_as(x)
        torch.testing.assert_close(local_softmax_pool(x, logits, (7, 11)), context, rtol=0, atol=1e-12)
        torch.testing.assert_close(local_softmax_pool(x, logits, 99), context, rtol=0, atol=1e-12)


def test_softmax_pool_offset_values():
    x = torch.randn(1, 2, 8, 9, dtype=torch.float64) * 1e-3 + 1e3
    logits = (2 * torch.rand(1, 1, 8, 9, dtype=torch.float64) - 1) * 3e3
    ref = brute_softmax_pool(x, logits, (3, 5))
    torch.testing.assert_close(local_softmax_pool(x, logits, (3, 5)), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_softmax_pool_dtypes(dtype):
    x = torch.randn(2, 3, 9, 10).to(dtype)
    logits = (2 * torch.randn(2, 1, 9, 10)).to(dtype)
    for out in both_paths(local_softmax_pool, x, logits, (4, 3)):
        assert out.dtype == dtype
        err = (out.double() - brute_softmax_pool(x, logits, (4, 3))).abs().max().item()
        assert err <= TOLERANCE[dtype], err


def test_gradcheck_softmax_pool_float64():
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    small = torch.randn(2, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: local_softmax_pool(a, b, (2, 3)), (x, small))
    assert torch.autograd.gradcheck(lambda a, b: local_softmax_pool(a, b, (4, 5)), (x, small))
    # A range over what one shift can hold: the log-sum-exp path; kept near-uniform per window so
    # the gradient with respect to the logits is not zero.
    x = x.detach()[:1].requires_grad_()
    wide = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    wide[:, :, :, 3:] += 1500
    wide.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: local_softmax_pool(a, b, (3, 2)), (x, wide))


def test_softmax_pool_bad_shapes_raise():
    with pytest.raises(ValueError):
        local_softmax_pool(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4), 2)
    with pytest.raises(ValueError):
        local_softmax_pool(torch.randn(1, 3, 4, 4), torch.randn(1, 1, 4, 5), 2)
    with pytest.raises(ValueError):
        local_softmax_pool(torch.randn(1, 3, 4, 4), torch.randn(1, 4, 4), 2)


# ----------------------------------------------------------------------------- local_var, local_std


@pytest.mark.parametrize(
    "shape,window,correction",
    [
        ((2, 3, 7, 11), (3, 4), 1.0),
        ((2, 3, 7, 11), (3, 4), 0.0),
        ((2, 3, 7, 11), (20, 30), 1.0),
        ((2, 2, 1, 9), (4, 4), 1.0),
        ((2, 2, 13, 1), (5, 2), 0.5),
        ((1, 2, 12, 10), (5, 6), 1.0),
    ],
)
def test_var_and_std_match_brute_force(shape, window, correction):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 3
    ref = brute_var(x, window, correction)
    for out in both_paths(local_var, x, window, correction):
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for out in both_paths(local_std, x, window, correction):
        torch.testing.assert_close(out, ref.sqrt(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "shape,window,correction",
    [((2, 3, 7, 11), (3, 4), 1.0), ((2, 2, 1, 9), (4, 4), 0.0), ((1, 2, 13, 10), (5, 6), 1.0), ((2, 1, 6, 5), (9, 9), 1.0)],
)
def test_valid_var_and_std_are_each_inside_window(shape, window, correction):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 3
    h, w = shape[-2:]
    kh, kw = min(window[0], h), min(window[1], w)
    ref = torch.empty(*shape[:2], h - kh + 1, w - kw + 1, dtype=torch.float64)
    for top in range(h - kh + 1):
        for left in range(w - kw + 1):
            ref[:, :, top, left] = x[:, :, top : top + kh, left : left + kw].var(dim=(-2, -1), correction=correction)
    for out in both_paths(valid_local_var, x, window, correction):
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for out in both_paths(valid_local_var, x, window, correction, True):
        torch.testing.assert_close(out, ref.sqrt(), rtol=0, atol=1e-12)
    for out in both_paths(valid_local_var, x.float(), window, correction, True):
        assert out.dtype == torch.float32
        assert (out.double() - ref.sqrt()).abs().max().item() <= 4 * TOLERANCE[torch.float32]


@pytest.mark.parametrize(
    "shape,window", [((2, 3, 7, 11), (3, 4)), ((1, 2, 13, 10), (5, 6)), ((2, 1, 6, 5), (9, 9)), ((1, 2, 1, 9), (4, 4))]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("correction,root", [(0, False), (1, False), (1, True), (0, True), (2, False)])
def test_valid_var_comes_with_the_maps_own_variance(shape, window, dtype, correction, root):
    """valid_local_var_and_var: the windows' variances (standard deviations) and the whole map's,
    from the kernel's one pass (and from torch where autograd is on), for values far from zero too."""
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1e3).to(dtype)
    h, w = shape[-2:]
    kh, kw = min(window[0], h), min(window[1], w)
    stat = torch.std if root else torch.var
    ref = torch.empty(*shape[:2], h - kh + 1, w - kw + 1, dtype=torch.float64)
    for top in range(h - kh + 1):
        for left in range(w - kw + 1):
            ref[:, :, top, left] = stat(x[:, :, top : top + kh, left : left + kw].double(), dim=(-2, -1), correction=correction)
    whole = stat(x.double(), dim=(2, 3), correction=correction, keepdim=True)
    tolerance = 1e-9 if dtype == torch.float64 else 4e-3  # float32 values of 1e3 carry ~6e-5 each
    kernel = valid_local_var_and_var(x, window, correction, root)
    with torch.enable_grad():  # torch's path
        by_torch = tuple(t.detach() for t in valid_local_var_and_var(x.clone().requires_grad_(), window, correction, root))
    for valid, var in (kernel, by_torch):
        assert valid.dtype == var.dtype == dtype and var.shape == (*shape[:2], 1, 1)
        torch.testing.assert_close(valid.double(), ref, rtol=0, atol=tolerance, equal_nan=True)
        torch.testing.assert_close(var.double(), whole, rtol=0, atol=tolerance, equal_nan=True)


@pytest.mark.parametrize(
    "shape,window", [((2, 3, 7, 11), (3, 4)), ((1, 2, 13, 10), (5, 6)), ((2, 1, 6, 5), (9, 9)), ((1, 2, 1, 9), (4, 4))]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_variances_pass_gives_the_windows_means_too(shape, window, dtype):
    """valid_local_var_mean_and_var: the same variances as valid_local_var_and_var, and the windows'
    means from the same sums where the kernel runs (None where one window covers the map or
    autograd takes torch's path), within a unit in the last place for values far from zero."""
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1e3).to(dtype)
    h, w = shape[-2:]
    kh, kw = min(window[0], h), min(window[1], w)
    valid, means, whole = valid_local_var_mean_and_var(x, window, 1.0)
    same = valid_local_var_and_var(x, window, 1.0)
    assert torch.equal(valid, same[0]) and torch.equal(whole, same[1])
    if (kh, kw) == (h, w):
        assert means is None
        return
    ref = x.double().unfold(2, kh, 1).unfold(3, kw, 1).mean((-2, -1))
    assert means.dtype == dtype and means.shape == ref.shape
    torch.testing.assert_close(means.double(), ref, rtol=0, atol=1e-12 if dtype == torch.float64 else 6.2e-5)
    with torch.enable_grad():
        assert valid_local_var_mean_and_var(x.clone().requires_grad_(), window)[1] is None


@pytest.mark.parametrize("shape,window", [((2, 3, 7, 11), (3, 4)), ((1, 2, 6, 5), (9, 9)), ((1, 2, 13, 10), (5, 6))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("scale", [77.0, 1 / 3])
@pytest.mark.parametrize("root", [False, True])
def test_the_variances_pass_scales_as_mul_would(shape, window, dtype, scale, root):
    """valid_local_var_mean_and_var(..., scale=s): the windows' statistics are exactly those
    unscaled times s as torch's ``mul_`` rounds them (in the kernel's pass for float32 / float64,
    1/3 not representable in either; after it for half and on the torch path), the means and the
    map's own statistic unscaled."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 3).to(dtype)
    plain = valid_local_var_mean_and_var(x, window, root=root)
    scaled = valid_local_var_mean_and_var(x, window, root=root, scale=scale)
    assert torch.equal(scaled[0], plain[0].clone().mul_(scale))
    assert torch.equal(scaled[2], plain[2])
    assert (scaled[1] is None and plain[1] is None) or torch.equal(scaled[1], plain[1])
    with torch.enable_grad():  # torch's path
        leaf = x.clone().requires_grad_()
        by_torch = valid_local_var_mean_and_var(leaf, window, root=root, scale=scale)[0]
        assert torch.equal(by_torch, valid_local_var_mean_and_var(leaf, window, root=root)[0].mul(scale))


def test_var_keeps_digits_for_offset_inputs():
    x = torch.randn(2, 2, 9, 31) + 1e4  # float32: a spread of ~1 on values of 1e4
    ref = brute_var(x, (4, 6), 1.0)
    for out in both_paths(local_var, x, (4, 6)):
        assert (out.double() - ref).abs().max().item() <= 4 * TOLERANCE[torch.float32]


def test_var_covering_window_is_torch_var_and_std():
    x = torch.randn(2, 3, 7, 11, dtype=torch.float64)
    for correction in (0, 1):
        var = torch.var(x, (2, 3), keepdim=True, correction=correction).expand_as(x)
        std = torch.std(x, (2, 3), keepdim=True, correction=correction).expand_as(x)
        torch.testing.assert_close(local_var(x, (7, 11), correction), var, rtol=0, atol=1e-12)
        torch.testing.assert_close(local_std(x, 50, correction), std, rtol=0, atol=1e-12)


def test_var_window_of_one_pixel_has_no_degrees_of_freedom():
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    for out in both_paths(local_var, x, 1):
        assert torch.isnan(out).all()  # 0 / 0, as torch.var of one value
    for out in both_paths(local_var, x, 1, 0.0):
        assert torch.equal(out, torch.zeros_like(x))
    for out in both_paths(local_var, x, (1, 2), 2.0):
        assert torch.isinf(out).all()  # no degrees of freedom, values differ: inf, as torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_var_and_std_dtypes(dtype):
    x = torch.randn(2, 3, 9, 10).to(dtype) + 4
    ref = brute_var(x, (4, 3), 1.0)
    for var, std in zip(both_paths(local_var, x, (4, 3)), both_paths(local_std, x, (4, 3))):
        assert var.dtype == std.dtype == dtype
        assert (var.double() - ref).abs().max().item() <= 4 * TOLERANCE[dtype]
        assert (std.double() - ref.sqrt()).abs().max().item() <= 4 * TOLERANCE[dtype]


def test_gradcheck_var_and_std_float64():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: local_var(t, (2, 3)), (x,))
    assert torch.autograd.gradcheck(lambda t: local_std(t, (3, 4), correction=0), (x,))


def test_block_window_scan_sums_count_each_entry_once():
    # The softmax pool's ratio would hide a window counted twice; the sums themselves must not.
    from tlc.ops.axis import block_window_scan

    for length, k in [(12, 4), (13, 4), (5, 5), (9, 1), (10, 7)]:
        x = torch.randn(3, length, 2, dtype=torch.float64)
        sums = block_window_scan(x, k, 1, torch.cumsum, torch.add)
        ref = torch.stack([x[:, s : s + k].sum(1) for s in range(length - k + 1)], dim=1)
        torch.testing.assert_close(sums, ref, rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_brute_force():
    x = torch.randn(2, 3, 11, 14, dtype=torch.float64)
    logits = 2 * torch.randn(2, 1, 11, 14, dtype=torch.float64)
    logits[..., :3] -= 1500  # the log-domain path for windows inside that band
    ref = brute_softmax_pool(x, logits, (4, 3))
    torch.testing.assert_close(local_softmax_pool(x.cuda(), logits.cuda(), (4, 3)).cpu(), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(local_var(x.cuda(), (4, 5)).cpu(), brute_var(x, (4, 5), 1.0), rtol=0, atol=1e-12)
    torch.testing.assert_close(local_axis_mean(x.cuda(), 5, -1).cpu(), brute_axis_mean(x, 5, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_valid_var_with_a_covering_window_is_the_maps_own_variance(dtype):
    """A window covering the map: one window, whose variance is the map's (two passes, not
    torch's slower var); no degrees of freedom left give torch's inf / nan."""
    x = (torch.randn(2, 3, 5, 7, dtype=torch.float64) * 3 + 1e3).to(dtype)
    for correction, root in ((0, False), (1, False), (1, True), (2, True)):
        valid, whole = valid_local_var_and_var(x, (9, 9), correction, root)
        assert valid.shape == whole.shape == (2, 3, 1, 1) and valid.dtype == dtype
        reference = (torch.std if root else torch.var)(x.double(), dim=(2, 3), correction=correction, keepdim=True)
        torch.testing.assert_close(whole.double(), reference, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
        assert torch.equal(valid, whole)
    single = torch.randn(1, 2, 1, 1, dtype=dtype)
    for correction in (1, 2):
        with pytest.warns(UserWarning, match="degrees of freedom"):  # torch's own warning, as from torch.var
            _, whole = valid_local_var_and_var(single, 4, correction)
            reference = torch.var(single, dim=(2, 3), correction=correction, keepdim=True)
        torch.testing.assert_close(whole, reference, equal_nan=True)
