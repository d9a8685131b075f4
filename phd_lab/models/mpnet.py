"""The multipath "model organisms" of §10.2: MPNet18 and MPNet36.

A 3×3 stride-1 stem (64 filters), then 4 stages of ``blocks`` multipath blocks with 64, 128, 256
and 512 filters (× ``width``), global average pooling and a linear classifier. A block runs
several sequential paths of convolution → batch norm → ReLU ("same" padding) on its input and
joins them by element-wise addition (no 1×1 convolutions, no concatenation). The first layer of
every path in the first block of each stage has stride 2.

- MPNet18: 2 blocks per stage; each block a 3×3 path and a 7×7 path of 2 layers each (18 layers
  deep along either path counting stem and classifier, 34 layers in total, as in §10.2).
- MPNet36: 4 blocks per stage ("double the amount of building blocks"); paths of unequal depth,
  one 3×3 layer and two 7×7 layers, so r_min and r_max drift apart faster.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from phd_lab.models.common import check_positive_int, check_width, scaled
from phd_lab.models.init import kaiming_init

# (layers, kernel size) per path
Path = tuple[int, int]
VARIANTS: dict[str, tuple[int, tuple[Path, ...]]] = {
    "mpnet18": (2, ((2, 3), (2, 7))),
    "mpnet36": (4, ((1, 3), (2, 7))),
}


def _path(in_ch: int, out_ch: int, layers: int, kernel: int, stride: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    for index in range(layers):
        modules += [nn.Conv2d(in_ch if index == 0 else out_ch, out_ch, kernel_size=kernel,
                              stride=stride if index == 0 else 1, padding=kernel // 2, bias=False),
                    nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
    return nn.Sequential(*modules)


class MultipathBlock(nn.Module):
    """Parallel sequential paths over the same input, joined by addition."""

    def __init__(self, in_ch: int, out_ch: int, paths: Sequence[Path], stride: int) -> None:
        super().__init__()
        self.paths = nn.ModuleList(_path(in_ch, out_ch, layers, kernel, stride) for layers, kernel in paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.paths[0](x)
        for path in self.paths[1:]:
            out = out + path(x)
        return out


class MPNet(nn.Module):
    """Stem, four stages of multipath blocks, global average pooling, linear classifier."""

    def __init__(self, blocks: int, paths: Sequence[Path], *, num_classes: int, in_channels: int = 3,
                 width: float = 1.0) -> None:
        super().__init__()
        channels = scaled(64, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        stages = []
        for filters in (64, 128, 256, 512):
            out = scaled(filters, width)
            stage = []
            for position in range(blocks):
                stage.append(MultipathBlock(channels, out, paths, stride=2 if position == 0 else 1))
                channels = out
            stages.append(nn.Sequential(*stage))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def create_mpnet(variant: str, *, num_classes: int, in_channels: int = 3, width: float = 1.0,
                 blocks: int | None = None) -> MPNet:
    """Family builder; ``blocks`` overrides the blocks per stage of the variant."""
    if variant not in VARIANTS:
        raise ValueError(f"MPNet variant must be one of {sorted(VARIANTS)}; got {variant!r}")
    default_blocks, paths = VARIANTS[variant]
    blocks = default_blocks if blocks is None else check_positive_int("blocks", blocks)
    return MPNet(blocks, paths, num_classes=num_classes, in_channels=in_channels, width=check_width(width))
