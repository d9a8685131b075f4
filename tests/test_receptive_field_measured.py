"""Receptive fields against a measurement: seeded random nets, each analysed and then probed pixel by pixel.

The measured receptive field of one output position is the extent (last − first + 1) of the input rows that
change it. With positive weights, an all-ones input and only monotone operations (convolution, max/avg
pooling, ReLU), raising one input pixel raises exactly the outputs whose window covers it, so nothing can
cancel and one batched forward pass (one bumped pixel per sample) measures it. Every width is 1: a square
window with its padding keeps a single column, which makes the probe one-dimensional and cheap.
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
