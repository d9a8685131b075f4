"""Minimum and maximum receptive field of every Conv2d/Linear layer (thesis §4.4, §9.3, §10.2).

The model is traced with ``torch.fx``; a dynamic programme over the graph (in topological
order) carries, for every tensor, the smallest and largest receptive field over all paths
from the input, grouped by the jump (product of strides) of those paths. Grouping by jump
keeps the result exact even if paths with different downsampling meet, and the cost stays
linear in the graph size, whereas enumerating paths is exponential in the number of blocks.

Rules per operation (kernel k, stride s, dilation d, k_eff = d(k-1)+1):
``r_out = r_in + (k_eff-1)·j_in`` and ``j_out = j_in·s`` for convolutions and max/avg pooling;
element-wise ops (``torch.max(a, b)`` of two tensors included), normalisation, activations, dropout,
padding and concatenation along channels pass through with min/max over their inputs; concatenation
along height or width is refused. A product whose factor was computed from the other factor (an
attention gate: SE, spatial attention, CBAM) keeps the receptive field of the gated tensor only,
and the gate's layers are marked as a side branch (thesis §10.1 leaves them out); global
pooling (also written out with the map's size, ``F.avg_pool2d(x, x.size(3))``), spatial reductions,
flatten, a view/reshape to vectors and Linear make a tensor *global*, and any function or method of
global tensors only (``.squeeze(-1)`` of a pooled gate) keeps it global.
A global tensor (e.g. a squeeze-and-excitation gate) that meets spatial tensors is broadcast
and does not widen their receptive field; global layers report ``inf``. A view/reshape to a
feature map and adaptive pooling to more than one position make it *unknown*: the graph alone
does not say how they move pixels, so a convolution that reads such a tensor raises
``ReceptiveFieldError``, while a head that only flattens it (torchvision's VGG) is fine. Any
other operation applied to an image-derived tensor raises ``ReceptiveFieldError`` naming it.

A merge operand that only bypasses layers (an identity shortcut, a 1×1 projection, also behind a
tiling pool as in ResNet-D) is no previous layer of what follows and its 1×1 conv a side branch.

Layers are the calls of Conv2d and Linear modules, subclasses included (traced as one call,
as the saturation tracker hooks them), and ``F.conv2d`` calls with a parameter as weight,
named after the module that holds the weight.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import fx, nn

from phd_lab.analysis.borders import borders_of
from phd_lab.errors import PhdLabError

log = logging.getLogger(__name__)

COLUMNS = ["index", "layer", "r_min", "r_max", "jump", "in_r_min", "in_r_max", "prev_r_min", "side_branch",
           "onward_prev_r_min", "onward_in_r_max", "b_min", "b_max"]
_NUMBERS = ["r_min", "r_max", "jump", "in_r_min", "in_r_max", "prev_r_min"]
INF = math.inf


class ReceptiveFieldError(PhdLabError):
    """The model cannot be traced, or contains an operation the analysis cannot reason about."""


class _Global:
    """Marker state: the tensor depends on the whole input (after global pooling, flatten, Linear)."""

    def __repr__(self) -> str:
        return "GLOBAL"


GLOBAL = _Global()


class _Unknown:
    """Marker state: a feature map whose receptive field the graph alone does not determine (a
    view/reshape to a feature map, adaptive pooling to several positions); ``origin`` names the op."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def __repr__(self) -> str:
        return f"UNKNOWN({self.origin})"


# A spatial state maps jump -> (r_min, r_max) over the paths with that jump.
Spatial = dict


# ---------------------------------------------------------------------------- operation tables
_PASS_MODULES: tuple[type, ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.GLU, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d,
)
_WINDOW_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

_PASS_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, operator.neg, operator.pos,
    torch.add, torch.sub, torch.mul, torch.div, torch.cat, torch.concat, torch.relu, torch.relu_,
    torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.abs, torch.exp, torch.neg, torch.chunk,
    torch.split, torch.maximum, torch.minimum, torch.where, torch.nn.functional.hardtanh,
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.sigmoid, F.tanh,
    F.hardswish, F.hardsigmoid, F.softplus, F.glu, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.feature_alpha_dropout, F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm,
    F.local_response_norm, F.pad,
}
_PASS_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "add", "add_", "sub", "sub_", "mul", "mul_",
    "div", "div_", "neg", "abs", "exp", "clamp", "clamp_", "clip", "contiguous", "clone", "detach", "chunk",
    "split", "expand_as", "type_as", "float", "half", "double", "to", "sigmoid", "masked_fill", "maximum", "minimum",
}
# Merges for the previous-layer state: a join (sum, concatenation) ignores operands that only bypass
# layers; a gate (product, quotient: attention) follows the tensor it scales, never the gate itself.
_JOIN_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub, torch.cat,
                   torch.concat}
