"""The registry models' receptive fields against autograd: the extent of the input rows one position depends on.

For each Conv2d of a registry model (small width), the gradient of one output position (all channels summed)
with respect to the input is nonzero exactly on the rows some path from that position reaches, provided
nothing cancels: every weight is positive (1/fan-in, so the values stay near 1), BatchNorm is the identity in
eval mode, the input is all ones (every ReLU is open) and max pools are replaced by average pools of the same
window (a max pool passes the gradient to one input only). An attention gate's output is detached: the analysis
gives a gated tensor the receptive field of the tensor alone (thesis §10.1 leaves the gates out), and the
gradient through a squeeze-and-excitation gate would reach the whole input. The extent (last − first + 1) of
those rows is r_max, as long as the input is tall enough that no path reaches the border. The width stays
small: a kernel's height and width taps combine freely, so the border in the width does not change the extent
in the height. The same extent of a layer's input is its in_r_max; with the branches a shorter path bypasses
switched off, the extent is r_min (``bypassable``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from phd_lab.analysis.receptive_field import receptive_fields
from phd_lab.models.attention import ChannelAttention, SpatialAttention, SqueezeExcitation
from phd_lab.models.densenet import DenseLayer
from phd_lab.models.mpnet import MultipathBlock
from phd_lab.models.resnet import BasicBlock, Bottleneck
from registries import models as registry

WIDTH = 0.0625
COLUMNS = 32  # one column left after the factor-32 downsampling of the ImageNet stems
CASES = {
    "vgg11": {}, "vgg19_dilated": {}, "resnet18": {}, "resnet18_cifar": {}, "mpnet18": {}, "densenet18": {},
    "resnet18_noskip": {"stem": "cifar"}, "resnet18_cbam": {}, "resnet18_se": {"stem": "cifar"},
}


def monotone_copy(model: nn.Module) -> nn.Module:
    """``model`` with positive constant weights, identity BatchNorm in eval, average instead of max pools, and
    detached attention gates."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(module, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                         ceil_mode=child.ceil_mode))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()  # weight 1, bias 0, running mean 0, running variance 1
    for module in model.modules():
        if isinstance(module, (SqueezeExcitation, ChannelAttention, SpatialAttention)):
            module.gate.register_forward_hook(lambda _m, _i, out: out.detach())
    return model.double().eval()


def measured_r_max(model: nn.Module, layers: list[str], height: int, of: str = "output") -> dict[str, int]:
    """The input-gradient extent, in rows, of the middle position of the output (``of="input"``: of the input)
    of every layer in ``layers``."""
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    if of == "input":
        handles = [modules[name].register_forward_pre_hook(lambda _m, args, name=name: outputs.__setitem__(
            name, args[0])) for name in layers]
    else:
        handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(
            name, out)) for name in layers]
    inputs = torch.ones(1, 3, height, COLUMNS, dtype=torch.float64, requires_grad=True)
    model(inputs)
    for handle in handles:
        handle.remove()
    extents = {}
    for name in layers:
        out = outputs[name]
        position = out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum()
        (grad,) = torch.autograd.grad(position, inputs, retain_graph=True)
        rows = torch.nonzero(grad[0].abs().sum(dim=(0, 2))).flatten()
        first, last = int(rows.min()), int(rows.max())
        assert 0 < first and last < height - 1, f"{name}: the gradient reached the border; the input is too small"
        extents[name] = last - first + 1
    return extents


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_convolution_of_a_registry_model_has_the_r_max_autograd_measures(name):
    factory = getattr(registry, name)
    table = receptive_fields(factory(num_classes=10, width=WIDTH, **CASES[name]), 32)
    convs = table[table["index"].notna() & table["r_max"].map(math.isfinite)]
    assert len(convs) >= 8
    height = 32 * math.ceil((2 * convs["r_max"].max() + 64) / 32)
    extents = measured_r_max(monotone_copy(factory(num_classes=10, width=WIDTH, **CASES[name])),
                             convs["layer"].tolist(), int(height))
    expected = dict(zip(convs["layer"], convs["r_max"].astype(int)))
    assert extents == expected


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "googlenet"])
def test_torchvision_models_with_a_channel_shuffle_or_inception_branches_have_the_measured_r_max(name):
    """ShuffleNetV2's channel shuffle (a view and a transpose that keep height and width whole) and GoogLeNet's
    parallel branches with a stride-1 max pool (every third convolution and the last, for time)."""
    table = receptive_fields(registry.PREFIXES["tv:"](name, num_classes=10), 32)
    convs = table[table["index"].notna() & table["r_max"].map(math.isfinite)]
    layers = convs["layer"].tolist()[::3] + convs["layer"].tolist()[-1:]
    height = 32 * math.ceil((2 * convs["r_max"].max() + 64) / 32)
    extents = measured_r_max(monotone_copy(registry.PREFIXES["tv:"](name, num_classes=10)), layers, int(height))
    assert extents == {layer: int(r) for layer, r in zip(convs["layer"], convs["r_max"]) if layer in extents}
    assert len(extents) >= 15


