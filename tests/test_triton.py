"""The Triton kernels of the local mean (tlc.ops._triton), checked without a GPU.

Under ``TRITON_INTERPRET=1`` Triton runs kernels on CPU tensors in numpy; the variable must be set
before the kernels are defined, so the checks run in a fresh interpreter. On a CUDA machine
tests/test_pool.py's cuda cases and bench/gpu_check.py run the compiled kernels themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

SRC = Path(__file__).resolve().parents[1] / "src"

# Triton 3.6's interpreter turns kernel scalars into 1-element arrays and converts them with
# int(), which numpy >= 2.4 refuses for arrays of one dimension: take the element instead.
SCRIPT_HEAD = """
import os
os.environ["TRITON_INTERPRET"] = "1"
import numpy as np
import triton.runtime.interpreter as interpreter
_patch = interpreter._patch_lang_tensor
def _index_fix(tensor, scope):
    _patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
interpreter._patch_lang_tensor = _index_fix
import torch
from tlc.ops._triton import triton_local_mean, triton_spread
"""


def run_interpreted(body: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(SRC.parent)])}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT_HEAD + textwrap.dedent(body)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_interpreted_kernels_match_brute_force(tmp_path):
    # Odd and non-square maps, batch 2, windows of one row / column / the whole axis, several
    # chunks of the column kernel, every dtype; valid windows and the replicated map.
    # (shape, window, rows per chunk of the column kernel, columns per step of the row kernel)
    cases = [
        ((2, 3, 11, 14), (4, 5), None, None),
        ((1, 2, 13, 9), (6, 9), 3, 2),  # a window as wide as the map; chunks of 3 output rows
        ((1, 1, 7, 5), (1, 2), 2, None),
        ((2, 1, 9, 12), (9, 1), None, 4),  # one valid row; steps of 4 columns
        ((1, 1, 1, 6), (1, 4), None, None),
        ((1, 2, 6, 23), (3, 7), None, 4),  # sums, left and right bands over several steps
    ]
    torch.manual_seed(0)
    inputs = {i: torch.randn(shape, dtype=torch.float64) * 3 + 1 for i, (shape, *_) in enumerate(cases)}
    torch.save({"inputs": inputs, "cases": cases}, tmp_path / "cases.pt")
    run_interpreted(f"""
        data = torch.load({str(tmp_path / "cases.pt")!r})
        results = {{}}
        for i, (shape, window, chunk, tile) in enumerate(data["cases"]):
            for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                x = data["inputs"][i].to(dtype)
                for valid in (False, True):
                    results[i, str(dtype), valid] = triton_local_mean(
                        x, window, valid_only=valid, chunk_rows=chunk, row_tile=tile)
            x = data["inputs"][i].float()  # window sums of float32 values, in float64
            results[i, "sums"] = triton_local_mean(x, window, valid_only=True, sums=True, dtype=torch.float64,
                                                   chunk_rows=chunk, row_tile=tile)
        torch.save(results, {str(tmp_path / "out.pt")!r})
    """)
    results = torch.load(tmp_path / "out.pt")
    from .test_pool import brute_local_mean

    for i, (shape, window, *_) in enumerate(cases):
        x = inputs[i].float()
        h, w = shape[-2:]
        kh, kw = window
        brute_sums = torch.stack(
            [
                torch.stack([x[..., a : a + kh, b : b + kw].double().sum((-2, -1)) for b in range(w - kw + 1)], -1)
                for a in range(h - kh + 1)
            ],
            -2,
        )
        sums = results[i, "sums"]
        assert sums.dtype == torch.float64 and sums.shape == brute_sums.shape
        torch.testing.assert_close(sums, brute_sums, rtol=1e-13, atol=1e-12)
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            x = inputs[i].to(dtype)
            full = brute_local_mean(x, window)  # float64 means of the rounded inputs
            kh, kw = window
            top, left = (kh - 1) // 2, (kw - 1) // 2
            valid = full[..., top : top + shape[2] - kh + 1, left : left + shape[3] - kw + 1]
            for is_valid, ref in ((False, full), (True, valid)):
                out = results[i, str(dtype), is_valid]
                assert out.dtype == dtype and out.shape == ref.shape
                # The only error: the final rounding to the dtype (float64 sums throughout), half a
                # unit in the last place for float32; half outputs are rounded via float32, which
                # can add a second rounding (one unit at most).
                spacing = torch.finfo(dtype).eps * torch.maximum(ref.abs(), out.double().abs())
                bound = (0.5 + 1e-6 if dtype == torch.float32 else 1.0) * spacing
                if dtype == torch.float64:  # running float64 sums: error relative to the values summed
                    bound = torch.full_like(ref, 1e-13)
                assert ((out.double() - ref).abs() <= bound).all(), (shape, window, dtype, is_valid)
                if not is_valid:  # the replicated bands: the edge windows' values, bit for bit
                    right = left + shape[3] - kw + 1
                    assert torch.equal(out[..., :left], out[..., left : left + 1].expand_as(out[..., :left]))
                    assert torch.equal(out[..., right:], out[..., right - 1 : right].expand_as(out[..., right:]))


def spread_reference(gate: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Edge replication by index: row i takes valid row clamp(i - (H - gh) // 2), likewise columns."""
    (h, w), (gh, gw) = size, gate.shape[-2:]
    rows = (torch.arange(h) - (h - gh) // 2).clamp(0, gh - 1)
    cols = (torch.arange(w) - (w - gw) // 2).clamp(0, gw - 1)
    return gate.index_select(-2, rows.to(gate.device)).index_select(-1, cols.to(gate.device))


SPREAD_CASES = [((2, 3, 11, 14), (4, 9)), ((1, 2, 9, 130), (9, 1)), ((2, 1, 5, 5), (5, 5)), ((2, 2, 3, 7, 6), (1, 2))]
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def test_interpreted_spread_is_the_replicated_gate_and_its_product_bit_for_bit(tmp_path):
    torch.manual_seed(1)
    data = {}
    for i, (shape, valid) in enumerate(SPREAD_CASES):
        data[i] = (torch.randn(shape, dtype=torch.float64), torch.randn(*shape[:-2], *valid, dtype=torch.float64))
    torch.save(data, tmp_path / "spread.pt")
    run_interpreted(f"""
        data = torch.load({str(tmp_path / "spread.pt")!r})
        results = {{}}
        for i, (x, gate) in data.items():
            for dtype in {DTYPES!r}:
                xd, gd = x.to(dtype), gate.to(dtype)
                results[i, str(dtype)] = [triton_spread(gd, x.shape[-2:])] + [
                    triton_spread(gd, x.shape[-2:], xd, op) for op in ("mul", "add")]
        torch.save(results, {str(tmp_path / "spread_out.pt")!r})
    """)
    results = torch.load(tmp_path / "spread_out.pt")
    for i, (x64, gate64) in data.items():
        for dtype in DTYPES:
            x, gate = x64.to(dtype), gate64.to(dtype)
            full = spread_reference(gate, x.shape[-2:])
            spread, product, total = results[i, str(dtype)]
            assert torch.equal(spread, full)
            if dtype == torch.bfloat16:
                # The interpreter rounds float32 to bfloat16 toward zero (a GPU to nearest, as
                # torch): the float32 product and sum, truncated.
                def cut(t):
                    return (t.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)

                assert torch.equal(product, cut(x.float() * full.float()))
                assert torch.equal(total, cut(x.float() + full.float()))
            else:
                assert torch.equal(product, x * full) and torch.equal(total, x + full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernels_match_torch():
    from tlc.ops._triton import triton_local_mean as local_mean_kernel
    from tlc.ops._triton import triton_spread as spread_kernel

    from .test_pool import brute_local_mean

    for (shape, valid), dtype in ((c, d) for c in SPREAD_CASES for d in DTYPES):
        x, gate = torch.randn(shape, device="cuda").to(dtype), torch.randn(*shape[:-2], *valid, device="cuda").to(dtype)
        full = spread_reference(gate, shape[-2:])
        assert torch.equal(spread_kernel(gate, shape[-2:]), full)
        assert torch.equal(spread_kernel(gate, shape[-2:], x, "mul"), x * full)
        assert torch.equal(spread_kernel(gate, shape[-2:], x, "add"), x + full)
    for dtype in DTYPES[:3]:
        x = torch.randn(2, 3, 37, 54, dtype=torch.float64)
        out = local_mean_kernel(x.cuda().to(dtype), (9, 13)).cpu().double()
        ref = brute_local_mean(x.to(dtype), (9, 13))
        bound = (0.5 + 1e-6 if dtype == torch.float32 else 1.0) * torch.finfo(dtype).eps * ref.abs()
        assert ((out - ref).abs() <= bound.clamp_min(torch.finfo(dtype).tiny)).all()


def test_kernels_compile_for_cuda_gpus():
    """Every kernel, in every dtype it is launched with, compiled down to machine code (Triton's
    bundled ptxas) for Turing, Ampere and Hopper GPUs: a kernel the GPU compiler refuses fails
    here, on a machine without a GPU, not at a user's first forward."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tlc.ops import _triton as kernels

    ints = dict.fromkeys(("h", "w", "valid_h", "valid_w", "kh", "kw", "chunk_rows", "out_h", "out_w"), "i32")
    ints.update(dict.fromkeys(("top", "left", "area", "gh", "gw"), "i32"))

    def signature(fn, pointers: dict) -> dict:
        names = fn.arg_names
        return {n: pointers[n] if n in pointers else "constexpr" if n.isupper() else ints[n] for n in names}

    cases = []
    for dtype in ("fp32", "fp16", "bf16", "fp64"):
        cases.append(
            (kernels._column_window_sums, {"x_ptr": f"*{dtype}", "sums_ptr": "*fp64"}, {"ROWS": 8, "COLS": 128}, 4)
        )
        for tile, warps in ((512, 8), (256, 4)):  # as launched: 8 warps from 512 columns a step
            cases.append(
                (kernels._row_window_means, {"sums_ptr": "*fp64", "out_ptr": f"*{dtype}"}, {"TILE": tile}, warps)
            )
    for dtype in ("fp32", "fp16", "bf16", "fp64"):
        for op in (0, 1, 2):
            pointers = {"x_ptr": f"*{dtype}", "gate_ptr": f"*{dtype}", "out_ptr": f"*{dtype}"}
            cases.append((kernels._spread_valid, pointers, {"OP": op, "ROWS": 8, "COLS": 128}, 4))
    for capability in (75, 80, 90):
        for fn, pointers, constants, warps in cases:
            source = ASTSource(fn=fn, signature=signature(fn, pointers), constexprs=constants)
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": warps})
            assert compiled.asm["cubin"], (fn.__name__, capability)