_JOIN_METHODS = {"add", "add_", "sub", "sub_"}
_GATE_FUNCTIONS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
_GATE_METHODS = {"mul", "mul_", "div", "div_"}
_PASS_FUNCTION_NAMES = {"stochastic_depth"}  # torchvision.ops: drops whole samples, passes through
_META_METHODS = {"size", "dim", "numel", "type", "ndimension"}  # results carry no image content
_ADAPTIVE_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_GLOBAL_FUNCTIONS = {torch.flatten, F.linear}
_GLOBAL_METHODS = {"flatten"}
_RESHAPE_METHODS = {"view", "reshape"}
_REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin",
                     torch.max: "max", torch.min: "min", torch.std: "std", torch.var: "var",
                     torch.softmax: "softmax", F.softmax: "softmax", torch.log_softmax: "log_softmax",
                     F.log_softmax: "log_softmax"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "softmax", "log_softmax"}
_SPATIAL_DIMS = {2, 3, -1, -2}
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_PAIRWISE_FUNCTIONS = {torch.max, torch.min}  # torch.max(a, b) with a tensor b: element-wise, like torch.maximum
_PAIRWISE_METHODS = {"max", "min"}
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d}


# ---------------------------------------------------------------------------- state algebra
def merge(states: Iterable[Any]) -> Any:
    """Min/max over the inputs of a pass-through op; global inputs broadcast over spatial ones; an
    unknown input makes the result unknown."""
    spatial: Spatial = {}
    saw_global = False
    for state in states:
        if isinstance(state, _Unknown):
            return state
        if state is GLOBAL:
            saw_global = True
        elif state is not None:
            for jump, (lo, hi) in state.items():
                old = spatial.get(jump)
                spatial[jump] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    if spatial:
        return spatial
    return GLOBAL if saw_global else None


def window(state: Any, kernel: int, stride: int, dilation: int) -> Any:
    """Apply a sliding window (convolution or pooling): r += (k_eff-1)·j, j *= s."""
    if not isinstance(state, dict):
        return state
    grow = dilation * (kernel - 1)
    return {jump * stride: (lo + grow * jump, hi + grow * jump) for jump, (lo, hi) in state.items()}


def bounds(state: Any) -> tuple[float, float, float]:
    """(r_min, r_max, jump) of a state; ``inf`` for global tensors, jump = the largest one."""
    if not isinstance(state, dict):
        return INF, INF, INF
    return (min(lo for lo, _ in state.values()), max(hi for _, hi in state.values()), max(state))


# ---------------------------------------------------------------------------- the tracer
@dataclass
class _Row:
    layer: str
    is_conv: bool
    in_state: Any
    out_state: Any
    prev_state: Any = None
    side_branch: bool = False  # a 1×1 projection shortcut or a layer of an attention gate
    position: int = -1  # of the layer's node in the graph
    ancestors: int = 0  # bit set (by graph position) of the nodes the layer depends on


def _square(value: Any, what: str, where: str) -> int:
    if isinstance(value, int):
        return value
    values = tuple(value)
    if len(set(values)) != 1:
        raise ReceptiveFieldError(f"Receptive field: {where} has a non-square {what} {values}; the analysis "
                                  f"computes the receptive field as one number and needs equal sizes along "
                                  f"height and width.")
    return int(values[0])


def _arg(node: fx.Node, position: int, name: str, default: Any) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def _describe(node: fx.Node, graph_module: fx.GraphModule) -> str:
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        return f"module {node.target!r} ({type(module).__module__}.{type(module).__qualname__})"
    if node.op == "call_method":
        return f"tensor method .{node.target}() (graph node {node.name!r})"
    target = getattr(node.target, "__qualname__", None) or getattr(node.target, "__name__", str(node.target))
    module = getattr(node.target, "__module__", None) or ""
    return f"function {module + '.' if module else ''}{target} (graph node {node.name!r})"


def _unsupported(node: fx.Node, graph_module: fx.GraphModule, why: str = "") -> ReceptiveFieldError:
    return ReceptiveFieldError(
        f"Receptive field: cannot reason about {_describe(node, graph_module)}{why}. Supported are "
        f"Conv2d, max/avg pooling, global/adaptive pooling, flatten, Linear, and element-wise, normalisation, "
        f"activation, dropout, padding and concatenation ops; rewrite the model with those or leave the "
        f"'receptive_field' step out for it.")


