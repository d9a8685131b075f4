"""What a run holds while it trains: its CPU thread count, cuDNN's autotuner, torch's numeric flags, Python's
warning filters, its folder's lock and its log file, and the sources torch.fx keeps of the graph modules it traced.

Context managers the executor enters around one run. Each restores what it changed when the
run ends, however it ends; ``run_log`` also writes the one line that says how a run ended. Kept apart
from the executor, which builds and trains the run, so that these guards read on their own.
"""

from __future__ import annotations

import contextlib
import linecache
import logging
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.fx import graph_module as fx_graph_module

from phd_lab.errors import DataError, FolderInTheWay, RunDiverged, RunFolderLost, RunStopped, Terminated, UsageError
from phd_lab.lock import RunLock
from phd_lab.log_file import LogFile, info_records_kept, this_thread_only
from phd_lab.rundir import RunDir
from phd_lab.user_paths import nearest_existing

log = logging.getLogger(__name__)



class cpu_threads:
    """Use a fixed number of torch CPU threads for one run (float sums depend on it)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.previous = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.previous)


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN's autotuner on for a run on CUDA (the fastest convolution algorithms for its fixed input size), and
    the caller's setting back after it: the flag is global, and a notebook's own code after a grid ran autotuned,
    no longer bit-reproducible on its GPU."""
    before = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


# The switches of torch.backends a factory may set (where below torch.backends, name), restored in this order: the
# TF32 switches of torch before 2.9 first, then 2.9's fp32_precision of each backend and operator (general ones
# first), which the older switches write (set_float32_matmul_precision sets cuda.matmul.fp32_precision).
_SWITCHES = (("cudnn", "enabled"), ("cudnn", "benchmark"), ("cudnn", "deterministic"), ("cudnn", "allow_tf32"),
             ("cuda.matmul", "allow_tf32"), ("cuda.matmul", "allow_fp16_reduced_precision_reduction"),
             ("cuda.matmul", "allow_bf16_reduced_precision_reduction"), ("mkldnn", "enabled"))
_PRECISIONS = ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul", "mkldnn.conv",
               "mkldnn.rnn")
_SDP_KERNELS = ("flash", "mem_efficient", "math", "cudnn")  # scaled dot-product attention's kernels
_UNREADABLE = object()  # a TF32 switch of before 2.9 that torch refuses to read once 2.9's names set it


def _backend(path: str) -> object:
    """The module of torch.backends at ``path`` ('cuda.matmul'; '' for torch.backends), or None."""
    owner: object = torch.backends
    for part in filter(None, path.split(".")):
        owner = getattr(owner, part, None)
    return owner


def _flag_accessors() -> list[tuple[Callable[[], object], Callable[[object], None]]]:
    """(read, write) of each process-wide numeric switch of torch.backends, in the order they are restored; those
    this torch lacks are left out."""
    def attribute(path: str, name: str) -> list[tuple[Callable[[], object], Callable[[object], None]]]:
        owner = _backend(path)
        try:  # attributes of a module class, or its __getattr__'s (cuda.matmul): dir() names neither
            getattr(owner, name)
        except AttributeError:
            return []
        except RuntimeError:  # there, but set by torch 2.9's names
            pass
        return [(lambda: getattr(owner, name), lambda value: setattr(owner, name, value))]

    accessors = [accessor for path, name in _SWITCHES for accessor in attribute(path, name)]
    accessors.append((torch.get_float32_matmul_precision, torch.set_float32_matmul_precision))
    accessors += [accessor for path in _PRECISIONS for accessor in attribute(path, "fp32_precision")]
    cuda = torch.backends.cuda
    for kernel in _SDP_KERNELS:
        read, write = getattr(cuda, f"{kernel}_sdp_enabled", None), getattr(cuda, f"enable_{kernel}_sdp", None)
        if read is not None and write is not None:
            accessors.append((read, write))
    return accessors


def _read(read: Callable[[], object]) -> object:
    """The switch ``read`` reads, or ``_UNREADABLE`` where torch refuses to read it by that name."""
    try:
        return read()
    except RuntimeError:  # "you have used mix of the legacy and new APIs": set by the names of torch 2.9
        return _UNREADABLE


def _default_device() -> torch.device | None:
    """The device torch.set_default_device set for this thread (None: none), not a ``with torch.device`` block's."""
    context = getattr(getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None), "device_context", None)
    return getattr(context, "device", None)


