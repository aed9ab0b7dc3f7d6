"""Chains of elementwise steps computed in one pass over memory.

A gate written by hand on local statistics (SRM's ``mean * w0 + sqrt(var + eps) * w1`` then batch
norm, IMDN's ``sqrt(var) + mean``) is a chain of elementwise calls on maps of one value per channel
and window position: 13 M floats for 16 channels at 720p, far larger than the caches, so torch
spends a pass over memory on every call. :func:`evaluate_chain` runs the whole chain a block of a
row at a time (a CPU kernel; torch calls elsewhere): only the chain's inputs and its result cross
memory. Every step is one IEEE operation per element, the one the torch call computes, so the
numbers are the ones the calls compute one after the other (the square root correctly rounded,
as torch's is on the few pooled values the local ones stand in for).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._chain_kernels import ABS, ADD, ADDCMUL, CHAIN_BLOCK, DIV, MUL, NEG, SQRT, SUB, chain_rows_kernel
from ._common import cpu_kernel_applies

#: The steps a chain may hold: name -> (operand count, opcode of the CPU kernel).
STEPS: dict[str, tuple[int, int]] = {
    "add": (2, ADD),  # a + b
    "sub": (2, SUB),  # a - b
    "mul": (2, MUL),  # a * b
    "div": (2, DIV),  # a / b
    "sqrt": (1, SQRT),
    "neg": (1, NEG),
    "abs": (1, ABS),
    "addcmul": (3, ADDCMUL),  # a + b * c, rounded once (torch.addcmul on the CPU)
}

_TORCH = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "sqrt": torch.sqrt,
    "neg": torch.neg, "abs": torch.abs, "addcmul": torch.addcmul,
}

# Inputs the CPU kernel takes at most (chains reading more run call by call).
_KERNEL_INPUTS = 4


@dataclass(frozen=True)
class ChainStep:
    """One step of a chain: ``op`` (a key of :data:`STEPS`) on ``operands``, numbered as
    :func:`evaluate_chain` says."""

    op: str
    operands: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.op not in STEPS:
            raise ValueError(f"unknown chain step {self.op!r}; one of {sorted(STEPS)}")
        if len(self.operands) != STEPS[self.op][0]:
            raise ValueError(f"{self.op} takes {STEPS[self.op][0]} operands, not {len(self.operands)}")


def _check(values: Sequence[torch.Tensor], constants: torch.Tensor, steps: Sequence[ChainStep]) -> tuple[int, int]:
    if not values:
        raise ValueError("a chain needs at least one input map")
    if not steps:
        raise ValueError("a chain needs at least one step")
    d, g = values[0].shape
    if any(v.shape != (d, g) for v in values):
        raise ValueError(f"every input must be (D, G) = {(d, g)}, not {[tuple(v.shape) for v in values]}")
    if constants.dim() != 2 or constants.shape[1] != d:
        raise ValueError(f"constants must be (K, {d}), not {tuple(constants.shape)}")
    dtypes = {v.dtype for v in values} | {constants.dtype}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ValueError(f"inputs and constants must share one floating dtype, not {sorted(map(str, dtypes))}")
    available = len(values) + constants.shape[0]
    for s, step in enumerate(steps):
        if any(not 0 <= i < available + s for i in step.operands):
            raise ValueError(f"step {s} ({step.op}) reads {step.operands}: only operands 0..{available + s - 1} exist")
    return d, g


def kernel_arguments(values: Sequence[torch.Tensor], constants: torch.Tensor, steps: Sequence[ChainStep]) -> tuple | None:
    """The chain as the CPU kernels take it (``_chain_kernels``' programs): its four input arrays
    (the unused slots repeat the first), constants (K, D) and program (S, 4) as numpy arrays; None
    where no kernel computes it (no numba, more than four inputs, not float32 / float64, autograd,
    tracing, not on the CPU). ``values``, ``constants``, ``steps``: checked as
    :func:`evaluate_chain` says."""
    _check(values, constants, steps)
    if (
        chain_rows_kernel is None
        or len(values) > _KERNEL_INPUTS
        or values[0].dtype not in (torch.float32, torch.float64)
        or not cpu_kernel_applies(*values, constants)
    ):
        return None
    inputs = [v.contiguous().numpy() for v in values]
    inputs += [inputs[0]] * (_KERNEL_INPUTS - len(inputs))  # unused slots
    program = torch.tensor(
        [[STEPS[s.op][1], *(i if i < len(values) else i - len(values) + _KERNEL_INPUTS for i in s.operands),
          *([0] * (3 - len(s.operands)))] for s in steps],
        dtype=torch.int64,
    )
    return (*inputs, constants.contiguous().numpy(), program.numpy())


def evaluate_chain(
    values: Sequence[torch.Tensor], constants: torch.Tensor, steps: Sequence[ChainStep], out: torch.Tensor | None = None
) -> torch.Tensor:
    """The last of ``steps``, each element through the whole chain.

    Args:
        values: V input maps (D, G): D rows (e.g. channels) of G values (e.g. window positions).
        constants: (K, D): K constants of one value per row (a per-channel weight, a scalar
            repeated), K may be 0. Same dtype as ``values``.
        steps: the chain, in order. Operand i names ``values[i]`` for i < V, constant i - V for
            i < V + K, else the result of step i - V - K (an earlier step).
        out: (D, G) tensor the result is written into (any strides), or None for a new one.

    Returns:
        (D, G): the last step's result, each element through the IEEE operations the torch calls
        (``torch.add``, ..., ``torch.addcmul``) make one after the other on the same maps: the
        same bits, but for the square root, correctly rounded in the CPU kernel where torch's
        on large or strided maps (its vector library's) may be one unit in the last place off.
    """
    d, g = _check(values, constants, steps)
    dtype = values[0].dtype
    if out is not None and (out.shape != (d, g) or out.dtype != dtype or out.device != values[0].device):
        raise ValueError(f"out must be a ({d}, {g}) {dtype} tensor on {values[0].device}")
    arguments = kernel_arguments(values, constants, steps) if out is None or cpu_kernel_applies(out) else None
    if arguments is not None:
        target = out if out is not None and out.is_contiguous() else torch.empty((d, g), dtype=dtype)
        units = d * -(-g // CHAIN_BLOCK)
        tasks = max(1, min(units, 4 * torch.get_num_threads()))
        chain_rows_kernel(*arguments, tasks, target.numpy())
        if out is not None and target is not out:
            out.copy_(target)
        return target if out is None else out
    slots: list[torch.Tensor] = [*values, *constants[:, :, None].unbind(0)]
    for step in steps:
        slots.append(_TORCH[step.op](*(slots[i] for i in step.operands)))
    result = slots[-1].expand(d, g)
    if out is None:
        return result.clone() if result.data_ptr() in {v.data_ptr() for v in values} or result.stride(1) == 0 else result
    return out.copy_(result)


__all__ = ["STEPS", "ChainStep", "evaluate_chain", "kernel_arguments"]
