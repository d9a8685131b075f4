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
along height or width is refused. A strided slice ``x[..., a::s, b::s]`` is a 1×1 window of stride s that
starts a rows and b columns further on: merged (by a sum, a concatenation, ...) with slices that start elsewhere,
as in YOLOv5's Focus stem, the windows are joined like the taps of one window (four slices of step 2: a 2×2
window of stride 2); such a merge of windows of different sizes from different layers, where the padding would
decide how they overlap, or one whose windows end up taller than wide, is refused (``rf_state``). A product
whose factor was computed from the other factor (an attention gate: SE, spatial attention, CBAM) keeps the
receptive field of the gated tensor only,
and the gate's layers are marked as a side branch (thesis §10.1 leaves them out); global
pooling (also written out with the map's size, ``F.avg_pool2d(x, x.size(3))``), spatial reductions,
a view/reshape to vectors and Linear make a tensor *global*, and any function or method of
global tensors only (``.squeeze(-1)`` of a pooled gate) keeps it global.
A global tensor (e.g. a squeeze-and-excitation gate) that meets spatial tensors is broadcast
and does not widen their receptive field; global layers report ``inf``. A view/reshape to a
feature map, adaptive pooling to more than one position and a flatten that merges height or width with
another axis make it *unknown*: the graph alone does not say how they move pixels, so a convolution that
reads such a tensor raises ``ReceptiveFieldError``, while a head that only flattens it (torchvision's VGG)
is fine: a Linear reading it is global, and an op the rules do not cover keeps it unknown. Any
other operation applied to an image-derived tensor raises ``ReceptiveFieldError`` naming it.

A merge operand that only bypasses layers (an identity shortcut, a 1×1 projection, also behind a
tiling pool as in ResNet-D) is no previous layer of what follows and its 1×1 conv a side branch.

Height and width need not stay axes 2 and 3 (``rf_layout``): the shapes of one run of the graph on
a meta-device input at the analysed resolution say where they are after a ``permute``/``transpose`` (which
pass the receptive field through) and whether a ``view``/``reshape`` keeps them whole (ShuffleNetV2's
channel shuffle: it does; then it passes through too). Reductions, softmax, concatenation, strided slicing,
flatten and Linear test the real height/width axes. A Linear whose last axis is a channel axis of a
feature map (ConvNeXt's channels-last blocks) is pointwise, like a 1×1 convolution: its row has its
input's receptive field, no ``index`` (Conv2d rows only) and no part in the border rule, which reads
Conv2d rows; a Linear on a spatial axis stays global. A window (convolution, pooling) on a tensor whose
height and width are not its last two axes is refused, naming it.

Layers are the calls of Conv2d and Linear modules, subclasses included (traced as one call,
as the saturation tracker hooks them), and ``F.conv2d`` calls with a parameter as weight,
named after the module that holds the weight.

Where the parts live: ``rf_state`` (a tensor's state and merge/window/bounds), ``rf_operations`` (the rules
per operation above), ``rf_layout`` (where height and width are), ``rf_paths`` (shortcuts, attention gates
and onward minima), ``rf_propagation`` (tracing and the dynamic programme); this module turns the layer rows
into the table.
"""

from __future__ import annotations

import pandas as pd
from torch import nn

from phd_lab.analysis.borders import borders_of
from phd_lab.analysis.rf_paths import onward_minima
from phd_lab.analysis.rf_propagation import propagate, trace
from phd_lab.analysis.rf_state import GLOBAL, INF, ReceptiveFieldError, Spatial, bounds, merge, window

__all__ = ["COLUMNS", "GLOBAL", "INF", "ReceptiveFieldError", "Spatial", "border_layers", "bounds", "merge",
           "receptive_fields", "window"]

COLUMNS = ["index", "layer", "r_min", "r_max", "jump", "in_r_min", "in_r_max", "prev_r_min", "side_branch",
           "onward_prev_r_min", "onward_in_r_max", "b_min", "b_max"]
_NUMBERS = ["r_min", "r_max", "jump", "in_r_min", "in_r_max", "prev_r_min"]


def receptive_fields(model: nn.Module, input_resolution: int) -> pd.DataFrame:
    """One row per Conv2d/Linear module call in forward order (see module docstring).

    Columns: ``index`` (1-based among Conv2d rows, empty for Linear, pointwise ones included), ``layer``
    (qualified module name), ``r_min``, ``r_max``, ``jump`` (of the layer's output), ``in_r_min``, ``in_r_max`` (of the
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
    rows = propagate(trace(model), input_resolution)
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
    frame["onward_prev_r_min"] = onward_minima(rows, frame["prev_r_min"].tolist())
    frame["onward_in_r_max"] = onward_minima(rows, frame["in_r_max"].tolist())
    b_min, b_max = border_layers(frame, input_resolution)
    frame["b_min"] = frame["layer"] == b_min
    frame["b_max"] = frame["layer"] == b_max
    return frame


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
