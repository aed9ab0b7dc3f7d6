"""numba, where installed: the one import of it, and parallel kernels that respect torch's threads.

Without numba every op takes its pure-torch path (``njit`` is then None and kernels are None).

numba's OpenMP threading layer sets the process's OpenMP thread count to the CPU count when it
first launches, and torch shares that setting: a process limited to one thread
(``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``) would run every later torch op on all cores.
:func:`parallel_kernel` therefore runs each kernel with numba's thread count set to torch's and
puts torch's count back if the launch changed it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover (numba is a dependency; the torch paths stand in)
    numba = njit = None
    prange = range


def parallel_kernel(function: Callable, **options: object) -> Callable | None:
    """``njit(parallel=True, cache=True, **options)(function)``, run within torch's thread count;
    None without numba."""
    if njit is None:
        return None
    compiled = njit(parallel=True, cache=True, **options)(function)

    def run(*args: object) -> object:
        threads = torch.get_num_threads()
        try:
            wanted = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
            if numba.get_num_threads() != wanted:
                numba.set_num_threads(wanted)
            return compiled(*args)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    run.__wrapped__ = compiled
    run.__doc__ = function.__doc__
    return run


__all__ = ["njit", "parallel_kernel", "prange"]
