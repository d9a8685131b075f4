"""The config schema: every key declared once, with type, default, range and a one-line doc.

``check_known_keys`` and ``validate_values`` check every key of a raw mapping (unknown keys,
types, ranges, empty lists) and ``RunConfig`` is the resolved, immutable config of one grid
point. Messages follow one template: the file, the key, what is allowed and what was received.
Reading a config file (and checking its numbers) lives in ``config_file``; the paths in config
values (folder keys, registry files, safe file names) live in ``config_paths``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from phd_lab.atomic import non_finite_at
from phd_lab.config_file import META_KEY, printable, shown_value
from phd_lab.config_paths import PATH_KEYS, safe_name
from phd_lab.errors import ConfigError
from phd_lab.registry import KINDS, did_you_mean
from phd_lab.user_paths import check_home

_KIND_WORDS = {"str": "a non-empty string", "int": "an integer", "float": "a number", "bool": "true or false",
               "mapping": "a JSON object", "list": "a list", "any": "any JSON value",
               "size": 'an integer N (N×N) or a string "HxW" such as "8x4"'}
_SIZE_TEXT = re.compile(r"([0-9]+)x([0-9]+)")


def parse_size(value: int | str | None) -> tuple[int, int] | None:
    """A "size" key's value as (h, w): N is N×N, "HxW" is H×W, null stays None."""
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    height, width = _SIZE_TEXT.fullmatch(value).groups()  # type: ignore[union-attr]  # checked by Key.check
    return int(height), int(width)


@dataclass(frozen=True)
class Key:
    """One config key (or step parameter): its type, default, allowed values and doc line."""

    name: str
    kind: str  # str | int | float | bool | mapping | list | any | size
    default: Any
    doc: str
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple | None = None
    item_kind: str | None = None  # element type of list keys
    extra: tuple = ()  # literal values allowed besides the type (e.g. "pixelwise")
    technical: bool = False  # True: does not change results (not part of the run's identity)
    sweep_inside: bool = False  # mapping keys whose list values are grid axes (model_args, ...)
    required: bool = False
    converter: Callable[[Any], Any] | None = None  # applied before checking (e.g. run_id 3 -> "3")

    @property
    def is_list_type(self) -> bool:
        return self.kind == "list"

    def expectation(self) -> str:
        words = _KIND_WORDS[self.kind]
        if self.kind == "list" and self.item_kind:
            words = f"a list of {_KIND_WORDS[self.item_kind].split(' ', 1)[1]}s"
        if self.choices:
            words = "one of " + ", ".join(repr(c) for c in self.choices)
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.exclusive_minimum else '≥'} {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"≤ {self.maximum}" if isinstance(self.maximum, int) else f"≤ {self.maximum:g}")
        if bounds:
            words += " " + " and ".join(bounds)
        alternatives = [repr(x) for x in self.extra] + (["null"] if self.nullable else [])
        if alternatives:
            words += ", or " + " or ".join(alternatives)
        return words

    def check(self, value: Any, where: str) -> Any:
        """Return ``value`` normalised (int→float for floats) or raise a ConfigError."""
        if self.converter is not None:
            value = self.converter(value)
        if value is None and self.nullable:
            return None
        if self.extra and value in self.extra:
            return value
        ok = _is_kind(value, self.kind)
        if ok and self.kind == "list" and self.item_kind:
            ok = all(_is_kind(item, self.item_kind) for item in value)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.kind == "size":
            ok = min(parse_size(value)) >= 1  # type: ignore[type-var]
        elif ok and self.kind in ("int", "float"):
            if not math.isfinite(value):
                ok = False
            elif self.minimum is not None and (value <= self.minimum if self.exclusive_minimum
                                               else value < self.minimum):
                ok = False
            elif self.maximum is not None and value > self.maximum:
                ok = False
        if not ok:
            hint = did_you_mean(value, self.choices) if isinstance(value, str) and self.choices else ""
            raise ConfigError(f"{where}: the key {self.name!r} must be {self.expectation()}; got "
                              f"{shown_value(value)} instead.{hint} ({self.doc})")
        if self.kind == "float":
            return float(value)
        return value


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str) and value != ""
    if kind == "mapping":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    if kind == "size":
        return _is_kind(value, "int") or (isinstance(value, str) and _SIZE_TEXT.fullmatch(value) is not None)
    raise AssertionError(kind)


def _key(*args: Any, **kwargs: Any) -> Key:
    return Key(*args, **kwargs)


