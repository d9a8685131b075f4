"""The ResNet family (He et al. 2016) in the variants the thesis studies (§3.3, §9.4, §10.1).

- ``stem="imagenet"``: 7×7 stride-2 convolution and 3×3 stride-2 max-pool (the original design);
  ``stem="cifar"``: one 3×3 stride-1 convolution and no max-pool (the Cifar10-optimised variant
  whose receptive field is about a quarter of the ImageNet one by the layer arithmetic, 109 against
  435 px for ResNet18; §9.4 says "approximately a factor of 8").
- ``width`` scales every filter count (64, 128, 256, 512 per stage; bottleneck ×4).
- ``skip=False`` removes the residual connection *and* the projection shortcut, which turns the
  network into a sequential one ("ResNet18NoSkip" of §9.3/§10.1).
- ``attention`` ∈ {None, "se", "sa", "cbam"} adds the module to the residual branch of every
  block, before the shortcut is added (§10.1).

At width 1 with the ImageNet stem the parameter counts equal torchvision's (ResNet18 with 1,000
classes: 11,689,512). Every module but CBAM's shared channel MLP (run on the average- and the
max-pooled map) is used once per forward pass, and the forward pass has no data-dependent
branches (``torch.fx`` traceable).
"""

from __future__ import annotations

from typing import Sequence, Type

import torch
from torch import nn

from phd_lab.models.attention import ATTENTION_KINDS, make_attention
from phd_lab.models.common import check_choice, check_width, scaled
from phd_lab.models.init import kaiming_init

STEMS = ("imagenet", "cifar")


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)
    return conv, nn.BatchNorm2d(out_ch)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions; the first may be strided (ResNet18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, *, skip: bool = True,
                 attention: str | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_ch, planes, 3, stride)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.attention = make_attention(attention, planes)
        self.skip = skip
        self.downsample = _shortcut(in_ch, planes, stride) if skip else None
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        if self.skip:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu2(out)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4 (ResNet50)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, *, skip: bool = True,
                 attention: str | None = None) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_ch, planes, 1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3, self.bn3 = _conv_bn(planes, out_ch, 1)
        self.attention = make_attention(attention, out_ch)
        self.skip = skip
        self.downsample = _shortcut(in_ch, out_ch, stride) if skip else None
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.attention(self.bn3(self.conv3(out)))
        if self.skip:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu3(out)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """Projection shortcut (1×1 conv + BN) where shape changes; None means identity."""
    if stride == 1 and in_ch == out_ch:
        return None
    conv, bn = _conv_bn(in_ch, out_ch, 1, stride)
    return nn.Sequential(conv, bn)


class ResNet(nn.Module):
    """Stem, four stages of blocks (stages 2–4 start strided), global average pool, linear layer."""

    def __init__(self, block: Type[BasicBlock | Bottleneck], layers: Sequence[int], *, num_classes: int,
                 in_channels: int = 3, width: float = 1.0, stem: str = "imagenet", skip: bool = True,
                 attention: str | None = None) -> None:
        super().__init__()
        base = scaled(64, width)
        if stem == "imagenet":
            self.conv1, self.bn1 = _conv_bn(in_channels, base, 7, 2)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1, self.bn1 = _conv_bn(in_channels, base, 3, 1)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.Identity()
        channels = base
        stages = []
        for index, (filters, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            planes = scaled(filters, width)
            stage = []
            for position in range(blocks):
                stride = 2 if index > 0 and position == 0 else 1
                stage.append(block(channels, planes, stride, skip=skip, attention=attention))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


DEPTHS: dict[int, tuple[Type[BasicBlock | Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


def create_resnet(depth: int, *, num_classes: int, in_channels: int = 3, width: float = 1.0,
                  stem: str = "imagenet", skip: bool = True, attention: str | None = None) -> ResNet:
    """Family builder: validate the arguments and build ResNet{depth}."""
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}; got {depth!r}")
    check_choice("stem", stem, STEMS)
    check_choice("attention", attention, ATTENTION_KINDS)
    if not isinstance(skip, bool):
        raise ValueError(f"skip must be true or false; got {skip!r}")
    block, layers = DEPTHS[depth]
    return ResNet(block, layers, num_classes=num_classes, in_channels=in_channels, width=check_width(width),
                  stem=stem, skip=skip, attention=attention)
