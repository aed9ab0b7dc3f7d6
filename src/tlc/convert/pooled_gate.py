"""The ``pooled-gate`` rule's machinery: channel attention written as ``x * f(pool(x))``.

Many networks (MPRNet, RCAN, SE blocks, CBAM) hold the global poolings and the gate's 1x1 layers
as sibling modules and combine them in ``forward``, e.g.::

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))

    def forward(self, x):  # CBAM's channel gate: both poolings through one shared MLP
        return x * torch.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))

The module's forward is traced once with torch.fx (every child a leaf). The *pooled* nodes are the
global poolings of the module's input (``AdaptiveAvgPool2d(1)`` / ``AdaptiveMaxPool2d(1)``
children, ``x.mean((2, 3), keepdim=True)``, ``x.amax((2, 3), keepdim=True)``) and every node
computed from pooled nodes only by per-pixel children (1x1 convolutions, activations) and
elementwise functions (``+``, ``*``, ``torch.sigmoid``...). Made local, each pooling gives the map
of valid windows (:func:`tlc.ops.pool.valid_local_mean`, :func:`tlc.ops.extrema.valid_local_max`:
H - kh + 1 by W - kw + 1, not H by W), and since per-pixel work commutes with edge replication,
the pooled nodes are computed on that smaller map (1x1 convolutions as matrix products). Where a
pooled node meets the full-size map, ``x * gate`` replicates the gate while it multiplies
(:func:`tlc.ops.gate.multiply_replicated`); any other use gets the gate replicated to full size
first. The children and so the state_dict keys stay the same. Modules that do not trace, or
whose children are not all poolings and per-pixel layers, are left to the other rules.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn import LocalAvgPool2d, LocalMaxPool2d, is_pointwise
from ..ops._common import Pair, as_pair
from ..ops.extrema import local_max, valid_local_max
from ..ops.gate import (
    INTO_FIRST_UNARY, apply_pointwise, combine_replicated, into_first, is_channel_product, multiply_replicated, pad_replicate,
    pointwise_sum, pooled_pointwise,
)
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


def _is_global_max_pool(module: nn.Module) -> bool:
    """True for ``nn.AdaptiveMaxPool2d(1)`` / ``((1, 1))`` without indices."""
    if not isinstance(module, nn.AdaptiveMaxPool2d) or module.return_indices:
        return False
    size = module.output_size
    return tuple(size) == (1, 1) if isinstance(size, (tuple, list)) else size == 1


def _is_pointwise_module(module: nn.Module) -> bool:
    if isinstance(module, nn.Sequential):
        return len(module) > 0 and all(is_pointwise(layer) for layer in module)
    return is_pointwise(module)


# Elementwise calls that keep a pooled node pooled when every tensor they take is pooled.
_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub,
    torch.mul, torch.div, torch.sigmoid, torch.tanh, torch.relu, torch.neg, F.relu, F.sigmoid, F.tanh,
    F.gelu, F.silu, F.hardsigmoid, F.hardswish, F.leaky_relu, F.relu6,
}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "sigmoid", "tanh", "relu", "neg"}
_BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}
_SPATIAL_DIMS = ({2, 3}, {-2, -1})


def _is_multiplication(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in (operator.mul, torch.mul)
    return node.op == "call_method" and node.target == "mul"


def _pool_kind(module: nn.Module, node: fx.Node, x: fx.Node) -> str | None:
    """"avg" or "max" when ``node`` is a global pooling of the module's input ``x``, else None."""
    if node.op == "call_module" and node.args == (x,) and not node.kwargs:
        child = module.get_submodule(str(node.target))
        return "avg" if is_global_avg_pool(child) else "max" if _is_global_max_pool(child) else None
    if node.op != "call_method" or node.target not in ("mean", "amax") or not node.args or node.args[0] is not x:
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if set(node.kwargs) - {"dim", "keepdim"} or keepdim is not True or not isinstance(dims, (tuple, list)):
        return None
    if len(dims) != 2 or set(dims) not in _SPATIAL_DIMS:
        return None
    return "avg" if node.target == "mean" else "max"