@contextlib.contextmanager
def torch_flags_kept() -> Iterator[None]:
    """torch's process-wide numeric flags as they were before the block, once it ends: the default dtype and device,
    deterministic algorithms, cuDNN's, oneDNN's and the matmuls' switches (TF32 by the names of torch before and
    since 2.9, cuDNN's autotuner), the attention kernels, grad and anomaly mode, the CPU thread count. A registry
    factory may set them ("for reproducibility", a float64 model, one thread), and every later grid point of the
    process was built and trained under them: after a factory that set float64, the next point of the grid built
    its model in float64 and failed on float32 data, where run alone it trained; after one that set one thread, the
    grid's points of ``cpu_threads: null`` summed with it. A switch set by torch 2.9's names (fp32_precision), which
    torch refuses to read by the older ones, is kept by the newer ones. None of these initialises CUDA."""
    threads, device = torch.get_num_threads(), _default_device()
    dtype, grad, anomaly = torch.get_default_dtype(), torch.is_grad_enabled(), torch.is_anomaly_enabled()
    check_nan = torch.is_anomaly_check_nan_enabled()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    switches = [(read, write, _read(read)) for read, write in _flag_accessors()]
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.autograd.set_detect_anomaly(anomaly, check_nan)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        for read, write, value in switches:
            if value is not _UNREADABLE and _read(read) != value:
                write(value)
        if _default_device() != device:
            torch.set_default_device(device)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def warning_filters_kept() -> Iterator[None]:
    """Python's warning filters as they were before the block, once it ends. A registry factory may silence
    warnings (``warnings.simplefilter("ignore")``, "this library is noisy"), and every later grid point of the
    process, the caller's own code and a Dask worker's later tasks lost theirs. Put back into the same list, and
    only where the block changed them, as ``torch_flags_kept`` puts back torch's flags: ``catch_warnings`` swaps
    the module's list for another and back, which is not meant for a process of several threads. A filter that a
    library sets when the block first imports it goes too (scipy's for its special functions), as after
    ``catch_warnings`` or a test under pytest: no filter says who set it."""
    before = list(warnings.filters)
    try:
        yield
    finally:
        if warnings.filters != before:
            warnings.filters[:] = before
            _forget_warnings_already_decided()


class _NeverWarned(Warning):
    """A category nothing warns with: a filter for it changes no decision."""


def _forget_warnings_already_decided() -> None:
    """Make Python forget which warnings it has shown once under the filters just replaced (each module's
    ``__warningregistry__``): a warning shown by a "default" filter of the block would otherwise stay silent under
    an "always" filter put back. Adding a filter is the public way to say the filters changed (the private
    ``warnings._filters_mutated`` of Python 3.13 and before is gone in 3.14); one for a category nothing warns with
    is added and taken out again."""
    warnings.simplefilter("ignore", _NeverWarned, append=True)
    warnings.filters[:] = [item for item in warnings.filters if item[2] is not _NeverWarned]


@contextlib.contextmanager
def fx_sources_released() -> Iterator[None]:
    """Forget the sources torch.fx kept of the graph modules made inside the block. torch.fx keeps the generated
    ``forward`` of every graph module (and a copy of its globals) for the life of the process, in its loader's
    cache and in ``linecache``, for tracebacks through that code. A run traces its model up to six times (the
    receptive_field step, the flops step's border truncation): 11 KB of sources a run of the tiny VGG11, 88 KB of a
    ResNet-50, and a grid of hundreds of runs in one process kept every one. Its graph modules are gone once
    the block ends. A torch without that cache (a private name) is left alone."""
    cache = getattr(getattr(fx_graph_module, "_loader", None), "eval_cache", None)
    before = set(cache) if isinstance(cache, dict) else None
    try:
        yield
    finally:
        if before is not None:
            for key in set(cache) - before:  # type: ignore[arg-type]
                cache.pop(key, None)  # type: ignore[union-attr]
                linecache.cache.pop(key, None)


@contextlib.contextmanager
def writable_lock(rundir: RunDir) -> Iterator[RunLock]:
    """The run folder, made where it is missing, and its lock, held while the block runs; a folder that cannot
    be made (a file where a folder above it must go, put there after the up-front checks) or written (a
    read-only mount, no permission) is said in one line instead of an OSError from mkdir or the lock file."""
    try:
        rundir.create()
    except OSError as error:
        blocking = nearest_existing(rundir.root)
        why = (f"{str(blocking)!r} is a file where a folder must go" if not blocking.is_dir()
               else error.strerror or str(error))
        raise DataError(f"The run folder {str(rundir.root)!r} cannot be created ({why}); a run needs its folder "
                        f"for its lock, log, checkpoints and results.") from None
    lock = RunLock(rundir.lock)
    try:
        lock.acquire()
    except FolderInTheWay as error:  # a folder where the lock file goes: named, with what to do
        raise DataError(str(error)) from None
    except OSError as error:
        raise DataError(f"The run folder {str(rundir.root)!r} cannot be written ({error.strerror or error}); "
                        f"a run needs its folder for its lock, log, checkpoints and results.") from None
    try:
        yield lock
    finally:
        lock.release()


