"""How each traced operation changes a receptive-field state: the operation tables and the transfer functions.

``transform`` gives the state of a graph node's output from the states of its inputs, by the rules of
``phd_lab.analysis.receptive_field`` (its docstring lists them): convolutions and max/avg pooling are
windows (so is a strided slice: a 1×1 one, moved by its start), element-wise, normalisation, activation, dropout,
padding, channel concatenation and permutes of axes pass through (a merge of maps whose windows a strided slice
moved joins them: ``rf_state.merge``), global pooling, spatial reductions and Linear make a tensor global (a
Linear that leaves height and width alone does not: ConvNeXt's channels-last Linear layers are pointwise), a
flatten that merges height or width with another axis makes it unknown (one of other axes only keeps it), and
any other operation on an image-derived tensor raises ``ReceptiveFieldError`` naming it (on an unknown one it
stays unknown). Which dims are height and width comes from the tensor's layout (``rf_layout``; ``output_layout``
carries it from node to node). Layers and paths are not this module's job.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from phd_lab.analysis.rf_layout import (STANDARD, Layout, carried, first_input, is_move, moved, normalized, rank_of,
                                        shape_of, spatial_dims, swaps_names, tuple_input, viewed)
from phd_lab.analysis.rf_state import (GLOBAL, ReceptiveFieldError, Unknown, merge, padded, sliced, transposed,
                                       window)

_PASS_MODULES: tuple[type, ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.GLU, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d,
)
_PAD_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
WINDOW_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
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
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_PAIRWISE_FUNCTIONS = {torch.max, torch.min}  # torch.max(a, b) with a tensor b: element-wise, like torch.maximum
_PAIRWISE_METHODS = {"max", "min"}
POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d}


def transform(node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any], first: Any,
              layout: Layout = None) -> Any:
    """The state of ``node``'s output from the states of its inputs (``first``: of its first argument;
    ``layout``: where height and width are in its spatial input, ``rf_layout``)."""
    if _only_global(in_states) and _keeps_global(node):
        return GLOBAL  # e.g. .squeeze(-1) of a pooled SE gate: whatever the op, it sees the whole input
    try:
        return _rules(node, graph_module, in_states, first, layout)
    except ReceptiveFieldError:
        unknown = _only_unknown(in_states)
        if unknown is None or (node.op == "call_function" and node.target is F.conv2d):
            raise
        # an op the rules do not cover (or refuse) on a tensor whose pixels the graph already does not describe
        # (x.flatten(1) and then F.normalize): still unknown; a Linear reading it is global, a convolution refused
        return unknown


def _rules(node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any], first: Any, layout: Layout) -> Any:
    """``transform`` by the operation tables, for inputs that are not all global."""
    if is_move(node):
        return _move(first, node, graph_module, in_states, layout)
    if node.op == "call_module":
        return _module_call(node, graph_module, in_states, layout)
    if node.op == "call_function":
        return _function_call(node, graph_module, in_states, first, layout)
    if node.op == "call_method":
        return _method_call(node, graph_module, in_states, first, layout)
    raise unsupported(node, graph_module)  # pragma: no cover - fx has no other opcodes


def output_layout(node: fx.Node, graph_module: fx.GraphModule, out: Any, layout: Layout,
                  source: fx.Node | None) -> Layout:
    """Where height and width are in ``node``'s output (state ``out``), given those of its spatial input
    ``source``; an op that changes the rank of a tensor whose axes were moved raises ReceptiveFieldError."""
    if not isinstance(out, dict):
        return None
    if is_move(node):
        return moved(node, layout, source)  # _move has checked it
    if node.op == "call_method" and node.target in _RESHAPE_METHODS:
        return viewed(node, layout, source) or None  # kept: _reshape has checked it
    flattened = _flattened_dims(node, graph_module, layout)
    if flattened is not None:  # kept by _flatten: both spatial axes lie outside the flattened ones
        rank, height, width = layout or STANDARD
        start, end = flattened
        return normalized((rank - (end - start), *(axis - (end - start) if axis > end else axis
                                                   for axis in (height, width))))
    dropped = _reduced_layout(node, layout, source)
    if dropped is not False:
        return dropped
    result = carried(node, layout, source)
    if isinstance(result, str):
        raise unsupported(node, graph_module, result)
    return result


def _reduced_layout(node: fx.Node, layout: Layout, source: fx.Node | None) -> Layout | bool:
    """Where height and width are after a reduction over other axes that drops them (``x.mean(1)``, ``x.max(1)[0]``
    of a (N, C, H, W) map: (N, H, W); ``x[:, None].sum(1)``: (N, C, H, W) again), or False where the node is no
    such reduction. Such a tensor kept the layout None, which reads dims 2, 3 as height and width: ``.softmax(1)``
    over the height passed as one over channels. Only maps whose height and width are the last two axes: a moved
    map whose rank changes is refused (``carried``)."""
    reduction, tensor = node, source
    read = tuple_input(node, source)
    if read is not None:
        reduction, tensor = source, read  # an item of x.max(1), x.min(1): (values, indices)
    rank, height, width = layout or STANDARD
    if (height, width) != (rank - 2, rank - 1) or not (
            (reduction.op == "call_function" and reduction.target in _REDUCE_FUNCTIONS)
            or (reduction.op == "call_method" and reduction.target in _REDUCE_METHODS)):
        return False
    before, after = shape_of(tensor), shape_of(node)
    dim = node_arg(reduction, 1, "dim", None)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    if before is None or after is None or len(before) != rank or not all(isinstance(d, int) for d in dims):
        return False
    gone = {d % rank for d in dims}
    if len(after) != rank - len(gone):
        return False  # the dims are kept (keepdim=True, softmax)
    return normalized((len(after), height - sum(d < height for d in gone), width - sum(d < width for d in gone)))


def _move(state: Any, node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any], layout: Layout) -> Any:
    """``permute``/``transpose``: the receptive field passes through; the axes move (``rf_layout``), and where
    height and width swap names, so do the rows and columns of where the windows lie (``rf_state.Place``)."""
    if not isinstance(state, dict):
        return state  # no image content, or already unknown
    where = moved(node, layout, first_input(node))
    if isinstance(where, str):
        raise unsupported(node, graph_module, " " + where)
    return transposed(merge(in_states)) if swaps_names(node, layout, first_input(node)) else merge(in_states)


def _flattened_dims(node: fx.Node, graph_module: fx.GraphModule, layout: Layout) -> tuple[int, int] | None:
    """(start, end) of a flatten (module, function or method) of a tensor with a moved layout, or of a (N, C, H, W)
    map (layout None, rank 4 or not recorded), else None."""
    if layout is None and rank_of(first_input(node), layout) != 4:
        return None
    if node.op == "call_module" and isinstance(module := graph_module.get_submodule(node.target), nn.Flatten):
        start, end = module.start_dim, module.end_dim
    elif (node.op == "call_function" and node.target is torch.flatten) or \
            (node.op == "call_method" and node.target in _GLOBAL_METHODS):
        start, end = node_arg(node, 1, "start_dim", 0), node_arg(node, 2, "end_dim", -1)
    else:
        return None
    if not (isinstance(start, int) and isinstance(end, int)):
        return None
    rank = (layout or STANDARD)[0]
    return start % rank, end % rank


def _flatten(state: Any, node: fx.Node, graph_module: fx.GraphModule, layout: Layout) -> Any:
    """Flatten keeps a feature map whose flattened axes are neither height nor width (the axes after them shift,
    ``rf_layout``). One that merges height or width with another axis (``torch.flatten(x, 1)`` before a head)
    leaves no map whose pixels the graph describes: unknown, as a reshape that folds pixels — a Linear reading
    it is global, a convolution reading it (after a view back to a map) is refused. Global stays global."""
    if not isinstance(state, dict):
        return state  # global, unknown or no image content
    flattened = _flattened_dims(node, graph_module, layout)
    if flattened is not None:
        start, end = flattened
        if start == end or not any(start <= axis <= end for axis in (layout or STANDARD)[1:]):
            return state
    return Unknown(f"{_describe(node, graph_module)}, a flatten that merges height or width with other axes")


def _standard(node: fx.Node, graph_module: fx.GraphModule, layout: Layout) -> None:
    """Windows (convolution, pooling) act on the last two axes: refused where those are not height and width."""
    if layout is not None:
        raise unsupported(node, graph_module, f" on a tensor whose height and width are axes {layout[1]} and "
                                               f"{layout[2]} of {layout[0]}, not the last two")


def _only_global(in_states: list[Any]) -> bool:
    """Whether every image-derived input is global (constants and shapes carry no state): any op on
    such inputs depends on the whole input image, so its result is global too."""
    return bool(in_states) and all(state is GLOBAL for state in in_states)


def _only_unknown(in_states: list[Any]) -> Unknown | None:
    """The first unknown input where no image-derived input is a spatial map (the others global), else None."""
    unknown = next((state for state in in_states if isinstance(state, Unknown)), None)
    return unknown if unknown is not None and not any(isinstance(state, dict) for state in in_states) else None


def _keeps_global(node: fx.Node) -> bool:
    """Whether a function or method call of global inputs is global, whatever it does: all but those
    reading metadata (``x.size()``, ``x.shape``: no image content) and ``F.conv2d``, a layer whose
    weight ``_conv_function`` must check."""
    if node.op == "call_method":
        return node.target not in _META_METHODS
    return node.op == "call_function" and node.target not in (getattr, F.conv2d)


def _module_call(node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any], layout: Layout) -> Any:
    """The output state of a module call (``call_module`` node)."""
    module = graph_module.get_submodule(node.target)
    if isinstance(module, (nn.Conv2d, *WINDOW_MODULES, *_ADAPTIVE_MODULES)):
        _standard(node, graph_module, layout)
    if isinstance(module, nn.Conv2d):
        return window(merge(in_states), *_conv_params(module, node.target))
    if isinstance(module, nn.Linear):
        return _linear(in_states, layout)
    if isinstance(module, WINDOW_MODULES):
        where = f"layer {node.target!r}"
        dilation = getattr(module, "dilation", 1)
        return window(merge(in_states), *_pool_params(module.kernel_size, module.stride, dilation, where))
    if isinstance(module, _ADAPTIVE_MODULES):
        return _adaptive(merge(in_states), module.output_size, node, graph_module)
    if isinstance(module, nn.Flatten):
        return _flatten(merge(in_states), node, graph_module, layout)
    if isinstance(module, _PAD_MODULES):
        return padded(merge(in_states))  # padding moves the pixels: a new frame (rf_state.Place)
    if isinstance(module, _PASS_MODULES):
        return merge(in_states)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        dim = module.dim
        return GLOBAL if dim is None or dim in spatial_dims(layout) else merge(in_states)
    raise unsupported(node, graph_module)


def _linear(in_states: list[Any], layout: Layout) -> Any:
    """Linear acts on the last axis: where that is a channel axis of a feature map (channels-last, after a
    permute: ConvNeXt's blocks) it is pointwise, like a 1×1 convolution; otherwise global."""
    state = merge(in_states)
    if isinstance(state, dict) and layout is not None and layout[0] - 1 not in layout[1:]:
        return state
    return GLOBAL


def _function_call(node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any], first: Any,
                   layout: Layout) -> Any:
    """The output state of a function call (``call_function`` node)."""
    target = node.target
    if target in _ADAPTIVE_FUNCTIONS or target in POOL_FUNCTIONS or target is F.conv2d:
        _standard(node, graph_module, layout)
    if target is operator.getitem:
        return _getitem(first, node, graph_module, layout)
    if target is F.linear:
        return _linear(in_states, layout)
    if target in _CAT_FUNCTIONS:
        _check_cat_dim(node, graph_module, layout)
    if target in _PAIRWISE_FUNCTIONS and _pairwise(node, in_states):
        return merge(in_states)
    if target is F.pad:
        return padded(merge(in_states))
    if target in _PASS_FUNCTIONS or getattr(target, "__name__", None) in _PASS_FUNCTION_NAMES:
        return merge(in_states)
    if target in _ADAPTIVE_FUNCTIONS:
        return _adaptive(first, node_arg(node, 1, "output_size", None), node, graph_module)
    if target is torch.flatten:
        return _flatten(first, node, graph_module, layout)
    if target in _GLOBAL_FUNCTIONS:
        return GLOBAL
    if target in _REDUCE_FUNCTIONS:
        return _reduction(first, node, graph_module, layout)
    if target in POOL_FUNCTIONS:
        return _pool_function(first, node, graph_module)
    if target is F.conv2d:
        return _conv_function(first, node, graph_module)
    if target is getattr:
        return _attribute(first, node, graph_module)
    raise unsupported(node, graph_module)


