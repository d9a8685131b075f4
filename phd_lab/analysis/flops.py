"""Computational cost of a model for one image: ptflops MACs and FLOPs, parameters, per layer.

ptflops counts multiply-accumulate operations (MACs) with its own per-module rules (a
convolution counts k·k·C_in/groups·C_out per output position plus one per output element
for the bias; Linear counts in·out plus out for the bias; activations one per element, batch
normalisation two per element with affine parameters, pooling one per input element). FLOPs
are reported as 2·MACs, the usual convention; the dissertation's "GFLOPs" (§11) are ptflops'
MACs, so compare its figures with the ``macs`` column. The per-layer table applies the same
ptflops rules per leaf module, to subclasses of the module types ptflops knows as well (ptflops
itself counts exact types only and would count a ``class MyConv(nn.Conv2d)`` as zero).
ptflops has no rule for ``F.conv2d`` (``torch.conv2d``) called outside a Conv2d module: such calls are counted
and named in a warning and in ``uncounted_convolutions``, not guessed. Functional calls that
ptflops counts (``F.relu``, pooling, interpolation, ``matmul``/``bmm``, ...) made outside those
modules appear as one extra row; so does ``F.linear`` outside a Linear module (a functional head), with the
Linear module's rule (ptflops 0.7.5 has the rule but no longer applies it, which left such calls out).
ptflops' own total also adds the functional calls that modules make internally (``nn.ReLU`` calls
``F.relu``), counting those modules twice; here they are left out. Element-wise tensor arithmetic is
counted by how it is written, as ptflops counts it: the calls ``torch.add``/``torch.mul`` and the methods
``x.add(y)``/``x.mul(y)`` (one MAC per output element, in the functional row), but not the operators
(``x + y``, ``x * y``, the usual residual addition and attention gate), the matrix product ``x @ w``, nor
in-place ``x.add_(y)``, which ptflops does not see.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pandas as pd
import torch
from torch import nn

from phd_lab.errors import PhdLabError
from phd_lab.interrupts import raise_interruption_behind

log = logging.getLogger(__name__)

LAYER_COLUMNS = ["layer", "type", "macs", "flops", "params", "trainable_params"]
FUNCTIONAL_ROW = "(functional ops)"
ROOT_ROW = "<model>"  # the row of a model that is itself a module ptflops counts (the tracker's name for it)


class FlopsError(PhdLabError):
    """ptflops could not run the model."""


def computational_info(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[dict[str, Any], pd.DataFrame]:
    """Totals (MACs, FLOPs, params) and a per-layer table for one image of ``input_shape`` (C, H, W).

    Works on a copy of the model in eval mode, so the caller's model is left untouched.
    """
    from ptflops.pytorch_ops import MODULES_MAPPING

    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    try:
        rows, functional, uncounted = _per_layer(copy.deepcopy(model).eval(), input_shape, MODULES_MAPPING)
    except Exception as error:  # noqa: BLE001 - any failure of the forward pass under ptflops' hooks
        raise_interruption_behind(error)  # a Ctrl-C in the forward pass: the command stops, no failed step
        raise FlopsError(f"ptflops could not count the operations of {type(model).__qualname__} for an input "
                         f"of shape {tuple(input_shape)}: {type(error).__name__}: {error}") from None
    rows.append({"layer": FUNCTIONAL_ROW, "type": "", "macs": functional, "params": 0, "trainable_params": 0})
    if uncounted:
        log.warning("FLOPs of %s leave out %d convolution call(s) made with F.conv2d outside a Conv2d module "
                    "(ptflops has no rule for them); use nn.Conv2d (or a subclass) to have them counted.",
                    type(model).__qualname__, uncounted)
    table = pd.DataFrame(rows)
    table["flops"] = 2 * table["macs"]
    table = table[LAYER_COLUMNS]
    macs = int(table["macs"].sum())
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = {"input_shape": [int(v) for v in input_shape], "macs": int(macs), "flops": 2 * int(macs),
            "params_total": int(total), "params_trainable": int(trainable),
            "counter": "ptflops (pytorch backend); FLOPs = 2 x MACs", "uncounted_convolutions": uncounted}
    return info, table


def rule_for(module: nn.Module, rules: dict) -> Any:
    """ptflops' counting hook for the nearest class of ``module`` (its own first, then its bases)."""
    return next((rules[cls] for cls in type(module).__mro__ if cls in rules), None)


