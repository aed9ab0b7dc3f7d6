"""Scoring restorations: metrics and protocols, resumable evaluation on paired folders (rows on
disk, summaries, comparison strips, peak memory) and sharing the work across torchrun processes.

Layers: :mod:`.protocols` <- :mod:`.metrics`, :mod:`.distributed`, :mod:`.memory`, :mod:`.records`,
:mod:`.report` <- :mod:`.evaluate`.
"""

from .evaluate import EvalResult, EvalSettings, evaluate
from .memory import PeakMemory
from .metrics import DEFAULT_PROTOCOL, PROTOCOLS, Protocol, psnr, ssim, to_uint8
from .protocols import align_to_target
from .records import EvaluationError
from .report import side_by_side
from .summary import ModeSummary

__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOLS",
    "EvalResult",
    "EvalSettings",
    "EvaluationError",
    "ModeSummary",
    "PeakMemory",
    "Protocol",
    "align_to_target",
    "evaluate",
    "psnr",
    "side_by_side",
    "ssim",
    "to_uint8",
]
