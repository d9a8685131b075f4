"""SaturationCallback: per-epoch layer saturation on the training and the test set.

Mode ``passes`` (default): after each epoch the model (eval mode, unwrapped from
DataParallel) runs one tracked pass over ``bundle.train_eval`` (training split, no shuffle,
no augmentation); the test split is tracked during the trainer's own test evaluation (the same
eval-mode forward passes; behind DataParallel a separate pass over ``bundle.test``). Fixed
loaders and no randomness mean a resumed run reproduces the same columns.

Mode ``inline`` (the thesis' Delve): the hooks stay attached, training-mode forward passes
feed the train covariance and the trainer's own test evaluation feeds the test covariance,
so no extra pass runs. A crashed epoch is redone from scratch after a resume, so its sums
are rebuilt identically.

Either way the epoch row gains ``<layer>_{train,test}_saturation``,
``<layer>_{train,test}_intrinsic_dimension`` and ``{train,test}_saturation_mean``, and a
plot ``<name>_saturation_epoch<k>.png`` shows saturation per layer in forward order.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Iterator

import pandas as pd
import torch
from tqdm import tqdm

from phd_lab.callbacks import Callback
from phd_lab.config import RunConfig, parse_size
from phd_lab.errors import ConfigError, UsageError
from phd_lab.progress import bar_options
from phd_lab.rundir import RunDir
from phd_lab.tracking.tracker import (SaturationTracker, TrackerOptions, run_pass, trackable_layers,
                                     warn_of_no_tracked_layer, warn_of_untracked_layers)
from phd_lab.wording import first_names

if TYPE_CHECKING:
    from phd_lab.data import DataBundle
    from phd_lab.trainer import Trainer

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


def tracker_options(config: RunConfig) -> TrackerOptions:
    """The tracker options a config asks for (validated by the schema; device parsed here)."""
    if config.tracking_fast:
        log.warning("%s: 'tracking_fast' is retired (its float32 covariance path exceeded the 1e-7 error bound on "
                    "realistic activations and was no faster); tracking exactly in float64.", config.source)
    device = config.tracking_device
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"{config.source}: the key 'tracking_device' must be a torch device such as 'cpu' "
                              f"or 'cuda:0', or null for the model's device; got {device!r}.") from None
    return TrackerOptions(device=device, resolution=parse_size(config.tracking_resolution),
                          downsampling=config.tracking_downsampling, max_batches=config.tracking_max_batches,
                          every_n=config.tracking_every_n, include=tuple(config.tracking_include),
                          exclude=tuple(config.tracking_exclude))


def saturation_columns(frames: dict[str, pd.DataFrame]) -> dict[str, float]:
    """CSV columns of one epoch from the per-split tracker tables (layers in forward order)."""
    columns: dict[str, float] = {}
    metrics = ("saturation", "intrinsic_dimension")
    values = {(split, metric): frames[split][metric].to_dict() for split in SPLITS for metric in metrics}
    for layer in frames[SPLITS[0]].index:
        for metric in metrics:
            for split in SPLITS:
                value = values[split, metric].get(layer, float("nan"))
                columns[f"{layer}_{split}_{metric}"] = float(value) if metric == "saturation" else _int(value)
    for split in SPLITS:
        columns[f"{split}_saturation_mean"] = float(frames[split]["saturation"].mean())
    return columns


def _int(value: Any) -> Any:
    return int(value) if value == value else float("nan")  # NaN for layers that saw no data


class SaturationCallback(Callback):
    """Adds saturation columns to every epoch row and writes the per-epoch plot."""

    def __init__(self, rundir: RunDir | None, *, delta: float = 0.99, options: TrackerOptions | None = None,
                 mode: str = "passes", plot: bool = True) -> None:
        if mode not in ("passes", "inline"):
            raise ValueError(f"mode must be 'passes' or 'inline'; got {mode!r}")
        self.rundir = rundir
        self.delta = delta
        self.options = options or TrackerOptions()
        self.mode = mode
        self.plot = plot and rundir is not None
        self._inline: dict[str, SaturationTracker] = {}
        self._uncalled_named: set[str] = set()  # layers already warned of as never called
        self._undersampled_named: set[str] = set()  # layers already warned of as seeing too few observations
        self._test_frame: pd.DataFrame | None = None  # the test split, tracked during the trainer's evaluation
        self._repeated: dict[str, int] = {}  # layers called more than once per forward pass: the most calls
        self._repeated_named: set[str] = set()  # those already warned of
        self._plotter: Any = None  # a SaturationPlotter: one figure for the epochs' plots (matplotlib lazily)

    # ------------------------------------------------------------------ inline mode
    def on_fit_start(self, trainer: "Trainer", bundle: "DataBundle") -> None:
        if len(trainer.history) < trainer.epochs:
            warn_of_untracked_layers(trainer.model, trainer.run_name)
            if next(trackable_layers(trainer.model, self.options), None) is None:
                warn_of_no_tracked_layer(trainer.model, self.options, trainer.run_name)  # once, not per tracker
        if self.mode != "inline" or len(trainer.history) == trainer.epochs:
            return
        if trainer.network is not trainer.model:
            raise UsageError("tracking_mode 'inline' cannot follow a DataParallel model (its replicas would race "
                             "on the covariance sums); use tracking_mode 'passes' or data_parallel false.")
        self._inline = {
            "train": SaturationTracker(trainer.model, self.delta, options=self.options, when=lambda m: m.training,
                                       warn_if_empty=False),
            "test": SaturationTracker(trainer.model, self.delta, options=self.options,
                                      when=lambda m: not m.training, warn_if_empty=False),
        }

    def on_fit_end(self, trainer: "Trainer", bundle: "DataBundle") -> None:
        for tracker in self._inline.values():
            tracker.close()
        self._inline = {}
        if self._plotter is not None:
            self._plotter.close()
            self._plotter = None

    # ------------------------------------------------------------------ per epoch
    def on_epoch_end(self, trainer: "Trainer", bundle: "DataBundle", epoch: int, row: dict[str, Any]) -> None:
        started = time.perf_counter()
        if self.mode == "inline":
            frames = {split: tracker.compute() for split, tracker in self._inline.items()}
            for tracker in self._inline.values():
                self._repeated.update(tracker.repeated)
                tracker.reset()
        else:
            frames = self.measure(trainer, bundle)
        row.update(saturation_columns(frames))
        self._warn_of_uncalled_layers(trainer.run_name, frames)
        self._warn_of_undersampled_layers(trainer.run_name, frames)
        self._warn_of_repeated_layers(trainer.run_name)
        log.info("%s epoch %d: saturation mean train %.4f, test %.4f (%.2f s)", trainer.run_name, epoch,
                 row["train_saturation_mean"], row["test_saturation_mean"], time.perf_counter() - started)
        if self.plot and self.rundir is not None:
            if self._plotter is None:
                from phd_lab.plots.saturation import SaturationPlotter
                self._plotter = SaturationPlotter()
            self._plotter.save(row, self.rundir.saturation_plot(epoch),
                               title=f"{self.rundir.name} epoch {epoch}, δ={self.delta:g}\n{self.rundir.variant}")

    def _warn_of_uncalled_layers(self, run_name: str, frames: dict[str, pd.DataFrame]) -> None:
        """Name, once per layer, the tracked layers a pass never called: their columns are empty (NaN) and s_mu
        leaves them out, which a reader of the CSV should not have to guess."""
        uncalled: dict[str, list[str]] = {}
        for split, frame in frames.items():
            for layer in frame.index[frame["n"] == 0]:
                uncalled.setdefault(str(layer), []).append(split)
        new = {layer: splits for layer, splits in uncalled.items() if layer not in self._uncalled_named}
        if not new:
            return
        self._uncalled_named.update(new)
        log.warning("%s: the forward passes never called %s, so their saturation is NaN and left out of s_mu (an "
                    "auxiliary head that runs in training mode only, a branch forward() skips); leave them out "
                    "with tracking_exclude to track only the layers that run.", run_name,
                    ", ".join(f"{layer} ({' and '.join(splits)} pass)" for layer, splits in new.items()))

    def _warn_of_undersampled_layers(self, run_name: str, frames: dict[str, pd.DataFrame]) -> None:
        """Name, once per layer, the tracked layers a pass gave no more observations (samples × positions) than
        they have features: their covariance has rank at most n − 1, so their saturation cannot exceed (n − 1)/d
        whatever the layer learned. Without a word, such a bound (a small data set, a small tracking_max_batches)
        read as a low saturation, and a run of such layers as a tail."""
        few: dict[str, list[str]] = {}
        for split, frame in frames.items():
            for layer, n, dim in zip(frame.index, frame["n"], frame["feature_dimension"]):
                if 0 < n <= dim and layer not in self._undersampled_named:
                    few.setdefault(str(layer), []).append(f"{split} pass: n={int(n)} ≤ {int(dim)} features")
        if not few:
            return
        self._undersampled_named.update(few)
        named = [f"{layer} ({'; '.join(splits)})" for layer, splits in few.items()]
        log.warning("%s: too few observations (samples × feature-map positions) for %s: n is not above the layer's "
                    "feature dimension d, so its covariance has rank at most n - 1 and its saturation cannot exceed "
                    "(n - 1)/d, whatever the layer learned; a low saturation there (and a tail of such layers) "
                    "measures the sample count, not the layer. Track more observations: more samples, a larger "
                    "tracking_max_batches, tracking_every_n 1, a larger tracking_resolution.", run_name,
                    first_names(named))

    @contextlib.contextmanager
    def during_test_evaluation(self, trainer: "Trainer") -> Iterator[None]:
        """Passes mode: track the test split during the trainer's own test evaluation, the same eval-mode
        forward passes over the same batches (with the same autocast), instead of forwarding the test set a
        second time in ``measure``: the same sums, one pass fewer per epoch. Not behind DataParallel, whose
        replicas would race on the sums; there ``measure`` runs its own test pass."""
        self._test_frame = None
        if self.mode != "passes" or trainer.network is not trainer.model:
            yield
            return
        tracker = SaturationTracker(trainer.model, self.delta, options=self.options, warn_if_empty=False)
        try:
            yield
            self._test_frame = tracker.compute()
            self._repeated.update(tracker.repeated)
        finally:
            tracker.close()

    def _warn_of_repeated_layers(self, run_name: str) -> None:
        """Name, once per layer, the tracked layers a forward pass calls more than once (a shared module): their
        one column pools the outputs of every call, at different depths, which the CSV did not tell."""
        new = {layer: calls for layer, calls in self._repeated.items() if layer not in self._repeated_named}
        if not new:
            return
        self._repeated_named.update(new)
        log.warning("%s: the forward pass calls %s more than once (shared modules), so the saturation column of each "
                    "pools the outputs of all its calls; give each call a module of its own to track them apart, "
                    "leave them out with tracking_exclude, or, where pooling is meant, set pools_repeated_calls = "
                    "True on the module (as CBAM's shared channel MLP does).",
                    run_name, first_names([f"{layer} ({calls} calls)" for layer, calls in new.items()]))

    def measure(self, trainer: "Trainer", bundle: "DataBundle") -> dict[str, pd.DataFrame]:
        """A tracked pass over the un-augmented training split, and one over the test split unless the test
        evaluation tracked it (``during_test_evaluation``)."""
        model = trainer.model
        was_training = model.training
        model.eval()
        tracker = SaturationTracker(model, self.delta, options=self.options, warn_if_empty=False)
        frames = {}
        try:
            for split, loader in (("train", bundle.train_eval), ("test", bundle.test)):
                if split == "test" and self._test_frame is not None:
                    frames[split], self._test_frame = self._test_frame, None
                    continue
                tracker.reset()
                batches = tqdm(loader, desc=f"{trainer.run_name} saturation ({split})", disable=not trainer.progress,
                               unit="batch", dynamic_ncols=True, **bar_options(transient=True))
                run_pass(tracker, model, batches, trainer.device, trainer.autocast)
                batches.close()
                frames[split] = tracker.compute()
            self._repeated.update(tracker.repeated)
        finally:
            tracker.close()
            model.train(was_training)
        return frames


def saturation_callback(config: RunConfig, rundir: RunDir) -> SaturationCallback | None:
    """CALLBACK_FACTORIES entry: the saturation callback when ``track_saturation`` is on."""
    if not config.track_saturation:
        return None
    return SaturationCallback(rundir, delta=config.delta, options=tracker_options(config),
                              mode=config.tracking_mode)