_SPATIAL_INDICES = (2, 3, -1, -2, slice(2, None, None), slice(-2, None, None))


def _whole_map(kernel: Any, pooled: Any) -> bool:
    """Whether a pooling window is the spatial size of the pooled tensor ``x`` — a global pool written
    out: ``x.size()[2:]``, ``x.shape[2:]``, or one side (``x.size()[3]``, ``x.shape[-1]``, ``x.size(3)``),
    alone or in a pair. One side covers the map since the input resolution is square (by config)."""
    if isinstance(kernel, (tuple, list)):
        return bool(kernel) and all(_spatial_size(side, pooled) for side in kernel)
    return _spatial_size(kernel, pooled)


def _spatial_size(value: Any, pooled: Any) -> bool:
    """Whether ``value`` is one or both spatial sides of ``pooled``: ``x.size(3)``, ``x.size()[-1]``,
    ``x.shape[2]``, ``x.shape[2:]``, ..."""
    if not isinstance(value, fx.Node):
        return False
    if value.op == "call_method" and value.target == "size" and value.args and value.args[0] is pooled:
        return _arg(value, 1, "dim", None) in _SPATIAL_DIMS
    if value.op == "call_function" and value.target is operator.getitem:
        base, index = value.args
        return index in _SPATIAL_INDICES and _shape_of(base, pooled)
    return False


def _shape_of(value: Any, pooled: Any) -> bool:
    """Whether ``value`` is ``x.size()`` or ``x.shape`` of the tensor ``pooled``."""
    if not isinstance(value, fx.Node) or not value.args or value.args[0] is not pooled:
        return False
    size = value.op == "call_method" and value.target == "size" and len(value.args) == 1 and not value.kwargs
    shape = value.op == "call_function" and value.target is getattr and value.args[1:] == ("shape",)
    return size or shape


def _flat(values: Any) -> list[Any]:
    """The leaves of nested tuples/lists of node arguments."""
    if isinstance(values, (tuple, list)):
        return [leaf for value in values for leaf in _flat(value)]
    return [values]


