"""Weight initialisation: the families' Kaiming-He draw, and the framework's draw of Linear layers after it.

The thesis initialises "all models" by Kaiming-He (§8.3.1, §10.1.1) without naming the mode; the families'
convolutions follow torchvision's ResNets (Kaiming normal, fan-out). The families draw their Linear layers the
same way, which suits square hidden layers (mlp_long_skip's 137) but not the output layer: there the fan-out
is the number of classes, so the first batch's logits are 5-20x too large (training-mode loss 6-25 at 10
classes; chance is 2.3). docs/initialisation.md measures the cost on the tail demo: 71-79 % instead of
96-99.7 % test accuracy at 16 px over three seeds. Since 0.2 the framework therefore draws the output layer
(the model's last Linear layer) again with torch's own default, a departure from the thesis' Kaiming-He for
every layer (``model_args`` ``linear_init``, default ``"torch_output"``); the other schemes draw every Linear
layer, and null keeps the model's own draw, which reruns of 0.1 runs use.
"""

from __future__ import annotations

from torch import nn

# model_args "linear_init": how the Linear layers of a built model are drawn again (null: as the model drew them)
LINEAR_INITS = {
    "torch_output": "the default: the output layer (the last Linear layer) with torch's own nn.Linear default, "
                    "every other layer as the model drew it",
    "torch": "every Linear layer with torch's own default (the thesis author's ResNet code, torchvision's ResNet)",
    "fan_in": "every Linear layer Kaiming normal with fan-in (ReLU gain), zero bias",
    "normal": "every Linear layer N(0, 0.01), zero bias (the thesis author's VGG code, torchvision's VGG)",
    "fan_out": "every Linear layer Kaiming normal with fan-out (ReLU gain), zero bias: the distribution of the "
               "families' own draw (null keeps that draw itself)",
}


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


def output_layer(model: nn.Module) -> nn.Linear | None:
    """The model's output layer: its last Linear layer in module order (for every model of the registry, and
    torchvision's classifiers, the one that gives the logits); None for a model without Linear layers."""
    linear = [layer for layer in model.modules() if isinstance(layer, nn.Linear)]
    return linear[-1] if linear else None


def redraw_linear_layers(model: nn.Module, scheme: str) -> None:
    """Draw the Linear layers of ``model`` again by ``scheme`` (a key of LINEAR_INITS), in module order, from
    torch's global generator: the same seed gives the same weights. The convolutions keep their draw."""
    if scheme not in LINEAR_INITS:
        raise ValueError(f"linear_init must be one of {sorted(LINEAR_INITS)} or null; got {scheme!r}")
    if scheme == "torch_output":
        layer = output_layer(model)
        if layer is not None:
            layer.reset_parameters()
        return
    for layer in model.modules():
        if not isinstance(layer, nn.Linear):
            continue
        if scheme == "torch":
            layer.reset_parameters()
            continue
        if scheme in ("fan_in", "fan_out"):
            nn.init.kaiming_normal_(layer.weight, mode=scheme, nonlinearity="relu")
        else:
            nn.init.normal_(layer.weight, 0.0, 0.01)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
