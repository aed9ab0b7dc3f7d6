"""Export of (converted) models to ONNX with dynamic batch, height and width.

Under ``torch.export`` (which the ONNX exporter runs) and ``torch.compile`` the local ops take
branch-free torch forms (:func:`tlc.ops._common.tracing`): the window is clamped to the map with
``torch.sym_min``, sums come from zero-padded float64 prefix sums and the edge replication is one
replicate pad, so a single graph is right at every size. The numba kernel is never traced.

A graph that holds only for some sizes (a Python branch on the image size, which ``torch.export``
resolves for the traced size and records only as a narrowed range) is refused
(:class:`ExportError`). The file is written atomically, after onnxruntime (when installed) has
reproduced PyTorch on two input sizes.

Needs the ``export`` extra: ``pip install 'tlc[export]'`` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .nn import LocalAvgPool2d
from ._util import Hint, Pair, as_pair, atomic_write, eval_mode, hinted, one_line, output_tensors

INPUT_NAME = "image"


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file does not reproduce PyTorch."""


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the .onnx file.
        opset: ONNX opset of the default domain.
        input_name: name of the (N, C, H, W) input; N, H and W are dynamic (N only with
            ``dynamic_batch``).
        output_names: one name per output tensor, in the model's order.
        checked_shapes: input shapes onnxruntime was run on (empty when not checked).
        max_abs_diff: max |onnxruntime - PyTorch| over those runs and outputs (None: not checked).
        seconds: wall time of tracing, conversion and writing (not the check).
    """

    path: Path
    opset: int
    input_name: str
    output_names: tuple[str, ...]
    checked_shapes: tuple[tuple[int, int, int, int], ...]
    max_abs_diff: float | None
    seconds: float

    def __str__(self) -> str:
        outputs = ", ".join(self.output_names)
        line = f"ONNX opset {self.opset}: {self.path} ({self.input_name} N x C x H x W -> {outputs}), {self.seconds:.1f} s"
        if self.max_abs_diff is None:
            return line + "; not checked (onnxruntime not installed)"
        shapes = ", ".join("x".join(map(str, s)) for s in self.checked_shapes)
        return line + f"; onnxruntime vs PyTorch on {shapes}: max abs diff {self.max_abs_diff:.2e}"


def _output_tensors(output: object) -> list[torch.Tensor]:
    """The tensors a model returns: one tensor, or a flat list/tuple of them (HINet's stages); ONNX
    outputs are a flat list, so nothing nested."""
    flat = isinstance(output, (list, tuple)) and output and all(isinstance(t, torch.Tensor) for t in output)
    if isinstance(output, torch.Tensor) or flat:
        return list(output_tensors(output))
    raise ExportError(f"the model must return a tensor or a list/tuple of tensors, got {type(output).__name__}")


def _example(
    model: nn.Module, shape: tuple[int, int, int], in_channels: int | None, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, int]:
    """A random (N, C, h, w) input the model runs on, and its number of outputs.

    Without ``in_channels``, C is tried among the convolutions' input channels in module order
    (the first registered convolution is not always the input's: HINet's encoders come first).
    """
    convs = [m.in_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    candidates = [in_channels] if in_channels is not None else list(dict.fromkeys(convs))
    if not candidates:
        raise ExportError("cannot tell the model's input channels (it has no convolution): pass in_channels")
    generator = torch.Generator().manual_seed(0)
    for channels in candidates:
        x = torch.rand(shape[0], channels, *shape[1:], generator=generator).to(device=device, dtype=dtype)
        try:
            with torch.no_grad():
                return x, len(_output_tensors(model(x)))
        except RuntimeError as err:
            if in_channels is not None or "channels" not in str(err):
                raise ExportError(f"the model fails on a {tuple(x.shape)} input: {one_line(err)}") from err
    raise ExportError(f"the model runs on none of {candidates} input channels: pass in_channels")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notices about optional packages (torchvision's ops are not used)
    and the deprecation notices torch raises inside its own tracing."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _check_sizes(size: Pair) -> list[tuple[int, int]]:
    """Second check sizes, first that the model runs at: larger, so windows smaller than the map
    are exercised, and odd on both axes (a parity branch shows); doubled for models that need
    even sizes."""
    return [(2 * size[0] + 1, 2 * size[1] + 3), (2 * size[0], 2 * size[1])]


def _check_arguments(
    model: nn.Module, path: str | os.PathLike, example_size: int | Pair, overwrite: bool
) -> tuple[Path, Pair, torch.device, torch.dtype]:
    """The destination, the example size and the model's device and dtype, checked before any tracing."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give the .onnx file to write")
    if path.exists() and not overwrite:
        raise hinted(FileExistsError, Hint("export_onnx", "overwrite=True", f"{path} exists (pass ", " to replace it)"))
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    size = as_pair(example_size, "example_size")
    if min(size) < 2:
        raise hinted(ValueError, Hint("export_onnx", "example_size", "",
                                      f" must be at least 2x2 (size 1 is traced as a constant), got {size}"))
    fast = next((name for name, m in model.named_modules() if isinstance(m, LocalAvgPool2d) and m.fast), None)
    if fast is not None:
        raise hinted(ExportError, Hint("convert", "fast=False", f"{fast or 'the model'} uses the approximate fast_imp "
                                       "pooling, whose subsampling depends on the image size; to export, convert "
                                       "with "))
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    if dtype not in (torch.float32, torch.float64, torch.float16):
        raise ExportError(f"export a float32, float64 or float16 model, not {dtype} (onnxruntime lacks most bfloat16 kernels)")
    return path, size, device, dtype


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_size: int | Pair = (64, 64),
    in_channels: int | None = None,
    opset: int = 18,
    dynamic_batch: bool = True,
    overwrite: bool = False,
    check: bool = True,
    tolerance: float = 1e-4,
) -> OnnxExport:
    """Export a model (typically converted by :func:`tlc.convert`) to ONNX with dynamic N, H, W.

    The model is traced in eval mode (flags restored afterwards) on a random (2, C, h, w) input
    of ``example_size`` in the model's dtype and device; the graph is valid for every H, W >= 2
    the model itself accepts (NAFNet and HINet pad internally, so any size). With ``check``
    and onnxruntime installed, the file is run on the example and on a larger odd size (batch 1;
    2h x 2w if the model rejects odd sizes) and must match PyTorch within ``tolerance`` before it
    is written.

    Args:
        model: module taking one (N, C, H, W) image tensor and returning a tensor or a list of
            tensors. Approximate ``fast=True`` pooling cannot be exported (its subsampling
            depends on the size).
        path: destination file; never overwritten unless ``overwrite``; written atomically.
        example_size: (h, w) of the tracing input, in pixels (any size the model runs at).
        in_channels: C of the input; default: the first of the convolutions' input channels
            the model runs with.
        opset: ONNX opset (18 runs on onnxruntime >= 1.14).
        dynamic_batch: make N dynamic too (traced at N=2); False fixes N at 1.
        overwrite: replace an existing file.
        check: compare onnxruntime with PyTorch before writing.
        tolerance: max abs difference the check accepts.

    Returns:
        :class:`OnnxExport` describing the file (path, names, opset, checked error).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ExportError: the model cannot be traced with dynamic sizes, or the check fails.
    """
    start = time.perf_counter()
    path, size, device, dtype = _check_arguments(model, path, example_size, overwrite)
    try:
        import onnx
        import onnxscript  # noqa: F401 (the exporter needs it; say so up front)
    except ImportError:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install 'tlc[export]'") from None
    batch = 2 if dynamic_batch else 1  # size 1 would be traced as a constant

    dims = {2: torch.export.Dim.DYNAMIC(min=2), 3: torch.export.Dim.DYNAMIC(min=2)}
    if dynamic_batch:
        dims[0] = torch.export.Dim.DYNAMIC
    with atomic_write(path, overwrite=overwrite) as tmp:
        with eval_mode(model), _quiet_exporter():
            example, outputs = _example(model, (batch, *size), in_channels, device, dtype)
            channels, names = example.shape[1], _output_names(outputs)
            try:
                # As the ONNX exporter itself traces: Python-level (strict=False), and size-oblivious
                # so that a size of 1 somewhere (a window covering its map) is not a special case.
                with torch.fx.experimental._config.patch(backed_size_oblivious=True):
                    program = torch.export.export(model, (example,), dynamic_shapes=(dims,), strict=False)
            except Exception as err:
                raise ExportError(f"torch.export could not trace the model with dynamic sizes: {one_line(err)}") from err
            _check_sizes_stay_dynamic(program, sorted(dims))
            try:
                onnx_program = torch.onnx.export(
                    program, (example,), input_names=[INPUT_NAME], output_names=list(names),
                    opset_version=opset, dynamo=True, verbose=False, optimize=True,
                )
            except Exception as err:
                raise ExportError(f"the ONNX exporter failed: {one_line(err)}") from err
            onnx_program.save(tmp, external_data=False)
            _name_dynamic_dims(onnx, tmp, sorted(dims))
            seconds = time.perf_counter() - start
            checked: tuple[tuple[int, int, int, int], ...] = ()
            max_diff = None
            if check:
                others = [(1, channels, *hw) for hw in _check_sizes(size)]
                checked, max_diff = _check_onnxruntime(model, tmp, example.shape, others, device, dtype, tolerance)
    return OnnxExport(path, opset, INPUT_NAME, names, checked, max_diff, seconds)


