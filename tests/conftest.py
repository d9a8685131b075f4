"""Shared fixtures: tiny configs on the embedded Digits data, and helpers to run main.py."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from phd_lab.environment import THREAD_VARIABLES

# `make test` runs two test processes on two cores, and torch, OpenMP and OpenBLAS would each start one thread per
# core in every process (also in each main.py they start): twice as many busy threads as cores. With one thread
# each the suite took 808 s instead of 1,000 s on a 2-core VM (user CPU 23.6 instead of 29.9 minutes). Set before
# pandas loads NumPy's BLAS; a test that needs more threads says so (``cpu_threads``), and a value the developer
# exported wins.
for _variable in THREAD_VARIABLES:
    os.environ.setdefault(_variable, "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "model": "vgg11",
    "model_args": {"width": 0.0625},
    "dataset": "Digits",
    "resolution": 16,
    "epoch": 2,
    "batch_size": 128,
    "optimizer": "adam",
    "optimizer_args": {"lr": 0.003},
    "metrics": ["Accuracy"],
    "seed": 7,
    "device": "cpu",
}


def flat(text: str) -> str:
    """Messages are wrapped at 110 columns; compare them as one line."""
    return " ".join(text.split())


def write_config(folder: Path, name: str = "exp.json", **overrides: Any) -> Path:
    """A tiny Digits config in ``folder`` with logs under ``folder/logs``."""
    config = {**TINY, "logs_dir": str(folder / "logs"), "data_dir": str(folder / "data"), **overrides}
    config = {k: v for k, v in config.items() if v is not None}
    path = folder / name
    path.write_text(json.dumps(config, indent=2))
    return path


def checkpoint_state(epoch: int, **entries: Any) -> dict[str, Any]:
    """The smallest state a CheckpointStore loads as a checkpoint of ``epoch`` completed epochs (every entry a
    resume reads, empty), for tests of the store itself."""
    return {"epoch": epoch, "model": {}, "optimizer": {}, "scheduler": None, "rng": {}, "history": [{}] * epoch,
            **entries}


def run_main(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python main.py ARGS`` in a real subprocess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll until ``predicate()`` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the training process")


def main_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``python main.py ARGS`` in this process: exit code and stderr (log lines included). Where a test does
    not kill or interrupt the process, this spares the seconds a subprocess spends importing torch."""
    from phd_lab.cli import main_cli
    capsys.readouterr()
    code = main_cli(list(args))
    return code, capsys.readouterr().err


