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
from tlc.ops._triton import triton_local_mean
"""


def run_interpreted(body: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(SRC.parent)])}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT_HEAD + textwrap.dedent(body)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_interpreted_kernels_match_brute_force(tmp_path):
    # Odd and non-square maps, batch 2, windows of one row / column / the whole axis, several
    # chunks of the column kernel, every dtype; valid windows and the replicated map.
    cases = [
        ((2, 3, 11, 14), (4, 5), None),
        ((1, 2, 13, 9), (6, 9), 3),  # a window as wide as the map; chunks of 3 output rows
        ((1, 1, 7, 5), (1, 2), 2),
        ((2, 1, 9, 12), (9, 1), None),  # one valid row
        ((1, 1, 1, 6), (1, 4), None),
    ]
    torch.manual_seed(0)
    inputs = {i: torch.randn(shape, dtype=torch.float64) * 3 + 1 for i, (shape, _, _) in enumerate(cases)}
    torch.save({"inputs": inputs, "cases": cases}, tmp_path / "cases.pt")
    run_interpreted(f"""
        data = torch.load({str(tmp_path / "cases.pt")!r})
        results = {{}}
        for i, (shape, window, chunk) in enumerate(data["cases"]):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                x = data["inputs"][i].to(dtype)
                for valid in (False, True):
                    results[i, str(dtype), valid] = triton_local_mean(x, window, valid_only=valid, chunk_rows=chunk)
        torch.save(results, {str(tmp_path / "out.pt")!r})
    """)
    results = torch.load(tmp_path / "out.pt")
    from .test_pool import brute_local_mean

    for i, (shape, window, _) in enumerate(cases):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
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
                assert ((out.double() - ref).abs() <= bound).all(), (shape, window, dtype, is_valid)
