"""FLOPs of seeded random conv nets against counts by hand from the layer arithmetic (no forward pass).

The hand rules are those ``phd_lab.analysis.flops`` documents (ptflops'): a convolution k_h·k_w·C_in·C_out/groups
per output position plus one per output element for its bias, Linear in·out plus out, ReLU one per element,
batch normalisation two per element, pooling one per input element. Shapes follow PyTorch's size formula.
"""

from __future__ import annotations

import random

from torch import nn

from phd_lab.analysis.flops import FUNCTIONAL_ROW, computational_info


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def random_net(rng: random.Random) -> tuple[nn.Sequential, tuple[int, int, int], list[int]]:
    """A random chain of conv/norm/ReLU/pool layers and a Linear head, its input shape and its MACs per layer."""
    channels, size = rng.choice([1, 2, 3, 4]), rng.randint(9, 16)
    shape = (channels, size, size)
    modules, macs = [], []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice(["conv", "conv", "norm", "relu", "max", "avg"])
        if kind == "conv":
            groups = rng.choice([g for g in (1, 2, 4) if channels % g == 0])
            out = groups * rng.randint(1, 3)
            kernel, stride, dilation = rng.randint(1, 3), rng.randint(1, 2), rng.choice([1, 2])
            padding, bias = rng.randint(0, 2), rng.random() < 0.5
            new = out_size(size, kernel, stride, padding, dilation)
            if new < 1:
                continue
            modules.append(nn.Conv2d(channels, out, kernel, stride, padding, dilation, groups, bias))
            macs.append(new * new * (kernel * kernel * channels * out // groups + bias * out))
            channels, size = out, new
        elif kind == "norm":
            modules.append(nn.BatchNorm2d(channels))
            macs.append(2 * channels * size * size)
        elif kind == "relu":
            modules.append(nn.ReLU())
            macs.append(channels * size * size)
        elif size >= 2:
            kernel = rng.randint(1, 2)
            modules.append((nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(kernel, rng.randint(1, 2)))
            macs.append(channels * size * size)
            size = out_size(size, kernel, modules[-1].stride, 0)
    classes, bias = rng.randint(1, 5), rng.random() < 0.5
    modules += [nn.Flatten(), nn.Linear(channels * size * size, classes, bias=bias)]
    macs.append(channels * size * size * classes + bias * classes)
    return nn.Sequential(*modules), shape, macs


def test_random_conv_nets_have_the_hand_counted_macs_per_layer_and_in_total():
    rng = random.Random(0)
    for case in range(12):
        model, shape, macs = random_net(rng)
        info, table = computational_info(model, shape)
        layers = table[table["layer"] != FUNCTIONAL_ROW]
        counted = [str(i) for i, m in enumerate(model) if not isinstance(m, nn.Flatten)]
        assert layers["layer"].tolist() == counted, (case, model)
        assert layers["macs"].tolist() == macs, (case, model)
        assert table.loc[table["layer"] == FUNCTIONAL_ROW, "macs"].tolist() == [0]
        assert info["macs"] == sum(macs) and info["flops"] == 2 * sum(macs)
        assert info["params_total"] == sum(p.numel() for p in model.parameters()) == layers["params"].sum()


def test_doubling_the_output_channels_of_a_bias_free_convolution_doubles_its_macs():
    rng = random.Random(1)
    for _ in range(10):
        channels, out, kernel, size = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 3), rng.randint(4, 9)
        single = computational_info(nn.Sequential(nn.Conv2d(channels, out, kernel, bias=False)), (channels, size, size))
        double = computational_info(nn.Sequential(nn.Conv2d(channels, 2 * out, kernel, bias=False)),
                                    (channels, size, size))
        assert double[0]["macs"] == 2 * single[0]["macs"] > 0
