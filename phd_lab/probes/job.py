"""The probe job's driver: find latents, validate everything, run the probes, write the outputs.

Validation (manifests, array headers, label lengths, sha256 of every file, settings, device)
finishes before anything is written, so bad input exits with status 2 and leaves no files.
Outputs go to the run folder named by the manifest's ``run_dir``, each written atomically:
``probe_performances.csv`` and ``.png`` and one confusion matrix per layer (``.npy``, ``.png``),
all of a run's files once its last layer is fitted, so a stopped job leaves the earlier set whole.
A run whose latents hold NaN or inf (it diverged) fails alone: the other runs are probed and written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from phd_lab import atomic
from phd_lab.analysis.run_tables import lock_owner_alive, run_folder
from phd_lab.atomic import write_csv, write_with
from phd_lab.errors import ConfigError, DataError, PhdLabError, RunFolderLost, RunLockedError, UsageError
from phd_lab.interrupts import deferred_interrupts
from phd_lab.lock import PROBE_LOCK, RunLock
from phd_lab.probes.cache import ResultCache, cache_key, library_versions
from phd_lab.probes.fit import ProbeRecord, stratified_subsample
from phd_lab.probes.manifest import MANIFEST, Manifest, read_manifest, verify_hashes
from phd_lab.probes.probe_log import PROBE_JOB, PROBE_JOBS, ProbeLogs
from phd_lab.probes.runner import ProbeTask, run_probes
from phd_lab.probes.settings import ProbeSettings
from phd_lab.rundir import RunDir, earlier_version_advice, earlier_version_runs, read_config_grid

log = logging.getLogger(__name__)

CSV_COLUMNS = ("index", "layer", "train_acc", "eval_acc", "relative_acc", "n_iter", "converged", "seconds", "solver")
CACHE_FOLDER = ".probe_cache"
LOST_ADVICE = "Its probe results were not written; the layers fitted so far stay in the probe cache."


@dataclass(frozen=True)
class ProbeJob:
    """One latents folder to probe with its settings, and the run folder that receives the results."""

    manifest: Manifest
    settings: ProbeSettings
    outputs: RunDir
    label: str  # for messages: the run's name or the latents folder


def jobs_from_config(config_path: Path | str, run_id: str | None = None,
                     overrides: Mapping[str, Any] | None = None) -> tuple[list[ProbeJob], Path, list[str]]:
    """Every run of the config's grid that has latents: the jobs, the default cache folder, and the runs left
    unprobed that need the user's action.

    Runs are located exactly as training places them (``RunDir.for_run``); the probe settings
    of each run come from its ``probe_*`` keys, then the command-line ``overrides``. Runs
    without a latents folder are skipped, and so are runs whose extraction is running (their turn comes in
    a later job) or died (listed in the third value: the others are probed meanwhile). Without any other
    run to probe, either is an error.
    """
    from phd_lab.config import extraction_latents_dir

    where = str(config_path)
    grid = read_config_grid(config_path, run_id=run_id)
    jobs, skipped, extracting, logs_dirs, unprobed, unfinished = [], [], [], set(), [], []
    for index in range(len(grid)):
        cfg = grid[index]
        rundir = RunDir.for_run(cfg)
        logs_dirs.add(cfg.logs_dir)
        folder = rundir.latents(extraction_latents_dir(cfg.values))
        if not folder.exists():
            skipped.append(index)
            unprobed.append((index, cfg))
            continue
        owner = extracting_owner(folder, rundir)
        if owner is not None:  # probing beside a training grid: this run's turn comes in a later job
            if len(extracting) < SAID_ONE_BY_ONE:
                log.warning("run %d (%s): its latents are being extracted (%s); skipped, probe it once that has "
                            "finished", index, cfg.name, owner or "another process")
            extracting.append(index)
            continue
        if unfinished_extraction(folder):  # its process was killed: the other runs need not wait for this one
            if len(unfinished) < SAID_ONE_BY_ONE:  # a grid's array job killed at its time limit: hundreds
                log.warning("run %d (%s): its latents folder %s has no %s: the extraction did not finish (its "
                            "process was killed?); skipped. `python main.py --config %s --index %d` finishes it.",
                            index, cfg.name, folder, MANIFEST, where, index)
            unfinished.append(index)
            continue
        settings = ProbeSettings.from_mapping(cfg.values, overrides, f"{where} (run {index})")
        jobs.append(_job(read_manifest(folder), settings, f"run {index} ({cfg.name})", expected_root=rundir.root))
    folders: dict[Path, ProbeJob] = {}
    for job in list(jobs):
        root = job.outputs.root.resolve()
        if root in folders and folders[root].settings == job.settings:  # a swept probe key a command-line
            jobs.remove(job)  # option overrides: the same job twice
            continue
        if root in folders:
            raise ConfigError(f"{where}: {folders[root].label} and {job.label} are the same trained run (probe "
                              f"settings do not change a run's folder) with different probe settings, and one run "
                              f"folder holds one probe_performances.csv. Probe other settings one at a time with "
                              f"`probe_main.py --latents DIR` and command-line options such as --C.")
        folders[root] = job
    if not jobs and unfinished:
        raise DataError(f"The extraction of run(s) {index_ranges(unfinished)} of {where!r} did not finish (their "
                        f"latents folders have no {MANIFEST}; it is written last), and no other run has latents yet. "
                        f"Rerun the training command with the 'extract' step; it redoes a half-written extraction.")
    if not jobs and extracting:
        raise DataError(f"The latents of run(s) {index_ranges(extracting)} of {where!r} are still being extracted by "
                        f"the training command, and no other run has latents yet; probe once it has finished. "
                        f"(A lock held from another host cannot be checked from here: if that process has died, "
                        f"rerun the training command, which takes its lock over and finishes the extraction.)")
    if not jobs:
        check_registry_names(unprobed, where)
        earlier = earlier_version_runs(cfg for _, cfg in unprobed)
        hint = f" {earlier_version_advice(earlier, len(grid))}" if earlier else ""
        raise DataError(f"No latents found for any of the {len(grid)} run(s) of {where!r} (looked for "
                        f"<run folder>/latents or under latents_dir). Train the runs with the 'extract' "
                        f"post-processing step first (python main.py --config {where}).{hint}")
    if skipped:
        log.info("%d run(s) without latents (skipped): %s", len(skipped), index_ranges(skipped))
    if len(extracting) > SAID_ONE_BY_ONE:
        log.warning("%d run(s) whose latents are being extracted (skipped): %s", len(extracting),
                    index_ranges(extracting))
    if unfinished:
        log.warning("%d run(s) whose extraction did not finish (not probed): %s", len(unfinished),
                    index_ranges(unfinished))
    notes = [f"run(s) {index_ranges(unfinished)}: extraction unfinished"] if unfinished else []
    return jobs, Path(sorted(logs_dirs)[0]) / CACHE_FOLDER, notes


SAID_ONE_BY_ONE = 5  # runs skipped for the same reason that get a line each; the rest are counted


def index_ranges(indices: Sequence[int]) -> str:
    """Grid indices as ranges ("0-3, 7, 9-12"): a list of hundreds of runs stays one readable line."""
    parts, start = [], None
    for position, index in enumerate(indices):
        if start is None:
            start = index
        if position + 1 == len(indices) or indices[position + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ", ".join(parts)


def check_registry_names(runs: Sequence[tuple[int, Any]], where: str) -> None:
    """When no run has latents, a misspelt model, dataset, optimizer or metric name may be why (its
    folder cannot exist): name the key as training would, instead of only "no latents found".
    Checked only then, so a probe job normally imports neither torch nor the registry modules; a
    registry module that does not import on this node leaves the names unchecked."""
    from phd_lab.errors import RegistryError
    from phd_lab.registry import Registries

    loaded: dict[tuple[tuple[str, str], ...], Registries | None] = {}
    for index, cfg in runs:
        key = tuple(sorted(dict(cfg.registries).items()))
        if key not in loaded:
            try:
                loaded[key] = Registries(dict(key))
            except RegistryError as error:
                log.debug("registry names of run %d not checked: %s", index, error)
                loaded[key] = None
        registries = loaded[key]
        if registries is not None:
            try:
                registries.check_names(cfg)
            except RegistryError as error:
                raise RegistryError(f"{where} (run {index}): {error}") from None


def jobs_from_latents(folder: Path | str, overrides: Mapping[str, Any] | None = None) -> tuple[list[ProbeJob], Path]:
    """One latents folder with default settings plus ``overrides``; the cache defaults to the run folder."""
    owner = extracting_owner(Path(folder), run_folder(Path(folder).resolve().parent))
    if owner is not None:
        holder = owner or "another process"
        raise DataError(f"Latents folder {str(folder)!r} is being extracted right now ({holder}): its manifest is "
                        f"written last. Probe it once that process has finished.")
    if unfinished_extraction(Path(folder)) and not any(Path(folder).resolve().parent.glob("*_config.json")):
        # not inside its run folder (mirrored under latents_dir): the run folder, whose lock would tell whether
        # the extraction is still running, is named only by the manifest
        raise DataError(f"Latents folder {str(folder)!r} has no {MANIFEST}: the extraction is unfinished, still "
                        f"running or killed (the manifest is written last, and without it the run folder that would "
                        f"tell is unknown). Probe it once the training command has finished; if its process died, "
                        f"rerun the training command with the 'extract' step, which redoes a half-written "
                        f"extraction.")
    manifest = read_manifest(folder)
    settings = ProbeSettings.from_mapping({}, overrides, "command line")
    job = _job(manifest, settings, str(folder))
    return [job], job.outputs.root / CACHE_FOLDER


def unfinished_extraction(latents: Path) -> bool:
    """A latents folder without its manifest, which the extraction writes last (and not a folder that holds
    latents folders, which ``read_manifest`` points to)."""
    return latents.is_dir() and not (latents / MANIFEST).is_file() and not any(latents.glob(f"*/{MANIFEST}"))


def extracting_owner(latents: Path, rundir: RunDir) -> str | None:
    """The lock line of the process extracting ``latents`` right now (live here, or on another host where
    that cannot be checked; "" while a holder has not written its line yet), or None: a latents folder
    without its manifest whose run folder such a process holds is still being written."""
    if (latents / MANIFEST).is_file() or not rundir.lock.exists():
        return None
    active, owner = lock_owner_alive(rundir.lock)
    return None if active is False else owner


def _job(manifest: Manifest, settings: ProbeSettings, label: str, expected_root: Path | None = None) -> ProbeJob:
    run_dir = manifest.run_dir
    enclosing = manifest.folder.resolve().parent
    if enclosing != run_dir.resolve() and any(enclosing.glob("*_config.json")):
        # latents inside a run folder belong to that run, also after the logs were moved or copied
        log.warning("%s: the manifest names run folder %s, but the latents lie in run folder %s; writing the probe "
                    "results beside them", label, run_dir, enclosing)
        run_dir = enclosing
    if not run_dir.is_dir():
        manifest_path = str(manifest.folder / "manifest.json")
        raise DataError(f"The run folder {str(run_dir)!r} named by 'run_dir' in {manifest_path!r} "
                        f"does not exist; the probe results are written there. Move the latents back with their run "
                        f"or rerun the extraction step.")
    if expected_root is not None and run_dir.resolve() != expected_root.resolve():
        log.warning("%s: the manifest names run folder %s, not %s; writing the probe results to the manifest's",
                    label, run_dir, expected_root)
    return ProbeJob(manifest, settings, run_folder(run_dir), label)  # named: the analysis refresh reads its files


def check_device(settings: ProbeSettings) -> None:
    if settings.solver != "lbfgs-torch" or settings.device == "cpu":
        return
    import torch
    if not torch.cuda.is_available():
        raise ConfigError(f"probe_device is {settings.device!r}, but torch sees no CUDA device on this machine; use "
                          f"probe_device 'cpu' (or --probe-device cpu), or run the probe job on a GPU node.")
    ordinal = int(settings.device.split(":")[1]) if ":" in settings.device else 0
    if ordinal >= torch.cuda.device_count():
        raise ConfigError(f"probe_device is {settings.device!r}, but only {torch.cuda.device_count()} CUDA device(s) "
                          f"are visible.")


def validate_jobs(jobs: Sequence[ProbeJob], threads: int = 2) -> dict[str, tuple[int, int, int]]:
    """Everything that can be checked before fitting: settings, devices, subsample sizes, sha256.
    Returns the stamps of the verified files (see ``runner.check_stamps``)."""
    for job in jobs:
        check_device(job.settings)
        check_labels(job)
    stamps: dict[str, tuple[int, int, int]] = {}
    for job in jobs:
        stamps.update(verify_hashes(job.manifest, threads=threads))
    return stamps


def check_labels(job: ProbeJob) -> None:
    """The labels must allow a probe: two classes to train on, something to evaluate, and a
    feasible stratified subsample (checked by drawing it, with the seed the fit will use)."""
    labels = np.load(job.manifest.train_labels, mmap_mode="r", allow_pickle=False)
    eval_count = len(np.load(job.manifest.eval_labels, mmap_mode="r", allow_pickle=False))
    classes, counts = np.unique(labels, return_counts=True)
    source = f"the labels {str(job.manifest.train_labels)!r}"
    if len(classes) < 2:
        raise DataError(f"{job.label}: {source} hold {len(classes)} class(es) in {len(labels)} samples; a probe "
                        f"needs at least two classes to learn from. Extract latents of a labelled data set.")
    if eval_count == 0:
        raise DataError(f"{job.label}: the eval labels {str(job.manifest.eval_labels)!r} are empty; the probes are "
                        f"scored on the eval split. Rerun the extraction with a non-empty test set.")
    samples = job.settings.train_samples
    if samples is None or samples >= len(labels):
        return
    if samples < len(classes):
        raise ConfigError(f"{job.label}: probe_train_samples is {samples}, but a stratified subsample needs at least "
                          f"one sample of each of the {len(classes)} classes; use ≥ {len(classes)} or null for all "
                          f"{len(labels)} samples.")
    try:
        stratified_subsample(np.asarray(labels), samples, job.settings.seed)
    except ValueError as error:
        rare = classes[counts < 2]
        if len(rare):
            detail = (f"class(es) {', '.join(str(c) for c in rare[:5])} have a single sample, which a stratified "
                      f"split cannot divide. Use null to train on all {len(labels)} samples")
        else:
            detail = (f"the {len(labels) - samples} samples left out must include each of the {len(classes)} "
                      f"classes. Use null to train on all {len(labels)} samples, or a size ≤ "
                      f"{len(labels) - len(classes)}")
        raise ConfigError(f"{job.label}: probe_train_samples {samples} cannot be drawn as a stratified subsample of "
                          f"{source} ({len(labels)} samples, {len(classes)} classes): {detail}. (scikit-learn: "
                          f"{error})") from None


def build_tasks(jobs: Sequence[ProbeJob], stamps: dict[str, tuple[int, int, int]] | None = None
                ) -> list[ProbeTask]:
    """One task per layer; with ``stamps`` (from ``validate_jobs``) each checks it reads the verified files."""
    stamps = stamps or {}
    tasks = []
    versions: dict[str, dict[str, str]] = {}
    for position, job in enumerate(jobs):
        manifest, settings = job.manifest, job.settings.resolved()
        solver_versions = versions.setdefault(settings.solver, library_versions(settings.solver))
        for layer in manifest.layers:
            files = {"train": layer.sha256["train"], "eval": layer.sha256["eval"],
                     "train_labels": manifest.labels_sha256["train"], "eval_labels": manifest.labels_sha256["eval"]}
            # absolute paths: a Dask worker may run in another working directory
            tasks.append(ProbeTask(job=position, index=layer.index, layer=layer.name,
                                   train=os.path.abspath(layer.train), eval=os.path.abspath(layer.eval),
                                   train_labels=os.path.abspath(manifest.train_labels),
                                   eval_labels=os.path.abspath(manifest.eval_labels), settings=settings,
                                   key=cache_key(files, settings, solver_versions),
                                   size=layer.shape[0] * layer.shape[1],
                                   stamps={os.path.abspath(path): stamps[path] for path in map(str, (
                                       layer.train, layer.eval, manifest.train_labels, manifest.eval_labels))
                                       if path in stamps}))
    return tasks


def performance_table(records: Sequence[ProbeRecord], model_accuracy: float | None) -> "Any":
    """The ``probe_performances.csv`` table: one row per layer in forward order (a stable sort by index:
    records already in the manifest's order keep it among a pixelwise layer's positions)."""
    import pandas as pd
    rows = []
    for record in sorted(records, key=lambda r: r.index):
        relative = record.eval_acc / model_accuracy if model_accuracy else float("nan")
        rows.append({"index": record.index, "layer": record.layer, "train_acc": record.train_acc,
                     "eval_acc": record.eval_acc, "relative_acc": relative, "n_iter": record.n_iter,
                     "converged": record.converged, "seconds": record.seconds, "solver": record.solver})
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def write_confusion(outputs: RunDir, record: ProbeRecord) -> list[Path]:
    """Write one layer's confusion matrix (.npy) and its plot (.png); returns both paths."""
    from phd_lab.plots.probes import save_confusion_plot
    matrix = record.confusion_matrix()
    array, plot = (outputs.probe_confusion(record.index, record.layer, suffix) for suffix in (".npy", ".png"))
    write_with(array, lambda handle: np.save(handle, matrix))
    save_confusion_plot(matrix, record.classes, f"{record.layer} (eval acc {record.eval_acc:.3f})", plot)
    return [array, plot]