_AXES = {0: "batch", 2: "height", 3: "width"}


def _check_sizes_stay_dynamic(program: torch.export.ExportedProgram, axes: list[int]) -> None:
    """Refuse a trace whose graph holds only for some sizes.

    Dynamic dims that tracing met in a Python branch (``if h > 48``) are silently narrowed or
    fixed by ``torch.export``; the ONNX file has no such check and would be wrong elsewhere.
    """
    from torch.utils._sympy.numbers import int_oo  # the unbounded upper end of a range

    image = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs)
    shape = image.meta["val"].shape
    for axis in axes:
        size = shape[axis]
        limit = 1 if axis == 0 else 2
        ranges = program.range_constraints.get(size.node.expr) if isinstance(size, torch.SymInt) else None
        if ranges is None or ranges.lower > limit or ranges.upper != int_oo:
            found = f"fixed at {size}" if ranges is None else f"valid for {ranges.lower}..{ranges.upper} only"
            raise ExportError(f"the traced graph is {found} in {_AXES[axis]}: the model branches on the image size "
                              "in Python (e.g. the approximate fast_imp pooling or a size check), so no single graph "
                              "fits every size")


def _name_dynamic_dims(onnx, path: Path, axes: list[int]) -> None:
    """Rename the exporter's size symbols (``s45``) to batch/height/width throughout the file."""
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    names = {dims[axis].dim_param: _AXES[axis] for axis in axes if dims[axis].dim_param}
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: names[m.group(1)], dim.dim_param)
    onnx.save(model, str(path))


