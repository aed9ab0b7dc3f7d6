"""Conversion rules: which global ops become local, and how.

A :class:`Rule` says what it matches and how it builds the local replacement once the calibration
forward has measured the op's feature size. :data:`DEFAULT_RULES` is the one list
:func:`tlc.convert` uses unless given another; extend it by passing
``rules=(*tlc.DEFAULT_RULES, my_rule)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..nn import LocalAvgPool2d, LocalGroupNorm, LocalInstanceNorm2d, LocalPooledSequential, LocalTransposedAttention, is_pointwise
from ..ops._common import Pair
from .attention import TransposedAttentionRecorder
from .pooled_gate import build_local_gate, gate_plan, is_global_avg_pool


@dataclass(frozen=True)
class Site:
    """What the calibration forward measured at one global op, and the window chosen for it.

    Attributes:
        feature_size: (h, w) of the op's input at the training size, in feature pixels.
        window: (kh, kw) = ``feature_size * base_size // train_size`` per axis.
        fast: whether the reference's approximate ``fast_imp`` pooling was asked for.
        max_stride: the approximation's stride cap, ``max(1, 5 * h // train_h)`` per axis.
    """

    feature_size: Pair
    window: Pair
    fast: bool = False
    max_stride: Pair = (5, 5)


def _never_skip(module: nn.Module) -> str | None:
    return None


def _any_module(module: nn.Module) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """How one kind of global op becomes local.

    Attributes:
        name: short name shown in reports.
        matches: True for modules this rule is responsible for (the first matching rule wins;
            the children of a matched module are not searched).
        build: returns the local replacement for a matched module at a measured :class:`Site`;
            it must keep the module's parameter names.
        skip_reason: for a matched module that must stay global, why (shown in the report);
            None to convert it.
        recorder: for ops recognised by what they compute at run time rather than by class:
            ``recorder(model)`` gives a context manager that watches the calibration forward and
            then holds ``found``, a dict from each module recognised to its feature size (h, w)
            at the training size, or to the reason it stays global. The rule then applies to the
            modules found that ``matches`` also accepts (a pre-filter), after the class rules:
            never inside a module a class rule matched, but it may hold some (their
            replacements are made first). Its window comes from the recorded size, not from the
            module's first argument. None: a class rule, matched before the calibration forward.
        run_time_first: with functional conversion on (the default) and exact windows, leave the
            modules this rule matches to the run-time view, which answers their pooling with a
            pooled value: what consumes it then runs on the valid windows only, not at every
            pixel (see :mod:`tlc.convert.pooled_values`). The rule builds its module otherwise.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    build: Callable[[nn.Module, Site], nn.Module]
    skip_reason: Callable[[nn.Module], str | None] = _never_skip
    recorder: Callable[[nn.Module], Any] | None = None
    run_time_first: bool = False


def _keep_affine(new: nn.Module, old: nn.Module) -> nn.Module:
    """Move ``weight``/``bias`` over so parameters (and state_dict keys) stay the same."""
    if getattr(old, "weight", None) is not None:
        new.weight = old.weight
        new.bias = old.bias
    return new



GLOBAL_AVG_POOL = Rule(
    name="global-avg-pool",
    matches=is_global_avg_pool,
    build=lambda m, site: LocalAvgPool2d(site.window, fast=site.fast, max_stride=site.max_stride),
    # A bare pooling's consumers are unknown here (IMDN adds a hand-written std to it, DAT reshapes
    # it): as a pooled value they run per window, as a local map at every pixel.
    run_time_first=True,
)

def _is_pooled_pointwise(module: nn.Module) -> bool:
    return (
        type(module) is nn.Sequential
        and len(module) >= 2
        and is_global_avg_pool(module[0])
        and all(is_pointwise(layer) for layer in list(module)[1:])
    )


POOLED_POINTWISE = Rule(
    name="global-avg-pool+pointwise",
    matches=_is_pooled_pointwise,
    build=lambda m, site: LocalPooledSequential(
        LocalAvgPool2d(site.window, fast=site.fast, max_stride=site.max_stride), list(m)[1:]
    ),
)

POOLED_GATE = Rule(
    name="pooled-gate",
    # A module computing x * f(pool(x)) with f per-pixel children (MPRNet's CALayer, RCAN-style
    # SE), found by tracing its forward: f runs on the valid windows' means only.
    matches=lambda m: gate_plan(m) is not None,
    build=lambda m, site: build_local_gate(m, site.window, fast=site.fast, max_stride=site.max_stride),
)

INSTANCE_NORM = Rule(
    name="instance-norm",
    matches=lambda m: isinstance(m, nn.InstanceNorm2d),
    build=lambda m, site: _keep_affine(LocalInstanceNorm2d(m.num_features, site.window, m.eps, m.affine), m),
    skip_reason=lambda m: (
        "uses running statistics (track_running_stats=True), not per-image ones" if m.track_running_stats else None
    ),
)

GROUP_NORM = Rule(
    name="group-norm",
    matches=lambda m: isinstance(m, nn.GroupNorm),
    build=lambda m, site: _keep_affine(
        LocalGroupNorm(m.num_groups, m.num_channels, site.window, m.eps, m.affine), m
    ),
)

TRANSPOSED_ATTENTION = Rule(
    name="transposed-attention",
    # Any module whose own code normalises q and k over flattened feature-map tokens and attends
    # across channels (Restormer's MDTA, KBNet, Retinexformer, DAT), whatever its class.
    matches=_any_module,
    # The same module (parameters, children) with only the attention core local.
    build=lambda m, site: LocalTransposedAttention.wrap(m, site.window),
    recorder=TransposedAttentionRecorder,
)

#: The rules :func:`tlc.convert` applies by default, in order.
DEFAULT_RULES: tuple[Rule, ...] = (
    POOLED_POINTWISE, POOLED_GATE, GLOBAL_AVG_POOL, INSTANCE_NORM, GROUP_NORM, TRANSPOSED_ATTENTION,
)
