"""A finished grid read again: the status of every point (``--dry-run``'s, which a rerun and a Dask rerun ask too)
and the saturations the report reads from every run's metrics CSV, before and after session 58's changes.

    python benchmarks/finished_grid.py                        # trains 8 tiny runs (VGG11/8 on Digits, 1 epoch)
    python benchmarks/finished_grid.py --runs 24 --rounds 5
    python benchmarks/finished_grid.py --config w/g320.json   # a grid trained already (every point finished)

Status: ``point_status`` of every point of the grid, after ``Main.load``. Before: every peek at a run's checkpoint
checked and unpickled the file again (the damage check and the extract step's fingerprint: twice per finished
point); after: a settled, unchanged checkpoint is unpickled once (``checkpoint._peek_file``). The "before" rows
replace ``_peek_file`` by the old two lines; both start each round with no state kept. Saturations:
``layer_saturations`` of every run's train split against the old code (the epoch rows sorted again for every
layer whose feature dimension is derived), kept below as the reference; the tables are checked to be equal first.
Seconds of wall time, best of the rounds, the two variants alternated within each round.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("finished_grid")


def train_grid(folder: Path, runs: int) -> Path:
    """A grid of ``runs`` repetitions of the smallest quickstart model, trained for real (about 2 s each)."""
    from phd_lab.experiment import Main
    config = {"model": "vgg11", "model_args": {"width": 0.125}, "dataset": "Digits", "resolution": 32, "epoch": 1,
              "batch_size": 64, "optimizer": "adam", "optimizer_args": {"lr": 0.001}, "metrics": ["Accuracy"],
              "logs_dir": str(folder / "logs"), "data_dir": str(folder / "data"), "device": "cpu",
              "post_processing": [{"name": "extract", "layers": ["features.25", "classifier.2"]}],
              "run_id": [str(index) for index in range(runs)]}
    path = folder / "grid.json"
    path.write_text(json.dumps(config))
    outcomes = Main(progress=False)(path)
    assert all(outcome.status == "finished" for outcome in outcomes), outcomes
    return path


def settle(config: Path) -> None:
    """Date the checkpoints just trained a minute back, as those of a grid trained in an earlier command (a file
    modified within the last 2 s is never kept as verified)."""
    import os

    logs = Path(json.loads(config.read_text())["logs_dir"])
    old = time.time() - 60
    for path in logs.rglob("*.pt"):
        os.utime(path, (old, old))


def uncached_peek(path: Path) -> Any:
    """``_peek_file`` as it was: the checksums, then the unpickling, on every call."""
    import torch

    from phd_lab.checkpoint import verify_checksums
    verify_checksums(path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def statuses(config: Path, cached: bool) -> tuple[float, list[str]]:
    """Seconds of ``point_status`` for every point (``Main.load`` not counted), and the statuses."""
    from phd_lab import checkpoint
    from phd_lab.experiment import Main, point_status
    main = Main(progress=False, missing_data="warn", missing_device="warn")
    main.load(config)
    checkpoint._PEEKED.clear()
    cached_peek = checkpoint._peek_file
    if not cached:
        checkpoint._peek_file = uncached_peek
    try:
        started = time.perf_counter()
        said = [point_status(executor, main.meta_models) for executor in main.executors]
        return time.perf_counter() - started, said
    finally:
        checkpoint._peek_file = cached_peek


def reference_layer_saturations(metrics: Any, split: str) -> Any:
    """``layer_saturations`` before session 58: ``_epoch_rows`` for the last row, and again for every layer whose
    feature dimension is derived."""
    import pandas as pd

    from phd_lab.analysis.run_summary import (INT_COLUMNS, _derived_feature_dimension, _last_epoch_row,
                                              _ordered_rows, _usable)

    def derived(layer: str) -> int | None:  # the rows sorted again for every layer, as before
        return _derived_feature_dimension(_ordered_rows(metrics), layer, split)

    if metrics is None or not len(metrics):
        return None
    suffix = f"_{split}_saturation"
    layers = [c[:-len(suffix)] for c in metrics.columns if c.endswith(suffix)]
    row = _last_epoch_row(metrics)
    if not layers or row is None:
        return None
    records = []
    for layer in layers:
        saturation = pd.to_numeric(row.get(f"{layer}{suffix}"), errors="coerce")
        if not _usable(saturation):
            continue
        k = pd.to_numeric(row.get(f"{layer}_{split}_intrinsic_dimension"), errors="coerce")
        d = pd.to_numeric(row.get(f"{layer}_{split}_feature_dimension"), errors="coerce")
        if pd.isna(d):
            d = derived(layer)
        records.append({"layer": layer, "saturation": float(saturation),
                        "intrinsic_dimension": None if pd.isna(k) else int(k),
                        "feature_dimension": None if pd.isna(d) else int(d)})
    return pd.DataFrame({column: pd.Series([record[column] for record in records],
                                           dtype=object if column in INT_COLUMNS else None)
                         for column in ("layer", "saturation", "intrinsic_dimension", "feature_dimension")})


def saturations(frames: list[Any], function: Callable[[Any, str], Any]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    tables = [function(frame, "train") for frame in frames]
    return time.perf_counter() - started, tables


def main() -> None:
    parser = argparse.ArgumentParser(description="A finished grid read again: every point's status and every run's "
                                                 "saturations, before and after session 58's changes.")
    parser.add_argument("--runs", type=int, default=8, help="runs to train when no --config is given")
    parser.add_argument("--config", type=Path, help="a trained grid's config (every point finished)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("phd_lab", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        config = args.config
        if config is None:
            config = train_grid(Path(scratch), args.runs)
            settle(config)
        from phd_lab.analysis.run_summary import layer_saturations
        from phd_lab.analysis.run_tables import read_metrics, run_folder
        from phd_lab.experiment import Main
        main_ = Main(progress=False, missing_data="warn", missing_device="warn")
        main_.load(config)
        frames = [read_metrics(run_folder(executor.rundir.root))[0] for executor in main_.executors]
        status = {True: float("inf"), False: float("inf")}
        reading = {"new": float("inf"), "old": float("inf")}
        for _ in range(args.rounds):
            for cached in (False, True):
                seconds, said = statuses(config, cached)
                status[cached] = min(status[cached], seconds)
                assert all(line == "finished" for line in said), said
            new_seconds, new = saturations(frames, layer_saturations)
            old_seconds, old = saturations(frames, reference_layer_saturations)
            assert all(a.equals(b) for a, b in zip(new, old)), "the tables differ"
            reading["new"], reading["old"] = min(reading["new"], new_seconds), min(reading["old"], old_seconds)
        points = len(frames)
        log.info("# finished grid of %d points, best of %d rounds", points, args.rounds)
        log.info("%-34s %9s %9s %7s", "", "before s", "after s", "ratio")
        log.info("%-34s %9.2f %9.2f %6.1fx", "point_status of every point", status[False], status[True],
                 status[False] / status[True])
        log.info("%-34s %9.3f %9.3f %6.1fx", "layer_saturations of every run", reading["old"], reading["new"],
                 reading["old"] / reading["new"])


if __name__ == "__main__":
    main()
