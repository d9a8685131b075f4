"""Ctrl-C and SIGTERM held back while a group of files is written (real signals to this process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from phd_lab.cli import guarded
from phd_lab.errors import RunStopped, Terminated
from phd_lab.interrupts import deferred_interrupts, raise_if_stop_requested, stop_requests
from tests.conftest import ROOT


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """A background job of a non-interactive shell (`make test` in CI) inherits SIGINT ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_inside_the_block_takes_effect_after_it(ctrl_c_as_in_a_terminal):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("first file")  # the signal has arrived; the group is still written whole
            done.append("second file")
    assert done == ["first file", "second file"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigterm_inside_the_block_ends_the_command_after_it(capsys):
    done = []

    def body() -> int:
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("file")
        done.append("after the block")  # never reached: the deferred SIGTERM ends the command here
        return 0

    assert guarded(body) == 128 + signal.SIGTERM
    assert done == ["file"] and "terminated (SIGTERM)" in capsys.readouterr().err


def test_of_two_signals_in_the_block_the_first_one_noted_takes_effect(ctrl_c_as_in_a_terminal, capsys):
    """A SIGTERM (a batch system's time limit) followed by a Ctrl-C ends the command as terminated, not as
    interrupted: the first signal noted is the one raised after the block."""
    def body() -> int:
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        return 0

    assert guarded(body) == 128 + signal.SIGTERM
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_request_is_asked_once_per_interval_and_only_inside_its_block():
    """A task on a Dask worker asks the scheduler whether its command was stopped: at most once per interval
    (one round trip each), never outside a ``stop_requests`` block, and an inner block gives the outer one's
    question back when it ends."""
    asked = []

    def requested() -> bool:
        asked.append("asked")
        return len(asked) > 1

    raise_if_stop_requested()  # outside any block: nothing to ask
    with stop_requests(requested, poll_seconds=3600):
        raise_if_stop_requested()  # asked: not stopped
        raise_if_stop_requested()  # within the interval: not asked again
    assert asked == ["asked"]
    with stop_requests(requested, poll_seconds=0):
        with pytest.raises(RunStopped, match="resumes from there"):
            raise_if_stop_requested()  # asked again: stopped
    raise_if_stop_requested()  # after the block: nothing asked, nothing raised
    assert asked == ["asked", "asked"]

    with stop_requests(lambda: True, poll_seconds=0):
        with stop_requests(lambda: False, poll_seconds=0):
            raise_if_stop_requested()
        with pytest.raises(RunStopped):
            raise_if_stop_requested()  # the outer block's question is back


def test_a_command_leaves_the_sigterm_handler_as_it_found_it():
    """In a process that calls commands in turn (a notebook, a workflow), SIGTERM after a command must act as
    before it, not raise the command's ``Terminated`` in whatever runs next."""
    def handler(signum: int, frame: object) -> None:
        pass

    before = signal.signal(signal.SIGTERM, handler)
    try:
        assert guarded(lambda: 0) == 0
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("stop, code, said", [(KeyboardInterrupt, 130, "interrupted; rerun"),
                                              (Terminated, 143, "terminated (SIGTERM); rerun")])
def test_a_stop_that_lands_in_a_compiled_module_s_import_ends_the_command_as_the_stop_does(stop, code, said, capsys):
    """A Ctrl-C that landed while the probe job first imported matplotlib (to draw a confusion matrix) came out of
    the import as "ImportError: initialization failed" raised from the KeyboardInterrupt, as compiled modules'
    initialisation reports it: the job stopped with that traceback and exit 1 (seen once in a suite run of
    test_probe_resume's Ctrl-C test). The body raises what such an import raises."""
    def body() -> int:
        try:
            raise stop()
        except KeyboardInterrupt as landed:
            raise ImportError("initialization failed") from landed

    assert guarded(body, "interrupted; rerun the same command") == code
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_an_import_error_not_raised_from_a_stop_is_not_taken_for_one():
    def body() -> int:
        try:
            raise ValueError("a broken build")
        except ValueError as cause:
            raise ImportError("initialization failed") from cause

    with pytest.raises(ImportError):
        guarded(body)


class _SignalledOnCleanUp:
    """Sends this process SIGTERM from ``__del__``, where Python swallows any exception (as it does in a
    DataLoader iterator's clean-up or a library's catch-all): the handler's ``Terminated`` never gets out."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(100))  # the handler runs at a bytecode boundary here, inside __del__


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed Terminated
def test_a_sigterm_something_swallowed_still_ends_the_command_at_the_next_batch(capsys):
    """A SIGTERM whose ``Terminated`` landed in a ``__del__`` was lost: the run trained on to its end and the
    command exited 0, so a batch system's time limit only stopped it with the SIGKILL after the grace period."""
    batches = []

    def body() -> int:
        _SignalledOnCleanUp()  # made and dropped at once: SIGTERM arrives inside its __del__
        for batch in range(3):
            raise_if_stop_requested()
            batches.append(batch)
        return 0

    assert guarded(body) == 128 + signal.SIGTERM
    assert batches == [] and "terminated (SIGTERM)" in capsys.readouterr().err

    def next_command() -> int:  # the same process goes on (a notebook): the SIGTERM was the last command's
        raise_if_stop_requested()
        return 0

    assert guarded(next_command) == 0


def test_a_framework_error_raised_from_a_ctrl_c_ends_the_command_as_the_ctrl_c_does(capsys):
    """Ctrl-C in a terminal reaches the probe job's workers too; a worker's KeyboardInterrupt that came back before
    the job's own was taken for its layer's failure ('The probe of layer ... failed: KeyboardInterrupt', exit 1)."""
    from phd_lab.errors import RunFailure

    def body() -> int:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as stop:
            raise RunFailure("The probe of layer 'features.1' failed: KeyboardInterrupt") from stop

    assert guarded(body, "interrupted; rerun") == 130
    err = capsys.readouterr().err
    assert "interrupted; rerun" in err and "failed" not in err


def test_a_probe_workers_ctrl_c_taken_for_its_layers_failure_is_logged_as_the_jobs_interruption(tmp_path):
    """guarded ends a framework error raised from a worker's Ctrl-C as the Ctrl-C (exit 130, 'interrupted'), but
    the run's probe.log said 'probe job failed' with the traceback of a failure, not that the job was
    interrupted and its layers cached."""
    from phd_lab.errors import RunFailure
    from phd_lab.probes.probe_log import ProbeLogs

    log = tmp_path / "probe.log"
    with pytest.raises(RunFailure):
        with ProbeLogs([log]):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as stop:
                raise RunFailure("The probe of layer 'features.1' failed: KeyboardInterrupt") from stop
    text = log.read_text(encoding="utf-8")
    assert "probe job interrupted (Ctrl-C); the layers fitted so far are cached" in text
    assert "probe job failed" not in text and "Traceback" not in text


_LOADER_STOPPED_BY_THE_JOB = """
import os, signal, sys
import torch
from torch.utils.data import Dataset
from phd_lab.cli import guarded
from phd_lab.data import make_bundle
from phd_lab.interrupts import raise_if_stop_requested

WHEN = sys.argv[1]


class Images(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        if WHEN == "mid-epoch" and index == 40 and torch.utils.data.get_worker_info() is not None:
            os.killpg(0, signal.SIGTERM)  # the batch system's SIGTERM to the whole job, the workers included
        return torch.zeros(1, 4, 4), index % 2


if WHEN == "while forking":  # SIGTERM to the job the moment a worker is forked, before it is set up
    os.register_at_fork(after_in_child=lambda: os.killpg(0, signal.SIGTERM))
bundle = make_bundle("images", Images(), Images(), Images(), num_classes=2, in_channels=1, resolution=4,
                     batch_size=4, seed=0, num_workers=2)


def body():
    for epoch in range(3):
        for images, labels in bundle.train:
            raise_if_stop_requested()
    return 0


sys.exit(guarded(body))
"""


@pytest.mark.parametrize("when", ["mid-epoch", "while forking"])
def test_sigterm_to_the_whole_job_stops_a_run_with_loader_workers_without_a_traceback(tmp_path, when):
    """SLURM's time limit or scancel sends SIGTERM to every process of the job: a DataLoader worker died by it and
    the loader raised 'DataLoader worker (pid N) is killed by signal: Terminated' in the run's process, and a
    worker forked at that moment ran the run's own handler; both printed tracebacks while the run stopped."""
    script = tmp_path / "job.py"
    script.write_text(_LOADER_STOPPED_BY_THE_JOB)
    result = subprocess.run([sys.executable, str(script), when], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "terminated (SIGTERM)" in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


_TERMINATED_IN_A_FORWARD_PASS = '''import os
import signal

import torch
from torch import nn


class Small(nn.Module):
    """A small CNN that sends its own process SIGTERM in its first forward pass without gradients on real tensors
    when TERMINATE_IN_FORWARD is set: in a run of a trained model with the step 'project' only, the step's."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        if not torch.is_grad_enabled() and x.device.type != "meta" and os.environ.pop("TERMINATE_IN_FORWARD", None):
            os.kill(os.getpid(), signal.SIGTERM)  # a batch system's time limit, in the middle of the step
        return self.fc(self.features(x).flatten(1))


def small(*, num_classes, in_channels=3):
    return Small(num_classes, in_channels)
'''


def test_sigterm_during_the_project_step_stops_without_a_traceback_and_the_rerun_projects(tmp_path):
    """A batch system's time limit during post-processing (the step 'project' of a trained run) must stop the
    command as during training: exit 143, the message, no traceback, no half-written projections; the rerun
    computes them."""
    from phd_lab.cli import main_cli
    from tests.conftest import run_folders, run_main, run_name, write_config
    (tmp_path / "small_models.py").write_text(_TERMINATED_IN_A_FORWARD_PASS)
    common = dict(epoch=1, cpu_threads=1, track_saturation=False, model="small", model_args={},
                  registries={"models": str(tmp_path / "small_models.py")})
    assert main_cli(["--config", str(write_config(tmp_path, **common)), "--no-progress", "-q"]) == 0
    project = {"name": "project", "deltas": [0.9], "random_control": False}
    config = write_config(tmp_path, **common, post_processing=[project])
    stopped = run_main("--config", str(config), "--no-progress", "-q", env={"TERMINATE_IN_FORWARD": "1"})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "terminated (SIGTERM)" in stopped.stderr and "Traceback" not in stopped.stderr, stopped.stderr
    [folder] = run_folders(tmp_path / "logs")
    said = (folder / f"{run_name(folder)}.log").read_text()
    assert said.index("Post-processing step project") < said.index("Run interrupted (SIGTERM)"), said
    assert not [path.name for path in folder.iterdir() if path.name.startswith(("projections", "."))
                and path.name != ".lock"], sorted(path.name for path in folder.iterdir())
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert (folder / "projections.csv").is_file() and (folder / "projections.png").is_file()


def test_an_error_of_a_clean_up_while_a_ctrl_c_unwound_ends_the_command_as_the_ctrl_c_does(
        ctrl_c_as_in_a_terminal, capsys):
    """A clean-up that fails while a Ctrl-C unwinds (a DataLoader's workers shut down, a pool stopped) raises its
    own error with the KeyboardInterrupt as its context, not its cause: the command ended with that error's
    traceback and exit 1."""
    def body() -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(100))  # the KeyboardInterrupt lands here
        finally:
            raise RuntimeError("DataLoader worker (pid 4242) exited unexpectedly")

    assert guarded(body, "interrupted; rerun") == 130
    err = capsys.readouterr().err
    assert "interrupted; rerun" in err and "Traceback" not in err


def test_an_error_that_replaced_a_ctrl_c_on_purpose_is_not_taken_for_it(ctrl_c_as_in_a_terminal):
    """``raise ... from None`` inside the handling of a Ctrl-C says the new error stands alone."""
    def body() -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(100))
        except KeyboardInterrupt:
            raise ValueError("a replacement") from None
        return 0

    with pytest.raises(ValueError):
        guarded(body)


