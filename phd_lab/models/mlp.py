"""The deep MLP with one long skip connection (§4.3, figure 34; after Alain & Bengio 2017).

The image is average-pooled to ``input_side``×``input_side`` (an identity at that resolution,
28 for MNIST) and flattened. A first layer maps it to ``units`` units; ``skipped`` further layers
follow, and their output is added to the first layer's output (the long skip connection); then
``tail`` more layers and the linear output layer. Every hidden layer is Linear → ReLU. The
thesis' variant: 128 units, 128 skipped layers, 8 tail layers, which lets the network learn to
"skip" the encapsulated layers (their probe accuracy decays to chance level).
"""

from __future__ import annotations

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
