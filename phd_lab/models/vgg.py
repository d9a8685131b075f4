"""The VGG family (Simonyan & Zisserman 2015) as used in the thesis (§3.2, §8.4, §9.3).

Feature extractor: the layouts A/B/D/E (VGG11/13/16/19) of 3×3 "same"-padded convolutions
(optionally batch-normalised) and 2×2 max-pools. ``width`` scales every filter count (the width
study of §8.4 uses 1, ½, ¼, ⅛, 1/16; any positive float works). ``dilation`` dilates every
convolution (the thesis' VGG19 with dilation 3, §9.3); the pools stay undilated and the padding
grows with the dilation so that convolutions keep the feature-map size.

Readout and classifier: global average pooling, so one model runs at any resolution (§3.2.4).
``head="mlp"`` is the classifier of the PHD-Lab VGGs used for the thesis' experiments
(BN → dropout 0.25 → linear to half the width → ReLU → BN → dropout 0.25 → linear);
``head="linear"`` is a single linear layer (the modern design of §3.2.1).

Small inputs: the pools use ``ceil_mode=True``. For even sizes this is identical to the usual
floor mode; for odd sizes it keeps the last row/column, and a 1×1 map stays 1×1 instead of
collapsing to 0×0. So all five pools are always applied (the layer sequence — and with it the
receptive field arithmetic — does not depend on the input size), and VGG16 runs at 16×16 or even
8×8 inputs, where the last pools just pass 1×1 maps through. Skipping pools at run time would need
data-dependent control flow and break ``torch.fx`` tracing.

Convolutions keep their bias even with batch norm, as in the thesis' code and torchvision, so the
feature extractor's parameter count equals torchvision's ``vgg*`` / ``vgg*_bn`` features.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from phd_lab.models.common import check_choice, check_positive_int, check_width, scaled
from phd_lab.models.init import kaiming_init

# Filters per conv layer; "M" is a 2×2 max-pool.
LAYOUTS: dict[str, Sequence[int | str]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),  # VGG11
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),  # VGG13
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),  # VGG16
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),  # VGG19
}
HEADS = ("mlp", "linear")
HEAD_DROPOUT = 0.25


def make_features(layout: Sequence[int | str], *, in_channels: int, width: float, batch_norm: bool,
                  dilation: int) -> tuple[nn.Sequential, int]:
    """The convolutional feature extractor and its number of output channels."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            continue
        out = scaled(int(item), width)
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=dilation, dilation=dilation))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers), channels


def make_head(channels: int, num_classes: int, head: str) -> nn.Module:
    if head == "linear":
        return nn.Linear(channels, num_classes)
    hidden = max(1, channels // 2)
    return nn.Sequential(nn.BatchNorm1d(channels), nn.Dropout(HEAD_DROPOUT), nn.Linear(channels, hidden),
                         nn.ReLU(inplace=True), nn.BatchNorm1d(hidden), nn.Dropout(HEAD_DROPOUT),
                         nn.Linear(hidden, num_classes))


class VGG(nn.Module):
    """Conv feature extractor, global average pooling and a classifier head."""

    def __init__(self, layout: Sequence[int | str], *, num_classes: int, in_channels: int = 3,
                 width: float = 1.0, batch_norm: bool = True, dilation: int = 1, head: str = "mlp") -> None:
        super().__init__()
        self.features, channels = make_features(layout, in_channels=in_channels, width=width,
                                                batch_norm=batch_norm, dilation=dilation)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = make_head(channels, num_classes, head)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def create_vgg(layout: str, *, num_classes: int, in_channels: int = 3, width: float = 1.0,
               batch_norm: bool = True, dilation: int = 1, head: str = "mlp") -> VGG:
    """Family builder: validate the arguments and build the VGG of ``layout`` (A, B, D, E)."""
    if layout not in LAYOUTS:
        raise ValueError(f"VGG layout must be one of {sorted(LAYOUTS)}; got {layout!r}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be true or false; got {batch_norm!r}")
    check_choice("head", head, HEADS)
    return VGG(LAYOUTS[layout], num_classes=num_classes, in_channels=in_channels, width=check_width(width),
               batch_norm=batch_norm, dilation=check_positive_int("dilation", dilation), head=head)
