"""glibc's malloc told to keep freed memory for the next buffers, instead of handing it back.

On Linux, glibc maps every buffer above its mmap threshold (at most 32 MB) afresh from the kernel
and unmaps it when freed, so the next buffer of that size starts with untouched pages and its first
write faults once per 4 KB page. A 720p forward of a restoration network on the CPU allocates
hundreds of such temporaries: measured here (2 threads, 16-channel networks of the test corpus),
the same forwards took 1.5-3x as long as with the memory kept (RCAN-style 1816 -> 593 ms, a
NAFNet-style 705 -> 423 ms), and the time from one forward to the next varied more.

:func:`keep_freed_memory` sets two of glibc's malloc options (``mallopt``): no ``mmap`` for
allocations (they come from the heap, which is reused), and a trim threshold of 2 GiB (free
memory at the top of the heap is handed back only above that). The cost: the process keeps up to
that much freed memory resident between forwards, and its resident size stays near its peak.
The numbers computed are the same; only where the buffers live changes.

Not on by default: with every buffer on the one heap, its free gaps fragment, and at 2160x3840 the
peak resident size measured here rose 1.5-1.9x (bench/memory.py: a NAFNet-style network
5410 -> 10228 MiB plain). The ``tlc`` command sets it when ``TLC_KEEP_FREED_MEMORY=1``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: Environment variable: ``1`` has the ``tlc`` command keep freed memory.
KEEP_FREED_MEMORY_VARIABLE = "TLC_KEEP_FREED_MEMORY"

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Free memory at the top of the heap kept at most (bytes): the largest value mallopt takes.
RETAINED_BYTES = 2**31 - 1


def glibc_malloc() -> bool:
    """Whether this process allocates through glibc's malloc (Linux with glibc)."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def keep_freed_memory(retained_bytes: int = RETAINED_BYTES) -> bool:
    """Have glibc's malloc serve every allocation from its heap and keep freed memory for reuse.

    Process-wide and in effect for allocations made after the call (torch's CPU tensors
    included). Does nothing elsewhere than glibc (macOS, Windows, musl).

    Args:
        retained_bytes: free memory at the top of the heap kept before any is handed back to the
            kernel, in bytes, 1 to 2**31 - 1.

    Returns:
        Whether both options were set.
    """
    if not 1 <= retained_bytes <= RETAINED_BYTES:
        raise ValueError(f"retained_bytes must be in 1..{RETAINED_BYTES}, not {retained_bytes}")
    if not glibc_malloc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, retained_bytes) == 1


def keep_freed_memory_if_asked() -> bool:
    """:func:`keep_freed_memory` when the environment variable ``TLC_KEEP_FREED_MEMORY`` is ``1``
    (for the ``tlc`` command); any other value or none leaves glibc as it is.

    Returns:
        Whether it was set.

    Raises:
        ValueError: the variable holds something other than ``0``, ``1`` or nothing.
    """
    asked = os.environ.get(KEEP_FREED_MEMORY_VARIABLE, "").strip()
    if asked not in ("", "0", "1"):
        raise ValueError(f"{KEEP_FREED_MEMORY_VARIABLE} must be 0 or 1, not {asked!r}")
    return asked == "1" and keep_freed_memory()


__all__ = ["KEEP_FREED_MEMORY_VARIABLE", "RETAINED_BYTES", "glibc_malloc", "keep_freed_memory", "keep_freed_memory_if_asked"]
