"""Receptive fields against a measurement: seeded random nets, each analysed and then probed pixel by pixel.

The measured receptive field of one output position is the extent (last − first + 1) of the input rows that
change it. With positive weights, an all-ones input and only monotone operations (convolution, max/avg
pooling, ReLU), raising one input pixel raises exactly the outputs whose window covers it, so nothing can
cancel and one batched forward pass (one bumped pixel per sample) measures it. Every width is 1: a square
window with its padding keeps a single column, which makes the probe one-dimensional and cheap. Strided slices
that start at different rows and columns (YOLOv5's Focus stem) need both: there the gradient of one output
position tells the rows and the columns it reaches (``measured_2d``).
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from phd_lab.analysis.receptive_field import receptive_fields

CHANNELS = 2


def measured(model: nn.Module, height: int) -> int:
    """Extent of the input rows that change the middle output position of ``model`` (see module docstring)."""
    for parameter in model.parameters():
        with torch.no_grad():
            parameter.uniform_(0.5, 1.0)
    model.eval()
    inputs = torch.ones(height + 1, 1, height, 1, dtype=torch.float64)
    rows = torch.arange(height)
    inputs[rows + 1, 0, rows, 0] = 4.0  # sample 0 is the unbumped reference
    with torch.no_grad():
        out = model.double()(inputs)
    middle = out[:, :, out.shape[2] // 2, 0].sum(dim=1)
    changed = torch.nonzero(middle[1:] != middle[0]).flatten()
    first, last = int(changed.min()), int(changed.max())
    assert 0 < first and last < height - 1, "the probe reached the border: the input is too small"
    return last - first + 1


def random_layer(rng: random.Random) -> tuple[nn.Module, int, int, int]:
    """A random window layer of any kernel, stride, dilation and height padding (centred or not), and its
    (kernel, stride, dilation); pointwise layers have kernel 1. The width padding makes the first output
    column read the single input column (a convolution's last tap on it, a pool's window over it); a dilated
    max pool cannot reach it within the padding a pool allows, so pools are not dilated here."""
    kind = rng.choice(["conv", "conv", "max", "avg", "relu", "norm"])
    if kind in ("relu", "norm"):
        return (nn.ReLU() if kind == "relu" else nn.BatchNorm2d(CHANNELS)), 1, 1, 1
    kernel, stride, dilation = rng.randint(1, 5), rng.randint(1, 3), rng.choice([1, 1, 2, 3])
    if kind == "conv":
        padding = (rng.randint(0, dilation * (kernel - 1)), dilation * (kernel - 1))
        return nn.Conv2d(CHANNELS, CHANNELS, kernel, stride, padding, dilation=dilation), kernel, stride, dilation
    kernel = min(kernel, 3)
    padding = (rng.randint(0, kernel // 2), kernel // 2)
    if kind == "avg":
        return nn.AvgPool2d(kernel, stride, padding), kernel, stride, 1
    return nn.MaxPool2d(kernel, stride, padding), kernel, stride, 1


def formula(windows: list[tuple[int, int, int]]) -> list[int]:
    """Thesis eq. (9) after each window: r_l = r_{l-1} + (k_eff − 1)·∏ s_i, r_0 = 1."""
    r, jump, out = 1, 1, []
    for kernel, stride, dilation in windows:
        r += dilation * (kernel - 1) * jump
        jump *= stride
        out.append(r)
    return out


def random_chain(rng: random.Random) -> tuple[nn.Sequential, list[int]]:
    """A stem convolution and 1–6 random layers; the formula's receptive field after each module."""
    modules, windows = [nn.Conv2d(1, CHANNELS, 3, padding=(rng.randint(0, 2), 1))], [(3, 1, 1)]
    for _ in range(rng.randint(1, 6)):
        module, *window = random_layer(rng)
        modules.append(module)
        windows.append(tuple(window))
    return nn.Sequential(*modules), formula(windows)


