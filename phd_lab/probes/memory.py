"""How many probe workers fit in memory: each one holds its layer while it fits.

A fit that only reads its layer (``saga`` without standardising, on float32/float64 latents) works on the
memory map, whose pages are file cache the kernel can reclaim. Other fits hold a private float32 (or float64)
copy of the layer's train and eval arrays: standardising works in place, float16 is widened, a training
subsample copies its rows, and ``lbfgs-torch`` on the CPU fits its own tensors. With ``-mp`` as many workers
as cores, the largest layers of a grid would otherwise be copied all at once (16 of ResNet50's 6.6 GB layers
need 105 GB).
"""

from __future__ import annotations

import os
from typing import Sequence

from phd_lab.probes.manifest import LayerFiles
from phd_lab.probes.runner import ProbeTask

SHARE = 0.8  # of the available memory the copies may take: the parent, the interpreters and the BLAS need some


def copy_bytes(task: ProbeTask, layer: LayerFiles) -> int:
    """Private bytes a fit of ``task`` (on the files of ``layer``) holds beside the memory map: 0 where it only
    reads the files. Each split is counted by its own dtype: a float16 file becomes a float32 copy."""
    settings = task.settings
    try:
        train, evaluation = os.path.getsize(task.train), os.path.getsize(task.eval)
    except OSError:  # gone since the checks: the fit fails with its own message
        return 0
    rows, samples = layer.shape[0], settings.train_samples
    subsampled = samples is not None and samples < rows  # the subsample's rows are copied (fancy indexing)
    train_share = samples / rows if subsampled else 1.0
    widened = {split: 2 if dtype == "float16" else 1 for split, dtype in layer.dtypes.items()}
    if settings.solver == "lbfgs-torch":  # its own float32 tensors; on a GPU, filled block by block from the map
        on_host = settings.device == "cpu"
        return int(train * train_share * (widened["train"] if on_host else 1) * (on_host or subsampled)
                   + evaluation * widened["eval"] * on_host)
    copies = {split: settings.standardize or widened[split] > 1 for split in widened}  # standardised or widened
    return int(train * train_share * widened["train"] * (copies["train"] or subsampled)
               + evaluation * widened["eval"] * copies["eval"])


def workers_that_fit(sizes: Sequence[int], workers: int, budget: int | None) -> int:
    """The most workers (at most ``workers``, at least one) whose largest layers' copies fit in ``budget`` bytes
    together: the job starts the largest layers first, so those are the ones held at the same time."""
    if budget is None or workers <= 1:
        return max(1, workers)
    held, fitting = 0, 0
    for size in sorted(sizes, reverse=True)[:workers]:
        held += size
        if held > budget and fitting >= 1:
            break
        fitting += 1
    return max(1, fitting) if sizes else max(1, workers)
