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
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ._util import default_base_size, one_line, output_tensors
from .functional import CallSite, convert_call_sites, remove_call_site_conversion
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
    """One global op that was made local. ``paths`` lists every place the module is attached;
    ``location`` is ``file.py:line`` for an op found at run time (a call site), else empty."""

    paths: tuple[str, ...]
    rule: str
    feature_size: Pair
    window: Pair
    location: str = ""

    @property
    def path(self) -> str:
        return self.paths[0]


@dataclass(frozen=True)
class SkippedOp:
    """A global op left global, and why: a module a rule matched (``location`` empty) or a call
    found at run time (``location`` is ``file.py:line``, ``rule`` the op)."""

    paths: tuple[str, ...]
    rule: str
    reason: str
    location: str = ""

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
        converted: every op made local: modules in model order, then run-time call sites.
        skipped: every global op left global, with the reason (modules, then call sites).
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
        modules = [op for op in self.converted if not op.location]
        if modules:
            rows = [(", ".join(op.paths), op.rule, _size(op.feature_size), _size(op.window)) for op in modules]
            lines += _table(("module", "rule", "feature at train", "window"), rows)
        kept = [op for op in self.skipped if not op.location]
        if kept:
            lines.append("left global:")
            lines += _table(("module", "rule", "reason"), [(", ".join(s.paths), s.rule, s.reason) for s in kept])
        if self.functional:
            local = [s for s in self.call_sites if s.converted]
            kept = [s for s in self.call_sites if not s.converted]
            lines.append(f"run-time call sites: {len(local)} converted, {len(kept)} left global")
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


def _is_conv(module: nn.Module) -> bool:
    """Convolutions of torch and look-alikes (DO-Conv and kin) that declare ``in_channels``."""
    channels = getattr(module, "in_channels", None)
    return isinstance(module, nn.modules.conv._ConvNd) or (isinstance(channels, int) and channels > 0)


def _channel_candidates(model: nn.Module) -> list[int]:
    """Input channel counts to try, most likely first: the convs' ``in_channels`` in order, then 3 and 1."""
    seen: list[int] = []
    for module in model.modules():
        if _is_conv(module) and module.in_channels not in seen:
            seen.append(module.in_channels)
    return seen + [c for c in (3, 1) if c not in seen]


def _copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``; a failure names the first module that cannot be copied."""
    try:
        return copy.deepcopy(model)
    except Exception as err:
        culprit = "the model itself"
        failing = [(path, module) for path, module in model.named_modules() if path and not _copies(module)]
        innermost = [(p, m) for p, m in failing if not any(q.startswith(p + ".") for q, _ in failing)]
        if innermost:
            culprit = f"module '{innermost[0][0]}' ({type(innermost[0][1]).__name__})"
        raise ConversionError(
            f"cannot copy the model: {culprit} fails copy.deepcopy ({type(err).__name__}: {err}); "
            "pass inplace=True to convert the model itself"
        ) from err


def _copies(module: nn.Module) -> bool:
    try:
        copy.deepcopy(module)
    except Exception:
        return False
    return True


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


def _run(model: nn.Module, x: torch.Tensor, what: str) -> object:
    """One forward on a copy of ``x`` (models may scale their input in place); errors name the module."""
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
    if culprit is None or not _is_conv(culprit):
        return None
    if id(culprit) in fed_input:
        return culprit.in_channels
    found = _CHANNEL_MISMATCH.search(str(err.__cause__))
    if found is None:
        return None
    wanted, got = int(found.group(1)), int(found.group(2))
    return tried + wanted - got if tried + wanted - got > 0 else None


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
    seen: dict[int, list[tuple[int, ...]]] = {}
    fed_input: set[int] = set()
    probe: dict[str, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple) -> None:
        if id(module) in seen:
            seen[id(module)].append(tuple(args[0].shape) if args and torch.is_tensor(args[0]) else ())
        if _is_conv(module) and args and torch.is_tensor(args[0]) and _same_data(args[0], probe.get("x")):
            fed_input.add(id(module))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if id(m) in {id(t) for t in targets} or _is_conv(m)]
    tried: list[int] = []
    first_error: ConversionError | None = None
    try:
        while candidates:
            channels = candidates.pop(0)
            tried.append(channels)
            seen.update({id(module): [] for module in targets})
            fed_input.clear()
            generator = torch.Generator().manual_seed(0)
            x = torch.rand(1, channels, *train, generator=generator).to(device=device, dtype=dtype)
            probe["x"] = x
            watching = [make(model) for make in recorders]
            try:
                with ExitStack() as stack:
                    for recorder in watching:
                        stack.enter_context(recorder)
                    output = _run(model, x, "the calibration forward")
                return x, output, seen, [recorder.found for recorder in watching]
            except ConversionError as err:
                first_error = first_error or err
                if in_channels is not None or "channels" not in str(err.__cause__):
                    raise
                suggested = _next_channels(err, channels, fed_input)
                if suggested is not None and suggested not in tried:
                    candidates = [suggested] + [c for c in candidates if c != suggested]
                candidates = [c for c in candidates if c not in tried]
        assert first_error is not None
        raise first_error
    finally:
        probe.clear()
        for handle in handles:
            handle.remove()


def _like(x: torch.Tensor, size: Pair, seed: int) -> torch.Tensor:
    """A random input like ``x`` (channels, dtype, device) at another (H, W)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape[0], x.shape[1], *size, generator=generator).to(device=x.device, dtype=x.dtype)


