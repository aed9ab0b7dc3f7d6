"""What :func:`tlc.convert` did: the ops made local, those left global and why, as a report
that prints as a table; and the error raised when a model cannot be converted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

from ..ops._common import Pair
from .call_sites import CallSite


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


def size_text(pair: Pair) -> str:
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
            rules matched, converted or left global with its reason (:class:`tlc.convert.call_sites.CallSite`).
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
            f"TLC conversion: train {size_text(self.train_size)}, base {size_text(self.base_size)} ({mode}); "
            f"{len(self.converted)} converted, {len(self.skipped)} skipped; "
            f"max deviation at the training size {self.max_deviation:.2e}"
        ]
        modules = [op for op in self.converted if not op.location]
        if modules:
            rows = [(", ".join(op.paths), op.rule, size_text(op.feature_size), size_text(op.window)) for op in modules]
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
                rows = [(s.name, s.op, size_text(s.feature_size), size_text(s.window)) for s in local]
                lines += _table(("call site", "op", "feature at train", "window"), rows)
            if kept:
                lines.append("call sites left global:")
                lines += _table(("call site", "op", "reason"), [(s.name, s.op, s.reason) for s in kept])
        return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return ["  " + fmt.format(*header).rstrip(), *("  " + fmt.format(*r).rstrip() for r in rows)]
