"""CUDA kernels (Triton) for the local mean and the edge replication of gates, used by
:func:`tlc.local_mean`, ``tlc.ops.pool.replicate_to`` and ``tlc.ops.gate.combine_replicated``
when they can be.

torch's path for the local mean takes a prefix sum per axis in float64: about ten passes over
float64 maps, the most of a converted network's extra time on a GPU (an H200 spent 2.2 ms on a
64-channel 720p map, where the map itself is read in 0.06 ms). Two kernels keep the same float64
accumulation:

1. ``_column_window_sums``: per plane and tile of columns, a row of float64 column sums slides
   down the map (rows entering added, rows leaving subtracted, a block of rows per step),
   writing the sums over every ``kh`` consecutive rows: (P, H - kh + 1, W) in float64.
2. ``_row_window_means``: per row of those sums, the first window's sum, then each next one as
   the last plus the column entering minus the column leaving (a float64 running sum, as the
   CPU kernel's); the means are written in the input's dtype, either the valid windows only or
   with the columns left and right of them taking the edge windows' values (the rows above and
   below are copied from the edge rows afterwards).

Running float64 sums drift by at most ~steps x 1e-16 relative: far below float32 resolution.
``_spread_valid`` writes a gate given at its valid windows spread to the full map, or that map
times (plus) ``x``, without building the spread map.

The kernels run on contiguous CUDA tensors without autograd, not traced. Besides the local mean
they give ``tlc.ops.pool.window_sums`` its float64 window sums on CUDA (local variance and
standard deviation, local group and instance norm). ``TLC_TRITON=0`` in the environment turns them off (torch's path then
runs), for comparisons. Under ``TRITON_INTERPRET=1`` they also run on CPU tensors (how the tests
check them without a GPU, with every kernel also compiled for GPU targets).
"""

from __future__ import annotations

import contextlib
import os

import torch

from ._common import tracing

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover (triton ships with CUDA builds of torch; CPU builds lack it)
    triton = tl = None

# Rows added per step of the column kernel (fewer dependent loads in flight) and columns per tile.
_ROW_BLOCK = 8
_COLUMN_TILE = 128
_ROW_CHUNK = 512  # output rows per program of the column kernel (more programs on short maps)
# Columns per step of the row kernel, run by 8 warps: 53 registers a thread on sm_90 (1024 columns
# by 4 warps took 114, a quarter of the threads an SM can hold).
_ROW_TILE = 512


