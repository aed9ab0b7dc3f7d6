"""The ``tlc`` command asks torch's CPU allocator for transparent huge pages (fewer page faults on
fresh buffers), unless the user set the variable: checked in fresh processes, where torch has not
yet made a large allocation, by the page faults a fresh 64 MB buffer costs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PAGES_OF_64_MB = 64 * 2**20 // 4096

# Runs the command line (help only), then writes a fresh 64 MB tensor and prints the variable and
# the minor page faults that write cost.
PROGRAM = """
import os, resource
from tlc.cli.main import main
main([])
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(16 * 2**20).fill_(1.0)
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_program(variable: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if variable is not None:
        env["THP_MEM_ALLOC_ENABLE"] = variable
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120, check=True)
    value, faults = done.stdout.strip().splitlines()[-1].split()
    return value, int(faults)


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch reads the variable on Linux only")
thp_available = pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="transparent huge pages are off on this machine"
)


@linux_only
def test_the_command_asks_for_huge_pages() -> None:
    value, _ = run_program(None)
    assert value == "1"


@linux_only
def test_the_users_setting_is_kept() -> None:
    value, faults = run_program("0")
    assert value == "0"
    assert faults >= PAGES_OF_64_MB * 0.9  # 4 KB pages: one fault each


@linux_only
@thp_available
def test_huge_pages_spare_the_page_faults() -> None:
    _, faults = run_program(None)
    assert faults < PAGES_OF_64_MB / 8  # 2 MB pages: 32 faults, plus the odd small page


# The local kernels' output buffers (tlc.ops._common.cpu_buffer): large ones from numpy, on huge
# pages; the numbers must not depend on where a buffer came from.

import torch  # noqa: E402

from tlc import ops  # noqa: E402
from tlc.ops import _common  # noqa: E402
from tlc.ops.gate import apply_pointwise, multiply_replicated  # noqa: E402


def test_cpu_buffer_shape_dtype_and_layout() -> None:
    for shape, dtype in [((2, 3, 700, 701), torch.float32), ((1, 2, 900, 700), torch.float64), ((3, 4), torch.float32),
                         ((1, 4, 800, 900), torch.float16), ((1, 4, 800, 900), torch.bfloat16)]:
        t = _common.cpu_buffer(shape, dtype)
        assert t.shape == shape and t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu"
        t.fill_(2.0)  # writable, every element
        assert t.sum(dtype=torch.float64).item() == 2.0 * t.numel()


@linux_only
@thp_available
def test_large_cpu_buffers_fault_once_per_huge_page() -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = _common.cpu_buffer((16 * 2**20,), torch.float32)  # 64 MB
    t.fill_(1.0)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < PAGES_OF_64_MB / 8


def kernel_outputs(x: torch.Tensor) -> list[torch.Tensor]:
    """Every CPU kernel path whose output is a cpu_buffer, on ``x`` (N, C, H, W)."""
    gate = torch.sigmoid(x[..., 5:-4, 7:-6])
    layers = torch.nn.Sequential(torch.nn.Conv2d(x.shape[1], 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(2, x.shape[1], 1))
    torch.manual_seed(0)
    for p in layers.parameters():
        p.data = torch.randn_like(p)
    layers = layers.to(x.dtype)
    return [
        ops.local_mean(x, (9, 13)),
        ops.local_max(x, (9, 13)),
        ops.local_var(x, (9, 13)),
        ops.local_softmax_pool(x, x[:, :1] * 3, (9, 13)),
        ops.local_group_norm(x, 2, (9, 13)),
        multiply_replicated(x, gate),
        apply_pointwise(gate.contiguous(), layers),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_outputs_do_not_depend_on_the_buffers_origin(dtype: torch.dtype, monkeypatch) -> None:
    x = torch.randn(2, 4, 301, 419, generator=torch.Generator().manual_seed(3), dtype=dtype)  # > 4 MB per output
    with torch.inference_mode():
        from_numpy = kernel_outputs(x)
        monkeypatch.setattr(_common, "_HUGE_PAGE_BYTES", 1 << 62)  # every buffer from torch
        from_torch = kernel_outputs(x)
    for a, b in zip(from_numpy, from_torch, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)
