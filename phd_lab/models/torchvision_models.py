"""Building torchvision's classification models by name, for the ``tv:`` model prefix.

The models are built without weights (nothing is downloaded), with ``num_classes`` outputs. For
``in_channels`` other than 3 the first convolution is replaced by one with the same settings and
``in_channels`` inputs, so grayscale datasets work with every architecture. GoogLeNet and
Inception v3 are built without their auxiliary classifiers, so that they train like every other model.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Mapping

import torch
import torchvision
from torch import nn

from phd_lab.errors import ConfigError
from phd_lab.factory_args import check_argument_type
from phd_lab.interrupts import raise_interruption_behind
from phd_lab.registry import did_you_mean


AUXILIARY_HEADS = ("googlenet", "inception_v3")


def classification_models() -> list[str]:
    """Names of torchvision's classification models (no detection/segmentation/video)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def arguments_hint(name: str) -> str:
    """Which keyword arguments tv:``name`` takes, for an error message: those of torchvision's model class (found
    by building it on the meta device), some of which the builder sets itself; where the class cannot be built
    there (RegNet's builders read tensor values), only where to look."""
    where = f"torchvision.models.{name}"
    try:
        with torch.device("meta"):
            model_class = type(torchvision.models.get_model(name, weights=None))
    except Exception as error:  # noqa: BLE001 - any failure only costs the hint
        raise_interruption_behind(error)
        return f"see {where} for the arguments it takes"
    parameters = inspect.signature(model_class.__init__).parameters.values()
    names = [p.name for p in parameters if p.name not in ("self", "num_classes", "weights")
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return (f"its class {model_class.__name__} takes {', '.join(names) or 'no arguments'} ({where} sets some of "
            f"them itself)")


@functools.lru_cache(maxsize=None)
def _model_class_parameters(name: str) -> Mapping[str, inspect.Parameter] | None:
    """The ``__init__`` parameters of torchvision's model class for ``name`` (built once on the meta device), or
    None where it cannot be built there (RegNet's builders read tensor values)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GoogLeNet's FutureWarning about init_weights, which the build sets
            model_class = type(torchvision.models.get_model(name, weights=None))
    except Exception as error:  # noqa: BLE001 - then the builder alone checks its arguments
        raise_interruption_behind(error)
        return None
    return dict(inspect.signature(model_class.__init__).parameters)


def _check_argument_types(name: str, model_args: Mapping[str, Any]) -> None:
    """The types the model class' defaults and annotations give, as for the registry's own factories
    (``factory_args.check_argument_type``): ``"dropout": true`` built Dropout(p=True), which drops everything,
    and ``"zero_init_residual": "no"`` switched zero-init on; the builder's ``**kwargs`` hid both."""
    parameters = _model_class_parameters(name)
    if parameters is None:
        return
    for arg, value in model_args.items():
        if arg in parameters:
            try:
                check_argument_type(parameters[arg], value, f"model_args {arg!r} of 'tv:{name}'")
            except ConfigError as error:
                raise ValueError(str(error).rstrip(".")) from None


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                replacement = nn.Conv2d(
                    in_channels, child.out_channels, kernel_size=child.kernel_size, stride=child.stride,
                    padding=child.padding, dilation=child.dilation, groups=1,
                    bias=child.bias is not None, padding_mode=child.padding_mode)
                # the scale the model's own initialisation gave that layer (torch's default differs: 0.083
                # against 0.025 for ResNet18's stem), which most torchvision models draw by the fan-out
                if child.weight.device.type != "meta":  # a model built for checks has no values to draw
                    with torch.no_grad():
                        nn.init.normal_(replacement.weight, 0.0, float(child.weight.std()))
                        if replacement.bias is not None:
                            nn.init.zeros_(replacement.bias)
                setattr(parent, name, replacement)
                return
    raise ValueError(f"{type(model).__name__} has no Conv2d whose input channels could be set to {in_channels}")


def create_torchvision_model(name: str, *, num_classes: int, in_channels: int = 3, **model_args: Any) -> nn.Module:
    """torchvision's ``name`` with ``num_classes`` outputs and ``in_channels`` inputs, random weights."""
    names = classification_models()
    if name not in names:
        raise ValueError(f"'tv:{name}' is not a torchvision classification model.{did_you_mean(name, names)} "
                         f"Available: {', '.join(names)}")
    if "weights" in model_args:
        raise ValueError("tv: models are built without pretrained weights (nothing is downloaded); "
                         "remove 'weights' from model_args")
    if name in AUXILIARY_HEADS:
        # Their auxiliary classifiers make training-mode outputs a named tuple the loss cannot take; they
        # belong to the original recipes, not to the architecture, so they are always left out.
        if model_args.get("aux_logits"):
            raise ValueError(f"tv:{name} with aux_logits true returns the outputs of its auxiliary classifiers "
                             f"beside the main one in training, but the trainer uses a single output per "
                             f"model; model_args 'aux_logits' must be false (or left out)")
        model_args.setdefault("aux_logits", False)
        # torchvision's own default for both (it warns on every build when the argument is left out)
        model_args.setdefault("init_weights", True)
    _check_argument_types(name, model_args)
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **model_args)
    except TypeError as error:  # an argument the model class does not take: say which it does
        raise ValueError(f"{error}; tv:{name}: {arguments_hint(name)}") from None
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model
