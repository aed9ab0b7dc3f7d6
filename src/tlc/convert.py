"""The converter: one calibration forward at the training size, then global ops become local.

At the training size every global op sees a feature map of some size (h_t, w_t). Its local
window is ``(h_t * base_h // train_h, w_t * base_w // train_w)``: the same fraction of the
feature map that ``base_size`` is of the training crop, so the window covers about the same image
area at every feature level. At the training size windows are larger than the maps, which makes
the converted model reproduce the original there; :func:`convert` checks that it does.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .functional import CallSite, convert_call_sites
from .ops._common import Pair, as_pair
from .rules import DEFAULT_RULES, Rule, Site


class ConversionError(RuntimeError):
    """The model could not be converted (the message names the module at fault).

    ``module`` holds that module where one was running, else None.
    """

    def __init__(self, message: str, module: nn.Module | None = None) -> None:
        super().__init__(message)
        self.module = module


@dataclass(frozen=True)
class ConvertedOp:
    """One global op that was made local. ``paths`` lists every place the module is attached."""

    paths: tuple[str, ...]
    rule: str
    feature_size: Pair
    window: Pair

    @property
    def path(self) -> str:
        return self.paths[0]


@dataclass(frozen=True)
class SkippedOp:
    """A global op a rule matched but left global, and why."""

    paths: tuple[str, ...]
    rule: str
    reason: str

    @property
    def path(self) -> str:
        return self.paths[0]


def _size(pair: Pair) -> str:
    return f"{pair[0]}x{pair[1]}"


@dataclass
class ConversionReport:
    """What :func:`convert` did. ``print(report)`` shows a table.

    Attributes:
        train_size, base_size: (H, W) in image pixels.
        fast: whether the approximate ``fast_imp`` pooling was used.
        in_channels: channels of the calibration input.
        converted: every op made local, in model order.
        skipped: every matched op left global, with the reason.
        max_deviation: max |converted - original| over the outputs at the training size.
        functional: whether global ops were also looked for at run time (``functional=True``,
            the default of :func:`convert`).
        call_sites: with ``functional``, every global op found at run time outside the modules
            rules matched, converted or left global with its reason (:class:`tlc.functional.CallSite`).
    """

    train_size: Pair
    base_size: Pair
    fast: bool = False
    in_channels: int | None = None
    converted: list[ConvertedOp] = field(default_factory=list)
    skipped: list[SkippedOp] = field(default_factory=list)
    max_deviation: float = 0.0
    functional: bool = False
    call_sites: list[CallSite] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        mode = "fast approximation" if self.fast else "exact"
        lines = [
            f"TLC conversion: train {_size(self.train_size)}, base {_size(self.base_size)} ({mode}); "
            f"{len(self.converted)} converted, {len(self.skipped)} skipped; "
            f"max deviation at the training size {self.max_deviation:.2e}"
        ]
        if self.converted:
            rows = [(", ".join(op.paths), op.rule, _size(op.feature_size), _size(op.window)) for op in self.converted]
            lines += _table(("module", "rule", "feature at train", "window"), rows)
        if self.skipped:
            lines.append("left global:")
            lines += _table(("module", "rule", "reason"), [(", ".join(s.paths), s.rule, s.reason) for s in self.skipped])
        if self.functional:
            local = [s for s in self.call_sites if s.converted]
            kept = [s for s in self.call_sites if not s.converted]
            lines.append(f"functional call sites: {len(local)} converted, {len(kept)} left global")
            if local:
                rows = [(s.name, s.op, _size(s.feature_size), _size(s.window)) for s in local]
                lines += _table(("call site", "op", "feature at train", "window"), rows)
            if kept:
                lines.append("call sites left global:")
                lines += _table(("call site", "op", "reason"), [(s.name, s.op, s.reason) for s in kept])
        return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return ["  " + fmt.format(*header).rstrip(), *("  " + fmt.format(*r).rstrip() for r in rows)]


def _first_tensor_like(model: nn.Module) -> torch.Tensor | None:
    return next(itertools.chain(model.parameters(), model.buffers()), None)


def _guess_in_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    raise ConversionError("cannot tell the model's input channels (it has no convolution): pass in_channels=")


def _tensors(obj: object) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


@contextmanager
def _calibrating(model: nn.Module) -> Iterator[list[str]]:
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


def _run(model: nn.Module, x: torch.Tensor, what: str) -> object:
    with _calibrating(model) as stack:
        try:
            return model(x)
        except Exception as err:
            where = stack[-1] if stack else ""
            module = model.get_submodule(where)
            name = f"'{where}' ({type(module).__name__})" if where else "the model itself"
            raise ConversionError(
                f"{what} at {x.shape[-2]}x{x.shape[-1]} failed in module {name}: {type(err).__name__}: {err}",
                module,
            ) from err


def _calibrate(
    model: nn.Module, targets: list[nn.Module], train: Pair, in_channels: int | None
) -> tuple[torch.Tensor, object, dict[int, list[tuple[int, ...]]]]:
    """Run the model once at the training size, recording each target's input shapes.

    Returns (the input used, the model's output, shapes seen per id(target)). Without
    ``in_channels`` it starts from the first convolution's input channels and, if the model
    registers some other convolution first, retries with the channels of the one that rejected
    the input.
    """
    like = _first_tensor_like(model)
    device = like.device if like is not None else torch.device("cpu")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    channels = in_channels if in_channels is not None else _guess_in_channels(model)
    tried = {channels}
    seen: dict[int, list[tuple[int, ...]]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        seen[id(module)].append(tuple(args[0].shape) if args and torch.is_tensor(args[0]) else ())

    handles = [module.register_forward_pre_hook(record) for module in targets]
    try:
        while True:
            seen.update({id(module): [] for module in targets})
            generator = torch.Generator().manual_seed(0)
            x = torch.rand(1, channels, *train, generator=generator).to(device=device, dtype=dtype)
            try:
                return x, _run(model, x, "the calibration forward"), seen
            except ConversionError as err:
                culprit = err.module
                if in_channels is not None or not isinstance(culprit, nn.modules.conv._ConvNd):
                    raise
                if culprit.in_channels in tried or "channels" not in str(err.__cause__):
                    raise
                channels = culprit.in_channels
                tried.add(channels)
    finally:
        for handle in handles:
            handle.remove()


def _like(x: torch.Tensor, size: Pair, seed: int) -> torch.Tensor:
    """A random input like ``x`` (channels, dtype, device) at another (H, W)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape[0], x.shape[1], *size, generator=generator).to(device=x.device, dtype=x.dtype)


