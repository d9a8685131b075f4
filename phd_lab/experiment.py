"""Main: a config file → validated grid → one TrainTestExecutor per grid point."""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from tqdm import tqdm

from phd_lab.config import check_probe_keys
from phd_lab.config_file import shown_value
from phd_lab.errors import (LOG_MARK, ConfigError, DataError, RegistryError, RunLockedError, UsageError, brief,
                            failure_line, without_log)
from phd_lab.grid import Grid
from phd_lab.interrupts import raise_interruption_behind
from phd_lab.progress import bar_options
from phd_lab.registry import Registries
from phd_lab.rundir import FolderListings, earlier_version_advice, earlier_version_runs, read_config_grid
from phd_lab.user_paths import check_writable_dir, nearest_existing
from phd_lab.wording import clipped

# torch, pandas and the executor's modules are imported where a grid is checked or run, after its config is read:
# a config refused by the schema (a typo, a missing key) is said without the seconds torch takes to import

if TYPE_CHECKING:
    from phd_lab.analysis.run_tables import TrainingStatus
    from phd_lab.config import RunConfig
    from phd_lab.executor import TrainTestExecutor

log = logging.getLogger(__name__)

LARGE_GRID = 500  # grid points from which checking the grid shows a progress bar


@dataclass
class RunOutcome:
    index: int
    name: str
    folder: str
    status: str  # finished | failed | in use (another process holds the folder; not run here)
    error: str = ""
    logged: bool = True  # False: it failed before its run log was opened (the traceback went to the console)
    died: bool = False  # its Dask worker processes died (killed, out of memory): no traceback exists anywhere
    log_unwritable: bool = False  # not logged because its run log could not be written (a full disk, ulimit -f)


def _with_args_axis_hint(message: str, grid: Grid) -> str:
    """A factory that cannot be built with the arguments of a grid that sweeps some of them: say that a list
    in ``*_args`` is an axis, since a list meant as one argument value (torchvision's
    ``replace_stride_with_dilation``) then reaches the factory one element at a time."""
    for kind in ("model_args", "dataset_args", "optimizer_args"):
        swept = [axis.name for axis in grid.axes if axis.path[0] == kind]
        # "cannot be built with model_args ..." (the factory failed) or "model_args 'width' of 'vgg11' must be a
        # number ...; got [0.0625, 0.125]" (a list reached it); not a message about some other argument's value
        # ("model_args 'truncate' is 'bordr'"), which a list of lists would not mend
        if f"cannot be built with {kind}" not in message and not (f"{kind} '" in message and "; got [" in message):
            continue
        nested = _lists_below(grid.base.get(kind), kind) if swept != [kind] else []
        if nested:  # "model_args": {"block": {"width": [8, 16]}}: the factory got the list as one value
            outer = nested[0].split(".")[1]
            return (f"{message} ({', '.join(nested)} {'is a list' if len(nested) == 1 else 'are lists'} below an "
                    f"argument of {kind}: only a list directly inside {kind} is a grid axis, a list deeper down is "
                    f"the value itself. To sweep it, write the whole argument as a list of its mappings, "
                    f"{outer!r}: [{{...}}, {{...}}].)")
        if swept == [kind]:  # "model_args": [{...}, {...}]
            return (f"{message} ({kind} itself is a grid axis, a list of objects with one point each; a list "
                    f"inside those objects is no further axis but the argument's value. To sweep an argument, "
                    f"write {kind} as one object whose argument holds the list.)")
        if swept:
            return (f"{message} ({', '.join(swept)} {'is a grid axis' if len(swept) == 1 else 'are grid axes'}: "
                    f"a list inside {kind} is swept; an argument whose value is a list is written as a list of "
                    f"lists, e.g. [[false, true, true]].)")
    return message


def _lists_below(args: Any, kind: str) -> list[str]:
    """The dotted paths (``model_args.block.width``) of lists inside a mapping that is an argument of ``kind``'s
    mapping ``args``: lists that the grid does not sweep (it sweeps those directly inside ``args``)."""
    def lists_in(value: Any, path: str) -> list[str]:
        if isinstance(value, list):
            return [path]
        if isinstance(value, Mapping):
            return [found for key, inner in value.items() for found in lists_in(inner, f"{path}.{key}")]
        return []
    if not isinstance(args, Mapping):
        return []
    return [found for key, value in args.items() if isinstance(value, Mapping)
            for found in lists_in(value, f"{kind}.{key}")]


