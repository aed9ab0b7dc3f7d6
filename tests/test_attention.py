"""Grid-window transposed attention against a loop over windows as the reference runs it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tlc
from tlc.ops import _attention_kernels as attention_kernels
from tlc.ops import attention

from .conftest import devices


def reference_starts(size: int, window: int) -> list[int]:
    """Window placement as the conformance README describes the reference's loop."""
    k = min(size, window)
    n = (size - 1) // k + 1
    step = k if n == 1 else math.ceil((size - k) / (n - 1) - 1e-8)
    starts, i, last = [], 0, False
    while i < size and not last:
        if i + k >= size:
            i, last = size - k, True
        starts.append(i)
        i += step
    return starts


def loop_attention(q, k, v, temperature, heads, window):
    """One window at a time, summing outputs into the map and dividing by the cover count."""
    n, c, h, w = q.shape
    k1, k2 = min(h, window[0]), min(w, window[1])
    total = torch.zeros_like(q)
    count = torch.zeros(1, 1, h, w, dtype=q.dtype)
    for i in reference_starts(h, window[0]):
        for j in reference_starts(w, window[1]):
            part = [t[:, :, i : i + k1, j : j + k2].reshape(n, heads, c // heads, k1 * k2) for t in (q, k, v)]
            qn, kn = F.normalize(part[0], dim=-1), F.normalize(part[1], dim=-1)
            attn = (qn @ kn.transpose(-2, -1) * temperature).softmax(-1)
            total[:, :, i : i + k1, j : j + k2] += (attn @ part[2]).reshape(n, c, k1, k2)
            count[:, :, i : i + k1, j : j + k2] += 1
    return total / count


@pytest.mark.parametrize("size", [1, 2, 5, 7, 8, 13, 64, 97, 100, 720, 1280])
@pytest.mark.parametrize("window", [1, 3, 8, 12, 96, 384, 2000])
def test_window_starts_follow_the_reference(size, window):
    starts = tlc.ops.window_starts(size, window)
    assert starts == reference_starts(size, window)
    k = min(size, window)
    covered = torch.zeros(size)
    for s in starts:
        covered[s : s + k] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize(
    "shape,heads,window",
    [((1, 4, 9, 13), 2, (4, 5)), ((2, 6, 7, 5), 3, (3, 5)), ((2, 2, 11, 3), 1, (2, 2)), ((1, 4, 8, 8), 4, (8, 3))],
)
def test_matches_loop_over_windows(shape, heads, window):
    q, k, v = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
    temperature = torch.rand(heads, 1, 1, dtype=torch.float64) + 0.5
    out = tlc.local_transposed_attention(q, k, v, temperature, heads, window)
    torch.testing.assert_close(out, loop_attention(q, k, v, temperature, heads, window), rtol=0, atol=1e-12)


def test_batch_equals_images_one_by_one():
    q, k, v = (torch.randn(3, 4, 10, 12) for _ in range(3))
    temperature = torch.rand(2, 1, 1) + 0.5
    batched = tlc.local_transposed_attention(q, k, v, temperature, 2, (4, 7))
    single = torch.cat([tlc.local_transposed_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], temperature, 2, (4, 7)) for i in range(3)])
    torch.testing.assert_close(batched, single)


def test_covering_window_is_the_global_block():
    q, k, v = (torch.randn(2, 4, 6, 9) for _ in range(3))
    temperature = torch.rand(2, 1, 1)
    expected = tlc.ops.transposed_attention(q, k, v, temperature, 2)
    torch.testing.assert_close(tlc.local_transposed_attention(q, k, v, temperature, 2, (6, 9)), expected)
    torch.testing.assert_close(tlc.local_transposed_attention(q, k, v, temperature, 2, (60, 90)), expected)
    assert not torch.allclose(tlc.local_transposed_attention(q, k, v, temperature, 2, (3, 9)), expected)


@pytest.mark.parametrize("device", devices())
def test_float32_close_to_float64(device):
    q, k, v = (torch.randn(1, 8, 33, 40, dtype=torch.float64) for _ in range(3))
    temperature = torch.rand(2, 1, 1, dtype=torch.float64) + 0.5
    exact = tlc.local_transposed_attention(q, k, v, temperature, 2, (16, 16))
    args = [t.float().to(device) for t in (q, k, v, temperature)]
    out = tlc.local_transposed_attention(*args[:3], args[3], 2, (16, 16))
    torch.testing.assert_close(out.double().cpu(), exact, rtol=0, atol=1e-5)


