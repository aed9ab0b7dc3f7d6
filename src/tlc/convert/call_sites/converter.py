"""The :class:`CallSiteConverter`: calibration records per call site, the windows of converted
sites and the answer to each recognised call in each phase."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch
from torch import nn

from ...ops import local_softmax_pool, local_var
from ..._util import call_signature
from ...ops._common import Pair, tracing
from ..pooled_values import PooledValues, WindowMeans, meta_call, tensor_args
from ..rules import Site
from .calls import Call, pending_windows, poolable, valid_pooling
from .hooks import (
    APPLY_HANDLERS,
    APPLY_WITH_ARITHMETIC,
    CONTEXT_HANDLERS,
    INTERNAL,
    RECORD_HANDLERS,
    Enter,
    Handler,
    Leave,
    LocalCalls,
    ModuleCall,
    Observed,
    caller,
    context_maps,
    context_operands,
    remove_call_site_conversion,
    remove_mode,
    template,
)
from .marks import INTERMEDIATE, Mark, mark_of, pooled_statistic, set_mark, sum_factor
from .partials import PartialUses, StandIns, reparsed
from .recognise import H, W, judge, tags_of
from .sites import CallSite, SiteKey


class CallSiteConverter:
    """Functional global ops of one model: hooks, calibration records and per-site windows.

    Built by :func:`convert_call_sites`. Phases: ``"record"`` (calibration: observe sites, run
    everything globally), ``"probe"`` (the same at other sizes, to tell spatial axes), then
    ``"apply"`` (recognised calls at converted sites run locally).

    Attributes:
        sites: every global op found at calibration, in call order.
    """

    def __init__(self, model: nn.Module, skip: Iterable[str] = (), reopen: Iterable[str] = ()) -> None:
        skip, reopen = tuple(skip), tuple(reopen)
        self.phase = "record"
        self.sites: list[CallSite] = []
        self._windows: dict[SiteKey, tuple[Site, int]] = {}  # converted sites: (site, channels)
        self._observed: dict[SiteKey, Observed] = {}
        self._index: dict[SiteKey, int] = {}  # position in sites
        self._unknown: dict[SiteKey, str] = {}  # keys met after calibration, with their description
        self._variances: set[SiteKey] = set()  # sites completing a hand-written variance
        self._chain_ends: set[SiteKey] = set()  # sites completing a mean, sum or variance over H and W
        self._pooled_chains: set[SiteKey] = set()  # of those, converted sites answered with pooled values
        # Of those and of the poolings answered with pooled values, the means and sums whose values
        # over the windows a converted forward read, with the map's size there (a small map may
        # take the windows' means first where a large one takes a layer first): the others start
        # pending (computed only if read, or answered by a layer from the map; see
        # PooledValues.start_pending).
        self._means_read: set[tuple[SiteKey, Pair]] = set()  # (site, map size at the site)
        # Calls making intermediates of hand-written statistics (a sum over W that the next call
        # sums over H; a deviation from the mean, its square), those of them calibration saw used
        # otherwise than once by their chain's next step, each other one's next step, and the lazy
        # ones, whose stand-ins take their place once converted (see tlc.convert.call_sites.partials).
        self._public: set[SiteKey] = set()
        self._steps: dict[SiteKey, SiteKey] = {}
        self._lazy: set[SiteKey] = set()
        self._pooled: set[SiteKey] = set()  # converted sites answered with pooled values
        self._map_fallback: set[SiteKey] = set()  # of those, sites whose local map may answer instead
        # Of those, how the whole-map value from the windows' pass stands in for the call's result
        # (told once per site, from a call on meta tensors; see _form_of_result).
        self._whole_fits: dict[SiteKey, str | None] = {}
        # GCNet-style context pooling: product site -> (its softmax site, map (h, w) at training).
        self._pairs: dict[SiteKey, tuple[SiteKey, Pair]] = {}
        self._context: dict[SiteKey, SiteKey] = {}  # converted pairs: product site -> softmax site
        self._context_softmax: set[SiteKey] = set()
        self._probe = 0
        self._calibration_size: Pair | None = None  # (H, W) of the calibration input
        # Inputs no larger than this (H, W) run as the original model, without the mode: every
        # converted site's window covers its map there, so local and global agree. None: never.
        self._covered_up_to: Pair | None = None
        # After the checks: calls of the model (call_signature) whose every converted site met a
        # map its window covered: they run as the original model too.
        self._checked = False
        self._covered_calls: set[tuple] = set()
        self._thread = threading.local()
        # Calls inside modules that module rules matched (converted or deliberately left global)
        # belong to those rules.
        for path, module in model.named_modules():
            reopened = any(path == p or path.startswith(p + ".") for p in reopen)
            excluded = not reopened and any(path == p or path.startswith(p + ".") for p in skip)
            enter = Enter(self, path, excluded, reopened)
            module.register_forward_pre_hook(enter, with_kwargs=path == "")  # the model's own: its call's signature
            module.register_forward_hook(Leave(enter), always_call=True)

    # Thread-local run state; dropped by deepcopy/pickle (it only lives during a forward).
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_thread"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread = threading.local()

    def _stack(self) -> list[ModuleCall]:
        stack = getattr(self._thread, "stack", None)
        if stack is None:
            stack = self._thread.stack = []
        return stack

    def _handlers(self) -> dict[object, Handler]:
        if self.phase != "apply":
            return RECORD_HANDLERS
        handlers = APPLY_WITH_ARITHMETIC if self._variances else APPLY_HANDLERS
        return {**handlers, **CONTEXT_HANDLERS} if self._context else handlers

    def _pair_context(self, key: SiteKey, args: tuple, kwargs: dict) -> None:
        """At calibration: whether the product ``key`` pools a map with the weights of a softmax over
        its positions (GCNet: ``matmul(x.view(N, 1, C, H*W), softmax(mask.view(N, 1, H*W)).unsqueeze(-1))``)."""
        found = context_operands(args, kwargs, self._thread.softmaxes)
        if found is not None:
            softmax_key, x_map, _ = found
            self._pairs.setdefault(key, (softmax_key, (x_map.shape[2], x_map.shape[3])))

    def _context_pool(self, key: SiteKey, func: Callable, args: tuple, kwargs: dict, site: Site) -> object:
        """The product of a converted context pair: the global result as a pooled value carrying the
        softmax-weighted mean of every window (:func:`tlc.ops.local_softmax_pool`). Where the map's
        layout cannot be told (views are not tracked under ``torch.inference_mode``, and no running
        module was given a map of H*W pixels) the product stays global, with a warning."""
        softmax_key = self._context[key]
        out, logits = self._thread.softmaxes.get(softmax_key, (None, None))
        found = context_maps(args, kwargs, out, logits, [call.map_size for call in reversed(self._stack())])
        if found is None:
            if key not in self._unknown:
                self._unknown[key] = "context pooling whose map layout cannot be told here"
                warnings.warn(f"tlc: {self._unknown[key]} (module '{key[0]}'); it stays global", stacklevel=2)
            return func(*args, **kwargs)
        x_map, logits_map = found
        h, w = x_map.shape[-2:]
        kh, kw = min(site.window[0], h), min(site.window[1], w)
        if self._checked and (kh, kw) == (h, w) and not tracing():
            return func(*args, **kwargs)  # one window holds the map: the global product is the local one
        self._count_local()
        values = self._thread.mode.values
        if (key, (h, w)) not in self._means_read:  # pending: a layer taking it may run on the map first
            means = WindowMeans(x_map, (kh, kw), logits=logits_map)
            return values.start_pending(func(*args, **kwargs), means, key)
        valid = local_softmax_pool(x_map, logits_map, (kh, kw), valid_only=True)
        return values.start(func(*args, **kwargs), valid, (h, w), source=key)

    # --- hooks
    def enter_module(self, hook: Enter, args: tuple = (), model: nn.Module | None = None, kwargs: dict | None = None) -> None:
        covered = getattr(self._thread, "covered", None)
        if covered:  # a forward run as the original: only its module calls are followed
            covered.append(hook)
            return
        stack = self._stack()
        size = _map_size(args[0] if args else None)
        if not stack and hook.path == "":  # the model itself, not a part run alone
            signature = (
                call_signature(args, kwargs or {}, model) if self._checked and self.phase == "apply" and not tracing()
                else None
            )
            if self._covers(size) or (signature is not None and signature in self._covered_calls):
                self._thread.covered = [hook]
                return
            self._thread.signature, self._thread.local_sites = signature, 0
        if not stack:
            if self.phase == "record" and self._calibration_size is None:
                self._calibration_size = size
            self._thread.softmaxes = {}
            values = PooledValues() if self.phase == "apply" and (self._pooled or self._pooled_chains) else None
            mode = LocalCalls(self, self._handlers(), values)
            if self.phase == "record":
                mode.partials = PartialUses()
            elif self.phase == "apply" and self._lazy:
                mode.partials = StandIns()
            mode.__enter__()
            self._thread.mode = mode
        excluded = hook.excluded or (stack[-1].excluded and not hook.reopened if stack else False)
        stack.append(ModuleCall(hook, hook.path, excluded, map_size=size))

    def leave_module(self, hook: Enter, output: object = None) -> object:
        """Pop the module call; at the outermost one, leave the mode. Returns the output to give
        instead of ``output`` (pooled values answered by choice become their local maps), or None."""
        covered = getattr(self._thread, "covered", None)
        if covered:
            for i in range(len(covered) - 1, -1, -1):  # calls a raising pre-hook left on the stack go too
                if covered[i] is hook:
                    del covered[i:]
                    break
            return None
        stack = self._stack()
        if not stack or stack[-1].hook is not hook:
            return None  # this call's pre-hook never ran (an earlier pre-hook raised)
        stack.pop()
        mode = getattr(self._thread, "mode", None)
        if stack or mode is None:
            return None
        self._thread.mode = None
        remove_mode(mode)
        partials, given = mode.partials, output
        if isinstance(partials, PartialUses):
            public, steps = partials.finish(output)
            self._public |= public
            self._steps.update(steps)
        elif isinstance(partials, StandIns) and partials:
            output = partials.replace_in(output)  # returned: their local values
        if mode.values is not None:
            # A statistic returned as such, where its local map would have answered: that map.
            output = mode.values.materialise(output, self._map_fallback)
            self._thread.escaped = mode.values.finish(output)  # pooled values that never met the image
            self._means_read |= mode.values.read
        signature = getattr(self._thread, "signature", None)
        # Not after a failed forward (the hook then runs inside torch's exception handler).
        if signature is not None and hook.path == "" and self._thread.local_sites == 0 and sys.exc_info()[1] is None:
            if len(self._covered_calls) >= _COVERED_CALLS_KEPT:  # inputs of ever new sizes
                self._covered_calls.clear()
            self._covered_calls.add(signature)
        self._thread.signature = None
        return None if output is given else output

    def _covers(self, size: tuple[int, ...] | None) -> bool:
        """Whether a forward whose input is (H, W) ``size`` runs as the original model: no larger
        than the calibration input, where every converted window covered its map (feature maps
        grow with the input, as the probes showed), and not traced (the graph must hold for
        every size)."""
        up_to = self._covered_up_to
        return (
            up_to is not None and size is not None and size[0] <= up_to[0] and size[1] <= up_to[1] and not tracing()
        )

    # --- the mode's answer to a recognised call
    def answer(self, func: Callable, args: tuple, kwargs: dict, call: Call) -> object:
        """The mode's answer to a recognised call: run it (recording it at calibration) or, at a
        converted site, its local form."""
        stack = self._stack()
        mode = self._thread.mode
        if not stack or stack[-1].excluded or (self.phase == "apply" and call.local is None and not self._pooled):
            return mode.compute(func, (), args, kwargs)
        here = self._key_here(call.op)
        if here is None:
            return mode.compute(func, (), args, kwargs)  # inside a local op of tlc's own
        key, location, function = here
        if self.phase == "record":
            return self._record(key, location, function, func, args, kwargs, call)
        if self.phase == "probe":
            seen = self._observed.get(key)
            if seen is not None and seen.probes[self._probe] is None:
                seen.probes[self._probe] = tuple(call.x.shape)
            return self._follow(key, call, func(*args, **kwargs), None)
        return self._apply(key, f"{call.op} at {location} in module '{key[0]}'", func, args, kwargs, call)

    def _key_here(self, op: str) -> tuple[SiteKey, str, str] | None:
        """(the key, source location and function name) of the call ``op`` the running model code
        makes now; None outside the model's modules, in an excluded one, or when tlc's own local
        ops make it."""
        stack = self._stack()
        if not stack or stack[-1].excluded:
            return None
        top = stack[-1]
        frame = caller()
        if frame is not None and frame.f_code.co_filename.startswith(INTERNAL):
            return None
        if frame is None:
            function, offset, location = "<torch>", 0, "torch.nn"
        else:
            code = frame.f_code
            function = getattr(code, "co_qualname", code.co_name)
            offset = frame.f_lineno - code.co_firstlineno
            location = f"{os.path.basename(code.co_filename)}:{frame.f_lineno}"
        slot = (function, offset, op)
        occurrence = top.counts.get(slot, 0)
        top.counts[slot] = occurrence + 1
        return (top.path, function, offset, op, occurrence), location, function

    def arithmetic(self, func: Callable, types: tuple, args: tuple, kwargs: dict, mark: Mark | None) -> object:
        """The mode's answer to the arithmetic of hand-written statistics (``x - mean``, ``dev ** 2``,
        ``sum / (H * W)``): the call made and its result given ``mark``; a stand-in where the result
        is a lazy intermediate (its chain's next step reads the mark alone)."""
        mode = self._thread.mode
        key = None
        if mark is not None and mark.kind in INTERMEDIATE and self.phase != "probe":
            here = self._key_here(mark.kind)
            key = None if here is None else here[0]
        if key is not None and self.phase == "apply" and key in self._lazy:
            form = _form_of(func, args, kwargs)
            first = next(iter(tensor_args(args, kwargs)), None)
            if form is not None and first is not None:
                out = mode.partials.lazy(form, first.device, lambda: mode.compute(func, types, args, kwargs))
                set_mark(out, mark)
                return out
        out = mode.compute(func, types, args, kwargs)
        if mark is not None:
            set_mark(out, mark)
        if key is not None and self.phase == "record" and isinstance(out, torch.Tensor):
            for t in tensor_args(args, kwargs):
                mode.partials.continued(t, key)
            mode.partials.made(out, key)
        return out

    def _record(
        self, key: SiteKey, location: str, function: str, func: Callable, args: tuple, kwargs: dict, call: Call
    ) -> object:
        """Calibration: note the site and its input shape, run the call globally."""
        seen = self._observed.get(key)
        if seen is None:
            seen = self._observed[key] = Observed(template(call), location, function)
        seen.shapes.append(tuple(call.x.shape))
        out = self._follow(key, call, func(*args, **kwargs), None)
        if call.op == "softmax":
            self._thread.softmaxes[key] = out
        elif call.op == "matmul":
            self._pair_context(key, args, kwargs)
        return out

    def _apply(self, key: SiteKey, where: str, func: Callable, args: tuple, kwargs: dict, call: Call) -> object:
        """Converted model: the local form at a converted site; the global call elsewhere (with a
        warning, once, for a call calibration did not see under this name)."""
        channels = call.x.shape[1]
        converted = self._windows.get(key)
        problem = None
        if converted is None and key not in self._observed:
            problem = "was not met at calibration"
        elif converted is not None and channels != converted[1]:
            # Not the call calibrated under this name: control flow differs from calibration's.
            problem = f"has {channels} channels here, {converted[1]} at calibration"
        stand_ins = self._thread.mode.partials
        if stand_ins is not None and stand_ins.takes(args, kwargs):
            # Stand-ins pass only to the next step of their chain: a lazy one, or the end reading marks.
            passed = problem is None and converted is not None and (key in self._lazy or key in self._pooled_chains)
            if not passed:
                args, kwargs, call = reparsed(stand_ins, func, args, kwargs)
                if call is None:
                    return func(*args, **kwargs)
        if problem is not None or converted is None:
            if problem is not None and key not in self._unknown:
                self._unknown[key] = f"{where} {problem}"
                warnings.warn(f"tlc: {self._unknown[key]}; it stays global", stacklevel=3)  # the mode's handler, as for every call
            return self._follow(key, call, func(*args, **kwargs), None)
        self._thread.last = key
        site = converted[0]
        if self._covered_here(key, call, site, stand_ins is not None and stand_ins.takes(args, kwargs)):
            return func(*args, **kwargs)  # one window holds the map: the global call is the local one
        if key in self._context_softmax:  # the weights, kept for the product that pools with them
            out = func(*args, **kwargs)
            self._thread.softmaxes[key] = (out, call.x)
            return out
        if key in self._context:
            return self._context_pool(key, func, args, kwargs, site)
        self._count_local()
        if key in self._pooled_chains and (
            pooled := pooled_statistic(self._thread.mode.values, key, call, site, read=self._means_read)
        ) is not None:
            return pooled
        if key in self._lazy:  # only its chain's next step takes it, and reads the marks alone
            lazy = self._lazy_result(key, func, args, kwargs, call, site)
            if lazy is not None:
                return lazy
        if stand_ins is not None and stand_ins.takes(args, kwargs):  # its value is needed after all
            args, kwargs, call = reparsed(stand_ins, func, args, kwargs)
            if call is None or call.local is None:
                return func(*args, **kwargs)
        if key in self._pooled:  # the global result, carrying its value over every window
            values = self._thread.mode.values
            # Pending (its windows' values computed if read) unless read before at this map size.
            pending = None if (key, tuple(call.x.shape[-2:])) in self._means_read else pending_windows(values, call, site)
            valid, whole = (None, pending[1]) if pending is not None else valid_pooling(call, site, values)
            if whole is not None and key not in self._whole_fits:
                self._whole_fits[key] = _form_of_result(whole, func, args, kwargs)
            form = self._whole_fits.get(key) if whole is not None else None
            if form == "keepdim":
                real = whole
            elif form == "squeezed":  # keepdim=False: (N, C)
                real = whole.view(whole.shape[:2])
            else:
                real = func(*args, **kwargs)
            if pending is not None:
                return values.start_pending(real, pending[0], key)
            return values.start(real, valid, call.x.shape[-2:], source=key)
        if call.local is None:
            return func(*args, **kwargs)
        return self._follow(key, call, call.local(site), site)

    def _count_local(self) -> None:
        """Note that a converted site ran its local form in this forward (it is then no call that
        runs as the original)."""
        self._thread.local_sites = getattr(self._thread, "local_sites", 0) + 1

    def _covered_here(self, key: SiteKey, call: Call, site: Site, stand_ins: bool) -> bool:
        """After the checks: whether the converted site ``key`` works over the H and/or W of a 4-D
        map (a pooling, a mean, a norm; a sum over W then over H, written in parts) that its window
        covers whole in this call, so that its global call is its local form exactly, and the
        original's own bits. Not where a stand-in of an earlier step comes in (that step was not
        covered), for the reference's approximate pooling, nor while tracing (the graph must hold
        at every size)."""
        x = call.x
        return (
            self._checked and not stand_ins and not site.fast and call.kind == "map"
            and bool(call.dims) and set(call.dims) <= {2, 3} and key not in self._context and key not in self._context_softmax
            and x.dim() == 4 and site.window[0] >= x.shape[2] and site.window[1] >= x.shape[3] and not tracing()
        )

    def _lazy_result(
        self, key: SiteKey, func: Callable, args: tuple, kwargs: dict, call: Call, site: Site
    ) -> torch.Tensor | None:
        """A stand-in for the local form of the lazy site ``key`` (None without a meta kernel)."""
        stand_ins = self._thread.mode.partials
        form = _form_of(func, args, kwargs)
        if form is None:
            return None

        def value() -> torch.Tensor:
            real_args, real_kwargs, real = reparsed(stand_ins, func, args, kwargs)
            if real is None or real.local is None:
                return func(*real_args, **real_kwargs)
            return real.local(site)

        return self._follow(key, call, stand_ins.lazy(form, call.x.device, value), site)

    def _follow(self, key: SiteKey, call: Call, out: object, site: Site | None) -> object:
        """Carry the marks of hand-written statistics (see ``Mark``) through a spatial mean or sum;
        at the end of a centred square's reduction, return the local variance."""
        if call.mark is None or call.local is None:
            return out
        dims = call.dims
        windows = tuple((d, None if site is None else site.window[d - 2]) for d in dims)
        factor = sum_factor(call)
        m = mark_of(call.x)
        record = self.phase == "record"
        uses = self._thread.mode.partials if record else None
        if m is None:
            set_mark(out, Mark("mean", call.x, dims, factor, windows))
            if record and dims == (2, 3):
                self._chain_ends.add(key)
            elif record:
                uses.made(out, key)
        elif m.kind == "mean" and not set(m.done) & set(dims):
            done = tuple(sorted(m.done + dims))
            set_mark(out, Mark("mean", m.src, done, m.scale * factor, m.windows + windows))
            if record:
                uses.continued(call.x, key)
                if done == (2, 3):
                    self._chain_ends.add(key)
        elif m.kind in ("sq", "sqsum") and not set(m.done) & set(dims):
            done = tuple(sorted(m.done + dims))
            scale = m.scale * factor if m.kind == "sqsum" else factor
            reduced = m.windows + windows if m.kind == "sqsum" else windows
            if record:
                uses.continued(call.x, key)
            if done != (2, 3):
                set_mark(out, Mark("sqsum", m.src, done, scale, reduced, m.centre))
                if record:
                    uses.made(out, key)
                return out
            if record:
                self._variances.add(key)
                self._chain_ends.add(key)
            window = dict(reduced)
            if site is not None and window == dict(m.centre) and None not in window.values():
                var = local_var(m.src, (window[2], window[3]), 0.0)
                return var if scale == 1 else var * scale
        return out

    # --- calibration results
    def finish_calibration(self, site_for: Callable[[Pair], Site], probed: bool = False) -> list[CallSite]:
        """Turn what the record phase saw into sites, switch to the apply phase.

        Args:
            site_for: the :class:`tlc.Site` (window, fast, ...) for a feature size at training.
            probed: whether the probe forwards ran; then a call is global only where they show
                its axes growing with the image, and calls they did not meet are not sites.

        Returns:
            :attr:`sites`.
        """
        for key, seen in self._observed.items():
            path, _, _, _, occurrence = key
            call = seen.call
            if probed and None in seen.probes:
                continue  # a call only the training size makes (a kernel equal to the map there)
            tags = tags_of(call, seen.shapes[0], tuple(seen.probes) if probed else None)
            is_global, reason = judge(call, tags)
            if not is_global:
                continue
            shapes = sorted(set(seen.shapes))
            if reason is None and len(shapes) > 1:
                sizes = ", ".join("x".join(str(n) for n in s[1:]) for s in shapes)
                reason = f"one call site met with several input sizes (CxHxW: {sizes}); give each its own call"
            shape = shapes[0]
            channels = shape[1] if len(shape) > 1 else 0
            feature = (shape[2], shape[3]) if len(shape) == 4 else (0, 0)
            window = None
            whole_map = len(shapes) == 1 and poolable(call) and tags == (H, W)
            if reason is not None and whole_map:
                reason = None  # kept as a pooled value: consumers may reshape it freely
                self._pooled.add(key)
            if reason is None:
                site = site_for(feature)
                self._windows[key] = (site, channels)
                window = site.window
                if whole_map and key not in self._pooled and not site.fast and call.mark is None:
                    # Also answered with a pooled value, though the local map would do: what consumes
                    # the statistic (a gate's layers) then runs on the valid windows only, and x * gate
                    # multiplies it in replicated, never writing a full-size gate. Should a consumer
                    # refuse pooled values, the site falls back to its local map.
                    self._pooled.add(key)
                    self._map_fallback.add(key)
            if reason is None and key in self._chain_ends and len(shapes) == 1 and not site.fast:
                # A mean, sum or variance over H and W, written by hand or not: answered with a
                # pooled value, its map as the fallback (as above).
                self._pooled_chains.add(key)
                self._map_fallback.add(key)
            self._index[key] = len(self.sites)
            self.sites.append(
                CallSite(path, call.op, seen.location, seen.function, occurrence, channels, feature, window, reason)
            )
        self._convert_context_pairs(site_for)
        self._update_lazy()
        self.phase = "apply"
        return self.sites

    def _convert_context_pairs(self, site_for: Callable[[Pair], Site]) -> None:
        """A softmax over all positions whose weights one product pools a map with (GCNet's context
        block) becomes, with that product, one local softmax-weighted pooling per window."""
        users: dict[SiteKey, int] = {}
        for softmax_key, _ in self._pairs.values():
            users[softmax_key] = users.get(softmax_key, 0) + 1
        for key, (softmax_key, feature) in self._pairs.items():
            if users[softmax_key] != 1 or key not in self._index or softmax_key not in self._index:
                continue
            product, softmax = self.sites[self._index[key]], self.sites[self._index[softmax_key]]
            if not (product.reason or "").endswith("all H*W positions") or not (softmax.reason or "").endswith("all H*W positions"):
                continue
            site = site_for(feature)
            if site.fast:
                continue
            for k, entry in ((key, product), (softmax_key, softmax)):
                self._windows[k] = (site, entry.channels)
                self.sites[self._index[k]] = replace(entry, feature_size=feature, window=site.window, reason=None)
            self._pooled.add(key)
            self._context[key] = softmax_key
            self._context_softmax.add(softmax_key)

    def _update_lazy(self) -> None:
        """The lazy intermediates: each taken only by its chain's next step, itself lazy or a
        converted statistic answered with a pooled value (which reads the marks alone)."""
        def lazy(key: SiteKey, depth: int = 0) -> bool:
            step = self._steps.get(key)
            if key in self._public or step is None or depth > 8 or (key in self._observed and key not in self._windows):
                return False
            return step in self._pooled_chains or lazy(step, depth + 1)

        self._lazy = {key for key in self._steps if lazy(key)}

    def leave_global(self, key: SiteKey, reason: str) -> None:
        """Stop converting the site ``key`` (and the other half of its context pair); the report
        gives ``reason``."""
        self._windows.pop(key, None)
        self._pooled.discard(key)
        self._pooled_chains.discard(key)
        self._map_fallback.discard(key)
        partner = self._context.pop(key, None)
        if partner is None:
            partner = next((k for k, v in self._context.items() if v == key), None)
            self._context.pop(partner, None)
        if partner is not None:
            self._context_softmax.discard(partner)
            self._context_softmax.discard(key)
            self._windows.pop(partner, None)
            self._pooled.discard(partner)
            self.sites[self._index[partner]] = replace(self.sites[self._index[partner]], window=None, reason=reason)
        index = self._index[key]
        self.sites[index] = replace(self.sites[index], window=None, reason=reason)
        self._update_lazy()

    def map_instead(self, key: SiteKey) -> bool:
        """Answer the converted site ``key`` with its full-size local map from now on, if it was
        answered with a pooled value by choice (a consumer refused the pooled value); else False."""
        if key not in self._map_fallback:
            return False
        self._map_fallback.discard(key)
        self._pooled.discard(key)
        self._pooled_chains.discard(key)
        self._update_lazy()
        return True

    def pool_instead(self, key: SiteKey) -> bool:
        """Answer the converted site ``key`` with a pooled value from now on, if it is a whole-map
        pooling not already so answered (its full-size local map broke the model); else False."""
        seen = self._observed.get(key)
        site = self._windows.get(key)
        if key in self._pooled or seen is None or site is None or site[0].fast or not poolable(seen.call):
            return False
        self._pooled.add(key)
        return True

    # --- what convert_call_sites drives
    @property
    def recorded(self) -> bool:
        """Whether calibration met any call that may be a global op."""
        return bool(self._observed)

    def start_probe(self, index: int) -> None:
        """Record input shapes for probe forward ``index`` (0: at twice the height, 1: the width)."""
        self.phase, self._probe = "probe", index

    def finish_checks(self, probed: bool) -> None:
        """After the checks passed: let inputs no larger than the calibration input run as the
        original model where every converted site's window covered its map at calibration (a
        4-D map; ``probed``: the probes showed which axes grow with the image)."""
        covering = all(
            min(site.feature_size) > 0 and site.window[0] >= site.feature_size[0] and site.window[1] >= site.feature_size[1]
            for site, _ in self._windows.values()
        )
        self._covered_up_to = self._calibration_size if probed and covering else None
        self._checked = True

    def start_check(self) -> None:
        """Forget the last converted site run and the escaped pooled values of an earlier forward."""
        self._thread.last = None
        self._thread.escaped = frozenset()

    def escaped(self) -> list[SiteKey]:
        """Sites whose pooled values reached the last forward's output without meeting the image."""
        return [key for key in self._thread.escaped if key in self._index]

    def known(self, keys: Iterable[SiteKey]) -> list[SiteKey]:
        """Those of ``keys`` that are sites."""
        return [key for key in keys if key in self._index]

    def last_converted(self) -> SiteKey | None:
        """The last converted site the current (or last) forward ran."""
        return getattr(self._thread, "last", None)

    def forget_unknown(self) -> None:
        """Let calls not met at calibration warn again (after a check at another size)."""
        self._unknown.clear()

    @property
    def converted(self) -> int:
        """How many sites run locally."""
        return len(self._windows)

    def remove(self, model: nn.Module) -> None:
        """Take this converter's hooks off ``model``: its functional ops are global again."""
        remove_call_site_conversion(model, only=self)


#: How many calls of the model (call_signature) run as the original before the set starts afresh.
_COVERED_CALLS_KEPT = 32


def _map_size(first: object) -> tuple[int, int] | None:
    """(H, W) of a module's first argument when it is an (N, C, H, W) tensor, else None. Read with
    torch functions off: with this converter's mode active, ``dim()`` and ``shape`` would each be
    a call the mode looks at (115 of a 16-block model's 196 per forward)."""
    if not isinstance(first, torch.Tensor):
        return None
    with torch._C.DisableTorchFunction():
        return tuple(first.shape[-2:]) if first.dim() == 4 else None


def _form_of(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``func(*args, **kwargs)``'s result as a meta tensor (its shape and dtype, nothing computed);
    None where it is no tensor or there is no meta kernel."""
    try:
        out = meta_call(func, args, kwargs)
    except Exception:  # noqa: BLE001 (no meta kernel)
        return None
    return out if isinstance(out, torch.Tensor) else None


def _form_of_result(value: torch.Tensor, func: Callable, args: tuple, kwargs: dict) -> str | None:
    """How the (N, C, 1, 1) whole-map ``value`` the windows' pass gave stands in for
    ``func(*args, **kwargs)``: "keepdim" (as it is), "squeezed" (as (N, C): ``keepdim=False``), or
    None (another form, such as ``return_indices=True``: torch's own call then runs). Told from a
    call on meta tensors."""
    out = _form_of(func, args, kwargs)
    if out is None or out.dtype != value.dtype:
        return None
    if out.shape == value.shape:
        return "keepdim"
    return "squeezed" if out.shape == value.shape[:2] else None