def _per_layer(model: nn.Module, input_shape: tuple[int, int, int],
               rules: dict) -> tuple[list[dict[str, Any]], int, int]:
    """MACs of every leaf module ptflops knows, via ptflops' own hook functions, in forward order,
    the MACs of the functional calls ptflops counts that no such module made, and the number of
    ``F.conv2d`` calls outside any counted module (which ptflops cannot count)."""
    import torch.nn.functional as F
    from ptflops.pytorch_engine import patch_functional, patch_tensor_ops, unpatch_functional, unpatch_tensor_ops

    order: list[str] = []
    handles = []
    counted = _counted_modules(model, rules)
    functional: list[int] = []  # ptflops' collector: one entry per functional call
    inside: list[range] = []  # collector entries appended while a counted module ran
    depth, start = [0], [0]

    def enter(mod: nn.Module, args: Any) -> None:
        if depth[0] == 0:
            start[0] = len(functional)
        depth[0] += 1

    for name, (module, hook) in counted.items():
        module.__flops__ = 0

        def record(mod: nn.Module, args: Any, output: Any, _name: str = name, _hook: Any = hook) -> None:
            _hook(mod, args, output)
            depth[0] -= 1
            if depth[0] == 0:
                inside.append(range(start[0], len(functional)))
            if _name not in order:
                order.append(_name)
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(record))
    uncounted = [0]
    conv2d, linear = F.conv2d, F.linear  # F.conv2d is torch.conv2d: models call either name

    def counting_conv2d(*args: Any, **kwargs: Any) -> Any:
        uncounted[0] += depth[0] == 0
        return conv2d(*args, **kwargs)

    def counting_linear(input: torch.Tensor, weight: torch.Tensor, bias: Any = None) -> Any:
        if depth[0] == 0:  # nn.Linear's rule: in·out MACs per row, plus out for the bias
            rows = input.numel() // max(weight.shape[-1], 1)
            functional.append(rows * (weight.numel() + (weight.shape[0] if bias is not None else 0)))
        return linear(input, weight, bias)

    patch_functional(functional)
    patch_tensor_ops(functional)
    ptflops_linear = F.linear is not linear  # ptflops versions that apply their F.linear rule count it
    F.conv2d = torch.conv2d = counting_conv2d
    if not ptflops_linear:
        F.linear = counting_linear
    try:
        _forward_zero_image(model, input_shape)
    finally:
        F.conv2d = torch.conv2d = conv2d
        if not ptflops_linear:
            F.linear = linear
        unpatch_functional()
        unpatch_tensor_ops()
        for handle in handles:
            handle.remove()
    return _layer_rows(order, counted), _macs_outside(functional, inside), uncounted[0]


def _counted_modules(model: nn.Module, rules: dict) -> dict[str, tuple[nn.Module, Any]]:
    """The named submodules ptflops has a rule for, with that rule, leaving out the submodules of a
    module whose exact type ptflops knows (they are part of its count). A model that is itself such a
    module (an ``nn.Linear`` used as the whole model) is counted as the row ``ROOT_ROW``."""
    counted: dict[str, tuple[nn.Module, Any]] = {}
    whole: list[str] = []  # counted modules of a type ptflops knows exactly
    for name, module in model.named_modules():
        hook = rule_for(module, rules)
        # the submodules of a module of a type ptflops knows are part of its count (MultiheadAttention's
        # out_proj); those of a subclass are not (its rule is the base class' rule for the module itself)
        if hook is None or any(not outer or name.startswith(f"{outer}.") for outer in whole):
            continue
        counted[name or ROOT_ROW] = (module, hook)
        if type(module) in rules:
            whole.append(name)
    return counted


def _forward_zero_image(model: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """One forward pass, without gradients, of a zero image in the model's dtype and on its device."""
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.no_grad():
        model(torch.zeros((1, *input_shape), dtype=dtype, device=device))


def _macs_outside(functional: list[int], inside: list[range]) -> int:
    """MACs of the functional calls no counted module made (those inside one are in its own count)."""
    duplicated = {position for span in inside for position in span}
    return sum(int(macs) for position, macs in enumerate(functional) if position not in duplicated)


def _layer_rows(order: list[str], counted: dict[str, tuple[nn.Module, Any]]) -> list[dict[str, Any]]:
    """One row per counted module that ran, in forward order: its MACs and parameters."""
    rows = []
    for name in order:
        module = counted[name][0]
        rows.append({"layer": name, "type": type(module).__name__, "macs": int(module.__flops__),
                     "params": sum(p.numel() for p in module.parameters()),
                     "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad)})
    return rows