@pytest.mark.parametrize("name", ["vgg11", "resnet18", "densenet18"])
def test_the_input_of_every_convolution_has_the_in_r_max_autograd_measures(name):
    """The receptive field entering a layer, pools in between included (the border rule reads it)."""
    factory = getattr(registry, name)
    table = receptive_fields(factory(num_classes=10, width=WIDTH), 32)
    convs = table[table["index"].notna() & table["r_max"].map(math.isfinite)]
    assert (convs["in_r_max"].to_numpy()[1:] != convs["r_max"].to_numpy()[:-1]).any()  # a pool between two rows
    height = 32 * math.ceil((2 * convs["r_max"].max() + 64) / 32)
    extents = measured_r_max(monotone_copy(factory(num_classes=10, width=WIDTH)), convs["layer"].tolist(),
                             int(height), of="input")
    assert extents == dict(zip(convs["layer"], convs["in_r_max"].astype(int)))


def bypassable(model: nn.Module) -> list[str]:
    """The branches a shorter path can bypass, in forward order: a residual block's branch (its last module,
    ``attention``, an identity without attention), MPNet's 7×7 path beside the 3×3 one, a dense layer beside the
    concatenated input. The branch beside each is no wider (an identity, a strided 1×1 projection, the 3×3 path
    of the same stride), so on any path choosing it never adds to eq. (9)'s sum, and the shortest path takes it
    in every unit before a layer."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            names.append(f"{name}.attention")
        elif isinstance(module, MultipathBlock):
            names.append(f"{name}.paths.1")
        elif isinstance(module, DenseLayer):
            names.append(name)
    return names


def shortest_path_extents(model: nn.Module, layers: list[str], height: int) -> dict[str, int]:
    """``measured_r_max`` of every layer with the bypassable branches before it switched off (their outputs zero):
    the extent of the shortest path, the r_min."""
    modules = dict(model.named_modules())
    order = list(modules)
    units = bypassable(model)
    groups: dict[tuple[str, ...], list[str]] = {}
    for layer in layers:
        before = tuple(unit for unit in units if order.index(unit) < order.index(layer)
                       and not layer.startswith(f"{unit}."))
        groups.setdefault(before, []).append(layer)
    extents = {}
    for before, group in groups.items():
        handles = [modules[unit].register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)) for unit in before]
        extents.update(measured_r_max(model, group, height))
        for handle in handles:
            handle.remove()
    return extents


@pytest.mark.parametrize("name", ["resnet18", "resnet50_cifar", "mpnet18", "densenet18"])
def test_every_convolution_of_a_branching_registry_model_has_the_r_min_of_its_shortest_path(name):
    factory = getattr(registry, name)
    table = receptive_fields(factory(num_classes=10, width=WIDTH), 32)
    convs = table[table["index"].notna() & table["r_max"].map(math.isfinite)]
    assert (convs["r_min"] < convs["r_max"]).sum() >= 8
    height = 32 * math.ceil((2 * convs["r_max"].max() + 64) / 32)
    model = monotone_copy(factory(num_classes=10, width=WIDTH))
    assert len(bypassable(model)) >= 8
    extents = shortest_path_extents(model, convs["layer"].tolist(), int(height))
    assert extents == dict(zip(convs["layer"], convs["r_min"].astype(int)))