def test_gradcheck_float64():
    q, k, v = (torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True) for _ in range(3))
    temperature = torch.rand(1, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: tlc.local_transposed_attention(*a[:3], a[3], 1, (3, 4)), (q, k, v, temperature))


def test_bad_heads():
    q = torch.zeros(1, 5, 4, 4)
    with pytest.raises(ValueError, match="divisible"):
        tlc.local_transposed_attention(q, q, q, torch.ones(2, 1, 1), 2, (2, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_norms_agree_with_torch_path(dtype, monkeypatch):
    # q and k as Restormer makes them: channel chunks of one qkv map (not contiguous), batch 2, odd sizes.
    qkv = torch.randn(2, 12, 23, 37, dtype=dtype)
    q, k, v = qkv.chunk(3, dim=1)
    temperature = torch.rand(2, 1, 1, dtype=dtype) + 0.5
    monkeypatch.setattr(attention, "_KERNEL_MAX_CHANNELS", 0)  # torch's products, numba's squared norms
    compiled = tlc.local_transposed_attention(q, k, v, temperature, 2, (9, 14))
    monkeypatch.setattr(attention, "_compiled_sums_of_squares", None)
    torch_path = tlc.local_transposed_attention(q, k, v, temperature, 2, (9, 14))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(compiled, torch_path, rtol=0, atol=tol)
    torch.testing.assert_close(compiled, loop_attention(q, k, v, temperature, 2, (9, 14)), rtol=0, atol=tol)


def test_block_sums_of_squares_exact():
    pytest.importorskip("numba")
    q, k = (torch.randn(2, 3, 4, 10, 17, dtype=torch.float64) for _ in range(2))
    rows, cols = [(0, 3), (3, 4), (4, 10)], [(0, 5), (5, 16), (16, 17)]
    q_sq, k_sq = attention._block_sums_of_squares(q, k, rows, cols)
    assert q_sq.shape == (2, 3, 3, 3, 4)
    for s, (y0, y1) in enumerate(rows):
        for t, (x0, x1) in enumerate(cols):
            torch.testing.assert_close(q_sq[:, :, s, t], q[..., y0:y1, x0:x1].square().sum((-2, -1)), rtol=1e-14, atol=0)
            torch.testing.assert_close(k_sq[:, :, s, t], k[..., y0:y1, x0:x1].square().sum((-2, -1)), rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_sums_of_squares_of_tokens_are_the_planes_sums(dtype):
    """q and k as DAT makes them, views of a (N, H * W, 3, heads, d) projection (the channels the
    fastest axis, tokens 3C apart), batch 2: the token kernel gives the planes kernel's sums on
    contiguous copies to the bit, and each block's sum of squares in float64."""
    pytest.importorskip("numba")
    n, heads, d, h, w = 2, 3, 4, 10, 17
    qkv = torch.randn(n, h * w, 3, heads, d, dtype=dtype).permute(2, 0, 3, 1, 4)
    q, k = (qkv[i].transpose(-2, -1).reshape(n, heads, d, h, w) for i in (0, 1))
    assert q.flatten(1, 2).stride(1) == 1 and not q.is_contiguous()
    rows, cols = [(0, 3), (3, 4), (4, 10)], [(0, 5), (5, 16), (16, 17)]
    tokens = attention._block_sums_of_squares(q, k, rows, cols)
    planes = attention._block_sums_of_squares(q.contiguous(), k.contiguous(), rows, cols)
    assert torch.equal(tokens[0], planes[0]) and torch.equal(tokens[1], planes[1])
    for s, (y0, y1) in enumerate(rows):
        for t, (x0, x1) in enumerate(cols):
            for got, x in zip(tokens, (q, k)):
                expected = x[..., y0:y1, x0:x1].double().square().sum((-2, -1))
                torch.testing.assert_close(got[:, :, s, t].double(), expected, rtol=2e-7 if dtype == torch.float32 else 1e-14, atol=0)


def _as_projected_tokens(n, heads, d, h, w, dtype, packed, generator):
    """q, k, v (N, heads * d, H, W) as token transformers make them from a Linear projection:
    DAT's three packed in one (N, H * W, 3, heads, d) tensor (tokens 3C apart) or
    Retinexformer's one (N, H * W, heads * d) tensor each (tokens C apart)."""
    c = heads * d
    if packed:
        qkv = torch.randn(n, h * w, 3, heads, d, generator=generator, dtype=dtype).permute(2, 0, 3, 4, 1)
        return tuple(qkv[i].reshape(n, c, h, w) for i in range(3))
    return tuple(torch.randn(n, h * w, c, generator=generator, dtype=dtype).transpose(1, 2).reshape(n, c, h, w) for _ in range(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("packed", [True, False])
def test_token_kernel_block_statistics(dtype, packed):
    """The token kernel's block statistics for q, k laid out as tokens (batch 2, 3 heads of 4
    channels, odd sizes): every block's q k^T and squared norms against float64 sums, the squared
    norms to the bit of the block sums of squares (the same order)."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(11)
    n, heads, d, h, w = 2, 3, 4, 11, 17
    q, k, _ = _as_projected_tokens(n, heads, d, h, w, dtype, packed, g)
    qh, kh = (t.reshape(n, heads, d, h, w) for t in (q, k))
    assert attention._token_kernel_applies(qh, kh) and not attention._token_kernel_applies(qh.contiguous(), kh.contiguous())
    rows, cols = [(0, 3), (3, 4), (4, 11)], [(0, 5), (5, 16), (16, 17)]
    gram, q_sq, k_sq = attention._token_kernel_statistics(qh, kh, rows, cols)
    assert gram.shape == (n, heads, 3, 3, d, d) and q_sq.shape == (n, heads, 3, 3, d) and gram.dtype == dtype
    sums = attention._block_sums_of_squares(qh, kh, rows, cols)
    assert torch.equal(q_sq, sums[0]) and torch.equal(k_sq, sums[1])
    eps = torch.finfo(dtype).eps
    for s, (y0, y1) in enumerate(rows):
        for t, (x0, x1) in enumerate(cols):
            qb, kb = (x[..., y0:y1, x0:x1].double().flatten(-2) for x in (qh, kh))
            # Summed in the inputs' dtype along a block row: off by a few roundings of the terms' size.
            bound = 8 * eps * (qb.abs() @ kb.abs().transpose(-1, -2))
            assert ((gram[:, :, s, t].double() - qb @ kb.transpose(-1, -2)).abs() <= bound).all()
            torch.testing.assert_close(q_sq[:, :, s, t].double(), qb.square().sum(-1), rtol=2 * eps, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("packed", [True, False])
def test_token_kernel_application(dtype, packed):
    """The token kernel applies each block's attention to v laid out as tokens (batch 2, 3 heads of
    4 channels, odd sizes): the planes kernel's bits on a planar copy (the same products and sums
    in the same order), and each pixel's attn @ v in float64 within its roundings."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(13)
    n, heads, d, h, w = 2, 3, 4, 11, 17
    _, _, v = _as_projected_tokens(n, heads, d, h, w, dtype, packed, g)
    vh = v.reshape(n, heads, d, h, w)
    rows, cols = [(0, 3), (3, 4), (4, 11)], [(0, 5), (5, 16), (16, 17)]
    block_attn = torch.rand(n, heads, 3, 3, d, d, generator=g, dtype=dtype)
    assert attention._token_application_applies(block_attn, vh)
    assert not attention._token_application_applies(block_attn, vh.contiguous())
    out = attention._token_kernel_application(block_attn, vh, rows, cols)
    assert out.shape == vh.shape and out.dtype == dtype
    assert torch.equal(out, attention._kernel_application(block_attn, vh.contiguous(), rows, cols))
    eps = torch.finfo(dtype).eps
    for s, (y0, y1) in enumerate(rows):
        for t, (x0, x1) in enumerate(cols):
            weights, values = block_attn[:, :, s, t].double(), vh[..., y0:y1, x0:x1].double().flatten(-2)
            expected = weights @ values
            bound = 2 * d * eps * (weights.abs() @ values.abs())
            assert ((out[..., y0:y1, x0:x1].double().flatten(-2) - expected).abs() <= bound).all()


@pytest.mark.parametrize("packed", [True, False])
def test_attention_on_tokens_by_the_token_kernel_matches_the_loop(packed, monkeypatch, spy):
    """local_transposed_attention of q, k, v laid out as tokens: with the token kernels'
    statistics and application, with the block loops', and window by window, the same within
    float32 rounding."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(12)
    q, k, v = _as_projected_tokens(1, 2, 8, 23, 30, torch.float32, packed, g)
    temperature = torch.rand(2, 1, 1, generator=g) + 0.5
    statistics = spy(attention, "token_statistics_kernel")
    application = spy(attention, "token_application_kernel")
    by_tokens = tlc.local_transposed_attention(q, k, v, temperature, 2, (9, 14))
    assert (len(statistics), len(application)) == (1, 1)
    monkeypatch.setattr(attention, "token_statistics_kernel", None)
    monkeypatch.setattr(attention, "token_application_kernel", None)
    by_loop = tlc.local_transposed_attention(q, k, v, temperature, 2, (9, 14))
    torch.testing.assert_close(by_tokens, by_loop, rtol=0, atol=2e-6)
    torch.testing.assert_close(by_tokens, loop_attention(q, k, v, temperature, 2, (9, 14)), rtol=0, atol=2e-6)


def test_all_planes_at_once_equals_one_at_a_time(monkeypatch):
    # The form used off the CPU (images and heads as batch dimensions), checked here on the CPU.
    qkv = torch.randn(2, 12, 19, 26, dtype=torch.float64)
    q, k, v = qkv.chunk(3, dim=1)
    temperature = torch.rand(2, 1, 1, dtype=torch.float64) + 0.5
    per_plane = tlc.local_transposed_attention(q, k, v, temperature, 2, (8, 11))
    monkeypatch.setattr(attention, "_one_plane_at_a_time", lambda x: False)
    batched = tlc.local_transposed_attention(q, k, v, temperature, 2, (8, 11))
    torch.testing.assert_close(batched, per_plane, rtol=0, atol=1e-13)
    torch.testing.assert_close(batched, loop_attention(q, k, v, temperature, 2, (8, 11)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ["blocks", "rows", "kernel"])
@pytest.mark.parametrize(
    "shape,heads,window",
    [((1, 4, 9, 13), 2, (4, 5)), ((2, 6, 17, 23), 3, (5, 4)), ((2, 2, 11, 3), 1, (2, 2)), ((1, 8, 30, 21), 4, (7, 6))],
)
def test_rows_of_blocks_single_blocks_and_the_kernel_all_match_the_loop(shape, heads, window, path, monkeypatch):
    """On the CPU, heads of up to 8 channels take the compiled block kernels; wider ones torch's
    products, small blocks a row of blocks at a time (per column, summed per column segment),
    larger ones one block at a time. Each way, the windows' attention exactly."""
    if path == "kernel":
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(attention, "_KERNEL_MAX_CHANNELS", 0)
        monkeypatch.setattr(attention, "_ROWS_BELOW", 0 if path == "blocks" else 10**9)
    assert_matches_the_loop(shape, heads, window, seed=sum(shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape,heads,window",
    # wider than a chunk of the statistics kernel (256 columns at d = 8), segments crossing chunks;
    # one row segment (the window's height covers the map): tasks from column groups alone
    [((2, 16, 9, 601), 2, (4, 100)), ((1, 8, 7, 333), 1, (20, 37)), ((3, 3, 5, 6), 3, (2, 3))],
)
def test_the_block_kernels_match_the_loop_and_the_torch_path(shape, heads, window, dtype, monkeypatch, spy):
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(shape, dtype=torch.float64, generator=g) for _ in range(3))
    temperature = torch.rand(heads, 1, 1, dtype=torch.float64, generator=g) + 0.5
    reference = loop_attention(q, k, v, temperature, heads, window)
    args = [t.to(dtype) for t in (q, k, v, temperature)]
    calls = spy(attention, "apply_blocks_kernel")
    out = tlc.local_transposed_attention(*args[:3], args[3], heads, window)
    assert calls  # the kernel ran
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(out.double(), reference, rtol=0, atol=tol)
    monkeypatch.setattr(attention, "_KERNEL_MAX_CHANNELS", 0)
    torch.testing.assert_close(out, tlc.local_transposed_attention(*args[:3], args[3], heads, window), rtol=0, atol=tol)


def test_the_block_kernels_run_only_for_narrow_heads_without_autograd(spy):
    pytest.importorskip("numba")
    calls = spy(attention, "block_statistics_kernel")
    temperature = torch.ones(1, 1, 1)
    for d, grad, layout, ran in ((8, False, torch.contiguous_format, True), (9, False, torch.contiguous_format, False),
                                 (8, True, torch.contiguous_format, False), (8, False, torch.channels_last, False)):
        calls.clear()
        q = torch.randn(1, d, 10, 12).to(memory_format=layout).requires_grad_(grad)
        out = tlc.local_transposed_attention(q, q, q, temperature, 1, (4, 5))
        assert bool(calls) == ran, (d, grad, layout)
        torch.testing.assert_close(out, loop_attention(q, q, q, temperature, 1, (4, 5)), rtol=0, atol=2e-6)


@pytest.mark.parametrize("width,tasks", [(100, 1), (100, 3), (601, 4), (7, 10)])
def test_column_groups_split_the_segments_into_contiguous_groups(width, tasks):
    cuts = np.array([0, *sorted({*range(5, width, 13), width})])
    groups = attention_kernels.column_groups(cuts, tasks)
    segments = len(cuts) - 1
    assert groups[0] == 0 and groups[-1] == segments and (np.diff(groups) > 0).all()
    assert len(groups) - 1 == min(tasks, segments)


def assert_matches_the_loop(shape: tuple, heads: int, window: tuple, seed: int) -> torch.Tensor:
    """The local attention on random q, k, v against the window loop in float64 (1e-12), and in
    float32 against its float64 result; returns the float64 result."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, dtype=torch.float64, generator=g) for _ in range(3))
    temperature = torch.rand(heads, 1, 1, dtype=torch.float64, generator=g) + 0.5
    out = tlc.local_transposed_attention(q, k, v, temperature, heads, window)
    torch.testing.assert_close(out, loop_attention(q, k, v, temperature, heads, window), rtol=0, atol=1e-12)
    q32, k32, v32 = (t.float() for t in (q, k, v))
    out32 = tlc.local_transposed_attention(q32, k32, v32, temperature.float(), heads, window)
    torch.testing.assert_close(out32, out.float(), rtol=1e-5, atol=2e-6)
    half = tlc.local_transposed_attention(q.half(), k.half(), v.half(), temperature.half(), heads, window)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), out, rtol=0, atol=1e-2)
    return out


class _Counting(torch.overrides.TorchFunctionMode):
    def __init__(self, ignores: bool) -> None:
        super().__init__()
        self.ignores_tlc_ops = ignores
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


class _Wrapped(torch.Tensor):
    pass


def test_local_attention_runs_unseen_only_by_modes_that_ignore_tlc_ops():
    """The block loop's many small calls skip tlc's own modes (they declare ignores_tlc_ops), never
    anyone else's, and the result is the same."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 30, 21, generator=g) for _ in range(3))
    temperature = torch.rand(2, 1, 1, generator=g) + 0.5
    want = tlc.local_transposed_attention(q, k, v, temperature, 2, (7, 6))
    for ignores, outer in [(True, None), (False, None), (True, _Counting(False))]:
        mode = _Counting(ignores)
        modes = [m for m in (outer, mode) if m is not None]
        for m in modes:
            m.__enter__()
        try:
            got = tlc.local_transposed_attention(q, k, v, temperature, 2, (7, 6))
        finally:
            for m in reversed(modes):
                m.__exit__(None, None, None)
        assert torch.equal(got, want)
        unseen = ignores and outer is None
        assert (mode.calls == 0) == unseen, (ignores, outer, mode.calls)
    mode = _Counting(True)
    with mode:  # a tensor subclass among the inputs: its calls keep their torch function
        tlc.local_transposed_attention(q.as_subclass(_Wrapped), k, v, temperature, 2, (7, 6))
    assert mode.calls > 0
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize(
    "shape,heads,window",
    [((1, 4, 9, 13), 2, (4, 5)), ((2, 6, 17, 23), 3, (5, 4)), ((2, 2, 11, 3), 1, (2, 2)), ((1, 8, 30, 21), 4, (7, 6)),
     ((2, 4, 12, 40), 2, (12, 9))],
)  # fmt: skip
def test_all_segments_at_once_matches_the_loop(shape, heads, window, monkeypatch):
    """The form for devices other than the CPU (every block's statistics and attention in a fixed
    number of batched calls), run here on the CPU: the windows' attention exactly."""
    monkeypatch.setattr(attention, "_all_segments_at_once", lambda x: True)
    assert_matches_the_loop(shape, heads, window, seed=sum(shape) + 1)


def test_all_segments_at_once_makes_as_many_calls_whatever_the_number_of_blocks(monkeypatch):
    monkeypatch.setattr(attention, "_all_segments_at_once", lambda x: True)
    q, k, v = (torch.randn(1, 4, 64, 64) for _ in range(3))
    temperature = torch.ones(2, 1, 1)
    calls = []
    for window in ((32, 32), (8, 8)):  # 3 x 3 windows against 15 x 15: 25 blocks against 225+
        counter = _Counting(ignores=False)
        with counter:
            tlc.local_transposed_attention(q, k, v, temperature, 2, window)
        calls.append(counter.calls)
    assert calls[0] == calls[1], calls
