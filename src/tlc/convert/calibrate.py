"""The calibration forward: one run of the model at the training size, recording what the
conversion needs (each target module's input shapes, what run-time recorders found), with the
input's channel count searched for when not given; and the probe inputs of other sizes."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from ..ops._common import Pair
from .report import ConversionError


def _first_tensor_like(model: nn.Module) -> torch.Tensor | None:
    return next(itertools.chain(model.parameters(), model.buffers()), None)


def is_conv(module: nn.Module) -> bool:
    """Convolutions of torch and look-alikes (DO-Conv and kin) that declare ``in_channels``."""
    channels = getattr(module, "in_channels", None)
    return isinstance(module, nn.modules.conv._ConvNd) or (isinstance(channels, int) and channels > 0)


def _channel_candidates(model: nn.Module) -> list[int]:
    """Input channel counts to try, most likely first: the convs' ``in_channels`` in order, then 3 and 1."""
    seen: list[int] = []
    for module in model.modules():
        if is_conv(module) and module.in_channels not in seen:
            seen.append(module.in_channels)
    return seen + [c for c in (3, 1) if c not in seen]


@contextmanager
def calibrating(model: nn.Module) -> Iterator[list[str]]:
    """Eval mode and no grad for the duration; yields the stack of module paths being run.

    After an exception the stack still holds the innermost module that was running. Every
    module's own train/eval flag is restored afterwards.
    """
    training = {m: m.training for m in model.modules()}
    stack: list[str] = []
    handles = []

    def enter(path: str) -> Callable[..., None]:
        return lambda module, args: stack.append(path)  # list.append returns None: input unchanged

    def leave(module: nn.Module, args: object, output: object) -> None:
        stack.pop()  # a hook that returned the popped value would replace the output

    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(path)))
        handles.append(module.register_forward_hook(leave))
    model.eval()
    try:
        with torch.no_grad():
            yield stack
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.train(flag)


def run(model: nn.Module, x: torch.Tensor, what: str) -> object:
    """One forward on a copy of ``x`` (models may scale their input in place) under
    :func:`calibrating`; a failure raises :class:`ConversionError` naming ``what`` and the module."""
    with calibrating(model) as stack:
        try:
            return model(x.clone())
        except Exception as err:
            where = stack[-1] if stack else ""
            module = model.get_submodule(where)
            name = f"'{where}' ({type(module).__name__})" if where else "the model itself"
            raise ConversionError(
                f"{what} at {x.shape[-2]}x{x.shape[-1]} failed in module {name}: {type(err).__name__}: {err}",
                module,
            ) from err


_CHANNEL_MISMATCH = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels")


def _next_channels(err: ConversionError, tried: int, fed_input: set[int]) -> int | None:
    """The channel count a failed calibration suggests, or None.

    A conv fed the model's input directly needs exactly its ``in_channels``; one fed something
    derived from it (the input concatenated with its own mean, say) got ``tried + extra`` channels,
    so the input needs ``in_channels - extra``.
    """
    culprit = err.module
    if culprit is None or not is_conv(culprit):
        return None
    if id(culprit) in fed_input:
        return culprit.in_channels
    found = _CHANNEL_MISMATCH.search(str(err.__cause__))
    if found is None:
        return None
    wanted, got = int(found.group(1)), int(found.group(2))
    return tried + wanted - got if tried + wanted - got > 0 else None


class _Watch:
    """Pre-hooks on the targets and convolutions: each target's input shapes (``seen``, by id) and
    the convolutions fed the forward's input itself (``fed_input``), for one attempt at a time."""

    def __init__(self, model: nn.Module, targets: list[nn.Module]) -> None:
        self.targets = [id(t) for t in targets]
        self.seen: dict[int, list[tuple[int, ...]]] = {}
        self.fed_input: set[int] = set()
        self.x: torch.Tensor | None = None
        wanted = set(self.targets)
        self.handles = [m.register_forward_pre_hook(self.record) for m in model.modules() if id(m) in wanted or is_conv(m)]

    def attempt(self, x: torch.Tensor) -> None:
        self.seen.update({target: [] for target in self.targets})
        self.fed_input.clear()
        self.x = x

    def record(self, module: nn.Module, args: tuple) -> None:
        if id(module) in self.seen:
            self.seen[id(module)].append(tuple(args[0].shape) if args and torch.is_tensor(args[0]) else ())
        if is_conv(module) and args and torch.is_tensor(args[0]) and _same_data(args[0], self.x):
            self.fed_input.add(id(module))

    def close(self) -> None:
        self.x = None
        for handle in self.handles:
            handle.remove()


def _forward(model: nn.Module, x: torch.Tensor, recorders: Sequence[Callable[[nn.Module], Any]]) -> tuple[object, list[dict]]:
    """The calibration forward with fresh recorders active; (output, each recorder's ``found``)."""
    watching = [make(model) for make in recorders]
    with ExitStack() as stack:
        for recorder in watching:
            stack.enter_context(recorder)
        output = run(model, x, "the calibration forward")
    return output, [recorder.found for recorder in watching]


def calibrate(
    model: nn.Module,
    targets: list[nn.Module],
    train: Pair,
    in_channels: int | None,
    recorders: Sequence[Callable[[nn.Module], Any]] = (),
) -> tuple[torch.Tensor, object, dict[int, list[tuple[int, ...]]], list[dict]]:
    """Run the model once at the training size, recording each target's input shapes.

    Returns (the input used, the model's output, shapes seen per id(target), the ``found`` of
    each recorder, made fresh per attempt and active during the forward). Without
    ``in_channels`` the channel count is searched for: the convs' ``in_channels`` in registration
    order, corrected by what a conv that rejects its input says it expected (a conv fed the input
    itself tells the count outright, even when another conv is registered first).
    """
    like = _first_tensor_like(model)
    device = like.device if like is not None else torch.device("cpu")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    candidates = [in_channels] if in_channels is not None else _channel_candidates(model)
    if not candidates:
        raise ConversionError("cannot tell the model's input channels (it has no convolution): pass in_channels=")
    watch = _Watch(model, targets)
    tried: list[int] = []
    first_error: ConversionError | None = None
    try:
        while candidates:
            channels = candidates.pop(0)
            tried.append(channels)
            generator = torch.Generator().manual_seed(0)
            x = torch.rand(1, channels, *train, generator=generator).to(device=device, dtype=dtype)
            watch.attempt(x)
            try:
                output, found = _forward(model, x, recorders)
                return x, output, watch.seen, found
            except ConversionError as err:
                first_error = first_error or err
                if in_channels is not None or "channels" not in str(err.__cause__):
                    raise
                suggested = _next_channels(err, channels, watch.fed_input)
                if suggested is not None and suggested not in tried:
                    candidates = [suggested] + [c for c in candidates if c != suggested]
                candidates = [c for c in candidates if c not in tried]
        assert first_error is not None
        raise first_error
    finally:
        watch.close()


def probe_input(x: torch.Tensor, size: Pair, seed: int) -> torch.Tensor:
    """A random input like ``x`` (channels, dtype, device) at another (H, W)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape[0], x.shape[1], *size, generator=generator).to(device=x.device, dtype=x.dtype)


def _same_data(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether ``a`` is the forward's input (the copy :func:`run` passes shares its shape and values)."""
    return b is not None and a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