def remove_other_confusions(folder: Path, kept: Sequence[Path]) -> None:
    """Remove the confusion matrices of layers a run's latents no longer have (another extraction)."""
    kept_names = {path.name for path in kept}
    for path in sorted(folder.glob("*")):
        if path.suffix in (".npy", ".png") and not path.name.startswith(".") and path.name not in kept_names:
            path.unlink()
            log.info("Removed %s: its layer is no longer among the run's latents.", path)


def in_manifest_order(job: ProbeJob, records: Sequence[ProbeRecord]) -> list[ProbeRecord]:
    """Records in the manifest's (forward) order, whatever order the workers finished them in; the
    positions of a pixelwise layer share its index, so the index alone does not order them."""
    order = {layer.name: position for position, layer in enumerate(job.manifest.layers)}
    return sorted(records, key=lambda record: order[record.layer])


def write_results(job: ProbeJob, records: Sequence[ProbeRecord], position: int | None = None) -> None:
    """The run's table, settings and plot; ``position`` tags the log lines for the run's ``probe.log``."""
    from phd_lab.plots.probes import save_probe_accuracy_plot
    table = performance_table(in_manifest_order(job, records), job.manifest.model_test_accuracy)
    tag = {PROBE_JOB: position} if position is not None else None
    earlier, now = _earlier_settings(job.outputs.probe_settings), job.settings.key()
    if earlier is not None and earlier != now:
        changed = sorted(k for k in set(earlier) | set(now) if earlier.get(k) != now.get(k))
        log.warning("%s: these results replace the run's earlier probe results, fitted with other settings (%s)",
                    job.label, ", ".join(f"{k}: {json.dumps(earlier.get(k))} -> {json.dumps(now.get(k))}"
                                         for k in changed), extra=tag)
    # the settings the results were fitted with: the run's logged config only holds the config's probe keys
    atomic.write_json(job.outputs.probe_settings, {"settings": now,
                                                   "library_versions": library_versions(job.settings.solver)})
    write_csv(job.outputs.probe_csv, table)
    save_probe_accuracy_plot(table, job.manifest.model_test_accuracy, job.outputs.probe_plot)
    log.info("%s: probe results in %s", job.label, job.outputs.probe_csv, extra=tag)
    if job.outputs.analysis_json.exists():  # the run has an analysis: it now reads these probes
        refresh_analysis(job, tag)


