"""Truncation (thesis §9.5.2, §11.4): cut a model before a layer and attach a GAP + linear head.

``truncate_model(model, "features.20", ...)`` removes the named layer and everything after it,
as the thesis removes "all layers of the tail (including the border layer)". The cut is made
on the torch.fx graph at the last tensor before that layer through which every path from
the input passes, so a residual or multipath block is never cut in half: cutting at a conv
inside a block removes the whole block, and the cut model names the layer the cut is really before
(``cut_before``: the block, where the named layer lies inside one) and why it moved (``moved``).
Weights of the kept layers are shared with the original model, so a trained model can be truncated
too. A container module (ResNet's ``layer3``) is cut before the first of its layers. ``"border"``
cuts at the border layer b_min of the run's resolution (the first Conv2d from which on every Conv2d
of the main sequence has a previous layer whose smallest receptive field exceeds the resolution,
thesis §10.2: ``prev_r_min`` in receptive_field.py), ``"border_max"`` at b_max.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from phd_lab.analysis.call_names import call_name, split_call_name
from phd_lab.analysis.rf_propagation import forward_defaults
from phd_lab.errors import ConfigError
from phd_lab.interrupts import raise_interruption_behind

log = logging.getLogger(__name__)

BORDER_CHOICES = ("border", "border_max")


class TruncatedModel(nn.Module):
    """The kept part of a model, global average pooling and a new linear classifier."""

    def __init__(self, body: fx.GraphModule, channels: int, num_classes: int, cut_before: str,
                 named: str | None = None, moved: str | None = None) -> None:
        super().__init__()
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.cut_before = cut_before  # the layer the cut is before: the one named, or the block it lies inside
        self.named = cut_before if named is None else named  # the layer the cut was asked for
        self.moved = moved  # why the cut is not before the layer named (None: it is)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.body(x)), 1))


def _on_every_path(graph: fx.Graph) -> list[fx.Node]:
    """Nodes every input→output path passes through, in topological order.

    With nodes in topological order, a node lies on every path iff no edge jumps over it.
    Only nodes on some input→output path count (constants and shape queries are ignored).
    """
    nodes = list(graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output = next(n for n in nodes if n.op == "output")
    downstream = set(placeholders)
    for node in nodes:
        if any(arg in downstream for arg in node.all_input_nodes):
            downstream.add(node)
    upstream = {output}
    for node in reversed(nodes):
        if any(user in upstream for user in node.users):
            upstream.add(node)
    relevant = downstream & upstream
    furthest_reach = 0
    articulation = []
    for node in nodes:
        if node not in relevant:
            continue
        if position[node] >= furthest_reach:
            articulation.append(node)
        for user in node.users:
            if user in relevant:
                furthest_reach = max(furthest_reach, position[user])
    return articulation


def _first_call(graph: fx.Graph, layer: str) -> fx.Node:
    """The first call of ``layer`` in the forward pass: of the module itself, or of the first module inside a
    container (ResNet's ``layer3``, which torch.fx traces through); ``name:k`` (as the receptive-field table names
    a module's later calls) the k-th call of ``name``."""
    calls = [n for n in graph.nodes
             if n.op == "call_module" and (n.target == layer or str(n.target).startswith(f"{layer}."))]
    name, call = split_call_name(layer)
    if not calls and call >= 2:  # "c:2": the receptive-field table's 2nd call of c
        calls = [n for n in graph.nodes if n.op == "call_module" and n.target == name][call - 1:]
    if not calls:
        names = sorted({str(n.target) for n in graph.nodes if n.op == "call_module"})
        raise ConfigError(f"Cannot truncate at {layer!r}: the model calls no module of that name. Modules: "
                          f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}.")
    return calls[0]


def _ancestors(node: fx.Node) -> set[fx.Node]:
    """Every node whose output ``node``'s inputs are computed from."""
    ancestors: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        current = stack.pop()
        if current not in ancestors:
            ancestors.add(current)
            stack.extend(current.all_input_nodes)
    return ancestors


def _cut_node(graph: fx.Graph, layer: str, tuples: set[fx.Node] | frozenset = frozenset()) -> fx.Node:
    """The node to cut after so that ``layer`` and everything after it go. A container (ResNet's ``layer3``),
    which torch.fx traces through, is cut before the first of its modules the forward pass calls; ``name:k``
    (as the receptive-field table names a module's later calls) before the k-th call of ``name``. ``tuples``:
    nodes known to return no tensor (ShuffleNetV2's ``x.chunk(2, dim=1)``, on every path of its block), never a
    cut: the cut moves before them (the whole block goes)."""
    ancestors = _ancestors(_first_call(graph, layer))
    candidates = [n for n in _on_every_path(graph) if n in ancestors and n not in tuples]
    if not candidates or candidates[-1].op == "placeholder":
        raise ConfigError(f"Cannot truncate at {layer!r}: nothing before it would remain.")
    return candidates[-1]


@dataclass(frozen=True)
class CutPoint:
    """Where a cut asked for before ``layer`` is made: after ``node``, before the layer ``before``, which is
    ``layer`` itself unless the cut had to move before a layer that leads to it (``moved`` says why)."""

    node: fx.Node
    before: str
    moved: str | None


def _removed_on_the_way(graph: fx.Graph, cut: fx.Node, layer: str) -> list[fx.Node]:
    """The module calls the cut before ``layer`` removes that the forward pass makes before ``layer``'s first
    call, in forward order: those after ``cut`` that lead to ``layer`` (the conv before it in a residual block)
    and those on another path from ``cut`` (the block's other branch, a shortcut's conv named). None where the
    kept part ends right before ``layer`` (functions such as a flatten between them at most)."""
    nodes = list(graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    first = position[_first_call(graph, layer)]
    downstream = {cut}
    for node in nodes[position[cut] + 1:first]:
        if any(arg in downstream for arg in node.all_input_nodes):
            downstream.add(node)
    return [node for node in nodes[position[cut] + 1:first] if node.op == "call_module" and node in downstream]


def _layer_name(graph: fx.Graph, node: fx.Node) -> str:
    """The name ``truncate`` takes for the module call ``node``: the outermost container whose first call it is
    (ResNet's block ``layer3.0``, or ``layer3``), else its module, ``name:k`` for a later call of a module."""
    calls = [n for n in graph.nodes if n.op == "call_module"]
    target = str(node.target)
    count = [n for n in calls if n.target == node.target].index(node) + 1
    if count > 1:
        return call_name(target, count)
    parts = target.split(".")
    for end in range(1, len(parts)):
        container = ".".join(parts[:end])
        if next(n for n in calls if n.target == container or str(n.target).startswith(f"{container}.")) is node:
            return container
    return target


def _cut_point(graph: fx.Graph, layer: str, tuples: set[fx.Node] | frozenset = frozenset()) -> CutPoint:
    """``_cut_node`` and the layer the cut is before: ``layer``, or where a layer inside a residual or multipath
    block (or after a split into a tuple) moved it, with the reason."""
    cut = _cut_node(graph, layer, tuples)
    removed = _removed_on_the_way(graph, cut, layer)
    if not removed:
        return CutPoint(cut, layer, None)
    if tuples and not _removed_on_the_way(graph, _cut_node(graph, layer), layer):
        why = (f"the last tensor every path passes before {layer} is split into several (as x.chunk does), which "
               f"the new head cannot take, so the cut goes before the split and the block it feeds")
    else:
        why = (f"{layer} lies inside a block with more than one path from its input (a residual connection or "
               f"parallel branches), and a cut must lie on every path, so the whole block goes")
    return CutPoint(cut, _layer_name(graph, removed[0]), why)


def _output_shapes(traced: fx.GraphModule, in_channels: int, resolution: int,
                   tuples: set[fx.Node] | None = None) -> dict[fx.Node, tuple[int, ...]]:
    """The shape of each node's tensor output in an eval-mode forward pass of one input, up to the first node
    that fails (a tail too deep for the resolution leaves the nodes before it known); the nodes that returned a
    tuple or list are added to ``tuples`` where given."""
    shapes: dict[fx.Node, tuple[int, ...]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            result = super().run_node(node)
            if isinstance(result, torch.Tensor):
                shapes[node] = tuple(result.shape)
            elif isinstance(result, (tuple, list)) and tuples is not None:
                tuples.add(node)
            return result

    with _evaluating(traced):
        device, dtype = _placement(traced)
        try:
            Recorder(traced).run(torch.zeros(1, in_channels, resolution, resolution, device=device, dtype=dtype))
        except Exception as error:  # noqa: BLE001 - the nodes before the failure are known; the rest stay unknown
            raise_interruption_behind(error)
    return shapes


def _not_a_feature_map(shape: tuple[int, ...] | None, doubled: tuple[int, ...] | None) -> str | None:
    """Why a tensor of ``shape`` (``doubled``: its shape at twice the input resolution, None where unknown) is no
    (N, C, H, W) feature map for the GAP head, or None where it is one. Height and width are the axes whose size
    follows the input's; a channels-last map (N, H, W, C) is 4-d too, but pooling its last two axes would average
    over width and channels."""
    if shape is None or len(shape) != 4:
        return None if shape is None else f"a {len(shape)}-d tensor"
    spatial = [axis for axis, (a, b) in enumerate(zip(shape, doubled or shape)) if a != b]
    if set(spatial) <= {2, 3}:
        return None
    return (f"a 4-d tensor whose height and width are axes {' and '.join(map(str, spatial))} (channels-last, "
            f"shape {tuple(shape)} at this resolution)")


def check_cut(model: nn.Module, layer: str, *, in_channels: int, resolution: int) -> None:
    """Raise ConfigError where ``truncate_model`` could not cut before ``layer`` (no such call, nothing left
    before it) or where the part it keeps returns no feature map (a 4-d tensor) for the GAP head, naming the
    layers whose cut does return one. Works on a meta model; a model torch.fx cannot trace, or that cannot
    run, is left for ``truncate_model`` to report."""
    try:
        traced = fx.symbolic_trace(model, concrete_args=forward_defaults(model) or None)
    except Exception as error:  # noqa: BLE001 - reported with its reason when the model is truncated
        raise_interruption_behind(error)
        return
    graph = traced.graph
    _cut_node(graph, layer)  # no such module, nothing before it: said before the model runs
    tuples: set[fx.Node] = set()
    shapes = _output_shapes(traced, in_channels, resolution, tuples)
    doubled = _output_shapes(traced, in_channels, 2 * resolution)  # where height and width are
    problem = lambda node: _not_a_feature_map(shapes.get(node), doubled.get(node))  # noqa: E731
    why = problem(_cut_node(graph, layer, tuples))
    if why is None:
        return
    layers: list[str] = []
    inside = False  # a layer whose cut moves before its block is left out (the block's first layer is offered)
    for node in graph.nodes:
        if node.op != "call_module" or node.target in layers:
            continue
        try:
            point = _cut_point(graph, str(node.target), tuples)
        except ConfigError:
            continue
        if point.node in shapes and problem(point.node) is None:
            if point.moved is None:
                layers.append(str(node.target))
            inside = inside or point.moved is not None
    shown = ", ".join(layers[:12]) + (f" ... ({len(layers)} in all, the last {layers[-1]})" if len(layers) > 12 else "")
    left_out = ("; the layers inside a residual or multipath block are left out, as a cut there goes before the "
                "whole block") if inside else ""
    raise ConfigError(f"Cannot truncate at {layer!r}: the part kept before it returns {why}, not a (N, C, H, W) "
                      f"feature map for the new pooling head. Layers it can be truncated at (the kept part returns a "
                      f"feature map{left_out}): {shown or 'none'}.")


def truncate_model(model: nn.Module, layer: str, *, num_classes: int, in_channels: int,
                   input_resolution: int) -> TruncatedModel:
    """Remove ``layer`` and everything after it; the rest keeps its (possibly trained) weights."""
    try:
        traced = fx.symbolic_trace(model, concrete_args=forward_defaults(model) or None)
    except Exception as error:
        raise_interruption_behind(error)  # a Ctrl-C while it is traced is no untraceable model
        raise ConfigError(f"Cannot truncate {type(model).__name__}: torch.fx cannot trace it "
                          f"({type(error).__name__}: {error}).") from None
    graph = traced.graph
    _cut_node(graph, layer)  # no such module, nothing before it: said before the model runs
    tuples: set[fx.Node] = set()
    _output_shapes(traced, in_channels, input_resolution, tuples)
    point = _cut_point(graph, layer, tuples)
    cut = point.node
    kept = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "output":
            continue
        mapping[node] = kept.node_copy(node, lambda n: mapping[n])
        if node is cut:
            break
    kept.output(mapping[cut])
    body = fx.GraphModule(traced, kept)
    body.graph.eliminate_dead_code()
    body.delete_all_unused_submodules()
    body.recompile()
    channels = _output_channels(body, in_channels, input_resolution)
    log.debug("Truncated %s before %s (asked before %s; kept up to %s, %d channels).", type(model).__name__,
              point.before, layer, cut.name, channels)
    truncated = TruncatedModel(body, channels, num_classes, cut_before=point.before, named=layer, moved=point.moved)
    device, dtype = _placement(body)
    truncated.classifier.to(device=device, dtype=dtype)  # the new head beside the kept layers (a trained model's GPU)
    return truncated


def _placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a module's first parameter or buffer (CPU float32 without any)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for a probing forward pass; the module's own mode is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def _output_channels(body: nn.Module, in_channels: int, resolution: int) -> int:
    """The channels of the kept part's output, which must be a (N, C, H, W) feature map for the GAP head."""
    device, dtype = _placement(body)
    with _evaluating(body):
        out = body(torch.zeros(1, in_channels, resolution, resolution, device=device, dtype=dtype))
        try:  # where height and width are: the axes whose size follows the input's
            doubled = tuple(body(torch.zeros(1, in_channels, 2 * resolution, 2 * resolution, device=device,
                                             dtype=dtype)).shape)
        except Exception as error:  # noqa: BLE001 - a model of one input size only (ViT): its 4-d output as it is
            raise_interruption_behind(error)
            doubled = None
    why = _not_a_feature_map(tuple(out.shape), doubled)
    if why is not None:
        raise ConfigError(f"Cannot truncate there: the kept part returns {why}, not a (N, C, H, W) feature map.")
    return int(out.shape[1])


def resolve_cut(model: nn.Module, truncate: str, input_resolution: int) -> str | None:
    """The layer to cut before: a module name, or the border layer for ``border``/``border_max``."""
    if truncate not in BORDER_CHOICES:
        return truncate
    from phd_lab.analysis.receptive_field import border_layers, receptive_fields
    b_min, b_max = border_layers(receptive_fields(model, input_resolution), input_resolution)
    return b_min if truncate == "border" else b_max  # None: no border (the caller says so in the run's log)


def truncation_savings(model: nn.Module, layer: str, *, num_classes: int, in_channels: int, input_resolution: int,
                       full: tuple[dict, Any] | None = None) -> dict:
    """What ``truncate`` at ``layer`` saves, measured on the truncated model itself: parameters and
    FLOPs of the full model minus those of the truncated one (its new GAP + linear head included),
    and the layers it no longer has. The cut may remove more than the layers after ``layer`` (a
    whole residual block), which an estimate from the per-layer table alone would miss: ``cut_before`` names
    the layer or block the cut is really before (``TruncatedModel.cut_before``).
    ``full`` passes ``computational_info(model, ...)`` when the caller has it already.
    """
    from phd_lab.analysis.flops import FUNCTIONAL_ROW, computational_info

    shape = (in_channels, input_resolution, input_resolution)
    full_info, full_table = full if full is not None else computational_info(model, shape)
    cut = truncate_model(copy.deepcopy(model), layer, num_classes=num_classes, in_channels=in_channels,
                         input_resolution=input_resolution)
    cut_info, cut_table = computational_info(cut, shape)
    kept = {name.removeprefix("body.") for name in cut_table["layer"]
            if name.startswith("body.")}  # the new head's pool and classifier keep no layer of the model
    # and the modules torch.fx traced through (ConvNeXt's LayerNorm2d: a permute, F.layer_norm with the module's
    # weights, a permute), which the kept graph still uses but no longer calls, so the cut model's table lacks them
    kept |= {name for name, _ in cut.body.named_modules() if name}
    head = cut_table[cut_table["layer"].isin(["pool", "classifier"])]
    return {"border": layer, "exact": True, "cut_before": cut.cut_before,
            "removed_layers": [name for name in full_table["layer"] if name not in kept and name != FUNCTIONAL_ROW],
            "params_saved": float(full_info["params_total"] - cut_info["params_total"]),
            "flops_saved": float(full_info["flops"] - cut_info["flops"]),
            "head_params": float(sum(p.numel() for p in cut.classifier.parameters())),
            "head_flops": float(head["flops"].sum())}
