"""Weight initialisation used by every family: Kaiming-He (fan-out, ReLU) for convolutions and linear layers.

The thesis states no initialisation; the convolutions follow torchvision's ResNets. Known issue: on the
output layer the fan-out is the number of classes, so the first batch's logits are 5–20× larger than with
fan-in (training-mode loss 6–25 at 10 classes for VGG/ResNet/MPNet/DenseNet, 2.4–3.3 with fan-in; chance is
2.3). docs/initialisation.md measures what that costs on the tail demo: 71–79 % instead of 96–99.7 % test
accuracy at 16 px (three seeds), and the demo's tail sits at the border only under this setting (2–3
convolutions later with fan-in or torch's default). The dissertation author's own code drew VGG's Linear
layers from N(0, 0.01) and left ResNet's at torch's default; ``model_args`` ``linear_init``
(``redraw_linear_layers``) selects either for any model, and changing the default waits for the steps that
document lists.
"""

from __future__ import annotations

from torch import nn

# model_args "linear_init": how every nn.Linear of a built model is drawn again (null: as the model draws it)
LINEAR_INITS = {
    "fan_in": "Kaiming normal with fan-in (ReLU gain), zero bias",
    "normal": "N(0, 0.01), zero bias (the dissertation author's VGG code, torchvision's VGG)",
    "torch": "torch's own nn.Linear default (the dissertation author's ResNet code, torchvision's ResNet)",
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


def redraw_linear_layers(model: nn.Module, scheme: str) -> None:
    """Draw every Linear layer of ``model`` again by ``scheme`` (a key of LINEAR_INITS), in module order, from
    torch's global generator: the same seed gives the same weights. The convolutions keep their draw."""
    if scheme not in LINEAR_INITS:
        raise ValueError(f"linear_init must be one of {sorted(LINEAR_INITS)} or null; got {scheme!r}")
    for layer in model.modules():
        if not isinstance(layer, nn.Linear):
            continue
        if scheme == "torch":
            layer.reset_parameters()
            continue
        if scheme == "fan_in":
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.normal_(layer.weight, 0.0, 0.01)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