def _earlier_settings(path: Path) -> dict[str, Any] | None:
    """The settings of the probe results a run folder holds (None: none, or unreadable)."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return settings if isinstance(settings, dict) else None


def refresh_analysis(job: ProbeJob, tag: dict[str, int] | None = None) -> None:
    """Rewrite the run's analysis.json/.png with the new probe results (it only reads the run's tables).
    A run whose folder a live process holds (training, post-processing) writes its own at the end."""
    from phd_lab.report.collect import analyse_run
    try:
        entry = analyse_run(job.outputs, write=True, probe_job=True)
    except Exception as error:  # the probe results are written; a broken analysis must not fail the job
        log.warning("%s: the analysis could not be refreshed (python -m phd_lab report retries): %s: %s",
                    job.label, type(error).__name__, error, extra=tag)
        return
    if entry.written:
        log.info("%s: analysis refreshed in %s", job.label, job.outputs.analysis_json, extra=tag)
    elif not entry.errors:
        log.info("%s: analysis left to the process that holds the run folder (%s); it reads these probes when it "
                 "writes its own", job.label, entry.tables.status.owner if entry.tables.status else "", extra=tag)


def run_jobs(jobs: Sequence[ProbeJob], cache_dir: Path | str, *, workers: int = 0,
             progress: bool = True, scheduler: str | None = None,
             busy: list[str] | None = None) -> dict[int, list[ProbeRecord]]:
    """Validate, then probe every layer of every job in one pool; each run's files are written as it completes.

    A run whose probe results another probe job is writing is an error, unless ``busy`` is a list: then that
    run's jobs are left out (their labels appended to ``busy``) while the others are probed, as a grid job does.
    """
    if workers < 0:
        raise UsageError(f"-mp must be ≥ 0 (0 = fit in this process); got {workers}.")
    stamps = validate_jobs(jobs, threads=max(2, workers))  # reads only: bad input exits before anything is written
    cache = ResultCache(cache_dir)
    with contextlib.ExitStack() as locks:
        for root in sorted({job.outputs.root for job in jobs}):  # one writer of a run's probe results at a time
            try:
                locks.enter_context(RunLock(root / PROBE_LOCK, "Two probe jobs must not write the same run's "
                                                               "results"))
            except RunLockedError as error:
                if busy is None:
                    raise
                left = [job for job in jobs if job.outputs.root == root]
                if len(busy) < SAID_ONE_BY_ONE:  # the caller sums all of them up
                    log.warning("%s: skipped, %s", ", ".join(job.label for job in left), error)
                busy += [job.label for job in left]
                jobs = [job for job in jobs if job.outputs.root != root]
            except OSError as error:
                raise DataError(f"The probe results of {str(root)!r} cannot be written there: {error}.") from None
            locks.enter_context(atomic.existing_folder(root, advice=LOST_ADVICE))
        if not jobs:
            return {}
        cache.prepare()  # after the locks: a run folder that cannot be written leaves no empty cache folder
        with ProbeLogs([job.outputs.probe_log for job in jobs]) as logs:
            try:
                return _run_locked_jobs(jobs, cache, stamps, workers, progress, scheduler, logs)
            except RunFolderLost:
                raise  # its probe log went with the folder
            except PhdLabError as error:
                raise _naming_the_logs(error, jobs)


def _naming_the_logs(error: PhdLabError, jobs: Sequence[ProbeJob]) -> PhdLabError:
    """The failure's message ends with the probe log(s) of the run(s) it concerns, which hold the details."""
    positions = getattr(error, PROBE_JOBS, None) or range(len(jobs))
    logs = [str(jobs[position].outputs.probe_log) for position in positions]
    where = logs[0] if len(logs) == 1 else f"{logs[0]} and {len(logs) - 1} other run folder(s)"
    error.args = (f"{str(error).rstrip()} Details (and any traceback) are in {where}.",)
    return error


