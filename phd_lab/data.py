"""DataBundle: what a dataset factory returns, and the seeded loaders every factory uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from phd_lab.errors import DataError
from phd_lab.seeding import make_generator, seed_worker


@dataclass
class DataBundle:
    """Loaders and facts of one dataset at one resolution.

    ``train`` shuffles and augments; ``test`` is the evaluation split; ``train_eval`` is the
    training split without shuffling or augmentation (saturation passes, latent extraction).
    """

    name: str
    train: DataLoader
    test: DataLoader
    train_eval: DataLoader
    num_classes: int
    in_channels: int
    resolution: int

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """The DataLoader generators whose state a checkpoint must carry."""
        gens = {}
        for split in ("train", "test", "train_eval"):
            gen = getattr(self, split).generator
            if gen is not None:
                gens[split] = gen
        return gens


def make_bundle(name: str, train_set: Dataset, test_set: Dataset, train_eval_set: Dataset, *,
                num_classes: int, in_channels: int, resolution: int, batch_size: int, seed: int,
                num_workers: int) -> DataBundle:
    """Build the three loaders with seeded generators and worker seeding.

    The shuffled training loader drops its last batch only when that batch would hold a single
    sample: batch norm cannot train on one sample, and every other sample is still used.
    """
    if num_classes < 2:
        raise DataError(f"Dataset {name} has {num_classes} class(es); a classifier needs at least two.")
    samples = len(train_set)  # type: ignore[arg-type]
    if samples < 2:
        raise DataError(f"Dataset {name} has {samples} training sample(s); training needs at least two (a batch of "
                        f"one cannot train batch norm).")

    def loader(dataset: Dataset, shuffle: bool, offset: int) -> DataLoader:
        drop_last = shuffle and len(dataset) % batch_size == 1  # type: ignore[arg-type]
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                          generator=make_generator(seed + offset), worker_init_fn=seed_worker, drop_last=drop_last,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)
    return DataBundle(name=name, train=loader(train_set, True, 0), test=loader(test_set, False, 1),
                      train_eval=loader(train_eval_set, False, 2), num_classes=num_classes,
                      in_channels=in_channels, resolution=resolution)
