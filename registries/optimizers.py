"""Optimizer registry: ``f(model, *, epochs, **optimizer_args) -> (optimizer, scheduler or None)``.

The scheduler (if any) is stepped once per epoch (a ReduceLROnPlateau with the epoch's test loss).
Every keyword is an ``optimizer_args`` key.
Betas are given as ``beta1``/``beta2`` because a list value in ``optimizer_args`` is a grid axis.
``step_size`` (epochs) and ``gamma`` give every optimizer the thesis' step decay: lr × gamma every
``step_size`` epochs (on by default for sgd: ×0.1 every 20 epochs, Tables 9 and 11). ``gamma`` null means 0.1;
a ``gamma`` without a ``step_size`` is refused (it would decay nothing).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from phd_lab.optim import step_schedule


def adam(model: nn.Module, *, epochs: int, lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.999,
         eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, step_size: int | None = None,
         gamma: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
    """Adam with the thesis' defaults (lr 1e-4, betas 0.9/0.999, eps 1e-8, Table 12); no decay by default."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps,
                                 weight_decay=weight_decay, amsgrad=amsgrad)
    return optimizer, step_schedule(optimizer, step_size, gamma)


def sgd(model: nn.Module, *, epochs: int, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
        nesterov: bool = False, step_size: int | None = 20,
        gamma: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
    """SGD, lr 0.1, momentum 0.9, no weight decay, lr × 0.1 every 20 epochs (Tables 9, 11)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                nesterov=nesterov)
    return optimizer, step_schedule(optimizer, step_size, gamma)


def adamw(model: nn.Module, *, epochs: int, lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.01, amsgrad: bool = False, step_size: int | None = None,
          gamma: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (decoupled weight decay 0.01) with Adam's thesis defaults otherwise."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps,
                                  weight_decay=weight_decay, amsgrad=amsgrad)
    return optimizer, step_schedule(optimizer, step_size, gamma)


def radam(model: nn.Module, *, epochs: int, lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0, step_size: int | None = None,
          gamma: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
    """RAdam (Liu et al. 2020, rectified Adam) with Adam's thesis defaults."""
    optimizer = torch.optim.RAdam(model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps,
                                  weight_decay=weight_decay)
    return optimizer, step_schedule(optimizer, step_size, gamma)
