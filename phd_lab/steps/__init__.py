"""Post-processing steps: registered by name, parametrised in the config, validated up front.

A config lists them as ``"post_processing": ["flops", {"name": "extract", "downsampling": 2}]``.
Each step declares its parameters as schema ``Key`` objects; ``validate`` runs for every grid
point before any training starts, ``run`` after training (or straight away on a finished run).
A parameter whose default is ``FROM_CONFIG`` takes the config key of the same name.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from phd_lab.config import SCHEMA_BY_NAME, Key, RunConfig
from phd_lab.errors import ConfigError
from phd_lab.registry import did_you_mean

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from phd_lab.data import DataBundle
    from phd_lab.rundir import RunDir

FROM_CONFIG = object()  # sentinel default: use the config key of the same name

# Modules that register steps when imported (kept lazy so that importing the registry
# stays cheap). Each module calls ``register_step`` at import time.
STEP_MODULES: tuple[str, ...] = (
    "phd_lab.steps.receptive_field", "phd_lab.steps.flops", "phd_lab.steps.extract", "phd_lab.steps.project",
    "phd_lab.steps.analysis",
)

_STEPS: dict[str, "Step"] = {}


@dataclass
class StepContext:
    """What a step may use: the trained model (eval mode, on device), data and run folder."""

    config: RunConfig
    rundir: "RunDir"
    model: "nn.Module"
    bundle: "DataBundle"
    device: "torch.device"
    history: list[dict[str, Any]] = field(default_factory=list)
    progress: bool = True
    notes: dict[str, Any] = field(default_factory=dict)  # what a step tells the run after the steps
    _measured: list[float | None] = field(default_factory=list, init=False, repr=False)  # test_accuracy's, once

    @property
    def test_accuracy(self) -> float | None:
        """The model's final test accuracy: from the metric history, else measured once on the test set (eval
        mode, no grad), so that a run trained without the Accuracy metric still gives the latents manifest, the
        probes' relative_acc and the analysis its accuracy. None for a model that reconstructs its input."""
        if self.history and "test_accuracy" in self.history[-1]:
            return float(self.history[-1]["test_accuracy"])
        if not self._measured:
            self._measured.append(self._measure_test_accuracy())
        return self._measured[0]

    def _measure_test_accuracy(self) -> float | None:
        from phd_lab.objectives import objective_of
        from phd_lab.tracking.projection import evaluate
        objective = objective_of(self.model)
        if not objective.uses_labels:
            return None
        was_training = self.model.training
        self.model.eval()
        try:
            accuracy, _ = evaluate(self.model, self.bundle.test, self.device, objective)
        finally:
            self.model.train(was_training)
        log.info("The run records no test_accuracy (no Accuracy metric): measured on the test set, %.4f", accuracy)
        return accuracy


class Step:
    """Base class of a post-processing step."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Key, ...]] = ()
    version: ClassVar[int] = 1  # raise it when the step computes something else: older results are made anew
    checks_at_resolution: ClassVar[bool] = False  # check_model runs the model on images of the run's resolution

    def outputs(self, rundir: "RunDir") -> tuple[Path, ...]:
        """Files the step writes. Declared: a rerun skips the step while they exist and the model and
        parameters are those they were made from (stamps.py); none: the step always runs."""
        return ()

    def done(self, rundir: "RunDir", params: dict[str, Any], stamps: Any = None, meta: Any = None) -> bool | None:
        """Whether a rerun of the trained run would keep this step's results (what ``--dry-run`` shows);
        None for a step without declared outputs, which runs every time. ``stamps``: the run's
        ``StepStamps``, shared by its steps (the checkpoint is hashed once). ``meta``: a callable giving the run's
        model built on the meta device (None where it cannot be) and its resolution, for a step whose reuse
        depends on the model's structure (``extract``)."""
        if not self.outputs(rundir):
            return None
        from phd_lab.steps.stamps import StepStamps, step_stamp
        try:
            stamps = stamps if stamps is not None else StepStamps(rundir)
            return stamps.up_to_date(self, step_stamp(self, params, rundir), rundir, refresh=False)
        except OSError:  # no checkpoint
            return False

    def validate(self, raw: dict[str, Any], config: RunConfig, where: str) -> dict[str, Any]:
        """Check the step's parameters and return them resolved (defaults injected)."""
        known = {key.name: key for key in self.params}
        unknown = sorted(set(raw) - {"name"} - set(known))
        if unknown:
            hint = "".join(did_you_mean(k, known) for k in unknown)
            raise ConfigError(f"{where}: post-processing step {self.name!r} has unknown parameter(s) {unknown}."
                              f"{hint} Valid parameters: {sorted(known) or 'none'}.")
        resolved = {}
        for key in self.params:
            if key.name in raw:
                resolved[key.name] = key.check(raw[key.name], f"{where}, step {self.name!r}")
            elif key.default is FROM_CONFIG:
                resolved[key.name] = config[key.name]
            else:
                resolved[key.name] = key.default
        self.check(resolved, config, where)
        return resolved

    def check(self, params: dict[str, Any], config: RunConfig, where: str) -> None:
        """Cross-parameter checks of a step (override when needed)."""

    def check_model(self, params: dict[str, Any], model: "nn.Module", where: str,
                    resolution: int | None = None) -> None:
        """Checks against the run's model, before training (built on the meta device: names and
        structure only, no values, and forward passes of placeholder images of the run's ``resolution``);
        override when the parameters name parts of the model."""

    def run(self, ctx: StepContext, **params: Any) -> None:
        raise NotImplementedError


def param_from_config(name: str, **changes: Any) -> Key:
    """A step parameter that mirrors a config key and defaults to its value."""
    return replace(SCHEMA_BY_NAME[name], default=FROM_CONFIG, technical=True, **changes)


def register_step(cls: type[Step]) -> type[Step]:
    if cls.name in _STEPS:
        raise AssertionError(f"post-processing step {cls.name!r} registered twice")
    _STEPS[cls.name] = cls()
    return cls


def all_steps() -> dict[str, Step]:
    for module in STEP_MODULES:
        importlib.import_module(module)
    return dict(sorted(_STEPS.items()))


def logged_steps(config: RunConfig, steps: list[tuple[Step, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The post-processing list as a run's logged config keeps it: every step with the values of all its
    parameters, defaults included, so that a default changed in a later version cannot change what the
    logged config reruns. A parameter that follows a config key and was not given stays out: the logged
    config holds that key, and editing it there still reaches the step."""
    given = {entry["name"]: entry for entry in config.post_processing}
    entries = []
    for step, params in steps:
        entry: dict[str, Any] = {"name": step.name}
        for key in step.params:
            if key.default is not FROM_CONFIG or key.name in given.get(step.name, {}):
                entry[key.name] = params[key.name]
        entries.append(entry)
    return entries


def resolve_steps(config: RunConfig, where: str) -> list[tuple[Step, dict[str, Any]]]:
    """Validate the config's post-processing list; raise ConfigError naming the bad entry."""
    steps = all_steps()
    resolved = []
    seen = set()
    for entry in config.post_processing:
        name = entry["name"]
        if name not in steps:
            raise ConfigError(f"{where}: unknown post-processing step {name!r}.{did_you_mean(name, steps)} Valid "
                              f"steps: {', '.join(steps) or '(none)'}; list them with `python main.py --list steps`.")
        if name in seen:
            raise ConfigError(f"{where}: post-processing step {name!r} is listed twice; give it once with all "
                              f"its parameters.")
        seen.add(name)
        step = steps[name]
        resolved.append((step, step.validate(entry, config, where)))
    return resolved
