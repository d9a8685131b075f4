"""Run many layer probes: cache look-ups first, then the misses in single-threaded worker processes.

Each task is one layer of one run. Workers are spawned processes that hold one layer at a
time and run every fit with one BLAS/OpenMP (and torch) thread, so ``N`` workers use ``N``
cores and never oversubscribe; single-threaded fits are also what makes a record the same
whether it was computed in-process (``workers=0``) or in a worker. Results arrive in the
parent, which stores them in the cache and hands them to ``on_record`` (the driver's I/O); where the
cache holds a record of the same key already (another run's identical latents), that one is handed on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from phd_lab.environment import limit_refusal
from phd_lab.errors import DataError, PhdLabError, RunFailure, RunFolderLost, storage_refusal
from phd_lab.kept_folders import check_kept
from phd_lab.lock import ProcessTurn
from phd_lab.probes.cache import ResultCache, json_digest, library_versions
from phd_lab.probes.fit import ProbeRecord, probe_layer
from phd_lab.probes.probe_log import PROBE_JOB, PROBE_JOBS
from phd_lab.probes.settings import ProbeSettings
from phd_lab.worker_processes import spawn_pool, stop_pool, worker_death, worker_exit_codes

log = logging.getLogger(__name__)

# Test-only hook: seconds each fit sleeps first, so that a test can SIGKILL a job mid-way.
TEST_DELAY_ENV = "PHD_LAB_PROBE_TEST_DELAY"
# The attribute of a pool's BrokenProcessPool that holds the exit codes of its ended workers (what ended the one
# that died, for the job's message)
WORKER_EXIT_CODES = "phd_lab_worker_exit_codes"
# Fits in threads of one process (a Dask worker with several threads) take turns: the thread limits and
# the warning filters that tell convergence are process-wide.
FIT_TURN = ProcessTurn("probe fit")


@dataclass(frozen=True)
class ProbeTask:
    """Everything a worker needs for one layer (paths as strings: cheap to pickle)."""

    job: int  # position of the run in the driver's list
    index: int
    layer: str
    train: str
    eval: str
    train_labels: str
    eval_labels: str
    settings: ProbeSettings
    key: dict[str, Any]
    size: int = 0  # samples × features: the largest layers are started first
    stamps: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # of the files whose sha256 was verified

    def key_digest(self) -> str:
        """Short digest of the cache key (distinguishes tasks of equal layer names)."""
        return json_digest(self.key)[:12]


def _single_threaded(solver: str) -> Callable[[], None]:
    """Limit BLAS/OpenMP (and torch) to one thread; returns the function that restores them.

    threadpoolctl limits only the libraries loaded so far, so the solvers' modules are imported
    first: scikit-learn and SciPy load their own OpenMP and OpenBLAS on first use, which would
    otherwise run with one thread per core.
    """
    import importlib

    from threadpoolctl import threadpool_limits
    for module in ("scipy.optimize", "sklearn.linear_model", "sklearn.preprocessing"):
        importlib.import_module(module)  # loads SciPy's OpenBLAS and scikit-learn's OpenMP runtime
    limiter = threadpool_limits(limits=1)
    restore_torch = None
    if solver == "lbfgs-torch":
        import torch
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        restore_torch = lambda: torch.set_num_threads(previous)  # noqa: E731

    def restore() -> None:
        limiter.restore_original_limits()
        if restore_torch is not None:
            restore_torch()
    return restore


def run_task(task: ProbeTask) -> ProbeRecord:
    """Fit one layer with one thread (runs in a worker process, or in-process for ``workers=0``)."""
    delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    check_versions(task)
    check_fit_device(task)
    check_stamps(task)
    with FIT_TURN():  # thread limits and warning filters are process-wide: fits in threads take turns
        restore = _single_threaded(task.settings.solver)
        try:
            record = probe_layer(task.index, task.layer, task.train, task.eval, task.train_labels,
                                 task.eval_labels, task.settings)
        finally:
            restore()
    check_stamps(task)  # replaced while loading: which content was fitted is unknown, so nothing is cached
    return record


def check_stamps(task: ProbeTask) -> None:
    """The files are still those whose sha256 the job verified: a re-extraction in the meantime
    (main.py replacing the latents) would otherwise be fitted and cached under the old files' key."""
    from phd_lab.file_hash import file_stamp
    for path, stamp in task.stamps.items():
        try:
            now = file_stamp(path)
        except OSError as error:
            raise RunFailure(f"The latents file {path!r} cannot be read by the process probing layer {task.layer!r} "
                             f"({error.strerror or error}); on a Dask cluster every worker must see the latents at "
                             f"the same path (a shared file system).") from None
        if now != tuple(stamp):
            raise RunFailure(f"The latents file {path!r} changed after the probe job verified its sha256 (was the "
                             f"extraction rerun meanwhile?); layer {task.layer!r} is not fitted or cached. Start "
                             f"the probe job again once the extraction has finished.")