def _stays_pooled(module: nn.Module, node: fx.Node, pooled: set[fx.Node]) -> bool:
    """Whether ``node`` computes a pooled value from pooled nodes only, pixel by pixel."""
    inputs = [a for a in node.all_input_nodes]
    if not inputs or any(a not in pooled for a in inputs):
        return False
    if node.op == "call_module":
        return node.args == (inputs[0],) and not node.kwargs and _is_pointwise_module(module.get_submodule(str(node.target)))
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS


@dataclass(frozen=True)
class GatePlan:
    """What the trace found.

    Attributes:
        pools: ``(node name, "avg" | "max")`` of each global pooling of the module's input.
        layers: targets of the per-pixel children run on pooled values, in graph order.
        fused_multiply: some pooled value meets the input only as ``x * gate``.
    """

    pools: tuple[tuple[str, str], ...]
    layers: tuple[str, ...]
    fused_multiply: bool


@dataclass(frozen=True)
class _Traced:
    graph: fx.Graph
    x: fx.Node
    pools: dict  # fx.Node -> "avg" | "max"
    pooled: list  # every pooled node, in graph order
    multiplies: list  # x * pooled nodes
    others: list  # (user, pooled node) pairs: other uses, replicated to full size first


def _trace(module: nn.Module) -> _Traced | None:
    children = list(module.named_children())
    if isinstance(module, nn.Sequential) or not children:  # Sequential: the pooled-pointwise rule
        return None
    if not all(
        is_global_avg_pool(c) or _is_global_max_pool(c) or _is_pointwise_module(c) for _, c in children
    ):  # only small attention modules are traced
        return None
    try:
        graph = _ChildrenAsLeaves().trace(module)
    except Exception:  # data-dependent control flow, unsupported calls...: not this rule's business
        return None
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    called = {str(n.target).split(".")[0] for n in graph.nodes if n.op in ("call_module", "get_attr")}
    stateful = {name for name, child in children if any(True for _ in child.state_dict())}
    if len(inputs) != 1 or not stateful <= called or any(True for _ in module._parameters.values()):
        return None  # a child or parameter the forward never uses would drop out of the state_dict
    x = inputs[0]
    pools, pooled = {}, []
    for node in graph.nodes:
        kind = _pool_kind(module, node, x)
        if kind is not None:
            pools[node] = kind
            pooled.append(node)
        elif _stays_pooled(module, node, set(pooled)):
            pooled.append(node)
    if not pools:
        return None
    members = set(pooled)
    multiplies, others = [], []
    for node in pooled:
        for user in node.users:
            if user in members:
                continue
            if _is_multiplication(user) and len(user.args) == 2 and not user.kwargs and set(user.args) == {x, node}:
                multiplies.append(user)
            elif user.op == "output" or (
                user.op == "call_function" and user.target in _BINARY_FUNCTIONS and len(user.args) == 2 and not user.kwargs
            ):
                others.append((user, node))  # returned, or elementwise with a full-size map: replicated first
            else:  # reshaped, reduced, returned...: not this rule's business
                return None
    return _Traced(graph, x, pools, pooled, multiplies, others)


def gate_plan(module: nn.Module) -> GatePlan | None:
    """The :class:`GatePlan` of a channel-attention module, or None when the pattern is absent."""
    traced = _trace(module)
    if traced is None:
        return None
    layers = tuple(str(n.target) for n in traced.pooled if n.op == "call_module" and n not in traced.pools)
    if not layers and not traced.multiplies:  # nothing to gain over making the pooling local
        return None
    return GatePlan(tuple((n.name, k) for n, k in traced.pools.items()), layers, bool(traced.multiplies))


