"""Metric registry: ``f() -> Metric`` (``update(y_true, y_pred)``, ``value``, ``reset()``).

The CSV columns are ``train_<name>`` and ``test_<name>`` with the registry name lowercased; a
metric whose value is a dict gets one column per key, ``<name>_<key>``.
"""

from __future__ import annotations

from phd_lab.metrics import BalancedAccuracy as _BalancedAccuracy
from phd_lab.metrics import MatthewsCorrelation, Metric, PerClassRecall as _PerClassRecall, TopKAccuracy


def Accuracy() -> Metric:
    """Share of correctly classified samples (top-1)."""
    return TopKAccuracy(k=1, name="accuracy")


def Top5Accuracy() -> Metric:
    """Share of samples whose label is among the five highest scores."""
    return TopKAccuracy(k=5, name="top5accuracy")


def BalancedAccuracy() -> Metric:
    """Mean per-class recall over the classes present (robust to class imbalance)."""
    return _BalancedAccuracy()


def MCC() -> Metric:
    """Multi-class Matthews correlation coefficient (1 perfect, 0 chance level)."""
    return MatthewsCorrelation()


def PerClassRecall() -> Metric:
    """Recall of each class; columns ``perclassrecall_<class index>``."""
    return _PerClassRecall()