def cuda_shortfall(device: str) -> str | None:
    """Why this process cannot compute on ``device`` (cpu, cuda or cuda:N), or None where it can."""
    if not device.startswith("cuda"):
        return None
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ordinal = int(device.split(":")[1]) if ":" in device else 0
    if count == 0:
        return "torch sees no CUDA device"
    return f"only {count} CUDA device(s) are visible" if ordinal >= count else None


def check_fit_device(task: ProbeTask) -> None:
    """The driver checks the CUDA device of fits that run on its own machine; on a Dask cluster only the
    worker that got the fit can (without this, torch's "Found no NVIDIA driver" reached the user)."""
    if task.settings.solver != "lbfgs-torch":
        return
    shortfall = cuda_shortfall(task.settings.device)
    if shortfall is not None:
        raise RunFailure(f"Layer {task.layer!r} is to be probed on probe_device {task.settings.device!r}, but "
                         f"{shortfall} in the process that got the fit (host {socket.gethostname()}). On a Dask "
                         f"cluster, start the workers of GPU nodes with `dask worker ... --resources GPU=1` (CUDA "
                         f"fits then go to them only) and check that torch sees their GPUs; or use probe_device "
                         f"'cpu'.")


def check_versions(task: ProbeTask) -> None:
    """The libraries that compute the fit must be those in the cache key, which the driver computed:
    a Dask worker with other versions would store its results under the wrong key."""
    versions = library_versions(task.settings.solver)
    expected = task.key["versions"]
    if versions != expected:
        names = sorted(name for name in set(versions) | set(expected) if versions.get(name) != expected.get(name))
        differing = ", ".join(f"{name} {versions.get(name)} here, {expected.get(name)} in the job" for name in names)
        raise RunFailure(f"The process probing layer {task.layer!r} runs other library versions than the probe job "
                         f"that keys the cache ({differing}); its results would be cached under the wrong versions. "
                         f"Install the same versions everywhere (pip install -c constraints.txt).")


Finished = Callable[[int, "ProbeRecord | None", "BaseException | None"], None]


def _failure(task: ProbeTask, error: BaseException) -> PhdLabError:
    if isinstance(error, PhdLabError):
        return error
    if isinstance(error, BrokenProcessPool):  # every layer not yet done gets it: which one the dead worker had
        return RunFailure(  # is not known, so no layer is named
            f"A probe worker process ended abruptly while layers were being fitted: "
            f"{worker_death(getattr(error, WORKER_EXIT_CODES, ()))}. The layers fitted before are cached; run the "
            f"job again to fit the rest. ({error})")
    refusal = limit_refusal(error)  # a limit of the machine (open files, threads), not this layer's data
    return RunFailure(f"The probe of layer {task.layer!r} (index {task.index}, {task.train}) failed: "
                      + (refusal or f"{type(error).__name__}: {error}"))


def _about(task: ProbeTask, failure: PhdLabError) -> PhdLabError:
    """Mark the failure as one of ``task``'s run: the job names that run's probe.log in the message."""
    setattr(failure, PROBE_JOBS, (task.job,))
    return failure


def _refused(said: str, error: OSError) -> str:
    """``said`` about a failed write, with its cause in words and what to do where the file system refused it (a
    full disk, a quota, ``ulimit -f``, a read-only folder): the system's own "File too large" says neither."""
    refusal = storage_refusal(error)
    return said if refusal is None else f"{said}; {refusal}"


