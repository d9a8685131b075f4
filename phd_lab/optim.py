"""Learning-rate schedules shared by the optimizer factories."""

from __future__ import annotations

import torch

DEFAULT_GAMMA = 0.1  # the thesis' decay factor (Tables 6, 9, 11)


def step_schedule(optimizer: torch.optim.Optimizer, step_size: int | None,
                  gamma: float | None) -> torch.optim.lr_scheduler.StepLR | None:
    """lr × ``gamma`` every ``step_size`` epochs (stepped once per epoch); ``step_size`` None: no schedule.

    ``gamma`` None is ``DEFAULT_GAMMA``. A ``gamma`` without a ``step_size`` would decay nothing, so it is
    refused instead of being ignored (``{"gamma": 0.5}`` alone trained at a constant rate)."""
    if gamma is not None and (not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not 0 < gamma <= 1):
        raise ValueError(f"gamma must be a number in (0, 1]; got {gamma!r}")
    if step_size is None:
        if gamma is not None:
            raise ValueError(f"gamma {gamma!r} has no effect without step_size: the learning rate is multiplied by "
                             f"gamma every step_size epochs; set step_size (a number of epochs) too, or leave gamma "
                             f"out")
        return None
    if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
        raise ValueError(f"step_size must be a positive number of epochs or null; got {step_size!r}")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size,
                                           gamma=float(DEFAULT_GAMMA if gamma is None else gamma))