def probe_job_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``python probe_main.py ARGS`` in this process, as ``main_in_process`` is main.py's: exit code and stderr."""
    from phd_lab.probes.cli import probe_cli
    capsys.readouterr()
    code = probe_cli(list(args))
    return code, capsys.readouterr().err


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` of a process a test interrupts with SIGINT: a command started in the background by a
    non-interactive shell (a CI script) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt; a terminal's foreground command, which Ctrl-C reaches, has the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ready_pool_workers(process: subprocess.Popen, count: int, timeout: float = 90) -> list[int]:
    """The pids of ``count`` spawned pool workers of ``process`` (``phd_lab.worker_processes``) that SIGINT ends:
    their initializer started their second thread after it took SIGINT from Python's KeyboardInterrupt handler
    (which BLAS threads started by an import alone do not show). Polls /proc (Linux)."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{count} pool worker(s) never became ready"
        ready = [pid for pid in spawned_children(process.pid) if pool_worker_ready(pid)]
        if len(ready) >= count:
            return ready[:count]
        time.sleep(0.02)


def pool_worker_ready(pid: int) -> bool:
    """Whether the pool worker ``pid`` has run its initializer (SIGINT ends it; see ``ready_pool_workers``)."""
    return _threads(pid) >= 2 and not _catches_sigint(pid)


def _catches_sigint(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGINT (the SigCgt mask of /proc/PID/status); True while it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    return True


def spawned_children(pid: int) -> list[int]:
    """The spawned ``multiprocessing`` children of ``pid`` (pool workers, a local Dask cluster's workers, not the
    resource tracker), read from /proc: unlike ``multiprocessing.active_children``, this reaps none of them (a
    pool's own thread must see one die). Every thread's children count: a Dask nanny spawns its worker from a
    thread of its own."""
    children = []
    with contextlib.suppress(OSError):
        for thread in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                children += [int(child) for child in (thread / "children").read_text().split()]
    return [child for child in children if _cmdline(child).find(b"spawn_main") >= 0]


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def _threads(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/task"))
    return 0


def interrupted_import() -> None:
    """Raise what a compiled module's import raises when a Ctrl-C lands in it (matplotlib's, seen in the probe job):
    "ImportError: initialization failed" raised from the KeyboardInterrupt. A forward pass that calls it stands for
    one that Ctrl-C stopped so; the framework's catch-alls must stop the command on it, not take it for a failure."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as landed:
        raise ImportError("initialization failed") from landed


def file_size_limit(limit: int):
    """``preexec_fn`` standing for a disk that fills up: in the process that calls it, a write that takes a file
    beyond ``limit`` bytes fails with EFBIG (an OSError, as ENOSPC would) instead of killing it by SIGXFSZ. Only
    the soft limit is set, so a test may also call it in its own process and restore the limit after."""
    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return limit_file_size


def refused_flock(error: int, operation: int | None = None):
    """``preexec_fn`` standing for a file system that refuses locks (an NFS mount without its lock service: ENOLCK):
    in the process that calls it, every ``flock`` system call (of ``operation`` alone, ``fcntl.LOCK_UN`` say, where
    given) fails with ``error``, by the kernel (a seccomp filter, which the process keeps for good). Skips the test
    on a machine whose ``flock`` call number is not known here."""
    import platform
    number = {"x86_64": 73, "aarch64": 32}.get(platform.machine())
    if number is None:
        pytest.skip(f"the flock system call's number on {platform.machine()} is not known to this test")

    def refuse() -> None:
        import ctypes
        # classic BPF: load the call number; flock -> SECCOMP_RET_ERRNO | error, anything else -> SECCOMP_RET_ALLOW
        program = [(0x20, 0, 0, 0), (0x15, 0, 1, number), (0x06, 0, 0, 0x00050000 | error), (0x06, 0, 0, 0x7fff0000)]
        if operation is not None:  # flock -> load its second argument (at byte 24); operation -> error, else allow
            program[1:2] = [(0x15, 0, 3, number), (0x20, 0, 0, 24), (0x15, 0, 1, operation)]
        code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *step) for step in program))

        class Program(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(Program(len(program), ctypes.cast(
                code, ctypes.c_void_p))), 0, 0):  # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with the filter
            os._exit(99)
    return refuse


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """``folder`` made a real tmpfs disk of ``size`` (``"1m"``, ``"256k"``) for the block, unmounted after it; the
    test is skipped where mounting needs a root this process lacks."""
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def run_folders(logs: Path) -> list[Path]:
    return sorted(p.parent for p in logs.rglob("*_config.json"))


def run_name(folder: Path) -> str:
    [config] = folder.glob("*_config.json")
    return config.name[: -len("_config.json")]


def read_metrics(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / f"{run_name(folder)}.csv")


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def single_thread():
    """Tiny models run fastest single-threaded, especially on a shared 2-core machine."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The longest files first, each started on its own worker, so that no long file is left for the end of a parallel
# run (pytest-xdist's default order puts the files with the fewest tests last: the one-test demo file then ran alone
# at the end). Used with `--dist loadfile --no-loadscope-reorder` (the Makefile's test command). A worker takes the
# next file in this order when it is almost idle, so every file of more than about 15 s is listed, the longest first
# (seconds of worker time in a `-n 2` run of session 66, after its trims of test_fault_injection, test_bad_input and
# others): the files left for the end, in alphabetical order, are then short.
LONGEST_FILES_FIRST = ("test_distributed.py", "test_recovery.py", "test_probe_job.py", "test_report.py",
                       "test_reproduction.py", "test_probe_resume.py", "test_determinism.py", "test_runs.py",
                       "test_thesis_configs.py", "test_report_figures.py", "test_repetitions.py",
                       "test_fifo_reads.py", "test_datasets.py", "test_latents_sets.py", "test_demo_tail.py",
                       "test_extraction.py", "test_config_edge_inputs.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A test's captured output and log records in its report with names that are no UTF-8 written as escapes
    (``\\udcXX``): many tests give the framework such names on purpose, and pytest-xdist cannot send a report holding
    one from its worker ('strings must be utf-8 encodable', an INTERNALERROR that ended the whole run where an
    earlier test had left a logger at INFO, so that the records naming the file were captured)."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for title, text in report.sections]
