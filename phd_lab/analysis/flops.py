"""Computational cost of a model for one image: ptflops MACs and FLOPs, parameters, per layer.

ptflops counts multiply-accumulate operations (MACs) with its own per-module rules (a
convolution counts k·k·C_in/groups·C_out per output position plus one per output element
for the bias; Linear counts in·out plus out for the bias; activations, normalisation and
pooling count one per element). FLOPs are reported as 2·MACs, the usual convention.
The per-layer table applies the same ptflops rules per leaf module; functional operations
(e.g. the additions of residual connections) appear as one extra row.
"""

from __future__ import annotations

import copy
import io
import logging
from typing import Any

import pandas as pd
import torch
from torch import nn

from phd_lab.errors import PhdLabError

log = logging.getLogger(__name__)

LAYER_COLUMNS = ["layer", "type", "macs", "flops", "params", "trainable_params"]
FUNCTIONAL_ROW = "(functional ops)"


class FlopsError(PhdLabError):
    """ptflops could not run the model."""


def computational_info(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[dict[str, Any], pd.DataFrame]:
    """Totals (MACs, FLOPs, params) and a per-layer table for one image of ``input_shape`` (C, H, W).

    Works on a copy of the model in eval mode, so the caller's model is left untouched.
    """
    from ptflops import get_model_complexity_info
    from ptflops.pytorch_ops import MODULES_MAPPING

    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    probe = copy.deepcopy(model).eval()
    sink = io.StringIO()  # ptflops reports failures on its stream; keep them for our message
    with torch.no_grad():
        macs, _ = get_model_complexity_info(probe, tuple(input_shape), as_strings=False,
                                            print_per_layer_stat=False, ost=sink, verbose=False)
    if macs is None:
        raise FlopsError(f"ptflops could not count the operations of {type(model).__qualname__} for an input "
                         f"of shape {tuple(input_shape)}: {' '.join(sink.getvalue().split())[:400]}")

    rows = _per_layer(copy.deepcopy(model).eval(), input_shape, MODULES_MAPPING)
    module_macs = sum(row["macs"] for row in rows)
    rows.append({"layer": FUNCTIONAL_ROW, "type": "", "macs": int(macs) - module_macs, "params": 0,
                 "trainable_params": 0})
    table = pd.DataFrame(rows)
    table["flops"] = 2 * table["macs"]
    table = table[LAYER_COLUMNS]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = {"input_shape": [int(v) for v in input_shape], "macs": int(macs), "flops": 2 * int(macs),
            "params_total": int(total), "params_trainable": int(trainable),
            "counter": "ptflops (pytorch backend); FLOPs = 2 x MACs"}
    return info, table


def _per_layer(model: nn.Module, input_shape: tuple[int, int, int], rules: dict) -> list[dict[str, Any]]:
    """MACs of every leaf module ptflops knows, via ptflops' own hook functions, in forward order."""
    order: list[str] = []
    handles = []
    counted: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        hook = rules.get(type(module))
        if hook is None or not name:
            continue
        module.__flops__ = 0
        counted[name] = module

        def record(mod: nn.Module, args: Any, output: Any, _name: str = name, _hook: Any = hook) -> None:
            _hook(mod, args, output)
            if _name not in order:
                order.append(_name)
        handles.append(module.register_forward_hook(record))
    try:
        parameter = next(model.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.float32
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=dtype, device=device))
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name in order:
        module = counted[name]
        rows.append({"layer": name, "type": type(module).__name__, "macs": int(module.__flops__),
                     "params": sum(p.numel() for p in module.parameters()),
                     "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad)})
    return rows
