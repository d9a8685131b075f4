"""Incremental classification metrics: ``update(y_true, y_pred)`` per batch, ``value`` at the end.

``y_pred`` are the model's logits (batch × classes); ``y_true`` the integer labels.
"""

from __future__ import annotations

import torch


class Metric:
    """Base class: a metric accumulates over batches and is ``reset()`` between passes."""

    name: str = "metric"

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> None:
        raise NotImplementedError

    @property
    def value(self) -> float:
        raise NotImplementedError


class TopKAccuracy(Metric):
    """Share of samples whose label is among the k highest logits."""

    def __init__(self, k: int = 1, name: str = "accuracy") -> None:
        self.k = k
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> None:
        k = min(self.k, y_pred.shape[1])
        top = y_pred.topk(k, dim=1).indices
        self.correct += int((top == y_true.view(-1, 1)).any(dim=1).sum())
        self.total += int(y_true.numel())

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else float("nan")
