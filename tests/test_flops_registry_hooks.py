"""The per-layer MACs of registry models against our own forward hooks on every Conv2d and Linear.

A convolution multiplies and accumulates in_channels/groups · kh · kw times per output element, and adds its
bias once per output element; a Linear does in_features per output element (once per position on a
channels-last map), plus the bias (ptflops' rules, which the analysis documents). FLOPs are 2 × MACs (README,
the ``flops`` step), per layer and in total.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from phd_lab.analysis.flops import computational_info
from registries import models as registry

CASES = {"resnet18_cifar": (32, {}), "vgg11": (32, {}), "vgg11_no_bn": (32, {"batch_norm": False}),
         "densenet18": (64, {}), "mpnet18": (32, {}), "vgg19_dilated": (40, {}),
         "tv:mobilenet_v2": (32, {"width_mult": 0.25}), "tv:shufflenet_v2_x0_5": (32, {})}  # depthwise convolutions


def hooked_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """MACs of every Conv2d and Linear for one image, counted from the shapes its forward pass saw."""
    macs: dict[str, int] = {}

    def count(name: str, module: nn.Module, output: torch.Tensor) -> None:
        elements = output[0].numel()
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        macs[name] = macs.get(name, 0) + elements * per_output + (elements if module.bias is not None else 0)

    handles = [module.register_forward_hook(lambda mod, _inputs, out, name=name: count(name, mod, out))
               for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.randn(1, *input_shape))
    for handle in handles:
        handle.remove()
    return macs


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_convolution_and_linear_layer_has_the_macs_our_hooks_count(case):
    side, model_args = CASES[case]
    if case.startswith("tv:"):
        model = registry.PREFIXES["tv:"](case[3:], num_classes=10, **model_args)
    else:
        model = getattr(registry, case.removesuffix("_no_bn"))(num_classes=10, width=0.25, **model_args)
    shape = (3, side, side)
    info, table = computational_info(model, shape)
    expected = hooked_macs(model, shape)
    layers = table[table["type"].isin(["Conv2d", "Linear"])]
    assert dict(zip(layers["layer"], layers["macs"].astype(int))) == expected
    assert (table["flops"] == 2 * table["macs"]).all()
    assert info["flops"] == 2 * info["macs"] == 2 * int(table["macs"].sum())
    assert info["macs"] > sum(expected.values())  # normalisation, activations and pooling count too
