"""Run grid points as tasks on a Dask cluster (``--scheduler ADDRESS`` or ``--scheduler local:N``).

Each grid point is one task that trains and post-processes its run on a worker, exactly as a
sequential run would, so the files are the same. Points whose device is CUDA (or ``auto`` on a
cluster that advertises GPUs) ask for the worker resource ``GPU=1``: start one GPU worker per GPU, each
seeing only its own (dask-cuda's ``dask cuda worker ADDRESS --resources GPU=1``), and CPU workers
without the resource; ``gpu_sharing_warning`` says when runs would share a GPU. A worker that dies while
training makes Dask reschedule the task (``distributed.scheduler.allowed-failures``), and the
new attempt resumes from the run's last checkpoint.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import sys
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

from phd_lab.environment import THREAD_VARIABLES, available_cores
from phd_lab.errors import SchedulerLost, UsageError, failure_line
from phd_lab.interrupts import interrupts_held_while_processes_start, raise_interruption_behind
from phd_lab.log_file import FORMAT, Formatter, info_records_kept, this_thread_only, thread_only
from phd_lab.wording import first_names

log = logging.getLogger(__name__)

_LOCAL = re.compile(r"^local(?::(\d+))?$")
# local:N beyond reason: LocalCluster built the specs of all N workers before starting one, so local:99999999999
# filled the memory (12 GB in seconds) instead of being refused; as cpu_threads, at most 1024
MAX_LOCAL_WORKERS = 1024
STOP_WAIT_SECONDS = 30  # how long a stopped command waits for its runs to end on the cluster


# Worker settings for training tasks, applied to local clusters (set the same in the Dask config of
# the workers of a cluster you start yourself). Measured on the quickstart run (one thread): 42 s in a
# default worker, 23 s with these, 21 s in a plain thread. Dask's default MALLOC_TRIM_THRESHOLD_ turns
# off glibc's adaptive mmap threshold, so every large tensor is mmapped and page-faulted afresh; the
# statistical profiler samples every task's Python stack every 10 ms.
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                 "distributed.worker.profile.enabled": False,
                 # a daemonic worker may start no process: every run with num_workers > 0 failed in its DataLoader
                 "distributed.worker.daemon": False}


def worker_thread_environment(workers: int) -> dict[str, str]:
    """Thread-count variables that give each of ``workers`` local worker processes an equal share of the cores.

    Dask's nanny starts every worker with OMP_NUM_THREADS=1, so on a machine with more cores
    than workers a training task would use one core and leave the rest idle (measured on
    16 cores: the 4-point quickstart grid took 73 s on local:2 against 38 s sequentially).
    """
    threads = str(max(1, available_cores() // workers))
    return {name: threads for name in THREAD_VARIABLES}


def parse_scheduler(spec: str, warn: bool = False) -> tuple[str, Any]:
    """``local:N`` → ("local", N); anything else is a scheduler address. ``warn=True`` also warns of more workers
    than cores, which a command does once: where the cluster starts (``dask_client``), or in main.py's dry run."""
    match = _LOCAL.match(spec.strip())
    if not match and re.match(r"(?i)^local(?::|$)", spec.strip()):  # not localhost:8786, an address
        raise UsageError(f"--scheduler {spec!r}: a local cluster is written local:N with a whole number N ≥ 1 of "
                         f"worker processes (or plain 'local' for one per core).")
    if match:
        cores = available_cores()  # plain "local" is one worker per core this process may use (taskset, cgroups)
        workers = int(match.group(1) or cores)
        if workers < 1:
            raise UsageError(f"--scheduler {spec!r}: a local cluster needs at least one worker (local:N, N ≥ 1).")
        if workers > MAX_LOCAL_WORKERS:
            raise UsageError(f"--scheduler {spec!r}: a local cluster takes at most {MAX_LOCAL_WORKERS} worker "
                             f"processes (local:N, 1 ≤ N ≤ {MAX_LOCAL_WORKERS}; this machine has {cores} core(s), and "
                             f"plain 'local' starts one per core).")
        if workers > cores and warn:
            log.warning("--scheduler %s starts %d worker processes on %d core(s): they take turns on the cores, so "
                        "the grid runs no faster than with local:%d and needs more memory.", spec, workers, cores,
                        cores)
        return "local", workers
    if "://" not in spec and ":" not in spec:
        raise UsageError(f"--scheduler {spec!r} is neither a scheduler address (tcp://host:8786) nor local:N.")
    scheme = spec.split("://")[0].lower() if "://" in spec else "tcp"
    if scheme in ("http", "https"):
        raise UsageError(f"--scheduler {spec!r} is a web address, probably the dashboard's; give the scheduler's "
                         f"own address, e.g. tcp://host:8786 (`dask scheduler` prints it).")
    host_port = spec.split("://", 1)[-1]
    port = (host_port.rsplit(":", 1)[1] if scheme == "tcp" and ":" in host_port and not host_port.endswith("]")
            else None)  # tcp://host and tcp://[::1] take Dask's default port
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"--scheduler {spec!r}: its port {port!r} is not a number from 1 to 65535; give the "
                         f"scheduler's address as `dask scheduler` prints it, e.g. tcp://host:8786.")
    host = host_port.rsplit(":", 1)[0] if port is not None else host_port
    if scheme == "tcp" and not host.strip("[]").strip():  # tcp:// passed the dry run; the probe job hashed every
        # latents file before distributed refused it
        raise UsageError(f"--scheduler {spec!r} names no host; give the scheduler's address as `dask scheduler` "
                         f"prints it, e.g. tcp://host:8786.")
    return "address", spec


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as error:
        raise_interruption_behind(error)  # a Ctrl-C as its compiled modules were imported: no missing extra
        raise UsageError("--scheduler needs the Dask extra: pip install 'phd-lab[distributed]' "
                         "(or pip install distributed).") from None
    return distributed


