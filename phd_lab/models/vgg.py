"""The VGG family (Simonyan & Zisserman 2015) with a width factor, as used in the thesis."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from phd_lab.models.init import kaiming_init

# Filters per conv layer; "M" is a 2×2 max-pool.
LAYOUTS: dict[str, Sequence[int | str]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),  # VGG11
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),  # VGG13
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),  # VGG16
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),  # VGG19
}


def scaled(filters: int, width: float) -> int:
    """Filters after applying the width factor (at least one)."""
    return max(1, int(round(filters * width)))


class VGG(nn.Module):
    """Conv feature extractor, global average pooling and a linear classifier."""

    def __init__(self, layout: Sequence[int | str], *, num_classes: int, in_channels: int = 3,
                 width: float = 1.0, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
                continue
            out = scaled(int(item), width)
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def create_vgg(layout: str, *, num_classes: int, in_channels: int = 3, width: float = 1.0,
               batch_norm: bool = False) -> VGG:
    if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
        raise ValueError(f"width must be a positive number; got {width!r}")
    return VGG(LAYOUTS[layout], num_classes=num_classes, in_channels=in_channels, width=float(width),
               batch_norm=batch_norm)
