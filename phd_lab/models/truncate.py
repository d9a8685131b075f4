"""Truncation (thesis §9.5.2, §11.4): cut a model before a layer and attach a GAP + linear head.

``truncate_model(model, "features.20", ...)`` removes the named layer and everything after it,
as the thesis removes "all layers of the tail (including the border layer)". The cut is made
on the torch.fx graph at the last tensor before that layer through which every path from
the input passes, so a residual or multipath block is never cut in half: cutting at a conv
inside a block removes the whole block. Weights of the kept layers are shared with the
original model, so a trained model can be truncated too. A container module (ResNet's
``layer3``) is cut before the first of its layers. ``"border"`` cuts at the border layer b_min
of the run's resolution (the first Conv2d from which on every Conv2d of the main sequence has a
previous layer whose smallest receptive field exceeds the resolution, thesis §10.2:
``prev_r_min`` in receptive_field.py), ``"border_max"`` at b_max.
"""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any

import torch
from torch import fx, nn

from phd_lab.analysis.call_names import split_call_name
from phd_lab.errors import ConfigError

log = logging.getLogger(__name__)

BORDER_CHOICES = ("border", "border_max")


class TruncatedModel(nn.Module):
    """The kept part of a model, global average pooling and a new linear classifier."""

    def __init__(self, body: fx.GraphModule, channels: int, num_classes: int, cut_before: str) -> None:
        super().__init__()
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.cut_before = cut_before

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


def _cut_node(graph: fx.Graph, layer: str, tuples: set[fx.Node] | frozenset = frozenset()) -> fx.Node:
    """The node to cut after so that ``layer`` and everything after it go. A container (ResNet's ``layer3``),
    which torch.fx traces through, is cut before the first of its modules the forward pass calls; ``name:k``
    (as the receptive-field table names a module's later calls) before the k-th call of ``name``. ``tuples``:
    nodes known to return no tensor (ShuffleNetV2's ``x.chunk(2, dim=1)``, on every path of its block), never a
    cut: the cut moves before them (the whole block goes)."""
    calls = [n for n in graph.nodes
             if n.op == "call_module" and (n.target == layer or str(n.target).startswith(f"{layer}."))]
    name, call = split_call_name(layer)
    if not calls and call >= 2:  # "c:2": the receptive-field table's 2nd call of c
        calls = [n for n in graph.nodes if n.op == "call_module" and n.target == name][call - 1:]
    if not calls:
        names = sorted({str(n.target) for n in graph.nodes if n.op == "call_module"})
        raise ConfigError(f"Cannot truncate at {layer!r}: the model calls no module of that name. Modules: "
                          f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}.")
    first = calls[0]
    ancestors: set[fx.Node] = set()
    stack = list(first.all_input_nodes)
    while stack:
        node = stack.pop()
        if node not in ancestors:
            ancestors.add(node)
            stack.extend(node.all_input_nodes)
    candidates = [n for n in _on_every_path(graph) if n in ancestors and n not in tuples]
    if not candidates or candidates[-1].op == "placeholder":
        raise ConfigError(f"Cannot truncate at {layer!r}: nothing before it would remain.")
    return candidates[-1]


def _output_dims(traced: fx.GraphModule, in_channels: int, resolution: int,
                 tuples: set[fx.Node] | None = None) -> dict[fx.Node, int]:
    """The number of dimensions of each node's tensor output in an eval-mode forward pass of one input, up to
    the first node that fails (a tail too deep for the resolution leaves the nodes before it known); the nodes
    that returned a tuple or list are added to ``tuples`` where given."""
    dims: dict[fx.Node, int] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            result = super().run_node(node)
            if isinstance(result, torch.Tensor):
                dims[node] = result.dim()
            elif isinstance(result, (tuple, list)) and tuples is not None:
                tuples.add(node)
            return result

    was_training = traced.training
    traced.eval()
    device, dtype = _placement(traced)
    try:
        with torch.no_grad():
            Recorder(traced).run(torch.zeros(1, in_channels, resolution, resolution, device=device, dtype=dtype))
    except Exception:  # noqa: BLE001 - the nodes before the failure are known; the rest stay unknown
        pass
    finally:
        traced.train(was_training)
    return dims


