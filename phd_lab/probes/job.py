"""The probe job's driver: validate everything, run the probes, and have each run's results written.

Validation (manifests, array headers, label lengths, sha256 of every file, settings, device)
finishes before anything is written, so bad input exits with status 2 and leaves no files.
The jobs come from ``discovery``. One probe job at a time writes a run's results: ``outputs``
writes all of a run's files once its last layer is fitted, so a stopped job leaves the earlier
set whole. A run whose latents hold NaN or inf (it diverged) fails alone: the other runs are
probed and written. So does a run whose folder is deleted or replaced while it is probed: nothing is
written into it (``kept_folders.existing_folder``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from phd_lab import atomic
from phd_lab.distributed import parse_scheduler
from phd_lab.errors import ConfigError, DataError, PhdLabError, RunFailure, RunLockedError, UsageError
from phd_lab.interrupts import deferred_interrupts
from phd_lab.kept_folders import existing_folder
from phd_lab.lock import PROBE_LOCK, RunLock
from phd_lab.plots.probes import ConfusionPlots
from phd_lab.probes.cache import ResultCache, cache_key, json_digest, library_versions
from phd_lab.probes.discovery import SAID_ONE_BY_ONE, ProbeJob, invalid_latents_error
from phd_lab.probes.fit import ProbeRecord, stratified_subsample
from phd_lab.probes.manifest import verify_hashes
from phd_lab.probes.outputs import (confusion_png, in_manifest_order, remove_other_confusions, results_in_place,
                                    write_confusion, write_results)
from phd_lab.probes.probe_log import PROBE_JOB, PROBE_JOBS, ProbeLogs
from phd_lab.probes.runner import ProbeTask, cuda_shortfall, run_probes
from phd_lab.probes.settings import DEFAULT_MAX_ITER, ProbeSettings

log = logging.getLogger(__name__)



def check_device(settings: ProbeSettings) -> None:
    if settings.solver != "lbfgs-torch":
        return
    shortfall = cuda_shortfall(settings.device)
    if shortfall is not None:
        raise ConfigError(f"probe_device is {settings.device!r}, but {shortfall} on this machine; use probe_device "
                          f"'cpu' (or --probe-device cpu), or run the probe job on a GPU node.")


def validate_jobs(jobs: Sequence[ProbeJob], threads: int = 2, cache: ResultCache | None = None,
                  devices_here: bool = True, progress: bool = True
                  ) -> tuple[dict[str, tuple[int, int, int]], dict[str, ProbeRecord]]:
    """Everything that can be checked before fitting: settings, devices, subsample sizes, and the sha256 of
    every file a fit will read. A layer whose result ``cache`` holds is not read again, so its files are not
    hashed again either (a job repeated over a growing grid would otherwise re-read every run's latents).
    ``devices_here``: the fits run on this machine, so its CUDA devices are checked (not so for the workers of a
    remote Dask scheduler, which may have GPUs where the job's own node has none). ``progress``: a bar of the
    bytes hashed.
    Returns the stamps of the verified files (see ``runner.check_stamps``) and the cached records by key
    digest (``run_probes`` takes them as they were when the files were checked)."""
    for job in jobs:
        if devices_here:
            check_device(job.settings)
        check_labels(job)
        atomic.refuse_link(job.outputs.root / PROBE_LOCK, "probe lock file")  # before the job writes anything
        atomic.refuse_link(job.outputs.probe_log, "probe log file")
        atomic.refuse_link(job.outputs.probe_confusion_dir, "confusion matrix folder")  # its other files are removed
    hits: dict[str, ProbeRecord] = {}
    needed: dict[int, dict[Path, str]] = {}
    for task in build_tasks(jobs):
        digest = json_digest(task.key)
        if digest not in hits and cache is not None:
            record = cache.get(task.key)  # its matrix checked against its sha256, then let go: read again when written
            if record is not None:
                hits[digest] = record.without_confusion()
        if digest not in hits:
            manifest = jobs[task.job].manifest
            layer = manifest.layer(task.layer)
            needed.setdefault(task.job, {}).update({
                Path(layer.train): layer.sha256["train"], Path(layer.eval): layer.sha256["eval"],
                Path(manifest.train_labels): manifest.labels_sha256["train"],
                Path(manifest.eval_labels): manifest.labels_sha256["eval"]})
    stamps: dict[str, tuple[int, int, int]] = {}
    if needed:
        stamps = _verify_needed(jobs, needed, threads, progress)
    if hits:
        log.info("%d layer result(s) found in the probe cache: their latents are not read (nor hashed) again",
                 len(hits))
    return stamps, hits


def _verify_needed(jobs: Sequence[ProbeJob], needed: dict[int, dict[Path, str]], threads: int,
                   progress: bool) -> dict[str, tuple[int, int, int]]:
    """``verify_hashes`` of the files each job needs, said first and shown as a bar of bytes: hundreds of GB of
    latents take many minutes to hash, which looked like a hang before any fit."""
    from tqdm.auto import tqdm

    from phd_lab.progress import bar_options

    count = sum(len(files) for files in needed.values())
    total = sum(_size(path) for files in needed.values() for path in files)
    log.info("verifying %d latents files (%.2f GB) against their manifests", count, total / 1e9)
    stamps: dict[str, tuple[int, int, int]] = {}
    invalid: list[tuple[str, str, DataError]] = []
    lock = threading.Lock()  # the hashing threads report their chunks
    with tqdm(total=total, desc="verifying sha256", unit="B", unit_scale=True, disable=not progress,
              **bar_options()) as bar:
        def read(size: int) -> None:
            with lock:
                bar.update(size)
        for position, files in needed.items():
            try:
                stamps.update(verify_hashes(jobs[position].manifest, threads=threads, pairs=files.items(), read=read))
            except DataError as error:  # the other runs are still verified: one extraction repairs every such run
                invalid.append((jobs[position].label, jobs[position].extract_again, error))
    if invalid:
        raise invalid_latents_error(invalid)
    return stamps


def _size(path: Path) -> int:
    """A file's size for the progress bar; one that cannot be read is said by the hashing that follows."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def with_all_samples_as_null(job: ProbeJob) -> ProbeJob:
    """The job with ``train_samples`` null where it is at least the run's training samples: no subsample is drawn
    then, so the fit is bit for bit that of null (all samples), and its cache key, ``probe_settings.json`` and
    probe log say null, sharing the results of a job given null (a size as given was a key of its own: the same
    fits done twice, and results recorded with a subsample size that was never drawn)."""
    samples = job.settings.train_samples
    if samples is None:
        return job
    available = len(np.load(job.manifest.train_labels, mmap_mode="r", allow_pickle=False))
    if samples < available:
        return job
    log.warning("%s: probe_train_samples %d is at least the %d training samples of the labels %r, so no subsample is "
                "drawn: the probes train on all of them, recorded as null (all samples).", job.label, samples,
                available, str(job.manifest.train_labels))
    return replace(job, settings=replace(job.settings, train_samples=None))


def check_labels(job: ProbeJob) -> None:
    """The labels must allow a probe: two classes to train on, something to evaluate, and a
    feasible stratified subsample (checked by drawing it, with the seed the fit will use)."""
    labels = np.load(job.manifest.train_labels, mmap_mode="r", allow_pickle=False)
    eval_labels = np.load(job.manifest.eval_labels, mmap_mode="r", allow_pickle=False)
    eval_count = len(eval_labels)
    for split, values, path in (("train", labels, job.manifest.train_labels),
                                ("eval", eval_labels, job.manifest.eval_labels)):
        lowest = int(values.min()) if len(values) else 0
        if lowest < 0:  # an extraction writes class indices; -1 was fitted as a class of its own, without a word
            raise DataError(f"{job.label}: the {split} labels {str(path)!r} hold the negative class {lowest}; labels "
                            f"are class indices 0, 1, ... as the extraction writes them (a negative one is an "
                            f"'ignore' marker or damage). Rerun the extraction step.")
    classes, counts = np.unique(labels, return_counts=True)
    _warn_of_eval_only_classes(job, classes, eval_labels)
    source = f"the labels {str(job.manifest.train_labels)!r}"
    if len(classes) < 2:
        raise DataError(f"{job.label}: {source} hold {len(classes)} class(es) in {len(labels)} samples; a probe "
                        f"needs at least two classes to learn from. Extract latents of a labelled data set.")
    if eval_count == 0:
        raise DataError(f"{job.label}: the eval labels {str(job.manifest.eval_labels)!r} are empty; the probes are "
                        f"scored on the eval split. Rerun the extraction with a non-empty test set.")
    samples = job.settings.train_samples
    if samples is None or samples >= len(labels):  # all samples: no subsample (``with_all_samples_as_null``)
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
        else:  # scikit-learn's own conditions (left out: each class; see stratified_subsample)
            detail = f"use null to train on all {len(labels)} samples"
        raise ConfigError(f"{job.label}: probe_train_samples {samples} cannot be drawn as a stratified subsample of "
                          f"{source} ({len(labels)} samples, {len(classes)} classes): {detail}. (scikit-learn: "
                          f"{error})") from None


def _warn_of_eval_only_classes(job: ProbeJob, train_classes: np.ndarray, eval_labels: np.ndarray) -> None:
    """Eval samples of a class the train split lacks can never be predicted: usually two label mappings."""
    unseen = np.setdiff1d(np.unique(eval_labels), train_classes)
    if not len(unseen):
        return
    missed = int(np.isin(eval_labels, unseen).sum())
    log.warning("%s: the eval labels %r hold class(es) %s that the train labels lack (%d of %d eval samples); no "
                "probe can predict them, so every eval accuracy is at most %.4f. Do both splits use the same "
                "label mapping?", job.label, str(job.manifest.eval_labels), ", ".join(str(c) for c in unseen[:10])
                + (" ..." if len(unseen) > 10 else ""), missed, len(eval_labels), 1 - missed / len(eval_labels))


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


def warn_of_more_workers_than_cores(workers: int, left: int) -> None:
    """``-mp`` far above the cores (more than twice): each worker fits one layer with one thread, so the extra ones
    only share the cores, each a spawned process with its own libraries and layer copy in memory (one per layer
    left to fit, up to ``-mp``: -mp 99999 on a login node could start hundreds). Said only where more than twice
    the cores would start, ``left`` being the layers not in the cache: a rerun whose layers all come from the
    cache starts none. Warned, not refused: the cores a process may use say little on some clusters (a job's
    cgroup counted loosely), and the fits still come out."""
    from phd_lab.environment import available_cores
    cores = available_cores()
    if min(workers, left) > 2 * cores:
        log.warning("-mp %d is more than twice the %d core(s) this process may use: each worker process fits one "
                    "layer with one thread, so %d of them (one per layer left to fit) would share %d core(s), "
                    "each holding its own libraries and layer in memory. Pass -mp %d (the default) or fewer.",
                    workers, cores, min(workers, left), cores, cores)


def run_jobs(jobs: Sequence[ProbeJob], cache_dir: Path | str, *, workers: int = 0,
             progress: bool = True, scheduler: str | None = None,
             busy: list[str] | None = None, memory: int | None = None) -> dict[int, list[ProbeRecord]]:
    """Validate, then probe every layer of every job in one pool; each run's files are written as it completes.
    Returns each run's records, in the manifest's order, without their confusion matrices (in the run's files).

    A run whose probe results another probe job is writing is an error, unless ``busy`` is a list: then that
    run's jobs are left out (their labels appended to ``busy``) while the others are probed, as a grid job does.
    ``memory`` (bytes; default: most of what the machine has available) bounds the layer copies the worker
    processes hold at once: fewer workers are started where ``workers`` of the largest layers would not fit.
    """
    if workers < 0:
        raise UsageError(f"-mp must be ≥ 0 (0 = fit in this process); got {workers}.")
    local_pool = scheduler is None and workers > 1  # the only case ``memory`` bounds
    if memory is not None and not local_pool:
        reason, instead = (("--scheduler hands the layers to Dask workers",
                            "a Dask worker's memory limit (e.g. dask worker --memory-limit) governs its memory")
                           if scheduler is not None else
                           (f"-mp {workers} fits one layer at a time", "pass -mp 2 or more for it to apply"))
        log.warning("--max-memory has no effect here: it limits how many -mp worker processes fit layers together, "
                    "and %s; %s.", reason, instead)
    jobs = [with_all_samples_as_null(job) for job in jobs]
    cache = ResultCache(cache_dir)
    cache.check()
    # reads only: bad input exits before anything is written
    remote = scheduler is not None and parse_scheduler(scheduler)[0] != "local"
    stamps, hits = validate_jobs(jobs, threads=max(2, workers), cache=cache, devices_here=not remote,
                                 progress=progress)
    if scheduler is not None:  # nor a scheduler that cannot be reached
        from phd_lab.distributed import check_scheduler
        check_scheduler(scheduler)
    cache.prepare()  # before the locks: a cache folder a full disk cannot make leaves no lock files in the runs
    with contextlib.ExitStack() as locks:
        try:
            jobs = _lock_runs(locks, jobs, cache, busy)
        except BaseException:
            cache.remove_unused()  # nor does a run folder that cannot be written leave an empty cache folder
            raise
        if not jobs:
            cache.remove_unused()
            return {}
        with ProbeLogs([job.outputs.probe_log for job in jobs]) as logs:
            try:
                tasks = build_tasks(jobs, stamps)
                if local_pool:
                    warn_of_more_workers_than_cores(workers, sum(json_digest(task.key) not in hits for task in tasks))
                    workers = _workers_for_memory(jobs, tasks, hits, workers, memory)
                return _run_locked_jobs(jobs, tasks, cache, hits, workers, progress, scheduler, logs)
            except PhdLabError as error:
                raise _naming_the_logs(error, jobs)


def _lock_runs(locks: contextlib.ExitStack, jobs: list[ProbeJob], cache: ResultCache,
               busy: list[str] | None) -> list[ProbeJob]:
    """Take each run folder's probe lock into ``locks`` (one writer of a run's probe results at a time) and keep
    the folder from being re-created; the jobs whose runs are locked now. A run another job holds is an error, or,
    where ``busy`` is a list, left out with its labels appended there."""
    for root in sorted({job.outputs.root for job in jobs}):
        try:
            lock = locks.enter_context(RunLock(root / PROBE_LOCK, "Two probe jobs must not write the same "
                                                                  "run's results"))
        except RunLockedError as error:
            if busy is None:
                raise
            left = [job for job in jobs if job.outputs.root == root]
            if len(busy) < SAID_ONE_BY_ONE:  # the caller sums all of them up
                log.warning("%s: skipped, %s", ", ".join(job.label for job in left), error)
            busy += [job.label for job in left]
            jobs = [job for job in jobs if job.outputs.root != root]
            continue
        except OSError as error:
            raise DataError(f"The probe results of {str(root)!r} cannot be written there: "
                            f"{str(error).rstrip('.')}.") from None  # a FolderInTheWay's is whole sentences
        locks.enter_context(existing_folder(root, advice=_lost_folder_advice(root, cache.folder), lock=lock))
    return jobs


def _workers_for_memory(jobs: Sequence[ProbeJob], tasks: Sequence[ProbeTask], hits: dict[str, ProbeRecord],
                        workers: int, memory: int | None) -> int:
    """``workers``, or fewer where the copies of the largest layers to fit would not fit in memory together."""
    from phd_lab.environment import available_memory
    from phd_lab.probes.memory import SHARE, copy_bytes, workers_that_fit
    sizes = [copy_bytes(task, jobs[task.job].manifest.layer(task.layer)) for task in tasks
             if json_digest(task.key) not in hits]
    available = available_memory()
    budget = memory if memory is not None else int(available * SHARE) if available is not None else None
    fitting = workers_that_fit(sizes, workers, budget)
    if budget is None:
        return fitting
    where = ("given with --max-memory" if memory is not None else
             f"the probe job may take ({SHARE:.0%} of the memory available to it)")
    if fitting < min(workers, len(sizes)):
        log.warning("-mp %d: only %d worker process(es) are started, because the copies of the %d largest layers to "
                    "fit (a fit that standardises, widens float16, subsamples or runs lbfgs-torch on the CPU holds "
                    "its layer in memory; the largest takes %.2f GB) would not fit in the %.2f GB %s; %s",
                    workers, fitting, fitting + 1, max(sizes) / 1e9, budget / 1e9, where,
                    "a larger --max-memory starts more" if memory is not None else "--max-memory sets another budget")
    if sizes and max(sizes) > budget:  # it still runs (alone, where -mp gives several workers): said, not refused
        log.warning("The largest layer to fit takes %.2f GB in memory, more than the %.2f GB %s: its fit may run out "
                    "of memory (saga on float32 latents, without standardize or a train_samples subsample, copies "
                    "nothing).", max(sizes) / 1e9, budget / 1e9, where)
    return fitting


def _lost_folder_advice(root: Path, cache_folder: Path) -> str:
    """The end of the error when the run folder ``root`` goes while it is probed: whether the fits survive."""
    if root.resolve() in (cache_folder.resolve(), *cache_folder.resolve().parents):
        return "Its probe results were not written, and its probe cache, which lay inside it, went with it."
    return f"Its probe results were not written; the layers fitted so far stay in the probe cache {cache_folder}."


def _naming_the_logs(error: PhdLabError, jobs: Sequence[ProbeJob]) -> PhdLabError:
    """The failure's message ends with the probe log(s) of the run(s) it concerns, which hold the details."""
    positions = getattr(error, PROBE_JOBS, None)
    positions = range(len(jobs)) if positions is None else positions
    logs = list(dict.fromkeys(str(jobs[position].outputs.probe_log) for position in positions))  # sets share one
    if not logs:  # only runs whose folders went, with their logs
        return error
    where = logs[0] if len(logs) == 1 else f"{logs[0]} and {len(logs) - 1} other run folder(s)"
    error.args = (f"{str(error).rstrip()} Details (and any traceback) are in {where}.",)
    return error


def _run_locked_jobs(jobs: Sequence[ProbeJob], tasks: Sequence[ProbeTask], cache: ResultCache,
                     hits: dict[str, ProbeRecord], workers: int, progress: bool, scheduler: str | None,
                     logs: ProbeLogs) -> dict[int, list[ProbeRecord]]:
    """Probe ``tasks`` while their run folders are locked, writing each run's files (table, confusion plots,
    settings) as soon as its last layer is in; each run's records in manifest order, without their matrices."""
    _log_plans(jobs)
    _remove_killed_writers_temps(jobs)
    with ConfusionPlots() as confusion_plots:
        runs = _RunsInProgress(jobs, tasks, cache, logs, confusion_plots)
        run_probes(tasks, cache, workers=workers, progress=progress, on_record=runs.on_record, scheduler=scheduler,
                   run_folders=[job.outputs.root for job in jobs], hits=hits)
    for position, records in runs.done.items():
        said = convergence_summary(jobs[position].settings, records)
        if said:
            log.info("%s: %s", jobs[position].label, said, extra={PROBE_JOB: position})
    return runs.records()


def _log_plans(jobs: Sequence[ProbeJob]) -> None:
    """Say what each job probes: how many layers, from which latents, with which settings."""
    for position, job in enumerate(jobs):
        log.info("%s: %d layer(s) from %s; %s", job.label, len(job.manifest.layers), job.manifest.folder,
                 job.settings.describe(), extra={PROBE_JOB: position})


def _remove_killed_writers_temps(jobs: Sequence[ProbeJob]) -> None:
    """Remove the temp files a killed process left in the jobs' run folders: those of the probe results at once
    (only the holder of the run's .probe.lock writes probe_* and the confusions), any other writer's (the
    analysis.* of a run or report working now) once 15 minutes old. A folder the latents do not lie in and that
    is no run folder (no logged config: the ``run_dir`` a latents folder received on its own names, perhaps ``~``)
    loses only the job's own: every hidden ``.*.tmp`` there 15 minutes old went."""
    for position, job in enumerate(jobs):
        root = job.outputs.root
        theirs = job.manifest.folder.resolve().parent == root.resolve() or any(root.glob("*_config.json"))
        others = None if theirs else r"probe_.*"  # the temp files of other writers' names may go
        for folder, owned, shape in ((root, "probe_", others), (job.outputs.probe_confusion_dir, "", None)):
            for stale in atomic.remove_stale_temps(folder, owned_prefix=owned, shape=shape):
                log.info("Removed %s, left half-written by a process that was killed.", stale,
                         extra={PROBE_JOB: position})


class _RunsInProgress:
    """The runs of a probe job while their layers come in (``on_record``): each layer's record and confusion plot
    is kept until the run's last layer is in, then the run's files are written together."""

    def __init__(self, jobs: Sequence[ProbeJob], tasks: Sequence[ProbeTask], cache: ResultCache, logs: ProbeLogs,
                 confusion_plots: ConfusionPlots) -> None:
        self.jobs, self.cache, self.logs, self.confusion_plots = jobs, cache, logs, confusion_plots
        self.remaining = {position: len(job.manifest.layers) for position, job in enumerate(jobs)}
        self.done: dict[int, list[ProbeRecord]] = {position: [] for position in range(len(jobs))}
        # each fitted layer's confusion plot, drawn as its record arrives (while the workers fit the next layers)
        # and written with the run's other files once its last layer is in; a cached layer's is drawn only when
        # written
        self.plots: dict[int, dict[tuple[int, str], bytes | None]] = {position: {} for position in range(len(jobs))}
        self.fitted: set[int] = set()  # the jobs with a layer fitted now (not from the cache)
        # the records are kept without their confusion matrices, which are read back from the cache when their run
        # is written: a grid of 1000-class runs whose layers finish in any order would hold 8 MB a layer until then
        self.keys = {(task.job, task.index, task.layer): task.key for task in tasks}

    def on_record(self, task: ProbeTask, record: ProbeRecord, cached: bool) -> None:
        """Log a layer's record as it arrives, keep it, and write its run once that was the run's last layer."""
        probe_set = self.jobs[task.job].outputs.probe_set  # the sets of a run share its log: say which one
        self.logs.write(logging.INFO, "layer %s (index %d%s): eval acc %.4f, train acc %.4f, %d iterations, %s, "
                        "%.2f s (%s)", record.layer, record.index,
                        f", latents set {probe_set}" if probe_set else "", record.eval_acc, record.train_acc,
                        record.n_iter, "converged" if record.converged else "not converged", record.seconds,
                        f"cached result {task.key_digest()}" if cached else "fitted", position=task.job)
        self.done[task.job].append(record.without_confusion())
        self.plots[task.job][record.index, record.layer] = (None if cached else
                                                            confusion_png(record, self.confusion_plots))
        if not cached:
            self.fitted.add(task.job)
        self.remaining[task.job] -= 1
        if self.remaining[task.job] == 0:  # a run's files are replaced together: a stopped job leaves the old set
            self._write_run(task.job)

    def records(self) -> dict[int, list[ProbeRecord]]:
        """Each run's records in manifest order, without their confusion matrices."""
        return {position: in_manifest_order(self.jobs[position], records) for position, records in self.done.items()}

    def _with_matrix(self, position: int, record: ProbeRecord) -> ProbeRecord:
        """The record with its confusion matrix, read back from its cache entry (checked against its sha256)."""
        key = self.keys[position, record.index, record.layer]
        stored = self.cache.get(key)
        if stored is None:
            raise RunFailure(f"{self.jobs[position].label}: the probe cache entry of layer {record.layer!r} "
                             f"({self.cache.path(key)}) went or was damaged while the job ran, so its confusion "
                             f"matrix cannot be written. Rerun the same command: that layer is fitted again, the "
                             f"others come from the cache.")
        return replace(record, confusion=stored.confusion_matrix())

    def _write_run(self, position: int) -> None:
        """Write a run's files once its last layer is in, unless the folder holds them already (all cached)."""
        job = self.jobs[position]
        drawn = self.plots.pop(position)
        complete = [self._with_matrix(position, record) for record in self.done[position]]  # let go again on return
        if position not in self.fitted and results_in_place(job, complete, position):
            log.info("%s: probe results already in place in %s (every layer from the cache)", job.label,
                     job.outputs.probe_csv, extra={PROBE_JOB: position})
            return
        with deferred_interrupts():  # Ctrl-C or SIGTERM while the set is written takes effect after it
            written = [path for finished in in_manifest_order(job, complete)
                       for path in write_confusion(job.outputs, finished,
                                                   drawn[finished.index, finished.layer]
                                                   or confusion_png(finished, self.confusion_plots))]
            remove_other_confusions(job.outputs.probe_confusion_dir, written)
            write_results(job, self.done[position], position)


def convergence_summary(settings: ProbeSettings, records: Sequence[ProbeRecord]) -> str | None:
    """One line for the layers whose fit did not converge (None: all converged). Each layer's line says
    'not converged'; saga's 100 epochs, the thesis' setting, stop nearly every layer there, which read as a
    failure of each, so the count is said once, with whether it is that setting (its results are unchanged).
    Fits that stopped short of ``max_iter`` (lbfgs-torch's float32 stalls) are named apart: more iterations
    would not help them."""
    stopped = sum(not record.converged for record in records)
    if not stopped:
        return None
    resolved = settings.resolved()
    short = sum(not record.converged and record.n_iter < resolved.max_iter for record in records)
    if resolved.solver == "lbfgs-torch" and short:
        return (f"{stopped} of {len(records)} layer(s) did not converge (lbfgs-torch), {short} of them stalled "
                f"before max_iter {resolved.max_iter} with a gradient entry above tol {resolved.tol:g}: float32 "
                f"arithmetic stalls like this on raw latents far from unit scale; standardise them "
                f"(--standardize) or probe them with lbfgs.")
    said = (f"{stopped} of {len(records)} layer(s) did not converge within max_iter {resolved.max_iter} "
            f"({resolved.solver})")
    if resolved.solver == "saga" and resolved.max_iter == DEFAULT_MAX_ITER["saga"]:
        return (f"{said}: saga's 100 epochs are the thesis' setting (§6.2.5), which stops most layers before "
                f"convergence; their accuracies depend on that budget (docs/probes.md), compare them at the same "
                f"settings.")
    return f"{said}; raise --max-iter (probe_max_iter) for fits that converge."