@pytest.mark.parametrize("seed", range(3))
def test_every_convolution_of_a_random_chain_has_the_measured_and_the_formula_receptive_field(seed):
    rng = random.Random(seed)
    for _ in range(8):
        model, expected = random_chain(rng)
        resolution = rng.randint(1, expected[-1] + 1)
        table = receptive_fields(model, resolution)
        positions = [i for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
        assert table["layer"].tolist() == [str(i) for i in positions]
        for position, row in zip(positions, table.itertuples()):
            r = expected[position]
            assert row.r_min == row.r_max == r, (model, row)
            assert row.in_r_min == row.in_r_max == row.prev_r_min == ([1] + expected)[position], (model, row)
            assert measured(model[:position + 1], 3 * r + 8) == r, (model, position)
        # §10.2 on a chain: the first convolution whose input receptive field, and every later one's, exceeds I
        border = next((str(p) for p in positions if all(([1] + expected)[q] > resolution
                                                          for q in positions if q >= p)), None)
        assert table.loc[table["b_min"], "layer"].tolist() == table.loc[table["b_max"], "layer"].tolist() \
            == ([border] if border else []), (model, resolution)


class Block(nn.Module):
    """Parallel branches of centred windows joined by a sum, or by a concatenation and a 1×1 convolution."""

    def __init__(self, branches: list[list[tuple[str, int, int, int]]], join: str) -> None:
        super().__init__()
        self.join = join
        self.branches = nn.ModuleList(nn.Sequential(*(_centred(*op) for op in ops)) for ops in branches)
        self.mix = nn.Conv2d(CHANNELS * len(branches), CHANNELS, 1) if join == "cat" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.mix is not None:
            return self.mix(torch.cat(outs, 1))
        total = outs[0]
        for out in outs[1:]:
            total = total + out
        return total


def _centred(kind: str, kernel: int, stride: int, dilation: int) -> nn.Module:
    """A window centred on its output position (odd kernel, half padding), so that parallel paths line up."""
    padding = dilation * (kernel - 1) // 2
    if kind == "conv":
        return nn.Conv2d(CHANNELS, CHANNELS, kernel, stride, padding, dilation=dilation)
    if kind == "max":
        return nn.MaxPool2d(kernel, stride, padding, dilation=dilation)
    return nn.AvgPool2d(kernel, stride, padding)


def random_block(rng: random.Random) -> tuple[list[list[tuple[str, int, int, int]]], str]:
    """1–3 branches of 0–2 centred windows (an empty branch is an identity shortcut), all with the block's
    stride."""
    stride = rng.choice([1, 1, 2])
    branches = []
    for index in range(rng.randint(1, 3)):
        ops = [(rng.choice(["conv", "conv", "max", "avg"]), rng.choice([1, 3, 5]), 1, rng.choice([1, 1, 2]))
               for _ in range(rng.randint(0 if index else 1, 2))]
        ops = [(kind, k, 1, d if kind == "conv" else 1) for kind, k, _, d in ops]  # pools: padding ≤ k//2
        if stride > 1:
            kind, kernel, _, dilation = ops[0] if ops else ("avg", 3, 1, 1)
            ops = [(kind, kernel, stride, dilation), *ops[1:]]
        branches.append(ops)
    return branches, rng.choice(["add", "cat"])


def path_bounds(blocks: list[tuple[list[list[tuple[str, int, int, int]]], str]]) -> tuple[int, int]:
    """Brute force (thesis §4.4.1): eq. (9) along every path from the input, then the min and the max."""
    paths = [(3, 1)]  # after the stem's 3×3 convolution
    for branches, _ in blocks:
        paths = [(r + sum(d * (k - 1) * j for (_, k, _, d), j in zip(ops, _jumps(ops, jump))),
                  jump * _product(s for _, _, s, _ in ops)) for ops in branches for r, jump in paths]
    return min(r for r, _ in paths), max(r for r, _ in paths)


def _jumps(ops: list[tuple[str, int, int, int]], jump: int) -> list[int]:
    out = []
    for _, _, stride, _ in ops:
        out.append(jump)
        jump *= stride
    return out


def _product(values) -> int:
    out = 1
    for value in values:
        out *= value
    return out


@pytest.mark.parametrize("seed", range(3))
def test_random_branching_nets_r_max_is_measured_and_r_min_the_shortest_path(seed):
    rng = random.Random(100 + seed)
    for _ in range(6):
        blocks = [random_block(rng) for _ in range(rng.randint(1, 3))]
        model = nn.Sequential(nn.Conv2d(1, CHANNELS, 3, padding=1), *(Block(*block) for block in blocks),
                              nn.Conv2d(CHANNELS, CHANNELS, 1))
        r_min, r_max = path_bounds(blocks)
        last = receptive_fields(model, 32).iloc[-1]
        assert (last.r_min, last.r_max) == (r_min, r_max), blocks
        assert measured(model, 3 * r_max + 16) == r_max, blocks


def test_a_pointwise_convolution_inserted_anywhere_changes_no_other_row_and_has_its_input_receptive_field():
    rng = random.Random(7)
    for _ in range(6):
        model, _ = random_chain(rng)
        before = receptive_fields(model, 32).set_index("layer")
        at = rng.randint(1, len(model))
        modules = list(model)
        widened = nn.Sequential(*modules[:at], nn.Conv2d(CHANNELS, CHANNELS, 1), *modules[at:])
        after = receptive_fields(widened, 32)
        renamed = {str(i): str(i + (i >= at)) for i in range(len(model))}
        inserted = after[after["layer"] == str(at)].iloc[0]
        assert inserted.r_min == inserted.in_r_min and inserted.r_max == inserted.in_r_max
        kept = after[after["layer"] != str(at)].set_index("layer")
        for layer, row in before.iterrows():
            other = kept.loc[renamed[layer]]
            assert (other.r_min, other.r_max, other.jump) == (row.r_min, row.r_max, row.jump)


@pytest.mark.parametrize("depth", [1, 2, 5, 9])
def test_k_stacked_3x3_convolutions_see_1_plus_2k_pixels_and_border_at_the_first_exceeding_input(depth):
    model = nn.Sequential(nn.Conv2d(1, CHANNELS, 3, padding=1),
                          *(nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1) for _ in range(depth - 1)))
    for resolution in range(1, 2 * depth + 3):
        table = receptive_fields(model, resolution)
        assert table["r_max"].tolist() == [1 + 2 * k for k in range(1, depth + 1)]
        # brute force §10.2: the first conv whose input receptive field (1 + 2(l−1)) and every later one's > I
        expected = next((str(l - 1) for l in range(1, depth + 1) if 1 + 2 * (l - 1) > resolution), None)
        assert table.loc[table["b_max"], "layer"].tolist() == ([expected] if expected else [])
        assert table.loc[table["b_min"], "layer"].tolist() == ([expected] if expected else [])