def _same_data(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether ``a`` is the forward's input (the copy :func:`_run` passes shares its shape and values)."""
    return b is not None and a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


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
    op a rule matches: the input's (h, w) for rules matched by class, what the rule's recorder saw
    for rules that recognise ops at run time (``Rule.recorder``: transposed attention, whose
    tokens' layout it traces). Each becomes local with window ``(h_t * base_h // train_h,
    w_t * base_w // train_w)`` in feature pixels. A second forward checks that the converted model
    reproduces the original at ``train_size``.

    Args:
        model: any module taking one (N, C, H, W) image tensor.
        train_size: (H, W) of the crops the model was trained on, in image pixels.
        base_size: (H, W) of the local window in image pixels; default 1.5 x ``train_size``.
        fast: use the reference's approximate subsampled pooling (``fast_imp``) for pooling.
        rules: conversion rules, first match wins; default :data:`tlc.DEFAULT_RULES`.
        inplace: modify ``model`` itself instead of a copy.
        in_channels: channels of the calibration input; default: found by trying the convolutions'
            ``in_channels`` (the conv fed the input itself decides; see :func:`calibrate`).
        functional: also find global ops by what the model calls while it runs (a torch function
            mode; see :mod:`tlc.functional`): means, sums, maxima, variances and pools over H and
            W however written, norms with spatial statistics, softmax, normalisation and matrix
            products over all positions, FFTs. Made local where exact, else reported; listed in
            ``report.call_sites``. Costs up to four more forwards at calibration (three of them
            at twice the training height or width); ``False`` to use the module rules alone.

    Returns:
        (converted model, :class:`ConversionReport`).

    A site whose local version breaks the model (its result reshaped as if it were 1x1, say) is
    put back to its global original and listed in ``report.skipped`` with the error; the others
    stay converted. Each forward gets its own copy of the input (some models scale it in place).

    Raises:
        ConversionError: the model fails at ``train_size`` (e.g. smaller than its downsampling
            factor), cannot be copied, or returns outputs of other shapes once converted; the
            message names the module. With ``inplace=True`` the model is then left as it was.
    """
    train = as_pair(train_size, "train_size")
    base = as_pair(base_size, "base_size") if base_size is not None else default_base_size(train)
    rules = DEFAULT_RULES if rules is None else tuple(rules)
    target = model if inplace else _copy_model(model)
    report = ConversionReport(train_size=train, base_size=base, fast=fast, functional=functional)
    by_class = [r for r in rules if r.recorder is None]
    at_run_time = [r for r in rules if r.recorder is not None]
    matched = _match_modules(target, by_class)
    # Run-time recognition needs a calibration input: without convolutions, only in_channels gives one.
    can_run = in_channels is not None or any(_is_conv(m) for m in target.modules())
    if not matched and not functional and not (at_run_time and can_run):
        warnings.warn("no global operation found: the model is returned unchanged", stacklevel=2)
        return target, report

    swaps = _Swaps()
    try:
        x, original, seen, found = calibrate(
            target, [m.module for m in matched], train, in_channels, [r.recorder for r in at_run_time]
        )
        report.in_channels = x.shape[1]
        matched += _match_at_run_time(target, matched, at_run_time, found)
        if not matched and not functional:
            warnings.warn("no global operation found: the model is returned unchanged", stacklevel=2)
            return target, report
        for match in matched:
            _replace(match, seen.get(id(match.module), []), lambda f: _site(f, train, base, fast), swaps, report)
        order = {path: i for i, (path, _) in enumerate(target.named_modules())}
        report.converted.sort(key=lambda op: order.get(op.path, -1))
        report.skipped.sort(key=lambda op: order.get(op.path, -1))
        converted = _check_modules(target, x, swaps, report)
        # Modules whose local version broke the model are left to the run-time view (pooled values).
        handed_over = [op for op in report.skipped if op.reason.startswith(_BROKE)]
        settled = [m.paths[0] for m in matched if not any(op.paths == m.paths for op in handed_over)]
        if functional:  # calibrated and checked on the module-converted model
            probes = [_like(x, (2 * train[0], train[1]), 1), _like(x, (train[0], 2 * train[1]), 2)]
            other = probes[1] if probes[1].shape[-2] != probes[1].shape[-1] else probes[0]
            converted, report.call_sites = convert_call_sites(
                target, lambda what: _run(target, x, what), lambda feature: _site(feature, train, base, fast),
                skip=settled,
                probes=[lambda what, p=p: _run(target, p, what) for p in probes],
                check_other=lambda what: _run(target, other, what),
            )
        _fold_call_sites(report, handed_over)
        _verify(report, original, converted, x.dtype)
    except BaseException:
        # Nothing half-done reaches the caller: with inplace=True their model is put back as it was.
        swaps.undo_all()
        remove_call_site_conversion(target)
        raise
    if not matched and not report.call_sites:
        warnings.warn("no global operation found: the model is returned unchanged", stacklevel=2)
    return target, report


@dataclass
class _Match:
    """A module a rule matched, with every (path, parent, attribute name) it is attached at."""

    module: nn.Module
    rule: Rule
    places: list[tuple[str, nn.Module, str]]
    measured: Pair | str | None = None  # run-time rules: the recorder's feature size, or why not

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path, _, _ in self.places) or ("",)


def _match_modules(model: nn.Module, rules: Sequence[Rule]) -> list[_Match]:
    """Modules the rules match, in model order: first matching rule wins, matched subtrees are not searched."""
    found: dict[int, _Match] = {}
    matched_paths: list[str] = []
    for path, module in model.named_modules():  # parents come before their children
        if any(path.startswith(p + ".") for p in matched_paths):
            continue
        rule = next((r for r in rules if r.matches(module)), None)
        if rule is not None:
            if module is model:
                raise ConversionError(f"rule {rule.name!r} matches the model itself; convert a model that holds it")
            found[id(module)] = _Match(module, rule, [])
            matched_paths.append(path)
    _attach_places(model, found)
    return list(found.values())


def _attach_places(model: nn.Module, matches: dict[int, _Match]) -> None:
    """Fill in every (path, parent, attribute name) at which each matched module is attached."""
    for path, module in model.named_modules(remove_duplicate=False):
        for name, child in module.named_children():
            if id(child) in matches:
                matches[id(child)].places.append((f"{path}.{name}" if path else name, module, name))


def _match_at_run_time(
    model: nn.Module, matched: list[_Match], rules: Sequence[Rule], found: list[dict]
) -> list[_Match]:
    """Modules that run-time rules' recorders found, outside modules class rules matched.

    Children come before their parents, so that a parent's replacement holds its children's.
    """
    inside = [path for m in matched for path in m.paths]
    claimed = {id(m.module) for m in matched}
    result: dict[int, _Match] = {}
    for path, module in reversed(list(model.named_modules())):
        if id(module) in claimed or any(path == p or path.startswith(p + ".") for p in inside):
            continue
        hits = [(rule, seen[module]) for rule, seen in zip(rules, found) if module in seen and rule.matches(module)]
        if hits:
            rule, value = hits[0]
            measured = "the model itself; convert a model that holds it" if module is model else value
            result[id(module)] = _Match(module, rule, [], measured)
    _attach_places(model, result)
    return list(result.values())


class _Swaps:
    """Module replacements made so far, each undoable (and all of them, in reverse order)."""

    def __init__(self) -> None:
        self.done: list[tuple[_Match, nn.Module, ConvertedOp]] = []

    def apply(self, match: _Match, local: nn.Module, op: ConvertedOp) -> None:
        for _, parent, name in match.places:
            setattr(parent, name, local)
        self.done.append((match, local, op))

    def undo(self, index: int) -> tuple[_Match, nn.Module, ConvertedOp]:
        match, local, op = self.done.pop(index)
        for _, parent, name in match.places:
            setattr(parent, name, match.module)
        return match, local, op

    def undo_all(self) -> None:
        while self.done:
            self.undo(-1)


def _replace(
    match: _Match, shapes: list[tuple[int, ...]], site_for: Callable[[Pair], Site], swaps: _Swaps, report: ConversionReport
) -> None:
    """Build and attach the local version of one matched module, or report why it stays global."""
    reason = match.rule.skip_reason(match.module)
    feature = None
    if match.measured is not None:
        reason = match.measured if isinstance(match.measured, str) else reason
        feature = None if isinstance(match.measured, str) else match.measured
    else:
        shapes = sorted(set(shapes))
        feature = shapes[0][-2:] if shapes else None
        if reason is None and not shapes:
            reason = "not called during the calibration forward"
        elif reason is None and any(len(s) != 4 for s in shapes):
            reason = f"input is not (N, C, H, W): {shapes[0]}"
        elif reason is None and len({s[-2:] for s in shapes}) > 1:
            sizes = ", ".join(_size(s[-2:]) for s in shapes)
            reason = f"one module called at several feature sizes ({sizes}); give each call its own module"
    if reason is None and feature is not None:
        site = site_for(feature)
        try:
            local = match.rule.build(match.module, site)
        except Exception as err:  # one bad site must not abort the others
            reason = f"the rule could not build a local version: {one_line(err, typed=True, limit=160)}"
        else:
            swaps.apply(match, local, ConvertedOp(match.paths, match.rule.name, site.feature_size, site.window))
            report.converted.append(swaps.done[-1][2])
            return
    report.skipped.append(SkippedOp(match.paths, match.rule.name, reason))


_BROKE = "the model fails on its local result"


def _fold_call_sites(report: ConversionReport, handed_over: list[SkippedOp]) -> None:
    """List run-time call sites among the converted and skipped ops; a module handed over to the
    run-time view is no longer listed itself where call sites inside it were found."""
    for op in handed_over:
        inside = [s for s in report.call_sites if any(s.module == p or s.module.startswith(p + ".") for p in op.paths)]
        if inside:
            report.skipped.remove(op)
    for s in report.call_sites:
        if s.converted:
            report.converted.append(ConvertedOp((s.module,), s.op, s.feature_size, s.window, s.location))
        else:
            report.skipped.append(SkippedOp((s.module,), s.op, s.reason, s.location))


def _check_modules(model: nn.Module, x: torch.Tensor, swaps: _Swaps, report: ConversionReport) -> object:
    """The check forward; while it fails, the last local module that ran before the failure goes back
    to its global original (reported with the error) and the check runs again."""
    while True:
        ran: list[int] = []
        hooks = [local.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, (_, local, _) in enumerate(swaps.done)]
        try:
            return _run(model, x, "the converted model's check forward")
        except ConversionError as err:
            if not ran:
                raise
            match, _, op = swaps.undo(ran[-1])
            report.converted.remove(op)
            cause = err.__cause__ or err
            report.skipped.append(
                SkippedOp(match.paths, match.rule.name, f"{_BROKE}: {one_line(cause, typed=True, limit=160)}")
            )
        finally:
            for hook in hooks:
                hook.remove()


def _verify(report: ConversionReport, original: object, converted: object, dtype: torch.dtype) -> None:
    """Record the converted model's deviation from the original at the training size; warn when large."""
    before, after = list(output_tensors(original)), list(output_tensors(converted))
    try:
        # A model that ends in a pooling op returns a full-size map instead of 1x1: compare broadcast.
        if len(before) != len(after) or any(torch.broadcast_shapes(a.shape, b.shape) != a.shape for a, b in zip(after, before)):
            raise RuntimeError
    except RuntimeError:
        raise ConversionError("the converted model returns outputs of other shapes than the original") from None
    report.max_deviation = max(((a.double() - b.double()).abs().max().item() for a, b in zip(before, after)), default=0.0)
    scale = max((b.abs().max().item() for b in before), default=1.0)
    tolerance = (1e-4 if dtype in (torch.float32, torch.float64) else 1e-2) * max(1.0, scale)
    if report.max_deviation > tolerance:
        warnings.warn(
            f"the converted model differs from the original by {report.max_deviation:.3g} at the training size, "
            "where local and global ops should agree: check custom rules",
            stacklevel=4,
        )