def test_a_ctrl_c_as_a_run_reads_probe_results_that_came_while_it_was_held_stops_the_run(tmp_path, capsys,
                                                                                          monkeypatch):
    """A run reads again the probe results that a probe job wrote while the run held its folder, drawing its
    figure: a Ctrl-C that a compiled module's import turned into its ImportError there was a warning ('could not
    be refreshed') and the run exited 0. The probe job's results arrive as the run logs that it finished (a
    handler writes them then); ``draw_run_figure`` raises what such an import raises once they are there (the
    real Ctrl-C cannot be aimed at an import: the analysis runs no code of the user's)."""
    import logging

    from phd_lab.config_file import load_config_file
    from phd_lab.grid import Grid
    from phd_lab.plots import run_figure
    from phd_lab.probes.outputs import CSV_COLUMNS
    from phd_lab.rundir import RunDir
    from tests.conftest import interrupted_import, main_in_process, write_config

    config = write_config(tmp_path, epoch=1, cpu_threads=1, post_processing=["analysis"])
    run = RunDir.for_run(Grid(load_config_file(config))[0])

    class ProbeJobFinishes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Run ") and " finished: " in record.getMessage():
                run.probe_csv.write_text(",".join(CSV_COLUMNS) + "\n")

    drawn = run_figure.draw_run_figure
    monkeypatch.setattr(run_figure, "draw_run_figure", lambda *args, **kwargs: interrupted_import()
                        if run.probe_csv.exists() else drawn(*args, **kwargs))
    handler = ProbeJobFinishes(logging.INFO)
    logging.getLogger("phd_lab.executor").addHandler(handler)
    try:
        code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    finally:
        logging.getLogger("phd_lab.executor").removeHandler(handler)
    assert "its analysis reads them now" in err  # the refresh ran
    assert code == 130 and "could not be refreshed" not in err and "Traceback" not in err, err


