"""Trace a model with torch.fx and carry receptive-field states through its graph: one row per layer.

The dynamic programme visits the graph's nodes in topological order. Two states travel along every
edge: the receptive fields over all paths (``states``), and those of the previous layer (``previous``):
the output state of the last Conv2d/Linear on the way, grown by the windows after it, where a merge
ignores operands that only bypass layers. Beside them travels each tensor's layout (where height and width
are, ``rf_layout``), from shapes recorded before the walk. What an operation does to a state is
``rf_operations``' job; which operands bypass layers and which layers are side branches is ``rf_paths``'.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import fx, nn

from phd_lab.analysis.call_names import call_name
from phd_lab.analysis.rf_layout import Layout, disagreement, first_input, record_shapes
from phd_lab.analysis.rf_operations import node_arg, output_layout, transform, unsupported
from phd_lab.analysis.rf_paths import Ancestry, bypassing_operands, merge_kind, scaled_operands, shortcut_layer
from phd_lab.analysis.rf_state import Misaligned, ReceptiveFieldError, Unknown, image, merge, square
from phd_lab.interrupts import raise_interruption_behind
from phd_lab.wording import first_names


@dataclass
class LayerRow:
    """One Conv2d/Linear call of the graph: its states, and where it sits among the graph's nodes."""

    layer: str
    is_conv: bool
    in_state: Any
    out_state: Any
    prev_state: Any = None
    side_branch: bool = False  # a 1×1 projection shortcut or a layer of an attention gate
    position: int = -1  # of the layer's node in the graph
    ancestors: int = 0  # bit set (by graph position) of the nodes the layer depends on


class _LayerTracer(fx.Tracer):
    """torch.fx's tracer, with every Conv2d and Linear, subclasses included, kept as one module call:
    a layer of the table, named as the saturation tracker names it."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.Linear)) or super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """The fx graph of ``model`` (unwrapped from DataParallel), or a ReceptiveFieldError saying why not."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    try:
        tracer = _LayerTracer()
        graph = tracer.trace(model, concrete_args=forward_defaults(model) or None)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as error:  # tracing fails in many ways (TraceError, TypeError, ...)
        raise_interruption_behind(error)  # a Ctrl-C in the forward pass is no untraceable model
        raise ReceptiveFieldError(_untraceable(model, error)) from None


def _untraceable(model: nn.Module, error: Exception) -> str:
    """Why torch.fx could not trace ``model``: the names of its modules where they broke fx's generated code,
    otherwise (most often) control flow that depends on the data."""
    first = " ".join(str(error).split())[:300]
    start = f"Receptive field: the model {type(model).__qualname__} cannot be traced with torch.fx"
    unwritable = _names_fx_cannot_write(model) if isinstance(error, SyntaxError) else []
    if not unwritable:
        return (f"{start} ({type(error).__name__}: {first}). The analysis needs a model whose forward pass has no "
                f"data-dependent control flow; make it fx-traceable or leave the 'receptive_field' step out.")
    several = "s" if len(unwritable) > 1 else ""
    names = first_names([repr(name) for name in unwritable], shown=5, what="modules")
    return (f"{start} because of the name{several} of its module{several} {names}: torch.fx writes module names "
            f"into Python code as \"...\" literals, which a double quote or a line break in a name breaks "
            f"({type(error).__name__}: {first}). Rename the module (the name given to add_module or the attribute), "
            f"or leave the 'receptive_field' step out.")


def _names_fx_cannot_write(model: nn.Module) -> list[str]:
    """The names of ``model``'s modules that torch.fx's generated code cannot hold: it writes each between double
    quotes, so a name with a double quote or a line break (``add_module`` accepts them) gave a ``SyntaxError``,
    which read as if the forward pass had data-dependent control flow."""
    return [name for name, _ in model.named_modules() if any(mark in name for mark in '"\n\r')]


