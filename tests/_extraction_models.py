"""A small model and data shared by the extraction tests and their killed subprocesses."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from phd_lab.datasets.digits import digits_tensors


class Small(nn.Module):
    """Defined head-first, run body-first: forward order differs from definition order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 10)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.body(x)), 1))


def build_model() -> Small:
    torch.manual_seed(0)
    model = Small()
    with torch.no_grad():  # non-trivial running statistics, so eval and train mode differ
        model.body[1].running_mean.uniform_(-1, 1)
        model.body[1].running_var.uniform_(0.5, 2)
    return model


def loaders(resolution: int = 8, batch_size: int = 100) -> dict[str, DataLoader]:
    train, test = digits_tensors(resolution)
    return {"train": DataLoader(train, batch_size=batch_size), "eval": DataLoader(test, batch_size=batch_size)}


def loaders_of(samples: int, resolution: int, batch_size: int, seed: int = 0) -> dict[str, DataLoader]:
    """Random images of a given count (benchmarks)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(samples, 1, resolution, resolution, generator=gen)
    labels = torch.randint(0, 10, (samples,), generator=gen)
    data = TensorDataset(images, labels)
    return {"train": DataLoader(data, batch_size=batch_size), "eval": DataLoader(data, batch_size=batch_size)}