def _reduction(state: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    dim = _arg(node, 1, "dim", None)
    if dim is None:
        return GLOBAL
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    if not all(isinstance(d, int) for d in dims):
        raise _unsupported(node, graph_module, f" with a non-constant dim {dim!r}")
    return GLOBAL if set(dims) & _SPATIAL_DIMS else state


def _getitem(state: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    """Indexing passes the receptive field through, except a strided slice of the feature map
    (``x[:, :, ::2, ::2]``, the 'option A' shortcut of CIFAR ResNets): a 1×1 window with that stride."""
    index = node.args[1] if len(node.args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    if Ellipsis in items:  # dims after the ellipsis count from the end
        cut = items.index(Ellipsis)
        positions = list(enumerate(items[:cut])) + [(i - len(items[cut + 1:]), item)
                                                     for i, item in enumerate(items[cut + 1:])]
    else:
        positions = list(enumerate(items))
    steps = {("height" if dim in (2, -2) else "width"): item.step for dim, item in positions
             if isinstance(item, slice) and item.step not in (None, 1) and dim in _SPATIAL_DIMS}
    if not steps:
        return state
    values = set(steps.values())
    if len(steps) != 2 or len(values) != 1 or not all(isinstance(v, int) and v > 0 for v in values):
        raise _unsupported(node, graph_module, f" (a strided slice with steps {steps}; the analysis needs the "
                                               f"same constant step along height and width)")
    return window(state, 1, values.pop(), 1)


def _conv_params(module: nn.Module, name: str) -> tuple[int, int, int]:
    where = f"layer {name!r}"
    return (_square(module.kernel_size, "kernel size", where), _square(module.stride, "stride", where),
            _square(module.dilation, "dilation", where))


def _pool_params(kernel: Any, stride: Any, dilation: Any, where: str) -> tuple[int, int, int]:
    k = _square(kernel, "kernel size", where)
    s = k if stride is None or stride == [] or stride == () else _square(stride, "stride", where)
    return k, s, _square(dilation, "dilation", where)


class _LayerTracer(fx.Tracer):
    """torch.fx's tracer, with every Conv2d and Linear, subclasses included, kept as one module call:
    a layer of the table, named as the saturation tracker names it."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.Linear)) or super().is_leaf_module(module, qualified_name)


def _trace(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    try:
        tracer = _LayerTracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as error:  # tracing fails in many ways (TraceError, TypeError, ...)
        first = " ".join(str(error).split())[:300]
        raise ReceptiveFieldError(
            f"Receptive field: the model {type(model).__qualname__} cannot be traced with torch.fx "
            f"({type(error).__name__}: {first}). The analysis needs a model whose forward pass has no "
            f"data-dependent control flow; make it fx-traceable or leave the 'receptive_field' step out.") from None


def _propagate(graph_module: fx.GraphModule) -> list[_Row]:
    """Run the DP over the fx graph and return one row per Conv2d/Linear module call.

    Two states travel along every edge: the receptive fields over all paths (``states``), and those
    of the previous layer (``previous``): the output state of the last Conv2d/Linear on the way, grown
    by the windows after it, where a merge ignores operands that only bypass layers (``_skips``).
    """
    states: dict[fx.Node, Any] = {}
    previous: dict[fx.Node, Any] = {}
    ancestors: dict[fx.Node, int] = {}  # bit set of the nodes (by position) each node depends on
    position: dict[fx.Node, int] = {}
    by_position: list[fx.Node] = []
    rows: list[_Row] = []
    row_of: dict[fx.Node, _Row] = {}
    calls: dict[str, int] = {}
    saw_input = False
    for node in graph_module.graph.nodes:
        position[node] = len(by_position)
        by_position.append(node)
        inputs: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: inputs.append(n) or n)
        ancestors[node] = _reach(inputs, ancestors, position)
        if node.op == "placeholder":
            states[node] = previous[node] = None if saw_input else {1: (1, 1)}
            saw_input = True
            continue
        if node.op in ("get_attr", "output"):
            states[node] = previous[node] = None
            continue
        in_states = [states[n] for n in inputs if states[n] is not None]
        if not in_states:  # constants, shapes, parameters: no image content
            states[node] = previous[node] = None
            continue
        kind = _merge_kind(node)
        skips: set[fx.Node] = set()
        if kind == "gate":
            scaled = _scaled_operands(inputs, states, ancestors, position)
            if scaled:
                # Attention: the gate scales the tensor it was computed from and neither widens its
                # receptive field nor is a layer of the sequence (thesis §10.1 omits these layers).
                skips = {n for n in inputs if n not in scaled}
                main = _reach(scaled, ancestors, position)
                for gate in skips:
                    _mark_side_branch(_reach([gate], ancestors, position) & ~main, by_position, row_of)
                in_states = [states[n] for n in scaled]
        head = _first_input(node)
        first = states[head] if head is not None else merge(in_states)
        out = _transform(node, graph_module, in_states, first)
        states[node] = out
        module = graph_module.get_submodule(node.target) if node.op == "call_module" else None
        if kind == "join":
            skips = _skips(inputs, states, ancestors, position)
            for skip in skips:
                # nodes the other operands depend on: the walk must not enter the main path
                others = [other for other in inputs if other is not skip and isinstance(states[other], dict)]
                layer = _shortcut_layer(skip, states, _reach(others, ancestors, position), position)
                if layer in row_of:
                    row_of[layer].side_branch = True
        layer = _layer_name(node, module)
        if layer is not None:
            is_conv, entering = not isinstance(module, nn.Linear), merge(in_states)
            if is_conv and isinstance(entering, _Unknown):
                raise _unsupported(node, graph_module, f", which reads a feature map whose receptive field the graph "
                                                       f"does not determine: it comes from {entering.origin}")
            row_of[node] = _Row(_call_name(layer, calls), is_conv, entering, out,
                                merge(previous[n] for n in inputs if n not in skips),
                                position=position[node], ancestors=ancestors[node])
            rows.append(row_of[node])
            previous[node] = out
            continue
        kept = [previous[n] for n in inputs if n not in skips and previous[n] is not None]
        previous[node] = _transform(node, graph_module, kept, previous[head] if head is not None else merge(kept)) \
            if kept else None
    if not saw_input:
        raise ReceptiveFieldError("Receptive field: the traced model has no input.")
    return rows


def _reach(nodes: Iterable[fx.Node], ancestors: dict[fx.Node, int], position: dict[fx.Node, int]) -> int:
    """Bit set (by graph position) of ``nodes`` and of every node they depend on."""
    bits = 0
    for node in nodes:
        bits |= ancestors[node] | (1 << position[node])
    return bits


def _scaled_operands(inputs: list[fx.Node], states: dict[fx.Node, Any], ancestors: dict[fx.Node, int],
                     position: dict[fx.Node, int]) -> list[fx.Node]:
    """The operands of a product that another operand was computed from: the tensor an attention
    gate scales (empty for a plain product)."""
    return [n for n in inputs if states[n] is not None
            and any(ancestors[m] >> position[n] & 1 for m in inputs if m is not n)]


def _first_input(node: fx.Node) -> fx.Node | None:
    """The node's first argument if that is a graph node (the tensor a method or function acts on)."""
    return node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None


def _layer_name(node: fx.Node, module: nn.Module | None) -> str | None:
    """The layer a node is: a Conv2d/Linear module call (its name), an ``F.conv2d`` call with a
    parameter as weight (the name of the module holding it), or None."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return str(node.target)
    if node.op == "call_function" and node.target is F.conv2d:
        weight = _arg(node, 1, "weight", None)  # _transform has checked that it is a parameter
        owner, _, _ = str(weight.target).rpartition(".")
        return owner or str(weight.target)
    return None


def _mark_side_branch(bits: int, by_position: list[fx.Node], row_of: dict[fx.Node, _Row]) -> None:
    """Flag the layer rows among the nodes of a bit set (by graph position) as side-branch layers."""
    while bits:
        bit = bits & -bits
        bits ^= bit
        row = row_of.get(by_position[bit.bit_length() - 1])
        if row is not None:
            row.side_branch = True


def _merge_kind(node: fx.Node) -> str | None:
    """"join" for sums and concatenations, "gate" for products and quotients, else None."""
    if node.op == "call_function":
        return "join" if node.target in _JOIN_FUNCTIONS else "gate" if node.target in _GATE_FUNCTIONS else None
    if node.op == "call_method":
        return "join" if node.target in _JOIN_METHODS else "gate" if node.target in _GATE_METHODS else None
    return None


def _skips(inputs: list[fx.Node], states: dict[fx.Node, Any], ancestors: dict[fx.Node, int],
           position: dict[fx.Node, int]) -> set[fx.Node]:
    """The operands of a merge that only bypass layers: an identity or 1×1 shortcut, or the input
    a dense block concatenates. Operand ``a`` is one when another operand ``b`` depends on a node
    from which ``a`` was reached without any growth of the receptive field, while ``b`` grew."""
    spatial = [n for n in dict.fromkeys(inputs) if isinstance(states[n], dict)]
    if len(spatial) < 2:
        return set()
    span = {n: bounds(states[n])[:2] for n in spatial}
    skips = set()
    for a in spatial:
        origins = _same_span_origins(a, states, position)  # bit set: a and its ancestors of equal receptive field
        if any(b is not a and span[b] != span[a] and origins & (ancestors[b] | (1 << position[b]))
               for b in spatial):
            skips.add(a)
    return set() if len(skips) == len(spatial) else skips


def _same_span_origins(node: fx.Node, states: dict[fx.Node, Any], position: dict[fx.Node, int]) -> int:
    """Bit set (by graph position) of ``node`` and of the ancestors reached from it through nodes of
    the same (r_min, r_max) — since receptive fields only grow along a path, no layer lies between
    them — or across a pooling that only downsamples (``_downsampling_pool``: the AvgPool2d(2) of a
    ResNet-D shortcut, which acts like the stride of a 1×1 projection)."""
    found, stack, seen = 0, [node], {node}
    while stack:
        current = stack.pop()
        found |= 1 << position[current]
        span, tiles = bounds(states[current])[:2], _downsampling_pool(current)
        for parent in current.all_input_nodes:
            if parent not in seen and isinstance(states.get(parent), dict) and \
                    (tiles or bounds(states[parent])[:2] == span):
                seen.add(parent)
                stack.append(parent)
    return found


def _downsampling_pool(node: fx.Node) -> bool:
    """Whether the node is a max/avg pooling whose windows tile the map (kernel = stride), as in the
    AvgPool2d(2) + 1×1 conv shortcut of ResNet-D: it only downsamples. Overlapping pools (the 3×3
    max-pool branch of an Inception block) widen the receptive field like a layer and do not count."""
    if node.op == "call_module":
        module = node.graph.owning_module.get_submodule(node.target)
        if not isinstance(module, _WINDOW_MODULES):
            return False
        kernel, stride = module.kernel_size, module.stride
    elif node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        kernel, stride = _arg(node, 1, "kernel_size", None), _arg(node, 2, "stride", None)
    else:
        return False
    stride = kernel if stride is None or stride == [] or stride == () else stride
    return _pair(kernel) == _pair(stride)


def _pair(value: Any) -> tuple:
    """A size along (height, width): ``2`` and ``(2, 2)`` alike."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _shortcut_layer(skip: fx.Node, states: dict[fx.Node, Any], shared: int,
                    position: dict[fx.Node, int]) -> fx.Node | None:
    """The Conv2d call a skip operand comes from through ops that leave the receptive field as it is
    (the 1×1 convolution and batch norm of a projection shortcut) or only downsample (the tiling pool of
    a ResNet-D shortcut, ``_downsampling_pool``), or None (an identity shortcut).
    The walk stops at nodes the other operands depend on (``shared``, bits by position): those belong
    to the main path, e.g. the 1×1 projection that ends the previous block of a MobileNet."""
    node: fx.Node = skip
    while True:
        if shared >> position[node] & 1:
            return None
        spatial = [n for n in node.all_input_nodes if isinstance(states.get(n), dict)]
        if len(spatial) != 1:
            return None  # a merge
        if bounds(states[spatial[0]])[:2] != bounds(states[node])[:2] and not _downsampling_pool(node):
            return None  # growth: a layer of the main path (e.g. a dense layer's 3×3 conv)
        if node.op == "call_module" and isinstance(node.graph.owning_module.get_submodule(node.target), nn.Conv2d):
            return node
        node = spatial[0]


def _transform(node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any], first: Any) -> Any:
    """The state of ``node``'s output from the states of its inputs (``first``: of its first argument)."""
    if _only_global(in_states) and _keeps_global(node):
        return GLOBAL  # e.g. .squeeze(-1) of a pooled SE gate: whatever the op, it sees the whole input
    if node.op == "call_module":
        return _module_call(node, graph_module, in_states)
    if node.op == "call_function":
        return _function_call(node, graph_module, in_states, first)
    if node.op == "call_method":
        return _method_call(node, graph_module, in_states, first)
    raise _unsupported(node, graph_module)  # pragma: no cover - fx has no other opcodes


def _only_global(in_states: list[Any]) -> bool:
    """Whether every image-derived input is global (constants and shapes carry no state): any op on
    such inputs depends on the whole input image, so its result is global too."""
    return bool(in_states) and all(state is GLOBAL for state in in_states)


def _keeps_global(node: fx.Node) -> bool:
    """Whether a function or method call of global inputs is global, whatever it does: all but those
    reading metadata (``x.size()``, ``x.shape``: no image content) and ``F.conv2d``, a layer whose
    weight ``_conv_function`` must check."""
    if node.op == "call_method":
        return node.target not in _META_METHODS
    return node.op == "call_function" and node.target not in (getattr, F.conv2d)


def _module_call(node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any]) -> Any:
    """The output state of a module call (``call_module`` node)."""
    module = graph_module.get_submodule(node.target)
    if isinstance(module, nn.Conv2d):
        return window(merge(in_states), *_conv_params(module, node.target))
    if isinstance(module, nn.Linear):
        return GLOBAL
    if isinstance(module, _WINDOW_MODULES):
        where = f"layer {node.target!r}"
        dilation = getattr(module, "dilation", 1)
        return window(merge(in_states), *_pool_params(module.kernel_size, module.stride, dilation, where))
    if isinstance(module, _ADAPTIVE_MODULES):
        return _adaptive(merge(in_states), module.output_size, node, graph_module)
    if isinstance(module, nn.Flatten):
        return GLOBAL
    if isinstance(module, _PASS_MODULES):
        return merge(in_states)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        dim = module.dim
        return GLOBAL if dim is None or dim in _SPATIAL_DIMS else merge(in_states)
    raise _unsupported(node, graph_module)


