"""Global ops found by what the model computes while it runs, made local or reported, by call site.

Module rules see modules; many global ops are function calls (``x.mean((2, 3), keepdim=True)``,
``x.sum(3).sum(2) / (H * W)``, ``torch.fft.rfft2(x)``). Tracing (torch.fx) cannot follow the
data-dependent Python of real models (NAFNet pads by the input size). Instead a
:class:`torch.overrides.TorchFunctionMode` is active while the model runs; it sees every torch call
and names each *call site* by:

- the innermost module running (its qualified name, from forward hooks),
- the calling source line (the first stack frame outside torch), kept as the function's qualified
  name plus the line's offset in that function, so moving code around in the file keeps the name,
- the op, and an occurrence counter of that (line, op) within that module call (loops, helpers).

Which calls are global: a calibration forward at the training size (h, w) records, per site, the
shape of the input of every reduction, pool, norm, softmax, normalisation, matrix product and FFT
whose axes may be spatial; two probe forwards at (2h, w) and (h, 2w) record them again. An axis
that grows with the height is H, with the width W, with both a flattened H*W axis; a call across
none of them (channel means, a (B, heads, C, C) channel-attention softmax) is no global op. Should
a probe fail (a model that only runs at its training size), 4-D tensors are taken as (N, C, H, W)
and softmax, normalisation and products are not looked at (with a warning).

The site's window is fixed from its feature size at the training size like a module's. Afterwards
the mode answers calls at converted sites with the local op (window clamped to the map). The hooks
live on the model (state_dict keys unchanged, deepcopy and pickle keep them); the mode is entered
when the outermost hooked module starts and left when it ends, also on exceptions (``always_call``
forward hooks). Once converted, only the calls that can have a local form are looked at; any other
call costs one dict lookup.

Made local, on (N, C, H, W) maps, ``keepdim=True``:

======================================================  ============================================
call                                                    local version
======================================================  ============================================
``mean`` over {2, 3}, ``F.adaptive_avg_pool2d(x, 1)``,   :func:`tlc.local_mean`
``F.avg_pool2d(x, x.shape[2:])``
``sum`` over {2, 3}                                     ``local_mean`` x (H * W) of the map
``mean``/``sum`` over one of 2, 3,                       :func:`tlc.ops.local_axis_mean` (x the axis
``F.adaptive_avg_pool2d(x, (None, 1))``/``((1, None))``  length for sums)
``amax`` over {2, 3}, ``F.adaptive_max_pool2d(x, 1)``,  :func:`tlc.ops.local_max`
``F.max_pool2d(x, x.shape[2:])``
``amax``/``max(dim)`` over one of 2, 3, strip max pools  :func:`tlc.ops.local_axis_max` (``max`` gives
                                                        ``indices=None``)
``var``/``std`` (``_mean``) over {2, 3}                  :func:`tlc.ops.local_var` / ``local_std``
``((x - mean) ** 2)`` reduced over H and W (IMDN)       ``local_var`` of ``x`` (see ``Mark``)
``F.instance_norm`` (input statistics)                  :func:`tlc.local_instance_norm`
``F.group_norm``                                        :func:`tlc.local_group_norm`
``F.layer_norm`` over (H, W) / (C, H, W), no affine     local instance norm / group norm, one group
======================================================  ============================================

Whole-map statistics with ``keepdim=True`` (``mean``, ``sum``, ``amax``, ``var``, ``std``, the
poolings) are answered with *pooled values* (:mod:`tlc.convert.pooled_values`) rather than their
full-size local maps: what consumes the statistic (a gate's layers: SRM's FC, batch norm and
sigmoid) then runs once per window inside the map, and ``x * gate`` multiplies it in replicated.
The result is the same; a consumer that refuses pooled values (``torch.stack`` with a map) gets
the local map instead, and a statistic returned from the model is returned as its local map.

Reported, left global: the same with ``keepdim=False`` or over a flattened H*W axis (reasons start
with :data:`POOLED_VALUE`), ``var``/``std`` over one axis, adaptive pooling to a fixed k x k grid,
``F.layer_norm`` over H, W with an affine weight, FFTs over H and/or W, softmax, normalisation
(``F.normalize``, norms), matrix products (``matmul``, ``bmm``, ``einsum``) and attention
(``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``) over all positions or over whole
rows or columns (Stripformer: the reason offers the windowed form).
"""


from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

from torch import nn

from ..._util import one_line
from ...ops._common import Pair
from ..pooled_values import PooledValueError
from ..rules import Site
from .converter import CallSiteConverter
from .hooks import installed, remove_call_site_conversion, show_in_repr
from .recognise import recognise
from .sites import LEAVES_IMAGE, POOLED_VALUE, CallSite, SiteKey

__all__ = [
    "LEAVES_IMAGE",
    "POOLED_VALUE",
    "CallSite",
    "CallSiteConverter",
    "SiteKey",
    "convert_call_sites",
    "installed",
    "recognise",
    "remove_call_site_conversion",
]


