"""``local_mean`` as one opaque op (``torch.ops.tlc.local_mean``) for ``torch.compile``.

Compiled, the local ops would otherwise be traced into window-dependent shapes (``min(k, H)``);
with dynamic sizes, Inductor's C++ code generation fails on those combined with a network's own
padding arithmetic (``Mod``), a PyTorch bug. As a custom op the local mean is a single graph
node whose output has the input's shape: Dynamo traces through it without a graph break,
Inductor calls it as an external kernel, and at run time it is the eager :func:`tlc.local_mean`
(the fused numba kernel on the CPU). It has no autograd formula: where gradients are needed,
and under ``torch.export`` / ONNX export, the branch-free torch forms are traced instead.
"""

from __future__ import annotations

import torch

from ._common import Pair


def _local_mean_eager(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    from .pool import local_mean  # at run time the op is eager: local_mean takes its fastest path

    return local_mean(x, (kh, kw))


if hasattr(torch.library, "custom_op") and hasattr(torch.compiler, "is_exporting"):  # torch >= 2.5
    _op = torch.library.custom_op("tlc::local_mean", _local_mean_eager, mutates_args=())

    @_op.register_fake
    def _(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
else:  # pragma: no cover
    _op = None


def opaque_local_mean_applies(x: torch.Tensor) -> bool:
    """Whether :func:`tlc.local_mean` on ``x`` becomes the opaque op: under ``torch.compile``
    (not ``torch.export``), with no gradient to carry."""
    return (
        _op is not None
        and torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


def opaque_local_mean(x: torch.Tensor, window: Pair) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W) local means through ``torch.ops.tlc.local_mean``; ``window``
    (kh, kw) ints, unclamped (the op clamps at run time, so no size enters the graph)."""
    return _op(x, window[0], window[1])