def run_probes(tasks: Sequence[ProbeTask], cache: ResultCache, *, workers: int = 0, progress: bool = True,
               on_record: Callable[[ProbeTask, ProbeRecord, bool], None] | None = None,
               scheduler: str | None = None, run_folders: Sequence[Path] | None = None,
               hits: dict[str, ProbeRecord] | None = None) -> list[ProbeRecord]:
    """Probe every task; returns the records in task order, without their confusion matrices where
    ``on_record`` got them whole.

    Cached records are reused (with the task's current layer name and index) and only the
    misses are fitted. ``on_record(task, record, cached)`` is called in this process as each
    record becomes available. ``workers=0`` fits in this process, for debugging; with a
    ``scheduler`` (a Dask address or ``local:N``) every miss is one task on that cluster.
    ``run_folders`` (by job) are the folders the caller keeps (``kept_folders.existing_folder``): a run whose
    folder goes while it is probed fails alone, also when its latents went with it. ``hits`` (by key digest)
    are records the caller found in the cache already (and therefore did not verify the files of).
    """
    from tqdm.auto import tqdm

    from phd_lab.progress import bar_options

    hits = hits or {}
    cached = {position: record for position, task in enumerate(tasks)
              if (record := hits.get(json_digest(task.key)) or cache.get(task.key)) is not None}
    misses = [position for position in range(len(tasks)) if position not in cached]
    # Tasks of one run folder with the same key (a layer whose latents two sets share, e.g. a Linear layer at every
    # extraction size) are fitted once; the others take its record as a cached one, as a rerun would. Only within
    # a run: were the folder of another run with the same data to go, its fit would be lost to this one.
    def group(position: int) -> tuple[str, str]:
        task = tasks[position]
        run = str(run_folders[task.job]) if run_folders is not None else f"job {task.job}"
        return run, json_digest(task.key)

    first: dict[tuple[str, str], int] = {}
    followers: dict[int, list[int]] = {}
    for position in misses:
        leader = first.setdefault(group(position), position)
        if leader != position:
            followers.setdefault(leader, []).append(position)
    misses = [position for position in misses if first[group(position)] == position]
    if tasks:
        shared = sum(map(len, followers.values()))
        log.info("probing %d layer(s)%s, %d found in the cache %s", len(misses) + shared,
                 f" ({shared} identical to another layer's, fitted once)" if shared else "", len(cached), cache.folder)
    results = _Results(tasks, cache, on_record, tqdm(total=len(tasks), desc="probes", unit="layer",
                                                     disable=not progress, **bar_options()),
                       run_folders, followers=followers)
    try:
        results.reuse(cached)
        misses.sort(key=lambda position: -tasks[position].size)
        if scheduler is not None and misses:
            _run_on_dask(tasks, misses, scheduler, results.finished, results.wanted)
        elif workers <= 0 or not misses:
            _run_here(tasks, misses, results.finished, results.wanted)
        else:
            _run_in_pool(tasks, misses, min(workers, len(misses)), results.finished, results.wanted)
    finally:
        results.bar.close()
    if results.failed:
        raise _runs_not_probed(tasks, results.failed)
    return [results.records[position] for position in range(len(tasks))]


