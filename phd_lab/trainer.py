"""Trainer: the epoch loop, evaluation and checkpoint restore; files are the store's business.

``Trainer.__init__`` touches neither disk nor devices beyond what it is given. ``fit``
loads the checkpoint once, restores every state (model, optimizer, scheduler, scaler, RNGs,
callbacks) and continues after the last completed epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto: its asyncio variant calls iter() on the loader a second time

from phd_lab.callbacks import Callback
from phd_lab.checkpoint import CheckpointStore
from phd_lab.data import DataBundle
from phd_lab.errors import RunDiverged, RunFailure, UsageError
from phd_lab.interrupts import deferred_interrupts, raise_if_stop_requested
from phd_lab.metrics import Metric
from phd_lab.objectives import objective_of
from phd_lab.progress import bar_options
from phd_lab.seeding import capture_rng_state, restore_rng_state
from phd_lab.wording import plural

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *,
                 metrics: Mapping[str, Metric], epochs: int, device: torch.device,
                 callbacks: Sequence[Callback] = (), mixed_precision: bool = True,
                 data_parallel: bool = False, progress: bool = True, run_name: str = "") -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.metrics = dict(metrics)
        self.epochs = epochs
        self.device = torch.device(device)
        self.callbacks = list(callbacks)
        self.amp = bool(mixed_precision and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.data_parallel = data_parallel
        self.progress = progress
        self.run_name = run_name
        self.objective = objective_of(model)  # cross-entropy on labels, or a reconstruction's MSE
        self.history: list[dict[str, Any]] = []
        # whether a training batch of non-finite loss held NaN or inf itself (None: no such loss yet): the data, not
        # the learning rate, then made the weights non-finite (float16 overflows of mixed precision come first)
        self._non_finite_batch: bool | None = None
        self.epochs_run: list[int] = []  # epochs trained by this process (1-based)

    # ----------------------------------------------------------------- network in use
    @property
    def network(self) -> nn.Module:
        """The module that runs forward passes (DataParallel-wrapped when asked and possible)."""
        if self.data_parallel and self.device.type == "cuda" and torch.cuda.device_count() > 1:
            if not hasattr(self, "_parallel"):
                self._parallel = nn.DataParallel(self.model)
            return self._parallel
        return self.model

    def autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp)

    # ----------------------------------------------------------------- state
    def state_dict(self, bundle: DataBundle) -> dict[str, Any]:
        return {
            "epoch": len(self.history),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(bundle.generators),
            "history": [dict(row) for row in self.history],
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "cpu_threads": torch.get_num_threads(),  # float sums depend on it: a resume goes on with it
            "non_finite_batch": self._non_finite_batch,  # a rerun of a diverged run gives the same advice
        }

    def load_state_dict(self, state: dict[str, Any], bundle: DataBundle) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"], bundle.generators)
        self.history = [dict(row) for row in state["history"]]
        for callback, cb_state in zip(self.callbacks, state.get("callbacks", [])):
            callback.load_state_dict(cb_state)
        # absent in checkpoints of earlier versions: whether the data made the weights non-finite is not known there
        non_finite_batch = state.get("non_finite_batch")
        self._non_finite_batch = non_finite_batch if isinstance(non_finite_batch, bool) else None

    # ----------------------------------------------------------------- loop
    def fit(self, bundle: DataBundle, store: CheckpointStore) -> list[dict[str, Any]]:
        """Train the epochs the store's checkpoint has not completed (all of them without one), checkpointing each
        and telling the callbacks; return the history, one metrics row per epoch, resumed ones included."""
        state = store.load()
        if state is not None:
            if state["epoch"] > self.epochs:
                raise UsageError(f"The checkpoint {store.path} has {state['epoch']} completed epochs, but the "
                                 f"config asks for {self.epochs}. Use a new run id (or a larger 'epoch') "
                                 f"instead of shortening a finished run.")
            self.load_state_dict(state, bundle)
            if len(self.history) == self.epochs:
                log.info("Run %s already finished %s; skipping to post-processing.", self.run_name,
                         plural(self.epochs, "epoch"))
            else:
                log.info("Resuming run %s after epoch %d of %d.", self.run_name, len(self.history), self.epochs)
        for callback in self.callbacks:
            callback.on_fit_start(self, bundle)
        for callback in self.callbacks:
            callback.on_history(self, self.history)
        self._stop_if_diverged()  # a checkpoint that holds a diverged model: stop again, without training
        for epoch in range(len(self.history) + 1, self.epochs + 1):
            started = time.perf_counter()
            train_loss, train_metrics = self.train_epoch(bundle, epoch)
            with contextlib.ExitStack() as hooked:
                for callback in self.callbacks:
                    hooked.enter_context(callback.during_test_evaluation(self))
                test_loss, test_metrics = self.evaluate(bundle.test)
            self._step_scheduler(test_loss)
            row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss}
            row.update({f"train_{k}": v for k, v in train_metrics.items()})
            row.update({f"test_{k}": v for k, v in test_metrics.items()})
            row["epoch_seconds"] = round(time.perf_counter() - started, 3)
            for callback in self.callbacks:
                callback.on_epoch_end(self, bundle, epoch, row)
            self.history.append(row)
            with deferred_interrupts():  # a stop now would leave the epoch's checkpoint without its CSV row
                store.save(self.state_dict(bundle))
                self.epochs_run.append(epoch)
                log.info("%s epoch %d/%d: %s", self.run_name, epoch, self.epochs,
                         ", ".join(f"{k}={v:.4f}" for k, v in row.items()
                                   if k != "epoch" and isinstance(v, float)
                                   and not k.endswith(("saturation", "intrinsic_dimension"))))
                for callback in self.callbacks:
                    callback.on_history(self, self.history)
            self._stop_if_diverged()  # after the epoch's row and checkpoint: nothing of it is lost
        for callback in self.callbacks:
            callback.on_fit_end(self, bundle)
        return self.history

    def _step_scheduler(self, test_loss: float) -> None:
        """Step the scheduler once per epoch: a ReduceLROnPlateau with the epoch's test loss (the one value every
        run has; its step needs a metric), any other without arguments (``factory_results.stepping_refusal``)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(test_loss)
        elif self.scheduler is not None:
            self.scheduler.step()

    def non_finite_tensors(self) -> list[str]:
        """Names of the model's floating-point parameters and buffers that hold NaN or inf."""
        tensors = [*self.model.named_parameters(), *self.model.named_buffers()]
        return [name for name, tensor in tensors
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]

    def _stop_if_diverged(self) -> None:
        """Raise RunDiverged when the model's weights are no longer finite. A NaN weight stays NaN, so the
        remaining epochs and the post-processing would only spend time on a meaningless model."""
        if not self.history:
            return
        bad = self.non_finite_tensors()
        if not bad:
            return
        epoch, row = len(self.history), self.history[-1]
        named = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        losses = ", ".join(f"{k}={row[k]}" for k in ("train_loss", "test_loss") if k in row)
        advice = ("Try a smaller learning rate (optimizer_args)"
                  + (", or mixed_precision: false with a new run_id." if self.amp else "."))
        if self._non_finite_batch:
            advice = ("A training batch of non-finite loss held NaN or inf values itself: the data, not "
                      "the learning rate, made the weights non-finite. Fix the dataset (its factory's images) and "
                      "train the run again from the start (delete its folder, or give a new run_id).")
        raise RunDiverged(
            f"Run {self.run_name} diverged in epoch {epoch} of {self.epochs}: its weights are no longer finite "
            f"({named}; {losses}). Training stopped there and post-processing was skipped; the epochs up to "
            f"{epoch} are in its CSV and checkpoint, so running the same config stops here again. {advice}")

    @torch.enable_grad()
    def train_epoch(self, bundle: DataBundle, epoch: int) -> tuple[float, dict[str, float]]:
        """One pass over the training set: the mean loss per sample and the metrics' values. With gradients
        whatever the caller's grad mode: a notebook's ``torch.set_grad_enabled(False)`` failed every run."""
        network = self.network
        network.train()
        for metric in self.metrics.values():
            metric.reset()
        total_loss, total = 0.0, 0
        bar = tqdm(bundle.train, desc=f"{self.run_name} epoch {epoch}/{self.epochs}",
                   disable=not self.progress, unit="batch", dynamic_ncols=True, **bar_options(transient=True))
        for inputs, targets in bar:
            raise_if_stop_requested()
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                outputs = network(inputs)
                loss = self.objective.loss(outputs, inputs, targets)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            batch = targets.shape[0]
            value = float(loss.detach())
            if not self._non_finite_batch and not math.isfinite(value):  # no cost to the batches of finite loss
                self._non_finite_batch = inputs.is_floating_point() and not bool(torch.isfinite(inputs).all())
            total_loss += value * batch
            total += batch
            for metric in self.metrics.values():
                metric.update(targets.detach(), outputs.detach().float())
            if not bar.disable:  # a metric's value may cost a pass over what it holds: read it only to show it
                bar.set_postfix(self._postfix(total_loss / total), refresh=False)
        bar.close()
        return total_loss / max(total, 1), self._metric_values()

    @torch.no_grad()
    def evaluate(self, loader: torch.utils.data.DataLoader) -> tuple[float, dict[str, float]]:
        """The model in evaluation mode on ``loader``: the mean loss per sample and the metrics' values."""
        network = self.network
        network.eval()
        for metric in self.metrics.values():
            metric.reset()
        total_loss, total = 0.0, 0
        for inputs, targets in tqdm(loader, desc=f"{self.run_name} evaluating", disable=not self.progress,
                                    unit="batch", dynamic_ncols=True, **bar_options(transient=True)):
            raise_if_stop_requested()
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with self.autocast():
                outputs = network(inputs)
                loss = self.objective.loss(outputs, inputs, targets)
            total_loss += float(loss) * targets.shape[0]
            total += targets.shape[0]
            for metric in self.metrics.values():
                metric.update(targets, outputs.float())
        return total_loss / max(total, 1), self._metric_values()

    def _postfix(self, loss: float) -> dict[str, str]:
        """The progress bar's figures: the mean loss so far and the first metric's value where it is one number."""
        postfix = {"loss": f"{loss:.4f}"}
        name, metric = next(iter(self.metrics.items()), (None, None))
        value = metric.value if metric is not None else None  # read once: it may cost a pass
        if name is not None and not isinstance(value, Mapping):
            postfix[name] = f"{metric_number(name, value):.4f}"
        return postfix

    def _metric_values(self) -> dict[str, float]:
        """Each metric's value as CSV columns: ``name``, or ``name_key`` for each key of a dict value."""
        values: dict[str, float] = {}
        for name, metric in self.metrics.items():
            value = metric.value
            if isinstance(value, Mapping):
                values.update({f"{name}_{k}": metric_number(f"{name}[{k!r}]", v) for k, v in value.items()})
            else:
                values[name] = metric_number(name, value)
        return values


def metric_number(name: str, value: Any) -> float:
    """``value`` of the metric ``name`` as a float: a number, a numpy scalar or a tensor of one element (a shape (1,)
    tensor failed the run in the progress bar's format); anything else is a RunFailure naming the metric, where a
    bare TypeError or ValueError ended the run. Not a RegistryError: found once the run trains, that one ended the
    command with exit 2 ('nothing written') beside a run folder already made, its log not saying why it stopped."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        shown = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else (
            f"{type(value).__name__} {value!r}"[:80])
        raise RunFailure(f"The value of metric {name!r} is {shown}, not a number: a metric's value must be a "
                         f"number (a float, a numpy scalar or a tensor of one element) or a dict of them, one CSV "
                         f"column per key (see docs/registries.md). Fix the metric.") from None
