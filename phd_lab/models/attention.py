"""Attention add-ons of §3.3.6/§10.1: squeeze-and-excitation, spatial attention and CBAM.

Each module multiplies a dynamically computed weight onto its input and returns a tensor of
the input's shape, so a block can apply it to the output of its residual path. None of them
has data-dependent control flow, so models using them stay ``torch.fx`` traceable.

The gates are the sigmoids of the cited papers (Hu et al. 2018, Woo et al. 2018), not the softmax that §3.3.6
describes: a softmax over a block's channels (or positions) would scale its residual branch down by their count
(configs/thesis/README.md, "Choices where the thesis is silent or inconsistent").
"""

from __future__ import annotations

import torch
from torch import nn

from phd_lab.models.common import check_choice

ATTENTION_KINDS = (None, "se", "sa", "cbam")


class SqueezeExcitation(nn.Module):
    """Hu et al. (2018): global average pool → bottleneck MLP → sigmoid channel weights."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class ChannelAttention(nn.Module):
    """CBAM's channel branch (Woo et al. 2018): shared MLP over average- and max-pooled maps."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.max = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))
        self.mlp.pools_repeated_calls = True  # run on both pooled maps: its saturation pools both, as meant
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.mlp(self.avg(x)) + self.mlp(self.max(x)))


class SpatialAttention(nn.Module):
    """Spatial attention (Woo et al. 2018): 7×7 conv over channel-mean and channel-max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional block attention module: channel attention followed by spatial attention."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def make_attention(kind: str | None, channels: int) -> nn.Module:
    """The attention module of ``kind`` (None → identity) for a feature map of ``channels``."""
    if kind is None:
        return nn.Identity()
    if kind == "se":
        return SqueezeExcitation(channels)
    if kind == "sa":
        return SpatialAttention()
    if kind == "cbam":
        return CBAM(channels)
    check_choice("attention", kind, ATTENTION_KINDS)
    raise AssertionError(kind)  # every kind is handled above