def _function_call(node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any], first: Any) -> Any:
    """The output state of a function call (``call_function`` node)."""
    target = node.target
    if target is operator.getitem:
        return _getitem(first, node, graph_module)
    if target in _CAT_FUNCTIONS:
        _check_cat_dim(node, graph_module)
    if target in _PAIRWISE_FUNCTIONS and _pairwise(node, in_states):
        return merge(in_states)
    if target in _PASS_FUNCTIONS or getattr(target, "__name__", None) in _PASS_FUNCTION_NAMES:
        return merge(in_states)
    if target in _ADAPTIVE_FUNCTIONS:
        return _adaptive(first, _arg(node, 1, "output_size", None), node, graph_module)
    if target in _GLOBAL_FUNCTIONS:
        return GLOBAL
    if target in _REDUCE_FUNCTIONS:
        return _reduction(first, node, graph_module)
    if target in _POOL_FUNCTIONS:
        return _pool_function(first, node, graph_module)
    if target is F.conv2d:
        return _conv_function(first, node, graph_module)
    if target is getattr:
        return None  # x.shape, x.dtype, ...
    raise _unsupported(node, graph_module)


def _check_cat_dim(node: fx.Node, graph_module: fx.GraphModule) -> None:
    """Concatenation along channels (dim 1, -3 on 4-d feature maps) or the batch passes through; along
    height or width it places feature maps side by side, which moves pixels: refused."""
    dim = _arg(node, 1, "dim", 0)
    if not isinstance(dim, int):
        raise _unsupported(node, graph_module, f" along a non-constant dim {dim!r}")
    if dim in _SPATIAL_DIMS:
        raise _unsupported(node, graph_module, f" along dim {dim} (height/width: it places feature maps side by "
                                               f"side, which moves pixels; only channel concatenation is supported)")


