"""What a model is trained to do: classify (cross-entropy on labels) or reconstruct its input (MSE).

Every model of the thesis' experiments is a classifier, except the convolutional autoencoder of §7.2,
which is trained on the mean-squared pixel error between its output and its input. A model class says
which by its ``objective`` attribute ("classification" when it has none); the trainer and the
projection step take their loss from here, and class metrics (accuracy, confusion) apply only to
classifiers.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFICATION = "classification"
RECONSTRUCTION = "reconstruction"


class Objective(Protocol):
    name: str
    uses_labels: bool  # metrics compare the outputs with the labels

    def loss(self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
        """The loss of a batch; ``reduction`` "sum" sums the per-sample losses."""


class Classification:
    name, uses_labels = CLASSIFICATION, True

    def loss(self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction=reduction)


class Reconstruction:
    """Mean squared error per pixel and channel; a sample's loss is its mean, so "sum" adds up the samples."""

    name, uses_labels = RECONSTRUCTION, False

    def loss(self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
        per_sample = F.mse_loss(outputs, inputs, reduction="none").flatten(1).mean(dim=1)
        return per_sample.sum() if reduction == "sum" else per_sample.mean()


OBJECTIVES: dict[str, Objective] = {CLASSIFICATION: Classification(), RECONSTRUCTION: Reconstruction()}


def objective_of(model: nn.Module) -> Objective:
    """The objective a model declares (a wrapper's inner module counts: DataParallel, ...)."""
    inner = getattr(model, "module", model)
    name = getattr(inner, "objective", CLASSIFICATION)
    if name not in OBJECTIVES:
        raise ValueError(f"the model {type(inner).__name__} declares objective {name!r}; known objectives: "
                         f"{', '.join(map(repr, OBJECTIVES))}")
    return OBJECTIVES[name]