# Dask's loggers a command quietens while it uses a cluster (the nanny's to ERROR once the results are in)
QUIETENED_LOGGERS = ("distributed", "distributed.scheduler", "distributed.core", "distributed.http.proxy",
                     "distributed.nanny", "distributed.client")


def _gc_diagnosis_off() -> None:
    """Unhook the scheduler's callback from every garbage collection (a Ctrl-C that lands in it is lost).
    distributed moved it from ``distributed.utils_perf`` to ``distributed.gc`` in 2024.8.0; setup.cfg allows
    2024.1."""
    try:
        from distributed.gc import disable_gc_diagnosis
    except ImportError:  # distributed < 2024.8.0
        from distributed.utils_perf import disable_gc_diagnosis
    disable_gc_diagnosis(force=True)


@contextlib.contextmanager
def dask_client(spec: str) -> Iterator[Any]:
    """A connected ``distributed.Client``; a local cluster is started and stopped around it. Dask's loggers are
    quietened while it is used and given back their levels after: a notebook's own cluster after a grid on
    ``local:N`` said nothing of its scheduler and nannies."""
    levels = {name: logging.getLogger(name).level for name in QUIETENED_LOGGERS}
    try:
        with _connected_client(spec) as client:
            yield client
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _connected_client(spec: str) -> Iterator[Any]:
    """``dask_client`` without the logger levels given back: the client, and the local cluster around it."""
    distributed = _import_distributed()
    kind, value = parse_scheduler(spec, warn=True)  # the one place a started cluster's workers are warned of
    for name in QUIETENED_LOGGERS:
        if name != "distributed.nanny":  # its exit notes are quietened once the results are in (below)
            logging.getLogger(name).setLevel(logging.WARNING)
    if kind == "local":
        with _local_cluster_client(distributed, value) as client:
            yield client
        return
    seconds = _connect_timeout()
    with _unreachable_said(spec):
        _expect_dask_handshake(distributed, value, seconds)
        client = distributed.Client(value, timeout=seconds)
    with client:
        try:
            if not cluster_workers(client):  # whether GPU tasks ask for GPU workers is read from the workers
                log.warning("The scheduler at %s has no workers yet; waiting for the first to connect (`dask worker "
                            "%s`) before the tasks are submitted.", spec, spec)
                try:
                    client.wait_for_workers(1)
                except OSError:  # it died meanwhile: distributed's traceback of its reconnection, exit 1
                    raise SchedulerLost(scheduler_lost_message(0, 0, "tasks")) from None
            yield client
        except SchedulerLost as error:  # the client's reconnection, cancelled as it closes, logged a traceback
            logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
            error.args = (f"--scheduler {spec}: {error}",)
            raise