if triton is not None:
    # Sizes are not specialised on (Triton would compile anew for each size divisible by 16 or 1).
    @triton.jit(do_not_specialize=["h", "w", "valid_h", "kh", "chunk_rows"])
    def _column_window_sums(x_ptr, sums_ptr, h, w, valid_h, kh, chunk_rows,
                            ROWS: tl.constexpr, COLS: tl.constexpr):  # fmt: skip
        plane = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * COLS + tl.arange(0, COLS)
        first = tl.program_id(2) * chunk_rows
        last = tl.minimum(first + chunk_rows, valid_h)  # one past the last output row
        in_cols = cols < w
        x_plane = x_ptr + plane * h * w
        sums_plane = sums_ptr + plane * valid_h * w
        rows = tl.arange(0, ROWS)
        # The first window of this chunk: rows first .. first + kh - 1.
        column = tl.zeros([COLS], dtype=tl.float64)
        for step in range(0, kh, ROWS):
            r = first + step + rows
            mask = (step + rows < kh)[:, None] & in_cols[None, :]
            block = tl.load(x_plane + r[:, None] * w + cols[None, :], mask=mask, other=0.0)
            column += tl.sum(block.to(tl.float64), axis=0)
        tl.store(sums_plane + first * w + cols, column, mask=in_cols)
        # Then ROWS output rows per step: row a = row a-1 + x[a + kh - 1] - x[a - 1].
        for step in range(1, chunk_rows, ROWS):
            a = first + step + rows
            mask = (a < last)[:, None] & in_cols[None, :]
            entering = tl.load(x_plane + (a + kh - 1)[:, None] * w + cols[None, :], mask=mask, other=0.0)
            leaving = tl.load(x_plane + (a - 1)[:, None] * w + cols[None, :], mask=mask, other=0.0)
            steps = entering.to(tl.float64) - leaving.to(tl.float64)
            block = column[None, :] + tl.cumsum(steps, axis=0)
            tl.store(sums_plane + a[:, None] * w + cols[None, :], block, mask=mask)
            column += tl.sum(steps, axis=0)

    @triton.jit
    def _rounded(values, dtype: tl.constexpr):
        # float64 results as they are; others via float32 (Triton's interpreter, which the tests
        # run, rounds float64 to bfloat16 wrongly, and float32 to bfloat16 toward zero): for half
        # outputs, at most one unit in the last place.
        if dtype == tl.float64:
            return values
        return values.to(tl.float32).to(dtype)

    @triton.jit(do_not_specialize=["w", "valid_h", "valid_w", "kw", "out_h", "out_w", "top", "left", "area"])
    def _row_window_means(sums_ptr, out_ptr, w, valid_h, valid_w, kw, out_h, out_w, top, left, area,
                          TILE: tl.constexpr):  # fmt: skip
        index = tl.program_id(0).to(tl.int64)  # plane * valid_h + row
        plane = index // valid_h
        row = index % valid_h
        sums_row = sums_ptr + index * w
        # The valid windows' means go to columns left .. left + valid_w - 1 of the output row taking
        # this valid row (the replicated rows above / below are copied after the kernel).
        out_row = out_ptr + (plane * out_h + row + top) * out_w + left
        area64 = area.to(tl.float64)
        # The first window's sum, then each next one as the last plus the column entering minus the
        # column leaving (float64 running sums, as the CPU kernel; no prefix sums written back).
        partial = tl.zeros([TILE], dtype=tl.float64)
        for start in range(0, kw, TILE):
            j = start + tl.arange(0, TILE)
            partial += tl.load(sums_row + j, mask=j < kw, other=0.0)
        total = tl.sum(partial, axis=0)
        first, last = total, total
        for start in range(0, valid_w, TILE):
            b = start + tl.arange(0, TILE)
            moving = (b > 0) & (b < valid_w)
            entering = tl.load(sums_row + b + kw - 1, mask=moving, other=0.0)
            leaving = tl.load(sums_row + b - 1, mask=moving, other=0.0)
            steps = entering - leaving
            sums = tl.cumsum(steps, axis=0) + total
            # Divided in float64 (a float scalar argument would arrive as float32: its reciprocal
            # rounded there moved float32 results by one unit); area 1 gives the sums themselves.
            means = _rounded(sums / area64, out_ptr.dtype.element_ty)
            tl.store(out_row + b, means, mask=b < valid_w)
            # The last window's own sum (x + 0 is exact), for the band on the right.
            last = tl.where(start + TILE >= valid_w, tl.sum(tl.where(b == valid_w - 1, sums, 0.0), axis=0), last)
            total += tl.sum(steps, axis=0)
        # Columns left of the first window's centre take its mean; right of the last one's, that one's.
        first_mean = _rounded(first / area64, out_ptr.dtype.element_ty)
        last_mean = _rounded(last / area64, out_ptr.dtype.element_ty)
        for start in range(0, left, TILE):
            j = start + tl.arange(0, TILE)
            tl.store(out_row - left + j, tl.zeros([TILE], dtype=out_ptr.dtype.element_ty) + first_mean, mask=j < left)
        right = out_w - left - valid_w
        for start in range(0, right, TILE):
            j = start + tl.arange(0, TILE)
            tl.store(
                out_row + valid_w + j, tl.zeros([TILE], dtype=out_ptr.dtype.element_ty) + last_mean, mask=j < right
            )

    @triton.jit(do_not_specialize=["h", "w", "gh", "gw", "top", "left"])
    def _spread_valid(x_ptr, gate_ptr, out_ptr, h, w, gh, gw, top, left,
                      OP: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):  # fmt: skip
        # out = gate edge-replicated to (h, w) (OP 0), or x * that (OP 1), or x + that (OP 2).
        plane = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
        j = tl.program_id(2) * COLS + tl.arange(0, COLS)
        mask = (i < h)[:, None] & (j < w)[None, :]
        gi = tl.minimum(tl.maximum(i - top, 0), gh - 1)
        gj = tl.minimum(tl.maximum(j - left, 0), gw - 1)
        g = tl.load(gate_ptr + plane * gh * gw + gi[:, None] * gw + gj[None, :], mask=mask)
        offsets = plane * h * w + i[:, None] * w + j[None, :]
        if OP == 0:
            out = g
        else:
            # In float32 for half inputs and rounded once, as torch's own elementwise kernels do.
            xv = tl.load(x_ptr + offsets, mask=mask)
            if xv.dtype.is_fp16() or xv.dtype.is_bf16():
                xv = xv.to(tl.float32)
                g = g.to(tl.float32)
            if OP == 1:
                out = xv * g
            else:
                out = xv + g
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def triton_local_mean_applies(x: torch.Tensor) -> bool:
    """Whether :func:`triton_local_mean` runs for ``x``: triton present, a contiguous floating CUDA
    tensor, no autograd needed, not traced, not turned off by ``TLC_TRITON=0``."""
    # Contiguous maps only: a channels-last map (a GPU model run in that layout) keeps torch's
    # path, whose output keeps the layout, rather than being copied to and from rows.
    return triton_applies(x) and x.is_contiguous()


