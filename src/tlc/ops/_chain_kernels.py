"""The CPU kernel (numba) of :func:`tlc.ops.chain.evaluate_chain`: a chain of elementwise steps
a block of one row at a time, every intermediate in a scratch row that stays in the first-level
cache. None without numba."""

from __future__ import annotations

import numpy as np

from ._numba import fused_multiply_add, njit, parallel_kernel, prange

# Opcodes, as :data:`tlc.ops.chain.STEPS` names them (their operand counts there).
ADD, SUB, MUL, DIV, SQRT, NEG, ABS, ADDCMUL = range(8)

#: Values of a row per block: (constants + steps) scratch rows of 1024 float32 stay in L1 / L2.
CHAIN_BLOCK = 1024


def _operand(code, row, start, stop, v0, v1, v2, v3, scratch, n):  # pragma: no cover (compiled by numba)
    """The block of operand ``code``: inputs 0-3 (row ``row``, columns start:stop), else the
    scratch row code - 4 (its first n values)."""
    if code == 0:
        return v0[row, start:stop]
    if code == 1:
        return v1[row, start:stop]
    if code == 2:
        return v2[row, start:stop]
    if code == 3:
        return v3[row, start:stop]
    return scratch[code - 4, :n]


def run_program(program, k_count, row, start, stop, v0, v1, v2, v3, scratch, out, out_row, out_start):  # pragma: no cover
    """Row ``row``, columns start:stop of the chain ``program`` (see :func:`_chain_rows`): every
    step in order, each intermediate in scratch row k_count + s (its first n = stop - start
    values; rows 0..k_count-1 hold the constants, filled by the caller), the last into
    ``out[out_row, out_start : out_start + n]``."""
    n = stop - start
    steps = program.shape[0]
    for s in range(steps):
        op = program[s, 0]
        result = out[out_row, out_start : out_start + n] if s == steps - 1 else scratch[k_count + s, :n]
        a = _operand(program[s, 1], row, start, stop, v0, v1, v2, v3, scratch, n)
        if op == SQRT:
            for j in range(n):
                result[j] = np.sqrt(a[j])
        elif op == NEG:
            for j in range(n):
                result[j] = -a[j]
        elif op == ABS:
            for j in range(n):
                result[j] = np.abs(a[j])
        else:
            b_ = _operand(program[s, 2], row, start, stop, v0, v1, v2, v3, scratch, n)
            if op == ADD:
                for j in range(n):
                    result[j] = a[j] + b_[j]
            elif op == SUB:
                for j in range(n):
                    result[j] = a[j] - b_[j]
            elif op == MUL:
                for j in range(n):
                    result[j] = a[j] * b_[j]
            elif op == DIV:
                for j in range(n):
                    result[j] = a[j] / b_[j]
            else:  # ADDCMUL
                c_ = _operand(program[s, 3], row, start, stop, v0, v1, v2, v3, scratch, n)
                for j in range(n):
                    result[j] = fused_multiply_add(b_[j], c_[j], a[j])


def fill_constants(constants, row, scratch, n):  # pragma: no cover (compiled)
    """Scratch rows 0..K-1 (their first n values) := row ``row``'s K constants."""
    for k in range(constants.shape[0]):
        value = constants[k, row]
        for j in range(n):
            scratch[k, j] = value


def _chain_rows(v0, v1, v2, v3, constants, program, tasks, out):  # pragma: no cover (compiled by numba)
    """out (D, G) = the last step of ``program`` (S, 4: opcode, then up to three operand codes)
    on the inputs v0..v3 (D, G) and ``constants`` (K, D) (one value per row), each element
    through the same IEEE operations as the torch calls the program stands for: add a + b, sub
    a - b, mul a * b, div a / b, sqrt (correctly rounded, as torch on small tensors; on large
    ones its vector library's may differ in the last bit), neg, abs, addcmul a + b * c (fused,
    one rounding, as torch's CPU kernel computes it).

    Operand codes: 0-3 the inputs, 4 + k constant k (a scratch row filled with its value for the
    task's row), 4 + K + s the result of step s. Rows x blocks of CHAIN_BLOCK columns are split
    into ``tasks`` runs, each with its own scratch rows; the last step writes into ``out``."""
    d, g = out.shape
    k_count = constants.shape[0]
    steps = program.shape[0]
    blocks = (g + CHAIN_BLOCK - 1) // CHAIN_BLOCK
    units = d * blocks
    for t in prange(tasks):
        scratch = np.empty((k_count + steps, CHAIN_BLOCK), dtype=out.dtype)
        filled = -1  # the row whose constants the scratch holds
        for u in range(t * units // tasks, (t + 1) * units // tasks):
            row, b = u // blocks, u % blocks
            start = b * CHAIN_BLOCK
            stop = min(g, start + CHAIN_BLOCK)
            if row != filled:
                filled = row
                fill_constants(constants, row, scratch, CHAIN_BLOCK)
            run_program(program, k_count, row, start, stop, v0, v1, v2, v3, scratch, out, row, start)


if njit is not None:  # the helpers compiled first: the kernels inline them
    _operand = njit(inline="always", cache=True)(_operand)
    run_program = njit(inline="always", cache=True)(run_program)
    fill_constants = njit(inline="always", cache=True)(fill_constants)
chain_rows_kernel = parallel_kernel(_chain_rows)

__all__ = [
    "ABS", "ADD", "ADDCMUL", "CHAIN_BLOCK", "DIV", "MUL", "NEG", "SQRT", "SUB", "chain_rows_kernel", "fill_constants",
    "run_program",
]
