"""Costs that grew with the square of a model's size, side by side with the code that replaced them.

    python benchmarks/report_scale.py                 # 121 layers × 200 epochs, 10,000 classes
    python benchmarks/report_scale.py --layers 201 --epochs 200 --classes 1000

Tails: ``visible_since`` (every report rebuilds it for every run) against the pure-Python window scan kept in
tests/test_tails.py as the reference, on thesis-like saturations whose tail shows in every epoch (the worst case:
no epoch lets the backward walk stop early). Confusion: one ``ConfusionMetric.update`` of a batch of 128
against the bincount of minlength classes² it replaced. History: ``history_frame`` of a metrics CSV with one
per-class recall column per class, against the list look-up it replaced. CPU seconds (``time.process_time``),
single-threaded; the results are checked to be equal before the times are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from phd_lab.analysis.tails import find_tails, visible_since  # noqa: E402
from phd_lab.callbacks import history_frame  # noqa: E402
from phd_lab.metrics import ConfusionMetric  # noqa: E402
from tests.test_tails import reference_visible_since  # noqa: E402


def cpu(call, repeats: int = 1) -> tuple[float, object]:
    start = time.process_time()
    for _ in range(repeats):
        result = call()
    return (time.process_time() - start) / repeats, result


def row(what: str, before: float, after: float) -> None:
    print(f"  {what:<44} {before:9.4f} s {after:9.4f} s   {before / max(after, 1e-9):7.1f}x")


def tails(layers: int, epochs: int) -> None:
    rng = np.random.default_rng(0)
    history = []
    for epoch in range(1, epochs + 1):
        values = rng.uniform(0.25, 0.4, layers)
        values[int(0.7 * layers):] = rng.uniform(0.02, 0.08, layers - int(0.7 * layers))
        history.append((epoch, values.tolist()))
    tail = find_tails(history[-1][1])[-1]
    before, old = cpu(lambda: reference_visible_since(history, tail))
    after, new = cpu(lambda: visible_since(history, tail))
    assert old == new
    row(f"visible_since, {layers} layers × {epochs} epochs", before, after)


def confusion(classes: int) -> None:
    generator = torch.Generator().manual_seed(0)
    labels, logits = torch.randint(0, classes, (128,), generator=generator), torch.randn(128, classes,
                                                                                        generator=generator)
    metric = ConfusionMetric()
    metric.update(labels, logits)
    matrix = metric.matrix.clone()

    def bincount_update():  # the update as it was: argmax, then a bincount of minlength classes² added
        cells = labels * classes + logits.argmax(dim=1)
        matrix.add_(torch.bincount(cells, minlength=classes * classes).view(classes, classes))
    repeats = max(1, 2_000_000 // (classes * classes) + 3)
    before, _ = cpu(bincount_update, repeats)
    after, _ = cpu(lambda: metric.update(labels, logits), repeats)
    assert torch.equal(matrix, metric.matrix)
    row(f"confusion update, {classes} classes, batch 128", before, after)


def history(classes: int, epochs: int) -> None:
    rows = [{"epoch": epoch, "train_loss": 1.0, **{f"{split}_perclassrecall_{k}": 0.5 for split in ("train", "test")
                                                  for k in range(classes)}} for epoch in range(1, epochs + 1)]

    def with_a_list():
        columns: list[str] = []
        for values in rows:
            columns += [c for c in values if c not in columns]
        return pd.DataFrame(list(rows), columns=columns)
    before, old = cpu(with_a_list)
    after, new = cpu(lambda: history_frame(rows))
    pd.testing.assert_frame_equal(old, new)
    row(f"history_frame, {len(rows[0])} columns × {epochs} rows", before, after)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=121)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--classes", type=int, default=10000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"  {'CPU seconds':<44} {'before':>11} {'after':>11}   {'ratio':>8}")
    tails(args.layers, args.epochs)
    confusion(args.classes)
    history(args.classes, 20)


if __name__ == "__main__":
    main()
