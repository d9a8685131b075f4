"""Confusion plots of the probe job: drawn from the kept pixels (as the job does) against drawn in full.

``ConfusionPlots.png`` restores the pixels of a figure's unchanging parts and draws only the image, its frame and
the title; ``savefig`` of the same figure draws everything (the frame, ticks, labels and colour bar: mostly text
layout) and gives the same bytes. Both are timed per plot, one right after the other, for a few class counts, and
the bytes are compared. Usage: ``python benchmarks/confusion_plots.py [--plots 40]``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phd_lab.plots.probes import ConfusionPlots  # noqa: E402


def matrices(classes: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    drawn = rng.random((count, classes, classes))
    return list(drawn / drawn.sum(axis=2, keepdims=True))


def compare(classes: int, plots: int) -> tuple[float, float, bool]:
    """Median seconds per plot from the kept pixels and in full, and whether every plot's bytes agreed."""
    kept_times, full_times, same = [], [], True
    with ConfusionPlots() as drawing:
        drawing.png(matrices(classes, 1)[0], range(classes), "warm-up")  # makes and draws the figure once
        figure = drawing._figure(tuple(range(classes)))[0].figure
        for number, matrix in enumerate(matrices(classes, plots)):
            title = f"features.{number} (eval\u00a0acc\u00a00.{number:03d})"
            start = time.perf_counter()
            kept = drawing.png(matrix, range(classes), title)
            middle = time.perf_counter()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=ConfusionPlots.DPI)
            full_times.append(time.perf_counter() - middle)
            kept_times.append(middle - start)
            same &= kept == buffer.getvalue()
    return statistics.median(kept_times), statistics.median(full_times), same


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--plots", type=int, default=40, help="plots per class count")
    args = parser.parse_args()
    print(f"confusion plots, {args.plots} per class count, median ms per plot")
    print(f"{'classes':>8} {'kept pixels':>12} {'full draw':>10} {'speed-up':>9}  bytes equal")
    for classes in (10, 100, 1000):
        kept, full, same = compare(classes, args.plots)
        print(f"{classes:>8} {kept * 1e3:>12.1f} {full * 1e3:>10.1f} {full / kept:>8.2f}x  {same}")


if __name__ == "__main__":
    main()