def forward_defaults(model: nn.Module) -> dict[str, Any]:
    """The default of every parameter of ``model.forward`` after the input: the trainer and the steps call
    ``model(x)``, so a flag such as ``return_features=False`` has that value. Traced as a value (fx's
    ``concrete_args``), an ``if`` on it is no longer taken for data-dependent control flow."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):  # a forward without a signature
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in parameters if p.kind in kinds and p.default is not inspect.Parameter.empty}


def propagate(graph_module: fx.GraphModule, input_resolution: int | None = None) -> list[LayerRow]:
    """Run the DP over the fx graph and return one row per Conv2d/Linear call, in graph order. With the
    input resolution, the tensors' shapes are recorded first (``rf_layout``): they tell where height and
    width are after a permute, transpose or view."""
    record_shapes(graph_module, input_resolution)
    walk = _GraphWalk(graph_module)
    for node in graph_module.graph.nodes:
        walk.visit(node)
    if not walk.saw_input:
        raise ReceptiveFieldError("Receptive field: the traced model has no input.")
    return walk.rows


class _GraphWalk:
    """The DP's tables while it visits the nodes: both states per node, their ancestry and the rows so far."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.graph_module = graph_module
        self.states: dict[fx.Node, Any] = {}  # receptive fields over all paths
        self.previous: dict[fx.Node, Any] = {}  # those of the previous layer(s)
        self.layouts: dict[fx.Node, Layout] = {}  # where height and width are (None: (N, C, H, W))
        self.ancestry = Ancestry()
        self.rows: list[LayerRow] = []
        self.row_of: dict[fx.Node, LayerRow] = {}
        self.calls: dict[str, int] = {}  # calls so far per module name
        self.saw_input = False

    def visit(self, node: fx.Node) -> None:
        """Both states of ``node``'s output, and its row if it is a layer (its inputs have been visited); a merge
        the states cannot describe (``rf_state.Misaligned``) is refused, naming the operation."""
        try:
            self._visit(node)
        except Misaligned as error:
            raise unsupported(node, self.graph_module, error.why) from None

    def _visit(self, node: fx.Node) -> None:
        inputs: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: inputs.append(n) or n)
        self.ancestry.add(node, inputs)
        if node.op == "placeholder":
            self.states[node] = self.previous[node] = None if self.saw_input else image()
            self.saw_input = True
            return
        if node.op in ("get_attr", "output"):
            self.states[node] = self.previous[node] = None
            return
        in_states = [self.states[n] for n in inputs if self.states[n] is not None]
        if not in_states:  # constants, shapes, parameters: no image content
            self.states[node] = self.previous[node] = None
            return
        source = next((n for n in inputs if isinstance(self.states[n], dict)), None)  # a spatial input
        layout = self.layouts.get(source)
        mixed = disagreement([(n, self.layouts.get(n)) for n in dict.fromkeys(inputs)
                              if isinstance(self.states[n], dict)])
        if mixed is not None:
            raise unsupported(node, self.graph_module, mixed)
        kind = merge_kind(node)
        skips: set[fx.Node] = set()
        if kind == "gate":
            scaled = scaled_operands(inputs, self.states, self.ancestry)
            if scaled:
                skips = self._gate(inputs, scaled)
                in_states = [self.states[n] for n in scaled]
        head = first_input(node)
        out = transform(node, self.graph_module, in_states,
                        self.states[head] if head is not None else merge(in_states), layout)
        self.states[node] = out
        self.layouts[node] = output_layout(node, self.graph_module, out, layout, source)
        module = self.graph_module.get_submodule(node.target) if node.op == "call_module" else None
        if kind == "join":
            skips = bypassing_operands(inputs, self.states, self.ancestry)
            self._mark_shortcuts(inputs, skips)
        layer = _layer_name(node, module)
        if layer is not None:
            self._add_row(node, layer, module, inputs, in_states, skips, out)
            return
        kept = [self.previous[n] for n in inputs if n not in skips and self.previous[n] is not None]
        self.previous[node] = transform(node, self.graph_module, kept, self.previous[head] if head is not None
                                        else merge(kept), layout) if kept else None

    def _gate(self, inputs: list[fx.Node], scaled: list[fx.Node]) -> set[fx.Node]:
        """Attention: the gate scales the tensor it was computed from and neither widens its receptive
        field nor is a layer of the sequence (thesis §10.1 omits these layers). Marks the gate's own
        layers as side branches and returns the gate operands, which the previous-layer state skips."""
        gates = {n for n in inputs if n not in scaled}
        main = self.ancestry.reach(scaled)
        for gate in gates:
            self._mark_side_branch(self.ancestry.reach([gate]) & ~main)
        return gates

    def _mark_shortcuts(self, inputs: list[fx.Node], skips: set[fx.Node]) -> None:
        """Mark the Conv2d a bypassing operand of a join comes from (a 1×1 projection) as a side branch."""
        for skip in skips:
            # nodes the other operands depend on: the walk must not enter the main path
            others = [other for other in inputs if other is not skip and isinstance(self.states[other], dict)]
            layer = shortcut_layer(skip, self.states, self.ancestry.reach(others), self.ancestry)
            if layer in self.row_of:
                self.row_of[layer].side_branch = True

    def _mark_side_branch(self, bits: int) -> None:
        """Flag the layer rows among the nodes of a bit set (by graph position) as side-branch layers."""
        for node in self.ancestry.nodes_in(bits):
            row = self.row_of.get(node)
            if row is not None:
                row.side_branch = True

    def _add_row(self, node: fx.Node, layer: str, module: nn.Module | None, inputs: list[fx.Node],
                 in_states: list[Any], skips: set[fx.Node], out: Any) -> None:
        """The row of a layer node; its output becomes the previous-layer state of what follows."""
        is_conv, entering = not isinstance(module, nn.Linear), merge(in_states)
        if is_conv and isinstance(entering, Unknown):
            raise unsupported(node, self.graph_module, f", which reads a feature map whose receptive field the "
                                                       f"graph does not determine: it comes from {entering.origin}")
        previous = merge(self.previous[n] for n in inputs if n not in skips)
        uneven = square(entering) or square(previous)
        if uneven is not None:
            raise unsupported(node, self.graph_module, f", which reads a feature map {uneven}")
        row = LayerRow(_call_name(layer, self.calls), is_conv, entering, out, previous,
                       position=self.ancestry.position[node], ancestors=self.ancestry.ancestors[node])
        self.row_of[node] = row
        self.rows.append(row)
        self.previous[node] = out


def _layer_name(node: fx.Node, module: nn.Module | None) -> str | None:
    """The layer a node is: a Conv2d/Linear module call (its name), an ``F.conv2d`` call with a
    parameter as weight (the name of the module holding it), or None."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return str(node.target)
    if node.op == "call_function" and node.target is F.conv2d:
        weight = node_arg(node, 1, "weight", None)  # transform has checked that it is a parameter
        owner, _, _ = str(weight.target).rpartition(".")
        return owner or str(weight.target)
    return None


def _call_name(target: str, calls: dict[str, int]) -> str:
    """The module name; a module called several times gets ``name:2``, ``name:3`` for later calls."""
    calls[target] = calls.get(target, 0) + 1
    return call_name(target, calls[target])
