"""Weight initialisation: the families' Kaiming-He draw, and the framework's draw of Linear layers after it.

The thesis states no initialisation; the families' convolutions follow torchvision's ResNets (Kaiming
normal, fan-out). The families draw their Linear layers the same way, but on the output layer the fan-out is
the number of classes, so the first batch's logits are 5-20x too large (training-mode loss 6-25 at 10
classes; chance is 2.3). docs/initialisation.md measures the cost on the tail demo: 71-79 % instead of
96-99.7 % test accuracy at 16 px over three seeds. Since 0.2 the framework therefore draws every Linear layer
of a built model again (``model_args`` ``linear_init``, default ``"torch"``: torch's own default, as the
dissertation author's ResNet code); null keeps the model's own draw, which reruns of 0.1 runs use.
"""

from __future__ import annotations

from torch import nn

# model_args "linear_init": how every nn.Linear of a built model is drawn again (null: as the model drew it)
LINEAR_INITS = {
    "torch": "torch's own nn.Linear default, the default (the thesis author's ResNet code, torchvision's ResNet)",
    "fan_in": "Kaiming normal with fan-in (ReLU gain), zero bias",
    "normal": "N(0, 0.01), zero bias (the dissertation author's VGG code, torchvision's VGG)",
    "fan_out": "Kaiming normal with fan-out (ReLU gain), zero bias: the families' own draw, phd-lab before 0.2",
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
        if scheme in ("fan_in", "fan_out"):
            nn.init.kaiming_normal_(layer.weight, mode=scheme, nonlinearity="relu")
        else:
            nn.init.normal_(layer.weight, 0.0, 0.01)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