class Main:
    """Expands a config into its grid and runs it; other registry modules may be passed in."""

    def __init__(self, registries: Mapping[str, "str | ModuleType"] | None = None, *, progress: bool = True,
                 missing_data: str = "error", missing_device: str = "error") -> None:
        self.registry_overrides = dict(registries or {})
        self.progress = progress
        self.missing_data = missing_data  # "warn" for a dry run: data not yet downloaded is no error there
        # "warn" for a dry run, "ignore" when the runs go to a cluster: a login node without the GPU the runs ask for
        self.missing_device = missing_device
        self.device_option: str | None = None  # the --device of the grid loaded last (it overrides the key)

    def load(self, config_path: str | Path, *, run_id: str | None = None, device: str | None = None,
             index: int | None = None) -> Grid:
        """Read and validate a config file; every grid point is checked before anything runs. ``index``: the point
        ``--index`` runs, named in the error of another point (which is checked too)."""
        self.device_option = device
        if device is not None:
            from phd_lab.device import parse_device, resolve_device
            (resolve_device if self.missing_device == "error" else parse_device)(device, "--device")
        grid = read_config_grid(config_path, run_id=run_id, device=device)
        self.meta_models: dict[Any, Any] = {}  # the grid check's meta models, shared with point_status
        # each grid reads its registry files as they are now (a notebook keeps one Main while they are edited);
        # within a grid, points that name the same modules share them
        self._registry_cache: dict[tuple[tuple[str, str], ...], Registries] = {}
        from phd_lab.run_guards import fx_sources_released
        with fx_sources_released():  # the models' receptive-field checks trace them
            self.executors = self._validate_grid(grid, index)
        return grid

    def _registries_for(self, modules: Mapping[str, str]) -> Registries:
        """The registries a grid point names (``Main``'s own overrides win), imported once per grid by ``load``."""
        chosen = dict(modules)
        chosen.update(self.registry_overrides)
        key = tuple(sorted((k, v if isinstance(v, str) else v.__name__) for k, v in chosen.items()))
        if key not in self._registry_cache:
            self._registry_cache[key] = Registries(chosen)
        return self._registry_cache[key]

    def _checked_point(self, grid: Grid, index: int, listings: FolderListings, said: dict[str, int],
                       models: dict[Any, Any]) -> tuple[RunConfig, TrainTestExecutor]:
        """Grid point ``index`` resolved and checked (registries, config, model, probe keys), with its executor."""
        from phd_lab.executor import TrainTestExecutor
        from phd_lab.run_guards import torch_flags_kept, warning_filters_kept
        cfg = grid[index]
        try:
            registries = self._registries_for(cfg.registries)
        except RegistryError as error:
            raise RegistryError(f"{cfg.source}: the key 'registries': {error}{_logged_in_another_directory(cfg, error)}"
                                ) from None
        try:  # before the executor names the run's folder: a mistyped name of 5,000 characters was refused as too
            registries.check_names(cfg)  # long a folder name, and only the shortened one as an unknown model
        except RegistryError as error:
            raise RegistryError(f"{cfg.source}: {error}") from None
        executor = TrainTestExecutor(cfg, registries, progress=self.progress, listings=listings)
        try:  # a list inside *_args reaches the factory one element at a time: both checks can say so
            # the flags a factory sets end with the checks (not those its module set on import)
            with torch_flags_kept(), warning_filters_kept():
                executor.validate(self.missing_data, said, self.missing_device,
                                  device_option=self.device_option is not None)
                executor.check_model(models)
        except ConfigError as error:
            raise type(error)(_with_args_axis_hint(str(error), grid)) from None
        # the probe job's keys, checked with the rest (each alone by the schema, here how they combine)
        check_probe_keys(cfg.values["probe_solver"], cfg.values["probe_device"], cfg.source)
        return cfg, executor

    def _validate_grid(self, grid: Grid, chosen: int | None = None) -> list[TrainTestExecutor]:
        """One executor per grid point, each point checked (config, model, probe keys) before any runs; points
        sharing a folder, unwritable logs_dirs and folders another process holds are refused (warned of by a dry
        run). The error of a point other than ``chosen`` (``--index``) says it is not the one chosen."""
        executors, folders, models, said = [], {}, self.meta_models, {}
        listings: FolderListings = {}  # each parent folder listed once: the grid makes no folder while it is checked
        # every point is checked before any runs: about 2 ms each, so a large grid says how far it got
        for index in tqdm(range(len(grid)), desc=f"checking {len(grid)} grid points",
                          disable=not self.progress or len(grid) < LARGE_GRID, **bar_options(transient=True)):
            try:
                cfg, executor = self._checked_point(grid, index, listings, said, models)
            except UsageError as error:
                if chosen is None or chosen == index or not 0 <= chosen < len(grid):
                    raise
                raise type(error)(f"{str(error).rstrip()} (Run {index} is not the one --index {chosen} runs, but "
                                  f"every run of the grid is checked before any of them starts: fix it too.)") from None
            folder = Path(os.path.realpath(executor.rundir.root))  # logs/x and /abs/logs/x, or a link to it
            if folder in folders:
                first = folders[folder]
                other = executors[first].config.values
                differing = sorted(_differing_keys(cfg.values, other))
                why = (f"they differ only in {differing}, which do not change a run's results and are not part of "
                       f"its folder; sweep such keys in separate configs (or one after the other)" if differing
                       else _duplicate_values(grid, first, index))
                if executors[first].rundir.root != executor.rundir.root:
                    why = (f"their logs_dir values {executors[first].config.logs_dir!r} and {cfg.logs_dir!r} name "
                           f"one folder (written two ways, or through a symbolic link); keep one of them")
                raise ConfigError(f"{grid.where}: runs {first} and {index} would share the folder "
                                  f"{executor.rundir.root}: {why}.")
            folders[folder] = index
            executors.append(executor)
        for message, count in said.items():
            if count > 1:  # named by its first clause: several datasets may be missing
                log.warning("%s: the same (%s) for %d more grid point(s).", grid.where,
                            clipped(message.split(": ")[0]), count - 1)
        for logs_dir in sorted({e.config.logs_dir for e in executors}):
            try:
                check_writable_dir(logs_dir, "logs_dir", grid.where)
            except ConfigError as error:
                if self.missing_data != "warn":  # a dry run writes nothing: it may read a read-only archive
                    raise
                log.warning("%s", error)
        blocked = _blocked_run_folders(executors, grid.where)
        if blocked and self.missing_data != "warn":
            raise blocked[0]
        for error in blocked:
            log.warning("%s", error)
        shared = [*_invalid_latents_manifests(executors, grid.where), *_shared_latents_folders(executors, grid.where)]
        if shared and self.missing_data != "warn":
            raise shared[0]
        for error in shared:
            log.warning("%s", error)
        earlier = earlier_version_runs(e.config for e in executors)
        if earlier:
            log.warning("%s: %s", grid.where, earlier_version_advice(earlier, len(executors)))
        _warn_of_repeated_runs(grid, executors)
        return executors

    def run(self, grid: Grid, indices: list[int] | None = None) -> list[RunOutcome]:
        """Run the chosen grid points one after another; a failing point does not stop the others."""
        outcomes = []
        usage_errors: list[UsageError] = []
        chosen = list(range(len(grid))) if indices is None else indices
        for position, index in enumerate(chosen, 1):
            executor = self.executors[index]
            cfg = executor.config
            varying = "".join(f"  {k}={v}" for k, v in grid.varying(index).items())  # none: no trailing blanks
            log.info("Run %d (%d of %d): %s%s", index, position, len(chosen), cfg.name, varying)
            try:
                executor.run()
            except UsageError as error:
                raise_interruption_behind(error)  # a Ctrl-C that a factory or library turned into its error: stop
                if len(chosen) == 1:  # the command's only run: a usage error of the command (exit 2)
                    raise
                # found only when the point runs (a dataset missing from data_dir, a folder in use by another
                # command): the other points of the grid still run, the summary lists this one
                in_use = isinstance(error, RunLockedError)
                if in_use:
                    log.warning("Run %d (%s) is not run here: %s", index, cfg.name, error)
                else:
                    log.error("Run %d (%s) failed: %s", index, cfg.name, error)
                outcomes.append(RunOutcome(index, cfg.name, str(executor.rundir.root),
                                           "in use" if in_use else "failed", f"{type(error).__name__}: {error}",
                                           logged=False))  # refused before its run log was opened: said above
                usage_errors.append(error)
                if len(usage_errors) == len(chosen):  # no point could run: the command's input is at fault
                    raise usage_errors[0]
                continue
            except Exception as error:  # one failed run must not cost the rest of the grid
                raise_interruption_behind(error)  # a Ctrl-C or SIGTERM inside a compiled module's import: stop
                said = failure_line(error)
                if said is not None:  # the traceback is in the run's log (or went with a lost folder)
                    log.error("Run %d (%s) failed: %s", index, cfg.name, said)
                else:  # before its run log was opened (building the data, model or optimizer), or into a log
                    # that could not be written (a full disk): show it here
                    unwritable = getattr(error, "log_unwritable", None)
                    when = (f"and its log {str(unwritable)!r} could not take the traceback" if unwritable else
                            "before its run log was opened (while building its data, model or optimizer)")
                    log.error("Run %d (%s) failed %s: %s: %s", index, cfg.name, when, type(error).__name__, error,
                              exc_info=error)
                outcomes.append(RunOutcome(index, cfg.name, str(executor.rundir.root), "failed",
                                           f"{type(error).__name__}: {brief(error)}", logged=said is not None,
                                           log_unwritable=said is None and bool(getattr(error, "log_unwritable",
                                                                                        None))))
                continue
            outcomes.append(RunOutcome(index, cfg.name, str(executor.rundir.root), "finished"))
        return outcomes

    def run_on_cluster(self, grid: Grid, scheduler: str, indices: list[int] | None = None) -> list[RunOutcome]:
        """Submit every chosen grid point as one Dask task, but for those a rerun would leave as they are (listed
        as finished, as a worker would have said); failures are reported, not raised."""
        from phd_lab.distributed import (dask_client, declared_gpus, gpu_device, submit_and_collect,
                                         task_resources, train_point)
        requested = list(range(len(grid))) if indices is None else indices
        skipped = self._finished_points(requested)
        done = {outcome.index for outcome in skipped}
        chosen = [index for index in requested if index not in done]
        if not chosen:
            return skipped
        overrides = {k: v if isinstance(v, str) else v.__name__ for k, v in self.registry_overrides.items()}
        configs = {index: self.executors[index].config for index in chosen}
        devices = {index: gpu_device(cfg.device, cfg.tracking_device if cfg.track_saturation else None)
                   for index, cfg in configs.items()}  # a run that tracks nothing sums no covariance on a GPU
        from phd_lab.device import resolve_device
        with dask_client(scheduler) as client:
            gpus = declared_gpus(client, scheduler, [devices[index] for index in chosen],
                                 cuda_here=lambda: resolve_device("auto").type == "cuda")
            tasks = []
            command = uuid.uuid4().hex[:12]  # two commands on one scheduler must not share (and skip) tasks
            stop_event = f"stop-{command}"  # set when this command is stopped: its tasks end then too
            for index in chosen:
                cfg, executor = configs[index], self.executors[index]
                values = executor.portable(cfg.values)  # a worker's working directory is not this one
                tasks.append((f"train-{index}-{executor.rundir.root.name}-{command}", train_point,
                              (values, cfg.source, overrides, stop_event), task_resources(devices[index], gpus)))
            log.info("Submitting %d run(s) to %s", len(tasks), scheduler)
            results = submit_and_collect(client, tasks, "grid", progress=self.progress, stop_event=stop_event)
        outcomes, usage_errors = [], []
        for index, (key, *_rest) in zip(chosen, tasks):
            status, value = results[key]
            executor = self.executors[index]
            logged = status == "finished"  # a task that raised failed before its run log was opened
            died = status == "died"
            if died:  # killed, not raised: no traceback anywhere, but its log and checkpoints stay
                run_log = executor.rundir.log
                logged = run_log.exists()
                status, value = "failed", (f"{value}. Its last completed epoch is kept: rerun this command to "
                                           f"resume it")
                log.error("Run %d (%s) failed: %s", index, executor.config.name,
                          f"{value}{LOG_MARK}{run_log}" if logged else f"{value}.")
                value += "."
            if status == "finished":  # the task ran: train_point's own (status, folder or message)
                status, value = value
                if status == "failed":  # the run failed after its log was opened, which holds the traceback
                    log.error("Run %d (%s) failed: %s", index, executor.config.name, value)
                    value = without_log(value)
            if status == "invalid":  # a usage error found when the point ran (dataset missing): no run log
                status, logged = "failed", False
                log.error("Run %d (%s) failed: %s", index, executor.config.name, value)  # as a sequential run says
                usage_errors.append(UsageError(str(value)))
            elif status == "in use":
                usage_errors.append(RunLockedError(str(value)))
            outcomes.append(RunOutcome(index, executor.config.name, str(executor.rundir.root), status,
                                       "" if status == "finished" else
                                       brief(value) if isinstance(value, BaseException) else str(value),
                                       logged=logged, died=died))
        if usage_errors and len(usage_errors) == len(requested):  # as in a sequential run: the input is at fault
            raise usage_errors[0]
        return sorted(outcomes + skipped, key=lambda outcome: outcome.index)

    def _finished_points(self, indices: list[int]) -> list[RunOutcome]:
        """The outcomes of the points a rerun would leave as they are (``rerun_changes_nothing``), as a worker
        would have reported them: a task would have a worker import torch and build the run's data and model
        only for the run to find itself finished (42 s against 66 s of training for 12 points)."""
        outcomes = []
        for index in indices:
            executor = self.executors[index]
            if rerun_changes_nothing(executor, self.meta_models):
                log.info("Run %d (%s) is finished, with no post-processing step left: not submitted.", index,
                         executor.config.name)
                outcomes.append(RunOutcome(index, executor.config.name, str(executor.rundir.root), "finished"))
        return outcomes

    def __call__(self, config_path: str | Path, *, index: int | None = None, run_id: str | None = None,
                 device: str | None = None) -> list[RunOutcome]:
        grid = self.load(config_path, run_id=run_id, device=device, index=index)
        return self.run(grid, chosen_indices(grid, index))


