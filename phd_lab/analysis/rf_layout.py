"""Where a tensor's height and width are: its layout, from shapes recorded on the traced graph.

Most feature maps are (batch, channels, height, width); a tensor in that layout has the layout ``None``
(the default, with dims 2, 3, -2, -1 spatial, whatever else is known). Operations that move axes —
``permute``/``transpose`` (ConvNeXt's channels-last blocks), a ``view``/``reshape`` that splits or merges
only non-spatial axes (ShuffleNetV2's channel shuffle) — give a tensor an explicit layout
``(rank, height axis, width axis)``, which turns back into ``None`` once the map is (N, C, H, W) again.

Shapes come from one shape propagation of the traced graph on a ``meta``-device input of the analysed
resolution (no memory, no arithmetic, no change to the model): ``record_shapes`` stores them on the nodes.
Where it cannot run, views keep their old rule and permutes/transposes of feature maps stay refused; so does a
model whose lazy layers (``nn.LazyLinear``, ``nn.LazyConv2d``) have no weights yet, before its first forward pass,
and the refusal names them.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx, nn

from phd_lab.interrupts import raise_interruption_behind
from phd_lab.wording import first_names

_SHAPE = "rf_shape"  # node.meta key of a tensor output's shape
_NO_SHAPES = "rf_no_shapes"  # graph_module.meta key: why no shapes were recorded, where the words say more
Layout = tuple[int, int, int] | None  # (rank, height axis, width axis); None: (N, C, H, W)
STANDARD = (4, 2, 3)  # the layout None: (N, C, H, W)
_PERMUTES = {torch.permute}
_TRANSPOSES = {torch.transpose, torch.swapaxes, torch.swapdims}
PERMUTE_METHODS = {"permute"}
TRANSPOSE_METHODS = {"transpose", "swapaxes", "swapdims"}
MOVE_ATTRIBUTES = {"mT", "mH", "T", "H"}  # x.mT swaps the last two axes, x.T reverses them all


def record_shapes(graph_module: fx.GraphModule, input_resolution: int | None) -> bool:
    """Store every tensor-valued node's output shape (``node.meta['rf_shape']``) from a run on a meta-device input of
    2 × C × I × I, C the input channels of the first Conv2d, further forward arguments at their defaults; False
    where that is impossible."""
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    convs = [graph_module.get_submodule(n.target) for n in graph_module.graph.nodes if n.op == "call_module"
             and isinstance(graph_module.get_submodule(n.target), nn.Conv2d)]
    # the image is the first input; further inputs need a default (forward(x, scale=2.0)), which the run takes
    graph_module.meta.pop(_NO_SHAPES, None)
    if input_resolution is None or not placeholders or not convs or any(not p.args for p in placeholders[1:]):
        return False
    lazy = _lazy_modules(graph_module)
    if lazy:  # a lazy layer before its first call has no shape to copy (empty_like raised torch's ValueError)
        names = first_names([repr(name) for name in lazy], shown=3, what="modules")
        graph_module.meta[_NO_SHAPES] = (f"the lazy layers {names} of {type(graph_module).__name__} have no weights "
                                         f"before their first forward pass: run the model on one batch first")
        return False
    wrapper = _ShapePropagation(graph_module)
    try:  # the random number generators stay untouched (dropout on meta tensors draws nothing, to be sure)
        meta = {name: torch.empty_like(value, device="meta") for name, value in
                [*wrapper.named_parameters(), *wrapper.named_buffers()]}
        image = torch.zeros(2, convs[0].in_channels, input_resolution, input_resolution, device="meta",
                            dtype=convs[0].weight.dtype)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.func.functional_call(wrapper, meta, (image,))  # meta tensors stand in for the weights
    except Exception as error:  # any op that cannot run on meta tensors, or a mismatch: no shapes, the old rules
        raise_interruption_behind(error)
        for node in graph_module.graph.nodes:
            node.meta.pop(_SHAPE, None)
        return False
    return True


def _lazy_modules(model: nn.Module) -> list[str]:
    """The names of ``model``'s modules whose own parameters or buffers are still uninitialised (a LazyLinear,
    LazyConv2d before its first forward pass): their shapes are not known yet."""
    return [name for name, module in model.named_modules()
            if any(nn.parameter.is_lazy(tensor)
                   for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)])]


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph node by node and stores the shape of each tensor output. Unlike torch's ``ShapeProp``, it
    prints nothing when an op fails (``ShapeProp`` prints the traceback to stderr before raising): a model whose
    graph cannot run on meta tensors is analysed without shapes, quietly."""

    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        if isinstance(result, torch.Tensor):
            node.meta[_SHAPE] = tuple(result.shape)
        return result