def _output_names(count: int) -> tuple[str, ...]:
    return ("output",) if count == 1 else tuple(f"output_{i}" for i in range(count))


def _check_onnxruntime(
    model: nn.Module, path: Path, example: torch.Size, others: list[tuple[int, int, int, int]],
    device: torch.device, dtype: torch.dtype, tolerance: float,
) -> tuple[tuple[tuple[int, int, int, int], ...], float | None]:
    """Run the file on random inputs of the example's shape and of the first of ``others`` the
    model accepts; returns those shapes and max |onnxruntime - PyTorch| (None: no onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return (), None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    checked, worst = [], 0.0
    for shape in [tuple(example), *others]:
        x = torch.rand(shape, generator=generator).to(dtype)
        try:
            with torch.no_grad():
                expected = _output_tensors(model(x.to(device)))
        except RuntimeError:  # a size the model itself rejects (e.g. odd): try the next one
            if shape == tuple(example) or shape == others[-1]:
                raise
            continue
        got = session.run(None, {INPUT_NAME: x.numpy()})
        for want, have in zip(expected, got):
            diff = (want.float().cpu() - torch.from_numpy(have).float()).abs().max().item()
            worst = max(worst, diff)
        checked.append(shape)
        if len(checked) == 2:
            break
    if not worst <= tolerance:  # also catches NaN
        raise ExportError(f"onnxruntime differs from PyTorch by {worst:.2e} (tolerance {tolerance:.0e}); file not written")
    return tuple(checked), worst
