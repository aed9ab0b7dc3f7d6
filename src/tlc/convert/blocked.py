"""Chains of elementwise calls evaluated a block of columns at a time.

A gate written by hand on pooled statistics (SRM's ``mean * w0 + sqrt(var + eps) * w1`` and batch
norm, IMDN's ``sqrt(var) + mean``) is a chain of elementwise calls. Followed at full resolution,
each call reads and writes maps of one value per channel and window position (13 M floats for 16
channels at 720p, far larger than the caches): the chain costs a pass over memory a call. Evaluated
a block of positions at a time, every intermediate stays in cache and only the chain's inputs and
its result cross memory. Each element goes through the same calls, so the numbers are the ones the
unblocked chain computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# About 1 MB of float32 per block and value: a chain's intermediates stay in the L2/L3 caches,
# and a block is large enough for torch to split it among threads.
BLOCK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Slot:
    """An argument of a :class:`Step` that is a chain value: ``index`` counts the chain's inputs
    first, then its steps' results."""

    index: int


@dataclass(frozen=True)
class Step:
    """``func(*args, **kwargs)`` with every :class:`Slot` among ``args`` (top level) replaced by a
    block of that value."""

    func: Callable
    args: tuple
    kwargs: dict


def _bound(value: Any, values: list[torch.Tensor]) -> Any:
    return values[value.index] if isinstance(value, Slot) else value


def evaluate_blocked(inputs: list[torch.Tensor], steps: list[Step], out: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """The last of ``steps`` into ``out``, every step computed a block of columns at a time.

    Args:
        inputs: (D, G) tensors (values per channel row and position column) or (D, 1) ones
            broadcast along the positions (per-channel constants), or 0-d tensors.
        steps: elementwise calls in order; a step's :class:`Slot` arguments name inputs or
            earlier steps. Each step's result on (D, S) blocks must be (D, S).
        out: (D, G), the last step's result is written here (any strides).
        block: positions per block; by default about :data:`BLOCK_ELEMENTS` values per block.

    Returns:
        ``out``.
    """
    if not steps:
        raise ValueError("no steps to evaluate")
    d, g = out.shape
    step_size = block if block is not None else max(256, BLOCK_ELEMENTS // max(d, 1))
    for start in range(0, g, step_size):
        stop = min(g, start + step_size)
        values = [t if t.dim() < 2 or t.shape[1] == 1 else t[:, start:stop] for t in inputs]
        for step in steps:
            args = tuple(_bound(a, values) for a in step.args)
            kwargs = {k: _bound(v, values) for k, v in step.kwargs.items()}
            values.append(step.func(*args, **kwargs))
        result = values[-1]
        if tuple(result.shape) != (d, stop - start):
            raise ValueError(f"a step gave {tuple(result.shape)} for a ({d}, {stop - start}) block")
        out[:, start:stop].copy_(result)
    return out


__all__ = ["BLOCK_ELEMENTS", "Slot", "Step", "evaluate_blocked"]