def check_cut(model: nn.Module, layer: str, *, in_channels: int, resolution: int) -> None:
    """Raise ConfigError where ``truncate_model`` could not cut before ``layer`` (no such call, nothing left
    before it) or where the part it keeps returns no feature map (a 4-d tensor) for the GAP head, naming the
    layers whose cut does return one. Works on a meta model; a model torch.fx cannot trace, or that cannot
    run, is left for ``truncate_model`` to report."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - reported with its reason when the model is truncated
        return
    graph = traced.graph
    _cut_node(graph, layer)  # no such module, nothing before it: said before the model runs
    tuples: set[fx.Node] = set()
    dims = _output_dims(traced, in_channels, resolution, tuples)
    cut = _cut_node(graph, layer, tuples)
    dim = dims.get(cut)
    if dim is None or dim == 4:
        return
    layers: list[str] = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target in layers:
            continue
        try:
            cut = _cut_node(graph, str(node.target), tuples)
        except ConfigError:
            continue
        if dims.get(cut) == 4:
            layers.append(str(node.target))
    shown = ", ".join(layers[:12]) + (f" ... ({len(layers)} in all, the last {layers[-1]})" if len(layers) > 12 else "")
    raise ConfigError(f"Cannot truncate at {layer!r}: the part kept before it returns a {dim}-d tensor, not a feature "
                      f"map for the new pooling head. Layers it can be truncated at (the kept part returns a "
                      f"feature map): {shown or 'none'}.")


def truncate_model(model: nn.Module, layer: str, *, num_classes: int, in_channels: int,
                   input_resolution: int) -> TruncatedModel:
    """Remove ``layer`` and everything after it; the rest keeps its (possibly trained) weights."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:
        raise ConfigError(f"Cannot truncate {type(model).__name__}: torch.fx cannot trace it "
                          f"({type(error).__name__}: {error}).") from None
    graph = traced.graph
    _cut_node(graph, layer)  # no such module, nothing before it: said before the model runs
    tuples: set[fx.Node] = set()
    _output_dims(traced, in_channels, input_resolution, tuples)
    cut = _cut_node(graph, layer, tuples)
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
    log.info("Truncated %s before %s (kept up to %s, %d channels).", type(model).__name__, layer, cut.name, channels)
    truncated = TruncatedModel(body, channels, num_classes, cut_before=layer)
    device, dtype = _placement(body)
    truncated.classifier.to(device=device, dtype=dtype)  # the new head beside the kept layers (a trained model's GPU)
    return truncated


def _placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a module's first parameter or buffer (CPU float32 without any)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _output_channels(body: nn.Module, in_channels: int, resolution: int) -> int:
    was_training = body.training
    body.eval()
    device, dtype = _placement(body)
    with torch.no_grad():
        out = body(torch.zeros(1, in_channels, resolution, resolution, device=device, dtype=dtype))
    body.train(was_training)
    if out.dim() != 4:
        raise ConfigError(f"Cannot truncate there: the kept part returns a {out.dim()}-d tensor, not a feature map.")
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
    whole residual block), which an estimate from the per-layer table alone would miss.
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
    return {"border": layer, "exact": True,
            "removed_layers": [name for name in full_table["layer"] if name not in kept and name != FUNCTIONAL_ROW],
            "params_saved": float(full_info["params_total"] - cut_info["params_total"]),
            "flops_saved": float(full_info["flops"] - cut_info["flops"]),
            "head_params": float(sum(p.numel() for p in cut.classifier.parameters())),
            "head_flops": float(head["flops"].sum())}
