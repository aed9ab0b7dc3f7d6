"""local_max / local_axis_max against brute-force per-pixel loops, torch.amax, NaN and gradcheck."""

from __future__ import annotations

import random

import pytest
import torch

from tlc.nn import LocalMaxPool2d
from tlc.ops import local_axis_max, local_max
from tlc.ops.extrema import valid_local_max


def window_span(length: int, k: int, i: int) -> tuple[int, int]:
    """[start, stop) of the window given to entry ``i``: the k-window (k clamped to the axis)
    whose valid index is i - (k-1)//2, kept between 0 and length - k."""
    k = min(k, length)
    start = min(max(i - (k - 1) // 2, 0), length - k)
    return start, start + k


def brute_local_max(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(h):
        top, bottom = window_span(h, window[0], i)
        for j in range(w):
            left, right = window_span(w, window[1], j)
            out[:, :, i, j] = x[:, :, top:bottom, left:right].amax(dim=(-2, -1))
    return out


def both_paths(fn, x: torch.Tensor, *args) -> list[torch.Tensor]:
    """``fn`` without autograd (on the CPU: the compiled kernel) and with it (torch ops)."""
    return [fn(x, *args), fn(x.clone().requires_grad_(), *args).detach()]


def brute_axis_max(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    length = x.shape[dim]
    pieces = []
    for i in range(length):
        start, stop = window_span(length, k, i)
        pieces.append(x.narrow(dim, start, stop - start).amax(dim=dim, keepdim=True))
    return torch.cat(pieces, dim=dim)


CASES = [
    ((1, 1, 1, 1), (1, 1)),
    ((1, 1, 1, 1), (4, 4)),
    ((2, 3, 7, 11), (1, 1)),
    ((2, 3, 7, 11), (3, 4)),
    ((2, 3, 7, 11), (7, 11)),
    ((2, 3, 7, 11), (20, 30)),
    ((3, 2, 1, 9), (5, 5)),
    ((3, 2, 1, 9), (1, 4)),
    ((3, 2, 13, 1), (6, 3)),
    ((1, 2, 13, 17), (5, 8)),
    ((2, 1, 23, 10), (9, 10)),
    ((1, 2, 40, 21), (4, 6)),  # ten blocks of rows, the last window's block whole
    ((2, 2, 31, 9), (7, 2)),  # four blocks and a partial one no window starts in
]


@pytest.mark.parametrize("shape,window", CASES)
def test_local_max_matches_brute_force(shape, window):
    x = torch.randn(shape, dtype=torch.float64)
    ref = brute_local_max(x, window)
    for out in both_paths(local_max, x, window):
        assert torch.equal(out, ref)


@pytest.mark.parametrize("shape,window", CASES)
def test_valid_local_max_is_each_inside_window(shape, window):
    x = torch.randn(shape, dtype=torch.float64)
    h, w = shape[-2:]
    kh, kw = min(window[0], h), min(window[1], w)
    ref = torch.empty(*shape[:2], h - kh + 1, w - kw + 1, dtype=torch.float64)
    for top in range(h - kh + 1):
        for left in range(w - kw + 1):
            ref[:, :, top, left] = x[:, :, top : top + kh, left : left + kw].amax(dim=(-2, -1))
    for out in both_paths(valid_local_max, x, window):
        assert torch.equal(out, ref)


def test_local_max_random_shapes_and_windows():
    rng = random.Random(11)
    for _ in range(25):
        shape = (rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 19), rng.randint(1, 19))
        window = (rng.randint(1, 24), rng.randint(1, 24))
        x = torch.randn(shape, dtype=torch.float64)
        ref = brute_local_max(x, window)
        for out in both_paths(local_max, x, window):
            assert torch.equal(out, ref), (shape, window)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_local_max_every_dtype_is_exact(dtype):
    x = torch.randn(2, 3, 9, 14).to(dtype)
    for out in both_paths(local_max, x, (4, 5)):
        assert out.dtype == dtype and out.shape == x.shape
        assert torch.equal(out, brute_local_max(x, (4, 5)))


def test_window_covering_the_map_is_global_amax():
    x = torch.randn(2, 4, 7, 11)
    expected = x.amax(dim=(2, 3), keepdim=True).expand_as(x)
    assert torch.equal(local_max(x, (7, 11)), expected)
    assert torch.equal(local_max(x, 100), expected)


def test_int_window_is_square():
    x = torch.randn(1, 2, 10, 12, dtype=torch.float64)
    assert torch.equal(local_max(x, 4), brute_local_max(x, (4, 4)))


def test_negative_inputs_and_infinities():
    x = -torch.rand(1, 2, 8, 9, dtype=torch.float64) - 1e6
    x[0, 0, 3, 4] = float("-inf")
    x[0, 1, 6, 1] = float("inf")
    for out in both_paths(local_max, x, (3, 4)):
        assert torch.equal(out, brute_local_max(x, (3, 4)))


def test_nan_propagates_to_exactly_the_windows_holding_it():
    x = torch.randn(1, 2, 9, 10, dtype=torch.float64)
    x[0, 1, 4, 7] = float("nan")
    x[0, 0, 0, 0] = float("nan")
    ref = brute_local_max(x, (3, 4))  # torch.amax propagates NaN
    assert 0 < ref.isnan().sum() < ref.numel() / 4
    for out in both_paths(local_max, x, (3, 4)):
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(out[~out.isnan()], ref[~ref.isnan()])
    ref_axis = brute_axis_max(x, 4, -1)
    for out in both_paths(local_axis_max, x, 4, -1):
        assert torch.equal(out.isnan(), ref_axis.isnan())
        assert torch.equal(out[~out.isnan()], ref_axis[~ref_axis.isnan()])


@pytest.mark.parametrize(
    "shape,window,dim",
    [
        ((2, 17, 5), 4, 1),  # (N, L, C) tokens
        ((2, 17, 5), 40, 1),
        ((2, 17, 5), 1, -2),
        ((3, 5, 16), 7, -1),
        ((16,), 5, 0),
        ((1,), 3, 0),
        ((2, 3, 4, 6, 13), 6, 4),
        ((2, 3, 11, 6, 2), 3, 2),
        ((2, 3, 11, 6, 2), 2, 0),
    ],
)
def test_axis_max_any_rank_matches_brute_force(shape, window, dim):
    x = torch.randn(shape, dtype=torch.float64)
    for out in both_paths(local_axis_max, x, window, dim):
        assert out.shape == x.shape
        assert torch.equal(out, brute_axis_max(x, window, dim))


def test_axis_max_non_contiguous_input():
    x = torch.randn(3, 13, 6, dtype=torch.float64).transpose(0, 2)  # (6, 13, 3), strided
    for out in both_paths(local_axis_max, x, 5, 1):
        assert torch.equal(out, brute_axis_max(x, 5, 1))


def test_local_max_is_axis_max_along_w_then_h():
    x = torch.randn(2, 3, 11, 14, dtype=torch.float32)
    assert torch.equal(local_max(x, (5, 3)), local_axis_max(local_axis_max(x, 3, -1), 5, -2))


def tie_free(*shape: int) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    return (torch.randperm(n, dtype=torch.float64) / n + 0.01 * torch.rand(n, dtype=torch.float64)).view(shape)


def test_gradcheck_local_max_float64():
    for shape, window in [((2, 2, 5, 7), (2, 3)), ((1, 2, 6, 5), (9, 2)), ((1, 1, 4, 9), (4, 9))]:
        x = tie_free(*shape).requires_grad_()
        assert torch.autograd.gradcheck(lambda t, w=window: local_max(t, w), (x,))


def test_gradcheck_axis_max_float64():
    x = tie_free(2, 9, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: local_axis_max(t, 4, 1), (x,))


def test_gradient_goes_to_the_window_maximum():
    x = tie_free(1, 1, 6, 8).requires_grad_()
    local_max(x, (3, 3)).sum().backward()
    # Each pixel's gradient counts the pixels whose window has it as the maximum.
    counts = torch.zeros(6, 8, dtype=torch.float64)
    for i in range(6):
        top, bottom = window_span(6, 3, i)
        for j in range(8):
            left, right = window_span(8, 3, j)
            patch = x.detach()[0, 0, top:bottom, left:right]
            a = int(patch.argmax())
            counts[top + a // patch.shape[1], left + a % patch.shape[1]] += 1
    assert torch.equal(x.grad[0, 0], counts)


def test_module_equals_function_and_shows_window():
    module = LocalMaxPool2d((3, 5))
    x = torch.randn(2, 3, 9, 12)
    assert torch.equal(module(x), local_max(x, (3, 5)))
    assert "window=(3, 5)" in repr(module)
    assert LocalMaxPool2d(4).window == (4, 4)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        local_max(torch.randn(2, 3, 4), 2)
    with pytest.raises(TypeError):
        local_max(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2)
    with pytest.raises(ValueError):
        local_max(torch.randn(1, 1, 4, 4), 0)
    with pytest.raises(IndexError):
        local_axis_max(torch.randn(3, 4), 2, 2)
    with pytest.raises(TypeError):
        local_axis_max(torch.randn(3, 4), (2, 2), 1)
    with pytest.raises(ValueError):
        local_axis_max(torch.randn(3, 0), 2, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_brute_force():
    x = torch.randn(2, 3, 11, 14, dtype=torch.float64)
    out = local_max(x.cuda(), (4, 5)).cpu()
    assert torch.equal(out, brute_local_max(x, (4, 5)))
    assert torch.equal(local_axis_max(x.cuda(), 5, 2).cpu(), brute_axis_max(x, 5, 2))