@dataclass
class _Results:
    """The parent's side of a probe job: keeps every record, caches the fitted ones, hands them to
    ``on_record``, advances the progress bar and remembers the runs whose data cannot be probed."""

    tasks: Sequence[ProbeTask]
    cache: ResultCache
    on_record: Callable[[ProbeTask, ProbeRecord, bool], None] | None
    bar: Any
    run_folders: Sequence[Path] | None = None  # by job: the kept run folders
    followers: dict[int, list[int]] = field(default_factory=dict)  # a fitted task → the tasks with its key
    records: dict[int, ProbeRecord] = field(default_factory=dict)
    failed: dict[int, PhdLabError] = field(default_factory=dict)  # job -> why its latents cannot be probed

    def reuse(self, cached: dict[int, ProbeRecord]) -> None:
        """Take the cached records, with each task's current layer name and index."""
        for position, record in cached.items():
            task = self.tasks[position]
            log.debug("layer %s: cached result reused", task.layer)
            self.deliver(position, replace(record, index=task.index, layer=task.layer), True)
            self.bar.update(1)

    def deliver(self, position: int, record: ProbeRecord, from_cache: bool) -> None:
        """Keep a record and hand it to ``on_record``, unless the task's run has failed. With ``on_record`` the
        record is kept without its confusion matrix: the caller has it (a job of thousands of 1000-class layers
        would otherwise hold 8 MB per layer to the end)."""
        task = self.tasks[position]
        self.records[position] = record if self.on_record is None else record.without_confusion()
        if self.on_record is None or task.job in self.failed:
            return
        try:
            self.on_record(task, record, from_cache)
        except RunFolderLost as error:
            self.lost(task, error)
        except OSError as error:  # a read-only or full output folder: say which file, not a traceback
            said = _refused(str(error).rstrip("."), error)  # a FolderInTheWay's message is whole sentences
            raise _about(task, RunFailure(f"Probe results could not be written: {said}. The layers probed so far "
                                          f"stay cached; rerun the same command once the problem is fixed.")) from None

    def finished(self, position: int, record: ProbeRecord | None, error: BaseException | None = None) -> None:
        """Take the outcome of one fit: cache and deliver its record, or note or raise its failure."""
        task = self.tasks[position]
        if error is not None:
            self.bar.update(1)
            failure = _failure(task, error)
            for follower in self.followers.get(position, ()):  # the same data: it cannot be probed either
                self.bar.update(1)
                if self.tasks[follower].job not in self.failed and isinstance(failure, DataError):
                    self.failed[self.tasks[follower].job] = _about(self.tasks[follower], DataError(str(failure)))
            if task.job in self.failed:  # a late error of a run given up already (a fit that was running)
                return
            if not isinstance(failure, DataError):  # the job cannot go on (versions, files replaced, ...)
                gone = self.folder_lost(task)
                if gone is not None:  # unless the run's folder went, and its latents with it
                    self.lost(task, gone)
                    return
                # chained to the error, whose own cause holds a worker's traceback (text from another process)
                raise _about(task, failure) from (error if failure is not error else error.__cause__)
            self.failed[task.job] = failure  # this run's data cannot be probed; the other runs go on
            log.error("%s", failure, extra={PROBE_JOB: task.job})
            return
        assert record is not None
        try:
            stored = self.cache.put(task.key, record)
        except RunFolderLost as error:  # the cache lay inside a run folder (--latents' default: the run's own)
            if self.folder_lost(task) is None:  # another run's: every run needs the cache
                raise _about(task, RunFailure(f"The probe cache {self.cache.folder} lay inside a run folder that "
                                              f"went while the job ran: {error}")) from None
            self.lost(task, error)
            self.bar.update(1)
            return
        except OSError as error:  # a full disk, a vanished folder: say which result could not be kept
            raise _about(task, RunFailure(f"The probe of layer {record.layer!r} finished, but its result could "
                                          f"not be cached: {_refused(str(error), error)}. Layers already cached stay "
                                          f"so; rerun the same command once the problem is fixed.")) from None
        if stored is not record:  # another run's fit of the same data came first: every run gets that one
            self.reuse({p: stored for p in (position, *self.followers.get(position, ()))})
            return
        self.deliver(position, record, False)
        self.bar.set_postfix_str(f"{record.layer}: {record.eval_acc:.3f}", refresh=False)
        self.bar.update(1)  # after the run's outputs are written, which the last layer of a run triggers
        self.reuse({follower: record for follower in self.followers.get(position, ())})

    def folder_lost(self, task: ProbeTask) -> RunFolderLost | None:
        """Why the task's run folder is gone (or replaced), or None while it is there (or not kept)."""
        if self.run_folders is None:
            return None
        try:
            check_kept(self.run_folders[task.job])
        except RunFolderLost as error:
            return error
        return None

    def lost(self, task: ProbeTask, error: RunFolderLost) -> None:
        """The task's run folder went: nothing more is written there, and the other runs go on."""
        if task.job not in self.failed:
            self.failed[task.job] = _about(task, error)
            log.error("%s", error, extra={PROBE_JOB: task.job})

    def wanted(self, position: int) -> bool:
        """Whether the task still needs a fit (its run, or a run of a task with the same key, has not failed)."""
        return any(self.tasks[p].job not in self.failed for p in (position, *self.followers.get(position, ())))


