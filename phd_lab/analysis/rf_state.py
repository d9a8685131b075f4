"""The receptive-field state of a tensor and the three things done with states: merge, window, bounds.

A state is what the analysis knows about one tensor of the traced graph: a ``Spatial`` dict (jump →
(r_min, r_max) over the paths from the input with that jump), ``GLOBAL`` (the tensor depends on the
whole input), an ``Unknown`` feature map (the graph does not say how it moves pixels) or None (no image
content: constants, shapes, parameters). Every other part of the analysis speaks this vocabulary.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from phd_lab.errors import PhdLabError

INF = math.inf


class ReceptiveFieldError(PhdLabError):
    """The model cannot be traced, or contains an operation the analysis cannot reason about."""


class _Global:
    """Marker state: the tensor depends on the whole input (after global pooling, Linear)."""

    def __repr__(self) -> str:
        return "GLOBAL"


GLOBAL = _Global()


class Unknown:
    """Marker state: a feature map whose receptive field the graph alone does not determine (a
    view/reshape to a feature map, adaptive pooling to several positions, a flatten that merges height or
    width with another axis); ``origin`` names the op."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def __repr__(self) -> str:
        return f"UNKNOWN({self.origin})"


# A spatial state maps jump -> (r_min, r_max) over the paths with that jump.
Spatial = dict


def merge(states: Iterable[Any]) -> Any:
    """Min/max over the inputs of a pass-through op; global inputs broadcast over spatial ones; an
    unknown input makes the result unknown."""
    spatial: Spatial = {}
    saw_global = False
    for state in states:
        if isinstance(state, Unknown):
            return state
        if state is GLOBAL:
            saw_global = True
        elif state is not None:
            for jump, (lo, hi) in state.items():
                old = spatial.get(jump)
                spatial[jump] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    if spatial:
        return spatial
    return GLOBAL if saw_global else None


def window(state: Any, kernel: int, stride: int, dilation: int) -> Any:
    """Apply a sliding window (convolution or pooling): r += (k_eff-1)·j, j *= s."""
    if not isinstance(state, dict):
        return state
    grow = dilation * (kernel - 1)
    return {jump * stride: (lo + grow * jump, hi + grow * jump) for jump, (lo, hi) in state.items()}


def bounds(state: Any) -> tuple[float, float, float]:
    """(r_min, r_max, jump) of a state; ``inf`` for global tensors, jump = the largest one."""
    if not isinstance(state, dict):
        return INF, INF, INF
    return (min(lo for lo, _ in state.values()), max(hi for _, hi in state.values()), max(state))