# Strided slices that start at different rows and columns, joined (YOLOv5's Focus stem): the union of their windows.

def measured_2d(model: nn.Module, channels: int, size: int) -> tuple[int, int]:
    """(rows, columns): the extent of the input pixels the gradient of the middle output position (all channels
    summed) reaches. Positive weights, an all-ones input and monotone ops (convolution, average pooling, ReLU,
    batch norm with positive scales) leave nothing to cancel, so the gradient is nonzero on every pixel some path
    from that position reads."""
    for parameter in model.parameters():
        with torch.no_grad():
            parameter.uniform_(0.5, 1.0)
    model = model.double().eval()
    image = torch.ones(1, channels, size, size, dtype=torch.float64, requires_grad=True)
    out = model(image)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    reached = torch.nonzero(image.grad[0].abs().sum(0))
    extents = []
    for axis in (0, 1):
        first, last = int(reached[:, axis].min()), int(reached[:, axis].max())
        assert 0 < first and last < size - 1, "the probe reached the border: the input is too small"
        extents.append(last - first + 1)
    return extents[0], extents[1]


class Focus(nn.Module):
    """YOLOv5's Focus stem: the four pixels of every 2×2 block side by side as channels, then convolutions."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4 * in_channels, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        x = self.conv2(torch.relu(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def test_focus_stem_sees_the_whole_2x2_block_as_the_gradient_does():
    """The four slices read the four pixels of a 2×2 block: together a 2×2 window of stride 2, so conv sees
    2 + 2·2 = 6 and conv2 6 + 2·2 = 10 pixels, as the gradient says. Each slice was a 1×1 window of stride 2
    and the concatenation took the largest: 5 and 9."""
    model = Focus()
    table = receptive_fields(model, 32).set_index("layer")
    assert tuple(table.loc["conv", ["in_r_min", "in_r_max", "r_min", "r_max", "jump", "prev_r_min"]]) \
        == (2, 2, 6, 6, 2, 2)
    assert tuple(table.loc["conv2", ["in_r_min", "in_r_max", "r_min", "r_max", "jump"]]) == (6, 6, 10, 10, 2)
    assert measured_2d(nn.Sequential(FocusSlices(), model.conv), 3, 32) == (6, 6)
    assert measured_2d(nn.Sequential(FocusSlices(), model.conv, nn.ReLU(), model.conv2), 3, 32) == (10, 10)


class FocusSlices(nn.Module):
    """The slicing and concatenation of a Focus model alone."""

    def forward(self, x):
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class Offsets(nn.Module):
    """Strided slices of one map, each starting at its own (row, column), cut to ``size`` positions and joined by
    a concatenation or a sum."""

    def __init__(self, starts: list[tuple[int, int]], step: int, size: int, join: str) -> None:
        super().__init__()
        self.starts, self.step, self.size, self.join = starts, step, size, join

    def forward(self, x):
        end = self.step * self.size
        parts = [x[:, :, a:a + end:self.step, b:b + end:self.step] for a, b in self.starts]
        if self.join == "cat":
            return torch.cat(parts, 1)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total


def random_offsets(rng: random.Random) -> tuple[list[tuple[int, int]], int, int]:
    """Starts of strided slices whose rows and columns span the same distance (0 to 2·step − 1): the two corners
    of the box they span and 0–3 other starts inside it; (starts, step, span)."""
    step = rng.choice([2, 2, 3])
    span = rng.randint(0, 2 * step - 1)
    top, left = rng.randint(0, 2), rng.randint(0, 2)
    corners = [(top, left), (top + span, left + span)] if rng.random() < 0.5 else \
        [(top + span, left), (top, left + span)]
    inside = [(top + rng.randint(0, span), left + rng.randint(0, span)) for _ in range(rng.randint(0, 3))]
    starts = corners + inside
    rng.shuffle(starts)
    return starts, step, span


def _monotone_layer(rng: random.Random) -> tuple[nn.Module, int, int, int]:
    """A random convolution (any padding), average pool, ReLU or batch norm and its (kernel, stride, dilation)."""
    kind = rng.choice(["conv", "conv", "avg", "relu", "norm"])
    if kind in ("relu", "norm"):
        return (nn.ReLU() if kind == "relu" else nn.BatchNorm2d(CHANNELS)), 1, 1, 1
    kernel, stride = rng.randint(1, 4), rng.randint(1, 2)
    if kind == "avg":
        return nn.AvgPool2d(kernel, stride, rng.randint(0, kernel // 2)), kernel, stride, 1
    dilation = rng.choice([1, 1, 2])
    padding = rng.randint(0, dilation * (kernel - 1))
    return nn.Conv2d(CHANNELS, CHANNELS, kernel, stride, padding, dilation=dilation), kernel, stride, dilation


@pytest.mark.parametrize("seed", range(3))
def test_offset_strided_slices_joined_by_cat_or_sum_have_the_measured_receptive_field(seed):
    """Random layers, strided slices of their output that start at different rows and columns (the corners of
    a square box of side span + 1), joined by a concatenation or a sum, and random layers after them: every
    convolution's r_min and r_max are eq. (9) with the slices as one window of span + 1 and the slices' step,
    and the extent the gradient reaches, along height and width alike."""
    rng = random.Random(300 + seed)
    for _ in range(4):
        before = [_monotone_layer(rng) for _ in range(rng.randint(0, 2))]
        starts, step, span = random_offsets(rng)
        after = [_monotone_layer(rng) for _ in range(rng.randint(0, 2))]
        join = rng.choice(["cat", "sum"])
        windows = [tuple(w) for _, *w in before] + [(span + 1, step, 1), (3, 1, 1)] + [tuple(w) for _, *w in after]
        expected = formula(windows)
        jump = _product(s for _, s, _ in windows)
        size = 3 * expected[-1] + 4 * jump + 8
        # the slices' map is size / (strides before) - a bit; cut every slice to what the last start leaves
        inner = size // _product(s for _, s, _ in windows[:len(before)]) - 2 * sum(k for k, _, _ in windows)
        parts = len(starts) if join == "cat" else 1
        model = nn.Sequential(nn.Conv2d(1, CHANNELS, 1), *(m for m, *_ in before),
                              Offsets(starts, step, (inner - max(max(s) for s in starts)) // step, join),
                              nn.Conv2d(CHANNELS * parts, CHANNELS, 3, padding=1), *(m for m, *_ in after))
        table = receptive_fields(model, size).set_index("layer")
        convs = [i for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
        for position in convs:
            r = ([1] + expected)[position]  # model[0] is a 1×1 conv: model[p] ends window p − 1
            row = table.loc[str(position)]
            assert row.r_min == row.r_max == r, (model, starts, position)
            assert measured_2d(model[:position + 1], 1, size) == (r, r), (model, starts, position)


class Sliced(nn.Module):
    """A 3×3 convolution, ``join`` of strided slices of its output, and a 3×3 convolution ``b`` after them."""

    def __init__(self, join, parts: int) -> None:
        super().__init__()
        self.join = join
        self.a = nn.Conv2d(1, CHANNELS, 3, padding=1)
        self.b = nn.Conv2d(CHANNELS * parts, CHANNELS, 3, padding=1)

    def forward(self, x):
        return self.b(self.join(self.a(x)))


def _s(x, row, column, step=2):
    return x[..., row::step, column::step]


JOINS = {  # (join, parts, b's r: a's 3 grown by the union of the slices, then 2 · the jump), at 36 px
    # the Focus stem written as a sum, which adds two slices at a time: 2 × 1 windows, then 2 × 2
    "pairwise_sum": (lambda y: _s(y, 0, 0) + _s(y, 1, 0) + _s(y, 0, 1) + _s(y, 1, 1), 1, 4 + 2 * 2),
    "nested_cat": (lambda y: torch.cat([torch.cat([_s(y, 0, 0), _s(y, 1, 0)], 1),
                                        torch.cat([_s(y, 0, 1), _s(y, 1, 1)], 1)], 1), 4, 4 + 2 * 2),
    "diagonal_sum_after_relu": (lambda y: torch.relu(_s(y, 0, 0)) + torch.relu(_s(y, 1, 1)), 1, 4 + 2 * 2),
    "step_3": (lambda y: sum(_s(y, a, b, 3) for a in range(3) for b in range(3)), 1, 5 + 2 * 3),
    # one union of slices beside another slice of the same map inside it: 2 × 2 either way
    "slice_inside_a_union": (lambda y: torch.cat([_s(y, 0, 0) + _s(y, 1, 1), _s(y, 1, 1)], 1), 2, 4 + 2 * 2),
    # a slice of the map and one of its transpose, transposed back: rows 1 apart, then columns 1 apart
    "across_a_transpose": (lambda y: torch.cat([_s(y, 1, 0), _s(y.transpose(2, 3), 1, 0).transpose(2, 3)], 1),
                           2, 4 + 2 * 2),
    "start_from_the_end": (lambda y: torch.cat([_s(y, 0, 0), _s(y, -35, -35)], 1), 2, 4 + 2 * 2),  # 36 px: row 1
}


@pytest.mark.parametrize("case", JOINS)
def test_strided_slices_joined_pairwise_nested_or_across_a_transpose_have_the_measured_receptive_field(case):
    join, parts, r = JOINS[case]
    model = Sliced(join, parts)
    table = receptive_fields(model, 36).set_index("layer")
    assert (table.loc["a", "r_max"], table.loc["b", "r_min"], table.loc["b", "r_max"]) == (3, r, r)
    assert table.loc["b", "in_r_min"] == table.loc["b", "prev_r_min"] == r - 2 * table.loc["b", "jump"]
    assert not table["side_branch"].any()
    assert measured_2d(model, 1, 36) == (r, r)
