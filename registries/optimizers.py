"""Optimizer registry: ``f(model, *, epochs, **optimizer_args) -> (optimizer, scheduler or None)``.

The scheduler (if any) is stepped once per epoch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def adam(model: nn.Module, *, epochs: int, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8, weight_decay: float = 0.0) -> tuple[torch.optim.Optimizer, Any]:
    """Adam with the thesis' defaults (lr 1e-4, betas 0.9/0.999, eps 1e-8); no schedule."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(betas), eps=eps,
                            weight_decay=weight_decay), None


def sgd(model: nn.Module, *, epochs: int, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
        step_size: int = 30, gamma: float = 0.1) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with momentum and a step schedule: lr × gamma every ``step_size`` epochs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