def _pairwise(node: fx.Node, in_states: list[Any]) -> bool:
    """Whether ``torch.max``/``torch.min`` (or ``a.max(b)``) takes a second tensor — an element-wise merge
    like ``torch.maximum`` — rather than a dim: two image-derived inputs, or a parameter/buffer."""
    other = _arg(node, 1, "other", None)
    return isinstance(other, fx.Node) and (len(in_states) > 1 or other.op == "get_attr")


def _pool_function(state: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    """``F.max_pool2d``/``F.avg_pool2d``: a window of constant size, or a global pool written out."""
    where = f"graph node {node.name!r}"
    kernel = _arg(node, 1, "kernel_size", None)
    stride = _arg(node, 2, "stride", None)
    dilation = _arg(node, 4, "dilation", 1) if node.target is F.max_pool2d else 1
    if _whole_map(kernel, node.args[0]):
        return GLOBAL  # F.avg_pool2d(x, x.size()[2:]): a global pool written out
    if any(isinstance(value, fx.Node) for value in _flat((kernel, stride, dilation))):
        raise _unsupported(node, graph_module, " whose window is computed from the input's shape")
    return window(state, *_pool_params(kernel, stride, dilation, where))


def _conv_function(state: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    """``F.conv2d`` with a parameter as weight: a window of the weight's kernel size."""
    weight = _arg(node, 1, "weight", None)
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        raise _unsupported(node, graph_module, " whose weight is not a fixed parameter")
    shape = graph_module.get_parameter(weight.target).shape
    where = f"graph node {node.name!r}"
    return window(state, _square(tuple(shape[2:]), "kernel size", where),
                  _square(_arg(node, 3, "stride", 1), "stride", where),
                  _square(_arg(node, 5, "dilation", 1), "dilation", where))


def _method_call(node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any], first: Any) -> Any:
    """The output state of a tensor method call (``call_method`` node)."""
    name = node.target
    if name in _META_METHODS:
        return None
    if name in _PASS_METHODS or (name in _PAIRWISE_METHODS and _pairwise(node, in_states)):
        return merge(in_states)
    if name in _GLOBAL_METHODS:
        return GLOBAL
    if name in _RESHAPE_METHODS:
        return _reshape(first, node, graph_module)
    if name in _REDUCE_METHODS:
        return _reduction(first, node, graph_module)
    raise _unsupported(node, graph_module)


def _adaptive(state: Any, output_size: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    """Adaptive pooling to one position is global; to more, its windows depend on the input size."""
    one = output_size == 1 or (isinstance(output_size, (tuple, list)) and all(v == 1 for v in output_size))
    if state is GLOBAL or (one and state is not None):
        return GLOBAL
    if not isinstance(state, dict):
        return state  # no image content, or already unknown
    return _Unknown(f"{_describe(node, graph_module)} pooling to {output_size!r} positions")


def _reshape(state: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    """A view/reshape to vectors (two dimensions: ``x.view(x.size(0), -1)``) is global; to more
    dimensions it may keep, fold or move the feature map, which the graph does not say. A global
    tensor stays global (a squeeze-and-excitation gate viewed as (n, c, 1, 1))."""
    if not isinstance(state, dict):
        return GLOBAL if state is GLOBAL else state
    shape = node.args[1:] or (node.kwargs.get("shape") or node.kwargs.get("size"),)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 2:
        return GLOBAL
    return _Unknown(f"{_describe(node, graph_module)}, a reshape to {len(shape)} dimensions")


def _call_name(target: str, calls: dict[str, int]) -> str:
    """The module name; a module called several times gets ``name:2``, ``name:3`` for later calls."""
    calls[target] = calls.get(target, 0) + 1
    return target if calls[target] == 1 else f"{target}:{calls[target]}"


# ---------------------------------------------------------------------------- public API
def receptive_fields(model: nn.Module, input_resolution: int) -> pd.DataFrame:
    """One row per Conv2d/Linear module call in forward order (see module docstring).

    Columns: ``index`` (1-based among Conv2d rows, empty for Linear), ``layer`` (qualified module
    name), ``r_min``, ``r_max``, ``jump`` (of the layer's output), ``in_r_min``, ``in_r_max`` (of the
    tensor entering the layer, over all paths), ``prev_r_min`` (the thesis' r_{l-1,min}: the r_min of
    the previous layer(s), grown by the pooling in between; shortcuts that bypass layers are no
    previous layer), ``side_branch`` (a receptive-field-neutral branch beside growing ones — a 1×1
    projection shortcut, the 1×1 branch of an Inception block — or a layer of an attention gate: not
    part of the sequence of layers the border rule walks, thesis §10.1, §10.3), ``onward_prev_r_min``
    and ``onward_in_r_max`` (the minimum of ``prev_r_min`` resp. ``in_r_max`` over the layer itself and
    every Conv2d downstream of it in the graph, on any path to the output, side branches left out: the
    border rule needs the whole sequence onward, which a saved table no longer shows for parallel paths),
    and the flags ``b_min``/``b_max`` marking the border layers for ``input_resolution`` (see
    ``border_layers``). Global values are ``inf``.
    """
    rows = _propagate(_trace(model))
    records = []
    conv_index = 0
    for row in rows:
        r_min, r_max, jump = bounds(row.out_state)
        in_min, in_max, _ = bounds(row.in_state)
        conv_index += row.is_conv
        records.append({"index": conv_index if row.is_conv else None, "layer": row.layer, "r_min": r_min,
                        "r_max": r_max, "jump": jump, "in_r_min": in_min, "in_r_max": in_max,
                        "prev_r_min": bounds(row.prev_state)[0], "side_branch": row.side_branch})
    frame = pd.DataFrame.from_records(records, columns=COLUMNS[:-4])
    frame["index"] = frame["index"].astype("Int64")
    for column in _NUMBERS:
        frame[column] = frame[column].astype(float)
    frame["onward_prev_r_min"] = _onward(rows, frame["prev_r_min"].tolist())
    frame["onward_in_r_max"] = _onward(rows, frame["in_r_max"].tolist())
    b_min, b_max = border_layers(frame, input_resolution)
    frame["b_min"] = frame["layer"] == b_min
    frame["b_max"] = frame["layer"] == b_max
    return frame


def _onward(rows: list[_Row], values: list[float]) -> list[float]:
    """Per row, the minimum of its own value and those of the main-path Conv2d rows that depend on it
    (downstream on any path, side branches left out). A layer starts the border sequence only if this
    exceeds I: then every layer on every path from it to the output does, whatever the order in which
    forward() runs parallel paths (thesis §10.2: a sequence is a path to the output)."""
    onward = []
    for row, own in zip(rows, values):
        later = [value for other, value in zip(rows, values)
                 if other.is_conv and not other.side_branch and other.ancestors >> row.position & 1]
        onward.append(float(min([own, *later])))
    return onward


def border_layers(df: pd.DataFrame, input_resolution: int) -> tuple[str | None, str | None]:
    """(b_min, b_max): the first Conv2d (in forward order) whose input receptive field and that of
    every Conv2d downstream of it exceed the resolution (``prev_r_min > I`` resp. ``in_r_max > I``,
    strict; the ``onward_*`` columns), or None (thesis §9.3, §10.2). On a chain this is the first layer
    from which on every layer does; on parallel paths only the layers after it on its own paths count.

    b_min reads r_{l-1,min} of the previous layer, not the minimum over all paths into the layer:
    through an identity shortcut the stem's receptive field reaches every block of a ResNet, so
    that minimum never exceeds I, while the thesis (§10.3, Fig. 60) finds the border on the zig-zag
    sequence of the convolutions' r_min (ResNet18 at 32 px: layer3.1.conv1). Side branches
    (``side_branch``) are left out of both sequences.

    Conv2d rows whose input is global (e.g. the 1×1 convolutions of a squeeze-and-excitation gate)
    satisfy the condition but never start the border sequence, since they see no spatial layout.
    """
    return borders_of(df[df["index"].notna()], input_resolution)
