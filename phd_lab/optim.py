"""Learning-rate schedules shared by the optimizer factories."""

from __future__ import annotations

import torch


def step_schedule(optimizer: torch.optim.Optimizer, step_size: int | None,
                  gamma: float) -> torch.optim.lr_scheduler.StepLR | None:
    """lr × ``gamma`` every ``step_size`` epochs (stepped once per epoch); None disables it."""
    if step_size is None:
        return None
    if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
        raise ValueError(f"step_size must be a positive number of epochs or null; got {step_size!r}")
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not 0 < gamma <= 1:
        raise ValueError(f"gamma must be a number in (0, 1]; got {gamma!r}")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=float(gamma))
