"""What a model is trained to do: classify (cross-entropy on labels) or reconstruct its input (MSE).

Every model of the thesis' experiments is a classifier, except the convolutional autoencoder of §7.2,
which is trained on the mean-squared pixel error between its output and its input. A model class says
which by its ``phd_lab_objective`` attribute ("classification" when it has none; a name of its own, so
that a model's ``objective`` of another meaning is not taken for it), and so may its registry factory,
which lets a config be checked without building the model. The trainer and the projection step take
their loss from here, and class metrics (accuracy, confusion) apply only to classifiers.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFICATION = "classification"
RECONSTRUCTION = "reconstruction"
ATTRIBUTE = "phd_lab_objective"  # on a model class (or instance) or its registry factory


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
        if outputs.shape != inputs.shape:  # mse_loss would broadcast, and train on a meaningless loss
            raise ValueError(f"the model reconstructs inputs of shape {tuple(inputs.shape)} as outputs of shape "
                             f"{tuple(outputs.shape)}; a reconstruction must have its input's shape")
        per_sample = F.mse_loss(outputs, inputs, reduction="none").flatten(1).mean(dim=1)
        return per_sample.sum() if reduction == "sum" else per_sample.mean()


OBJECTIVES: dict[str, Objective] = {CLASSIFICATION: Classification(), RECONSTRUCTION: Reconstruction()}


def objective_of(model: nn.Module) -> Objective:
    """The objective a model declares (a DataParallel's or DistributedDataParallel's: its inner module's). Only those
    wrappers are looked into: any model that kept a submodule as ``module`` was taken for one, its own declaration
    passed over (a reconstruction was refused as a 'classifier' without metrics)."""
    inner = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    return named_objective(getattr(inner, ATTRIBUTE, CLASSIFICATION), type(inner).__name__)


def declare_objective(model: nn.Module, objective: Objective) -> None:
    """Have ``model`` declare ``objective``: the one its registry factory declares, which the config's checks went by.
    The trainer and the post-processing steps read the model's own (``objective_of``), so a model whose class
    declared none was trained as a classifier (cross-entropy on its reconstruction: a RuntimeError in its first
    batch)."""
    setattr(model, ATTRIBUTE, objective.name)


def declared_objective(factory: object) -> Objective | None:
    """The objective a registry factory declares, or None when it declares none (its model may)."""
    name = getattr(factory, ATTRIBUTE, None)
    return None if name is None else named_objective(name, getattr(factory, "__name__", "factory"))


def named_objective(name: object, owner: str) -> Objective:
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ValueError(f"{owner} declares {ATTRIBUTE} {name!r}; known objectives: "
                         f"{', '.join(map(repr, OBJECTIVES))}")
    return OBJECTIVES[name]
