"""The ``tlc`` command has glibc keep freed memory (tlc.run.allocator) when asked: checked in
fresh processes (the setting is process-wide) by the page faults a 60 MB buffer costs when it is
made after a 64 MB one was freed. Huge pages are turned off here, so every fresh 4 KB page faults
once. (The second buffer is the smaller: an aligned request of exactly the freed size can miss the
freed block by a few bytes of alignment and take fresh memory at the top of the heap.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tlc.run.allocator import RETAINED_BYTES, glibc_malloc, keep_freed_memory

PAGES_OF_60_MB = 60 * 2**20 // 4096

# Runs the command line (help only) or keep_freed_memory(), then writes a 64 MB tensor, frees it,
# writes a 60 MB one and prints what the setup returned and the page faults of the second write.
PROGRAM = """
import resource, sys
setup = sys.argv[1]
if setup == "command":
    from tlc.cli.main import main
    main([])
    result = None
else:
    from tlc.run.allocator import keep_freed_memory
    result = keep_freed_memory(int(setup))
import torch
torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(15 * 2**20).fill_(2.0)
print(result, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_buffer_faults(setup: str, asked: str | None = None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("TLC_KEEP_FREED_MEMORY", "GLIBC_TUNABLES")}
    env["THP_MEM_ALLOC_ENABLE"] = "0"
    if asked is not None:
        env["TLC_KEEP_FREED_MEMORY"] = asked
    done = subprocess.run([sys.executable, "-c", PROGRAM, setup], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    result, faults = done.stdout.strip().splitlines()[-1].split()
    return result, int(faults)


on_glibc = pytest.mark.skipif(not glibc_malloc(), reason="glibc's malloc only")


@on_glibc
def test_asked_the_command_keeps_freed_memory() -> None:
    _, faults = second_buffer_faults("command", asked="1")
    assert faults < PAGES_OF_60_MB / 8  # the first buffer's pages, reused


@on_glibc
@pytest.mark.parametrize("asked", [None, "0"])
def test_unasked_the_command_leaves_glibc_as_it_is(asked: str | None) -> None:
    _, faults = second_buffer_faults("command", asked=asked)
    assert faults >= PAGES_OF_60_MB * 0.9  # mapped afresh: one fault per 4 KB page


def test_a_bad_setting_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tlc.cli.main import main

    monkeypatch.setenv("TLC_KEEP_FREED_MEMORY", "yes")
    assert main([]) == 2
    assert "TLC_KEEP_FREED_MEMORY must be 0 or 1, not 'yes'" in capsys.readouterr().err


@on_glibc
def test_keep_freed_memory_says_it_applied() -> None:
    result, faults = second_buffer_faults(str(RETAINED_BYTES))
    assert result == "True"
    assert faults < PAGES_OF_60_MB / 8


@pytest.mark.parametrize("retained", [0, -1, RETAINED_BYTES + 1])
def test_retention_out_of_range_is_refused(retained: int) -> None:
    with pytest.raises(ValueError, match="retained_bytes"):
        keep_freed_memory(retained)


def test_nothing_is_set_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not glibc_malloc()
    assert keep_freed_memory() is False