# The schema. Group order: experiment, evaluation, technical, post-processing.
SCHEMA: tuple[Key, ...] = (
    _key("model", "str", None, "model registry name (see --list models)", required=True),
    _key("model_args", "mapping", {}, "keyword arguments of the model factory; list values are swept; "
         "'linear_init' (default \"torch_output\") draws the output layer again, null keeps the model's own draw",
         sweep_inside=True),
    _key("dataset", "str", None, "dataset registry name (see --list datasets)", required=True),
    _key("dataset_args", "mapping", {}, "keyword arguments of the dataset factory; list values are swept; "
         "'download' is no part of a run's identity", sweep_inside=True),
    _key("resolution", "int", 32, "input resolution in pixels (square)", minimum=1, maximum=8192),
    _key("epoch", "int", 30, "number of training epochs", minimum=1),
    _key("batch_size", "int", 64, "mini-batch size for training and evaluation", minimum=1),
    _key("optimizer", "str", "adam", "optimizer registry name (see --list optimizers)"),
    _key("optimizer_args", "mapping", {}, "keyword arguments of the optimizer factory (lr, ...); list "
         "values are swept", sweep_inside=True),
    _key("seed", "int", None, "random seed; null derives it from run_id", nullable=True, minimum=0,
         maximum=2**32 - 1),
    _key("run_id", "str", "0", "name of the repetition (an integer is taken as its string: 5 is \"5\"); a list "
         "repeats the run",
         converter=lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
    _key("metrics", "list", ["Accuracy"], "metric registry names computed on train and test set (at least one for a "
         "classifier; [] for a model trained to reconstruct its input, conv_autoencoder)",
         item_kind="str"),
    _key("registries", "mapping", {}, "registry modules to use instead of registries/<kind>.py, e.g. "
         "{\"models\": \"my_models.py\"}", technical=True),
    _key("logs_dir", "str", "./logs", "folder that receives all run folders", technical=True),
    _key("data_dir", "str", "./data", "folder with (or for downloaded) datasets", technical=True),
    _key("device", "str", "auto", "compute device: auto, cpu, cuda, cuda:N", technical=True),
    _key("data_parallel", "bool", False, "replicate the model over all visible GPUs (CUDA only)",
         technical=True),
    _key("mixed_precision", "bool", True, "float16 autocast and gradient scaling on CUDA", technical=True),
    _key("num_workers", "int", 0, "DataLoader worker processes (random augmentations depend on it: a value "
         "other than 0 is part of the run's identity)", minimum=0, maximum=256, technical=True),
    _key("cpu_threads", "int", None, "torch CPU threads; results are bit-identical only for equal thread counts "
         "(null: torch's default, all cores)", minimum=1, maximum=1024, nullable=True, technical=True),
    _key("delta", "float", 0.99, "share of variance the intrinsic dimension explains (saturation, PCA)",
         minimum=0.0, exclusive_minimum=True, maximum=1.0),
    _key("downsampling", "int", 4,
         "latent extraction: adaptive-average-pool feature maps to at most N×N (smaller ones stay); part of the "
         "run's folder, so a sweep gives every value its own run; to extract one trained run at several sizes "
         "(§8.3), give the extract step 'sizes' instead; null keeps whole feature maps, \"pixelwise\" writes one "
         "data set per feature-map position (<layer>@<row>_<col>, one probe each)",
         minimum=1, nullable=True, extra=("pixelwise",)),
    _key("latents_dir", "str", None, "folder for extracted latents, as <latents_dir>/<model>/<dataset>_<resolution>/"
         "<run_id>/<variant>/latents (default: latents/ inside the run folder)",
         nullable=True, technical=True),
    _key("post_processing", "list", [], "steps to run after training (see --list steps); each a name or "
         "{\"name\": ..., parameters}", technical=True),
    # --- saturation tracking
    _key("track_saturation", "bool", True, "per epoch: layer saturation on the training and test set (CSV "
         "columns and a plot)"),
    _key("tracking_mode", "str", "passes", "passes: after each epoch a separate pass over the un-augmented "
         "training set, and the test set tracked during the epoch's test evaluation; inline: accumulate "
         "during the epoch's training batches and test evaluation (the thesis' Delve, no extra passes)",
         choices=("passes", "inline")),
    _key("tracking_resolution", "size", None, "saturation: reduce larger feature maps to N×N (or \"HxW\", e.g. "
         "\"8x4\") before accumulating (null: full resolution, exact)", nullable=True),
    _key("tracking_downsampling", "str", "adaptive_avg", "saturation: how tracking_resolution reduces maps",
         choices=("adaptive_avg", "nearest", "bilinear")),
    _key("tracking_max_batches", "int", None, "saturation: record at most N batches per pass (null: all)",
         nullable=True, minimum=1),
    _key("tracking_every_n", "int", 1, "saturation: record only every n-th batch of a pass", minimum=1),
    _key("tracking_include", "list", [], "saturation: track only layers whose qualified name matches one of "
         "these wildcard patterns (empty: all Conv2d/Linear/LSTM layers)", item_kind="str"),
    _key("tracking_exclude", "list", [], "saturation: skip layers whose name matches one of these patterns (a "
         "pattern of either key that matches no such layer of a model is warned of, once per model)",
         item_kind="str"),
    # Retired, kept so that configs and logged configs of earlier versions load and keep their run folders
    # (the key is part of every run's identity hash). true only logs a warning (tracking_options).
    _key("tracking_fast", "bool", False, "saturation: retired float32 path (it exceeded its 1e-7 error bound on "
         "realistic activations and was no faster); true is accepted and tracks exactly, with a warning, in a run "
         "folder of its own (the key is part of the run's identity)"),
    _key("tracking_device", "str", None, "saturation: device of the covariance sums (null: the model's)",
         nullable=True, technical=True),

    # --- probe job: these keys do not change the trained run (technical)
    _key("probe_solver", "str", "saga", "probe job: solver of the logistic-regression probes (docs/probes.md)",
         choices=("saga", "lbfgs", "lbfgs-torch"), technical=True),
    # the bounds keep the solvers' own numbers in range: a smaller C overflowed the float32 penalty of lbfgs-torch
    # (and saga's step), a larger max_iter saga's C int, both as a failed fit after the run's probe log was opened;
    # lbfgs-torch's line search overflows from C of about 1e-24 on, which its fit names as an error (fit.py)
    _key("probe_C", "float", 1.0, "probe job: inverse L2 strength C (objective: mean cross-entropy + "
         "||W||²/(2·C·n))", minimum=1e-30, technical=True),
    _key("probe_max_iter", "int", None, "probe job: iteration limit; null = solver default (saga 100 epochs "
         "as in the thesis, lbfgs/lbfgs-torch 1000)", nullable=True, minimum=1, maximum=2**31 - 1, technical=True),
    _key("probe_tol", "float", 1e-4, "probe job: stopping tolerance of the solver", minimum=0.0,
         exclusive_minimum=True, technical=True),
    _key("probe_standardize", "bool", None, "probe job: standardise features with training-set mean/std; "
         "null = solver default (saga off as in the thesis, lbfgs and lbfgs-torch on)", nullable=True,
         technical=True),
    _key("probe_train_samples", "int", None, "probe job: fit on a stratified subsample of this many training "
         "samples; null = all", nullable=True, minimum=1, technical=True),
    _key("probe_seed", "int", 0, "probe job: seed of the saga sample order and of the subsample", minimum=0,
         maximum=2**32 - 1, technical=True),
    _key("probe_device", "str", "cpu", "probe job: torch device of the lbfgs-torch solver (cpu, cuda, cuda:N)",
         technical=True),

    # --- analysis
    _key("tail_threshold", "float", 0.5, "analysis: a tail's mean saturation is at least this share lower than the "
         "rest's (thesis: 0.5)", minimum=0.0, exclusive_minimum=True, maximum=0.99, technical=True),
    _key("tail_min_length", "int", 3, "analysis: fewest consecutive layers that form a tail (thesis: 3)", minimum=1,
         technical=True),
    _key("border_tolerance", "int", 1, "analysis: layers by which a tail's start may differ from the border layer "
         "and still agree", minimum=0, technical=True),
    _key("probe_tolerance", "float", 0.01, "analysis: a probe reaches the model when its accuracy relative to the "
         "model's is >= 1 - this", minimum=0.0, maximum=1.0, technical=True),
    _key("probe_drop_tolerance", "float", 0.01, "analysis: a layer is skipped when its probe accuracy lies this far "
         "below the best earlier probe", minimum=0.0, maximum=1.0, technical=True),
    _key("target_saturation", "list", [0.2, 0.3], "analysis: the s_mu interval [low, high], 0 < low < high <= 1, "
         "the width guideline aims for (thesis: 20-30%)", item_kind="float", technical=True),
    _key("analysis_split", "str", "train", "analysis: saturations of the train or test pass of the last epoch "
         "(thesis: train)", choices=("train", "test"), technical=True),
)

SCHEMA_BY_NAME: dict[str, Key] = {k.name: k for k in SCHEMA}

PROBE_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_probe_keys(solver: str, device: str, where: str) -> None:
    """The probe job's device, and its solver with it (each value alone is checked by its key). The grid's check
    before training and the probe job's settings (``ProbeSettings.check``) share it: training checks the probe
    keys with the rest without importing the probe code."""
    if not PROBE_DEVICE.match(device):
        raise ConfigError(f"{where}: the key 'probe_device' must be cpu, cuda or cuda:N; got {device!r}.")
    if device != "cpu" and solver != "lbfgs-torch":
        raise ConfigError(f"{where}: 'probe_device' is {device!r}, but only the lbfgs-torch solver runs on a GPU; "
                          f"the {solver!r} solver runs on the CPU. Set probe_solver to 'lbfgs-torch' or "
                          f"probe_device to 'cpu'.")


def _args_hint(key: str) -> str:
    """Where a factory argument written at the config's top level belongs (``"lr"`` → ``optimizer_args``)."""
    from phd_lab.factory_args import args_taking  # imports the registries: only for an unknown key
    homes = args_taking(key)
    if not homes:
        return ""
    return (f" {key!r} is an argument of the {' and '.join(h.removesuffix('_args') for h in homes)} factories: "
            f"write it inside {' or '.join(homes)}, e.g. {{\"{homes[0]}\": {{\"{key}\": ...}}}}.")


def check_known_keys(raw: Mapping[str, Any], where: str) -> None:
    """Raise a ConfigError for keys the schema does not declare (with close matches) and for missing
    required keys; ``_meta`` of a logged config is allowed."""
    unknown = sorted(k for k in raw if k not in SCHEMA_BY_NAME and k != META_KEY)
    if unknown:
        hints = "".join(did_you_mean(k, SCHEMA_BY_NAME).replace(" Did you mean", f" For {k!r} did you mean")
                        or _args_hint(k) for k in unknown)
        raise ConfigError(f"{where}: unknown config key(s) {unknown}.{_other_version(raw.get(META_KEY))}{hints} "
                          f"Valid keys: {', '.join(sorted(SCHEMA_BY_NAME))}. `python main.py --list-keys` documents "
                          f"them.")
    missing = [k.name for k in SCHEMA if k.required and k.name not in raw]
    if missing:
        raise ConfigError(f"{where}: required key(s) {missing} are missing; "
                          f"`python main.py --list-keys` documents them.")
    if META_KEY in raw and not isinstance(raw[META_KEY], dict):  # else it would pass for a logged config
        raise ConfigError(f"{where}: the key {META_KEY!r} must be a JSON object; got "
                          f"{shown_value(raw[META_KEY])}. phd-lab writes it into the configs it logs in run "
                          f"folders (versions, git commit, setup); remove it from a config you write yourself.")
    if META_KEY in raw:
        check_meta_shape(raw[META_KEY], where)


def _other_version(meta: Any) -> str:
    """For a logged config that another phd-lab wrote (its ``_meta`` names another version or commit), the note
    that a key unknown here may be one that version has: a logged config of a newer version was told only the
    nearest key names, as if its keys were typos."""
    if not isinstance(meta, Mapping):
        return ""
    from phd_lab import __version__
    from phd_lab.environment import git_commit
    version, commit = meta.get("phd_lab"), meta.get("git_commit")
    now = git_commit() if isinstance(commit, str) and commit else None
    if version == __version__ and not (now and commit != now):
        return ""
    logged = f"phd-lab {version}" if isinstance(version, str) else "another phd-lab"
    at = f" at git commit {commit}" if isinstance(commit, str) and commit else ""
    this = f" at {now}" if now else ""
    return (f" This logged config was written by {logged}{at}, and this is phd-lab {__version__}{this}: a key "
            f"unknown here may be one that version has, so rerun it with that version (in a git checkout, "
            f"`git checkout` the commit it names).")


def check_meta_shape(meta: Mapping[str, Any], where: str) -> None:
    """The ``_meta`` values a rerun compares must have the shape phd-lab writes: a hand-edited
    ``defaults_in_effect`` of another shape failed the rerun (exit 1) after its run folder was made."""
    defaults = meta.get("defaults_in_effect")
    if defaults is None:
        return
    if not isinstance(defaults, dict) or not all(isinstance(args, dict) or args is None
                                                 for args in defaults.values()):
        raise ConfigError(f"{where}: the key '{META_KEY}.defaults_in_effect' must be a JSON object of JSON objects, "
                          f"one per kind of factory arguments (e.g. {{\"model_args\": {{\"width\": 1.0}}, "
                          f"\"optimizer_args\": {{}}}}); got {shown_value(defaults)}. phd-lab writes it into "
                          f"the configs it logs (the factory defaults a run left in effect): restore it from a "
                          f"copy of the run's logged config, or remove the key to rerun without comparing them.")


def is_swept(key: Key, value: Any) -> bool:
    """A list is a grid axis unless the key's type is itself a list (then a list of lists is)."""
    if not isinstance(value, list):
        return False
    if key.is_list_type:
        return bool(value) and all(isinstance(v, list) for v in value)
    return True


# Technical keys that can still change results: DataLoader workers draw random augmentations from
# per-worker generators, so with augmentation another worker count gives other weights. Off their
# default they are part of a run's identity (runs with the default keep the folder they had).
IDENTITY_OFF_DEFAULT = frozenset({"num_workers"})

# The keys every run's identity has held since the first version, at any value. A result-affecting key
# added later joins a run's identity only when set to something other than its default, so that the runs
# trained before it existed keep their folders (their logged configs lack it; it then takes its default).
IDENTITY_KEYS = frozenset({
    "model", "model_args", "dataset", "dataset_args", "resolution", "epoch", "batch_size", "optimizer",
    "optimizer_args", "seed", "run_id", "metrics", "delta", "downsampling", "track_saturation", "tracking_mode",
    "tracking_resolution", "tracking_downsampling", "tracking_max_batches", "tracking_every_n", "tracking_include",
    "tracking_exclude", "tracking_fast"})


# Factory arguments that change no result: where the data come from, not what they are. A run set
# to download once and rerun without it (offline) is the same run, in the same folder.
TECHNICAL_ARGS = {"dataset_args": ("download",)}


# model_args "linear_init" when a config names none: the output layer is drawn again with torch's own default
# (docs/initialisation.md). Versions before 0.2 did not draw it again: their families drew Linear layers by
# Kaiming fan-out, which a logged config of theirs keeps (``Grid``: null, the model's own draw).
DEFAULT_LINEAR_INIT = "torch_output"
FIRST_VERSION_WITH_LINEAR_INIT = (0, 2)

# Factory arguments hashed only when set: null is what versions before 0.2 ran without naming the key, so
# their run folders keep their hash.
ABSENT_WHEN_NULL = {"model_args": ("linear_init",)}


def predates_linear_init(meta: Mapping[str, Any]) -> bool:
    """Whether a logged config's ``_meta`` names a phd-lab version before ``linear_init`` was logged (or none)."""
    try:
        version = tuple(int(part) for part in str(meta.get("phd_lab")).split(".")[:2])
    except ValueError:
        return True
    return version < FIRST_VERSION_WITH_LINEAR_INIT


def with_logged_linear_init(logged: Mapping[str, Any]) -> dict[str, Any]:
    """A logged config's values with the ``linear_init`` it runs with named (``Grid``): null for one of a
    version before 0.2, which named none, so that tables of old and rerun runs compare like with like."""
    values = dict(logged)
    meta, model_args = values.get(META_KEY), values.get("model_args")
    if isinstance(meta, Mapping) and isinstance(model_args, dict):
        values["model_args"] = {"linear_init": None if predates_linear_init(meta) else DEFAULT_LINEAR_INIT,
                                **model_args}
    return values


def with_linear_init(model_args: dict[str, Any]) -> dict[str, Any]:
    """``model_args`` with the framework's ``linear_init`` named (the default where the config names none)."""
    return model_args if "linear_init" in model_args else {**model_args, "linear_init": DEFAULT_LINEAR_INIT}


def _without_technical_args(name: str, value: Any) -> Any:
    if isinstance(value, dict) and (name in TECHNICAL_ARGS or name in ABSENT_WHEN_NULL):
        return {k: v for k, v in value.items()
                if k not in TECHNICAL_ARGS.get(name, ()) and not (k in ABSENT_WHEN_NULL.get(name, ()) and v is None)}
    return value


def _canonical(identity: Mapping[str, Any]) -> bytes:
    return json.dumps(identity, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _crc(identity: Mapping[str, Any]) -> str:
    return _short_digest(_canonical(identity))


def _short_digest(canonical: bytes) -> str:
    """A run folder's digest: the CRC-32 of its canonical identity, 8 hex characters."""
    return f"{zlib.crc32(canonical):08x}"


def _long_digest(canonical: bytes) -> str:
    """The long digest: 16 hex characters (64 bits) of the SHA-256 of the same canonical identity."""
    return hashlib.sha256(canonical).hexdigest()[:16]


def in_identity(name: str, value: Any) -> bool:
    """Whether a key with this value is part of a run's identity (its folder's hash)."""
    key = SCHEMA_BY_NAME[name]
    if name in IDENTITY_KEYS:
        return True
    if key.technical and name not in IDENTITY_OFF_DEFAULT:
        return False
    return value != key.default


def names_another_run(logged: Mapping[str, Any], cfg: "RunConfig") -> bool | None:
    """Whether a logged config's values name another run than ``cfg``: what makes a run folder another run's;
    None where it lacks keys of this version (an older one's), so that it is not known. ``cfg``'s values count
    as they are and as they are logged (a list-valued argument wrapped, ``as_single_point``)."""
    values = {k: v for k, v in logged.items() if k in SCHEMA_BY_NAME}
    if not set(values) >= set(cfg.values) or logged_values_problem(logged) is not None:
        return None  # an invalid value (a damaged or hand-edited file) names no run, neither this nor another
    return RunConfig(values).identity() not in (cfg.identity(), RunConfig(as_single_point(cfg.values)).identity())


_LOGGED = "\0logged"


def logged_values_problem(logged: Mapping[str, Any]) -> str | None:
    """Why a logged config's values are no valid config (a damaged or hand-edited file: ``"epoch": "2"``), as the
    sentence a config file with that value is refused with, or None where they are valid. Keys of other versions
    are left out, and so is what a config file is refused for but a run logged before that check keeps."""
    values = {k: v for k, v in logged.items() if k in SCHEMA_BY_NAME or k == META_KEY}
    values.setdefault(META_KEY, {})  # a logged run keeps a repeated metric (validate_values)
    try:
        validate_values(values, _LOGGED)
    except ConfigError as error:
        return str(error).removeprefix(f"{_LOGGED}: ")
    # a NaN (Python's JSON reader takes it; no run logs one): the folder was left to it as another run's
    found = non_finite_at(values)
    if found is not None:
        return f"the key {found[0]!r} holds {found[1]}, which is no finite number (a config file may hold none)"
    return None


def as_single_point(values: Mapping[str, Any]) -> dict[str, Any]:
    """Resolved values written so that reading them as a config gives exactly this one point:
    a list that is a value, not an axis (a factory argument such as ``"widths": [4, 8]``), is
    wrapped once more, as a user writes it (``[[4, 8]]``)."""
    single: dict[str, Any] = {}
    for name, value in values.items():
        key = SCHEMA_BY_NAME.get(name)
        if key is not None and key.sweep_inside and isinstance(value, dict):
            single[name] = {k: [v] if isinstance(v, list) else v for k, v in value.items()}
        elif key is not None and is_swept(key, value):
            single[name] = [value]
        else:
            single[name] = value
    return json.loads(json.dumps(single))


def iter_axis_candidates(raw: Mapping[str, Any]) -> Iterator[tuple[tuple[str, ...], Any, Key | None]]:
    """Yield (path, value, key) for every top-level key and every entry of sweep_inside mappings."""
    for name, value in raw.items():
        if name == META_KEY:
            continue
        key = SCHEMA_BY_NAME[name]
        if key.sweep_inside and isinstance(value, dict):
            for inner, inner_value in value.items():
                yield (name, inner), inner_value, None
        else:
            yield (name,), value, key


def validate_values(raw: Mapping[str, Any], where: str) -> None:
    """Check every value (each element of a swept list separately); raise on the first error."""
    for path, value, key in iter_axis_candidates(raw):
        label = ".".join(path)
        if isinstance(value, list) and value == [] and (key is None or not key.is_list_type):
            raise ConfigError(f"{where}: the key {label!r} is an empty list; a list sweeps over its values, "
                              f"so it needs at least one. Remove the key to use its default.")
        if key is None:
            continue
        if key.kind == "mapping" and not isinstance(value, (dict, list)):
            key.check(value, where)
        values = value if is_swept(key, value) else [value]
        for item in values:
            key.check(item, where)
            # another folder for the same results; a logged config (one trained before this check) keeps its run
            if key.name == "metrics" and len(set(item)) < len(item) and META_KEY not in raw:
                repeated = sorted({name for name in item if item.count(name) > 1})
                raise ConfigError(f"{where}: the key 'metrics' names {', '.join(map(repr, repeated))} more than "
                                  f"once ({shown_value(item)}); each metric is computed once, so give each name "
                                  f"once.")
        if key.name == "target_saturation":
            for band in values:
                if len(band) != 2 or not 0.0 < band[0] < band[1] <= 1.0:
                    raise ConfigError(f"{where}: the key 'target_saturation' must be [low, high] with "
                                      f"0 < low < high <= 1 (thesis: [0.2, 0.3]); got {shown_value(band)}.")
        if key.name == "registries":
            for registry_value in values:
                unknown = sorted(set(registry_value) - set(KINDS))
                if unknown:
                    raise ConfigError(f"{where}: the key 'registries' has unknown kind(s) {unknown}; valid "
                                      f"kinds: {list(KINDS)}.")
                for kind, module in registry_value.items():
                    if not isinstance(module, str) or not module.strip():
                        raise ConfigError(f"{where}: the key 'registries.{kind}' must name a module: a dotted "
                                          f"module name (e.g. 'registries.{kind}') or the path of a .py file; "
                                          f"got {shown_value(module)}.")


def derive_seed(run_id: str) -> int:
    """Deterministic seed of a repetition: different run ids give different seeds."""
    return zlib.crc32(run_id.encode("utf-8")) % (2**31)


def normalise_steps(steps: list[Any], where: str) -> list[dict[str, Any]]:
    """Turn ``["flops", {"name": "extract", ...}]`` into a list of ``{"name": ..., params}``."""
    result = []
    for position, step in enumerate(steps):
        if isinstance(step, str):
            result.append({"name": step})
        elif isinstance(step, dict) and isinstance(step.get("name"), str):
            result.append(dict(step))
        else:
            raise ConfigError(f"{where}: entry {position} of 'post_processing' must be a step name or an object "
                              f"with a 'name' and the step's parameters; got {shown_value(step)}. List the steps "
                              f"with `python main.py --list steps`.")
    return result


@dataclass(frozen=True)
class RunConfig:
    """The resolved config of one grid point: every key present, defaults injected."""

    values: Mapping[str, Any]
    source: str = field(default="<config>", compare=False)
    # the ``_meta`` of the logged config this point was read from (None for a hand-written config): a rerun
    # compares its own setup with it
    logged_meta: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    # False where the config named no ``linear_init`` and got the default: its 0.1 run, if one exists, is
    # another run (``rundir.earlier_version_runs``)
    linear_init_named: bool = field(default=True, compare=False, repr=False)
    # True where an earlier point of its grid, another run, has the same 8-character digest (CRC-32 collides):
    # where neither folder exists yet this run takes the long digest (``RunDir.for_run``)
    shares_digest: bool = field(default=False, compare=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "values")
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dict(self.values)))

    def identity(self) -> dict[str, Any]:
        """The values that change results (``in_identity``: technical keys excluded, except those of
        ``IDENTITY_OFF_DEFAULT`` set to something other than their default; keys newer than
        ``IDENTITY_KEYS`` only off their default; factory arguments of ``TECHNICAL_ARGS`` left out)."""
        return {k: _without_technical_args(k, v) for k, v in self._identity_keys().items()}

    def _identity_keys(self) -> dict[str, Any]:
        """The keys that are part of the identity (``in_identity``), factory arguments whole, sorted."""
        return {k: v for k, v in sorted(self.values.items()) if in_identity(k, v)}

    def identity_hash(self) -> str:
        """The digest of a run folder's name: CRC-32 of the canonical identity, 8 hex characters."""
        return _crc(self.identity())

    def long_identity_hash(self) -> str:
        """The digest of a run whose 8-character one another run's folder holds (``RunDir.for_run``)."""
        return _long_digest(_canonical(self.identity()))

    def identity_hashes(self) -> tuple[str, str]:
        """``identity_hash()`` and ``long_identity_hash()``, the identity built once (a grid's every point)."""
        canonical = _canonical(self.identity())
        return _short_digest(canonical), _long_digest(canonical)

    def legacy_identity_hashes(self) -> list[str]:
        """The hashes earlier versions gave this run: before ``TECHNICAL_ARGS``, ``download`` was hashed too
        (true, false or left out); before 0.2, a ``linear_init`` written as null was hashed. ``RunDir.for_run``
        still finds a folder those versions named."""
        hashed = self.identity()
        hashes, current = [], _crc(hashed)
        for name, value in self._identity_keys().items():
            if not isinstance(value, dict):
                continue
            base = hashed[name]
            variants = [{arg: choice} for arg in TECHNICAL_ARGS.get(name, ()) for choice in (True, False)]
            variants += [{arg: None} for arg in ABSENT_WHEN_NULL.get(name, ()) if arg in value and value[arg] is None]
            for variant in ({}, *variants):
                digest = _crc({**hashed, name: {**base, **variant}})
                if digest != current and digest not in hashes:
                    hashes.append(digest)
        return hashes

    @property
    def name(self) -> str:
        """The run's critical parameters, used to name its files (e.g. vgg11-Digits-r32-bs64-e3)."""
        return safe_name(f"{self.model}-{self.dataset}-r{self.resolution}-bs{self.batch_size}-e{self.epoch}")

    def variant_slug(self) -> str:
        """Leaf folder name: readable hyperparameters plus a hash of every result-affecting value."""
        return f"{self._readable_slug()}-{self.identity_hash()}"

    def long_variant_slug(self) -> str:
        """``variant_slug`` with the long digest, for a run whose folder name another run holds."""
        return f"{self._readable_slug()}-{self.long_identity_hash()}"

    def _readable_slug(self) -> str:
        parts = [f"bs{self.batch_size}", f"e{self.epoch}", str(self.optimizer), f"s{self.seed}"]
        for mapping_key in ("model_args", "optimizer_args", "dataset_args"):
            technical = TECHNICAL_ARGS.get(mapping_key, ())
            for k, v in sorted((k, v) for k, v in self.values[mapping_key].items() if k not in technical):
                if mapping_key == "model_args" and k == "linear_init" and v == DEFAULT_LINEAR_INIT:
                    continue  # most runs name it: the hash keeps it, the readable part need not
                parts.append(f"{k}{json.dumps(v, separators=(',', ':'), sort_keys=True)}")
        return safe_name("-".join(parts))[:80]


