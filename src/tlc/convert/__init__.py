"""Converting a model: :func:`convert` finds the global ops (module rules, then the run-time view
of function calls), builds their local forms at windows fixed from a calibration forward, checks
the model still runs and reports what it did.

Dependencies: :mod:`tlc.ops` -> :mod:`tlc.nn` -> this package; nothing here imports tlc.archs.
"""

from . import call_sites, rules
from .calibrate import calibrate, calibrating
from .core import convert
from .report import ConversionError, ConversionReport, ConvertedOp, SkippedOp
from .rules import DEFAULT_RULES, Rule, Site

__all__ = [
    "ConversionError",
    "ConversionReport",
    "ConvertedOp",
    "DEFAULT_RULES",
    "Rule",
    "Site",
    "SkippedOp",
    "calibrate",
    "calibrating",
    "call_sites",
    "convert",
    "rules",
]