class _ShapePropagation(nn.Module):
    """Runs ``_ShapeRecorder`` over the graph as its forward pass, so that ``torch.func.functional_call`` can swap
    the graph module's parameters and buffers for meta tensors while it runs (the model itself is unchanged)."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, image: torch.Tensor) -> None:
        _ShapeRecorder(self.graph_module).run(image)


def first_input(node: fx.Node) -> fx.Node | None:
    """The node's first argument if that is a graph node (the tensor a method or function acts on)."""
    return node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None


def is_item(node: fx.Node) -> bool:
    """Whether ``node`` is an indexing ``x[...]`` (``operator.getitem``)."""
    return node.op == "call_function" and node.target is operator.getitem


def tuple_input(node: fx.Node, source: fx.Node | None) -> fx.Node | None:
    """For an item of the result of a tuple-valued op ``source`` (``x.max(1)[0]``, ``x.chunk(2)[1]``: no shape
    recorded for the tuple): the tensor that op read; else None."""
    if is_item(node) and isinstance(source, fx.Node) and shape_of(source) is None:
        return first_input(source)
    return None


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The recorded shape of a node's output tensor, or None (no shapes, or not a tensor)."""
    return node.meta.get(_SHAPE) if isinstance(node, fx.Node) else None


def spatial_dims(layout: Layout) -> set[int]:
    """The dims (non-negative and negative) of height and width."""
    if layout is None:
        return {2, 3, -2, -1}
    rank, height, width = layout
    return {height, width, height - rank, width - rank}


def normalized(layout: Layout) -> Layout:
    """``None`` for the standard (N, C, H, W) layout, also with height and width swapped (every rule treats
    both alike: kernels, strides and strided slices must be equal along them)."""
    return None if layout is not None and layout[0] == 4 and set(layout[1:]) == {2, 3} else layout


def rank_of(node: Any, layout: Layout) -> int:
    """The rank of a tensor: recorded, or that of its layout (4 for the standard one)."""
    shape = shape_of(node)
    return len(shape) if shape is not None else (layout or STANDARD)[0]


def moved(node: fx.Node, layout: Layout, source: fx.Node) -> Layout | str:
    """The layout after a permute/transpose of ``source``, or why it cannot be told."""
    where = _moved_axes(node, layout, source)
    return where if isinstance(where, str) else normalized(where)


def swaps_names(node: fx.Node, layout: Layout, source: fx.Node) -> bool:
    """Whether a permute/transpose of ``source`` leaves a (N, C, H, W) map with width and height swapped
    (``x.transpose(2, 3)``): its layout None names axis 2 the height, which was the width."""
    return _moved_axes(node, layout, source) == (4, 3, 2)


def _moved_axes(node: fx.Node, layout: Layout, source: fx.Node) -> tuple[int, int, int] | str:
    """``moved`` before ``normalized``: (rank, height axis, width axis), or why it cannot be told."""
    if shape_of(source) is None:  # no shapes: the old rule, permutes of feature maps are refused
        known = source.graph.owning_module.meta.get(_NO_SHAPES) if source.graph.owning_module is not None else None
        why = known or "the traced graph could not run on a meta-device input at the analysed resolution"
        return f"of a tensor whose shape is not known, so where height and width go is not known ({why})"
    rank = rank_of(source, layout)
    if layout is None and rank != 4:
        return f"of a {rank}-dimensional tensor whose height and width axes are not known"
    _, height, width = layout or STANDARD
    if node.op == "call_function" and node.target is getattr:  # x.mT, x.mH: the last two axes; x.T, x.H: all
        order = list(range(rank))[::-1] if node.args[1] in ("T", "H") else [*range(rank - 2), rank - 1, rank - 2]
        return rank, order.index(height), order.index(width)
    if node.op == "call_method" and node.target in PERMUTE_METHODS or node.target in _PERMUTES:
        dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
        dims = node.kwargs.get("dims", dims)
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        if not all(isinstance(d, int) for d in dims) or len(dims) != rank:
            return f"with dims {dims!r} that are not {rank} constants"
        order = [d % rank for d in dims]
        return rank, order.index(height), order.index(width)
    first = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim0", node.kwargs.get("axis0"))
    second = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim1", node.kwargs.get("axis1"))
    if not (isinstance(first, int) and isinstance(second, int)):
        return f"with non-constant dims {first!r}, {second!r}"
    swap = {first % rank: second % rank, second % rank: first % rank}
    return rank, swap.get(height, height), swap.get(width, width)


def is_move(node: fx.Node) -> bool:
    """Whether a node is a permute/transpose (function or method)."""
    if node.op == "call_method":
        return node.target in PERMUTE_METHODS | TRANSPOSE_METHODS
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in MOVE_ATTRIBUTES
    return node.op == "call_function" and node.target in _PERMUTES | _TRANSPOSES