def convert_call_sites(
    model: nn.Module,
    run: Callable[[str], object],
    site_for: Callable[[Pair], Site],
    *,
    skip: Iterable[str] = (),
    reopen: Iterable[str] = (),
    probes: Sequence[Callable[[str], object]] = (),
    check_other: Callable[[str], object] | None = None,
) -> tuple[object, list[CallSite]]:
    """Make the functional global ops of ``model`` local; :func:`tlc.convert` calls this (its
    ``functional=True``, the default) after converting modules.

    Runs ``run`` (one forward at the training size (h, w), raising an exception that chains the
    model's own) to record the calls, then ``probes`` (at (2h, w) and (h, 2w)) to tell which axes
    grow with the image: only calls across such axes are global ops. Then the check forwards:
    ``run`` and ``check_other`` (at a size where H != W, where strips of both axes no longer fit
    together). Should a check fail after a converted site ran (its (N, C, H, W) result is used as a
    pooled (N, C, 1, 1) one, e.g. flattened), the last converted site before the failure is left
    global, with the error as reason, and the checks run again. Replaces any earlier functional
    conversion of ``model``.

    Once checked: where every converted site's window covered its map at the training size, the
    model called on an input no larger than the calibration input (in H and in W; not a part of
    the model run alone) runs as the original model, without the function mode (local and global
    agree there; maps grow with the image, as the probes showed). At any size, a converted site
    pooling or normalising a 4-D map over H and W that its window covers runs its global call,
    which is then its local form (the original's bits); a call of the model whose every converted
    site was so (the same shapes of its tensor arguments, other arguments and the model's own
    numbers: :func:`tlc._util.call_signature`) runs as the original model from then on, without
    the mode. Not while tracing, where the graph must hold at every size.

    Args:
        model: the model, changed in place (forward hooks).
        run: ``run(what)`` runs ``model`` at the training size and returns its output; ``what``
            names the forward in error messages.
        site_for: the :class:`tlc.Site` for a feature size (h, w) measured at the training size.
        skip: qualified names of modules whose calls are not sites (those module rules matched),
            nor those of the modules below them,
        reopen: except these modules and those below them (poolings left to this view inside a
            module a rule took).
        probes: two runners, at (2h, w) and (h, 2w). Without them, or should one fail (with a
            warning), a 4-D tensor is taken as (N, C, H, W) and softmax, normalisation and matrix
            products over positions are not looked at.
        check_other: runs the model at a size other than the training size, H != W; only where
            the probe forwards ran.

    Returns:
        (output of the passing check forward at the training size, every global op found,
        converted or not).
    """
    remove_call_site_conversion(model)
    converter = CallSiteConverter(model, skip, reopen)
    try:
        run("the calibration forward of functional call sites")
        probed = len(probes) == 2 and converter.recorded and _probe(converter, probes)
        sites = converter.finish_calibration(site_for, probed)
        out = _check(model, converter, run, check_other if probed else None)
        converter.finish_checks(probed)
        if converter.converted:
            show_in_repr(model, converter)
        return out, sites
    except BaseException:
        remove_call_site_conversion(model, only=converter)
        raise


def _probe(converter: CallSiteConverter, probes: Sequence[Callable[[str], object]]) -> bool:
    """Run the probe forwards; False (with a warning) should one fail."""
    try:
        for index, probe in enumerate(probes):
            converter.start_probe(index)
            probe("a probe forward of functional call sites")
    except Exception as err:  # noqa: BLE001 (any failure: fall back to the layout assumption)
        warnings.warn(
            f"tlc: {one_line(err.__cause__ or err, typed=True, limit=160)}; spatial axes are taken to be the last two of 4-D "
            "tensors, and softmax, normalisation and matrix products over positions are not checked",
            stacklevel=5,  # the caller of tlc.convert
        )
        return False
    return True


def _check(
    model: nn.Module, converter: CallSiteConverter, run: Callable[[str], object], check_other: Callable[[str], object] | None
) -> object:
    """The check forwards; each failure leaves one more site global (see :func:`convert_call_sites`)."""
    while True:
        if not converter.converted:
            remove_call_site_conversion(model, only=converter)
            return run("the converted model's check forward")
        converter.start_check()
        try:
            out = run("the converted model's check forward")
            escaped = converter.escaped()
            if escaped:
                for key in escaped:
                    converter.leave_global(key, LEAVES_IMAGE)
                continue
            if check_other is not None:  # the model runs at other sizes
                with warnings.catch_warnings():  # sites met only at other sizes warn at inference
                    warnings.simplefilter("ignore")
                    try:
                        check_other("the converted model's check forward at another size")
                    finally:
                        converter.forget_unknown()
            return out
        except Exception as err:
            if not _leave_failing_site(converter, err):
                raise


def _leave_failing_site(converter: CallSiteConverter, err: Exception) -> bool:
    """After a failed check: leave global the sites the error names, else the last converted site
    run (or answer it with a pooled value first). False when no converted site ran."""
    cause = err.__cause__ or err
    refused = converter.known(getattr(cause, "sources", ()))
    if isinstance(cause, PooledValueError) and refused:
        for key in refused:
            if not converter.map_instead(key):
                converter.leave_global(key, f"{POOLED_VALUE}: {cause.reason}")
        return True
    last = converter.last_converted()
    if last is None:
        return False
    if not converter.pool_instead(last):
        converter.leave_global(
            last, f"{POOLED_VALUE}: the model fails on its local (N, C, H, W) result: {one_line(cause, typed=True, limit=160)}"
        )
    return True
