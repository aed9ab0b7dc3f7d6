"""Small helpers shared by the ops: argument checks and the accumulation dtype."""

from __future__ import annotations

import contextlib
import operator
import sys
from collections.abc import Iterator

import torch

Pair = tuple[int, int]


def as_pair(value: int | tuple[int, int] | list[int], name: str) -> Pair:
    """Return ``(a, b)`` from an int or a pair of ints, each at least 1."""
    items = (value, value) if not isinstance(value, (tuple, list, torch.Size)) else tuple(value)
    try:
        if len(items) != 2 or any(isinstance(v, bool) for v in items):
            raise TypeError
        # Ints pass as they are: a symbolic size (export/compile: a window clamped to the map;
        # dynamo sees it as an int) would be fixed to its traced value by operator.index.
        pair = tuple(v if isinstance(v, (int, torch.SymInt)) else operator.index(v) for v in items)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be at least 1 on both axes, got {pair}")
    return pair


def check_feature_map(x: torch.Tensor, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a floating (N, C, H, W) tensor with H, W >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have H, W >= 1, got {tuple(x.shape)}")


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype local sums are accumulated in.

    float64 everywhere it exists: float32 prefix sums over a 4K map reach ~1e8, where one float32
    step is 8, so window differences lose four or more digits. Apple's MPS has no float64.
    """
    return torch.float32 if x.device.type == "mps" else torch.float64


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype elementwise work is done in: at least float32, so half inputs keep their digits."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


# --- Tracing guard (export: ONNX, torch.export, torch.compile) -------------------------------------
def centring_means(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """float64 means of ``x`` over ``dims`` to centre the CPU kernels' float64 sums by: any centre
    near the mean keeps their digits, so the sum runs in float32 for half and float32 inputs (a
    float64 sum of float32 values took 57 ms of a 16-channel 720p map; the kernels 24 ms), and
    again in float64 only where float32 overflowed (or ``x`` holds NaN / inf)."""
    count = 1
    for d in dims:
        count *= x.shape[d]
    means = x.sum(dim=dims, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32).double() / count
    if not bool(means.isfinite().all()):
        means = x.sum(dim=dims, dtype=torch.float64) / count
    return means


def tracing() -> bool:
    """True while torch.compile, torch.export or an ONNX exporter traces the ops.

    Sizes may then be symbolic: the ops take their branch-free forms (valid for every size, so a
    Python branch on the size is not frozen into the graph) and never the numba kernel, which
    cannot run on the tracer's fake tensors.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    # Only consult torch.onnx when it was imported: no ONNX export can be under way otherwise.
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


@contextlib.contextmanager
def unseen_by_tlc_modes(*tensors: torch.Tensor) -> Iterator[None]:
    """Run the block without torch function modes when every active one is tlc's own and says
    (attribute ``ignores_tlc_ops = True``) that the torch calls of tlc's local ops are none of its
    business: for local ops that make many small calls (the local attention's block loop), each
    of which such a mode would otherwise look at in Python. Not while tracing, with modes of
    anyone else's, or with tensor subclasses among ``tensors`` (disabling torch functions would
    change what their calls do)."""
    depth = torch._C._len_torch_function_stack()
    if (
        depth == 0
        or tracing()
        or any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors)
        or not all(getattr(torch._C._get_function_stack_at(i), "ignores_tlc_ops", False) for i in range(depth))
    ):
        yield
        return
    with torch._C.DisableTorchFunction():
        yield


def cpu_kernel_applies(*tensors: torch.Tensor) -> bool:
    """Whether a compiled CPU kernel (numba) may compute on ``tensors``: all on the CPU, none
    needing gradients, not traced (export/compile trace fake tensors, which numba cannot read)."""
    return not tracing() and all(
        t.device.type == "cpu" and not (torch.is_grad_enabled() and t.requires_grad) for t in tensors
    )
