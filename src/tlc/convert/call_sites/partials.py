"""Intermediate maps of hand-written statistics, and the stand-ins that spare computing them.

IMDN writes a standard deviation as ``(x - mean).pow(2).sum(3, keepdim=True).sum(2, keepdim=True)``
(and its mean as ``x.sum(3, keepdim=True).sum(2, keepdim=True)``). Every step before the last makes
a full-size *intermediate*: the deviation ``x - mean`` and its square (marks "dev" and "sq"), and
the *partial* reduction, a column of row sums that the last call completes over H and W. When the
completed statistic is answered with a pooled value (:func:`tlc.convert.call_sites.marks.pooled_statistic`
computes it from the marked source map), the intermediates' values are never read: computing them
(locally: a full-size deviation from the windows' means, its square, window sums along W) would be
work for nothing.

So at calibration every intermediate is watched: how many torch calls take it, and whether the one
that does is its chain's next step. An intermediate taken exactly once, by the next step, whose
chain of such steps ends at a pooled statistic (and that is not returned), is *lazy* once
converted: its call is not made, and a *stand-in* takes its place, a tensor of the result's shape
and dtype that holds no values (zeros, expanded) but carries the chain's mark, which is all the
next step reads. Should a stand-in meet any other call (control flow other than at calibration), it
is replaced there by its true value first (the call made then, as the converted model would have
made it, once), so nothing reads the stand-in's zeros; an in-place call on a stand-in raises.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..pooled_values import is_inplace, tensor_args
from .calls import Call, table_entry
from .marks import MARKERS, mark_of, set_mark
from .parsers import PARSERS
from .sites import SiteKey


def _parse(func: Callable, args: tuple, kwargs: dict) -> Call | None:
    """The run-time view's reading of the call, None where no parser knows it or its arguments."""
    parse = table_entry(PARSERS, func)
    try:
        return parse(args, kwargs) if parse is not None else None
    except Exception:  # noqa: BLE001 (arguments no parser foresaw)
        return None


class _Intermediate:
    """One intermediate made at calibration: the key of its call, its uses, the step continuing it."""

    def __init__(self, t: torch.Tensor, key: SiteKey) -> None:
        self.ref, self.key, self.uses, self.continued_by = weakref.ref(t), key, 0, None


class PartialUses:
    """Calibration: the intermediates one forward made, and how they were used."""

    def __init__(self) -> None:
        self._all: list[_Intermediate] = []
        self._by_id: dict[int, _Intermediate] = {}  # the latest one per id (ids of dead ones recur)

    def __bool__(self) -> bool:
        return bool(self._all)

    def made(self, out: torch.Tensor, key: SiteKey) -> None:
        """``out``, the result of the call ``key``, is an intermediate of a statistic's chain."""
        made = _Intermediate(out, key)
        self._all.append(made)
        self._by_id[id(out)] = made

    def _of(self, t: torch.Tensor) -> _Intermediate | None:
        made = self._by_id.get(id(t))
        return made if made is not None and made.ref() is t else None

    def count(self, args: tuple, kwargs: dict) -> None:
        """A torch call takes ``args``/``kwargs``: count the intermediates among them."""
        if self._by_id:
            for t in tensor_args(args, kwargs):
                if (made := self._of(t)) is not None:
                    made.uses += 1

    def continued(self, t: torch.Tensor, key: SiteKey) -> None:
        """The call ``key`` took ``t`` as the next step of its chain."""
        if (made := self._of(t)) is not None:
            made.continued_by = key

    def finish(self, output: object) -> tuple[set[SiteKey], dict[SiteKey, SiteKey]]:
        """(keys one of whose intermediates was used otherwise than once by its chain's next step,
        or returned; each other key's next step)."""
        public, steps = set(), {}
        returned = {id(t) for t in tensor_args(output if isinstance(output, tuple) else (output,), {})}
        for made in self._all:
            t = made.ref()
            if made.uses != 1 or made.continued_by is None or (t is not None and id(t) in returned):
                public.add(made.key)
            else:
                steps[made.key] = made.continued_by
        return public, steps