def _blocked_run_folders(executors: list[TrainTestExecutor], where: str) -> list[ConfigError]:
    """A ConfigError for each run whose folder cannot be made because a file lies where a folder above it must go
    (``logs/vgg11`` written as a file): the run failed with a NotADirectoryError traceback when it started (other
    runs of the grid trained first), while --dry-run called it new. The points of a grid share parent folders,
    so each is looked at once."""
    blocking: dict[Path, Path] = {}  # parent folder → the nearest existing path on its way
    errors = []
    for index, executor in enumerate(executors):
        root = executor.rundir.root
        if root.parent not in blocking:
            blocking[root.parent] = nearest_existing(root.parent)
        above = blocking[root.parent]
        found = (root if root.exists() else above) if above == root.parent else above
        if not found.is_dir():
            errors.append(ConfigError(f"{where}: the folder of run {index}, {root}, cannot be made inside logs_dir "
                                      f"{executor.config.logs_dir!r}, but {str(found)!r} is a file where a folder "
                                      f"must go; move the file away or choose another logs_dir."))
    return errors


def _extract_folders(executor: TrainTestExecutor) -> Iterator[tuple[dict[str, Any], list[Path]]]:
    """Each extract step of the run: its parameters and the latents folders it writes."""
    for step, params in executor.steps:
        if step.name == "extract":
            yield params, step.folders(executor.rundir, params)  # type: ignore[attr-defined]