@contextlib.contextmanager
def _local_cluster_client(distributed: Any, value: int) -> Iterator[Any]:
    """A client of a local cluster of ``value`` worker processes, which is closed and then released: distributed
    keeps every closed scheduler of this process alive otherwise (below)."""
    import dask
    try:
        with dask.config.set(WORKER_CONFIG), contextlib.ExitStack() as stack:
            with interrupts_held_while_processes_start():  # a Ctrl-C now is raised once the cluster can be closed
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=value, threads_per_worker=1, processes=True, env=worker_thread_environment(value),
                    dashboard_address=":0", silence_logs=logging.WARNING))
                # a free port: None still took 8787, so a second local cluster warned that it was in use
                client = stack.enter_context(distributed.Client(cluster))
                log.info("Local Dask cluster of %d worker(s); dashboard (where bokeh is installed): %s", value,
                         cluster.dashboard_link)
                from phd_lab.dask_worker_signals import PLUGIN_NAME, TerminalInterruptsIgnored
                client.register_plugin(TerminalInterruptsIgnored(), name=PLUGIN_NAME)  # Ctrl-C is the command's
                # the scheduler in this process hooks a Python callback into every garbage collection, and a
                # Ctrl-C that lands in it is printed as "Exception ignored" and lost (1 of 4 tries of the probe test)
                _gc_diagnosis_off()
            try:
                yield client
            finally:  # every result is in and every file written atomically: a worker that takes more than the
                # nanny's 4 s to exit (torch's teardown after training) is killed harmlessly, and need not be said
                logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    finally:
        _release_closed_servers(distributed)


def _release_closed_servers(distributed: Any) -> None:
    """Let the closed local cluster's scheduler be freed. distributed caches, without bound, whether each handler
    of a server takes a comm (``distributed.core._expects_comm``, a ``functools.cache`` keyed by the bound methods),
    so every scheduler this process ever started stayed alive with its state and a log handler on
    ``distributed.scheduler``: about 4 MB and one handler more each ``--scheduler local:N`` grid or probe job of a
    notebook or other long-lived process. Clearing the cache costs a look-up per handler of the next server."""
    cache = getattr(getattr(distributed, "core", None), "_expects_comm", None)
    clear = getattr(cache, "cache_clear", None)
    if callable(clear):  # the name is distributed's private one: where it is gone, there is nothing to clear
        clear()


def check_scheduler(spec: str) -> None:
    """Raise a UsageError now if ``--scheduler spec`` cannot be used: a command checks this before it writes
    anything (a local cluster is only parsed here; it is started when the work begins)."""
    distributed = _import_distributed()
    kind, value = parse_scheduler(spec)
    if kind == "address":
        with _unreachable_said(spec):
            _expect_dask_handshake(distributed, value, _connect_timeout())


@contextlib.contextmanager
def _unreachable_said(spec: str) -> Iterator[None]:
    """Connection errors inside the block as the usage error that says where a scheduler is started."""
    try:
        yield
    except (OSError, TimeoutError, ValueError, TypeError) as error:  # Value/TypeError: a malformed address
        raise UsageError(f"--scheduler {spec!r}: cannot reach a Dask scheduler there ({error}). Start one with "
                         f"`dask scheduler` and workers with `dask worker {spec}`.") from None


def _connect_timeout() -> float:
    """Dask's own connect timeout (``distributed.comm.timeouts.connect``, 30 s by default)."""
    import dask
    from dask.utils import parse_timedelta
    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds"))