def test_a_ctrl_c_as_dask_is_first_imported_stops_the_command_instead_of_asking_for_the_dask_extra(tmp_path):
    """``--scheduler`` imports distributed first (a second or more, with compiled modules): a Ctrl-C that such an
    import turned into "ImportError: initialization failed" was taken for a Python without Dask, so the command
    said to install the Dask extra and exited 2. A real probe job whose ``import distributed`` raises what such an
    import raises (a stand-in module first on its path)."""
    from tests.probe_latents import blob_layers, make_latents

    (tmp_path / "stand-in").mkdir()
    (tmp_path / "stand-in" / "distributed.py").write_text(
        "try:\n"
        "    raise KeyboardInterrupt  # where a Ctrl-C lands in a compiled module's initialisation\n"
        "except KeyboardInterrupt as landed:\n"
        "    raise ImportError('initialization failed') from landed\n")
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    done = subprocess.run([sys.executable, "probe_main.py", "--latents", str(latents), "--scheduler", "local:1",
                           "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path / 'stand-in'}{os.pathsep}{ROOT}"})
    assert done.returncode == 130, done.stderr
    assert "interrupted" in done.stderr and "Dask extra" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["main.py"], ["probe_main.py"], ["-m", "phd_lab", "train"],
                                     ["-m", "phd_lab", "probe"]], ids=" ".join)
