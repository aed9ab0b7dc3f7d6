"""Which recorded calls are global ops: how their axes grow between the calibration forward and
the probe forwards (:func:`tags_of`), the verdict (:func:`judge`) and :func:`recognise` for one call."""

from __future__ import annotations

from .calls import Call, spatial_only
from .parsers import PARSERS
from .sites import POOLED_VALUE

_WINDOWED = "a windowed form (attention within a window of the row or column) would be local; tlc does not build it"


# How an axis of a watched tensor changed between the calibration forward at the training size
# (h, w) and the probe forwards at (2h, w) and (h, 2w).
FIXED, H, W, HW = "fixed", "H", "W", "HW"

Shape = tuple[int, ...]


def tags_of(call: Call, shape: Shape, probes: tuple[Shape, Shape] | None) -> tuple[str, ...]:
    """Per axis in ``call.dims``: fixed, H (grows with the image height), W, or HW (both: a
    flattened spatial axis). Without probe shapes a 4-D tensor is taken as (N, C, H, W) for map
    ops and FFTs, and nothing else is taken as spatial."""
    if probes is None:
        if call.kind == "tokens" or len(shape) != 4:
            return tuple(FIXED for _ in call.dims)
        return tuple({2: H, 3: W}.get(d, FIXED) for d in call.dims)
    taller, wider = probes
    tags = []
    for d in call.dims:
        grows = (taller[d] != shape[d], wider[d] != shape[d])
        tags.append({(False, False): FIXED, (True, False): H, (False, True): W, (True, True): HW}[grows])
    return tuple(tags)


def _span(tags: tuple[str, ...]) -> str:
    if HW in tags or (H in tags and W in tags):
        return "all H*W positions"
    return "whole rows (all W positions)" if W in tags else "whole columns (all H positions)"


def judge(call: Call, tags: tuple[str, ...]) -> tuple[bool, str | None]:
    """(is the call a global op, why it stays global: None when ``call.local`` makes it local)."""
    if all(t == FIXED for t in tags):
        return False, None
    in_map = call.x.dim() == 4 and all(t == FIXED or (d, t) in ((2, H), (3, W)) for d, t in zip(call.dims, tags))
    # Where the parser took the call for a map op (it has a local form or a reason), its verdict holds.
    standard = in_map and (call.local is not None or call.reason is not None or spatial_only(call.x, call.dims))
    if call.kind == "map" and standard:
        if call.reason is None and call.local is None:
            return True, f"{call.op}: no local form here"
        return True, call.reason
    span = _span(tags)
    rows = span != "all H*W positions"
    if call.kind == "fft":
        return True, f"FFT over {span}: no local form" if rows else "whole-map FFT: no local form"
    if call.op in ("scaled_dot_product_attention", "multi_head_attention_forward"):
        if rows:
            return True, f"attention over whole rows or columns: keys over {span}; {_WINDOWED}"
        return True, f"attention over all H*W positions ({call.op})"
    if call.op in ("softmax", "log_softmax"):
        if rows:
            return True, f"attention over whole rows or columns: {call.op} over {span}; {_WINDOWED}"
        return True, f"{call.op} over all H*W positions"
    if call.op in ("matmul", "bmm", "einsum"):
        if rows:
            return True, f"attention over whole rows or columns: {call.op} contracting over {span}; {_WINDOWED}"
        return True, f"{call.op} contracting over all H*W positions"
    if call.kind == "tokens":
        return True, f"{call.op} (normalisation) over {span}"
    others = " together with other axes" if FIXED in tags else ""
    layout = "" if in_map else " of a tensor not laid out as (N, C, H, W)"
    if call.mark is not None or call.op in ("amax", "max", "var", "std", "var_mean", "std_mean"):  # a reduction: its result is a pooled value
        return True, f"{POOLED_VALUE}: {call.op} over {span}{others}{layout}"
    return True, f"{call.op} over {span}{others}{layout}: no local form here"


def recognise(
    func: object, args: tuple, kwargs: dict | None = None, *, probes: tuple[tuple[tuple, dict], tuple[tuple, dict]] | None = None
) -> tuple[str, str | None] | None:
    """Whether a torch call is a global op over the spatial dims that this module knows.

    Args:
        func: the function as a ``TorchFunctionMode`` sees it (``torch.mean``, ``F.instance_norm``...).
        args, kwargs: its arguments, in a forward at the training size (h, w).
        probes: the same call's (args, kwargs) in forwards at (2h, w) and at (h, 2w). They tell
            which axes grow with the image (H, W, or H*W when flattened). Without them a 4-D tensor
            is taken as (N, C, H, W) and softmax, normalisation and matrix products are never
            taken as global.

    Returns:
        None if not a global op, else (op name, reason it must stay global or None if tlc makes it local).
    """
    try:
        parse = PARSERS.get(func)
    except TypeError:  # unhashable callables are none of ours
        return None
    try:
        call = parse(args, kwargs or {}) if parse is not None else None
        seen = [parse(a, k or {}) for a, k in probes] if call is not None and probes is not None else None
    except Exception:  # noqa: BLE001 (arguments no parser foresaw: not a call tlc knows)
        return None
    if call is None:
        return None
    shapes = None
    if seen is not None:
        if any(c is None for c in seen):
            return None
        shapes = (tuple(seen[0].x.shape), tuple(seen[1].x.shape))
    is_global, reason = judge(call, tags_of(call, tuple(call.x.shape), shapes))
    return (call.op, reason) if is_global else None