def _expect_dask_handshake(distributed: Any, address: str, seconds: float) -> None:
    """Raise TimeoutError when ``address`` accepts a connection but sends no Dask handshake within ``seconds``.

    distributed's connect waits for the handshake without a time limit, so a port of another service that
    waits for the client to speak first hung the command without a word. Only plain TCP addresses are
    probed; TLS needs the security settings that the Client reads itself."""
    if "://" in address and not address.lower().startswith("tcp://"):
        return
    import asyncio
    import socket

    from distributed.comm import parse_address, parse_host_port
    host, port = parse_host_port(parse_address(address)[1])
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except ConnectionRefusedError:
        raise OSError("nothing listens at that port (connection refused); is the scheduler running, and is this "
                      "its port?") from None
    except socket.timeout:
        raise TimeoutError(f"no answer within {seconds:g} s (a firewall, or a host that is down)") from None

    async def handshake() -> None:
        comm = await distributed.comm.connect(address, timeout=seconds)
        await comm.close()

    try:
        asyncio.run(asyncio.wait_for(handshake(), seconds))
    except asyncio.TimeoutError:
        raise TimeoutError(f"the port accepted a connection but sent no Dask handshake within {seconds:g} s; "
                           f"is it another service's port?") from None
    except (OSError, ValueError, TypeError):
        raise
    except Exception as error:  # noqa: BLE001 - e.g. an SSH banner read as a frame length: a MemoryError of EiB
        raise OSError(f"the port answered, but not as a Dask scheduler ({type(error).__name__}); is it another "
                      f"service's port?") from None


def cluster_workers(client: Any) -> dict[str, Any]:
    """Every worker's information: distributed 2025.7 to 2026.6 list only the first five unless asked for all."""
    if "n_workers" in inspect.signature(client.scheduler_info).parameters:
        return client.scheduler_info(n_workers=-1).get("workers", {})
    return client.scheduler_info().get("workers", {})  # older versions list every worker


def cluster_has_gpus(client: Any) -> bool:
    workers = cluster_workers(client)
    return any(info.get("resources", {}).get("GPU", 0) > 0 for info in workers.values())


def task_resources(device: str, gpus_on_cluster: bool) -> dict[str, int] | None:
    """``{"GPU": 1}`` for a GPU run where workers declare GPU resources (one run per GPU at a time).

    A cluster that declares none (a ``local:N`` cluster, workers started without ``--resources
    GPU=1``) gets no resource request: Dask would otherwise hold such a task forever, as no worker
    could ever take it. A worker without CUDA then fails that run with the device's own error.
    """
    if gpus_on_cluster and _may_use_gpu(device):
        return {"GPU": 1}
    return None


def gpu_device(device: str, tracking_device: str | None) -> str:
    """The device that decides whether a run needs a GPU: the model's, or the saturation tracker's where only
    that one is CUDA (``"device": "cpu", "tracking_device": "cuda"`` sums the covariances on a GPU)."""
    if _may_use_gpu(device) or not (tracking_device or "").startswith("cuda"):
        return device
    return tracking_device


def _may_use_gpu(device: str) -> bool:
    """Whether a task on ``device`` computes on a GPU where its worker has one (``cuda``, ``cuda:N``, ``auto``)."""
    return device == "auto" or device.startswith("cuda")


def gpu_sharing_warning(devices: Sequence[str], gpus_on_cluster: bool, local_workers: int | None,
                        cuda_here: bool, device_key: str = "device", tasks: str = "runs") -> str | None:
    """The warning for ``tasks`` (runs, probe fits) on ``devices`` that would share a GPU, or None.

    A cluster whose workers declare ``GPU`` resources gets one task per GPU (``task_resources``). Otherwise
    every worker of a machine computes on the device its task names, CUDA's default device for ``cuda``
    (and for ``auto`` on a GPU machine, ``cuda_here``): the ``local:N`` workers of a GPU machine put two tasks
    on one GPU at once, time-sliced between the processes and sharing its memory. Tasks that name distinct
    GPUs (``cuda:0``, ``cuda:1``), a single task or one worker share nothing. ``local_workers``: N of
    ``local:N``, None for a cluster at an address, whose workers' machines are unknown here: two GPU tasks
    there are said to be unlimited. ``device_key``: the config key the advice names.
    """
    if gpus_on_cluster:
        return None
    gpus = [_cuda_index(device, local_workers is not None and cuda_here) for device in devices]
    gpus = [gpu for gpu in gpus if gpu is not None]
    if len(gpus) < 2:
        return None
    per_gpu = ("start one worker per GPU, each seeing only its own GPU (and naming it cuda): dask-cuda's `dask "
               "cuda worker ADDRESS --resources GPU=1`, or `CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --resources "
               "GPU=1` for GPU i")
    if local_workers is None:
        return (f"No worker of the cluster declares a GPU resource, so GPU {tasks} are not limited to one per GPU; "
                f"{per_gpu}.")
    if local_workers < 2 or len(set(gpus)) == len(gpus):  # one worker, or every task on a GPU of its own
        return None
    return (f"The {local_workers} workers of local:{local_workers} would run their CUDA {tasks} on the same GPU at "
            f"once: CUDA gives it to one process at a time, and the {tasks} share its memory. For one per GPU, "
            f"{per_gpu}, and pass the scheduler's address to --scheduler; with \"{device_key}\": \"cpu\" they run "
            f"side by side on the cores.")


