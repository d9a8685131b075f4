"""Fully connected networks: the plain MLP of appendix B.1 and the deep MLP with a long skip of §4.3.

Both average-pool the image to ``input_side``×``input_side`` (an identity at that resolution) and
flatten it; every hidden layer is Linear → ReLU, followed by the linear output layer.

``PlainMLP`` has one hidden layer per entry of ``units``. Appendix B.1 trains "a 3 layer fully connected
neural network, the first layer has 256 units, the second layer has 8, 16, 32, 64 and 128 units" and
tracks the saturation of the hidden layers after each epoch: ``units=[256, k]``.

``LongSkipMLP`` (§4.3, figure 34; after Alain & Bengio 2017): a first layer maps the flattened image
(28 px for MNIST) to ``units`` units; ``skipped`` further layers follow, and their output is added to the
first layer's output (the long skip connection); then ``tail`` more layers and the output layer. The
thesis' variant: 128 units, 128 skipped layers, 8 tail layers, which lets the network learn to "skip"
the encapsulated layers (their probe accuracy decays to chance level).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from phd_lab.models.common import check_positive_int
from phd_lab.models.init import kaiming_init


def _dense(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU(inplace=True))


class LongSkipMLP(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int = 1, input_side: int = 28, units: int = 128,
                 skipped: int = 128, tail: int = 8) -> None:
        super().__init__()
        self.resize = nn.AdaptiveAvgPool2d(input_side)
        self.first = _dense(in_channels * input_side * input_side, units)
        self.skipped = nn.Sequential(*(_dense(units, units) for _ in range(skipped)))
        self.tail = nn.Sequential(*(_dense(units, units) for _ in range(tail)))
        self.output = nn.Linear(units, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.first(torch.flatten(self.resize(x), 1))
        return self.output(self.tail(first + self.skipped(first)))


def create_long_skip_mlp(*, num_classes: int, in_channels: int = 3, input_side: int = 28, units: int = 128,
                         skipped: int = 128, tail: int = 8) -> LongSkipMLP:
    for name, value in (("input_side", input_side), ("units", units), ("skipped", skipped)):
        check_positive_int(name, value)
    if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
        raise ValueError(f"tail must be a non-negative integer; got {tail!r}")
    return LongSkipMLP(num_classes=num_classes, in_channels=in_channels, input_side=input_side, units=units,
                       skipped=skipped, tail=tail)


class PlainMLP(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int = 3, input_side: int = 32,
                 units: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        self.resize = nn.AdaptiveAvgPool2d(input_side)
        widths = [in_channels * input_side * input_side, *units]
        self.hidden = nn.Sequential(*(_dense(i, o) for i, o in zip(widths, widths[1:])))
        self.output = nn.Linear(widths[-1], num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(torch.flatten(self.resize(x), 1)))


def check_units(units: Any) -> list[int]:
    """``units``: the hidden layers' widths, a non-empty list of positive integers."""
    if not isinstance(units, (list, tuple)) or not units:
        raise ValueError(f"units must be a non-empty list of positive integers, one per hidden layer "
                         f"(e.g. [256, 128]); got {units!r}")
    for position, count in enumerate(units):
        check_positive_int(f"units[{position}]", count)
    return list(units)


def create_plain_mlp(*, num_classes: int, in_channels: int = 3, input_side: int = 32,
                     units: Sequence[int] = (256, 128)) -> PlainMLP:
    check_positive_int("input_side", input_side)
    return PlainMLP(num_classes=num_classes, in_channels=in_channels, input_side=input_side,
                    units=check_units(units))
