"""A densely connected network (DenseNet-BC, Huang et al. 2017), as in appendix C/F.4.

ImageNet stem (7×7/2 convolution, max-pool 3/2), dense blocks whose layers (BN → ReLU → 1×1
conv to 4·k → BN → ReLU → 3×3 conv to k) see the concatenation of all earlier outputs, and
transitions (BN → ReLU → 1×1 conv halving the channels → 2×2 average pool) between blocks;
final BN → ReLU → global average pooling → linear. ``width`` scales the growth rate k (32) and
the stem filters (64). With (6, 12, 24, 16) layers per block and width 1 the parameter count
equals torchvision's DenseNet121.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from phd_lab.models.common import check_width, scaled
from phd_lab.models.init import kaiming_init

BLOCKS: dict[str, tuple[int, ...]] = {
    "densenet18": (4, 4, 4, 4),
    "densenet65": (6, 8, 12, 6),
    "densenet121": (6, 12, 24, 16),
}
BOTTLENECK_FACTOR = 4


class DenseLayer(nn.Module):
    """Bottleneck layer producing ``growth`` new channels from all previous ones."""

    def __init__(self, in_ch: int, growth: int) -> None:
        super().__init__()
        hidden = BOTTLENECK_FACTOR * growth
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()  # not in-place: x is also concatenated into the block output
        self.conv1 = nn.Conv2d(in_ch, hidden, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(out)))


class DenseBlock(nn.Module):
    def __init__(self, in_ch: int, layers: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_ch + i * growth, growth) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transition(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True),
                         nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False), nn.AvgPool2d(2, 2, ceil_mode=True))


class DenseNet(nn.Module):
    def __init__(self, blocks: Sequence[int], *, num_classes: int, in_channels: int = 3,
                 width: float = 1.0) -> None:
        super().__init__()
        growth = scaled(32, width)
        channels = scaled(64, width)
        modules: list[nn.Module] = [nn.Conv2d(in_channels, channels, 7, stride=2, padding=3, bias=False),
                                    nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                    nn.MaxPool2d(3, stride=2, padding=1)]
        for index, layers in enumerate(blocks):
            modules.append(DenseBlock(channels, layers, growth))
            channels += layers * growth
            if index < len(blocks) - 1:
                modules.append(Transition(channels, channels // 2))
                channels //= 2
        modules += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*modules)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def create_densenet(variant: str, *, num_classes: int, in_channels: int = 3, width: float = 1.0) -> DenseNet:
    if variant not in BLOCKS:
        raise ValueError(f"DenseNet variant must be one of {sorted(BLOCKS)}; got {variant!r}")
    return DenseNet(BLOCKS[variant], num_classes=num_classes, in_channels=in_channels, width=check_width(width))
