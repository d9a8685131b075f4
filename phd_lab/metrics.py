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


class ConfusionMetric(Metric):
    """Accumulates a confusion matrix (true × predicted) batch by batch.

    The number of classes comes from the logits' width and grows if a label exceeds it, so the
    metric needs no configuration.
    """

    name = "confusion"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.matrix = torch.zeros((0, 0), dtype=torch.int64)

    def update(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> None:
        labels = y_true.detach().view(-1).to("cpu", torch.int64)
        predicted = y_pred.detach().argmax(dim=1).view(-1).to("cpu", torch.int64)
        classes = max(self.matrix.shape[0], y_pred.shape[1], int(labels.max()) + 1 if labels.numel() else 0)
        if classes > self.matrix.shape[0]:
            grown = torch.zeros((classes, classes), dtype=torch.int64)
            size = self.matrix.shape[0]
            grown[:size, :size] = self.matrix
            self.matrix = grown
        # O(batch): counting into the matrix's cells, where a bincount of minlength classes² (then added) cost
        # O(classes²) per batch (0.6 s for 10,000 classes); integer additions, so the counts are the same.
        cells = labels * classes + predicted
        self.matrix.view(-1).index_add_(0, cells, torch.ones_like(cells))

    def _recalls(self) -> torch.Tensor:
        """Recall of each class that occurs among the labels (NaN for absent classes)."""
        support = self.matrix.sum(dim=1).double()
        recalls = torch.full_like(support, float("nan"))
        present = support > 0
        recalls[present] = self.matrix.diagonal().double()[present] / support[present]
        return recalls


class BalancedAccuracy(ConfusionMetric):
    """Mean recall over the classes present in the labels (robust to class imbalance)."""

    name = "balancedaccuracy"

    @property
    def value(self) -> float:
        recalls = self._recalls()
        present = ~torch.isnan(recalls)
        return float(recalls[present].mean()) if bool(present.any()) else float("nan")


class MatthewsCorrelation(ConfusionMetric):
    """Multi-class Matthews correlation coefficient (Gorodkin's R_K), in [-1, 1]."""

    name = "mcc"

    @property
    def value(self) -> float:
        c = self.matrix.double()
        total = c.sum()
        if total == 0:
            return float("nan")
        correct = c.diagonal().sum()
        true_counts, predicted_counts = c.sum(dim=1), c.sum(dim=0)
        numerator = correct * total - (true_counts * predicted_counts).sum()
        denominator = torch.sqrt((total ** 2 - (predicted_counts ** 2).sum()) * (total ** 2 - (true_counts ** 2).sum()))
        return float(numerator / denominator) if float(denominator) > 0 else 0.0


class PerClassRecall(ConfusionMetric):
    """Recall of every class; a dict value, so the CSV gets one column per class."""

    name = "perclassrecall"

    @property
    def value(self) -> dict[str, float]:  # type: ignore[override]
        return {str(index): float(recall) for index, recall in enumerate(self._recalls())}
