"""Which layers lie beside the sequence the border rule walks: shortcuts, attention gates, onward minima.

A merge operand that only bypasses layers (an identity shortcut, a 1×1 projection, also behind a tiling
pool as in ResNet-D) is no previous layer of what follows, and its 1×1 conv is a side branch; the layers
that compute an attention gate are side branches too (thesis §10.1 leaves them out). The onward minima
carry, per layer, what every Conv2d downstream of it on any path shows, which a saved table cannot.
All of it reads ``Ancestry``: which graph nodes each node depends on, as bit sets by graph position.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import fx, nn

from phd_lab.analysis.rf_operations import POOL_FUNCTIONS, WINDOW_MODULES, node_arg
from phd_lab.analysis.rf_state import aligned, bounds

if TYPE_CHECKING:
    from phd_lab.analysis.rf_propagation import LayerRow

# Merges for the previous-layer state: a join (sum, concatenation) ignores operands that only bypass
# layers; a gate (product, quotient: attention) follows the tensor it scales, never the gate itself.
_JOIN_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub, torch.cat,
                   torch.concat}
_JOIN_METHODS = {"add", "add_", "sub", "sub_"}
_GATE_FUNCTIONS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
_GATE_METHODS = {"mul", "mul_", "div", "div_"}


class Ancestry:
    """Graph positions and, per node, the bit set (by position) of the nodes it depends on: filled node by
    node in topological order, so that "does b depend on a" is one shift, and a union of paths one ``|``."""

    def __init__(self) -> None:
        self.position: dict[fx.Node, int] = {}
        self.ancestors: dict[fx.Node, int] = {}
        self.nodes: list[fx.Node] = []  # by position

    def add(self, node: fx.Node, inputs: Iterable[fx.Node]) -> None:
        """Give ``node`` the next position; it depends on its ``inputs`` and on all they depend on."""
        self.position[node] = len(self.nodes)
        self.nodes.append(node)
        self.ancestors[node] = self.reach(inputs)

    def reach(self, nodes: Iterable[fx.Node]) -> int:
        """Bit set (by graph position) of ``nodes`` and of every node they depend on."""
        bits = 0
        for node in nodes:
            bits |= self.ancestors[node] | (1 << self.position[node])
        return bits

    def nodes_in(self, bits: int) -> list[fx.Node]:
        """The nodes of a bit set, in graph order."""
        nodes = []
        while bits:
            bit = bits & -bits
            bits ^= bit
            nodes.append(self.nodes[bit.bit_length() - 1])
        return nodes


def merge_kind(node: fx.Node) -> str | None:
    """"join" for sums and concatenations, "gate" for products and quotients, else None."""
    if node.op == "call_function":
        return "join" if node.target in _JOIN_FUNCTIONS else "gate" if node.target in _GATE_FUNCTIONS else None
    if node.op == "call_method":
        return "join" if node.target in _JOIN_METHODS else "gate" if node.target in _GATE_METHODS else None
    return None


def scaled_operands(inputs: list[fx.Node], states: dict[fx.Node, Any], ancestry: Ancestry) -> list[fx.Node]:
    """The operands of a product that another operand was computed from: the tensor an attention
    gate scales (empty for a plain product)."""
    return [n for n in inputs if states[n] is not None
            and any(ancestry.ancestors[m] >> ancestry.position[n] & 1 for m in inputs if m is not n)]


def bypassing_operands(inputs: list[fx.Node], states: dict[fx.Node, Any], ancestry: Ancestry) -> set[fx.Node]:
    """The operands of a merge that only bypass layers: an identity or 1×1 shortcut, or the input
    a dense block concatenates. Operand ``a`` is one when another operand ``b`` depends on a node
    from which ``a`` was reached without any growth of the receptive field, while ``b`` grew."""
    spatial = [n for n in dict.fromkeys(inputs) if isinstance(states[n], dict)]
    if len(spatial) < 2 or not aligned(states[n] for n in spatial):
        return set()  # windows at different places (strided slices, a Focus stem) are taps of one window
    span = {n: bounds(states[n])[:2] for n in spatial}
    skips = set()
    for a in spatial:
        origins = _same_span_origins(a, states, ancestry)  # bit set: a and its ancestors of equal receptive field
        if any(b is not a and span[b] != span[a] and origins & ancestry.reach([b]) for b in spatial):
            skips.add(a)
    return set() if len(skips) == len(spatial) else skips


def shortcut_layer(skip: fx.Node, states: dict[fx.Node, Any], shared: int, ancestry: Ancestry) -> fx.Node | None:
    """The Conv2d call a skip operand comes from through ops that leave the receptive field as it is
    (the 1×1 convolution and batch norm of a projection shortcut) or only downsample (the tiling pool of
    a ResNet-D shortcut, ``_downsampling_pool``), or None (an identity shortcut).
    The walk stops at nodes the other operands depend on (``shared``, bits by position): those belong
    to the main path, e.g. the 1×1 projection that ends the previous block of a MobileNet."""
    node: fx.Node = skip
    while True:
        if shared >> ancestry.position[node] & 1:
            return None
        spatial = [n for n in node.all_input_nodes if isinstance(states.get(n), dict)]
        if len(spatial) != 1:
            return None  # a merge
        if bounds(states[spatial[0]])[:2] != bounds(states[node])[:2] and not _downsampling_pool(node):
            return None  # growth: a layer of the main path (e.g. a dense layer's 3×3 conv)
        if node.op == "call_module" and isinstance(node.graph.owning_module.get_submodule(node.target), nn.Conv2d):
            return node
        node = spatial[0]


def _same_span_origins(node: fx.Node, states: dict[fx.Node, Any], ancestry: Ancestry) -> int:
    """Bit set (by graph position) of ``node`` and of the ancestors reached from it through nodes of
    the same (r_min, r_max) — since receptive fields only grow along a path, no layer lies between
    them — or across a pooling that only downsamples (``_downsampling_pool``: the AvgPool2d(2) of a
    ResNet-D shortcut, which acts like the stride of a 1×1 projection)."""
    found, stack, seen = 0, [node], {node}
    while stack:
        current = stack.pop()
        found |= 1 << ancestry.position[current]
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
        if not isinstance(module, WINDOW_MODULES):
            return False
        kernel, stride = module.kernel_size, module.stride
    elif node.op == "call_function" and node.target in POOL_FUNCTIONS:
        kernel, stride = node_arg(node, 1, "kernel_size", None), node_arg(node, 2, "stride", None)
    else:
        return False
    stride = kernel if stride is None or stride == [] or stride == () else stride
    return _pair(kernel) == _pair(stride)


def _pair(value: Any) -> tuple:
    """A size along (height, width): ``2`` and ``(2, 2)`` alike."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def onward_minima(rows: list[LayerRow], values: list[float]) -> list[float]:
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