# Attributes of a tensor that carry no image content; x.data (and x.real of a real tensor) is the tensor itself.
_META_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_cuda", "is_meta", "is_cpu",
                    "is_sparse", "is_quantized", "is_leaf", "names", "itemsize", "nbytes", "grad_fn", "is_mps"}
_SAME_ATTRIBUTES = {"data", "real"}


def _attribute(state: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    """``x.shape``, ``x.dtype``, ...: no image content; ``x.data``: the tensor itself (x.mT, x.T are moves).
    Any other attribute of an image-derived tensor is refused: it used to count as metadata, so a layer after
    it lost its input and its row."""
    name = node.args[1] if len(node.args) > 1 else None
    if name in _META_ATTRIBUTES:
        return None
    if name in _SAME_ATTRIBUTES or not isinstance(state, dict):
        return state
    raise unsupported(node, graph_module, f" (attribute .{name})")


def _check_cat_dim(node: fx.Node, graph_module: fx.GraphModule, layout: Layout) -> None:
    """Concatenation along channels (dim 1, -3 on 4-d feature maps) or the batch passes through; along
    height or width it places feature maps side by side, which moves pixels: refused."""
    dim = node_arg(node, 1, "dim", 0)
    if not isinstance(dim, int):
        raise unsupported(node, graph_module, f" along a non-constant dim {dim!r}")
    if dim in spatial_dims(layout):
        raise unsupported(node, graph_module, f" along dim {dim} (height/width: it places feature maps side by "
                                               f"side, which moves pixels; only channel concatenation is supported)")


def _pairwise(node: fx.Node, in_states: list[Any]) -> bool:
    """Whether ``torch.max``/``torch.min`` (or ``a.max(b)``) takes a second tensor — an element-wise merge
    like ``torch.maximum`` — rather than a dim: two image-derived inputs, or a parameter/buffer."""
    other = node_arg(node, 1, "other", None)
    return isinstance(other, fx.Node) and (len(in_states) > 1 or other.op == "get_attr")


def _pool_function(state: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    """``F.max_pool2d``/``F.avg_pool2d``: a window of constant size, or a global pool written out."""
    where = f"graph node {node.name!r}"
    kernel = node_arg(node, 1, "kernel_size", None)
    stride = node_arg(node, 2, "stride", None)
    dilation = node_arg(node, 4, "dilation", 1) if node.target is F.max_pool2d else 1
    if _whole_map(kernel, node.args[0]):
        return GLOBAL  # F.avg_pool2d(x, x.size()[2:]): a global pool written out
    if any(isinstance(value, fx.Node) for value in _flat((kernel, stride, dilation))):
        raise unsupported(node, graph_module, " whose window is computed from the input's shape")
    return window(state, *_pool_params(kernel, stride, dilation, where))


def _conv_function(state: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    """``F.conv2d`` with a parameter as weight: a window of the weight's kernel size."""
    weight = node_arg(node, 1, "weight", None)
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        raise unsupported(node, graph_module, " whose weight is not a fixed parameter")
    shape = graph_module.get_parameter(weight.target).shape
    where = f"graph node {node.name!r}"
    return window(state, _square(tuple(shape[2:]), "kernel size", where),
                  _square(node_arg(node, 3, "stride", 1), "stride", where),
                  _square(node_arg(node, 5, "dilation", 1), "dilation", where))


def _method_call(node: fx.Node, graph_module: fx.GraphModule, in_states: list[Any], first: Any,
                 layout: Layout) -> Any:
    """The output state of a tensor method call (``call_method`` node)."""
    name = node.target
    if name in _META_METHODS:
        return None
    if name in _PASS_METHODS or (name in _PAIRWISE_METHODS and _pairwise(node, in_states)):
        return merge(in_states)
    if name in _GLOBAL_METHODS:
        return _flatten(first, node, graph_module, layout)
    if name in _RESHAPE_METHODS:
        return _reshape(first, node, graph_module, layout)
    if name in _REDUCE_METHODS:
        return _reduction(first, node, graph_module, layout)
    raise unsupported(node, graph_module)


def _adaptive(state: Any, output_size: Any, node: fx.Node, graph_module: fx.GraphModule) -> Any:
    """Adaptive pooling to one position is global; to more, its windows depend on the input size."""
    one = output_size == 1 or (isinstance(output_size, (tuple, list)) and all(v == 1 for v in output_size))
    if state is GLOBAL or (one and state is not None):
        return GLOBAL
    if not isinstance(state, dict):
        return state  # no image content, or already unknown
    return Unknown(f"{_describe(node, graph_module)} pooling to {output_size!r} positions")


def _reshape(state: Any, node: fx.Node, graph_module: fx.GraphModule, layout: Layout) -> Any:
    """A view/reshape that keeps height and width as whole axes (splits or merges only other axes, as
    ShuffleNetV2's channel shuffle does; told by the recorded shapes, ``rf_layout.viewed``) passes through.
    Otherwise, to vectors (two dimensions: ``x.view(x.size(0), -1)``) it is global; to more dimensions it
    may fold or move the feature map, which the graph does not say. A global tensor stays global (a
    squeeze-and-excitation gate viewed as (n, c, 1, 1))."""
    if not isinstance(state, dict):
        return GLOBAL if state is GLOBAL else state
    if _kept_by_view(node, layout):
        return state
    shape = node.args[1:] or (node.kwargs.get("shape") or node.kwargs.get("size"),)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 2:
        return GLOBAL
    return Unknown(f"{_describe(node, graph_module)}, a reshape to {len(shape)} dimensions")


def _kept_by_view(node: fx.Node, layout: Layout) -> bool:
    """Whether a view/reshape keeps height and width whole (``rf_layout.viewed``)."""
    source = first_input(node)
    return source is not None and viewed(node, layout, source) is not False


def _square(value: Any, what: str, where: str) -> int:
    if isinstance(value, int):
        return value
    values = tuple(value)
    if len(set(values)) != 1:
        raise ReceptiveFieldError(f"Receptive field: {where} has a non-square {what} {values}; the analysis "
                                  f"computes the receptive field as one number and needs equal sizes along "
                                  f"height and width.")
    return int(values[0])


def node_arg(node: fx.Node, position: int, name: str, default: Any) -> Any:
    """Argument ``name`` of a call node, given at ``position`` or by keyword, else ``default``."""
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


def unsupported(node: fx.Node, graph_module: fx.GraphModule, why: str = "") -> ReceptiveFieldError:
    """The error for an operation the analysis cannot reason about: it names the operation and what is supported."""
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
        return node_arg(value, 1, "dim", None) in spatial_dims(None)  # pooling needs the (N, C, H, W) layout
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


def _reduction(state: Any, node: fx.Node, graph_module: fx.GraphModule, layout: Layout) -> Any:
    dim = node_arg(node, 1, "dim", None)
    if dim is None:
        return GLOBAL
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    if not all(isinstance(d, int) for d in dims):
        raise unsupported(node, graph_module, f" with a non-constant dim {dim!r}")
    return GLOBAL if set(dims) & spatial_dims(layout) else state


def _getitem(state: Any, node: fx.Node, graph_module: fx.GraphModule, layout: Layout) -> Any:
    """Indexing passes the receptive field through, except a strided slice of the feature map
    (``x[:, :, ::2, ::2]``, the 'option A' shortcut of CIFAR ResNets): a 1×1 window with that stride. A start off
    the first row or column (``x[..., 1::2, ::2]``, YOLOv5's Focus stem) moves its windows (``rf_state.sliced``);
    a merge of slices that start at different places joins their windows. Which axis an item indexes counts only
    the items that consume one: a None adds an axis, and after ``...`` the axes count from the end
    (``x[:, None, :, ::2, ::2]`` and ``x[..., ::2, None, ::2]`` stride height and width)."""
    index = node.args[1] if len(node.args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    source = first_input(node)
    rank = rank_of(source, layout)
    _, height, width = layout or STANDARD
    spatial = {dim % rank for dim in spatial_dims(layout)}
    strided = {("height" if axis % rank == height else "width"): item for axis, item in _indexed_axes(items)
               if isinstance(item, slice) and item.step not in (None, 1) and axis % rank in spatial}
    if not strided:
        return state
    steps = {axis: item.step for axis, item in strided.items()}
    values = set(steps.values())
    if len(steps) != 2 or len(values) != 1 or not all(isinstance(v, int) and v > 0 for v in values):
        raise unsupported(node, graph_module, f" (a strided slice with steps {steps}; the analysis needs the "
                                               f"same constant step along height and width)")
    if not isinstance(state, dict):
        return state  # no image content, or already unknown
    return sliced(state, values.pop(), (_start(strided["height"], height, source, node, graph_module),
                                        _start(strided["width"], width, source, node, graph_module)))


def _start(item: slice, axis: int, source: fx.Node | None, node: fx.Node, graph_module: fx.GraphModule) -> int:
    """The first row (column) a strided slice reads: its start; one counted from the end needs the map's size,
    from the recorded shapes (``rf_layout``)."""
    start = 0 if item.start is None else item.start
    if not isinstance(start, int):
        raise unsupported(node, graph_module, f" (a strided slice that starts at a non-constant {start!r}: where its "
                                               f"windows lie is not known)")
    if start >= 0:
        return start
    shape = shape_of(source)
    if shape is None:
        raise unsupported(node, graph_module, f" (a strided slice that starts at {start}, counted from the end of a "
                                               f"map whose size is not known: where its windows lie is not known; "
                                               f"start it from the first row and column)")
    return max(shape[axis] + start, 0)


def _indexed_axes(items: tuple[Any, ...]) -> list[tuple[int, Any]]:
    """(input axis, item) for the items of an index that consume an input axis; axes after ``...`` negative."""
    cut = items.index(Ellipsis) if Ellipsis in items else len(items)
    before = [item for item in items[:cut] if item is not None]
    after = [item for item in items[cut + 1:] if item is not None]
    return list(enumerate(before)) + [(i - len(after), item) for i, item in enumerate(after)]


def _conv_params(module: nn.Module, name: str) -> tuple[int, int, int]:
    where = f"layer {name!r}"
    return (_square(module.kernel_size, "kernel size", where), _square(module.stride, "stride", where),
            _square(module.dilation, "dilation", where))


def _pool_params(kernel: Any, stride: Any, dilation: Any, where: str) -> tuple[int, int, int]:
    k = _square(kernel, "kernel size", where)
    s = k if stride is None or stride == [] or stride == () else _square(stride, "stride", where)
    return k, s, _square(dilation, "dilation", where)
