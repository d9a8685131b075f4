"""Receptive fields: hand-computed cases, DP against brute-force path enumeration, border layers."""

from __future__ import annotations

import math
import random
from typing import Callable

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from phd_lab.analysis.receptive_field import COLUMNS, ReceptiveFieldError, border_layers, receptive_fields
from tests.conftest import interrupted_import


def conv(k: int, s: int = 1, d: int = 1, c: int = 2) -> nn.Conv2d:
    return nn.Conv2d(c, c, k, stride=s, dilation=d, padding=d * (k - 1) // 2)


def table(model: nn.Module, resolution: int = 32) -> dict[str, tuple]:
    df = receptive_fields(model, resolution)
    return {row.layer: (row.in_r_min, row.in_r_max, row.r_min, row.r_max, row.jump) for row in df.itertuples()}


def two_convs(forward: Callable[..., torch.Tensor]) -> nn.Module:
    """Two 3×3 convolutions ``a`` and ``b`` joined by ``forward(self, x, ...)``: the graph under test."""
    class TwoConvs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = conv(3), conv(3)

    TwoConvs.forward = forward
    return TwoConvs()


def test_sequential_chain_hand_computed():
    model = nn.Sequential(conv(3), nn.ReLU(), conv(3), nn.MaxPool2d(2, 2), conv(3), nn.BatchNorm2d(2),
                          conv(5, s=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    got = table(model)
    # (in_r_min, in_r_max, r_min, r_max, jump)
    assert got["0"] == (1, 1, 3, 3, 1)
    assert got["2"] == (3, 3, 5, 5, 1)
    assert got["4"] == (6, 6, 10, 10, 2)  # pool k2 s2: 5 + 1 = 6, jump 2; conv: 6 + 2·2
    assert got["6"] == (10, 10, 18, 18, 4)  # 10 + 4·2, jump 4
    assert got["9"] == (math.inf,) * 5  # Linear after global pooling is global
    df = receptive_fields(model, 32)
    assert list(df.columns) == COLUMNS
    assert df["index"].tolist()[:4] == [1, 2, 3, 4] and pd.isna(df["index"].iloc[4])


def test_dilation_hand_computed():
    model = nn.Sequential(conv(3, d=2), conv(3, d=3), conv(3, s=2), conv(3, d=2))
    got = table(model)
    assert got["0"][2:] == (5, 5, 1)  # k_eff = 5
    assert got["1"][2:] == (11, 11, 1)  # k_eff = 7
    assert got["2"][2:] == (13, 13, 2)
    assert got["3"][2:] == (13 + 4 * 2, 21, 2)  # k_eff = 5 at jump 2


def test_strided_pooling_hand_computed():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
            self.a = conv(3)
            self.b = conv(1)

        def forward(self, x):
            x = self.a(self.pool(x))  # pool: r 3, j 2; conv: 3 + 2·2 = 7
            x = F.avg_pool2d(x, 2)  # stride defaults to the kernel: 7 + 1·2 = 9, j 4
            x = F.max_pool2d(x, kernel_size=3, stride=1, dilation=2)  # 9 + 4·4 = 25, j 4
            return self.b(x)

    got = table(Net())
    assert got["a"] == (3, 3, 7, 7, 2)
    assert got["b"] == (25, 25, 25, 25, 4)


class PositionalConv(nn.Module):
    """A layer that holds its weight and calls F.conv2d with stride 2, padding 1 and dilation 3 by position."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 2, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight, None, 2, 1, 3)


def test_dilated_pooling_modules_and_positional_functional_arguments_hand_computed():
    """Dilation counts wherever it is given: a MaxPool2d module's, and F.max_pool2d's and F.conv2d's by position
    (input, kernel/weight, stride, padding, dilation: padding is no dilation)."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.MaxPool2d(3, stride=1, padding=2, dilation=2)
            self.a, self.f, self.b = conv(3), PositionalConv(), conv(1)

        def forward(self, x):
            x = self.a(self.pool(x))  # pool: k_eff 5, r 1 + 4 = 5; conv: 5 + 2 = 7, j 1
            x = F.max_pool2d(x, 3, 2, 1, 2)  # k_eff 5: 7 + 4·1 = 11, j 2
            return self.b(self.f(x))  # k_eff 7 at jump 2: 11 + 6·2 = 23, j 4

    got = table(Net())
    assert got["a"] == (5, 5, 7, 7, 1)
    assert got["f"] == (11, 11, 23, 23, 4)
    assert got["b"] == (23, 23, 23, 23, 4)


@pytest.mark.parametrize("index", ["plain", "ellipsis"])
def test_strided_slice_shortcut_is_a_stride(index):
    """CIFAR ResNets' 'option A' shortcut subsamples with x[:, :, ::2, ::2]: a 1×1 window of stride 2
    (kernel 3 after it: 3 + 2·2 = 7, jump 2). Passing it through would report 5 and jump 1."""
    def forward(self, x):
        x = self.a(x)
        return self.b(x[:, :, ::2, ::2] if index == "plain" else x[..., ::2, ::2])

    got = table(two_convs(forward))
    assert got["a"] == (1, 1, 3, 3, 1)
    assert got["b"] == (3, 3, 7, 7, 2)

    class OneAxis(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = conv(3)

        def forward(self, x):
            return self.a(x[:, :, ::2])

    with pytest.raises(ReceptiveFieldError, match=r"strided slice with steps \{'height': 2\}"):
        receptive_fields(OneAxis(), 32)


def test_a_strided_slice_that_starts_off_the_first_row_alone_is_a_stride_and_its_merges_join_windows():
    """x[..., 1::2, 1::2] alone reads every other pixel as x[..., ::2, ::2] does (b: 3 + 2·2 = 7); beside a slice
    that starts elsewhere, the union of their windows counts (a's 3×3 windows one row and column apart: 4; b:
    4 + 2·2 = 8). The concatenation took the larger of the two, 3, and b got 7."""
    assert table(two_convs(lambda self, x: self.b(self.a(x)[..., 1::2, 1::2])))["b"] == (3, 3, 7, 7, 2)
    joined = two_convs(lambda self, x: self.b((lambda y: y[..., ::2, ::2] + y[..., 1::2, 1::2])(self.a(x))))
    assert table(joined)["b"] == (4, 4, 8, 8, 2)


class Misaligned(nn.Module):
    """Strided slices joined where the analysis cannot tell the union of their windows: ``case`` says how."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.a, self.b = conv(3), conv(3, c=4)

    def forward(self, x):
        x = self.a(x)
        if self.case == "taller_than_wide":  # rows 0 and 1, column 0 only: 2 pixels tall, 1 wide
            joined = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2]], 1)
        elif self.case == "sizes_from_two_layers":  # a 3×3 conv's windows beside pixels: the padding decides
            joined = torch.cat([self.a(x)[..., ::2, ::2], x[..., 1::2, 1::2]], 1)
        else:  # windows of 4 around rows 0 and 1 beside a 2×2 pool's, taken as centred on row 0: half a row off
            joined = torch.cat([x[..., ::2, ::2] + x[..., 1::2, 1::2], F.avg_pool2d(x, 2)], 1)
        return self.b(joined)


@pytest.mark.parametrize("case, message", [
    ("taller_than_wide", r"module 'b' .*, which reads a feature map whose smallest windows \(jump 2\), joined from "
                         r"strided slices that start at different rows and columns, are 4 pixels tall but 3 wide"),
    ("sizes_from_two_layers", r"graph node 'cat'\) \(a merge of feature maps whose windows lie at different "
                              r"places, moved by strided slices .* and differ in size: where the smaller ones lie"),
    ("half_a_pixel", r"graph node 'cat'\) \(a merge .* known only to half a pixel"),
])
def test_strided_slices_whose_union_the_analysis_cannot_tell_are_refused_before_training(case, message):
    """Refused with the operation named, in one paragraph; the step's check before training makes it a config
    error (exit 2). The analysis used to report the larger of the windows instead."""
    from phd_lab.errors import EXIT_USAGE, ConfigError
    from phd_lab.steps.receptive_field import ReceptiveFieldStep

    with pytest.raises(ReceptiveFieldError, match=message) as refused:
        receptive_fields(Misaligned(case), 32)
    assert "\n" not in str(refused.value) and "leave the 'receptive_field' step out" in str(refused.value)
    with pytest.raises(ConfigError, match="post-processing step 'receptive_field': Receptive field: ") as error:
        ReceptiveFieldStep().check_model({}, Misaligned(case), "config.json")
    assert error.value.exit_code == EXIT_USAGE


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = conv(3), conv(3), conv(3)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.c2(torch.relu(self.bn(self.c1(x))))
        return self.c3(F.relu(y + x))


def test_residual_block_hand_computed():
    got = table(Residual())
    assert got["c1"] == (1, 1, 3, 3, 1)
    assert got["c2"] == (3, 3, 5, 5, 1)
    assert got["c3"] == (1, 5, 3, 7, 1)  # the skip path brings r = 1
    df = receptive_fields(Residual(), 8).set_index("layer")
    assert df.prev_r_min.tolist() == [1, 3, 5]  # c3's previous layer is c2: the identity skip is no layer
    assert not df.side_branch.any()


def test_two_paths_with_different_kernels():
    class TwoPath(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small, self.large, self.head = conv(3), conv(5), nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x):
            return self.head(torch.cat([self.small(x), self.large(x)], dim=1))

    got = table(TwoPath())
    assert got["small"][2:4] == (3, 3) and got["large"][2:4] == (5, 5)
    assert got["head"] == (3, 5, 5, 7, 1)
    # two parallel layers (no skip): the smaller one is r_{l-1,min}, as on the min path of §10.2
    head = receptive_fields(TwoPath(), 8).set_index("layer").loc["head"]
    assert head.prev_r_min == 3 and not head.side_branch


def test_torchvision_resnet18_hand_computed():
    df = receptive_fields(torchvision.models.resnet18(), 224)
    last = df[df.layer == "layer4.1.conv2"].iloc[0]
    # longest path: every 3×3 conv (435, the value other tools report); shortest: stem, max-pool and the
    # 1×1 downsampling shortcuts (r 11, jump 32), then the two convs of the last block: 11 + 2·32 + 2·32.
    assert (last.r_max, last.r_min, last.jump) == (435, 139, 32)
    assert df["index"].max() == 20 and df.layer.iloc[-1] == "fc"
    # in_r_max 243 > 224 from layer4.0.conv2 on; the 1×1 shortcut (in_r_max 211) is no layer of that sequence
    assert border_layers(df, 224) == (None, "layer4.0.conv2")
    assert df[df.side_branch].layer.tolist() == [f"layer{i}.0.downsample.0" for i in (2, 3, 4)]


def test_resnet18_b_min_on_the_zigzag_of_the_block_convolutions():
    """Thesis §10.3, Fig. 60: b_min from r_{l-1,min} of the sequence of convolutions. Through the identity
    shortcuts the stem's r = 11 reaches every block (in_r_min), but the previous layer of a block's first
    convolution is the last convolution of the block before it."""
    df = receptive_fields(torchvision.models.resnet18(num_classes=10), 32)
    main = df[df["index"].notna() & ~df.side_branch]
    assert main.prev_r_min.tolist() == [1, 11, 19, 27, 19, 27, 19, 35, 27, 43, 27, 59, 43, 75, 43, 107, 75]
    assert set(main.in_r_min.iloc[1:]) == {11, 19, 27, 43, 75}  # the old rule: never > 32 at a block's first conv
    assert border_layers(df, 32) == ("layer3.1.conv1", "layer1.1.conv2")  # 12th of 17 with the stem
    assert df.loc[df.b_min, "layer"].tolist() == ["layer3.1.conv1"]


def test_resnet50_b_min_is_its_last_convolution_from_11_to_74_px_as_documented():
    """docs/analysis.md: the bottlenecks' identity shortcuts keep prev_r_min small, so ResNet50 (ImageNet stem) has
    b_min = layer4.2.conv3 from 11 to 74 px and none above (the docs said from 12 before; at 11 px layer4.2.conv2's
    prev_r_min is 11, not > 11, and layer4.2.conv3's 75)."""
    from registries import models
    df = receptive_fields(models.resnet50(num_classes=10), 11)
    assert [border_layers(df, size)[0] for size in (10, 11, 74, 75)] == [
        "layer1.0.conv1", "layer4.2.conv3", "layer4.2.conv3", None]


@pytest.mark.parametrize("variant", ["resnet18_se", "resnet18_sa", "resnet18_cbam", "resnet18_noskip_sa"])
def test_attention_layers_are_side_branches_that_move_no_border(variant):
    """Thesis §10.1: the layers of the attention mechanism are omitted and do not widen the receptive field."""
    from registries import models
    plain = "resnet18_noskip" if "noskip" in variant else "resnet18"
    with_attention = receptive_fields(getattr(models, variant)(num_classes=10), 32)
    without = receptive_fields(getattr(models, plain)(num_classes=10), 32)
    assert border_layers(with_attention, 32) == border_layers(without, 32)
    kept = with_attention[~with_attention.side_branch]
    assert kept.layer.tolist() == without[~without.side_branch].layer.tolist()
    for column in ("r_min", "r_max", "in_r_min", "in_r_max", "prev_r_min"):
        assert kept[column].tolist() == without[~without.side_branch][column].tolist(), column


@pytest.mark.parametrize("build", [torchvision.models.vgg11, lambda: nn.Sequential(conv(3), conv(5, s=2),
                                                                                    nn.MaxPool2d(2), conv(3))])
def test_sequential_models_have_equal_min_and_max(build):
    df = receptive_fields(build(), 32)
    assert (df.r_min == df.r_max).all() and (df.in_r_min == df.in_r_max).all()
    assert df.b_min.tolist() == df.b_max.tolist()


def test_vgg11_values_and_border():
    df = receptive_fields(torchvision.models.vgg11(), 32)
    convs = df[df["index"].notna()]
    assert convs.r_max.tolist() == [3, 8, 18, 26, 46, 62, 102, 134]
    assert border_layers(df, 32) == ("features.13", "features.13")  # the 6th conv: in_r 46 > 32
    assert df[df.b_min].layer.tolist() == ["features.13"]


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = conv(3)
        self.fc1, self.fc2 = nn.Conv2d(2, 1, 1), nn.Conv2d(1, 2, 1)
        self.after = conv(3)

    def forward(self, x):
        y = self.body(x)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.after(y * gate)


def test_attention_gate_does_not_widen_the_receptive_field():
    got = table(SqueezeExcite())
    assert got["fc1"] == (math.inf,) * 5
    assert got["after"] == (3, 3, 5, 5, 1)
    # global-input convs never start a border sequence
    assert border_layers(receptive_fields(SqueezeExcite(), 2), 2) == ("after", "after")
    assert border_layers(receptive_fields(SqueezeExcite(), 3), 3) == (None, None)


def test_border_layers_hand_checked():
    def frame(values: list[float], global_rows: tuple[int, ...] = ()) -> pd.DataFrame:
        rows = [{"index": i + 1, "layer": f"c{i + 1}", "prev_r_min": v, "in_r_max": v + 10, "side_branch": False}
                for i, v in enumerate(values)]
        for i in global_rows:
            rows[i]["prev_r_min"] = rows[i]["in_r_max"] = math.inf
        rows.append({"index": None, "layer": "fc", "prev_r_min": math.inf, "in_r_max": math.inf, "side_branch": False})
        df = pd.DataFrame(rows)
        df["index"] = df["index"].astype("Int64")
        return df

    df = frame([1, 3, 7, 5, 9, 11])
    assert border_layers(df, 6) == ("c5", "c1")  # 7 > 6 but 5 is not; max: 11 > 6 everywhere
    assert border_layers(df, 9) == ("c6", "c1")  # strict: 9 is not > 9; in_r_max = in_r_min + 10
    assert border_layers(df, 11) == (None, "c2")  # 11 is not > 11
    assert border_layers(df, 14) == (None, "c3")  # 13 is not > 14
    assert border_layers(df, 21) == (None, None)
    assert border_layers(frame([1, 8, 9], global_rows=(2,)), 6) == ("c2", "c1")
    assert border_layers(frame([1, 3, 9], global_rows=(1,)), 6) == ("c3", "c1")
    side = frame([1, 8, 3, 9])
    side.loc[2, "side_branch"] = True  # a shortcut neither breaks nor starts the sequence
    assert border_layers(side, 6) == ("c2", "c1")


def test_untraceable_model_gives_a_clear_error():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = conv(3)

        def forward(self, x):
            if x.sum() > 0:
                return self.c(x)
            return x

    with pytest.raises(ReceptiveFieldError, match="DataDependent cannot be traced with torch.fx"):
        receptive_fields(DataDependent(), 32)


def test_a_module_name_with_a_double_quote_is_named_as_what_stops_the_tracing():
    """torch.fx writes module names into code as "..." literals: a name with a double quote made it fail with a
    SyntaxError, and the step blamed data-dependent control flow in a forward pass that had none."""
    model = nn.Sequential()
    model.add_module('conv"1', conv(3))
    model.add_module("relu", nn.ReLU())
    said = "because of the name of its module 'conv\"1': torch.fx writes"
    with pytest.raises(ReceptiveFieldError, match=said) as caught:
        receptive_fields(model, 32)
    assert "data-dependent" not in str(caught.value)


def test_unknown_operation_is_named():
    class Upsampling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.up = conv(3), nn.Upsample(scale_factor=2)

        def forward(self, x):
            return self.c(self.up(x))

    with pytest.raises(ReceptiveFieldError, match=r"module 'up' \(torch.nn.modules.upsampling.Upsample\)"):
        receptive_fields(Upsampling(), 32)

    class Rolling(nn.Module):  # moves pixels around the map's edge
        def __init__(self) -> None:
            super().__init__()
            self.c = conv(3)

        def forward(self, x):
            return self.c(x).roll(1, 2)

    with pytest.raises(ReceptiveFieldError, match=r"tensor method .roll\(\)"):
        receptive_fields(Rolling(), 32)


# ---------------------------------------------------------------------------- random DAGs
def random_plan(rng: random.Random, size: int) -> list[dict]:
    """Nodes of a runnable DAG: each applies a conv or pool to the sum of same-scale earlier nodes."""
    plan = [{"scale": 1}]
    for _ in range(size):
        primary = rng.randrange(len(plan))
        scale = plan[primary]["scale"]
        stride = rng.choice([1, 1, 2]) if scale < 8 else 1
        same = [i for i, node in enumerate(plan) if node["scale"] == scale and i != primary]
        inputs = [primary] + rng.sample(same, min(len(same), rng.choice([0, 1, 2])))
        if rng.random() < 0.75:
            op = ("conv", rng.choice([1, 3, 5]), stride, rng.choice([1, 2]))
        elif stride == 2 and rng.random() < 0.5:
            op = ("pool", 2, 2, 1)
        else:
            op = ("pool", 3, stride, 1)
        plan.append({"scale": scale * stride, "inputs": inputs, "op": op})
    return plan


class RandomDag(nn.Module):
    def __init__(self, plan: list[dict]) -> None:
        super().__init__()
        self.plan = plan
        layers = {}
        for i, node in enumerate(plan[1:], 1):
            kind, k, s, d = node["op"]
            layers[f"n{i}"] = conv(k, s, d) if kind == "conv" else nn.MaxPool2d(k, s, padding=k // 2 if k == 3 else 0)
        self.layers = nn.ModuleDict(layers)

    def forward(self, x):
        values = [x]
        for i, node in enumerate(self.plan[1:], 1):
            total = values[node["inputs"][0]]
            for j in node["inputs"][1:]:
                total = total + values[j]
            values.append(self.layers[f"n{i}"](total))
        return values[-1]


def brute_force(plan: list[dict]) -> dict[str, tuple]:
    """Enumerate every path explicitly: (in_r_min, in_r_max, r_min, r_max) of each conv."""
    paths: list[list[tuple[int, int]]] = [[(1, 1)]]
    result = {}
    for i, node in enumerate(plan[1:], 1):
        _, k, s, d = node["op"]
        incoming = [path for j in node["inputs"] for path in paths[j]]
        outgoing = [(r + d * (k - 1) * jump, jump * s) for r, jump in incoming]
        paths.append(outgoing)
        if node["op"][0] == "conv":
            result[f"layers.n{i}"] = (min(r for r, _ in incoming), max(r for r, _ in incoming),
                                      min(r for r, _ in outgoing), max(r for r, _ in outgoing))
    return result


@pytest.mark.parametrize("seed", range(25))
def test_dp_agrees_with_brute_force_on_random_dags(seed):
    rng = random.Random(seed)
    plan = random_plan(rng, rng.randrange(4, 11))
    model = RandomDag(plan)
    model(torch.zeros(1, 2, 32, 32))  # the generated model is a real, runnable network
    got = {layer: values[:4] for layer, values in table(model).items()}
    assert got == brute_force(plan)


def test_side_branches_are_only_the_receptive_field_neutral_shortcuts():
    """A dense layer's 3×3 conv (concatenated onward) and the Cifar stem (reached by the first identity skip)
    are layers of the main sequence; only the 1×1 projection shortcuts are side branches."""
    from registries import models
    cifar = receptive_fields(models.resnet18_cifar(num_classes=10), 32)
    assert cifar[cifar.side_branch].layer.tolist() == [f"layer{i}.0.downsample.0" for i in (2, 3, 4)]
    dense = receptive_fields(torchvision.models.densenet121(num_classes=10), 32)
    assert not dense.side_branch.any()

    class InvertedResidual(nn.Module):  # MobileNetV2 style: the skipped tensor ends in a 1×1 projection
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.proj, self.c2 = conv(3), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            y = self.proj(self.c1(x))
            return y + self.c2(y)

    assert not receptive_fields(InvertedResidual(), 8).side_branch.any()
    mobilenet = receptive_fields(torchvision.models.mobilenet_v2(num_classes=10), 32)
    assert not mobilenet.side_branch.any() and border_layers(mobilenet, 32)[0] == "features.7.conv.2"


def test_plot_of_a_model_without_any_convolution(tmp_path):
    """The built-in mlp_long_skip has Linear layers only: its table has no conv rows, and the plot of the saved
    table selected columns instead of rows (KeyError), which failed the step after the CSV was written."""
    from phd_lab.plots.receptive_field import plot_receptive_field
    from registries.models import mlp_long_skip
    table = receptive_fields(mlp_long_skip(num_classes=10, skipped=4, tail=1), 16)
    table.to_csv(tmp_path / "rf.csv", index=False)
    saved = pd.read_csv(tmp_path / "rf.csv")
    assert saved["index"].isna().all()
    plot_receptive_field(saved, 16, tmp_path / "rf.png")
    assert (tmp_path / "rf.png").stat().st_size > 0
    import re

    import matplotlib
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text in the file
        plot_receptive_field(saved, 16, tmp_path / "rf.svg")
    text = (tmp_path / "rf.svg").read_text(encoding="utf-8")
    [(size, y)] = re.findall(r'font(?:-size)?: ([0-9.]+)px[^>]*y="([-0-9.]+)"[^>]*>no Conv2d layer', text)
    resolution = _svg_lines(text)["#000000:dashed"][0]  # the resolution line (then its legend entry) crossed it
    assert abs(float(y) - resolution[0][1]) > 2 * float(size)


def test_the_plot_draws_side_branches_apart_from_the_sequence_it_marks_borders_on(tmp_path):
    """A 1×1 shortcut's small r_min inside the r_min line made it dip below the resolution after b_min."""
    from phd_lab.plots.receptive_field import plot_receptive_field, plotted_rows
    from registries.models import resnet18
    table = receptive_fields(resnet18(num_classes=10, width=0.125), 32)
    table.to_csv(tmp_path / "rf.csv", index=False)
    saved = pd.read_csv(tmp_path / "rf.csv")  # as the step and the report read it
    sequence, side = plotted_rows(saved)
    assert sorted(side["layer"]) == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert "layer3.0.downsample.0" not in set(sequence["layer"])
    after_border = sequence[sequence["index"] >= int(saved.loc[saved["b_min"], "index"].iloc[0])]
    assert (after_border["r_min"] > 32).all()  # the line no longer dips below the resolution after b_min
    plot_receptive_field(saved, 32, tmp_path / "rf.png")
    assert (tmp_path / "rf.png").stat().st_size > 0
    first_version = saved.drop(columns=["side_branch"])  # a table of the step's first version: all one line
    sequence, side = plotted_rows(first_version)
    assert len(sequence) == len(saved) - 1 and side.empty  # every conv row (the Linear fc has no index)
    plot_receptive_field(first_version, 32, tmp_path / "rf1.png")


def _svg_lines(text: str) -> dict[str, list[list[tuple[float, float]]]]:
    """The points of every line of a matplotlib SVG, by stroke colour (and ``:dashed`` for dashed lines)."""
    import re
    lines: dict[str, list[list[tuple[float, float]]]] = {}
    for path, style in re.findall(r'<g id="line2d_\d+">\s*<path d="([^"]*)"[^>]*style="([^"]*)"', text):
        colour = re.search(r"stroke: (#[0-9a-f]{6})", style).group(1) + (":dashed" if "dasharray" in style else "")
        points = [(float(x), float(y)) for x, y in re.findall(r"[ML] ([-0-9.]+) ([-0-9.]+)", path)]
        lines.setdefault(colour, []).append(points)
    return lines


def test_the_plot_puts_r_max_r_min_the_resolution_and_each_border_at_its_place(tmp_path):
    """r_max (red) and r_min (blue) over the sequence's layers, the side branch and a global layer apart; the
    resolution line at the height of a layer whose r_max equals it; b_max (red dotted) at its layer, b_min (blue
    dash-dotted) at its own; the given title."""
    import matplotlib

    from phd_lab.plots.receptive_field import plot_receptive_field, plotted_rows
    rows = [("c1", 3, 3, False, ""), ("c2", 5, 8, False, "b_max"), ("shortcut", 1, 1, True, ""),
            ("c3", 9, 12, False, "b_min"), ("gate", math.inf, math.inf, False, "")]
    table = pd.DataFrame([{"index": i, "layer": layer, "r_min": r_min, "r_max": r_max, "side_branch": side,
                           "b_min": flag == "b_min", "b_max": flag == "b_max"}
                          for i, (layer, r_min, r_max, side, flag) in enumerate(rows, 1)])
    table.loc[len(table)] = {"index": None, "layer": "fc", "r_min": math.inf, "r_max": math.inf,
                             "side_branch": False, "b_min": False, "b_max": False}
    sequence, side = plotted_rows(table)
    assert sequence["layer"].tolist() == ["c1", "c2", "c3"] and side["layer"].tolist() == ["shortcut"]
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text in the file
        plot_receptive_field(table, 8, tmp_path / "rf.svg", title="vgg at 8 px")
    text = (tmp_path / "rf.svg").read_text(encoding="utf-8")
    assert "vgg at 8 px" in text and "receptive field per layer" not in text
    lines = _svg_lines(text)
    red, blue = lines["#d62728"][0], lines["#1f77b4"][0]  # the first of each colour: the plotted lines
    assert len(red) == len(blue) == 3 and [x for x, _ in red] == [x for x, _ in blue]
    assert [y for _, y in red][0] == [y for _, y in blue][0] and red[1][1] < blue[1][1]  # r_max 8 above r_min 5
    [resolution] = lines["#000000:dashed"][:1]
    assert resolution[0][1] == pytest.approx(red[1][1])  # at the height of c2's r_max of 8
    b_max, b_min = lines["#d62728:dashed"][0], lines["#1f77b4:dashed"][0]
    assert b_max[0][0] == pytest.approx(red[1][0]) and b_min[0][0] == pytest.approx(red[2][0])


def test_the_border_lines_differ_from_each_other_and_the_resolution_by_more_than_hue():
    """b_max and b_min were both dotted, red and blue, told apart by colour only (one kind of line in grayscale or
    to a colour-blind reader): each border and the resolution line has a line style of its own, in the legend too."""
    from phd_lab.plots import close
    from phd_lab.plots.receptive_field import receptive_field_figure
    from registries.models import resnet18
    saved = receptive_fields(resnet18(num_classes=10, width=0.125), 32)
    b_min, b_max = border_layers(saved, 32)
    assert b_min != b_max  # two vertical lines at two layers
    figure = receptive_field_figure(saved, 32)
    try:
        [ax] = figure.axes
        by_label = {line.get_label(): line for line in ax.get_lines()}
        borders = [by_label[r"$b_{max}$: " + b_max], by_label[r"$b_{min}$: " + b_min]]
        resolution = by_label["input resolution 32"]
        assert [line.get_linestyle() for line in (*borders, resolution)] == [":", "-.", "--"]
        assert all(line.get_marker() == "None" for line in (*borders, resolution))
        legend = {text.get_text(): handle.get_linestyle()
                  for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().get_lines())}
        assert {label: legend[label] for label in (r"$b_{max}$: " + b_max, r"$b_{min}$: " + b_min,
                                                   "input resolution 32")} == {
            r"$b_{max}$: " + b_max: ":", r"$b_{min}$: " + b_min: "-.", "input resolution 32": "--"}
    finally:
        close(figure)


def test_pooling_windows_taken_from_the_input_shape():
    """F.avg_pool2d(x, x.size()[2:]) is a global pool written out; a window computed otherwise from the shape
    cannot be known when tracing. Both raised a bare TypeError ('Node' object is not iterable)."""
    class WrittenOutGlobalPool(nn.Module):
        def __init__(self, window) -> None:
            super().__init__()
            self.conv, self.head, self.window = nn.Conv2d(3, 4, 3), nn.Linear(4, 2), window

        def forward(self, x):
            x = self.conv(x)
            return self.head(torch.flatten(F.avg_pool2d(x, self.window(x)), 1))

    for window in (lambda x: x.size()[2:], lambda x: x.shape[2:]):
        table = receptive_fields(WrittenOutGlobalPool(window), 16).set_index("layer")
        assert table.loc["conv", "r_max"] == 3 and math.isinf(table.loc["head", "r_max"])
    with pytest.raises(ReceptiveFieldError, match="whose window is computed from the input's shape"):
        receptive_fields(WrittenOutGlobalPool(lambda x: x.shape[-1] // 2), 16)



class WeightStandardisedConv(nn.Conv2d):
    """A Conv2d subclass with its own forward, as users write them."""

    def forward(self, x):
        weight = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FunctionalConv(nn.Module):
    """A layer that holds its own weight and calls F.conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 2, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)


@pytest.mark.parametrize("make", [lambda: conv(3), lambda: WeightStandardisedConv(2, 2, 3, padding=1),
                                  FunctionalConv], ids=["Conv2d", "subclass", "F.conv2d"])
def test_conv2d_subclasses_and_functional_convolutions_are_layers(make):
    # conv 3 → pool 2/2 → conv 3 → pool 2/2 → conv 3 → conv 3 → GAP → Linear, at I = 8:
    # r = 3, 4 (j 2), 8, 10 (j 4), 18, 26; the third conv's input (10) exceeds 8: the border is layer 4
    model = nn.Sequential(make(), nn.MaxPool2d(2), make(), nn.MaxPool2d(2), make(), make(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    df = receptive_fields(model, 8)
    assert df["layer"].tolist() == ["0", "2", "4", "5", "8"]
    assert df["r_min"].tolist()[:4] == [3, 8, 18, 26]
    assert border_layers(df, 8) == ("4", "4")


def test_a_feature_map_of_unknown_receptive_field_is_refused_only_when_a_convolution_reads_it():
    def view_then_conv(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        return self.b(y.reshape(n, c, h * 2, w // 2))  # folds rows: moves pixels

    with pytest.raises(ReceptiveFieldError, match=r"module 'b'.*receptive field the graph does not determine.*"
                                                  r"\.reshape\(\).*a reshape to 4 dimensions"):
        receptive_fields(two_convs(view_then_conv), 32)
    pooled_then_conv = nn.Sequential(conv(3), nn.AdaptiveAvgPool2d(4), conv(3))
    with pytest.raises(ReceptiveFieldError, match=r"module '2'.*AdaptiveAvgPool2d.*pooling to 4 positions"):
        receptive_fields(pooled_then_conv, 32)
    # torchvision's VGG head: adaptive pooling to 7×7, flatten, Linear — no convolution reads it
    head = nn.Sequential(conv(3), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(2 * 49, 3))
    assert table(head)["3"] == (math.inf,) * 5
    vectors = nn.Sequential(conv(3), nn.AdaptiveAvgPool2d(1))

    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.fc = vectors, nn.Linear(2, 3)

        def forward(self, x):
            y = self.body(x)
            return self.fc(y.view(y.size(0), -1))

    assert table(Flat())["fc"] == (math.inf,) * 5


def test_a_global_gate_viewed_as_a_feature_map_stays_global():
    class SqueezeExcite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.fc, self.b = conv(3), nn.Linear(2, 2), conv(3)

        def forward(self, x):
            y = self.a(x)
            n, c = y.shape[:2]
            gate = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(y, 1).view(n, c))).view(n, c, 1, 1)
            return self.b(y * gate)

    got = table(SqueezeExcite())
    assert got["b"] == (3, 3, 5, 5, 1) and got["fc"] == (math.inf,) * 5


def test_paths_with_different_jumps_report_the_largest_jump():
    """A tensor reached with jumps 1 and 2 (a 1×1 conv beside a strided, padded one): the jump column is the
    largest, the step between output positions on the coarsest path; a 3×3 conv grows each path by its jump."""
    class MixedJumps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.near, self.far = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1, stride=2, padding=4)
            self.head = conv(3)

        def forward(self, x):
            return self.head(self.near(x) + self.far(x))  # 8×8 on both paths at an 8×8 input

    assert MixedJumps()(torch.zeros(1, 2, 8, 8)).shape == (1, 2, 8, 8)
    got = table(MixedJumps(), 8)
    assert got["near"] == (1, 1, 1, 1, 1) and got["far"] == (1, 1, 1, 1, 2)
    assert got["head"] == (1, 1, 3, 5, 2)  # r 1 + 2·1 on the jump-1 path, 1 + 2·2 on the jump-2 path


def test_only_the_first_input_of_forward_is_the_image():
    """A second forward() argument (a bias map, a mask) carries no image content: adding it to a feature map
    leaves that map's receptive field as it is instead of bringing in a second r = 1 path."""
    def with_bias(self, x, bias):
        return self.b(self.a(x) + bias)

    got = table(two_convs(with_bias))
    assert got["a"] == (1, 1, 3, 3, 1)
    assert got["b"] == (3, 3, 5, 5, 1)


def test_a_reshape_to_a_token_sequence_is_no_global_vector():
    """(n, c, h·w) keeps one value per position (the tokens of a non-local or attention block), unlike
    (n, c·h·w); a convolution reading it after a reshape back is refused rather than reported as global."""
    def tokens(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        return self.b(y.view(n, c, h * w).view(n, c, h, w))

    two_convs(tokens)(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ReceptiveFieldError, match=r"module 'b'.*\.view\(\).*a reshape to 3 dimensions"):
        receptive_fields(two_convs(tokens), 32)


def test_adaptive_pooling_to_two_positions_is_not_global():
    """Only adaptive pooling to one position covers the whole input; to 2×2 positions each output value sees
    part of it, which the graph alone does not size, so a convolution reading it is refused."""
    model = nn.Sequential(conv(3), nn.AdaptiveAvgPool2d(2), conv(3))
    with pytest.raises(ReceptiveFieldError, match=r"module '2'.*AdaptiveAvgPool2d.*pooling to 2 positions"):
        receptive_fields(model, 32)


class _WithOptions(nn.Module):
    """A forward with keyword options whose defaults the trainer's ``model(x)`` always takes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = conv(3), conv(3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, features_only: bool = False,
                temperature: float = 1.0) -> torch.Tensor:
        x = self.a(x if mask is None else x * mask)
        if features_only:
            return x
        return self.b(x) / temperature


def test_a_forward_with_keyword_options_is_traced_at_their_defaults():
    """'if features_only:' on a keyword option was refused as data-dependent control flow ('symbolically traced
    variables cannot be used as inputs to control flow'), though ``model(x)`` always takes its default."""
    model = _WithOptions()
    assert table(model) == {"a": (1, 1, 3, 3, 1), "b": (3, 3, 5, 5, 1)}
    from phd_lab.models.truncate import truncate_model
    truncated = truncate_model(model, "b", num_classes=4, in_channels=2, input_resolution=8)
    assert truncated(torch.randn(2, 2, 8, 8)).shape == (2, 4)


class _InterruptedOnMeta(nn.Conv2d):
    """A 3×3 convolution that a Ctrl-C stops when it runs on the meta device (the recording of the shapes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_meta:
            interrupted_import()
        return super().forward(x)


def test_a_ctrl_c_while_the_model_is_traced_stops_the_analysis():
    """Tracing took every error of the forward pass for an untraceable model, a Ctrl-C turned into a compiled
    module's ImportError too: the receptive-field step said 'cannot be traced with torch.fx' instead of stopping."""
    class Interrupted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = conv(3)

        def forward(self, x):
            interrupted_import()
            return self.a(x)

    with pytest.raises(KeyboardInterrupt):
        receptive_fields(Interrupted(), 8)


def test_a_ctrl_c_while_the_shapes_are_recorded_stops_the_analysis():
    """The shapes' recording on meta tensors fell back to the rules without shapes on any error: a Ctrl-C there was
    swallowed and the analysis went on as if nothing had happened."""
    model = nn.Sequential(conv(3), _InterruptedOnMeta(2, 2, 3, padding=1))
    with pytest.raises(KeyboardInterrupt):
        receptive_fields(model, 8)