def declared_gpus(client: Any, scheduler: str, devices: Sequence[str], cuda_here: Callable[[], bool],
                  device_key: str = "device", tasks: str = "runs") -> bool:
    """Whether ``client``'s workers declare GPUs (then GPU tasks ask for them, ``task_resources``); warns first
    where ``tasks`` on ``devices`` would share a GPU instead (``gpu_sharing_warning``). ``cuda_here`` is asked
    only for a local cluster, whose ``auto`` tasks run on this machine."""
    gpus = cluster_has_gpus(client)
    kind, workers = parse_scheduler(scheduler)
    local = kind == "local"
    sharing = gpu_sharing_warning(devices, gpus, workers if local else None, local and cuda_here(),
                                  device_key=device_key, tasks=tasks)
    if sharing:
        log.warning("%s", sharing)
    return gpus


def _cuda_index(device: str, auto_is_cuda: bool) -> int | None:
    """The CUDA device a task on ``device`` uses (0 for the default device), or None off CUDA."""
    if device == "auto":
        return 0 if auto_is_cuda else None
    if not device.startswith("cuda"):
        return None
    return int(device.split(":")[1]) if ":" in device else 0


CONSOLE_LEVEL = logging.WARNING  # what a task's console handler shows of its thread's records


class _OtherThreadsLastResort(logging.Handler):
    """On the root while tasks run: a record of a thread that runs no task goes to logging's last resort where
    logging itself would have used it (no handler on the record's way up but those of tasks, which take their own
    thread's records only): the tasks' handlers on the root kept logging from its last resort, so on a cluster of
    threads in the caller's process (``LocalCluster(processes=False)``) the warnings of a caller without handlers
    were lost while a task ran, and on a worker those of threads other than the tasks'."""

    def __init__(self, tasks: set[int]) -> None:
        super().__init__()
        self.tasks = tasks

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is None or record.thread in self.tasks or record.levelno < last.level or self._handled(record):
            return
        last.handle(record)

    def _handled(self, record: logging.LogRecord) -> bool:
        """Whether a handler on the record's way to the root, other than this and those of one thread, took it."""
        logger: logging.Logger | None = logging.Logger.manager.loggerDict.get(record.name)  # type: ignore[assignment]
        if not isinstance(logger, logging.Logger):
            logger = logging.getLogger()
        while logger is not None:
            if any(handler is not self and not thread_only(handler) for handler in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None
        return False


class _WorkerConsole:
    """The console handlers of the tasks running in this process, one per task's thread (``run_warnings_on_worker
    _console``). While any runs, the caller's console handlers on the root (a stream handler on stderr or stdout:
    on a cluster of threads in the caller's process) leave the tasks' warnings to them, which showed each run
    warning twice, once without the run's name; and ``_OtherThreadsLastResort`` stands in for logging's last
    resort. The last task to end takes both back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: set[int] = set()
        self.stand_in = _OtherThreadsLastResort(self.tasks)
        self.muted: list[logging.Handler] = []

    def shown_by_a_task(self, record: logging.LogRecord) -> bool:
        """Filter for the caller's console handlers: False for a record that a task's console handler shows."""
        return not (record.thread in self.tasks and record.levelno >= CONSOLE_LEVEL)

    @contextlib.contextmanager
    def task(self, handler: logging.Handler) -> Iterator[None]:
        """``handler`` on the root while the block runs in this thread, a task's."""
        root = logging.getLogger()
        with self.lock:
            if not self.tasks:
                self.muted = [console for console in root.handlers if _on_console(console)]
                for console in self.muted:
                    console.addFilter(self.shown_by_a_task)
                root.addHandler(self.stand_in)
            self.tasks.add(threading.get_ident())
            root.addHandler(handler)
        try:
            yield
        finally:
            with self.lock:
                root.removeHandler(handler)
                self.tasks.discard(threading.get_ident())
                if not self.tasks:
                    root.removeHandler(self.stand_in)
                    for console in self.muted:
                        console.removeFilter(self.shown_by_a_task)
                    self.muted = []


def _on_console(handler: logging.Handler) -> bool:
    """Whether ``handler`` is one of all threads' that writes to the console (stderr or stdout), not to a file."""
    consoles = {id(stream) for stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) if stream}
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and not thread_only(handler) and id(handler.stream) in consoles)