def _invalid_latents_manifests(executors: list[TrainTestExecutor], where: str) -> list[UsageError]:
    """A DataError for each run whose latents manifest the extract step would refuse (``load_manifest``: a NaN of
    a hand edit), before the run resumes or trains rather than at its extract step."""
    from phd_lab.latents_folder import load_manifest
    errors: list[UsageError] = []
    for index, executor in enumerate(executors):
        for _params, folders in _extract_folders(executor):
            for folder in folders:
                try:
                    load_manifest(folder)
                except DataError as error:
                    errors.append(DataError(f"{where}, run {index}: {error}"))
    return errors


def _shared_latents_folders(executors: list[TrainTestExecutor], where: str) -> list[ConfigError]:
    """A ConfigError for each run whose latents folder under a latents_dir is another run's: another point of the
    grid (points that differ only in logs_dir mirror to one folder) or a run of another logs tree, whose latents
    are on disk (``other_runs_latents``). Found when the run extracted, after its training, it rewrote the other
    run's manifest to name its own folder, so that the probe results went to one tree only."""
    from phd_lab.latents_folder import other_runs_latents, shared_latents_error
    owners: dict[Path, int] = {}
    errors = []
    for index, executor in enumerate(executors):
        for params, folders in _extract_folders(executor):
            if params["latents_dir"] is None:
                continue
            for folder in folders:
                key = Path(os.path.abspath(folder))
                first = owners.setdefault(key, index)
                try:
                    other = (str(executors[first].rundir.root) if first != index
                             else other_runs_latents(folder, executor.rundir.root))
                except DataError:  # a manifest refused: _invalid_latents_manifests says so
                    continue
                if other is not None:
                    errors.append(ConfigError(shared_latents_error(folder, executor.rundir.root, other,
                                                                   f"{where}, run {index}", first != index)))
                    break
    return errors


