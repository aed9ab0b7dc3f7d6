"""The ``pooled-gate`` rule's machinery: channel attention written as ``x * f(pool(x))``.

Many networks (MPRNet, RCAN, SE blocks) hold the global pooling and the gate's 1x1 layers as
sibling modules and combine them in ``forward``, e.g.::

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))

The module's forward is traced once with torch.fx (every child a leaf). When the pooling's input
is the module's input and its result flows only through per-pixel children, the module is
rebuilt from that graph with the gate computed on the map of valid windows
(:func:`tlc.ops.pool.valid_local_mean`), 1x1 convolutions run as matrix products, and the gate
replicated while it multiplies (:func:`tlc.ops.gate.multiply_replicated`). The children and so
the state_dict keys stay the same. Modules that do not trace, or do something else with the
pooled map, are left to the plain ``global-avg-pool`` rule.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..nn import LocalAvgPool2d, is_pointwise
from ..ops._common import Pair, as_pair
from ..ops.gate import apply_pointwise, multiply_replicated, pad_replicate
from ..ops.pool import valid_local_mean


class _ChildrenAsLeaves(fx.Tracer):
    """Records calls to children as single nodes instead of tracing into them."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def is_global_avg_pool(module: nn.Module) -> bool:
    """True for ``nn.AdaptiveAvgPool2d(1)`` / ``((1, 1))``."""
    if not isinstance(module, nn.AdaptiveAvgPool2d):
        return False
    size = module.output_size
    return tuple(size) == (1, 1) if isinstance(size, (tuple, list)) else size == 1


def _is_pointwise_module(module: nn.Module) -> bool:
    if isinstance(module, nn.Sequential):
        return len(module) > 0 and all(is_pointwise(layer) for layer in module)
    return is_pointwise(module)


def _multiplication_by_input(gate: fx.Node, x: fx.Node) -> fx.Node | None:
    """The node computing ``x * gate`` (either order) when that is the gate's only use, else None."""
    users = list(gate.users)
    if len(users) != 1:
        return None
    (user,) = users
    if user.op == "call_function":
        multiply = user.target in (operator.mul, torch.mul)
    else:
        multiply = user.op == "call_method" and user.target == "mul"
    return user if multiply and len(user.args) == 2 and not user.kwargs and set(user.args) == {x, gate} else None


@dataclass(frozen=True)
class GatePlan:
    """What the trace found.

    Attributes:
        pool: name of the child doing the global pooling.
        layers: names of the per-pixel children the pooled map goes through, in order.
        fused_multiply: the gate's only use is ``x * gate`` with the module's input ``x``.
    """

    pool: str
    layers: tuple[str, ...]
    fused_multiply: bool


def _trace(module: nn.Module) -> tuple[fx.Graph, fx.Node, fx.Node] | None:
    """(graph, input node, pooling node) when the module has the pattern's start, else None."""
    pools = {name for name, child in module.named_children() if is_global_avg_pool(child)}
    if not pools or isinstance(module, nn.Sequential):  # Sequential: the pooled-pointwise rule
        return None
    try:
        graph = _ChildrenAsLeaves().trace(module)
    except Exception:  # data-dependent control flow, unsupported calls...: not this rule's business
        return None
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target in pools]
    if len(inputs) != 1 or len(calls) != 1 or calls[0].args != (inputs[0],) or calls[0].kwargs:
        return None
    return graph, inputs[0], calls[0]


def _chain(module: nn.Module, graph: fx.Graph, pool: fx.Node) -> list[fx.Node]:
    """The per-pixel call_module nodes the pooled map flows through, each its only user."""
    targets = [n.target for n in graph.nodes if n.op == "call_module"]
    chain, node = [], pool
    while len(node.users) == 1:
        (user,) = node.users
        if not (user.op == "call_module" and user.args == (node,) and not user.kwargs):
            break
        if targets.count(user.target) != 1 or not _is_pointwise_module(module.get_submodule(user.target)):
            break
        chain.append(user)
        node = user
    return chain


def gate_plan(module: nn.Module) -> GatePlan | None:
    """The :class:`GatePlan` of a channel-attention module, or None when the pattern is absent."""
    traced = _trace(module)
    if traced is None:
        return None
    graph, x, pool = traced
    chain = _chain(module, graph, pool)
    fused = _multiplication_by_input(chain[-1] if chain else pool, x) is not None
    if not chain and not fused:  # nothing to gain over making the pooling local
        return None
    return GatePlan(str(pool.target), tuple(str(n.target) for n in chain), fused)


class ValidLocalMean(nn.Module):
    """Means of the windows lying inside the map: (N, C, H, W) -> (N, C, H-kh+1, W-kw+1).

    Stands in for the gate's pooling; the module around it replicates the gate back to full size.
    """

    def __init__(self, window: int | Pair) -> None:
        super().__init__()
        self.window = as_pair(window, "window")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return valid_local_mean(x, self.window)

    def extra_repr(self) -> str:
        return f"window={self.window}"


def build_local_gate(module: nn.Module, window: Pair, fast: bool = False, max_stride: Pair = (5, 5)) -> nn.Module:
    """The local version of a module :func:`gate_plan` accepts (same children, same keys).

    With ``fast`` (the reference's approximate pooling, which has no valid-map form) only the
    pooling child is swapped for :class:`tlc.nn.LocalAvgPool2d`.
    """
    traced = _trace(module)
    if traced is None:
        raise ValueError(f"{type(module).__name__} is not x * f(pool(x)) with per-pixel f")
    graph, x, pool = traced
    if fast:
        setattr(module, str(pool.target), LocalAvgPool2d(window, fast=True, max_stride=max_stride))
        return module
    keys = list(module.state_dict())
    setattr(module, str(pool.target), ValidLocalMean(window))
    chain = _chain(module, graph, pool)
    gate = pool
    for node in chain:  # each per-pixel child becomes apply_pointwise(gate, child)
        with graph.inserting_after(node):
            child = graph.get_attr(node.target)
            with graph.inserting_after(child):
                new = graph.call_function(apply_pointwise, (gate, child))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        gate = new
    mul = _multiplication_by_input(gate, x)
    if mul is not None:
        with graph.inserting_after(mul):
            fused = graph.call_function(multiply_replicated, (x, gate))
        mul.replace_all_uses_with(fused)
        graph.erase_node(mul)
    else:
        with graph.inserting_after(gate):
            full = graph.call_function(pad_replicate, (gate, x))
        gate.replace_all_uses_with(full, delete_user_cb=lambda user: user is not full)
    graph.lint()
    local = fx.GraphModule(module, graph, class_name=f"Local{type(module).__name__}")
    local.training = module.training
    if list(local.state_dict()) != keys:  # e.g. an unused parameter the graph does not reference
        setattr(module, str(pool.target), LocalAvgPool2d(window))
        return module
    return local