_worker_console = _WorkerConsole()


@contextlib.contextmanager
def run_warnings_on_worker_console(run_name: str) -> Iterator[None]:
    """While a task runs, the warnings and errors its thread logs go to the worker's stderr (a local cluster's is
    the command's) in the log format, named with the run: a worker has no console handler, so logging's last
    resort printed them as bare messages ("planted warning") that said neither when nor for which of the grid's
    runs, and once the run's log file was open (a handler on the root) not at all. Records of the worker's other
    threads (another task, Dask's own) are left to them, and a caller's console handler leaves the task's warnings
    to this one (``_WorkerConsole``)."""
    if sys.stderr is None:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(CONSOLE_LEVEL)
    handler.setFormatter(Formatter(FORMAT.replace("%(name)s:", f"%(name)s (run {run_name.replace('%', '%%')}):")))
    this_thread_only(handler)
    with _worker_console.task(handler):
        yield


# Modules of Dask that draw from Python's global random while a task runs in the worker process: dask.sizeof
# samples the large collections of every message the worker sends (heartbeats, several a second), the others jitter
# retries and pick peers or spill files. Each uses only ``random.<function>`` calls that a Random instance has.
DASK_RANDOM_USERS = ("dask.sizeof", "distributed.worker", "distributed.utils_comm", "distributed.comm.core")


def _private_random_for_dask() -> None:
    """Give the Dask modules that draw from Python's global ``random`` a generator of their own, so that a run's
    seeded Python random (a model's stochastic depth, a dataset's augmentation) is drawn from by the run alone,
    as in a sequential run: the worker's heartbeats drew from it, several times a second."""
    import importlib
    import random
    import types
    for name in DASK_RANDOM_USERS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # another Dask version: nothing of it to guard
            continue
        if isinstance(getattr(module, "random", None), types.ModuleType):
            module.random = random.Random()  # type: ignore[attr-defined]


def train_point(values: Mapping[str, Any], source: str, registry_overrides: Mapping[str, str],
                stop_event: str | None = None) -> tuple[str, str]:
    """Task body: train and post-process one resolved grid point.

    Returns ("finished", run folder), or ("in use", message) when another process holds the folder,
    ("invalid", message) for a usage error found only now (a dataset missing on this worker) and
    ("stopped", message) once the Dask Event ``stop_event`` is set (the command was stopped): expected
    outcomes, which Dask would otherwise log with a traceback (and retry). Failures name the run's log.
    """
    from phd_lab.config import RunConfig
    from phd_lab.errors import RunLockedError, RunStopped
    from phd_lab.executor import RUN_TURN, TrainTestExecutor
    from phd_lab.interrupts import stop_requests
    from phd_lab.registry import Registries
    from phd_lab.run_guards import torch_flags_kept, warning_filters_kept

    _private_random_for_dask()
    stopped = _stop_flag(stop_event)
    if stopped():  # queued behind the runs of a command that was stopped meanwhile
        return "stopped", "not started: its command was stopped"
    config = RunConfig(dict(values), source=source)
    modules = {**config.registries, **registry_overrides}
    try:
        # the turn before the checks: importing registry files takes other folders' helpers out of sys.modules for
        # a while, and the checks' factories set torch's flags, under a run that another thread is training; INFO
        # records reach the run's log once the worker console's handler is on the root (no last-resort stand-in),
        # from its checks on, and the last task or run of the process to end gives the root its level back (a root
        # left at INFO printed every INFO line of the caller's process after a grid on a cluster of its threads)
        with stop_requests(stopped), run_warnings_on_worker_console(config.name), info_records_kept(), \
                RUN_TURN():
            # a registry this worker cannot import is a usage error too
            executor = TrainTestExecutor(config, Registries(modules), progress=False)
            # the flags and warning filters the checks' factories set end with them, as in a sequential grid
            with torch_flags_kept(), warning_filters_kept():  # (they stayed set for the worker's later tasks)
                executor.validate()
            return "finished", str(executor.run().root)
    except RunLockedError as error:
        return "in use", str(error)
    except UsageError as error:
        return "invalid", str(error)
    except RunStopped as error:
        return "stopped", str(error)
    except Exception as error:  # noqa: BLE001 - as in a sequential run: one line here, the traceback in the run's log
        said = failure_line(error)
        if said is None:  # before the run's log was opened: Dask reports it with its traceback
            raise
        return "failed", said


