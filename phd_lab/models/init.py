"""Weight initialisation: the families' Kaiming-He draw, and the framework's draw of Linear layers after it.

The thesis initialises "all models" by Kaiming-He (§8.3.1, §10.1.1) without naming the mode; the families'
convolutions follow torchvision's ResNets (Kaiming normal, fan-out). The families draw their Linear layers the
same way, which suits square hidden layers (mlp_long_skip's 137) but not the output layer: there the fan-out
is the number of classes, so the first batch's logits are 5-20x too large (training-mode loss 6-25 at 10
classes; chance is 2.3). docs/initialisation.md measures the cost on the tail demo: 71-79 % instead of
96-99.7 % test accuracy at 16 px over three seeds. Since 0.2 the framework therefore draws the output
layer (the last Linear layer the forward pass calls) again with torch's own default, a departure from the
thesis' Kaiming-He for every layer (``model_args`` ``linear_init``, default ``"torch_output"``); the other
schemes draw every Linear layer, and null keeps the model's own draw, which reruns of 0.1 runs use.
"""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any

import torch
from torch import nn

from phd_lab.interrupts import raise_interruption_behind

log = logging.getLogger(__name__)

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


def output_layer(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Linear | None:
    """The Linear layer that gives the model's output: the last one its forward pass calls (traced on meta
    copies of the weights, for one input of ``input_shape``, e.g. (channels, height, width)), None where no
    Linear layer is called or a convolution follows the last one (a conv head; an SE block's Linear layers
    are no output layer). Without a shape, or for a model that cannot run on the meta device, the last
    Linear layer in module order, which is the same layer for every model of the registry and torchvision's
    classifiers, but not for a model that registers a block after its classifier."""
    linear = [layer for layer in model.modules() if isinstance(layer, nn.Linear)]
    if not linear:
        return None
    if input_shape is not None:
        try:
            return _last_called_linear(model, input_shape)
        except Exception as error:  # noqa: BLE001 - any model code; module order is the documented fallback
            raise_interruption_behind(error)
            log.debug("The output layer is the last Linear layer in module order: the forward pass cannot be traced "
                      "on the meta device (%s: %s).", type(error).__name__, error)
    return linear[-1]


def _output_layer_note(model: nn.Module, layer: nn.Linear | None) -> str | None:
    """What "torch_output" drew where the output layer is not the last Linear layer in module order."""
    names = {module: name for name, module in model.named_modules()}
    last = [name for module, name in names.items() if isinstance(module, nn.Linear)][-1:]
    if layer is None and last:
        return (f"model_args linear_init 'torch_output': no Linear layer gives the model's output (a convolution "
                f"runs after the last one its forward pass calls), so every layer keeps the model's draw; earlier "
                f"releases of phd-lab drew {last[0]!r} again, the last Linear layer in module order.")
    if layer is not None and names[layer] != last[0]:
        return (f"model_args linear_init 'torch_output': the output layer {names[layer]!r} (the last Linear layer "
                f"the forward pass calls) is drawn again with torch's default; {last[0]!r}, registered after it, "
                f"keeps the model's draw (earlier releases of phd-lab drew {last[0]!r} instead).")
    return None


def _last_called_linear(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Linear | None:
    """The last Linear layer a forward pass in eval mode calls, unless a convolution runs after it. The pass
    runs on a copy whose weights and buffers are meta tensors: no memory, no arithmetic, no random draws,
    the model itself untouched (lazy layers stay unmaterialised)."""
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if not nn.parameter.is_lazy(tensor):
            meta = torch.empty_like(tensor, device="meta")
            memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    copied = copy.deepcopy(model, memo).eval()
    called: list[str] = []
    names = {module: name for name, module in copied.named_modules()}
    handles = [module.register_forward_hook(lambda module, inputs, output: called.append(names[module]))
               for module in names if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            copied(torch.zeros(1, *input_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    if not called or not isinstance(copied.get_submodule(called[-1]), nn.Linear):
        return None
    return model.get_submodule(called[-1])  # type: ignore[return-value]


def redraw_linear_layers(model: nn.Module, scheme: str, input_shape: tuple[int, ...] | None = None) -> str | None:
    """Draw the Linear layers of ``model`` again by ``scheme`` (a key of LINEAR_INITS), in module order, from
    torch's global generator: the same seed gives the same weights. The convolutions keep their draw.
    ``input_shape`` (channels, height, width) lets "torch_output" find the output layer by the forward pass;
    where that is not the last Linear layer in module order (which earlier releases drew), the return
    value says so in a sentence for the run's log."""
    if scheme not in LINEAR_INITS:
        raise ValueError(f"linear_init must be one of {sorted(LINEAR_INITS)} or null; got {scheme!r}")
    if scheme == "torch_output":
        layer = output_layer(model, input_shape)
        if layer is not None:
            layer.reset_parameters()
        return _output_layer_note(model, layer)
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
