"""Receptive-field rules beyond plain chains: the border on parallel paths (thesis §10.2), ResNet-D
shortcuts, global pooling written with the map size, ops on global tensors, element-wise max/min and
concatenation along height/width."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from phd_lab.analysis.borders import borders_of
from phd_lab.analysis.receptive_field import ReceptiveFieldError, border_layers, receptive_fields
from phd_lab.models.mpnet import MPNet

ONWARD = ["onward_prev_r_min", "onward_in_r_max"]


def conv(k: int, s: int = 1, c: int = 2) -> nn.Conv2d:
    return nn.Conv2d(c, c, k, stride=s, padding=(k - 1) // 2)


# ---------------------------------------------------------------------------- border on parallel paths
class TwoBranch(nn.Module):
    """stem 3×3, then a short branch (one 3×3) and a long one (two 7×7) joined by addition, then a 3×3 head;
    ``short_first`` only decides which branch forward() runs first."""

    def __init__(self, short_first: bool) -> None:
        super().__init__()
        self.stem, self.a1, self.b1, self.b2, self.head = conv(3), conv(3), conv(7), conv(7), conv(3)
        self.short_first = short_first

    def forward(self, x):
        x = self.stem(x)
        if self.short_first:
            short = self.a1(x)
            return self.head(short + self.b2(self.b1(x)))
        long = self.b2(self.b1(x))
        return self.head(self.a1(x) + long)


@pytest.mark.parametrize("short_first", [True, False])
def test_two_branch_border_computed_by_hand(short_first):
    """prev_r_min: stem 1, a1 3, b1 3, b2 9 (b1's r), head 5 (a1's r 5 < b2's 15); in_r_max: 1, 3, 3, 9, 15.
    b2 qualifies at I = 4 (9 and the head's 5 exceed it), a1 does not (3): b_min = b2 whichever branch
    runs first; the old backward scan stopped at a1 when it ran after b2 and gave the head."""
    table = receptive_fields(TwoBranch(short_first), 4)
    assert border_layers(table, 4) == ("b2", "b2")
    assert border_layers(table, 5) == (None, "b2")  # the head's prev_r_min 5 is not > 5
    assert border_layers(table, 8) == (None, "b2")  # in_r_max: b2 9 and head 15 exceed 8, a1's 3 does not matter
    assert border_layers(table, 9) == (None, "head")
    df = table.set_index("layer").loc[["stem", "a1", "b1", "b2", "head"]]
    assert df.prev_r_min.tolist() == [1, 3, 3, 9, 5] and df.in_r_max.tolist() == [1, 3, 3, 9, 15]
    assert df.onward_prev_r_min.tolist() == [1, 3, 3, 5, 5]  # the minimum over the layer and its descendants
    assert df.onward_in_r_max.tolist() == [1, 3, 3, 9, 15]


def block_of(layer: str | None) -> tuple[str, str] | None:
    """(stage, block) of an MPNet layer name such as ``stage2.1.paths.0.3``."""
    return None if layer is None else tuple(layer.split(".")[:2])


@pytest.mark.parametrize("blocks, paths", [(2, ((2, 3), (2, 7))), (4, ((1, 3), (2, 7)))])
def test_mpnet_border_does_not_depend_on_the_order_of_its_paths(blocks, paths):
    """Thesis §10.2: the sequence from b_min to the output is a path; a conv on a parallel path that merely
    runs later in forward() must not disqualify a layer (the old rule moved b_max to another stage)."""
    found = 0
    for resolution in (16, 32, 64, 100):
        borders = [border_layers(receptive_fields(MPNet(blocks, order, num_classes=10, width=0.125), resolution),
                                 resolution) for order in (paths, paths[::-1])]
        assert [block_of(b) for b in borders[0]] == [block_of(b) for b in borders[1]], (resolution, borders)
        found += sum(b is not None for b in borders[0])
    assert found >= 6  # the check is not vacuous


def test_borders_from_a_saved_table_use_the_onward_columns_and_fall_back_without_them(tmp_path):
    """The report reads receptive_field.csv without the graph: the onward minima carry the paths. A table
    written before those columns existed keeps the backward scan it was written with."""
    table = receptive_fields(TwoBranch(short_first=False), 8)
    table.to_csv(tmp_path / "rf.csv", index=False)
    saved = pd.read_csv(tmp_path / "rf.csv")
    convs = saved[saved["index"].notna()]
    assert borders_of(convs, 4) == ("b2", "b2") and borders_of(convs, 8) == (None, "b2")
    old = convs.drop(columns=ONWARD)  # order stem, b1, b2, a1, head: a1 (3) stops the backward scan
    assert borders_of(old, 4) == ("head", "head") and borders_of(old, 8) == (None, "head")


def hand_frame(values: list[float], onward: list[float] | None) -> pd.DataFrame:
    rows = [{"index": i + 1, "layer": f"c{i + 1}", "prev_r_min": v, "in_r_max": v, "side_branch": False}
            for i, v in enumerate(values)]
    if onward is not None:
        for row, rest in zip(rows, onward):
            row["onward_prev_r_min"] = row["onward_in_r_max"] = rest
    return pd.DataFrame(rows)


def test_borders_of_a_hand_made_table_with_and_without_onward_minima():
    """c2 and c3 on parallel paths into c4: c3 (3) is no descendant of c2, so c2 qualifies at I = 4 by
    its onward minimum (min(8, 9) = 8); the old scan (no onward columns) stops at c3."""
    values = [1, 8, 3, 9]
    assert borders_of(hand_frame(values, [1, 8, 3, 9]), 4) == ("c2", "c2")
    assert borders_of(hand_frame(values, None), 4) == ("c4", "c4")
    globals_first = hand_frame([math.inf, 8, 9], [8, 8, 9])  # a global row never starts the sequence
    assert borders_of(globals_first, 4) == ("c2", "c2")


@pytest.mark.parametrize("flags", [["False", "True", "False"], ["0", "1", "0"], [0.0, 1.0, 0.0], ["false", "TRUE", ""]])
def test_side_branches_flagged_by_hand_are_left_out_of_the_border_rule(flags):
    """A side_branch column written by hand (true, 1) or read back as numbers (1.0) marks the side branch c2,
    whose small receptive field would otherwise stop the backward scan after c1."""
    table = hand_frame([9, 3, 9], None).assign(side_branch=flags)
    assert borders_of(table, 4) == ("c1", "c1")
    assert borders_of(table.assign(side_branch=False), 4) == ("c3", "c3")


@pytest.mark.parametrize("build", [torchvision.models.vgg11, torchvision.models.resnet18,
                                   lambda: torchvision.models.densenet121(num_classes=10)],
                         ids=["vgg11", "resnet18", "densenet121"])
def test_on_a_chain_the_onward_rule_equals_the_backward_scan(build):
    """VGG is a chain, and every later block of a ResNet or DenseNet depends on every earlier layer of
    its main path: the onward rule must give what the backward scan gave (thesis numbers unchanged)."""
    table = receptive_fields(build(), 32)
    convs = table[table["index"].notna()]
    for resolution in (4, 8, 16, 28, 32, 64, 100, 224, 500):
        assert borders_of(convs, resolution) == borders_of(convs.drop(columns=ONWARD), resolution), resolution


# ---------------------------------------------------------------------------- ResNet-D shortcut
class Residual(nn.Module):
    """stem 3×3, a block (3×3 stride 2, 3×3) with a shortcut, then two 3×3 convs."""

    def __init__(self, shortcut: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.sc = shortcut
        self.n, self.n2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return self.n2(self.n(self.b(self.a(x)) + self.sc(x)))


@pytest.mark.parametrize("shortcut", [
    lambda: nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8)),
    lambda: nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False), nn.Conv2d(4, 8, 1)),
    lambda: nn.Sequential(nn.Conv2d(4, 8, 1), nn.MaxPool2d(2)),
], ids=["avgpool-conv-bn", "timm-avg-down", "conv-maxpool"])
def test_resnet_d_shortcut_is_a_side_branch_like_the_strided_1x1(shortcut):
    """stem r 3, a 5 (jump 2), b 9; the shortcut's pool gives r 4. As for a strided 1×1 shortcut, n's
    previous layer is b (prev_r_min 9, not the shortcut's 4) and b_min at I = 6 is n, not n2."""
    plain = receptive_fields(Residual(nn.Conv2d(4, 8, 1, stride=2)), 6).set_index("layer")
    resnet_d = receptive_fields(Residual(shortcut()), 6)
    side = resnet_d[resnet_d.side_branch].layer.tolist()
    assert len(side) == 1 and side[0].startswith("sc.")
    rows = resnet_d.set_index("layer")
    assert rows.loc["n", "prev_r_min"] == plain.loc["n", "prev_r_min"] == 9
    assert border_layers(resnet_d, 6)[0] == plain.index[plain.b_min].item() == "n"


def test_an_overlapping_pool_branch_stays_a_layer_of_the_sequence():
    """An Inception pool branch (3×3 max-pool, stride 1, then 1×1) widens the receptive field like a
    layer: it is no shortcut, as before."""
    class PoolBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.big, self.proj, self.head = conv(3), conv(5), nn.Conv2d(2, 2, 1), conv(3)
            self.pool = nn.MaxPool2d(3, 1, 1)

        def forward(self, x):
            x = self.stem(x)
            return self.head(self.big(x) + self.proj(self.pool(x)))

    assert not receptive_fields(PoolBranch(), 8).side_branch.any()


# ---------------------------------------------------------------------------- global tensors
class WindowPool(nn.Module):
    def __init__(self, pool, window) -> None:
        super().__init__()
        self.conv, self.head, self.pool, self.window = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2), pool, window

    def forward(self, x):
        x = self.conv(x)
        return self.head(torch.flatten(self.pool(x, self.window(x)), 1))


@pytest.mark.parametrize("pool", [F.avg_pool2d, F.max_pool2d], ids=["avg", "max"])
@pytest.mark.parametrize("window", [
    lambda x: x.size()[3], lambda x: x.shape[-1], lambda x: x.size(3), lambda x: x.size(-2), lambda x: x.shape[2],
    lambda x: x.size()[-2:], lambda x: (x.size(2), x.size(3)),
], ids=["size()[3]", "shape[-1]", "size(3)", "size(-2)", "shape[2]", "size()[-2:]", "pair"])
def test_global_pooling_written_with_the_map_size(pool, window):
    model = WindowPool(pool, window)
    model(torch.zeros(1, 3, 16, 16))  # a real, runnable model
    table = receptive_fields(model, 16).set_index("layer")
    assert table.loc["conv", "r_max"] == 3 and math.isinf(table.loc["head", "r_max"])


def test_a_window_from_another_size_is_still_refused():
    for window in (lambda x: x.shape[-1] // 2, lambda x: x.size(1), lambda x: x.size(0)):
        with pytest.raises(ReceptiveFieldError, match="whose window is computed from the input's shape"):
            receptive_fields(WindowPool(F.avg_pool2d, window), 16)


class SqueezedGate(nn.Module):
    """A squeeze-and-excitation gate written with squeeze/unsqueeze and other methods on global tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc1, self.fc2, self.head = nn.Linear(8, 2), nn.Linear(2, 8), nn.Linear(8, 10)

    def forward(self, x):
        x = self.c(x)
        y = F.adaptive_avg_pool2d(x, 1).squeeze(-1).squeeze(-1)
        y = torch.sigmoid(self.fc2(F.relu(self.fc1(y.permute(0, 1))))).unsqueeze(-1).unsqueeze(-1)
        y = torch.flip(y, [1]).expand(-1, -1, 1, 1)
        x = self.c2(x * y)
        return self.head(x.mean((2, 3)))


def test_any_method_on_global_tensors_stays_global():
    model = SqueezedGate()
    model(torch.zeros(1, 3, 8, 8))
    table = receptive_fields(model, 32).set_index("layer")
    assert tuple(table.loc["c2", ["in_r_min", "in_r_max", "r_min", "r_max"]]) == (3, 3, 5, 5)
    assert table.loc[["fc1", "fc2"], "side_branch"].all() and math.isinf(table.loc["head", "r_min"])
    spatial = nn.Sequential(conv(3))  # the same methods on a feature map are still refused

    class Squeezing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.after = spatial, conv(3)

        def forward(self, x):
            return self.after(self.body(x).squeeze(0).unsqueeze(0))

    with pytest.raises(ReceptiveFieldError, match=r"tensor method .squeeze\(\)"):
        receptive_fields(Squeezing(), 32)


# ---------------------------------------------------------------------------- element-wise max/min, concatenation
class Pairwise(nn.Module):
    def __init__(self, combine) -> None:
        super().__init__()
        self.a, self.b, self.c = conv(3), conv(5), conv(3)
        self.register_buffer("floor", torch.zeros(1, 2, 1, 1))
        self.combine = combine

    def forward(self, x):
        return self.c(self.combine(self.a(x), self.b(x), self.floor))


@pytest.mark.parametrize("combine", [
    lambda a, b, floor: torch.max(a, b), lambda a, b, floor: torch.min(a, b), lambda a, b, floor: a.max(b),
    lambda a, b, floor: b.min(a), lambda a, b, floor: torch.maximum(a, b),
    lambda a, b, floor: a.maximum(b), lambda a, b, floor: torch.max(torch.min(a, floor), b),
], ids=["torch.max", "torch.min", "a.max(b)", "b.min(a)", "torch.maximum", "a.maximum(b)", "with-buffer"])
def test_elementwise_max_and_min_merge_like_addition(combine):
    model = Pairwise(combine)
    model(torch.zeros(1, 2, 8, 8))
    table = receptive_fields(model, 32).set_index("layer")
    assert tuple(table.loc["c", ["in_r_min", "in_r_max", "r_min", "r_max"]]) == (3, 5, 5, 7)


def test_max_over_a_dim_is_still_a_reduction():
    class ChannelMax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.head = conv(3), nn.Linear(2, 2)

        def forward(self, x):
            y = self.a(x)
            return self.head(torch.max(y, 3)[0].max(dim=2)[0] + torch.max(y, dim=1, keepdim=True)[0].mean((2, 3)))

    table = receptive_fields(ChannelMax(), 32).set_index("layer")
    assert math.isinf(table.loc["head", "r_min"])


def test_a_reduction_over_channels_keeps_the_receptive_field():
    """Averaging over channels (the spatial-attention map of CBAM) keeps one value per position: the conv
    after it sees 3 + 2 = 5 pixels, not the whole input as after a reduction over height or width."""
    class ChannelMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = conv(3), nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.b(self.a(x).mean(1, keepdim=True))

    table = receptive_fields(ChannelMean(), 32).set_index("layer")
    assert tuple(table.loc["b", ["in_r_min", "in_r_max", "r_min", "r_max", "jump"]]) == (3, 3, 5, 5, 1)


class Concat(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c, self.p, self.c2 = conv(3), conv(3), nn.Conv2d(2, 2, 3, padding=1)
        self.dim = dim
        if dim in (1, -3):
            self.c2 = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        a = self.c(x)
        return self.c2(torch.cat([a, self.p(a)], self.dim))


@pytest.mark.parametrize("dim", [2, 3, -1, -2])
def test_concatenation_along_height_or_width_is_refused(dim):
    Concat(dim)(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ReceptiveFieldError, match=rf"cat \(graph node 'cat'\) along dim {dim} \(height/width"):
        receptive_fields(Concat(dim), 32)


@pytest.mark.parametrize("dim", [1, -3])
def test_concatenation_along_channels_passes(dim):
    Concat(dim)(torch.zeros(1, 2, 8, 8))
    table = receptive_fields(Concat(dim), 32).set_index("layer")
    assert tuple(table.loc["c2", ["in_r_min", "in_r_max", "r_min", "r_max"]]) == (3, 5, 5, 7)