def _window(feature: Pair, train: Pair, base: Pair) -> Pair:
    return max(1, feature[0] * base[0] // train[0]), max(1, feature[1] * base[1] // train[1])


def _site(feature: Pair, train: Pair, base: Pair, fast: bool) -> Site:
    """The window (and ``fast_imp`` stride cap) of a global op whose input is ``feature`` at ``train``."""
    return Site(
        feature_size=feature,
        window=_window(feature, train, base),
        fast=fast,
        max_stride=(max(1, 5 * feature[0] // train[0]), max(1, 5 * feature[1] // train[1])),
    )


def convert(
    model: nn.Module,
    train_size: int | Pair = (256, 256),
    base_size: int | Pair | None = None,
    *,
    fast: bool = False,
    rules: Sequence[Rule] | None = None,
    inplace: bool = False,
    in_channels: int | None = None,
    functional: bool = True,
) -> tuple[nn.Module, ConversionReport]:
    """Make a model's global ops local (Test-time Local Converter).

    One calibration forward at ``train_size`` (no grad, eval mode, on the model's device and dtype;
    each module's train/eval flag restored afterwards) measures the feature size (h_t, w_t) at every
    op a rule matches. Each becomes local with window ``(h_t * base_h // train_h,
    w_t * base_w // train_w)`` in feature pixels. A second forward checks that the converted model
    reproduces the original at ``train_size``.

    Args:
        model: any module taking one (N, C, H, W) image tensor.
        train_size: (H, W) of the crops the model was trained on, in image pixels.
        base_size: (H, W) of the local window in image pixels; default 1.5 x ``train_size``.
        fast: use the reference's approximate subsampled pooling (``fast_imp``) for pooling.
        rules: conversion rules, first match wins; default :data:`tlc.DEFAULT_RULES`.
        inplace: modify ``model`` itself instead of a copy.
        in_channels: channels of the calibration input; default that of the model's first conv.
        functional: also find global ops by what the model calls while it runs (a torch function
            mode; see :mod:`tlc.functional`): means, sums, maxima, variances and pools over H and
            W however written, norms with spatial statistics, softmax, normalisation and matrix
            products over all positions, FFTs. Made local where exact, else reported; listed in
            ``report.call_sites``. Costs up to four more forwards at calibration (three of them
            at twice the training height or width); ``False`` to use the module rules alone.

    Returns:
        (converted model, :class:`ConversionReport`).

    Raises:
        ConversionError: the model fails at ``train_size`` (e.g. smaller than its downsampling
            factor) or after conversion; the message names the module.
    """
    train = as_pair(train_size, "train_size")
    base = as_pair(base_size, "base_size") if base_size is not None else (int(train[0] * 1.5), int(train[1] * 1.5))
    rules = DEFAULT_RULES if rules is None else tuple(rules)
    target = model if inplace else copy.deepcopy(model)
    report = ConversionReport(train_size=train, base_size=base, fast=fast, functional=functional)

    # Candidates: the first matching rule wins and a matched module's children are not searched.
    matched: dict[int, tuple[nn.Module, Rule]] = {}
    matched_paths: list[str] = []
    for path, module in target.named_modules():  # parents come before their children
        if any(path.startswith(p + ".") for p in matched_paths):
            continue
        rule = next((r for r in rules if r.matches(module)), None)
        if rule is not None:
            if module is target:
                raise ConversionError(f"rule {rule.name!r} matches the model itself; convert a model that holds it")
            matched[id(module)] = (module, rule)
            matched_paths.append(path)
    places: dict[int, list[tuple[str, nn.Module, str]]] = {key: [] for key in matched}
    for path, module in target.named_modules(remove_duplicate=False):
        for name, child in module.named_children():
            if id(child) in places:
                places[id(child)].append((f"{path}.{name}" if path else name, module, name))

    if not matched and not functional:
        warnings.warn("no global operation found: the model is returned unchanged", stacklevel=2)
        return target, report

    x, original, seen = _calibrate(target, [m for m, _ in matched.values()], train, in_channels)
    report.in_channels = x.shape[1]

    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    for key, (module, rule) in matched.items():
        paths = tuple(p for p, _, _ in places[key])
        shapes = sorted(set(seen[key]))
        reason = rule.skip_reason(module)
        if reason is None and not shapes:
            reason = "not called during the calibration forward"
        elif reason is None and any(len(s) != 4 for s in shapes):
            reason = f"input is not (N, C, H, W): {shapes[0]}"
        elif reason is None and len({s[-2:] for s in shapes}) > 1:
            sizes = ", ".join(_size(s[-2:]) for s in shapes)
            reason = f"one module called at several feature sizes ({sizes}); give each call its own module"
        if reason is not None:
            report.skipped.append(SkippedOp(paths, rule.name, reason))
            continue
        site = _site(shapes[0][-2:], train, base, fast)
        local = rule.build(module, site)
        for _, parent, name in places[key]:
            setattr(parent, name, local)
            replaced.append((parent, name, module))
        report.converted.append(ConvertedOp(paths, rule.name, site.feature_size, site.window))

    try:
        if functional:  # calibrated and checked on the module-converted model
            probes = [_like(x, (2 * train[0], train[1]), 1), _like(x, (train[0], 2 * train[1]), 2)]
            other = probes[1] if probes[1].shape[-2] != probes[1].shape[-1] else probes[0]
            converted, report.call_sites = convert_call_sites(
                target, lambda what: _run(target, x.clone(), what), lambda feature: _site(feature, train, base, fast),
                skip=matched_paths,
                probes=[lambda what, p=p: _run(target, p.clone(), what) for p in probes],
                check_other=lambda what: _run(target, other.clone(), what),
            )
        else:
            converted = _run(target, x, "the converted model's check forward")
    except ConversionError:
        for parent, name, module in reversed(replaced):
            setattr(parent, name, module)
        raise
    if not matched and not report.call_sites:
        warnings.warn("no global operation found: the model is returned unchanged", stacklevel=2)
    before, after = list(_tensors(original)), list(_tensors(converted))
    try:
        # A model that ends in a pooling op returns a full-size map instead of 1x1: compare broadcast.
        if len(before) != len(after) or any(torch.broadcast_shapes(a.shape, b.shape) != a.shape for a, b in zip(after, before)):
            raise RuntimeError
    except RuntimeError:
        raise ConversionError("the converted model returns outputs of other shapes than the original") from None
    report.max_deviation = max(((a.double() - b.double()).abs().max().item() for a, b in zip(before, after)), default=0.0)
    scale = max((b.abs().max().item() for b in before), default=1.0)
    tolerance = (1e-4 if x.dtype in (torch.float32, torch.float64) else 1e-2) * max(1.0, scale)
    if report.max_deviation > tolerance:
        warnings.warn(
            f"the converted model differs from the original by {report.max_deviation:.3g} at the training size, "
            "where local and global ops should agree: check custom rules",
            stacklevel=2,
        )
    return target, report
