"""tlc: Test-time Local Converter for image restoration models at full resolution.

Restoration networks trained on small crops lose quality on whole images because their global
operations (global average pooling, instance norm, transposed attention) aggregate over far more
than they saw in training. :func:`convert` makes those operations local, over a window about the
size of the training crop, without retraining (Chu et al., ECCV 2022, arXiv 2112.04491).

    >>> model, report = tlc.convert(model, train_size=(256, 256))
    >>> print(report)
"""

from . import archs, functional, io, metrics, models
from .zoo import CheckpointError, detect, load_model, read_state_dict
from .convert import ConversionError, ConversionReport, ConvertedOp, SkippedOp, convert
from .export import ExportError, OnnxExport, export_onnx
from .functional import CallSite
from .local_attention import LocalTransposedAttention
from .nn import LocalAvgPool2d, LocalGroupNorm, LocalInstanceNorm2d, LocalPooledSequential
from .ops import (
    local_group_norm,
    local_instance_norm,
    local_mean,
    local_mean_strided,
    local_transposed_attention,
    transposed_attention,
    window_starts,
)
from .rules import (
    DEFAULT_RULES,
    GLOBAL_AVG_POOL,
    GROUP_NORM,
    INSTANCE_NORM,
    POOLED_GATE,
    POOLED_POINTWISE,
    TRANSPOSED_ATTENTION,
    Rule,
    Site,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RULES",
    "CallSite",
    "GLOBAL_AVG_POOL",
    "GROUP_NORM",
    "INSTANCE_NORM",
    "CheckpointError",
    "ConversionError",
    "ConversionReport",
    "ConvertedOp",
    "ExportError",
    "LocalAvgPool2d",
    "LocalGroupNorm",
    "LocalInstanceNorm2d",
    "LocalPooledSequential",
    "LocalTransposedAttention",
    "OnnxExport",
    "POOLED_GATE",
    "POOLED_POINTWISE",
    "Rule",
    "TRANSPOSED_ATTENTION",
    "Site",
    "SkippedOp",
    "__version__",
    "archs",
    "io",
    "export_onnx",
    "functional",
    "metrics",
    "models",
    "convert",
    "detect",
    "load_model",
    "read_state_dict",
    "local_group_norm",
    "local_instance_norm",
    "local_mean",
    "local_mean_strided",
    "local_transposed_attention",
    "transposed_attention",
    "window_starts",
]