def viewed(node: fx.Node, layout: Layout, source: fx.Node) -> Layout | bool:
    """The layout after a view/reshape of ``source`` that keeps both spatial axes whole (it splits or merges
    only other axes: ShuffleNetV2's channel shuffle), else False. An axis of size n with P elements
    after it is kept as the output axis of size n with P elements after it (row-major order); an axis of
    size 1 (a 1×1 map) fits several, and is taken at the same place counted from the end, if it fits there."""
    before, after = shape_of(source), shape_of(node)
    if before is None or after is None or (layout is None and len(before) != 4):
        return False
    _, height, width = layout if layout is not None else STANDARD
    kept = [_same_axis(before, axis, after) for axis in (height, width)]
    if None in kept or kept[0] == kept[1]:
        return False
    return normalized((len(after), kept[0], kept[1]))


def _same_axis(before: tuple[int, ...], axis: int, after: tuple[int, ...]) -> int | None:
    """The output axis that holds input axis ``axis`` after a row-major view, or None. Of several candidates
    (axes of size 1: a 1×1 map, any of them holds its one position) the one at the same place from the end."""
    size, inner = before[axis], math.prod(before[axis + 1:])
    found = [j for j in range(len(after)) if after[j] == size and math.prod(after[j + 1:]) == inner]
    if len(found) == 1:
        return found[0]
    same_place = len(after) - (len(before) - axis)
    return same_place if same_place in found else None


def carried(node: fx.Node, layout: Layout, source: fx.Node | None) -> Layout | str:
    """The layout of an op's output that neither moves nor views axes: the same as its input's where the rank
    stays (or grows by broadcasting, counted from the right); for an explicit layout, any other change
    of rank is a string saying so."""
    if is_item(node) and shape_of(source) is not None and shape_of(node) is not None \
            and (layout is not None or len(shape_of(source)) == 4):  # a tensor's, not a tuple's
        # (a (N, C, H, W) map that gains axes, x[:, None], has height and width at axes 3 and 4)
        placed = _indexed(node.args[1], len(shape_of(source)), len(shape_of(node)), (layout or STANDARD)[1:])
        if placed is not None:
            return normalized((len(shape_of(node)), *placed))
    if layout is None:
        return None
    before, after = shape_of(source), shape_of(node)
    read = tuple_input(node, source)
    if read is not None:  # an item of a tuple (x.max(-1)[0], x.chunk(2)[1]): the rank of the tuple's input
        before = shape_of(read)
    if before is None or after is None or len(before) == len(after):
        return layout
    _, height, width = layout
    if len(after) > len(before) and not is_item(node):
        grow = len(after) - len(before)
        return normalized((len(after), height + grow, width + grow))
    item = f" (an item of the result of graph node {source.name!r})" if shape_of(source) is None else ""
    return (f"{item}, which changes the rank ({len(before)} → {len(after)}) of a tensor whose height and width "
            f"were moved to axes {height} and {width}")


def _indexed(index: Any, rank: int, out_rank: int, axes: tuple[int, int]) -> tuple[int, int] | None:
    """Where axes ``axes`` of a tensor of rank ``rank`` are after basic indexing (ints drop an axis, None adds
    one, slices keep it, ``...`` stands for the axes not named), or None: an axis dropped, or advanced indexing."""
    items = index if isinstance(index, tuple) else (index,)
    if not all(item is None or item is Ellipsis or isinstance(item, slice)
               or (isinstance(item, int) and not isinstance(item, bool)) for item in items):
        return None
    named = sum(1 for item in items if item is not None and item is not Ellipsis)
    if Ellipsis in items:
        cut = items.index(Ellipsis)
        items = items[:cut] + (slice(None),) * (rank - named) + items[cut + 1:]
    else:
        items = items + (slice(None),) * (rank - named)
    place, axis, out = {}, 0, 0
    for item in items:
        if item is None:
            out += 1
        elif isinstance(item, slice):
            place[axis], axis, out = out, axis + 1, out + 1
        else:  # an int
            axis += 1
    if out != out_rank or axis != rank or any(a not in place for a in axes):
        return None
    return place[axes[0]], place[axes[1]]


def disagreement(operands: list[tuple[fx.Node, Layout]]) -> str | None:
    """Why the feature maps merged by one op (a sum, product, concatenation) cannot be merged, or None: their
    height and width axes, counted from the end as broadcasting aligns them, must be the same. A (N, C, H, W)
    map times a channels-last (N, H, W, 1) gate runs when C equals H, but mixes pixels of different places."""
    seen: dict[frozenset[int], str] = {}
    for node, layout in operands:
        rank = rank_of(node, layout)
        if layout is None and rank != 4:
            continue  # a standard-layout tensor of another rank: its axes are not known, nothing to compare
        full, height, width = layout or STANDARD
        seen.setdefault(frozenset((height - full, width - full)),
                        f"{node.name!r} (height and width at axes {height} and {width} of {rank})")
    if len(seen) < 2:
        return None
    return (" of feature maps whose height and width are at different axes: " + ", ".join(seen.values())
            + "; move their axes alike first")
