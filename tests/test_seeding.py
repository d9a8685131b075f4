"""The loaders' seeding: the run's seed decides the shuffled order and every draw in the loader's worker processes."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from phd_lab.data import make_bundle


class Draws(Dataset):
    """Each sample is a draw from numpy's and python's global generators, as a user's augmentation makes them."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([np.random.randint(2**31), random.getrandbits(31)]), 0


def _bundle(dataset: Dataset, seed: int, num_workers: int = 0):
    return make_bundle("draws", dataset, dataset, dataset, num_classes=2, in_channels=1, resolution=1, batch_size=4,
                       seed=seed, num_workers=num_workers)


def _epoch(loader) -> list[list[int]]:
    return [inputs.tolist() for inputs, _ in loader]


def test_the_shuffled_order_follows_the_run_seed():
    """Two runs of one seed see their samples in one order; repetitions of a grid (another run_id, another seed) in
    orders of their own, as their model initialisations are their own."""
    samples = TensorDataset(torch.arange(64), torch.zeros(64, dtype=torch.long))
    first, again, other = (_bundle(samples, seed).train for seed in (1, 1, 2))
    order = [_epoch(first) for _ in range(2)]
    assert sorted(sum(order[0], [])) == list(range(64))
    assert order[0] != order[1]  # each epoch is shuffled anew
    assert [_epoch(again) for _ in range(2)] == order
    assert [_epoch(other) for _ in range(2)] != order


def test_draws_in_worker_processes_differ_between_epochs_and_repeat_with_the_seed():
    """A loader's worker process draws from numpy and python generators seeded from its epoch's torch seed: the
    draws change from epoch to epoch (an augmentation is not repeated identically every epoch), and a rerun with the
    same seed repeats them."""
    loader = _bundle(Draws(), seed=3, num_workers=1).test
    draws = [_epoch(loader) for _ in range(2)]
    numpy_draws = [[row[0] for batch in epoch for row in batch] for epoch in draws]
    python_draws = [[row[1] for batch in epoch for row in batch] for epoch in draws]
    assert numpy_draws[0] != numpy_draws[1] and python_draws[0] != python_draws[1]
    rerun = _bundle(Draws(), seed=3, num_workers=1).test
    assert [_epoch(rerun) for _ in range(2)] == draws
    assert _epoch(_bundle(Draws(), seed=4, num_workers=1).test) != draws[0]