def _run_locked_jobs(jobs: Sequence[ProbeJob], cache: ResultCache, stamps: dict[str, tuple[int, int, int]],
                     workers: int, progress: bool, scheduler: str | None,
                     logs: ProbeLogs) -> dict[int, list[ProbeRecord]]:
    tasks = build_tasks(jobs, stamps)
    remaining = {position: len(job.manifest.layers) for position, job in enumerate(jobs)}
    done: dict[int, list[ProbeRecord]] = {position: [] for position in range(len(jobs))}

    def on_record(task: ProbeTask, record: ProbeRecord, cached: bool) -> None:
        logs.write(logging.INFO, "layer %s (index %d): eval acc %.4f, train acc %.4f, %d iterations, %s, %.2f s (%s)",
                   record.layer, record.index, record.eval_acc, record.train_acc, record.n_iter,
                   "converged" if record.converged else "not converged", record.seconds,
                   f"cached result {task.key_digest()}" if cached else "fitted", position=task.job)
        done[task.job].append(record)
        remaining[task.job] -= 1
        if remaining[task.job] == 0:  # a run's files are replaced together: a stopped job leaves the old set
            job = jobs[task.job]
            with deferred_interrupts():  # Ctrl-C or SIGTERM while the set is written takes effect after it
                written = [path for finished in in_manifest_order(job, done[task.job])
                           for path in write_confusion(job.outputs, finished)]
                remove_other_confusions(job.outputs.probe_confusion_dir, written)
                write_results(job, done[task.job], task.job)

    for position, job in enumerate(jobs):
        log.info("%s: %d layer(s) from %s; %s", job.label, len(job.manifest.layers), job.manifest.folder,
                 job.settings.describe(), extra={PROBE_JOB: position})
    for position, job in enumerate(jobs):  # temp files a killed probe job left (any writer's, once 15 minutes old)
        for folder in (job.outputs.root, job.outputs.probe_confusion_dir):
            for stale in atomic.remove_stale_temps(folder):
                log.info("Removed %s, left half-written by a process that was killed.", stale,
                         extra={PROBE_JOB: position})
    run_probes(tasks, cache, workers=workers, progress=progress, on_record=on_record, scheduler=scheduler)
    return {position: in_manifest_order(jobs[position], records) for position, records in done.items()}
