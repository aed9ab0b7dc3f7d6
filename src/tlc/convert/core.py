"""The converter: one calibration forward at the training size, then global ops become local.

At the training size every global op sees a feature map of some size (h_t, w_t). Its local
window is ``(h_t * base_h // train_h, w_t * base_w // train_w)``: the same fraction of the
feature map that ``base_size`` is of the training crop, so the window covers about the same image
area at every feature level. At the training size windows are larger than the maps, which makes
the converted model reproduce the original there; :func:`convert` checks that it does.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .._util import default_base_size, one_line, output_tensors
from ..ops._common import Pair, as_pair
from .calibrate import calibrate, is_conv, probe_input, run
from .call_sites import CallSite, convert_call_sites, remove_call_site_conversion
from .report import ConversionError, ConversionReport, ConvertedOp, SkippedOp, size_text
from .rules import DEFAULT_RULES, Rule, Site


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
            mode; see :mod:`tlc.convert.call_sites`): means, sums, maxima, variances and pools over H and
            W however written, norms with spatial statistics, softmax, normalisation and matrix
            products over all positions, FFTs. Made local where exact, else reported; listed in
            ``report.call_sites``. Costs up to four more forwards at calibration (three of them
            at twice the training height or width); ``False`` to use the module rules alone.
            Inputs no larger than ``train_size`` then run as the original model wherever every
            such window covers its feature map there (the default ``base_size`` does).

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
    site_for = partial(_site, train=train, base=base, fast=fast)
    target = model if inplace else _copy_model(model)
    report = ConversionReport(train_size=train, base_size=base, fast=fast, functional=functional)
    by_class = [r for r in rules if r.recorder is None]
    at_run_time = [r for r in rules if r.recorder is not None]
    matched = _match_modules(target, by_class)
    # Run-time recognition needs a calibration input: without convolutions, only in_channels gives one.
    can_run = in_channels is not None or any(is_conv(m) for m in target.modules())
    if not matched and not functional and not (at_run_time and can_run):
        warnings.warn(_NOTHING_FOUND, stacklevel=2)
        return target, report
    swaps = _Swaps()
    try:
        x, original, seen, found = calibrate(target, [m.module for m in matched], train, in_channels, [r.recorder for r in at_run_time])
        report.in_channels = x.shape[1]
        matched += _match_at_run_time(target, matched, at_run_time, found)
        reopened = []
        if functional and not fast:
            reopened = [p for m in matched if m.rule.run_time_first for p in m.paths]
            matched = [m for m in matched if not m.rule.run_time_first]
        if not matched and not functional:
            warnings.warn(_NOTHING_FOUND, stacklevel=2)
            return target, report
        _replace_all(target, matched, seen, site_for, swaps, report)
        converted = _check_modules(target, x, swaps, report)
        handed_over, settled = _hand_over(report, matched)
        if functional:  # calibrated and checked on the module-converted model
            converted, report.call_sites = _convert_calls(target, x, train, site_for, settled, reopened)
        _fold_call_sites(report, handed_over)
        _verify(report, original, converted, x.dtype)
    except BaseException:
        # Nothing half-done reaches the caller: with inplace=True their model is put back as it was.
        swaps.undo_all()
        remove_call_site_conversion(target)
        raise
    if not matched and not report.call_sites:
        warnings.warn(_NOTHING_FOUND, stacklevel=2)
    return target, report


_NOTHING_FOUND = "no global operation found: the model is returned unchanged"


def _replace_all(
    model: nn.Module,
    matched: list[_Match],
    seen: dict[int, list[tuple[int, ...]]],
    site_for: Callable[[Pair], Site],
    swaps: _Swaps,
    report: ConversionReport,
) -> None:
    """Make every matched module local (or report why not); the report lists them in model order."""
    for match in matched:
        _replace(match, seen.get(id(match.module), []), site_for, swaps, report)
    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    report.converted.sort(key=lambda op: order.get(op.path, -1))
    report.skipped.sort(key=lambda op: order.get(op.path, -1))


def _hand_over(report: ConversionReport, matched: list[_Match]) -> tuple[list[SkippedOp], list[str]]:
    """(modules whose local version broke the model, left to the run-time view (pooled values);
    the paths of the other matched modules, which the run-time view skips)."""
    handed_over = [op for op in report.skipped if op.reason.startswith(_BROKE)]
    settled = [m.paths[0] for m in matched if not any(op.paths == m.paths for op in handed_over)]
    return handed_over, settled


def _convert_calls(
    model: nn.Module, x: torch.Tensor, train: Pair, site_for: Callable[[Pair], Site], settled: list[str],
    reopened: list[str],
) -> tuple[object, list[CallSite]]:
    """The run-time view on the module-converted model: calibrated at ``x``, probed at twice the
    training height and width, checked at a non-square size; calls inside ``settled`` modules are
    not sites unless made inside ``reopened`` ones. (The check's output, the call sites.)"""
    probes = [probe_input(x, (2 * train[0], train[1]), 1), probe_input(x, (train[0], 2 * train[1]), 2)]
    other = probes[1] if probes[1].shape[-2] != probes[1].shape[-1] else probes[0]
    return convert_call_sites(
        model, lambda what: run(model, x, what), site_for,
        skip=settled,
        reopen=reopened,
        probes=[lambda what, p=p: run(model, p, what) for p in probes],
        check_other=lambda what: run(model, other, what),
    )


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
            sizes = ", ".join(size_text(s[-2:]) for s in shapes)
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
            return run(model, x, "the converted model's check forward")
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