def resolve_point(point: Mapping[str, Any], where: str) -> RunConfig:
    """Inject defaults, normalise values and resolve the seed of one (unswept) grid point."""
    values: dict[str, Any] = {}
    for key in SCHEMA:
        value = point.get(key.name, key.default)
        if key.name in point:
            value = key.check(value, where)
        if isinstance(value, (dict, list)):
            value = json.loads(json.dumps(value))
        values[key.name] = value
    if values["seed"] is None:
        values["seed"] = derive_seed(values["run_id"])
    values["model_args"] = with_linear_init(values["model_args"])
    values["post_processing"] = normalise_steps(values["post_processing"], where)
    for key in PATH_KEYS:  # "~/logs" is the home folder's, never a folder named "~" in the working directory
        if isinstance(values[key], str):
            values[key] = os.path.expanduser(values[key])
            check_home(values[key], f"the key {key!r}", where)
    given = point.get("model_args")
    return RunConfig(values, source=where, linear_init_named=isinstance(given, dict) and "linear_init" in given)


def schema_table() -> list[dict[str, str]]:
    """Rows documenting every key (for --list-keys and the README)."""
    rows = []
    for key in SCHEMA:
        default = "required" if key.required else json.dumps(key.default)
        rows.append({"key": key.name, "type": key.expectation(), "default": default, "doc": key.doc})
    return rows


def check_run_id_value(run_id: Any) -> str:
    """A command-line run id, checked as the key's value; bytes the locale cannot decode (a lone surrogate in
    ``sys.argv``) name no folder."""
    value = SCHEMA_BY_NAME["run_id"].check(str(run_id), "--run-id")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"--run-id: \"{printable(value)}\" holds bytes that are not UTF-8 text, which cannot name a "
                          f"run folder; give a run id of UTF-8 characters.") from None
    return value


def schema_markdown() -> str:
    """The key table of the README (a test keeps the README in sync with the schema)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for row in schema_table():
        cells = [f"`{row['key']}`", row["type"], f"`{row['default']}`", row["doc"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
