"""A FIFO (mkfifo) where phd-lab reads one of its own files: opening it for reading waits for a writer for ever, so
each command is run as a real process with a timeout, which the old code ran into."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.analysis_fixtures import write_run
from tests.conftest import ROOT
from tests.probe_latents import make_latents

TIMEOUT = 60  # a hang fails here; the commands take a few seconds


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _fifo_at(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def _said(err: str, fifo: Path) -> None:
    """The one paragraph that names the FIFO as what it is and the rm that clears it, with no traceback."""
    err = " ".join(err.split())
    assert f"'{fifo}' is a FIFO (named pipe), not a regular file: phd-lab did not make it" in err, err
    assert f"Remove it (rm {fifo}) and run the same command again" in err and "Traceback" not in err, err


def test_a_fifo_at_the_manifest_of_a_latents_folder_is_named_by_the_probe_command(tmp_path):
    """probe_main.py --latents DIR with a FIFO at DIR/manifest.json said that the extraction had not finished
    ('has no manifest.json') and sent the user to extract again. Now the FIFO is named, with the rm (exit 2)."""
    _, latents = make_latents(tmp_path)
    fifo = _fifo_at(latents / "manifest.json")
    done = _run("probe_main.py", "--latents", str(latents), "--no-progress", "-q")
    assert done.returncode == 2, done.stderr[-2000:]
    _said(done.stderr, fifo)
    assert "unfinished" not in done.stderr and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_fifo_at_a_runs_manifest_is_named_by_the_probe_command_of_its_config(tmp_path):
    """probe_main.py --config: a run whose latents folder has a FIFO at its manifest was said to be an extraction
    that did not finish. Now the FIFO is named, with the rm (exit 2)."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="unprobed")
    fifo = _fifo_at(rundir.latents() / "manifest.json")
    done = _run("probe_main.py", "--config", str(rundir.config), "--no-progress", "-q")
    assert done.returncode == 2, done.stderr[-2000:]
    _said(done.stderr, fifo)
    assert "did not finish" not in done.stderr


