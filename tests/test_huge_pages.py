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
