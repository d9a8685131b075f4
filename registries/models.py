"""Model registry: ``f(*, num_classes, in_channels=3, **model_args) -> nn.Module``."""

from __future__ import annotations

from torch import nn

from phd_lab.models.vgg import create_vgg


def vgg11(*, num_classes: int, in_channels: int = 3, width: float = 1.0, batch_norm: bool = False) -> nn.Module:
    """VGG11 (layout A) with global average pooling and a width factor."""
    return create_vgg("A", num_classes=num_classes, in_channels=in_channels, width=width, batch_norm=batch_norm)