def _runs_not_probed(tasks: Sequence[ProbeTask], failed: dict[int, PhdLabError]) -> RunFailure:
    """The job's error when some runs could not be probed, naming them (``PROBE_JOBS``) and why."""
    reasons = " ".join(str(error) for error in failed.values())
    others = len({task.job for task in tasks}) - len(failed)
    written = f"the results of the other {others} run(s) are written" if others else "nothing was written"
    failure = RunFailure(f"{len(failed)} run(s) could not be probed, and their earlier probe results (if any) "
                         f"were left as they were; {written}. {reasons}")
    # the logs that hold the details: not those of run folders that went while they were probed
    setattr(failure, PROBE_JOBS, tuple(sorted(job for job, error in failed.items()
                                              if not isinstance(error, RunFolderLost))))
    return failure


def _run_here(tasks: Sequence[ProbeTask], misses: list[int], finished: Finished,
              wanted: Callable[[int], bool]) -> None:
    """Fit the misses one after the other in this process (``workers=0``, for debugging)."""
    for position in misses:
        if not wanted(position):
            continue
        try:
            record = run_task(tasks[position])
        except Exception as error:
            finished(position, None, error)
            continue
        finished(position, record)


def _run_in_pool(tasks: Sequence[ProbeTask], misses: list[int], workers: int, finished: Finished,
                 wanted: Callable[[int], bool]) -> None:
    with spawn_pool(workers) as pool:
        pending: dict[Future, int] = {}
        try:
            _submit_all(pool, tasks, misses, pending)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                _take_done(pool, [(future, pending.pop(future)) for future in done], finished)
                for future, position in pending.items():
                    if not wanted(position):
                        future.cancel()  # only those not started; a running one finishes and is cached
        except BaseException:
            stop_pool(pool)  # no worker goes on fitting for a job that stopped
            raise


def _submit_all(pool: ProcessPoolExecutor, tasks: Sequence[ProbeTask], misses: list[int],
                pending: dict[Future, int]) -> None:
    """Hand every miss to ``pool`` into ``pending``. A worker that dies while they are handed over (killed at its
    start) breaks the pool, whose ``submit`` then raises BrokenProcessPool: that stops the handing over and comes
    back as the failure of the next layer, a future like those the pool failed, so that the layers fitted already
    are cached and the job says what ended the worker, as when a worker dies later. It was raised as it came, a
    traceback, and those layers were lost."""
    for position in misses:
        try:
            future = pool.submit(run_task, tasks[position])
        except BrokenProcessPool as error:
            future = Future()
            future.set_exception(error)
            pending[future] = position
            return
        pending[future] = position


def _take_done(pool: ProcessPoolExecutor, done: list[tuple[Future, int]], finished: Finished) -> None:
    """Hand the layers of one wake-up to ``finished``: those fitted first, then the failures. The fits that ended
    with a worker interrupted alone (SIGINT) come back with it as broken, and the job stopped at the first broken
    one it met, so the fitted layers met after it were neither cached nor written (a rerun fitted them again). A
    fitted layer whose results cannot be kept (a run folder that cannot be written) ends the job, after the other
    layers fitted in that wake-up are kept as far as they can be, as a job on Dask keeps them (``_keep_records``)."""
    fitted, failed = [], []
    for future, position in done:
        if future.cancelled():  # a layer of a run that failed: not fitted
            continue
        error = future.exception()
        if error is None:
            fitted.append((position, future))
        else:
            failed.append((position, error))
    for number, (position, future) in enumerate(fitted):
        try:
            finished(position, future.result())
        except BaseException:
            _keep_records([(later, later, kept) for later, kept in fitted[number + 1:]], finished)
            raise
    codes = None
    for position, error in failed:
        if isinstance(error, BrokenProcessPool):
            codes = worker_exit_codes(pool) if codes is None else codes
            if -signal.SIGINT in codes:  # as Ctrl-C, not the out-of-memory killer's or a crash's failure
                raise KeyboardInterrupt
            setattr(error, WORKER_EXIT_CODES, codes)  # what ended the worker, for the job's message
    for position, error in failed:
        finished(position, None, error)


