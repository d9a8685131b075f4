"""What a run's files cost per epoch besides training: the saturation plot, the metrics CSV, the checkpoint.

    python benchmarks/epoch_bookkeeping.py                      # 10 and 50 layers, 7 interleaved rounds
    python benchmarks/epoch_bookkeeping.py --layers 10,50,100 --reps 9 --profile

Each round times, in a rotating order in one process, one epoch's bookkeeping of a run with ``--layers``
tracked layers:

  plot: savefig tight      the saturation plot as it was drawn before session 44: a new figure, then
                           ``savefig(bbox_inches="tight")`` (a layout-only pass, the tight box, the drawing)
  plot: measured box       a new figure, the tight box measured directly (``save_saturation_plot``)
  plot: reused figure      the callback's way since session 44: one figure per run (``SaturationPlotter``)
                           that takes each epoch's values; the tight box measured directly
  metrics CSV              ``<name>.csv`` rewritten from a history of ``--history`` epochs (MetricsCSV)
  checkpoint               CheckpointStore.save of VGG11 at 1/4 width (model, Adam state, history)

and, as the yardstick, one epoch (training + test evaluation) of VGG11 at 1/4 width on Digits at 8 px, batch
64, one CPU thread: the model the test suite trains. All three plot ways write the same PNG bytes (checked
once per layer count). Times are medians of wall and of this process' CPU seconds; a shared machine's wall
time drifts, its CPU time less. ``--profile`` adds where the time of one plot goes, before and after.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phd_lab import atomic  # noqa: E402
from phd_lab.callbacks import history_frame  # noqa: E402
from phd_lab.checkpoint import CheckpointStore  # noqa: E402
from phd_lab.plots import close  # noqa: E402
from phd_lab.plots.saturation import (DPI, SaturationPlotter, plot_saturation, save_saturation_plot,  # noqa: E402
                                      saturation_table)
from phd_lab.trainer import Trainer  # noqa: E402
from registries.datasets import Digits  # noqa: E402
from registries.metrics import Accuracy  # noqa: E402
from registries.models import vgg11  # noqa: E402
from registries.optimizers import adam  # noqa: E402

TITLE = "vgg11-Digits-r32-bs64-e30 epoch {epoch}, δ=0.99"


def epoch_row(layers: int, epoch: int) -> dict[str, float]:
    """A CSV row as the trainer writes it: losses, accuracies, then four columns per layer and the means."""
    row = {"epoch": epoch, "train_loss": 0.5, "test_loss": 0.6, "train_accuracy": 0.9, "test_accuracy": 0.85,
           "epoch_seconds": 1.0}
    for i in range(layers):
        name = f"features.{3 * i}" if i < layers - 1 else "classifier"
        for split in ("train", "test"):
            row[f"{name}_{split}_saturation"] = (i * 7 + epoch + (split == "test")) % 10 / 10 + 0.03
        for split in ("train", "test"):
            row[f"{name}_{split}_intrinsic_dimension"] = 3 + i
    row.update(train_saturation_mean=0.4, test_saturation_mean=0.45)
    return row


def plot_savefig_tight(row: dict[str, float], path: Path, title: str) -> None:
    """The per-epoch plot as drawn before session 44 (a new figure, savefig's own tight crop)."""
    ax = plot_saturation(saturation_table(row), title=title)
    try:
        atomic.save_figure(ax.figure, path, dpi=DPI)  # bbox_inches="tight" by default
    finally:
        close(ax.figure)


def small_epoch() -> Callable[[], None]:
    """One training epoch and test evaluation of the suite's model (VGG11 1/4, Digits 8 px, batch 64)."""
    torch.manual_seed(0)
    bundle = Digits(batch_size=64, resolution=8, data_dir="", seed=0, num_workers=0)
    model = vgg11(num_classes=10, in_channels=1, width=0.25, batch_norm=False, head="linear")
    optimizer, scheduler = adam(model, epochs=30, lr=0.003)
    trainer = Trainer(model, optimizer, scheduler, metrics={"accuracy": Accuracy()}, epochs=30,
                      device=torch.device("cpu"), progress=False)

    def run() -> None:
        trainer.train_epoch(bundle, 1)
        trainer.evaluate(bundle.test)
    return run


def checkpoint_save(folder: Path, history: list[dict[str, float]]) -> Callable[[], None]:
    """CheckpointStore.save of the small model with its Adam state and ``history``."""
    model = vgg11(num_classes=10, in_channels=1, width=0.25, batch_norm=False, head="linear")
    optimizer, _ = adam(model, epochs=30, lr=0.003)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()  # Adam's moments exist, as after the first epoch
    store = CheckpointStore(folder / "run.pt", folder / "run.previous.pt")
    state = {"epoch": len(history), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": None, "scaler": {}, "rng": {}, "history": history, "callbacks": [], "cpu_threads": 1}
    return lambda: store.save(state)


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """Wall and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def conditions(layers: int, folder: Path, history_rows: int) -> dict[str, Callable[[], None]]:
    """The timed parts of one epoch's bookkeeping at ``layers`` layers (the epoch itself aside)."""
    history = [epoch_row(layers, epoch) for epoch in range(1, history_rows + 1)]
    plotter = SaturationPlotter()
    plotter.save(epoch_row(layers, 1), folder / "warm.png", TITLE.format(epoch=1))  # the run's first epoch
    epochs = iter(range(2, 10 ** 6))

    def reused() -> None:
        epoch = next(epochs)
        plotter.save(epoch_row(layers, epoch), folder / "reused.png", TITLE.format(epoch=epoch))
    row, title = epoch_row(layers, 2), TITLE.format(epoch=2)
    return {
        "plot: savefig tight": lambda: plot_savefig_tight(row, folder / "before.png", title),
        "plot: measured box": lambda: save_saturation_plot(row, folder / "measured.png", title),
        "plot: reused figure": reused,
        "metrics CSV": lambda: atomic.write_csv(folder / "run.csv", history_frame(history)),
        "checkpoint": checkpoint_save(folder, history),
    }


def same_pngs(layers: int, folder: Path) -> bool:
    """Whether the three ways of drawing write the same bytes (epoch 2 after epoch 1 for the reused figure)."""
    row, title = epoch_row(layers, 2), TITLE.format(epoch=2)
    plot_savefig_tight(row, folder / "a.png", title)
    save_saturation_plot(row, folder / "b.png", title)
    plotter = SaturationPlotter()
    plotter.save(epoch_row(layers, 1), folder / "c.png", TITLE.format(epoch=1))
    plotter.save(row, folder / "c.png", title)
    plotter.close()
    return len({(folder / name).read_bytes() for name in ("a.png", "b.png", "c.png")}) == 1


def profile_plot(layers: int, folder: Path) -> None:
    """Where one plot's time goes, before and after: cumulative seconds of its phases (profiler included)."""
    plotter = SaturationPlotter()
    plotter.save(epoch_row(layers, 1), folder / "q.png", "t")
    calls = {"before": lambda: plot_savefig_tight(epoch_row(layers, 2), folder / "p.png", "t"),
             "after": lambda: plotter.save(epoch_row(layers, 3), folder / "q.png", "t")}
    for name, call in calls.items():
        call()
        profiler = cProfile.Profile(time.process_time)  # CPU seconds: a shared machine inflates wall time
        profiler.runcall(call)
        stats = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]

        def cumulative(function: str, file_end: str) -> float:
            return max((entry[3] for (file, _, fn), entry in stats.items()
                        if fn == function and file.endswith(file_end)), default=0.0)
        figure_draws, final_draw = cumulative("draw", "figure.py"), cumulative("draw", "backend_agg.py")
        phases = {"figure built (plot_saturation)": cumulative("plot_saturation", "saturation.py"),
                  "epoch put into the figure (show_epoch)": cumulative("show_epoch", "saturation.py"),
                  "layout-only pass of savefig tight": figure_draws - final_draw,
                  "tight box (get_tightbbox)": cumulative("get_tightbbox", "figure.py"),
                  "final draw (Agg)": final_draw,
                  "  of it text rendered (draw_text)": cumulative("draw_text", "backend_agg.py"),
                  "text measured (get_window_extent)": cumulative("get_window_extent", "text.py"),
                  "font look-up (findfont)": cumulative("findfont", "font_manager.py"),
                  "PNG encoding (PIL)": cumulative("_save", "PngImagePlugin.py")}
        print(f"  profile {name}: {sum(entry[2] for entry in stats.values()):.3f} s in all")
        for label, seconds in phases.items():
            if seconds > 0.0005:
                print(f"    {label:<40} {seconds:7.3f} s")
    plotter.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="10,50", help="comma-separated layer counts")
    parser.add_argument("--reps", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--history", type=int, default=30, help="epochs in the history the CSV is written from")
    parser.add_argument("--profile", action="store_true", help="where one plot's time goes, before and after")
    args = parser.parse_args()
    torch.set_num_threads(1)
    epoch = small_epoch()
    epoch()  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for layers in (int(n) for n in args.layers.split(",")):
            print(f"\n{layers} layers; history of {args.history} epochs; {args.reps} interleaved rounds "
                  f"after a warm-up; same PNG bytes all three ways: {same_pngs(layers, folder)}")
            parts = {"epoch of VGG11 1/4 (Digits 8 px)": epoch, **conditions(layers, folder, args.history)}
            names = list(parts)
            for fn in parts.values():
                fn()  # warm-up
            wall: dict[str, list[float]] = {name: [] for name in names}
            cpu: dict[str, list[float]] = {name: [] for name in names}
            for rep in range(args.reps):
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    seconds, cpu_seconds = timed(parts[name])
                    wall[name].append(seconds)
                    cpu[name].append(cpu_seconds)
            base = statistics.median(cpu[names[0]])
            before = statistics.median(cpu["plot: savefig tight"])
            print(f"{'part':<36}{'wall s':>9}{'CPU s':>9}{'CPU / epoch':>13}{'CPU / before':>14}")
            for name in names:
                median_cpu = statistics.median(cpu[name])
                versus = f"{median_cpu / before:13.2f}x" if name.startswith("plot") else ""
                print(f"{name:<36}{statistics.median(wall[name]):9.3f}{median_cpu:9.3f}"
                      f"{median_cpu / base:12.2f}x {versus}")
            if args.profile:
                profile_plot(layers, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