def _stop_flag(name: str | None) -> Callable[[], bool]:
    """Whether the Dask Event ``name`` is set, asked from a task (the worker's client reaches the scheduler)."""
    if name is None:
        return lambda: False
    from distributed import Event, get_client
    event = Event(name, client=get_client())

    def is_set() -> bool:
        try:
            return event.is_set()
        except Exception:  # noqa: BLE001 - a scheduler that does not answer now must not fail a healthy run
            log.debug("Could not ask the scheduler whether %s is set", name, exc_info=True)
            return False
    return is_set


def submit_and_collect(client: Any, tasks: Sequence[tuple[str, Callable[..., Any], tuple, dict | None]],
                       description: str, progress: bool = True, stop_event: str | None = None
                       ) -> dict[str, tuple[str, Any]]:
    """Submit ``(key, fn, args, resources)`` tasks; return ``key → ("finished", result) | ("failed", error)`` or
    ``("died", message)`` for a task whose worker processes died (``worker_deaths``).
    Keys must be unique to the command: the scheduler hands a task of an existing key to whoever asks.
    When the command is stopped while it waits, its unfinished tasks are stopped too (``_stop_tasks``)."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    from phd_lab.progress import bar_options

    futures = {}
    results: dict[str, tuple[str, Any]] = {}
    lost = False
    try:  # a Ctrl-C while the tasks are handed over stops those handed over already, as one later does
        for key, fn, args, resources in tasks:
            futures[client.submit(fn, *args, key=key, resources=resources, pure=False)] = key
        with tqdm(total=len(futures), desc=description, unit="task", disable=not progress, **bar_options()) as bar:
            for future in as_completed(futures):
                key = futures[future]
                if scheduler_lost(client, future):  # no task of this command can be stopped or waited for now
                    lost = True
                    break
                if future.status == "finished":
                    results[key] = ("finished", future.result())
                else:
                    error = future.exception()
                    died = worker_deaths(error)
                    results[key] = (("died", died) if died else ("failed", f"{type(error).__name__}: {error}"))
                    log.error("Task %s failed: %s: %s", key, type(error).__name__, died or error)
                bar.update()
    except BaseException:  # Ctrl-C, SIGTERM: the tasks would go on running on the workers without this
        _stop_tasks(client, [f for f, key in futures.items() if key not in results], stop_event)
        raise
    if lost:
        raise SchedulerLost(scheduler_lost_message(len(futures) - len(results), len(futures), "run(s)"))
    return results


def scheduler_lost(client: Any, future: Any) -> bool:
    """Whether ``future`` ended because the client lost its scheduler: Dask then cancels every future of the client
    (no error, ``exception()`` None) and the client is no longer running (reconnecting or closed)."""
    return future.cancelled() and getattr(client, "status", "running") != "running"


def scheduler_lost_message(unfinished: int, total: int, what: str) -> str:
    """The one paragraph of a command whose scheduler went away while ``unfinished`` of its ``total`` tasks ran
    (none submitted yet: ``total`` 0)."""
    when = (f"while {unfinished} of {total} {what} were unfinished; the finished ones are kept. Workers that outlive "
            f"the scheduler may go on with the tasks they run until these end." if total else
            "while the command waited for its first worker; nothing was submitted.")
    return (f"The connection to the Dask scheduler was lost (it stopped or was killed, or the network failed) {when}"
            f" Once a scheduler and its workers run "
            f"again, rerun the same command (with the new scheduler's address): it skips what is finished and "
            f"resumes the rest from what was saved.")


def worker_deaths(error: BaseException) -> str | None:
    """What a task given up after its worker processes died (SIGKILL, the OOM killer) went through, or None for an
    error the task raised. Dask's KilledWorker names no cause: none reached it, and no traceback exists."""
    from distributed.scheduler import KilledWorker
    if not isinstance(error, KilledWorker):
        return None
    deaths = int(getattr(error, "allowed_failures", 0)) + 1
    return (f"KilledWorker: the Dask worker process running it died {deaths} time(s) (ended by a signal or by the "
            f"system, e.g. for lack of memory), so the scheduler gave it up (distributed.scheduler.allowed-failures); "
            f"no traceback exists, the logs of the workers may say why they died")