def test_a_ctrl_c_while_a_command_imports_its_modules_ends_it_without_a_traceback(tmp_path, command):
    """A Ctrl-C in the first tenth of a second, while main.py, probe_main.py or ``python -m phd_lab train|probe``
    imported phd_lab's modules or read its options, ended the command with a KeyboardInterrupt traceback, before its
    own handling of Ctrl-C began."""
    from tests.conftest import sigint_as_in_a_terminal, write_config
    config = write_config(tmp_path, epoch=1, post_processing=[])
    process = subprocess.Popen([sys.executable, "-X", "importtime", *command, "--config", str(config), "-q"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=sigint_as_in_a_terminal)
    try:
        for line in process.stderr:  # -X importtime: a line as each module's import ends
            if line.rstrip().endswith("phd_lab.console"):  # the first of phd_lab.cli's: the others are to come
                os.killpg(process.pid, signal.SIGINT)
                break
        rest = process.stderr.read()
        process.wait(60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    said = "".join(line for line in rest.splitlines(keepends=True) if not line.startswith("import time:"))
    assert process.returncode == 130, said
    assert "Traceback" not in said and "KeyboardInterrupt" not in said and said.startswith("interrupted"), said


@pytest.mark.parametrize("progress", [["--no-progress"], []], ids=["no-progress", "bars"])
def test_a_command_has_ended_tqdm_s_monitor_thread_before_the_interpreter_s_exit(tmp_path, progress):
    """A disabled bar (--no-progress) left tqdm's daemon monitor thread running into the interpreter's teardown,
    where tqdm wakes it: that race now and then aborted a probe job's Ctrl-C with 'Fatal Python error:
    PyThreadState_Get' (exit status -6 instead of 130) on a busy CI machine."""
    from tests.probe_latents import blob_layers, make_latents
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    script = ("import sys, threading\n"
              "from phd_lab.entry import run_command\n"
              f"code = run_command('phd_lab.probes.cli', 'probe_cli', ['--latents', {str(latents)!r}, '-mp', '0', "
              f"*{progress!r}])\n"
              "print(sorted(thread.name for thread in threading.enumerate()))\n"
              "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "['MainThread']", done.stdout  # after the command's own lines


def _run_stand_in_command(tmp_path, source: str, **options) -> subprocess.CompletedProcess:
    """``source`` as module ``stand_in_command``, whose ``command()`` a real process runs as main.py runs its
    command (``run_command``)."""
    (tmp_path / "stand-in").mkdir()
    (tmp_path / "stand-in" / "stand_in_command.py").write_text(source)
    script = "import sys\nfrom phd_lab.entry import run_command\nsys.exit(run_command('stand_in_command', 'command'))\n"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path / 'stand-in'}{os.pathsep}{ROOT}"}, **options)


def _guarded_stand_in(body: str) -> str:
    """The source of a stand-in command that runs the lines ``body`` (indented as a function's) under the commands'
    guard, with ``Lock``, an object a weakref callback can be hung on, as importlib's module lock is."""
    return ("import signal, threading, weakref\n"
            "from phd_lab.cli import guarded\n"
            "class Lock:\n"
            "    pass\n"
            "def body():\n"
            f"{body}"
            "def command():\n"
            "    return guarded(body, interrupted='interrupted')\n")


def test_a_ctrl_c_that_lands_in_a_callback_python_cannot_raise_from_still_stops_the_command(tmp_path):
    """A Ctrl-C that landed while a weakref callback ran (importlib's module lock, at the end of every import, 'cb')
    was printed as 'Exception ignored in: ... KeyboardInterrupt' with a traceback and dropped: a probe job's Ctrl-C
    test failed on busy cores, and a command that got the SIGINT alone went on. A stand-in command whose SIGINT
    arrives while such a callback runs, and which then waits for up to a minute."""
    from tests.conftest import sigint_as_in_a_terminal
    done = _run_stand_in_command(
        tmp_path,
        "import signal, threading, weakref\n"
        "class Lock:\n"
        "    pass\n"
        "def command():\n"
        "    lock = Lock()\n"
        "    ref = weakref.ref(lock, lambda ref: signal.raise_signal(signal.SIGINT))  # a Ctrl-C as it runs\n"
        "    del lock\n"
        "    threading.Event().wait(60)  # the command waits, as a probe job for its workers' results\n"
        "    return 0\n", preexec_fn=sigint_as_in_a_terminal)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted\n", done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_sent_again_from_a_callback_is_sent_until_its_handler_runs(tmp_path, signum):
    """The stop that a callback dropped was sent again once: where that copy landed just before the main thread began a
    blocking wait (after its last check for signals), the handler ran only when the wait ended, a minute later in a CI
    run, or never where the wait has no end (a probe job waiting for its workers). Here the copy is taken away for
    certain: the signal is blocked in the main thread, its handler raises in a callback, and the copy is taken off the
    queue (``sigtimedwait``) before the signal is unblocked and the command waits. The next copy stops it."""
    from tests.conftest import sigint_as_in_a_terminal
    done = _run_stand_in_command(tmp_path, _guarded_stand_in(
        f"    signum = signal.Signals({int(signum)})\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signum})\n"
        "    lock = Lock()\n"
        "    ref = weakref.ref(lock, lambda ref: signal.getsignal(signum)(signum, None))  # its handler raises here\n"
        "    del lock\n"
        "    assert signal.sigtimedwait({signum}, 30) is not None  # the copy sent again, lost\n"
        "    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})\n"
        "    threading.Event().wait(20)\n"
        "    return 0\n"), preexec_fn=sigint_as_in_a_terminal)
    assert done.returncode == 128 + signum, done.stderr
    assert done.stderr == ("interrupted\n" if signum == signal.SIGINT else "terminated (SIGTERM)\n"), done.stderr


def test_a_sigterm_that_lands_in_a_callback_python_cannot_raise_from_still_stops_the_command(tmp_path):
    """The same for SIGTERM: its ``Terminated`` was dropped in the callback, and the commands' handler, which leaves
    a SIGTERM alone while one is noted, let a second one pass too; only training raised the noted one again (at its
    next batch), a probe job went on. A stand-in command under the commands' guard, which then waits up to a minute."""
    started = time.monotonic()
    done = _run_stand_in_command(tmp_path, _guarded_stand_in(
        "    lock = Lock()\n"
        "    ref = weakref.ref(lock, lambda ref: signal.raise_signal(signal.SIGTERM))  # SIGTERM as it runs\n"
        "    del lock\n"
        "    threading.Event().wait(60)  # the command waits, as a probe job for its workers' results\n"
        "    return 0\n"))
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr == "terminated (SIGTERM)\n", done.stderr
    assert time.monotonic() - started < 50  # not after the minute's wait