def _run_on_dask(tasks: Sequence[ProbeTask], misses: list[int], scheduler: str, finished: Finished,
                 wanted: Callable[[int], bool]) -> None:
    """One Dask task per layer; results come back here, where they are cached and written."""
    from distributed import as_completed

    from phd_lab.distributed import (dask_client, declared_gpus, scheduler_lost, scheduler_lost_message,
                                     task_resources)
    from phd_lab.errors import SchedulerLost
    with dask_client(scheduler) as client:
        # lbfgs-torch fits on CUDA go to GPU workers, one per GPU, as training runs do; a probe device is never "auto"
        gpus = declared_gpus(client, scheduler, [tasks[position].settings.device for position in misses],
                             cuda_here=lambda: False, device_key="probe_device", tasks="probe fits")
        futures: dict[Any, int] = {}
        taken: set[Any] = set()  # the futures handed to ``finished`` (marked before: it may raise the job's failure)
        try:  # a Ctrl-C while the layers are handed over stops those handed over already, as one later does
            for position in misses:
                task = tasks[position]
                futures[client.submit(run_task, task, key=f"probe-{position}-{task.layer}-{task.key_digest()}",
                                      resources=task_resources(task.settings.device, gpus), pure=False)] = position
            for future in as_completed(futures):
                position = futures[future]
                if scheduler_lost(client, future):  # every unfinished fit is cancelled: none can be waited for
                    raise SchedulerLost(scheduler_lost_message(len(futures) - len(taken), len(futures),
                                                               "layer fit(s)"))
                if future.cancelled():
                    continue
                taken.add(future)
                error = future.exception()
                finished(position, future.result() if error is None else None, error)
                for other, other_position in futures.items():
                    if not wanted(other_position) and not other.done():
                        other.cancel()
        except SchedulerLost:  # nothing left to cancel, wait for or keep
            raise
        except BaseException:  # Ctrl-C, SIGTERM, a failure that ends the job
            _finish_running_fits(client, futures, finished, taken)
            raise


def _finish_running_fits(client: Any, futures: dict[Any, int], finished: Finished, taken: set[Any]) -> None:
    """Cancel the queued layers of a job that stops, keep the fits that finished but were not ``taken`` yet, and
    let the fits a worker runs already finish (up to STOP_WAIT_SECONDS) and be cached, so that the rerun does not
    fit them again: cancelling them all lost every fit in progress, although a worker was seconds from its result,
    and a fit that finished while the job handled another's result was lost too."""
    from distributed import wait as wait_on_cluster

    from phd_lab.distributed import STOP_WAIT_SECONDS, executing_keys, task_names
    pending = [future for future in futures if not future.done()]
    executing = executing_keys(client) or set()  # a cluster that does not answer: nothing can be waited for
    running = [future for future in pending if future.key in executing]
    client.cancel([future for future in pending if future.key not in executing])
    _keep_finished([future for future in futures if future not in taken and future not in running], futures,
                   finished)
    if not running:
        return
    log.warning("Stopping: %d layer fit(s) running on the cluster (%s) finish and are cached (waiting up to %d s; "
                "Ctrl-C again leaves them).", len(running), task_names(running), STOP_WAIT_SECONDS)
    with contextlib.suppress(TimeoutError):  # raised, not returned, when some are still running
        wait_on_cluster(running, timeout=STOP_WAIT_SECONDS)
    _keep_finished(running, futures, finished)
    client.cancel([future for future in running if not future.done()])


def _keep_finished(candidates: list[Any], futures: dict[Any, int], finished: Finished) -> None:
    """Hand the ``candidates`` that finished with a record to ``finished``, in a job that stops: one that cannot be
    kept is logged, as the error that stops the job is the one to raise (a failed fit is not fitted again anyway)."""
    _keep_records([(future.key, futures[future], future) for future in candidates if future.status == "finished"],
                  finished)


def _keep_records(fits: Sequence[tuple[Any, int, Any]], finished: Finished) -> None:
    """Hand the record of each (task name, position, finished future: Dask's or a process pool's) to ``finished``
    in a job that stops; one that cannot be kept is logged, as the error that stops the job is the one to raise."""
    for name, position, future in fits:
        try:
            finished(position, future.result(), None)
        except Exception as error:  # noqa: BLE001 - the error that stops the job is the one to raise
            log.warning("The fit of task %s finished but could not be kept: %s", name, error)
