"""ProbeSettings: every setting that changes a probe's result, resolved and validated once.

Values come from the config's ``probe_*`` keys (schema in ``phd_lab.config``) and may be
overridden on the command line. ``None`` in ``max_iter``/``standardize`` means "the solver's
default"; ``resolved()`` replaces it, so the cache key never depends on how a value was given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from phd_lab.config import PROBE_DEVICE, SCHEMA_BY_NAME, check_probe_keys
from phd_lab.errors import ConfigError

SOLVERS = ("saga", "lbfgs", "lbfgs-torch")
# saga: 100 epochs and raw features, as in the thesis (§6.2.5, §8.3.1); lbfgs: run to convergence.
DEFAULT_MAX_ITER = {"saga": 100, "lbfgs": 1000, "lbfgs-torch": 1000}
DEFAULT_STANDARDIZE = {"saga": False, "lbfgs": True, "lbfgs-torch": True}
# settings field -> config key
CONFIG_KEYS = {"solver": "probe_solver", "C": "probe_C", "max_iter": "probe_max_iter", "tol": "probe_tol",
               "standardize": "probe_standardize", "train_samples": "probe_train_samples",
               "seed": "probe_seed", "device": "probe_device"}
OPTIONS = {"solver": "--solver", "device": "--probe-device"}  # probe_main.py's options that are not --<field>


@dataclass(frozen=True)
class ProbeSettings:
    """Solver settings of one probe job (see docs/probes.md for when to use which solver)."""

    solver: str = "saga"
    C: float = 1.0
    max_iter: int | None = None
    tol: float = 1e-4
    standardize: bool | None = None
    train_samples: int | None = None
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                     where: str = "probe settings") -> "ProbeSettings":
        """Settings from config values (``probe_*`` keys, missing ones default) plus overrides.

        ``overrides`` maps field names to values given on the command line (``None`` = not given).
        Every value is checked with the schema key, so messages match the config's.
        """
        fields: dict[str, Any] = {}
        for name, key_name in CONFIG_KEYS.items():
            key = SCHEMA_BY_NAME[key_name]
            value = values.get(key_name, key.default)
            source = where
            if overrides and overrides.get(name) is not None:
                value, source = overrides[name], where if where == "command line" else f"{where} (command line)"
            fields[name] = key.check(value, source)
        settings = cls(**fields)
        # a solver and device that do not go together: say which of them the command line gave, which the
        # config's where alone blamed on the config file
        given = [OPTIONS[name] for name in ("solver", "device") if overrides and overrides.get(name) is not None]
        settings.check(where if not given or where == "command line" else
                       f"{where} with the command line's {' and '.join(given)}")
        return settings

    @staticmethod
    def check_overrides(overrides: Mapping[str, Any]) -> None:
        """Check the command line's values on their own, before any latents are looked up or hashed.

        A typo in ``--train-samples`` or ``--probe-device`` is then named first, not after a "no latents"
        error or a minute of hashing; combinations with the config's values are checked in ``from_mapping``.
        """
        for name, value in overrides.items():
            if value is None:
                continue
            option = OPTIONS.get(name, "--" + name.replace("_", "-"))
            SCHEMA_BY_NAME[CONFIG_KEYS[name]].check(value, f"command line {option}")
            if name == "device" and not PROBE_DEVICE.match(value):
                raise ConfigError(f"command line: --probe-device must be cpu, cuda or cuda:N; got {value!r}.")

    def check(self, where: str = "probe settings") -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"{where}: the probe solver must be one of {', '.join(SOLVERS)}; got {self.solver!r}.")
        check_probe_keys(self.solver, self.device, where)

    def resolved(self) -> "ProbeSettings":
        """Solver defaults filled in (``max_iter``, ``standardize``)."""
        return replace(
            self,
            max_iter=DEFAULT_MAX_ITER[self.solver] if self.max_iter is None else self.max_iter,
            standardize=DEFAULT_STANDARDIZE[self.solver] if self.standardize is None else self.standardize)

    def key(self) -> dict[str, Any]:
        """Canonical, JSON-serialisable identity of the settings (part of the cache key)."""
        values = asdict(self.resolved())
        if self.solver != "lbfgs-torch":
            values.pop("device")  # CPU solvers ignore it
        else:  # the kind of device, not which card: cuda, cuda:0 and cuda:1 fit the same probe
            values["device"] = values["device"].partition(":")[0]
        if self.solver != "saga" and self.train_samples is None:
            values.pop("seed")  # the lbfgs solvers start from zeros: the seed only draws a subsample
        return values

    def describe(self) -> str:
        """The settings of ``key`` for a log line, with the device as given (which card a job used)."""
        values = self.key()
        if "device" in values:
            values["device"] = self.device
        return " ".join(f"{k}={v}" for k, v in values.items())