# What a run's log says above a failure's traceback: the log said "Run failed" alone, not what to do next
FAILED_WITH_TRACEBACK = ("Run failed (the traceback follows); once its cause is fixed, the same command resumes it: "
                         "training after the last completed epoch, post-processing keeping the steps that had finished")
# How a run's log names what ended it, where that was no failure (KeyboardInterrupt itself: "Ctrl-C")
INTERRUPTIONS = {Terminated: "SIGTERM", RunStopped: "its command was stopped"}


class records_before_the_log(logging.Handler):
    """Keep the records this thread logs while a run builds its data and model, before its log file is open (a
    data set's warnings about its images, a model or dataset factory's own), for ``run_log.replay``: they went to
    the console alone, which a batch job's .out takes with it, and the run's .log never said them. Records of
    other threads (another run's) are not kept; past ``LIMIT`` records the rest are counted, not kept. It keeps
    what the root logger passes (INFO and up under the commands): raising the caller's level here as ``run_log``
    does would hide INFO lines of other threads from the caller's handlers for longer."""

    LIMIT = 1000

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        this_thread_only(self)
        self.records: list[logging.LogRecord] = []
        self.dropped = 0

    def __enter__(self) -> "records_before_the_log":
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.LIMIT:
            self.records.append(record)
        else:
            self.dropped += 1


class run_log:
    """Copy every log record of the run's thread to the run's log file while the run is active. Records of other
    threads are another run's (a Dask worker with several threads: the next task's checks, its wait for its turn
    "Another training run is in progress ..."), which went into this run's file while it was open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.handler = this_thread_only(LogFile(path))
        except FolderInTheWay as error:  # a traceback and 'failed while building its data, model or optimizer'
            raise DataError(str(error)) from None
        self.levels = info_records_kept()  # every INFO record in the file, however the caller set up logging

    def __enter__(self) -> "run_log":
        self.levels.__enter__()
        logging.getLogger().addHandler(self.handler)
        return self

    def replay(self, early: records_before_the_log) -> None:
        """Write the records logged before the file was open into it (the console has shown them already)."""
        for record in early.records:
            self.handler.handle(record)
        if early.dropped:
            self.handler.handle(log.makeRecord(log.name, logging.WARNING, __file__, 0, "%d more records logged "
                                               "before the log was open are not in it", (early.dropped,), None))

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None and not issubclass(exc[0], UsageError):
            # The traceback goes to the run's log file only; the console gets the one-line summary.
            if issubclass(exc[0], (KeyboardInterrupt, RunStopped)):  # type: ignore[arg-type]
                how = next((what for kind, what in INTERRUPTIONS.items()
                            if issubclass(exc[0], kind)), "Ctrl-C")  # type: ignore[arg-type]
                record = log.makeRecord(log.name, logging.WARNING, __file__, 0, f"Run interrupted ({how}); "
                                        "the same command resumes it from its last checkpoint", None, None)
            else:  # a diverged run, a lost folder or a folder in a file's place needs its message, not a traceback
                diverged = issubclass(exc[0], (RunDiverged, RunFolderLost, FolderInTheWay))  # type: ignore[arg-type]
                record = log.makeRecord(log.name, logging.ERROR, __file__, 0,
                                        f"Run failed: {exc[1]}" if diverged else FAILED_WITH_TRACEBACK, None,
                                        None if diverged else exc)  # type: ignore[arg-type]
            self.handler.handle(record)
            if record.levelno == logging.ERROR:
                with contextlib.suppress(AttributeError):  # the caller names the file that holds the traceback, or
                    # shows the traceback itself where the file could not take it (a full disk)
                    setattr(exc[1], "log_unwritable" if self.handler.broken else "logged_to", self.path)
        logging.getLogger().removeHandler(self.handler)
        self.levels.__exit__(None, None, None)
        with contextlib.suppress(OSError):  # a full disk: the error that ended the run is the one to report
            self.handler.close()
