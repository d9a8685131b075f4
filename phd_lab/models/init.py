"""Weight initialisation used by every family (Kaiming-He, as in the thesis)."""

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