class ValidLocalMean(nn.Module):
    """Means of the windows lying inside the map: (N, C, H, W) -> (N, C, H-kh+1, W-kw+1).

    Stands in for the gate's average pooling; the module around it replicates the gate back to
    full size.
    """

    def __init__(self, window: int | Pair) -> None:
        super().__init__()
        self.window = as_pair(window, "window")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return valid_local_mean(x, self.window)

    def extra_repr(self) -> str:
        return f"window={self.window}"


class ValidLocalMax(ValidLocalMean):
    """Maxima of the windows lying inside the map: (N, C, H, W) -> (N, C, H-kh+1, W-kw+1).

    Stands in for the gate's max pooling (CBAM)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return valid_local_max(x, self.window)


def _local_pooling(kind: str, window: Pair, fast: bool, max_stride: Pair) -> nn.Module:
    """The stand-in for a pooling child: valid windows only, or full size with ``fast``."""
    if not fast:
        return ValidLocalMean(window) if kind == "avg" else ValidLocalMax(window)
    return LocalAvgPool2d(window, fast=True, max_stride=max_stride) if kind == "avg" else LocalMaxPool2d(window)


def build_local_gate(module: nn.Module, window: Pair, fast: bool = False, max_stride: Pair = (5, 5)) -> nn.Module:
    """The local version of a module :func:`gate_plan` accepts (same children, same keys).

    With ``fast`` (the reference's approximate pooling, which has no valid-map form) the poolings
    become full-size local poolings and the rest of the module runs as written.
    """
    traced = _trace(module)
    if traced is None:
        raise ValueError(f"{type(module).__name__} is not x * f(pool(x)) with per-pixel f")
    graph, x = traced.graph, traced.x
    if fast and all(node.op == "call_module" for node in traced.pools):  # the poolings swapped, nothing else
        for node, kind in traced.pools.items():
            setattr(module, str(node.target), _local_pooling(kind, window, fast, max_stride))
        return module
    keys = list(module.state_dict())
    replaced: dict[fx.Node, fx.Node] = {}  # pooled nodes rewritten: old -> new
    for node, kind in traced.pools.items():
        if node.op == "call_module":
            setattr(module, str(node.target), _local_pooling(kind, window, fast, max_stride))
            continue
        if fast:
            function, arguments = (local_max, (x, window)) if kind == "max" else (None, None)
            if function is None:  # x.mean((2, 3)) with fast: the approximate pooling as a child
                name = f"_local_pool_{node.name}"
                module.add_module(name, LocalAvgPool2d(window, fast=True, max_stride=max_stride))
                with graph.inserting_after(node):
                    new = graph.call_module(name, (x,))
            else:
                with graph.inserting_after(node):
                    new = graph.call_function(function, arguments)
        else:
            with graph.inserting_after(node):
                new = graph.call_function(valid_local_mean if kind == "avg" else valid_local_max, (x, window))
        replaced[node] = new
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    if not fast:
        for node in traced.pooled:  # each per-pixel child on pooled values becomes apply_pointwise
            if node.op != "call_module" or node in traced.pools:
                continue
            with graph.inserting_after(node):
                child = graph.get_attr(str(node.target))
                with graph.inserting_after(child):
                    new = graph.call_function(apply_pointwise, (node.args[0], child))
            replaced[node] = new
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        fused = _mean_and_layers_together(module, graph)
        replaced = {old: fused.get(new, new) for old, new in replaced.items()}
        _shared_last_layer_once(module, graph)
        for mul in traced.multiplies:
            gate = next(a for a in mul.args if a is not x)
            with graph.inserting_after(mul):
                fused = graph.call_function(multiply_replicated, (x, gate))
            mul.replace_all_uses_with(fused)
            graph.erase_node(mul)
            _last_layer_into_multiply(module, graph, fused)
        for user, gate in traced.others:
            gate = replaced.get(gate, gate)
            with graph.inserting_before(user):
                full = graph.call_function(pad_replicate, (gate, x))
            user.replace_input_with(gate, full)
        _overwrite_used_once(module, graph)
    graph.lint()
    local = fx.GraphModule(module, graph, class_name=f"Local{type(module).__name__}")
    local.training = module.training
    for node in traced.pools:  # a stand-in the graph no longer calls (its mean is pooled_pointwise's) stays visible
        if node.op == "call_module" and not hasattr(local, str(node.target)):
            local.add_submodule(str(node.target), module.get_submodule(str(node.target)))
    if list(local.state_dict()) != keys:  # e.g. an unused parameter the graph does not reference
        raise ValueError(f"{type(module).__name__}: the traced graph does not use every parameter")
    return local


def _mean_and_layers_together(module: nn.Module, graph: fx.Graph) -> dict[fx.Node, fx.Node]:
    """Each valid-window mean read only by the per-pixel layers after it becomes one
    :func:`tlc.ops.gate.pooled_pointwise` call, which may run the first layer before the mean
    (on fewer planes) where that costs less. Returns {replaced layers' node: the new node}."""
    replaced = {}
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not apply_pointwise or node.kwargs:
            continue
        mean = node.args[0]
        if not isinstance(mean, fx.Node) or len(mean.users) != 1:
            continue
        if mean.op == "call_function" and mean.target is valid_local_mean:
            source, mean_window = mean.args
        elif mean.op == "call_module" and type(module.get_submodule(str(mean.target))) is ValidLocalMean:
            source, mean_window = mean.args[0], module.get_submodule(str(mean.target)).window
        else:
            continue
        with graph.inserting_before(node):
            fused = graph.call_function(pooled_pointwise, (source, node.args[1], mean_window))
        node.replace_all_uses_with(fused)
        graph.erase_node(node)
        graph.erase_node(mean)
        replaced[node] = fused
    return replaced


def _layers_call(node: object) -> str | None:
    """The layers' module path when ``node`` is ``apply_pointwise(y, layers)`` or
    ``pooled_pointwise(x, layers, window)`` with its layers a child read by ``get_attr``; else
    None."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.kwargs:
        return None
    arity = {apply_pointwise: 2, pooled_pointwise: 3}.get(node.target)
    if arity is not None and len(node.args) == arity:
        layers = node.args[1]
        if isinstance(layers, fx.Node) and layers.op == "get_attr":
            return str(layers.target)
    return None


def _shared_last_layer_once(module: nn.Module, graph: fx.Graph) -> None:
    """``f(a) + f(b)`` with one per-pixel ``f`` ending in a 1x1 convolution (CBAM's shared MLP on
    the average and max pools) becomes ``pointwise_sum(f'(a), f'(b), last)``, ``f'`` the layers
    before it: the last layer once on the sum of the hidden maps, its bias twice
    (:func:`tlc.ops.gate.pointwise_sum`): one product less per window, and the sum over the hidden
    planes instead of the gate's. The same values up to float rounding (bit for bit where one
    window covers the map)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (operator.add, torch.add):
            continue
        if node.kwargs or len(node.args) != 2:
            continue
        paths = [_layers_call(a) for a in node.args]
        if None in paths or paths[0] != paths[1] or any(len(a.users) != 1 for a in node.args):
            continue
        path = paths[0]
        layers = module.get_submodule(path)
        chain = list(layers) if isinstance(layers, nn.Sequential) else [layers]
        if not chain or not is_channel_product(chain[-1]) or node.args[0] is node.args[1]:
            continue
        hidden = []
        for call in node.args:
            with graph.inserting_before(node):
                if len(chain) == 1:  # the layer alone: the maps themselves are summed
                    if call.target is apply_pointwise:
                        hidden.append(call.args[0])
                    else:
                        hidden.append(graph.call_function(valid_local_mean, (call.args[0], call.args[2])))
                    continue
                firsts = [graph.get_attr(f"{path}.{i}") for i in range(len(chain) - 1)]
                args = (call.args[0], firsts) + tuple(call.args[2:])
                hidden.append(graph.call_function(call.target, args))
        with graph.inserting_before(node):
            last = graph.get_attr(f"{path}.{len(chain) - 1}" if len(chain) > 1 else path)
            out = graph.call_function(pointwise_sum, (*hidden, last))
        old_calls = node.args
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        for call in old_calls:  # read by the sum alone: now by nothing, nor their layers' get_attr
            attr = call.args[1]
            graph.erase_node(call)
            if not attr.users:
                graph.erase_node(attr)


def combine_with_layer(x: torch.Tensor, hidden: torch.Tensor, layer: nn.Conv2d, activation: str | None) -> torch.Tensor:
    """``x * replicate_to(activation(layer(hidden)), x.shape[-2:])`` for a 1x1 ``layer``:
    :func:`tlc.ops.gate.combine_replicated` with the layer's weight and bias (x (N, C, H, W),
    hidden (N, D, gh, gw))."""
    return combine_replicated(x, hidden, "mul", activation, layer.weight, layer.bias)


def combine_with_shared_layer(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, layer: nn.Conv2d, activation: str | None, overwrite: bool = False
) -> torch.Tensor:
    """``x * replicate_to(activation(layer(a) + layer(b)), x.shape[-2:])`` for a 1x1 ``layer``
    (CBAM's shared MLP's last layer on the average- and max-pooled branches), as
    :func:`tlc.ops.gate.pointwise_sum` computes the sum (the layer once on ``a + b``, its bias
    twice) inside :func:`tlc.ops.gate.combine_replicated`. Where one window covers the map
    (``a`` (N, D, 1, 1)), the original's order, bit for bit. ``overwrite``: ``a`` is the caller's
    to overwrite (the sum goes into it)."""
    if a.shape[-2:].numel() == 1:
        return combine_replicated(x, pointwise_sum(a, b, layer), "mul", activation)
    bias = None if layer.bias is None else layer.bias * 2
    total = into_first("add", a, b) if overwrite else a + b
    return combine_replicated(x, total, "mul", activation, layer.weight, bias)


def _is_sigmoid(node: object) -> bool:
    if not isinstance(node, fx.Node) or node.kwargs or len(node.args) != 1:
        return False
    return node.op == "call_function" and node.target in (torch.sigmoid, F.sigmoid) or (
        node.op == "call_method" and node.target == "sigmoid"
    )


def _last_layer_into_multiply(module: nn.Module, graph: fx.Graph, node: fx.Node) -> None:
    """``multiply_replicated(x, gate)`` where the gate's last steps, read by nothing else, are a
    1x1 convolution and a sigmoid (or either): those steps move into the multiply
    (:func:`combine_with_layer`, :func:`tlc.ops.gate.combine_replicated`), computed a row at a time
    with it instead of as gate-sized maps written and read back. The layer computes the same sums;
    the sigmoid is within about 2 units in the last place of torch's (the same bits where one
    window covers the map: the layer and torch's sigmoid then run as the original runs them)."""
    x, gate = node.args
    activation = None
    if _is_sigmoid(gate) and len(gate.users) == 1:
        activation, gate = "sigmoid", gate.args[0]
    path = _layers_call(gate)
    chain, paths = [], []
    if path is not None and len(gate.users) == 1:
        layers = module.get_submodule(path)
        chain = list(layers) if isinstance(layers, nn.Sequential) else [layers]
        paths = [f"{path}.{i}" for i in range(len(chain))] if isinstance(layers, nn.Sequential) else [path]
        if activation is None and len(chain) > 1 and type(chain[-1]) is nn.Sigmoid:
            activation, chain, paths = "sigmoid", chain[:-1], paths[:-1]
    shared = gate.op == "call_function" and gate.target is pointwise_sum and not gate.kwargs.keys() - {"overwrite"}
    if shared and len(gate.users) == 1 and len(gate.args) == 3:  # CBAM: f(avg) + f(max), one shared last layer
        old = node.args[1]
        node.target, node.args = combine_with_shared_layer, (x, *gate.args, activation)
        if old is not gate:
            graph.erase_node(old)
        graph.erase_node(gate)
        return
    if not chain or not is_channel_product(chain[-1]):
        if activation is not None and node.args[1] is not gate:  # the sigmoid alone moves
            sigmoid = node.args[1]
            node.target, node.args = combine_replicated, (x, gate, "mul", activation)
            graph.erase_node(sigmoid)
        return
    with graph.inserting_before(node):
        if len(chain) > 1:
            firsts = [graph.get_attr(p) for p in paths[:-1]]
            hidden = graph.call_function(gate.target, (gate.args[0], firsts, *gate.args[2:]))
        elif gate.target is apply_pointwise:
            hidden = gate.args[0]
        else:  # pooled_pointwise(source, layers, window): the mean alone
            hidden = graph.call_function(valid_local_mean, (gate.args[0], gate.args[2]))
        last = graph.get_attr(paths[-1])
    old = node.args[1]
    node.target, node.args = combine_with_layer, (x, hidden, last, activation)
    while old is not gate:  # the sigmoid, read by this node alone
        inner = old.args[0]
        graph.erase_node(old)
        old = inner
    attr = gate.args[1]
    graph.erase_node(gate)
    if not attr.users:
        graph.erase_node(attr)


# Elementwise calls that may write into an operand of theirs (tlc.ops.gate.into_first), by name.
_INTO_FIRST = {
    operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub", operator.mul: "mul",
    torch.mul: "mul", operator.truediv: "div", torch.div: "div", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", torch.relu: "relu", F.relu: "relu",
}
_METHODS_INTO_FIRST = frozenset(_INTO_FIRST.values())  # the Tensor methods of the same names
_COMMUTATIVE = {"add", "mul"}


def _overwrite_used_once(module: nn.Module, graph: fx.Graph) -> None:
    """Let the gate's maps be overwritten where the graph shows nothing else reads them.

    A map is *owned* when a node of the rewritten graph makes it afresh: a valid-window pooling,
    an elementwise call, or :func:`apply_pointwise` on an owned map. An owned map read by one
    node only may hold that node's result: ``apply_pointwise`` gets ``overwrite=True``, an
    elementwise call becomes :func:`tlc.ops.gate.into_first`. Each gate-sized map not allocated
    afresh saves most of a pass over memory (page faults); the numbers stay the same.
    """
    owned: set[fx.Node] = set()

    def free(arg: object) -> bool:
        return isinstance(arg, fx.Node) and arg in owned and len(arg.users) == 1

    for node in graph.nodes:
        method = node.op == "call_method" and node.target in _METHODS_INTO_FIRST
        if node.op == "call_module" and isinstance(module.get_submodule(str(node.target)), ValidLocalMean):
            owned.add(node)  # ValidLocalMax too
        elif node.op != "call_function" and not method:
            continue
        elif node.target in (valid_local_mean, valid_local_max, pooled_pointwise):
            owned.add(node)
        elif node.target is combine_with_shared_layer:
            if free(node.args[1]) and not node.kwargs:
                node.kwargs = {"overwrite": True}
        elif node.target in (apply_pointwise, pointwise_sum):
            if free(node.args[0]) and not node.kwargs:
                node.kwargs = {"overwrite": True}
                owned.add(node)  # else apply_pointwise's result may be its input (identity layers)
            elif node.target is pointwise_sum:  # a product made afresh whatever its inputs
                owned.add(node)
        elif (method or node.target in _INTO_FIRST) and not node.kwargs and len(node.args) in (1, 2):
            # y.sigmoid() (timm's gates) as torch.sigmoid(y): a method's receiver is its first argument.
            name, args = node.target if method else _INTO_FIRST[node.target], node.args
            unary = name in INTO_FIRST_UNARY
            if len(args) == (1 if unary else 2):
                if free(args[0]):
                    node.op, node.target = "call_function", into_first
                    node.args = (name, *args)
                elif not unary and name in _COMMUTATIVE and free(args[1]):
                    node.op, node.target = "call_function", into_first
                    node.args = (name, args[1], args[0])  # a + b == b + a, bit for bit
                owned.add(node)  # a fresh result, or one written into an owned map