def _duplicate_values(grid: Grid, first: int, index: int) -> str:
    """How to undo two grid points that resolve to one folder: name the axes whose values are written differently
    but read the same (run_id [5, "5"]: a run_id is read as a string), or else those whose list holds a value
    twice (epoch [1, 1]); the message said only "remove the duplicate value from the lists"."""
    def written(value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    mine, theirs = grid.varying(first), grid.varying(index)
    alike = [f"{name} ({shown_value(mine[name])} and {shown_value(theirs[name])})" for name in mine
             if written(mine[name]) != written(theirs[name])]
    if alike:
        return (f"their values of {', '.join(alike)} are read as the same value; keep one of each in the "
                f"{'list' if len(alike) == 1 else 'lists'}")
    values = {axis.name: [written(value) for value in axis.values] for axis in grid.axes}
    repeated = [name for name, value in mine.items() if values[name].count(written(value)) > 1]
    return f"the list of {', '.join(repeated)} holds a value twice; remove the repeat"


def _differing_keys(values: dict[str, Any], other: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys whose values differ, a nested mapping's by their dotted path ('dataset_args.download', not
    'dataset_args', some of whose keys do change a run's results)."""
    differing = []
    for key in values.keys() | other.keys():
        mine, theirs = values.get(key), other.get(key)
        if mine == theirs:
            continue
        if isinstance(mine, dict) and isinstance(theirs, dict):
            differing += _differing_keys(mine, theirs, f"{prefix}{key}.")
        else:
            differing.append(f"{prefix}{key}")
    return differing


def _warn_of_repeated_runs(grid: Grid, executors: list[TrainTestExecutor]) -> None:
    """Grid points that train the same network twice in two folders: repetitions (run_id) under one fixed
    seed, and values that differ only in how a number is written (1 and 1.0 name two folders)."""
    axes = {axis.name: axis.values for axis in grid.axes}
    if len(axes.get("run_id", ())) > 1 and "seed" not in axes and grid.base.get("seed") is not None:
        log.warning("%s: 'seed' is %s for every run_id %s, so these repetitions train the same network (bit for bit "
                    "on the CPU). Set \"seed\": null to derive each repetition's seed from its run_id.", grid.where,
                    json.dumps(grid.base["seed"]), json.dumps(list(axes["run_id"]), ensure_ascii=False))
    _warn_of_idle_tracking_keys(grid, executors)
    written: dict[str, int] = {}  # values with each number written one way
    resolved: dict[str, int] = {}  # and with the factories' defaults filled in
    for index, executor in enumerate(executors):
        key = json.dumps(_numbers_as_written_once(executor.config.values), sort_keys=True, default=str)
        if key in written:
            log.warning("%s: runs %d and %d differ only in how numbers are written (such as 1 and 1.0, or true and "
                        "1), which gives them two folders: the same run would be trained twice. Write each value "
                        "once.",
                        grid.where, written[key], index)
            return
        written[key] = index
        first = resolved.setdefault(_with_factory_defaults(executor), index)
        if first != index and executors[first].rundir.root != executor.rundir.root:
            # model_args [{}, {"width": 1.0}] for vgg11 (width 1.0 by default): folders are named by the arguments
            # as written (a repeated framework option is refused instead)
            log.warning("%s: runs %d and %d differ only in factory arguments that one of them writes at the "
                        "factory's default, which gives them two folders: the same run would be trained twice. "
                        "Write such a default in every run or in none.", grid.where, first, index)
            return


def _with_factory_defaults(executor: TrainTestExecutor) -> str:
    """A run's values with each number written one way and the model, dataset and optimizer factories' defaults
    filled into their arguments, as a key: two runs with one key train the same network."""
    from phd_lab.factory_args import SUPPLIED_ARGS, defaults_in_effect
    cfg, values = executor.config, dict(executor.config.values)
    for kind, name in (("models", cfg.model), ("datasets", cfg.dataset), ("optimizers", cfg.optimizer)):
        key = f"{kind[:-1]}_args"
        given = values.get(key) or {}
        values[key] = {**defaults_in_effect(executor.registries[kind].get(name), given, SUPPLIED_ARGS[kind]), **given}
    return json.dumps(_numbers_as_written_once(values), sort_keys=True, default=str)


def idle_tracking_keys(values: Mapping[str, Any]) -> list[str]:
    """The tracking keys a run's values set off their defaults where they have no effect: every one that is part
    of the run's folder with ``track_saturation`` false, and ``tracking_downsampling`` without a
    ``tracking_resolution`` to reduce maps to. Runs logged with them keep their folders, so a sweep over one of
    them trains the same run once per value."""
    from phd_lab.config import SCHEMA_BY_NAME
    keys = ([key for key, spec in SCHEMA_BY_NAME.items() if key.startswith("tracking_") and not spec.technical]
            if not values.get("track_saturation")
            else ["tracking_downsampling"] if values.get("tracking_resolution") is None else [])
    return [key for key in keys if key in values and values[key] != SCHEMA_BY_NAME[key].default]


def _warn_of_idle_tracking_keys(grid: Grid, executors: list[TrainTestExecutor]) -> None:
    """Name, once per grid, the tracking keys that change nothing in the runs that set them (the option accepted
    and ignored without a word) and the runs that differ in nothing else: one network trained in several folders.
    A key that takes effect in other runs of the grid (a sweep of track_saturation with tracking_every_n 2) is named
    only where two runs differ in nothing else, and is not to be left out then, but set only where it acts."""
    from phd_lab.config import SCHEMA_BY_NAME
    idle_at = [idle_tracking_keys(executor.config.values) for executor in executors]
    idle = list(dict.fromkeys(key for keys in idle_at for key in keys))
    acting = {key for executor, keys in zip(executors, idle_at) for key in idle if key not in keys
              and executor.config.values.get(key, SCHEMA_BY_NAME[key].default) != SCHEMA_BY_NAME[key].default}
    pair = _runs_differing_only_in_idle_keys(executors, idle_at)
    if pair is None:
        idle = [key for key in idle if key not in acting]
    if not idle:
        return
    why = ("'track_saturation' is false" if any(key != "tracking_downsampling" for key in idle)
           else "'tracking_resolution' is null (maps are tracked at full size)")
    message = (f"{grid.where}: {', '.join(repr(key) for key in idle)} {'has' if len(idle) == 1 else 'have'} no "
               f"effect where {why}, yet each value gives a run its own folder")
    if pair is not None:
        message += f": runs {pair[0]} and {pair[1]} differ only in them and train the same network twice"
    advice = ("Set them only in the runs where they act, the others in a config of their own"
              if acting & set(idle) else "Leave them out of new configs")
    log.warning("%s. %s (a run trained with them finds its folder only with them).", message, advice)


def _runs_differing_only_in_idle_keys(executors: list[TrainTestExecutor],
                                      idle_at: list[list[str]]) -> tuple[int, int] | None:
    """The first two grid points whose values are the same once their idle tracking keys are set to the defaults."""
    from phd_lab.config import SCHEMA_BY_NAME
    seen: dict[str, int] = {}
    for index, (executor, keys) in enumerate(zip(executors, idle_at)):
        values = {**executor.config.values, **{key: SCHEMA_BY_NAME[key].default for key in keys}}
        key = json.dumps(values, sort_keys=True, default=str)
        if key in seen:
            return seen[key], index
        seen[key] = index
    return None


def _logged_in_another_directory(cfg: Any, error: RegistryError) -> str:
    """For a logged config whose registry module, named by a dotted name (a package's module, which the logged
    config keeps as such: ``registry.working_directory_file``), cannot be imported here: the working directory its
    run was started in (``_meta.working_directory``), where the name was importable. Its rerun from another
    directory said only 'No module named ...', and the folder to rerun from was not named."""
    meta = cfg.logged_meta
    folder = meta.get("working_directory") if isinstance(meta, Mapping) else None
    spec = getattr(error, "unimportable_module", None)  # set by registry_import where it cannot import it
    if (not isinstance(folder, str) or not isinstance(spec, str) or spec.endswith(".py")
            or spec not in cfg.registries.values()):
        return ""
    try:
        if Path(folder).resolve() == Path.cwd().resolve():
            return ""
    except (OSError, RuntimeError):
        pass
    return (f" Its run was started in the working directory {folder!r} (the logged config's "
            f"_meta.working_directory), from which {spec!r} was imported: rerun from there, or put that folder on "
            f"PYTHONPATH.")


def _numbers_as_written_once(value: Any) -> Any:
    """``value`` with integral floats and booleans as ints (1.0 → 1, true → 1: an argument annotated ``bool`` takes
    0 and 1 too), in nested mappings and lists too."""
    if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    if isinstance(value, Mapping):
        return {key: _numbers_as_written_once(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers_as_written_once(item) for item in value]
    return value


def chosen_indices(grid: Grid, index: int | None) -> list[int] | None:
    """``[index]`` for ``--index`` (checked against the grid), None for the whole grid."""
    if index is None:
        return None
    try:
        grid.point(index)
    except IndexError as error:
        raise UsageError(f"--index: {error}.") from None
    return [index]


def point_status(executor: TrainTestExecutor, meta_models: dict[Any, Any] | None = None) -> str:
    """What a grid point's folder holds now: new, running/stopped e/E epochs, finished (post-processing),
    or trained with post-processing steps left (a run killed during its steps, or with steps added since).
    The metrics CSV is read as the report reads it; where it is damaged the status names it, and the epochs
    trained are the checkpoint's where it holds more (it is what a rerun resumes from). ``meta_models``: the
    meta-device models the grid check built (``Main.meta_models``), reused rather than built again per point."""
    import pandas as pd

    from phd_lab.analysis.run_tables import read_metrics, training_status
    from phd_lab.checkpoint import CheckpointStore
    rundir, planned = executor.rundir, executor.config.epoch
    if not rundir.root.exists():
        return "new"
    metrics, damage = read_metrics(rundir)
    status = training_status(rundir, {"epoch": planned}, metrics)  # as the report says it
    store = CheckpointStore(rundir.checkpoint, rundir.previous_checkpoint)
    notes = [] if damage is None else [damage]
    # a damaged CSV, or a kill between an epoch's checkpoint and its CSV row (the CSV is written second): the
    # rerun resumes after the checkpoint's epoch, which the CSV may not list
    if not status.active and (damage is not None or _checkpoint_newer_than_csv(store, rundir.metrics_csv)):
        trained, listed = store.peek_epochs(), status.epochs_done
        if trained is not None and trained > listed:
            status = training_status(rundir, {"epoch": planned}, pd.DataFrame({"epoch": [trained]}))
            notes.append(f"the epochs trained are those of {rundir.checkpoint.name}" + (
                "" if damage is not None else f": the metrics CSV lists {listed} of its {trained}"))
    refused = executor.logged_config_refusal()
    if refused is not None:  # the plain command stops at it before it trains or post-processes anything
        return (f"{status.label()}; {refused}: the plain command refuses the run (exit 2) and says how to go on" +
                (f" ({'; '.join(notes)})" if notes else ""))
    if not status.active and status.epochs_done and not store.exists():  # the checkpoints deleted since
        return (f"{status.label()}, but neither {rundir.checkpoint.name} nor {rundir.previous_checkpoint.name} is "
                f"there: the plain command trains it again from the start and replaces the rows of "
                f"{rundir.metrics_csv.name}" + (f" ({'; '.join(notes)})" if notes else ""))
    said = _point_status(executor, status, meta_models)
    return f"{said} ({'; '.join(notes)})" if notes else said


def _checkpoint_newer_than_csv(store: Any, csv: Path) -> bool:
    """Whether a checkpoint generation was saved after the metrics CSV was last written (or without one): only
    then can the checkpoint hold an epoch the CSV lacks, so only then is it read (its checksums cost about 0.1 s
    per 200 MB, too much for every run of a large grid's dry run)."""
    try:
        written = csv.stat().st_mtime_ns
    except OSError:
        written = -1
    for path in store.generations():
        try:
            if path.stat().st_mtime_ns > written:
                return True
        except OSError:
            continue
    return False


def rerun_changes_nothing(executor: TrainTestExecutor, meta_models: dict[Any, Any] | None = None) -> bool:
    """Whether running this grid point again would train no epoch, run no post-processing step, leave its
    logged config as it is and warn of nothing (``--dry-run``'s 'finished' and ``finished_rerun_is_silent``, the
    sequential rerun's own comparison): a Dask grid need not send it to a worker. A rerun that would update, warn
    of or refuse something (a changed key, other factory code, a damaged or unreadable file) is still sent."""
    return point_status(executor, meta_models) == "finished" and executor.finished_rerun_is_silent()


def _point_status(executor: TrainTestExecutor, status: "TrainingStatus",
                  meta_models: dict[Any, Any] | None = None) -> str:
    """``point_status`` from the training status: a damaged checkpoint, the steps left, or the status' label."""
    from phd_lab.checkpoint import CheckpointStore
    from phd_lab.model_checks import meta_model, trained_meta_model
    rundir = executor.rundir
    if not status.active and status.epochs_done:
        store = CheckpointStore(rundir.checkpoint, rundir.previous_checkpoint)
        if store.current_is_damaged():
            fallback = store.fallback()  # the generation load() goes back to, checked as load() checks it
            if fallback is not None:
                return (f"{status.label()}; {rundir.checkpoint.name} is damaged: the next run goes back to "
                        f"{fallback.name} and trains the epochs after it again")
            damaged = [path.name for path in store.generations() if path.exists()]  # the current one among them
            which = (f"{damaged[0]} is damaged and there is no earlier one" if len(damaged) == 1 else
                     f"{', '.join(damaged[:-1])} and {damaged[-1]} are all damaged" if len(damaged) > 2 else
                     f"{damaged[0]} and {damaged[1]} are both damaged")
            return (f"{status.label()}; {which}: the next run stops with an error; "
                    f"delete {'them' if len(damaged) > 1 else 'it'} to train the run again from the start")
    if status.state == "finished" and not status.active:
        from phd_lab.steps.stamps import StepStamps
        stamps = StepStamps(rundir)
        built = meta_models if meta_models is not None else {}

        def meta() -> tuple[Any, int]:  # built once, and only for a step that asks (an older extraction's)
            key, model = meta_model(executor.config, executor.registries, built)
            trained = None if model is None else trained_meta_model(executor.config, model, built, key)
            return trained, executor.config.resolution

        left = [step.name for step, params in executor.steps if step.done(rundir, params, stamps, meta) is False]
        if left:
            return f"trained, steps left: {', '.join(left)}"
    return status.label()


def summary_table(outcomes: list[RunOutcome]) -> str:
    lines = [f"{'index':>5}  {'status':8}  folder"]
    for o in outcomes:
        lines.append(f"{o.index:>5}  {o.status:8}  {o.folder}" + (f"\n{'':17}{o.error}" if o.error else ""))
    return "\n".join(lines)