def _executing_on(dask_worker: Any) -> list[str]:
    """The keys of the tasks a Dask worker runs now (``client.run`` calls it on each worker)."""
    return [task.key for task in dask_worker.state.executing]


def executing_keys(client: Any) -> set[str] | None:
    """The keys of the tasks the cluster's workers run now, or None where the workers do not answer. The scheduler's
    "processing" includes the tasks queued on a worker behind the one it runs."""
    try:
        return {key for keys in client.run(_executing_on).values() for key in keys}
    except Exception:  # noqa: BLE001 - a cluster that does not answer: the caller takes every task for running
        log.debug("Could not ask the workers which tasks they run", exc_info=True)
        return None


def _stop_tasks(client: Any, futures: list[Any], stop_event: str | None) -> None:
    """Stop the command's unfinished tasks: cancel those not started, set ``stop_event`` (tasks that poll it end
    after their current batch and release their run folders) and wait up to STOP_WAIT_SECONDS for the running ones;
    cancel those still running then (their results are not waited for). The queued tasks were counted as stopping
    and left to start after the event, each building its data and model only to stop at once."""
    import distributed
    if not futures:
        return
    if stop_event is not None:
        executing = executing_keys(client)  # None: every task is taken for running
        queued = [] if executing is None else [future for future in futures if future.key not in executing]
        client.cancel(queued)  # one a worker holds beyond its threads may start still: it ends at once (train_point)
        futures = futures if executing is None else [future for future in futures if future.key in executing]
        log.warning("Stopping %d running task(s) on the cluster (%s): each run ends after its current batch and keeps "
                    "its last completed epoch (waiting up to %d s; Ctrl-C again leaves them running)%s.", len(futures),
                    task_names(futures), STOP_WAIT_SECONDS,
                    f"; {len(queued)} queued task(s) cancelled" if queued else "")
        distributed.Event(stop_event, client=client).set()
        with contextlib.suppress(TimeoutError):  # raised, not returned, when some are still running
            distributed.wait(futures, timeout=STOP_WAIT_SECONDS, return_when="ALL_COMPLETED")
        futures = [future for future in futures if not future.done()]
    client.cancel(futures)  # the queued ones; Dask cannot end a task that already runs
    if futures and stop_event is not None:
        log.warning("%d run(s) did not stop within %d s and may still be running on the workers; their run folders "
                    "stay locked until they end: %s.", len(futures), STOP_WAIT_SECONDS, task_names(futures))


def task_names(futures: list[Any]) -> str:
    """The tasks' keys for a message, without their suffix of ``-`` and 12 hex digits (a grid's command, which keeps
    two commands' tasks apart on one scheduler; a probe fit's cache-key digest): a grid's
    ``train-<index>-<run folder>``, a probe job's ``probe-<position>-<layer>``, so a user knows which stopped."""
    return first_names([re.sub(r"-[0-9a-f]{12}$", "", str(future.key)) for future in futures], what="tasks")
