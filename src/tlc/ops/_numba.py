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


def _fused_multiply_add_stub(a, b, c):  # pragma: no cover (numba's intrinsic stands in)
    """a * b + c rounded once (compiled code only)."""
    raise NotImplementedError("fused_multiply_add runs in numba-compiled kernels only")


fused_multiply_add = _fused_multiply_add_stub
if njit is not None:
    from numba.extending import intrinsic

    @intrinsic
    def fused_multiply_add(typingctx, a, b, c):  # noqa: F811 (compiled kernels call it)
        """``a * b + c`` rounded once (llvm.fma), for kernels whose numbers must be those of
        torch's CPU kernels that fuse it (addcmul, addcmul_), whatever numba contracts itself."""
        if not (a == b == c):
            return None

        def codegen(context, builder, signature, args):
            return builder.fma(*args)

        return a(a, b, c), codegen


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


__all__ = ["fused_multiply_add", "njit", "parallel_kernel", "prange"]
