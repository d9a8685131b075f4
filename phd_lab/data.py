"""DataBundle: what a dataset factory returns, and the seeded loaders every factory uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from phd_lab.errors import DataError
from phd_lab.interrupts import leave_quietly_on_sigterm, sigterm_held_while_forking
from phd_lab.seeding import make_generator, seed_worker
from phd_lab.worker_processes import start_method_context


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


class WorkerLoader(DataLoader):
    """A DataLoader whose worker processes stop quietly on a SIGTERM sent to the whole job (a batch system's time
    limit or scancel), forked with SIGTERM held back (``sigterm_held_while_forking``), so that a stopped run says
    'terminated (SIGTERM)' without a loader's traceback."""

    def _get_iterator(self):  # type: ignore[no-untyped-def]  # where torch starts the worker processes
        if self.num_workers == 0:
            return super()._get_iterator()
        with sigterm_held_while_forking():
            return super()._get_iterator()


def start_worker(worker_id: int) -> None:
    """``worker_init_fn`` of WorkerLoader: seed the worker, then let SIGTERM end it quietly."""
    seed_worker(worker_id)
    leave_quietly_on_sigterm()


def make_bundle(name: str, train_set: Dataset, test_set: Dataset, train_eval_set: Dataset, *,
                num_classes: int, in_channels: int, resolution: int, batch_size: int, seed: int,
                num_workers: int) -> DataBundle:
    """Build the three loaders with seeded generators and worker seeding.

    Workers start by the start method chosen in this process, or the platform's, left unchosen
    (``start_method_context``). The shuffled training loader drops its last batch only when that batch
    would hold a single sample: batch norm cannot train on one sample, and every other sample is still
    used. The training split needs two samples, the test split one.
    """
    if num_classes < 2:
        raise DataError(f"Dataset {name} has {num_classes} class(es); a classifier needs at least two.")
    samples = len(train_set)  # type: ignore[arg-type]
    if samples < 2:
        raise DataError(f"Dataset {name} has {samples} training sample(s); training needs at least two (a batch of "
                        f"one cannot train batch norm).")
    if len(test_set) == 0:  # type: ignore[arg-type]
        raise DataError(f"Dataset {name} has no test sample; every epoch's test loss, test metrics and test-set "
                        f"saturation are measured on it (an empty one gave a test loss of 0.0 and NaN metrics), so it "
                        f"needs at least one.")

    def loader(dataset: Dataset, shuffle: bool, offset: int) -> DataLoader:
        drop_last = shuffle and len(dataset) % batch_size == 1  # type: ignore[arg-type]
        return WorkerLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                            generator=make_generator(seed + offset), worker_init_fn=start_worker,
                            drop_last=drop_last, pin_memory=torch.cuda.is_available(), persistent_workers=False,
                            multiprocessing_context=start_method_context() if num_workers else None)
    return DataBundle(name=name, train=loader(train_set, True, 0), test=loader(test_set, False, 1),
                      train_eval=loader(train_eval_set, False, 2), num_classes=num_classes,
                      in_channels=in_channels, resolution=resolution)