def triton_applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may run on ``tensors``: triton present, all floating CUDA tensors of one
    dtype, none needing gradients, not traced, not turned off by ``TLC_TRITON=0``."""
    return (
        triton is not None
        and all(t.is_cuda and t.dtype == tensors[0].dtype and t.device == tensors[0].device for t in tensors)
        and torch.cuda.get_device_capability(tensors[0].device) >= (7, 0)  # what Triton compiles for
        and tensors[0].dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not tracing()
        and os.environ.get("TLC_TRITON", "1") != "0"
    )


def _launching_on(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``t``'s (a model on cuda:1, say)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def triton_local_mean(
    x: torch.Tensor,
    window: tuple[int, int],
    valid_only: bool = False,
    sums: bool = False,
    dtype: torch.dtype | None = None,
    chunk_rows: int | None = None,
    row_tile: int | None = None,
) -> torch.Tensor:
    """Local mean of an (N, C, H, W) tensor with an already clamped window (kh, kw), by the kernels.

    Returns (N, C, H, W) in ``dtype`` (default ``x.dtype``), or with ``valid_only`` the
    (N, C, H-kh+1, W-kw+1) means of the windows lying inside the map; with ``sums`` the windows'
    sums instead of their means. Accumulated in float64 throughout. ``chunk_rows``: output
    rows per program of the column kernel (default: at least 512 and at least the window);
    ``row_tile``: columns per step of the row kernel, a power of two (default: up to 512). The
    tests set both small, to cross chunk and tile boundaries on small maps.
    """
    n, c, h, w = x.shape
    kh, kw = window
    valid_h, valid_w = h - kh + 1, w - kw + 1
    planes = n * c
    x = x.contiguous()
    column_sums = torch.empty((planes, valid_h, w), dtype=torch.float64, device=x.device)
    out_h, out_w = (valid_h, valid_w) if valid_only else (h, w)
    out = torch.empty((n, c, out_h, out_w), dtype=dtype or x.dtype, device=x.device)
    if planes == 0:
        return out
    # Chunks of output rows: enough programs to fill the device, each at least a window long.
    chunk = chunk_rows or max(_ROW_CHUNK, kh)
    grid = (planes, triton.cdiv(w, _COLUMN_TILE), triton.cdiv(valid_h, chunk))
    top, left = (0, 0) if valid_only else ((kh - 1) // 2, (kw - 1) // 2)
    tile = row_tile or min(_ROW_TILE, triton.next_power_of_2(w))
    with _launching_on(x):
        _column_window_sums[grid](x, column_sums, h, w, valid_h, kh, chunk, ROWS=_ROW_BLOCK, COLS=_COLUMN_TILE)
        _row_window_means[(planes * valid_h,)](column_sums, out, w, valid_h, valid_w, kw, out_h, out_w, top, left,
                                               1 if sums else kh * kw, TILE=tile,
                                               num_warps=8 if tile >= 512 else 4)  # fmt: skip
    if top > 0:  # rows above the first valid row take it, rows below the last take that one
        out[:, :, :top] = out[:, :, top : top + 1]
    if top + valid_h < h:
        out[:, :, top + valid_h :] = out[:, :, top + valid_h - 1 : top + valid_h]
    return out


_SPREAD_OPS = {"replicate": 0, "mul": 1, "add": 2}


def triton_spread(
    gate: torch.Tensor, size: tuple[int, int], x: torch.Tensor | None = None, op: str = "replicate"
) -> torch.Tensor:
    """The valid windows' values ``gate`` (..., gh, gw) edge-replicated to ``size`` (H, W), placed as
    :func:`tlc.ops.pool.replicate_to` places them (``(H - gh) // 2`` rows above, likewise columns);
    with ``x`` (..., H, W) and ``op`` "mul" / "add", ``x * spread`` / ``x + spread`` without
    building the spread map. Leading dims of ``gate`` and ``x`` must match; one dtype. Each output
    is the value (product, sum) the unfused torch form gives, bit for bit.
    """
    h, w = size
    gh, gw = gate.shape[-2:]
    lead = gate.shape[:-2]
    gate = gate.contiguous()
    out = torch.empty((*lead, h, w), dtype=gate.dtype, device=gate.device)
    planes = lead.numel()
    if planes == 0 or h * w == 0:
        return out
    source = gate if x is None else x.contiguous()
    rows, cols = 8, 128
    grid = (planes, triton.cdiv(h, rows), triton.cdiv(w, cols))
    with _launching_on(gate):
        _spread_valid[grid](source, gate, out, h, w, gh, gw, (h - gh) // 2, (w - gw) // 2,
                            OP=_SPREAD_OPS[op], ROWS=rows, COLS=cols)  # fmt: skip
    return out
