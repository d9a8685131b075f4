"""TrainTestExecutor: one grid point from registries to trained model and post-processing.

The checks and helpers it relies on live beside it: factory arguments in ``factory_args``, the device
in ``device``, the checks on a meta model in ``model_checks`` and what a run holds while it trains
(threads, lock, log file) in ``run_guards``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from phd_lab import atomic
from phd_lab.callbacks import Callback, MetricsCSV, RunFolderGuard
from phd_lab.checkpoint import CheckpointStore, misfit, room_warning
from phd_lab.config import (META_KEY, SCHEMA_BY_NAME, RunConfig, as_single_point, logged_values_problem,
                            names_another_run)
from phd_lab.config_file import shown_value
from phd_lab.config_paths import absolute_paths
from phd_lab.data import DataBundle
from phd_lab.device import DeviceMissing, resolve_device
from phd_lab.environment import cpu_instruction_set, device_description, git_diff, versions
from phd_lab.errors import ConfigError, DataError, RegistryError, RunDiverged, UsageError
from phd_lab.factory_args import (FRAMEWORK_MODEL_OPTIONS, SUPPLIED_ARGS, check_factory_args, defaults_in_effect,
                                  factory_model_args, logged_run, refused_args)
from phd_lab.factory_results import (check_callable, check_data_callable, checked_result,
                                     none_of_the_models_parameters, stepping_refusal, unrestorable_model_state,
                                     unrestorable_optimizer, unrestorable_scheduler)
from phd_lab.interrupts import raise_if_stop_requested, raise_interruption_behind
from phd_lab.kept_folders import existing_folder
from phd_lab.lock import ProcessTurn, RunLock
from phd_lab.model_checks import (check_fits_data, check_input_size, check_objective, check_single_output,
                                  check_single_sample_batches, check_tracked_layers, check_truncate, meta_model,
                                  trained_meta_model, warn_of_unmatched_tracking_patterns)
from phd_lab.bundle_checks import check_bundle_data
from phd_lab.models.init import LINEAR_INITS, redraw_linear_layers
from phd_lab.objectives import CLASSIFICATION, declare_objective, declared_objective
from phd_lab.registry import Registries
from phd_lab.report.collect import analyse_run, stamp_if_present
from phd_lab.reproduction import device_type, setup_differences
from phd_lab.run_guards import (cpu_threads, cudnn_benchmark, fx_sources_released, records_before_the_log, run_log,
                                torch_flags_kept, warning_filters_kept, writable_lock)
from phd_lab.rundir import FolderListings, RunDir
from phd_lab.seeding import global_generators_kept, seed_everything
from phd_lab.steps import Step, StepContext, logged_steps, resolve_steps
from phd_lab.steps.analysis import ANALYSED_PROBES
from phd_lab.steps.stamps import STAMPS, StepStamps, step_stamp
from phd_lab.trainer import Trainer
from phd_lab.tracking.callback import saturation_callback
from phd_lab.user_paths import link_target
from phd_lab.wording import plural

log = logging.getLogger(__name__)

RUN_TURN = ProcessTurn("training run")  # runs in threads of one process take turns (seeds, threads are global)

# Feature modules add callbacks here: ``factory(config, rundir) -> Callback | None``.
CALLBACK_FACTORIES: list[Callable[[RunConfig, RunDir], "Callback | None"]] = [
    saturation_callback,
]


def _warn_once(said: dict[str, int] | None, where: str, error: Exception, note: str = "") -> None:
    """Log ``error`` of the grid point ``where`` as a warning for the first point that found it, and count the
    others in ``said`` (by the error's message), which the grid's summary then names."""
    said = {} if said is None else said
    if not said.get(str(error)):
        log.warning("%s: %s%s", where, error, note)
    said[str(error)] = said.get(str(error), 0) + 1


class TrainTestExecutor:
    """Builds model, data, optimizer and metrics of one run, trains it and post-processes it."""

    def __init__(self, config: RunConfig, registries: Registries, *, progress: bool = True,
                 listings: FolderListings | None = None) -> None:
        self.config = config
        self.registries = registries
        self.progress = progress
        self.rundir = RunDir.for_run(config, listings=listings)  # listings: shared by a grid's points
        self.steps: list[tuple[Step, dict[str, Any]]] = []
        self._validated = False
        self._device: torch.device | None = None  # resolved when the run starts (logged with the versions)
        self._trained_threads: int | None = None  # the thread count the run's checkpoint was trained with
        self._git_diff: bytes | None = None  # uncommitted changes of the phd-lab checkout (set by logged_config)
        self._setup: dict[str, Any] | None = None  # versions and device of the attempt under way (``_attempt_setup``)
        self._objective = CLASSIFICATION  # what the built model is trained for (logged for the analysis)
        self._truncation: tuple[int, str] | None = None  # what ``truncate`` did, said in the run's log once it is open
        self._output_layer_note: str | None = None  # which layer linear_init drew, where module order misleads
        # the layer ``truncate`` cut before (None: no border, not cut), logged in _meta: where 'border' cuts depends
        # on the receptive-field code, so a rerun under a later version names a cut that moved; a cut asked for
        # inside a residual block goes before the block, which it names, and truncate_named the layer asked for
        self._cut_meta: dict[str, str | None] = {}

    # ------------------------------------------------------------------ validation
    def validate(self, missing_data: str = "error", said: dict[str, int] | None = None,
                 missing_device: str = "error", *, device_option: bool = False) -> None:
        """Every check that needs no data: registry names, factory arguments, steps, device. ``said`` counts
        the warnings of a grid's points by message: a message is logged for its first point only.
        ``missing_data``/``missing_device`` "warn" (a dry run) or "ignore" (a device: submitting to a cluster,
        whose workers check it) turn a dataset or device this machine lacks into a warning or nothing.
        ``device_option``: the device is the command line's ``--device``, which its messages name."""
        cfg, where = self.config, self.config.source
        try:
            self.registries.check_names(cfg)
        except RegistryError as error:
            raise RegistryError(f"{where}: {error}") from None
        model_args = factory_model_args(cfg.model_args)
        logged = cfg.logged_meta is not None
        check_factory_args(self.registries.models.get(cfg.model), model_args, "model_args", cfg.model, where,
                           SUPPLIED_ARGS["models"], framework=FRAMEWORK_MODEL_OPTIONS, logged=logged)
        truncate = cfg.model_args.get("truncate")
        if truncate is not None and (not isinstance(truncate, str) or not truncate):
            raise ConfigError(f"{where}: model_args 'truncate' must be a layer name, 'border' or 'border_max' "
                              f"(or null for no truncation); got {shown_value(truncate)}.")
        linear_init = cfg.model_args.get("linear_init")
        # not a string: an object (a grid axis [{}] gives one) is no key of LINEAR_INITS, and unhashable
        if linear_init is not None and (not isinstance(linear_init, str) or linear_init not in LINEAR_INITS):
            choices = "; ".join(f"{name!r}: {what}" for name, what in LINEAR_INITS.items())
            raise ConfigError(f"{where}: model_args 'linear_init' must be null (the model's own draw) or one of "
                              f"{choices}; got {shown_value(linear_init)}.")
        dataset_factory = self.registries.datasets.get(cfg.dataset)
        check_factory_args(dataset_factory, cfg.dataset_args, "dataset_args",
                           cfg.dataset, where, SUPPLIED_ARGS["datasets"], logged=logged)
        check_data = getattr(dataset_factory, "check_data", None)  # optional: is the data there at all?
        if check_data is not None:
            takes_resolution = "resolution" in inspect.signature(check_data).parameters  # a registry's may lack it
            passed = {"resolution": cfg.resolution, **cfg.dataset_args} if takes_resolution else cfg.dataset_args
            check_data_callable(cfg.dataset, check_data, self.registries.datasets.source, where, cfg.data_dir,
                                **passed)
            try:
                check_data(cfg.data_dir, **passed)
            except DataError as error:
                if logged:  # the path of the machine and the day it trained: the one key to change here
                    error = DataError(f"{error} This is a logged config, whose data_dir is the one the run was "
                                      f"trained with (another machine's, or a folder moved since): set \"data_dir\" "
                                      f"in it to where the data lies here. It is no part of the run's identity, so the "
                                      f"run keeps its folder.")
                if missing_data != "warn":  # "warn": a dry run, which shows the grid also before the download
                    raise DataError(f"{where}: {error}") from None
                _warn_once(said, where, error)
            except ConfigError as error:  # a dataset argument the check found wrong (e.g. 'download': "yes")
                raise ConfigError(f"{where}: {error}") from None
            except Exception as error:  # a fault of the registry's check: a traceback ended the grid, a dry run's too
                raise_interruption_behind(error)
                raise RegistryError(f"{where}: the check_data of the dataset factory {cfg.dataset!r} of "
                                    f"{self.registries.datasets.source or 'its registry'!r} failed with "
                                    f"{type(error).__name__}: {error}. It should raise phd_lab.errors.DataError for "
                                    f"data that is missing or wrong (shown as its message) and nothing else; fix "
                                    f"the check.") from None
        check_factory_args(self.registries.optimizers.get(cfg.optimizer), cfg.optimizer_args, "optimizer_args",
                           cfg.optimizer, where, SUPPLIED_ARGS["optimizers"], logged=logged)
        self.build_metrics()  # what the factories return, before a run folder is made
        self.steps = resolve_steps(cfg, where)
        for key in ("device", "tracking_device"):
            if getattr(cfg, key) is None:
                continue
            try:
                named = "--device" if key == "device" and device_option else f"the key {key!r}"
                resolve_device(getattr(cfg, key), named, auto=key == "device")
            except DeviceMissing as error:
                if key == "tracking_device" and not cfg.track_saturation:
                    continue  # nothing is tracked: the run never uses it
                if missing_device == "error":
                    raise DeviceMissing(f"{where}: {error}") from None
                if missing_device == "warn":
                    _warn_once(said, where, error, " (a run needs it where it trains)")
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from None
        self._validated = True

    def check_model(self, shared: dict[Any, Any] | None = None) -> None:
        """What only a built model can tell, before any run trains: the model_args values, the layer
        ``truncate`` names, the layers the steps and tracking patterns name. ``shared`` holds the meta
        models and the checks they passed for the other points of the grid: the forward passes and traces
        depend only on the model, the resolution and a step's parameters, and repeating them for every
        seed or learning rate cost most of a large grid's start (every array task of a SLURM job pays it).
        A model that cannot be built on the meta device is checked when it is built for training."""
        shared = {} if shared is None else shared
        key, model = meta_model(self.config, self.registries, shared)
        factory = self.registries.models.get(self.config.model)
        if model is None:
            # at least the values, on a stand-in model; on the meta device, as a real one draws its weights from
            # the caller's torch generator
            self._check_optimizer(nn.Linear(1, 1, device="meta"))
            check_objective(self.config, None, factory=factory)  # the metrics, by what the factory declares
            return
        cfg = self.config

        def once(check: Callable[[], None], *inputs: Any) -> None:
            """Run ``check`` unless it passed for the same model and inputs; a failure is raised every time."""
            memo = ("passed", key, *inputs)
            if memo not in shared:
                check()
                shared[memo] = True

        # first: a reconstruction model is refused 'truncate' before its border is looked for
        once(lambda: check_objective(cfg, model, factory=factory), "objective", cfg.resolution,
             json.dumps(cfg.metrics), json.dumps(cfg.model_args.get("truncate")))
        once(lambda: check_truncate(cfg, model), "truncate", json.dumps(cfg.model_args.get("truncate")),
             cfg.resolution)  # it traces and runs the model on the meta device
        once(lambda: check_input_size(cfg, model), "input size", cfg.resolution)
        once(lambda: self._refuse_an_unrestorable_model(model), "model state")
        once(lambda: check_single_output(cfg, model, check_objective(cfg, model, forward=False, factory=factory)),
             "single output", cfg.resolution, json.dumps(cfg.model_args.get("truncate")))
        if cfg.batch_size == 1:
            once(lambda: check_single_sample_batches(cfg, model), "single sample", cfg.resolution)
        trained = trained_meta_model(cfg, model, shared, key)  # the layers named as the run names them
        check_tracked_layers(cfg, trained)
        cut = (json.dumps(cfg.model_args.get("truncate")), cfg.resolution if trained is not model else None)
        if cfg.track_saturation:  # said once per model of the grid, not for each of its seeds or learning rates
            once(lambda: warn_of_unmatched_tracking_patterns(cfg, trained), "tracking patterns",
                 json.dumps([cfg.tracking_include, cfg.tracking_exclude]), *cut)
        for step, params in self.steps:  # at the run's resolution where a step's check runs the model (extract)
            resolution = cfg.resolution if step.checks_at_resolution else None
            once(lambda: step.check_model(params, trained, cfg.source, resolution=resolution), "step", step.name,
                 json.dumps(params, sort_keys=True, default=str), resolution, *cut)
        self._check_optimizer(model)

    def _check_optimizer(self, model: nn.Module) -> None:
        """The optimizer factory's values (lr, gamma, ...) on the meta model, before any point trains.
        A factory that cannot work on meta parameters is checked when the run builds it."""
        try:
            self.build_optimizer(model)
        except UsageError:  # ConfigError; RegistryError: it returned no (optimizer, scheduler)
            raise
        except Exception as error:  # noqa: BLE001 - e.g. a factory that reads real parameter values
            raise_interruption_behind(error)
            log.debug("%s: optimizer %r not checked on the meta model (%s: %s)", self.config.source,
                      self.config.optimizer, type(error).__name__, error)

    # ------------------------------------------------------------------ building
    def build_data(self) -> DataBundle:
        """The data set's loaders from its registry factory; its errors name the config they came from."""
        cfg = self.config
        factory = self.registries.datasets.get(cfg.dataset)
        try:
            bundle = factory(batch_size=cfg.batch_size, resolution=cfg.resolution, data_dir=cfg.data_dir,
                             seed=cfg.seed, num_workers=cfg.num_workers, **cfg.dataset_args)
        except UsageError as error:  # ConfigError, DataError: name the config and the run
            raise_interruption_behind(error)  # a factory's DataError raised from a Ctrl-C
            raise type(error)(f"{cfg.source}: {error}") from None
        except (TypeError, ValueError) as error:
            raise_interruption_behind(error)  # a Ctrl-C in the factory is no bad dataset_args
            raise refused_args(cfg.source, "dataset", cfg.dataset, cfg.dataset_args, error) from None
        return checked_result("datasets", cfg.dataset, bundle, self.registries.datasets.source, cfg.source)

    def build_model(self, bundle: DataBundle) -> nn.Module:
        """The model for the data's classes and channels, cut at ``truncate`` and with its Linear layers drawn
        again per ``linear_init`` (the model_args the factory never sees)."""
        cfg = self.config
        factory = self.registries.models.get(cfg.model)
        model_args = factory_model_args(cfg.model_args)
        try:
            with logged_run(cfg.logged_meta is not None):  # tv: models check their arguments' types as they build
                model = factory(num_classes=bundle.num_classes, in_channels=bundle.in_channels, **model_args)
        except (TypeError, ValueError) as error:
            raise_interruption_behind(error)
            raise refused_args(cfg.source, "model", cfg.model, model_args, error) from None
        checked_result("models", cfg.model, model, self.registries.models.source, cfg.source)
        truncate = cfg.model_args.get("truncate")
        if truncate:
            from phd_lab.models.truncate import resolve_cut, truncate_model
            layer = resolve_cut(model, truncate, cfg.resolution)
            self._cut_meta = {"truncated_before": layer}
            if layer is not None:
                model = truncate_model(model, layer, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                                       input_resolution=cfg.resolution)
                self._cut_meta = {"truncated_before": model.cut_before}
                said = (f"model_args truncate {truncate!r}: the model is cut before {model.cut_before} and ends in "
                        f"global average pooling + a linear classifier.")
                if model.moved is not None:  # a layer inside a residual block: the cut goes before the block
                    self._cut_meta["truncate_named"] = layer  # what an earlier version logged as truncated_before
                    named = f"{layer} as named" if layer == truncate else \
                        f"{layer} (its {truncate} layer at {cfg.resolution} px)"
                    said += f" The cut is before {model.cut_before}, not before {named}: {model.moved}."
                self._truncation = (logging.INFO, said)
            else:  # the full model trains in a folder named after truncate: its log must say so
                self._truncation = (logging.WARNING, f"model_args truncate {truncate!r}: {cfg.model} has no border "
                                                     f"layer at {cfg.resolution} px (every layer can still use new "
                                                     f"context), so the model is not truncated.")
        linear_init = cfg.model_args.get("linear_init")
        if linear_init is not None:
            self._output_layer_note = redraw_linear_layers(
                model, linear_init, (bundle.in_channels, cfg.resolution, cfg.resolution))
        self._refuse_an_unrestorable_model(model)  # a model the meta device could not build is checked here
        return model

    def _refuse_an_unrestorable_model(self, model: nn.Module) -> None:
        """A model whose state no checkpoint could restore (``unrestorable_model_state``), before a run folder."""
        refusal = unrestorable_model_state(model)
        if refusal:
            raise RegistryError(f"{self.config.source}: the model factory {self.config.model!r} of "
                                f"{self.registries.models.source or 'its registry'!r} returned what the trainer "
                                f"cannot use: {refusal} (see docs/registries.md). Fix the factory.")

    def build_optimizer(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer and its scheduler for ``model`` from the registry factory, given the epoch count."""
        cfg = self.config
        factory = self.registries.optimizers.get(cfg.optimizer)
        if next(iter(model.parameters()), None) is None:  # torch's "optimizer got an empty parameter list"
            raise ConfigError(f"{cfg.source}: model {cfg.model!r} has no parameters for optimizer {cfg.optimizer!r} "
                              f"to train: its weights are buffers or plain tensors, which no optimizer updates. "
                              f"Register the weights it should learn as nn.Parameter (or use layers such as "
                              f"nn.Conv2d and nn.Linear).")
        if not any(parameter.requires_grad for parameter in model.parameters()):  # backward() had nothing to do
            raise ConfigError(f"{cfg.source}: model {cfg.model!r} has no parameter that requires a gradient (its "
                              f"factory froze all of them, requires_grad=False), so there is nothing to train: the "
                              f"run failed at its first batch ('element 0 of tensors does not require grad'). Leave "
                              f"the layers it should learn trainable.")
        check_callable("optimizers", cfg.optimizer, factory, self.registries.optimizers.source, cfg.source, model,
                       epochs=cfg.epoch)
        try:
            built = factory(model, epochs=cfg.epoch, **cfg.optimizer_args)
        except (TypeError, ValueError) as error:
            raise_interruption_behind(error)
            raise refused_args(cfg.source, "optimizer", cfg.optimizer, cfg.optimizer_args, error) from None
        optimizer, scheduler = checked_result("optimizers", cfg.optimizer, built, self.registries.optimizers.source,
                                              cfg.source)
        refusal = (stepping_refusal(optimizer, scheduler) or none_of_the_models_parameters(optimizer, model)
                   or unrestorable_optimizer(optimizer) or unrestorable_scheduler(scheduler))
        if refusal:
            raise RegistryError(f"{cfg.source}: the optimizer factory {cfg.optimizer!r} of "
                                f"{self.registries.optimizers.source or 'its registry'!r} returned what the trainer "
                                f"cannot use: {refusal} (see docs/registries.md). Fix the factory.")
        return optimizer, scheduler

    def build_metrics(self) -> dict[str, Any]:
        """The run's metrics by lower-cased name, each a new one from its registry factory."""
        cfg, source = self.config, self.registries.metrics.source
        metrics = {}
        for name in cfg.metrics:
            factory = self.registries.metrics.get(name)
            check_callable("metrics", name, factory, source, cfg.source)
            metrics[name.lower()] = checked_result("metrics", name, factory(), source, cfg.source)
        return metrics

    # ------------------------------------------------------------------ config log
    def logged_config(self) -> dict[str, Any]:
        """The config as the run folder logs it: every value resolved, plus the setup it ran under
        (versions, device, registry files, defaults in effect), so that the file reproduces the run."""
        values = self.logged_values()
        if self._trained_threads is not None:  # the count the checkpoint was trained with, whatever the config says
            values["cpu_threads"] = self._trained_threads
        elif values.get("cpu_threads") is None:  # the count in effect: the last bits of CPU results depend on it
            values["cpu_threads"] = torch.get_num_threads()
        values[META_KEY] = {**self._attempt_setup(), **cpu_instruction_set(),
                            "registry_files": dict(self.registries.files),
                            "registry_sha256": self.registries.file_hashes(),
                            "registry_factory_sha256": self.registries.factory_hashes(self.config),
                            "registry_helper_sha256": self.registries.helper_hashes(),
                            "defaults_in_effect": self._defaults_in_effect(), "working_directory": os.getcwd(),
                            **self._cut_meta}
        # the commit alone does not say which code ran in a checkout with uncommitted changes: their patch
        # is kept beside the config (``<name>_git.diff``) and its sha256 is logged and compared on a rerun
        self._git_diff = git_diff() if values[META_KEY].get("git_dirty") else None
        values[META_KEY]["git_diff_sha256"] = (hashlib.sha256(self._git_diff).hexdigest()
                                               if self._git_diff else None)
        if self._objective != CLASSIFICATION:  # the analysis gives no classifier advice
            values[META_KEY]["objective"] = self._objective
        return values

    def logged_values(self) -> dict[str, Any]:
        """The config's values as ``logged_config`` logs them, before the thread count and setup it adds."""
        # rerunnable: lists that are values stay values; folders absolute, so that the file reruns this run
        # from any working directory (read from inside its run folder it follows the folder, see rundir.py)
        values = as_single_point(self.config.values)
        values["post_processing"] = json.loads(json.dumps(logged_steps(self.config, self.steps)))
        return self.portable(values)  # the steps' folders too (the extract step's own latents_dir)

    def portable(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Config values as a process in another working directory (a rerun, a Dask worker) reads them: folders
        absolute, and a registry module found in this working directory named by its file (mymods → its path)."""
        values = absolute_paths(values)
        values["registries"] = self.registries.logged_specs(values["registries"])
        return values

    def _defaults_in_effect(self) -> dict[str, dict[str, Any]]:
        cfg = self.config
        chosen = {"models": (cfg.model, cfg.model_args), "datasets": (cfg.dataset, cfg.dataset_args),
                  "optimizers": (cfg.optimizer, cfg.optimizer_args)}
        return {f"{kind[:-1]}_args": defaults_in_effect(self.registries[kind].get(name), given, SUPPLIED_ARGS[kind])
                for kind, (name, given) in chosen.items()}

    def _changes_to_training(self, previous: Mapping[str, Any], old_meta: Mapping[str, Any]) -> list[str]:
        """Differences from the logged config that would change the results of the epochs still to train:
        another device type (cpu/cuda; another GPU index is the same setup), and on CUDA another
        mixed_precision or data_parallel; another tracking device changes the saturation columns."""
        def spec_type(spec: Any) -> str | None:
            try:
                return torch.device(spec).type if spec not in (None, "auto") else None
            except (RuntimeError, TypeError, ValueError):
                return None

        cfg, new = self.config, self._device.type if self._device is not None else spec_type(self.config.device)
        old = spec_type(old_meta.get("device")) or spec_type(previous.get("device"))
        changes = []
        if old is not None and new is not None and old != new:
            changes.append(f"device {old} (now {new})")
        if "cuda" in (old, new):
            for key in ("mixed_precision", "data_parallel"):
                if key in previous and previous[key] != cfg.values.get(key):
                    changes.append(f"{key} {json.dumps(previous[key])} (now {json.dumps(cfg.values.get(key))})")
        old_tracking = spec_type(previous.get("tracking_device")) or old
        new_tracking = spec_type(cfg.tracking_device) or new
        tracks = cfg.track_saturation and "tracking_device" in previous  # a run tracking nothing never uses it
        if tracks and None not in (old_tracking, new_tracking) and old_tracking != new_tracking:
            changes.append(f"tracking_device {old_tracking} (now {new_tracking})")
        return changes

    def _epochs_resumed_from(self) -> int:
        """The epochs of the checkpoint a resume goes on from (``peek_epochs``: a damaged one passed over, as loading
        passes it over), 0 where none can be read. Not the metrics CSV's rows: after a damaged last checkpoint the
        CSV listed every epoch, and the epoch trained again ran on another device under a logged config that still
        named the first; a CSV a kill left one row short refused a finished run's post-processing elsewhere."""
        return CheckpointStore(self.rundir.checkpoint, self.rundir.previous_checkpoint).peek_epochs() or 0

    def _read_logged_config(self) -> dict[str, Any] | None:
        """The run folder's logged config as written, or None when there is none or it cannot be read."""
        return read_logged_config(self.rundir.config)[0]

    def _refuse_an_unreadable_logged_config(self) -> None:
        """``write_config``'s refusal of a trained run whose logged config cannot be read, made before the folder is
        locked and its log opened: made there, it appended the attempt's first lines to the run's log (and no end
        line, which reads as a killed attempt) while saying nothing in the folder was changed."""
        problem = self._unreadable_logged_config_problem()
        if problem is not None:
            raise UsageError(self._unreadable_logged_config(self.rundir.config, problem))

    def _unreadable_logged_config_problem(self) -> str | None:
        """Why the logged config of a trained run cannot be read, or None (no such config, or no checkpoint)."""
        path = self.rundir.config
        if not path.exists() or not CheckpointStore(self.rundir.checkpoint, self.rundir.previous_checkpoint).exists():
            return None
        return read_logged_config(path)[1]

    def logged_config_refusal(self) -> str | None:
        """What of the run folder's logged config makes the plain command refuse the run (a dangling link, or a
        trained run's config that cannot be read), in a few words for ``--dry-run``'s status; None where nothing."""
        path = self.rundir.config
        if path.is_symlink() and not path.exists():
            return f"{path.name} is a symbolic link to {link_target(path)!r}, which does not exist"
        problem = self._unreadable_logged_config_problem()
        return None if problem is None else f"{path.name} cannot be read ({problem})"

    def _unreadable_logged_config(self, path: Path, problem: str) -> str:
        return (f"{self.config.source}: the logged config {str(path)!r} of the trained run in that folder cannot be "
                f"read ({problem}), and it is what says how the checkpoint's weights were trained (device, "
                f"mixed_precision, registries, versions). Restore it (from a backup or a copy of the logs), or delete "
                f"it to log this config's values instead (the run's only if it was trained with them); nothing in the "
                f"folder was changed.")

    def write_config(self) -> None:
        """Write the logged config into the run folder. A folder of another run is refused; a trained run keeps
        the values that shaped its weights, and a run with epochs left refuses a changed device setup. A trained
        run whose logged config is there but cannot be read is refused: written anew, it would log this rerun's
        values as those its weights were trained with."""
        path = self.rundir.config
        previous, problem = read_logged_config(path)
        if problem is not None:
            if CheckpointStore(self.rundir.checkpoint, self.rundir.previous_checkpoint).exists():
                raise UsageError(self._unreadable_logged_config(path, problem))
            log.warning("The logged config %s cannot be read (%s); the run has no checkpoint, so it is written anew "
                        "with this config's values.", path, problem)
        if previous is not None:
            old_meta = previous.pop(META_KEY, None)
            previous = {k: v for k, v in previous.items() if k in SCHEMA_BY_NAME}  # keys of older versions
            if names_another_run(previous, self.config):
                raise UsageError(f"The run folder {str(self.rundir.root)!r} holds a run with a different "
                                 f"config ({path.name}); use another run id.")
            if CheckpointStore(self.rundir.checkpoint, self.rundir.previous_checkpoint).exists():  # trained
                now, kept, asked = self._trained_rerun(previous, old_meta)
                self._say_setup_differences(old_meta, now[META_KEY], against_logged_run=False)
                changed = self._changes_to_training(previous, old_meta or {}) if kept else []
                # a diverged run stops at once (nothing more trains), whatever the setup
                if changed and self._epochs_resumed_from() < self.config.epoch and not self.rundir.diverged.is_file():
                    raise UsageError(
                        f"{self.config.source}: the run in {str(self.rundir.root)!r} has epochs left to train and "
                        f"was trained so far with {'; '.join(changed)}. A run continues with the settings it began "
                        f"with, so that its logged config ({path.name}) reproduces it: set them back in the config "
                        f"(or with --device), or train the changed setup afresh under a new run_id.")
                if asked:
                    log.warning("This rerun differs from the logged config %s in %s, which shaped the trained "
                                "weights; the file keeps the values the run was trained with.", path.name,
                                ", ".join(f"{k}={json.dumps(value)}" for k, value in sorted(asked.items())))
                # the versions (and commit) the run was trained with stay as well
                atomic.write_json(path, {**now, **kept, **({META_KEY: old_meta} if old_meta else {})})
                return
        now = self.logged_config()
        self._say_setup_differences(self.config.logged_meta, now[META_KEY], against_logged_run=True)
        if self._git_diff:
            atomic.write_bytes(self.rundir.git_diff, self._git_diff)
        else:
            atomic.remove(self.rundir.git_diff, missing_ok=True)  # an earlier, untrained start's changes
        atomic.write_json(path, now)

    def _trained_rerun(self, previous: dict[str, Any],
                       old_meta: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The config a rerun of a trained run logs, the training values it keeps from the logged ``previous``
        (its keys of this version) and those this rerun asks for instead (named in a warning). The keys that shaped
        the weights keep the values the run was trained with (what reproduces it); the others (post-processing,
        analysis, probe, folders) follow the rerun. A device spelled otherwise that resolves to the type the run
        trained on (``_meta``'s device: 'cpu' for a run of 'auto' without a GPU) is asked for no other device."""
        now = self.logged_config()
        if "registries" in previous:  # logged by its bare name (by earlier versions): the same file
            previous["registries"] = self.registries.logged_specs(previous["registries"])
        kept, asked = kept_training_values(previous, now, self._trained_threads, self.config.cpu_threads)
        trained_on = old_meta.get("device") if isinstance(old_meta, Mapping) else None
        if "device" in asked and trained_on and device_type(trained_on) == device_type(now[META_KEY].get("device")):
            del asked["device"]  # another device type is named by the setup comparison (and refused with epochs left)
        return now, kept, asked

    def finished_rerun_is_silent(self) -> bool:
        """Whether ``write_config`` would leave the logged config of this trained run as it is and say nothing: the
        config asks for no other value (a training key the run keeps is named in a warning) and the same code
        builds its model, data and optimizer (other factory code is named in a warning, and a model its
        checkpoint no longer fits is refused). A Dask grid lists a finished point as finished without sending it
        to a worker only then, so that it misses no warning or refusal a sequential rerun gives."""
        logged, _ = read_logged_config(self.rundir.config)
        if logged is None:
            return False
        old_meta = logged.pop(META_KEY, None)
        previous = {k: v for k, v in logged.items() if k in SCHEMA_BY_NAME}
        if names_another_run(previous, self.config):
            return False
        self._thread_count()  # the count the checkpoint was trained with, which the logged config keeps
        now, kept, asked = self._trained_rerun(previous, old_meta)
        if asked or setup_differences(old_meta, now[META_KEY])[0]:
            return False
        written = {key: value for key, value in {**now, **kept}.items() if key != META_KEY}
        return written == logged

    def _say_setup_differences(self, logged: Any, now: Mapping[str, Any], against_logged_run: bool) -> None:
        """Warn when the code (factory defaults, registry files), versions or machine (device, CPU instruction
        set) differ from those a run was logged with: the logged config reproduces a run only under the same setup."""
        code, versions = setup_differences(logged, now)
        if not code and not versions:
            return
        items = "; ".join(code + versions)
        if against_logged_run:
            log.warning("This config was logged by a run under another setup: %s. This run may therefore differ "
                        "from that one (in the last bits, or more where the code differs).", items)
            return
        if self.rundir.diverged.is_file():  # it stops again at once: nothing trains or is post-processed now
            return
        store = CheckpointStore(self.rundir.checkpoint, self.rundir.previous_checkpoint)
        trained = store.peek_epochs()
        if trained is None and store.exists():  # none readable: what is left to train is not known (loading says)
            return
        if (trained or 0) < self.config.epoch:
            log.warning("The epochs still to train run under another setup than the epochs before them: %s. The "
                        "run will differ from one trained without a break; its logged config keeps the setup it "
                        "began with.", items)
        elif code:
            log.warning("The trained run is post-processed under another setup than it was trained with: %s. A "
                        "model built from other defaults or registry code may not be the one that was trained.",
                        items)
        else:
            log.info("Post-processing under other versions or on another machine than training: %s.", items)

    def _attempt_setup(self) -> dict[str, Any]:
        """The versions (git included) and device of this attempt, asked once for its start line and its
        logged config; outside an attempt (a dry run's logged config) asked anew each time."""
        if self._setup is not None:
            return self._setup
        return {**versions(), **(device_description(self._device) if self._device else {})}

    def _say_attempt_starts(self) -> None:
        """Open the attempt's part of the run's log with what a reader needs years later: which config, seed,
        process, machine, device and code. The log was a list of epochs without any of these, and a resumed
        run's lines followed a killed attempt's without a mark of where the new process began."""
        cfg = self.config
        self._setup = None  # asked anew: an earlier attempt in this process may have run under another commit
        setup = self._setup = self._attempt_setup()
        git = (f", git {setup['git_commit'][:12]}{' with uncommitted changes' if setup.get('git_dirty') else ''}"
               if setup.get("git_commit") else "")
        log.info("Run %s started from config %s in process %d on %s: seed %s, device %s (%s), %d CPU thread(s); "
                 "phd-lab %s%s, torch %s, Python %s", cfg.name, cfg.source, os.getpid(), socket.gethostname(),
                 cfg.seed, setup.get("device"), setup.get("device_name"), torch.get_num_threads(),
                 setup["phd_lab"], git, setup["torch"], setup["python"])

    # ------------------------------------------------------------------ running
    def run(self) -> RunDir:
        """Train this grid point and post-process it, resuming from its checkpoint if it has one. Runs take
        turns within a process and keep the CPU thread count they began with (float sums depend on it); the
        caller's thread count, cuDNN flags, torch's numeric flags, warning filters and global random generators
        are as they were once it returns."""
        cfg = self.config
        if not self._validated:
            self.validate()
        device = self._device = resolve_device(cfg.device)
        threads = self._thread_count()
        asked, default = cfg.cpu_threads, torch.get_num_threads()
        note = None
        if threads and threads != (asked or default):
            wanted = str(asked) if asked is not None else f"null, {default} here"
            note = (f"Continuing with the {threads} CPU thread(s) this run was trained with (cpu_threads: {wanted}); "
                    f"float sums depend on the count, so a run goes on with the count it began with.")
        # out of the caller's inference mode (a notebook's ``with torch.inference_mode():``), whose parameters
        # autograd refuses: the trainer turns gradients on, but cannot take tensors made in it
        with (RUN_TURN(), cpu_threads(threads), cudnn_benchmark(device), global_generators_kept(device),
              torch_flags_kept(), warning_filters_kept(), fx_sources_released(), torch.inference_mode(False)):
            try:
                return self._run(device, note)
            finally:
                self._setup = None

    def _thread_count(self) -> int | None:
        """``cpu_threads``; a run that has checkpoints keeps the count it was trained with (logged in its
        config), whatever the config says now: float sums depend on it, and a resume under another count
        (another node, a Dask worker's share of the cores, an edited config) would no longer continue the
        run bit-identically, nor would its logged config reproduce it."""
        store = CheckpointStore(self.rundir.checkpoint, self.rundir.previous_checkpoint)
        if not store.exists():
            return self.config.cpu_threads
        trained = store.peek("cpu_threads")  # recorded in the checkpoint itself: the logged config may be edited
        if isinstance(trained, int) and not isinstance(trained, bool) and trained >= 1:
            self._trained_threads = trained
            return trained
        threads = (self._read_logged_config() or {}).get("cpu_threads")  # checkpoints of older versions
        if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
            return threads  # also over another cpu_threads in the config: the logged config keeps this one
        return self.config.cpu_threads

    def _run(self, device: torch.device, note: str | None = None) -> RunDir:
        """Build data, model and optimizer, then, holding the run folder's lock and log, write the config, train
        (or resume) and post-process; ``note`` is logged once the run's log is open."""
        cfg = self.config
        with records_before_the_log() as early:  # said in the run's log too, once it is open
            seed_everything(cfg.seed)
            bundle = self.build_data()
            types = check_bundle_data(bundle, cfg.resolution, cfg.dataset, self.registries.datasets.source, cfg.source)
            # the checks up front ran on placeholders: these on the data's channels, classes and types
            check_fits_data(cfg, self.registries, bundle.in_channels, bundle.num_classes, types, device.type)
            seed_everything(cfg.seed)
            model = self.build_model(bundle).to(device)
            # a model the meta device could not build is checked here
            factory = self.registries.models.get(cfg.model)
            objective = check_objective(cfg, model, forward=False, factory=factory)
            if declared_objective(factory) is not None:  # what the checks went by: the trainer and steps read the model
                declare_objective(model, objective)
            self._objective = objective.name
            optimizer, scheduler = self.build_optimizer(model)
            metrics = self.build_metrics()
        rundir = self.rundir
        self._refuse_another_model(model, optimizer)
        self._refuse_a_dangling_logged_config()
        self._refuse_an_unreadable_logged_config()
        with (writable_lock(rundir) as lock, existing_folder(rundir.root, lock=lock),
              run_log(rundir.log) as logged):
            started = time.monotonic()
            self._say_attempt_starts()
            log.info("Run folder %s", rundir.root)
            logged.replay(early)
            if note:  # said in the run's log, now that it is open
                log.info("%s", note)
            log.info("Data %s: %s training and %s test samples, %d classes, %d channel(s) at %d px (data_dir %s)",
                     bundle.name, _samples(bundle.train), _samples(bundle.test), bundle.num_classes,
                     bundle.in_channels, bundle.resolution,  # built before the log was open
                     absolute_paths({"data_dir": cfg.data_dir})["data_dir"])  # as the logged config names it
            if self._truncation is not None:  # the model was built before the log was open too
                log.log(*self._truncation)
            if self._output_layer_note is not None:
                log.warning("%s", self._output_layer_note)
            self.write_config()
            store = CheckpointStore(rundir.checkpoint, rundir.previous_checkpoint)
            # the lock holder's own files: the run's, those of the post-processing steps and their stamps
            # (analysis.* is also written by the report while no run holds the lock, so only old ones of those go)
            owned = (rundir.name, "receptive_field", "computational_info", "projections", "diverged", STAMPS)
            for stale in atomic.remove_stale_temps(rundir.root, owned_prefix=owned):
                log.info("Removed %s, left half-written by a process that was killed.", stale.name)
            if not store.exists():
                self._say_checkpoints_gone()
            epochs_left = cfg.epoch - ((store.peek_epochs() or 0) if store.exists() else 0)
            room = room_warning(store, model, optimizer, epochs_left) if epochs_left > 0 else None
            if room is not None:  # before the first epoch, not once it is trained and cannot be saved
                log.warning("%s", room)
            callbacks: list[Callback] = [RunFolderGuard(lock), MetricsCSV(rundir.metrics_csv)]
            callbacks += [cb for factory in CALLBACK_FACTORIES if (cb := factory(cfg, rundir)) is not None]
            trainer = Trainer(model, optimizer, scheduler, metrics=metrics, epochs=cfg.epoch, device=device,
                              callbacks=callbacks, mixed_precision=cfg.mixed_precision,
                              data_parallel=cfg.data_parallel, progress=self.progress, run_name=cfg.name)
            try:
                history = trainer.fit(bundle, store)
            except RunDiverged as error:
                atomic.write_json(rundir.diverged, {"epoch": len(trainer.history), "epochs": cfg.epoch,
                                                    "message": str(error)})
                raise
            atomic.remove(rundir.diverged, missing_ok=True)  # trained to its end (an earlier divergence retrained)
            model.eval()
            context = StepContext(config=cfg, rundir=rundir, model=model, bundle=bundle, device=device,
                                  history=history, progress=self.progress)
            stamps = StepStamps(rundir)
            probes_before = stamp_if_present(rundir.probe_csv)
            self._post_process(context, stamps, lock)
            log.info("Run %s finished: %d of %d epoch(s) trained (%d in this attempt), post-processing %s; %.1f s "
                     "in this attempt", cfg.name, len(history), cfg.epoch, len(trainer.epochs_run),
                     ", ".join(step.name for step, _ in self.steps) or "none", time.monotonic() - started)
        if any(step.name == "analysis" for step, _ in self.steps):
            # a probe job that finished while the folder was held left the analysis to this run; now that the
            # folder is let go, a later one would write its own
            if stamp_if_present(rundir.probe_csv) != context.notes.get(ANALYSED_PROBES, probes_before):
                log.info("Probe results of %s arrived while its folder was held; its analysis reads them now",
                         cfg.name)
                try:
                    analyse_run(rundir, write=True)
                except Exception as error:  # noqa: BLE001 - the run is done; the next report refreshes it
                    raise_interruption_behind(error)  # but a Ctrl-C as the figure's modules were imported stops it
                    log.warning("The analysis of %s could not be refreshed (python -m phd_lab report retries): %s: %s",
                                cfg.name, type(error).__name__, error)
        return rundir

    def _refuse_another_model(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Refuse a run folder whose checkpoint does not fit the model this config builds, before the folder is
        taken, logged into or its config rewritten: its run was trained with other model code."""
        store = CheckpointStore(self.rundir.checkpoint, self.rundir.previous_checkpoint)
        found = misfit(store, model, optimizer)
        if found is not None:
            raise UsageError(
                f"{self.config.source}: the checkpoint {str(store.path)!r} does not fit the model this config builds "
                f"({found}): the run folder holds a run of other model code (another registry file that builds "
                f"the same model name differently, or a factory changed since). Train this model under another "
                f"run_id, or rerun the run's logged config with the code it was trained with.")

    def _say_checkpoints_gone(self) -> None:
        """A run folder whose metrics CSV lists trained epochs but holds no checkpoint (deleted to save space, or
        as a damaged one's message advises): it is trained again from the start, and the new rows replace the
        CSV's, which another setup would make other numbers; say so, with the epochs the CSV listed."""
        from phd_lab.analysis.run_tables import read_metrics
        metrics, _ = read_metrics(self.rundir)
        listed = 0 if metrics is None or "epoch" not in metrics else len(metrics)
        if listed:
            log.warning("%s lists %s, but neither checkpoint (%s, %s) is in the run folder: the run is trained "
                        "again from the start, and its new rows replace those of the CSV (keep a copy of it first "
                        "where its numbers matter: another setup trains other weights).", self.rundir.metrics_csv,
                        plural(listed, "trained epoch"), self.rundir.checkpoint.name,
                        self.rundir.previous_checkpoint.name)

    def _refuse_a_dangling_logged_config(self) -> None:
        """Refuse a logged config that is a symbolic link to a file that is not there (an archive not mounted, a
        target moved or deleted), before the folder is taken or logged into: read as no config at all, it was
        replaced by a new file of this rerun's values, also beside a checkpoint (whose training it no longer
        described), and the link was gone without a word."""
        path = self.rundir.config
        if not path.is_symlink() or path.exists():
            return
        target = link_target(path)
        raise UsageError(
            f"{self.config.source}: the logged config {str(path)!r} is a symbolic link to {target!r}, which does not "
            f"exist (a disk not mounted, a file moved or deleted); writing the run's config would replace the link "
            f"with a new file. Make the link's target available again, or remove the link to log this config's "
            f"values anew; nothing in the folder was changed.")

    def _post_process(self, context: StepContext, stamps: StepStamps, lock: RunLock) -> None:
        """Run the post-processing steps on the trained model in order, skipping a step whose stamp says its
        outputs are up to date; the lock is checked before each step, which may take long."""
        cfg, rundir = self.config, context.rundir
        for step, params in self.steps:
            raise_if_stop_requested()
            lock.check_held()
            stamp = step_stamp(step, params, rundir) if step.outputs(rundir) else None
            if stamp is not None and stamps.up_to_date(step, stamp, rundir):
                log.info("Post-processing step %s of %s: up to date (same model and parameters), kept",
                         step.name, cfg.name)
                continue
            log.info("Post-processing step %s of %s", step.name, cfg.name)
            if stamp is not None:
                stamps.forget(step)
            step.run(context, **params)
            if stamp is not None:
                stamps.record(step, stamp)


# Keys outside the run's identity that still change the trained weights (at least in their last bits).
TRAINING_KEYS = ("registries", "device", "data_parallel", "mixed_precision", "cpu_threads", "tracking_device")


def kept_training_values(previous: Mapping[str, Any], now: Mapping[str, Any], trained_threads: int | None,
                         config_threads: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``TRAINING_KEYS`` values a rerun of a trained run keeps from its logged config ``previous`` where
    they differ from the config it would log ``now``, and the values this rerun asks for instead. With a
    checkpoint's thread count (``trained_threads``) that count is logged, so ``cpu_threads`` is not kept, and
    asked for only where the config names another count (``config_threads``). Plain dicts in and out."""
    # registry files logged relative (by versions before they were logged absolute) are the
    # same files when they resolve to the same place, and are then logged absolute as well
    resolved = absolute_paths(previous)
    kept = {k: previous[k] for k in TRAINING_KEYS if k in previous and resolved[k] != now.get(k)}
    asked = {k: now.get(k) for k in kept}  # what this rerun asks for instead
    if trained_threads is not None:  # the checkpoint's count, also over an edited logged config
        kept.pop("cpu_threads", None)
        asked.pop("cpu_threads", None)
        if config_threads not in (None, trained_threads):
            asked["cpu_threads"] = config_threads
    return kept, asked


def read_logged_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run folder's logged config as written (None where there is none or it cannot be read), and why a file
    that is there cannot be used (None where it can, or where there is none)."""
    try:
        logged = atomic.read_json(path)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:  # unreadable, not UTF-8 or not JSON
        return None, f"{type(error).__name__}: {error}"
    if not isinstance(logged, dict):
        return None, f"it holds a JSON {type(logged).__name__}, not an object"
    invalid = logged_values_problem(logged)
    if invalid is not None:  # damaged or edited: not the values the run was trained with
        return None, invalid
    return logged, None


def _samples(loader: Any) -> str:
    try:
        return str(len(loader.dataset))
    except TypeError:  # an iterable dataset
        return "?"
