"""Metric registry: ``f() -> Metric`` (``update(y_true, y_pred)``, ``value``, ``reset()``).

The CSV columns are ``train_<name>`` and ``test_<name>`` with the registry name lowercased.
"""

from __future__ import annotations

from phd_lab.metrics import Metric, TopKAccuracy


def Accuracy() -> Metric:
    """Share of correctly classified samples (top-1)."""
    return TopKAccuracy(k=1, name="accuracy")


def Top5Accuracy() -> Metric:
    """Share of samples whose label is among the five highest scores."""
    return TopKAccuracy(k=5, name="top5accuracy")
