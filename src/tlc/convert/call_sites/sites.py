"""What the run-time view reports: one :class:`CallSite` per global op found, and the reasons
every site left global for its pooled result starts with."""

from __future__ import annotations

from dataclasses import dataclass

from ...ops._common import Pair

#: (module path, function qualname, line offset in the function, op, occurrence in the module call)
SiteKey = tuple[str, str, int, str, int]


@dataclass(frozen=True)
class CallSite:
    """One functional global op found by the calibration forward.

    Attributes:
        module: qualified name of the innermost module running the call ("" for the model itself).
        op: what was called: ``mean``, ``adaptive_avg_pool2d``, ``instance_norm``, ...
        location: ``file.py:line`` of the call (the first frame outside torch).
        function: qualified name of the Python function making the call.
        occurrence: index among the calls of this op from this line within one call of the module.
        channels: C of the (N, C, H, W) input at calibration.
        feature_size: (h, w) of the input at the training size, in feature pixels.
        window: (kh, kw) of the local version; None when the site stays global.
        reason: why the site stays global; None when converted.
    """

    module: str
    op: str
    location: str
    function: str
    occurrence: int
    channels: int
    feature_size: Pair
    window: Pair | None = None
    reason: str | None = None

    @property
    def converted(self) -> bool:
        return self.window is not None

    @property
    def name(self) -> str:
        """``module location`` (``#n`` appended for repeated calls), as shown in reports."""
        where = f"{self.module or '(model)'} {self.location}"
        return f"{where} #{self.occurrence}" if self.occurrence else where


#: Start of the reason of every site left global only because its (pooled) result leaves the
#: (N, C, H, W) layout: a per-window counterpart carried through the consumer would make it local.
POOLED_VALUE = "pooled value leaves the map layout"
LEAVES_IMAGE = "pooled value leaves the image path (it reaches the output without meeting the image)"
