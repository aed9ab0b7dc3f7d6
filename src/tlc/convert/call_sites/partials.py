"""Partial reductions of hand-written statistics, and the global values that stand in for them.

IMDN writes a mean as ``x.sum(3, keepdim=True).sum(2, keepdim=True)``: the first call's result, a
column of row sums, is a *partial* reduction that the second call completes over H and W. When the
completed statistic is answered with a pooled value (:meth:`CallSiteConverter._pooled_statistic`
computes it from the marked source map), the partial's own values are never read: its local form,
a full-size map of window sums along W, would be computed for nothing.

So at calibration every partial is watched: how many torch calls take it, and whether the one that
does completes its chain. A site whose partials are taken exactly once, by the call completing the
chain (and are not returned), then runs globally once converted: its result *stands in* for the
local map. Should a stand-in meet any other call (control flow other than at calibration), it is
replaced there by its true local value first (the site's local form, computed then), so nothing
reads the global values by mistake; an in-place call on a stand-in raises.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..pooled_values import is_inplace, tensor_args
from ..rules import Site
from .calls import Call
from .marks import mark_of, set_mark
from .parsers import PARSERS
from .sites import SiteKey


def _parse(func: Callable, args: tuple, kwargs: dict) -> Call | None:
    """The run-time view's reading of the call, None where no parser knows it or its arguments."""
    parse = PARSERS.get(func)
    try:
        return parse(args, kwargs) if parse is not None else None
    except Exception:  # noqa: BLE001 (arguments no parser foresaw)
        return None


class _Partial:
    """One partial made at calibration: the site that made it, its uses, the site completing it."""

    def __init__(self, t: torch.Tensor, key: SiteKey) -> None:
        self.ref, self.key, self.uses, self.completed_by = weakref.ref(t), key, 0, None


class PartialUses:
    """Calibration: the partials one forward made, and how they were used."""

    def __init__(self) -> None:
        self._all: list[_Partial] = []
        self._by_id: dict[int, _Partial] = {}  # the latest partial per id (ids of dead ones recur)

    def __bool__(self) -> bool:
        return bool(self._all)

    def made(self, out: torch.Tensor, key: SiteKey) -> None:
        """``out``, the result of site ``key``, is a partial reduction."""
        partial = _Partial(out, key)
        self._all.append(partial)
        self._by_id[id(out)] = partial

    def _of(self, t: torch.Tensor) -> _Partial | None:
        partial = self._by_id.get(id(t))
        return partial if partial is not None and partial.ref() is t else None

    def count(self, args: tuple, kwargs: dict) -> None:
        """A torch call takes ``args``/``kwargs``: count the partials among them."""
        if self._by_id:
            for t in tensor_args(args, kwargs):
                if (partial := self._of(t)) is not None:
                    partial.uses += 1

    def completed(self, t: torch.Tensor, key: SiteKey) -> None:
        """The site ``key`` completed the chain of the partial ``t`` over H and W."""
        if (partial := self._of(t)) is not None:
            partial.completed_by = key

    def finish(self, output: object) -> tuple[set[SiteKey], dict[SiteKey, SiteKey]]:
        """(sites one of whose partials was used otherwise than once by its chain's completion, or
        returned; each site's completing site)."""
        public, completers = set(), {}
        returned = {id(t) for t in tensor_args(output if isinstance(output, tuple) else (output,), {})}
        for partial in self._all:
            t = partial.ref()
            if partial.uses != 1 or partial.completed_by is None or (t is not None and id(t) in returned):
                public.add(partial.key)
            else:
                completers[partial.key] = partial.completed_by
        return public, completers


class StandIns:
    """A converted forward: the global partials standing in for local ones, and their local forms."""

    def __init__(self) -> None:
        self._live: dict[int, tuple[weakref.ref, Callable[[], torch.Tensor]]] = {}

    def __bool__(self) -> bool:
        return bool(self._live)

    def add(self, out: torch.Tensor, call: Call, site: Site) -> None:
        """``out`` (a site's global result) stands in for ``call``'s local form at ``site``."""
        self._live[id(out)] = (weakref.ref(out), lambda: call.local(site))

    def takes(self, args: tuple, kwargs: dict) -> bool:
        """Whether a stand-in is among ``args``/``kwargs``."""
        return any(self.is_stand_in(t) for t in tensor_args(args, kwargs))

    def is_stand_in(self, t: object) -> bool:
        entry = self._live.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry is not None and entry[0]() is t

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """The true local value of the stand-in ``t``, marked as ``t`` is."""
        value = self._live[id(t)][1]()
        mark = mark_of(t)
        if mark is not None:
            set_mark(value, mark)
        return value

    def replaced(self, name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``args``/``kwargs`` with every stand-in replaced by its true local value.

        Raises:
            RuntimeError: an in-place call on a stand-in (its global value cannot become the local one).
        """
        def swap(value: Any) -> Any:
            if self.is_stand_in(value):
                return self.local(value)
            if isinstance(value, (list, tuple)) and any(self.is_stand_in(v) for v in value):
                return type(value)(self.local(v) if self.is_stand_in(v) else v for v in value)
            return value

        if is_inplace(name, args, kwargs) and args and self.is_stand_in(args[0]):
            raise RuntimeError(
                f"tlc: {name} changes in place a partial sum that calibration saw completed by the next call; "
                "convert the model again with inputs that take this path"
            )
        return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}

    def completes(self, func: Callable, args: tuple, kwargs: dict) -> bool:
        """Whether the call completes the chain of the stand-in it takes over H and W (the one use
        calibration allowed)."""
        call = _parse(func, args, kwargs)
        if call is None or not self.is_stand_in(call.x):
            return False
        mark = mark_of(call.x)
        return mark is not None and not set(mark.done) & set(call.dims) and tuple(sorted(mark.done + call.dims)) == (2, 3)

    def replace_in(self, output: object) -> object:
        """``output`` with stand-ins (in tuples and lists too) replaced by their local values."""
        if self.is_stand_in(output):
            return self.local(output)
        if isinstance(output, (list, tuple)) and any(self.is_stand_in(v) for v in output):
            items = [self.local(v) if self.is_stand_in(v) else v for v in output]
            return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
        return output


def reparsed(stand_ins: StandIns, func: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict, Call | None]:
    """The call with its stand-ins replaced by their local values, parsed again."""
    name = getattr(func, "__name__", "")
    args, kwargs = stand_ins.replaced(name, args, kwargs)
    return args, kwargs, _parse(func, args, kwargs)
