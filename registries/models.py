"""Model registry: ``f(*, num_classes, in_channels=3, **model_args) -> nn.Module``.

Every entry is a one-line builder over a family builder in ``phd_lab/models``; the function name
is the config name. Common ``model_args``: ``width`` (filter-count factor, any positive float).
VGG: ``batch_norm``, ``dilation``, ``head`` ("mlp" | "linear"). ResNet: ``stem`` ("imagenet" |
"cifar"), ``skip``, ``attention`` (null | "se" | "sa" | "cbam"). MLPs: ``input_side``; ``mlp``'s
``units`` lists the hidden layers' widths, so a config writes it as a list of lists (``[[256, 128]]``).
A name ``tv:<name>`` builds any torchvision classification model (e.g. ``tv:resnet50``,
``tv:efficientnet_b0``) without weights.

To add your own model, write a module with a function of this signature and pass it as
``"registries": {"models": "my_models.py"}`` in the config.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from phd_lab.models.autoencoder import create_conv_autoencoder
from phd_lab.models.densenet import create_densenet
from phd_lab.models.mlp import create_long_skip_mlp, create_plain_mlp
from phd_lab.models.mpnet import create_mpnet
from phd_lab.models.resnet import create_resnet
from phd_lab.models.torchvision_models import classification_models, create_torchvision_model
from phd_lab.models.vgg import create_vgg

# ----------------------------------------------------------------------------------------- VGG


def vgg11(*, num_classes: int, in_channels: int = 3, width: float = 1.0, batch_norm: bool = True,
          dilation: int = 1, head: str = "mlp") -> nn.Module:
    """VGG11 (layout A): 8 conv layers, 5 pools, GAP readout; width, batch_norm, dilation, head."""
    return create_vgg("A", num_classes=num_classes, in_channels=in_channels, width=width, batch_norm=batch_norm,
                      dilation=dilation, head=head)


def vgg13(*, num_classes: int, in_channels: int = 3, width: float = 1.0, batch_norm: bool = True,
          dilation: int = 1, head: str = "mlp") -> nn.Module:
    """VGG13 (layout B): 10 conv layers, 5 pools, GAP readout; width, batch_norm, dilation, head."""
    return create_vgg("B", num_classes=num_classes, in_channels=in_channels, width=width, batch_norm=batch_norm,
                      dilation=dilation, head=head)


def vgg16(*, num_classes: int, in_channels: int = 3, width: float = 1.0, batch_norm: bool = True,
          dilation: int = 1, head: str = "mlp") -> nn.Module:
    """VGG16 (layout D): 13 conv layers, 5 pools, GAP readout; width, batch_norm, dilation, head."""
    return create_vgg("D", num_classes=num_classes, in_channels=in_channels, width=width, batch_norm=batch_norm,
                      dilation=dilation, head=head)


def vgg19(*, num_classes: int, in_channels: int = 3, width: float = 1.0, batch_norm: bool = True,
          dilation: int = 1, head: str = "mlp") -> nn.Module:
    """VGG19 (layout E): 16 conv layers, 5 pools, GAP readout; width, batch_norm, dilation, head."""
    return create_vgg("E", num_classes=num_classes, in_channels=in_channels, width=width, batch_norm=batch_norm,
                      dilation=dilation, head=head)


def vgg19_dilated(*, num_classes: int, in_channels: int = 3, width: float = 1.0, batch_norm: bool = True,
                  dilation: int = 3, head: str = "mlp") -> nn.Module:
    """VGG19 with every convolution dilated by 3, pools undilated (the thesis' variant, §9.3)."""
    return create_vgg("E", num_classes=num_classes, in_channels=in_channels, width=width, batch_norm=batch_norm,
                      dilation=dilation, head=head)


# -------------------------------------------------------------------------------------- ResNet


def resnet18(*, num_classes: int, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet",
             skip: bool = True, attention: str | None = None) -> nn.Module:
    """ResNet18 (basic blocks 2-2-2-2); ImageNet stem by default; width, stem, skip, attention."""
    return create_resnet(18, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=skip,
                         attention=attention)


def resnet34(*, num_classes: int, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet",
             skip: bool = True, attention: str | None = None) -> nn.Module:
    """ResNet34 (basic blocks 3-4-6-3); ImageNet stem by default; width, stem, skip, attention."""
    return create_resnet(34, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=skip,
                         attention=attention)


def resnet50(*, num_classes: int, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet",
             skip: bool = True, attention: str | None = None) -> nn.Module:
    """ResNet50 (bottleneck blocks 3-4-6-3); ImageNet stem by default; width, stem, skip, attention."""
    return create_resnet(50, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=skip,
                         attention=attention)


def resnet18_cifar(*, num_classes: int, in_channels: int = 3, width: float = 1.0, skip: bool = True,
                   attention: str | None = None) -> nn.Module:
    """ResNet18 with the Cifar stem (one 3×3 stride-1 conv, no max-pool)."""
    return create_resnet(18, num_classes=num_classes, in_channels=in_channels, width=width, stem="cifar",
                         skip=skip, attention=attention)


def resnet34_cifar(*, num_classes: int, in_channels: int = 3, width: float = 1.0, skip: bool = True,
                   attention: str | None = None) -> nn.Module:
    """ResNet34 with the Cifar stem (one 3×3 stride-1 conv, no max-pool)."""
    return create_resnet(34, num_classes=num_classes, in_channels=in_channels, width=width, stem="cifar",
                         skip=skip, attention=attention)


def resnet50_cifar(*, num_classes: int, in_channels: int = 3, width: float = 1.0, skip: bool = True,
                   attention: str | None = None) -> nn.Module:
    """ResNet50 with the Cifar stem (one 3×3 stride-1 conv, no max-pool)."""
    return create_resnet(50, num_classes=num_classes, in_channels=in_channels, width=width, stem="cifar",
                         skip=skip, attention=attention)


def resnet18_noskip(*, num_classes: int, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet",
                    attention: str | None = None) -> nn.Module:
    """ResNet18 without residual connections (sequential; "ResNet18NoSkip", §9.3)."""
    return create_resnet(18, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=False,
                         attention=attention)


def resnet34_noskip(*, num_classes: int, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet",
                    attention: str | None = None) -> nn.Module:
    """ResNet34 without residual connections (sequential)."""
    return create_resnet(34, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=False,
                         attention=attention)


def resnet18_se(*, num_classes: int, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet",
                skip: bool = True) -> nn.Module:
    """ResNet18 with squeeze-and-excitation in every block (§10.1)."""
    return create_resnet(18, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=skip,
                         attention="se")


def resnet18_sa(*, num_classes: int, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet",
                skip: bool = True) -> nn.Module:
    """ResNet18 with spatial attention in every block (§10.1)."""
    return create_resnet(18, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=skip,
                         attention="sa")


def resnet18_cbam(*, num_classes: int, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet",
                  skip: bool = True) -> nn.Module:
    """ResNet18 with CBAM (channel + spatial attention) in every block (§10.1)."""
    return create_resnet(18, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=skip,
                         attention="cbam")


def resnet18_noskip_se(*, num_classes: int, in_channels: int = 3, width: float = 1.0,
                       stem: str = "imagenet") -> nn.Module:
    """ResNet18NoSkip with squeeze-and-excitation in every block (§10.1)."""
    return create_resnet(18, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=False,
                         attention="se")


def resnet18_noskip_sa(*, num_classes: int, in_channels: int = 3, width: float = 1.0,
                       stem: str = "imagenet") -> nn.Module:
    """ResNet18NoSkip with spatial attention in every block (§10.1)."""
    return create_resnet(18, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=False,
                         attention="sa")


def resnet18_noskip_cbam(*, num_classes: int, in_channels: int = 3, width: float = 1.0,
                         stem: str = "imagenet") -> nn.Module:
    """ResNet18NoSkip with CBAM in every block (§10.1)."""
    return create_resnet(18, num_classes=num_classes, in_channels=in_channels, width=width, stem=stem, skip=False,
                         attention="cbam")


# ------------------------------------------------------------------------- multipath and dense


def mpnet18(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """MPNet18 (§10.2): 4 stages × 2 blocks of a 3×3 and a 7×7 path (2 layers each) joined by addition."""
    return create_mpnet("mpnet18", num_classes=num_classes, in_channels=in_channels, width=width)


def mpnet36(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """MPNet36 (§10.2): 4 stages × 4 blocks of a 1-layer 3×3 path and a 2-layer 7×7 path."""
    return create_mpnet("mpnet36", num_classes=num_classes, in_channels=in_channels, width=width)


def densenet18(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """DenseNet18 (appendix C/F.4): DenseNet-BC, growth 32, dense blocks of 4-4-4-4 layers."""
    return create_densenet("densenet18", num_classes=num_classes, in_channels=in_channels, width=width)


def densenet65(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """DenseNet65 (appendix F.4): DenseNet-BC, growth 32, dense blocks of 6-8-12-6 layers."""
    return create_densenet("densenet65", num_classes=num_classes, in_channels=in_channels, width=width)


def densenet121(*, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """DenseNet121: DenseNet-BC, growth 32, dense blocks of 6-12-24-16 layers."""
    return create_densenet("densenet121", num_classes=num_classes, in_channels=in_channels, width=width)


def conv_autoencoder(*, num_classes: int, in_channels: int = 3, output_activation: str | None = "relu") -> nn.Module:
    """Convolutional autoencoder of §7.2 (Table 1), trained to reconstruct its input (MSE); side divisible by 8."""
    return create_conv_autoencoder(num_classes=num_classes, in_channels=in_channels,
                                   output_activation=output_activation)


conv_autoencoder.phd_lab_objective = "reconstruction"  # type: ignore[attr-defined]  # checked before it is built


def mlp(*, num_classes: int, in_channels: int = 3, input_side: int = 32,
        units: tuple[int, ...] = (256, 128)) -> nn.Module:
    """Plain MLP: a Linear-ReLU layer per entry of the list units, then the output layer (appendix B.1: [256, k])."""
    return create_plain_mlp(num_classes=num_classes, in_channels=in_channels, input_side=input_side, units=units)


def mlp_long_skip(*, num_classes: int, in_channels: int = 3, input_side: int = 28, units: int = 128,
                  skipped: int = 128, tail: int = 8) -> nn.Module:
    """Deep MLP with one long skip over 128 layers, then 8 more (§4.3, after Alain & Bengio)."""
    return create_long_skip_mlp(num_classes=num_classes, in_channels=in_channels, input_side=input_side,
                                units=units, skipped=skipped, tail=tail)


# ------------------------------------------------------------------------------- torchvision


def _torchvision(name: str, *, num_classes: int, in_channels: int = 3, **model_args: Any) -> nn.Module:
    """Any torchvision classification model, e.g. ``tv:resnet50``, without pretrained weights."""
    return create_torchvision_model(name, num_classes=num_classes, in_channels=in_channels, **model_args)


_torchvision.names = classification_models  # the names after "tv:" (checked before anything is built)
PREFIXES = {"tv:": _torchvision}
