"""tlc: Test-time Local Converter for image restoration models at full resolution.

Restoration networks trained on small crops lose quality on whole images because their global
operations (global average pooling, instance norm, transposed attention) aggregate over far more
than they saw in training. :func:`convert` makes those operations local, over a window about the
size of the training crop, without retraining (Chu et al., ECCV 2022, arXiv 2112.04491).

    >>> model, report = tlc.convert(model, train_size=(256, 256))
    >>> print(report)
"""

from . import archs, functional, io, metrics, models, ops, run
from .convert import ConversionError, ConversionReport, ConvertedOp, DEFAULT_RULES, Rule, Site, SkippedOp, convert, rules
from .convert.call_sites import CallSite
from .export import ExportError, OnnxExport, export_onnx
from .nn import (
    LocalAvgPool2d,
    LocalGroupNorm,
    LocalInstanceNorm2d,
    LocalMaxPool2d,
    LocalPooledSequential,
    LocalStripAvgPool2d,
    LocalTransposedAttention,
)
from .ops import local_group_norm, local_instance_norm, local_mean, local_transposed_attention
from .run import RunSettings, restore
from .zoo import CheckpointError, detect, load_model, read_state_dict

__version__ = "0.1.0"

# The product: converting (convert, rules, the report), the local ops and modules it builds, loading
# and running models. Internals (window placement, rule constants, kernels) live in their modules.
__all__ = [
    "CallSite",
    "CheckpointError",
    "ConversionError",
    "ConversionReport",
    "ConvertedOp",
    "DEFAULT_RULES",
    "ExportError",
    "LocalAvgPool2d",
    "LocalGroupNorm",
    "LocalInstanceNorm2d",
    "LocalMaxPool2d",
    "LocalPooledSequential",
    "LocalStripAvgPool2d",
    "LocalTransposedAttention",
    "OnnxExport",
    "Rule",
    "RunSettings",
    "Site",
    "SkippedOp",
    "__version__",
    "archs",
    "convert",
    "detect",
    "export_onnx",
    "functional",
    "io",
    "load_model",
    "local_group_norm",
    "local_instance_norm",
    "local_mean",
    "local_transposed_attention",
    "metrics",
    "models",
    "ops",
    "read_state_dict",
    "restore",
    "rules",
    "run",
]