class StandIns:
    """A converted forward: the stand-ins of lazy intermediates, and how to compute their values."""

    def __init__(self) -> None:
        self._live: dict[int, list] = {}  # id -> [weakref, compute, value computed or None]

    def __bool__(self) -> bool:
        return bool(self._live)

    def lazy(self, form: torch.Tensor, device: torch.device, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A stand-in shaped as the meta tensor ``form``, on ``device``, for the value ``compute()``
        gives (computed only if something other than its chain's next step takes it)."""
        out = torch.zeros((), dtype=form.dtype, device=device).expand(form.shape)
        key, live = id(out), self._live

        def forget(ref: weakref.ref) -> None:  # the stand-in died: let go of what computes its value
            entry = live.get(key)
            if entry is not None and entry[0] is ref:
                del live[key]

        live[key] = [weakref.ref(out, forget), compute, None]
        return out

    def takes(self, args: tuple, kwargs: dict) -> bool:
        """Whether a stand-in is among ``args``/``kwargs``."""
        return any(self.is_stand_in(t) for t in tensor_args(args, kwargs))

    def is_stand_in(self, t: object) -> bool:
        entry = self._live.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry is not None and entry[0]() is t

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """The true value of the stand-in ``t`` (computed once), marked as ``t`` is."""
        entry = self._live[id(t)]
        if entry[2] is None:
            value = entry[1]()
            mark = mark_of(t)
            if mark is not None:
                set_mark(value, mark)
            entry[2] = value
        return entry[2]

    def replaced(self, name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``args``/``kwargs`` with every stand-in replaced by its true value.

        Raises:
            RuntimeError: an in-place call on a stand-in (it holds no values to change).
        """
        def swap(value: Any) -> Any:
            if self.is_stand_in(value):
                return self.local(value)
            if isinstance(value, (list, tuple)) and any(self.is_stand_in(v) for v in value):
                return type(value)(self.local(v) if self.is_stand_in(v) else v for v in value)
            return value

        if is_inplace(name, args, kwargs) and args and self.is_stand_in(args[0]):
            raise RuntimeError(
                f"tlc: {name} changes in place an intermediate of a statistic that calibration saw taken only "
                "by its next step; convert the model again with inputs that take this path"
            )
        return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}

    def continues(self, func: Callable, args: tuple, kwargs: dict) -> bool:
        """Whether the call is the next step of the chain of a stand-in it takes: squaring a
        deviation, or reducing a mean's or a square's map over a spatial axis not yet reduced."""
        marker = table_entry(MARKERS, func)
        if marker is not None:
            mark = marker(args, kwargs)
            return mark is not None and mark.kind == "sq"
        call = _parse(func, args, kwargs)
        if call is None or not self.is_stand_in(call.x):
            return False
        mark = mark_of(call.x)
        return (
            mark is not None and mark.kind in ("mean", "sq", "sqsum")
            and not set(mark.done) & set(call.dims) and set(mark.done + call.dims) <= {2, 3}
        )

    def replace_in(self, output: object) -> object:
        """``output`` with stand-ins (in tuples and lists too) replaced by their true values."""
        if self.is_stand_in(output):
            return self.local(output)
        if isinstance(output, (list, tuple)) and any(self.is_stand_in(v) for v in output):
            items = [self.local(v) if self.is_stand_in(v) else v for v in output]
            return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
        return output


def reparsed(stand_ins: StandIns, func: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict, Call | None]:
    """The call with its stand-ins replaced by their true values, parsed again."""
    name = getattr(func, "__name__", "")
    args, kwargs = stand_ins.replaced(name, args, kwargs)
    return args, kwargs, _parse(func, args, kwargs)