@pytest.mark.parametrize("name", ["analysis.json", "probe_performances.csv", "receptive_field.csv"])
def test_the_report_does_not_wait_on_a_fifo_in_a_run_folder(tmp_path, name):
    """The report read analysis.json (the previous analysis) and hashed the tables its figure plots with
    Path.read_bytes: a FIFO at any of them hung `python -m phd_lab report` for good. Now a FIFO there is read as
    no file, and the report is written."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    _fifo_at(rundir.root / name)
    out = tmp_path / "report.html"
    done = _run("-m", "phd_lab", "report", str(tmp_path / "logs"), "--out", str(out), "--no-progress", "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file()


def test_the_readers_of_framework_json_files_do_not_wait_on_a_fifo(tmp_path):
    """read_json_object (the latents manifest and the extraction's marker as the training command reads them, a
    previous analysis) takes a FIFO for no file, as it takes an unreadable one; read_json names it."""
    fifo = _fifo_at(tmp_path / ".extraction-in-progress.json")
    code = ("import sys; from phd_lab import atomic\n"
            "assert atomic.read_json_object(sys.argv[1]) is None\n"
            "try:\n    atomic.read_json(sys.argv[1])\n"
            "except OSError as error:\n    print(type(error).__name__, error)\n")
    done = _run("-c", code, str(fifo))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("NotARegularFile "), done.stdout
    _said(done.stdout, fifo)


def _report(logs: Path, *out: str) -> subprocess.CompletedProcess:
    return _run("-m", "phd_lab", "report", str(logs), *out, "--no-progress", "-q")


def test_a_fifo_at_the_report_page_is_refused_not_waited_on(tmp_path):
    """The report opened the page at --out (by default LOGS_DIR/report.html) to see whether it wrote it: a FIFO
    there hung `python -m phd_lab report` for good. Now it is no page of the report's, refused (exit 2) and kept."""
    write_run(tmp_path / "logs", width=0.25, stage="full")
    fifo = _fifo_at(tmp_path / "logs" / "report.html")
    done = _report(tmp_path / "logs")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "exists and is no phd-lab report" in " ".join(done.stderr.split()) and "Traceback" not in done.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_fifo_at_a_repetition_table_of_the_report_is_refused_not_waited_on(tmp_path):
    """The report read the first line of each table of repeated runs beside its page: a FIFO there hung it."""
    write_run(tmp_path / "logs", width=0.25, stage="full")
    fifo = _fifo_at(tmp_path / "r_saturation_stability.csv")
    done = _report(tmp_path / "logs", "--out", str(tmp_path / "r.html"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "is no table of a phd-lab report" in " ".join(done.stderr.split()) and "Traceback" not in done.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not (tmp_path / "r.html").exists()


def test_a_fifo_at_the_log_of_a_stopped_run_is_no_log(tmp_path):
    """The status of a stopped run reads the tail of its log for the error that ended it (last_failure): a FIFO at
    the log hung the report (and main.py --dry-run) for good. Now it is read as no log, and the report is written."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="running")
    _fifo_at(rundir.log)
    out = tmp_path / "report.html"
    done = _report(tmp_path / "logs", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file()


def test_a_fifo_at_a_latents_array_is_named_by_the_probe_command(tmp_path):
    """probe_main.py said that a layer's .npy file that is a FIFO 'does not exist' and sent the user to extract
    again; now the FIFO is named, with the rm (exit 2), and never opened."""
    _, latents = make_latents(tmp_path)
    fifo = _fifo_at(sorted(latents.glob("*.npy"))[0])
    done = _run("probe_main.py", "--latents", str(latents), "--no-progress", "-q")
    assert done.returncode == 2, done.stderr[-2000:]
    _said(done.stderr, fifo)
    assert "does not exist" not in done.stderr


@pytest.mark.parametrize("planted", ["probe_performances.csv", "probe_confusion/001-*.npy", ".probe_cache/*/*.npy"])
def test_a_probe_job_run_again_does_not_wait_on_a_fifo_in_the_run_folder(tmp_path, planted):
    """probe_main.py run again compares the table and the confusion matrices in the run folder with its results and
    reads each layer's matrix from the probe cache: a FIFO at any of them hung it for good. Now the file is read as
    damaged (the cache names the FIFO), and the job writes its results again."""
    from phd_lab.probes.cli import probe_cli
    _, latents = make_latents(tmp_path)
    assert probe_cli(["--latents", str(latents), "-mp", "0", "--no-progress", "-q"]) == 0  # the first job: no FIFO yet
    fifo = _fifo_at(sorted(latents.parent.glob(planted))[0])
    done = _run("probe_main.py", "--latents", str(latents), "--no-progress", "-v")
    assert done.returncode == 0, done.stderr[-2000:]
    if planted.startswith(".probe_cache"):
        assert f"its confusion matrix {fifo.name} cannot be read: it is a FIFO (named pipe)" in done.stderr
    else:
        assert fifo.is_file()  # written again, in the FIFO's place


def test_a_fifo_at_a_runs_checkpoint_is_named_by_the_training_command(tmp_path):
    """main.py read the checkpoint of a run it resumes (and --dry-run peeked at it) with open(): a FIFO there hung
    both for good. Now --dry-run reads it as no checkpoint, and the run refuses it with the rm (exit 2), leaving it
    where it is rather than setting it aside as a damaged checkpoint."""
    import json
    rundir = write_run(tmp_path / "logs", width=0.25, stage="running")
    fifo = _fifo_at(rundir.checkpoint)
    config = {key: value for key, value in json.loads(rundir.config.read_text()).items() if key != "_meta"}
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(config))
    dry = _run("main.py", "--config", str(grid), "--dry-run")
    assert dry.returncode == 0 and "stopped 1/3 epochs" in dry.stdout, dry.stderr[-2000:]
    done = _run("main.py", "--config", str(grid), "--no-progress", "-q")
    assert done.returncode == 2, done.stderr[-2000:]
    _said(done.stderr, fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not list(rundir.root.glob("*.damaged"))


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts this process's descriptors in /proc/self/fd")
def test_a_refused_read_names_its_path_and_leaves_no_descriptor_open(tmp_path):
    """open_regular handed a folder's descriptor to os.fdopen, whose IsADirectoryError named the descriptor's number
    ('Is a directory: 7', so the report said 'analysis.json cannot be read: [Errno 21] Is a directory: 7') and left it
    open: each read of a folder at a run's file leaked one descriptor. Now the path is named and nothing is left."""
    from phd_lab import atomic
    from phd_lab.errors import NotARegularFile
    folder = tmp_path / "analysis.json"
    folder.mkdir()
    fifo = _fifo_at(tmp_path / "probe_performances.csv")
    (tmp_path / "linked.csv").symlink_to(fifo)
    before = _open_descriptors()
    for _ in range(3):
        with pytest.raises(IsADirectoryError) as refused:
            atomic.read_bytes(folder)
        assert str(refused.value) == f"[Errno 21] Is a directory: {str(folder)!r}"
        for path in (fifo, tmp_path / "linked.csv"):
            with pytest.raises(NotARegularFile, match="is a FIFO"):
                atomic.read_bytes(path)
        with pytest.raises(FileNotFoundError):
            atomic.read_bytes(tmp_path / "absent.json")
    assert _open_descriptors() == before


_LEASE_HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
def give_back(*_):
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    os._exit(0)
signal.signal(signal.SIGIO, give_back)
try:
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
except OSError as error:
    print("no lease", error, flush=True)
    sys.exit(0)
print("held", flush=True)
signal.pause()
"""


@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_SETLEASE"), reason="leases are Linux's")
def test_a_file_under_another_process_lease_is_read_once_the_lease_is_given_back(tmp_path):
    """A lease (an oplock a Samba server takes, a delegation of an NFS server) makes an open without waiting fail
    with EAGAIN, where open() waits for its holder to give it back: read_bytes raised BlockingIOError, so the report
    said the file could not be read and the training took its checkpoint for a failing file system. Now the file is
    opened again, waiting as open() does, and read whole."""
    from phd_lab import atomic
    table = tmp_path / "probe_performances.csv"
    table.write_bytes(b"index,layer\n0,conv\n")
    holder = subprocess.Popen([sys.executable, "-c", _LEASE_HOLDER, str(table)], stdout=subprocess.PIPE, text=True)
    try:
        said = holder.stdout.readline()
        if not said.startswith("held"):
            pytest.skip(f"this file system gives no lease: {said.strip()}")
        assert atomic.read_bytes(table) == b"index,layer\n0,conv\n"
        assert holder.wait(timeout=TIMEOUT) == 0  # it gave the lease back when asked
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("registry", ["fifo", "/dev/null"])
def test_a_registry_module_that_is_no_regular_file_is_named_as_what_it_is(tmp_path, registry):
    """A FIFO (or a device) given as a registry module file was said not to exist, though `ls` shows it there."""
    import json

    from tests.conftest import TINY
    module = str(_fifo_at(tmp_path / "my_models.py")) if registry == "fifo" else registry
    config = tmp_path / "exp.json"
    config.write_text(json.dumps({**TINY, "logs_dir": str(tmp_path / "logs"), "registries": {"models": module}}))
    done = _run("main.py", "--config", str(config), "--no-progress")
    err = " ".join(done.stderr.split())
    what = "a FIFO (named pipe)" if registry == "fifo" else "a character device"
    assert done.returncode == 2, err
    assert f"the key 'registries': The models registry module {module!r} is {what}, not a regular file" in err, err
    assert "does not exist" not in err and "Traceback" not in err and not (tmp_path / "logs").exists()


def test_a_fifo_at_the_probe_log_is_refused_not_waited_on(tmp_path):
    """The probe job appends to <run folder>/probe.log: opening a FIFO there for writing waited for a reader for ever,
    so the job hung without a word before its first fit. Now the FIFO is named, with the rm (exit 2), and no result
    is written."""
    _, latents = make_latents(tmp_path)
    fifo = _fifo_at(latents.parent / "probe.log")
    done = _run("probe_main.py", "--latents", str(latents), "-mp", "0", "--no-progress", "-q")
    assert done.returncode == 2, done.stderr[-2000:]
    _said(done.stderr, fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not list(latents.parent.glob("probe_performances*")) and not (latents.parent / "probe_confusion").exists()
