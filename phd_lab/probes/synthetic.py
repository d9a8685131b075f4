"""Write arrays as a latents folder with a valid ``manifest.json`` (tests, benchmarks, own data).

It follows the manifest contract of the extraction step (/work/shared/DESIGN.md), so arrays
from any source can be probed with ``probe_main.py --latents DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from phd_lab.atomic import write_json, write_with
from phd_lab.file_hash import sha256_file
from phd_lab.latents_sets import MANIFEST, MANIFEST_FORMAT, manifest_text


def _save(path: Path, array: np.ndarray) -> str:
    write_with(path, lambda handle: np.save(handle, array, allow_pickle=False))
    return sha256_file(path)


def write_latents(folder: Path | str, layers: Mapping[str, tuple[np.ndarray, np.ndarray]], y_train: np.ndarray,
                  y_eval: np.ndarray, run_dir: Path | str, model_test_accuracy: float | None = None,
                  downsampling: int | str | None = 4) -> Path:
    """Save ``{layer: (train, eval)}`` in forward order plus labels; the manifest is written last. It names
    ``run_dir`` by its absolute path, as the extraction does: one given relative to the current folder would
    otherwise be read relative to the latents folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    dtypes = set()
    for position, (name, (train, eval_)) in enumerate(layers.items(), 1):
        dtypes.add(str(train.dtype))
        entries.append({"index": position, "name": name, "train": f"train-{name}.npy", "eval": f"eval-{name}.npy",
                        "shape": list(train.shape),
                        "sha256": {"train": _save(folder / f"train-{name}.npy", train),
                                   "eval": _save(folder / f"eval-{name}.npy", eval_)}})
    labels = {"train": "train-labels.npy", "eval": "eval-labels.npy",
              "sha256": {"train": _save(folder / "train-labels.npy", np.asarray(y_train)),
                         "eval": _save(folder / "eval-labels.npy", np.asarray(y_eval))}}
    write_json(folder / MANIFEST, {"format": MANIFEST_FORMAT, "run_dir": manifest_text(Path(run_dir).resolve()),
                                   "model_test_accuracy": model_test_accuracy,
                                   "downsampling": downsampling, "dtype": ",".join(sorted(dtypes)),
                                   "layers": entries, "labels": labels})
    return folder
