"""The log lines a researcher reads later as evidence of what a run did: time stamps that say their time zone."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


@pytest.fixture
def india_time(monkeypatch):
    """A process in a time zone of its own (UTC+05:30): the offset its log lines must carry."""
    monkeypatch.setenv("TZ", "IST-05:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_log_file_and_console_lines_carry_their_utc_offset(tmp_path, india_time, capsys):
    """Lines read "2026-12-03 16:48:50,264 INFO ...": a run resumed on a node in another time zone (or read on
    another machine) had times that said nothing of where they were taken, so its attempts could not be ordered."""
    from phd_lab.cli import command_logging
    from phd_lab.log_file import LogFile
    handler = LogFile(tmp_path / "run.log")
    with command_logging():
        logging.getLogger().addHandler(handler)
        try:
            logging.getLogger("phd_lab.test").info("hello")
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
    assert re.fullmatch(STAMP + r"\+0530 INFO phd_lab.test: hello\n", (tmp_path / "run.log").read_text())
    assert re.search("^" + STAMP + r"\+0530 INFO phd_lab.test: hello$", capsys.readouterr().err, re.M)


def test_verbose_logs_the_frameworks_debug_messages_but_not_matplotlibs_font_search(tmp_path, capsys):
    """-v put matplotlib's font search (2,410 debug lines per process that drew a figure) into the console and every
    run's .log file, burying the framework's own debug messages. Its warnings still come through; a level the caller
    set on such a library (a notebook's) is kept, and the levels are as before once the command returns."""
    from matplotlib.font_manager import FontProperties, findfont

    from phd_lab.cli import command_logging
    from phd_lab.log_file import LogFile
    handler = LogFile(tmp_path / "run.log")
    logging.getLogger("PIL").setLevel(logging.DEBUG)
    try:
        with command_logging(verbosity=1):
            logging.getLogger().addHandler(handler)
            try:
                logging.getLogger("phd_lab.test").debug("kept")
                findfont(FontProperties(family=[f"no-such-font-{tmp_path.name}"]))  # not cached: searched afresh
                assert logging.getLogger("PIL").level == logging.DEBUG
            finally:
                logging.getLogger().removeHandler(handler)
                handler.close()
    finally:
        logging.getLogger("PIL").setLevel(logging.NOTSET)
    for text in ((tmp_path / "run.log").read_text(), capsys.readouterr().err):
        assert "DEBUG phd_lab.test: kept" in text
        assert "WARNING matplotlib.font_manager: findfont: Font family" in text
        assert "DEBUG matplotlib" not in text
    assert logging.getLogger("matplotlib").level == logging.NOTSET


@pytest.mark.parametrize("offset", ["+0530", ""])  # this version's lines, and those of logs before it
def test_the_failure_of_a_runs_last_attempt_is_read_from_lines_with_or_without_an_offset(tmp_path, offset):
    """The report reads a failed run's exception off its log: the record after the traceback ends it."""
    from phd_lab.analysis.run_tables import last_failure
    stamp = f"2026-12-03 16:48:50,264{offset}"
    log = tmp_path / "run.log"
    log.write_text(f"{stamp} INFO phd_lab.executor: Run folder {tmp_path}\n"
                   f"{stamp} ERROR phd_lab.run_guards: Run failed\nTraceback (most recent call last):\n"
                   f'  File "x.py", line 1, in f\nRuntimeError: planted\n'
                   f"{stamp} WARNING phd_lab.other: a later record\n")
    assert last_failure(log) == "RuntimeError: planted"


def test_each_attempt_of_a_run_opens_its_log_with_its_setup_and_a_finished_one_says_so(tmp_path, single_thread,
                                                                                         caplog):
    """A run's log was a list of epochs: no config, seed, process, machine, device or code version, nothing where
    a resumed (or rerun) attempt's lines began after a killed one's, and nothing that told a finished run from
    one killed after its last line."""
    import os
    import socket

    from phd_lab import __version__
    from phd_lab.experiment import Main
    from tests.conftest import write_config
    config = write_config(tmp_path, epoch=1, track_saturation=False, post_processing=[])
    for _ in range(2):  # trained, then rerun: its post-processing only
        with caplog.at_level(logging.INFO, logger="phd_lab"):
            [outcome] = Main(progress=False)(config)
        assert outcome.status == "finished"
    # a grid with nothing varying ended the console's 'Run 0 (1 of 1): <name>' line in two blanks
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("Run 0 (")] == [
        f"Run 0 (1 of 1): {outcome.name}"] * 2
    [log] = Path(outcome.folder).glob("*.log")
    lines = log.read_text(encoding="utf-8").splitlines()
    name = log.stem
    starts = [i for i, line in enumerate(lines) if f" INFO phd_lab.executor: Run {name} started from config " in line]
    ends = [i for i, line in enumerate(lines) if f"Run {name} finished: 1 of 1 epoch(s) trained (" in line
            and ", post-processing none; " in line]
    assert len(starts) == 2 and starts[0] == 0, lines
    assert len(ends) == 2 and starts[0] < ends[0] < starts[1] < ends[1] == len(lines) - 1, lines
    # the rerun trained nothing: its line said "1 of 1 epoch(s) trained" as the first attempt's did
    assert "(1 in this attempt)" in lines[ends[0]] and "(0 in this attempt)" in lines[ends[1]], lines
    seed = json.loads(next(Path(outcome.folder).glob("*_config.json")).read_text())["seed"]
    start = lines[starts[1]]
    for fact in (str(config), f"in process {os.getpid()} on {socket.gethostname()}", f"seed {seed}",
                 "device cpu (", "1 CPU thread(s)", f"phd-lab {__version__}", "torch ", "Python "):
        assert fact in start, (fact, start)


def test_a_probe_jobs_lines_in_probe_log_open_with_its_process_host_and_versions(tmp_path):
    """probe.log is appended by every job that probes the run (a killed one, its resume, a colleague's on another
    node); its start line named the command alone, so whose lines followed it could not be told."""
    import os
    import socket

    from phd_lab import __version__
    from phd_lab.environment import installed_version
    from phd_lab.probes.probe_log import FINISHED, ProbeLogs
    log = tmp_path / "probe.log"
    for _ in range(2):
        with ProbeLogs([log]):
            pass
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and FINISHED in lines[1] and FINISHED in lines[3], lines
    started = (f"probe job started in process {os.getpid()} on {socket.gethostname()} (phd-lab {__version__}, "
               f"scikit-learn {installed_version('scikit-learn', 'sklearn')}): ")
    assert started in lines[0] and started in lines[2], lines



def test_a_dask_tasks_warnings_reach_the_workers_console_with_time_level_and_run(capsys):
    """On a Dask worker (no console handler) logging's last resort printed a run's warnings as bare messages
    ("planted warning"): neither when nor for which of the grid's runs; those logged once the run's log file was
    open did not reach the console at all. train_point wraps its run in this; another thread's records (another
    task's, Dask's own) stay theirs."""
    import threading

    from phd_lab.distributed import run_warnings_on_worker_console
    other = logging.getLogger("elsewhere")
    with run_warnings_on_worker_console("vgg11-Digits-r8-bs64-e1"):
        logging.getLogger("my_models").warning("planted warning")
        logging.getLogger("my_models").info("an info line")  # the run's log file only
        thread = threading.Thread(target=other.warning, args=("another task's warning",))
        thread.start()
        thread.join()
    logging.getLogger("my_models").warning("after the task")
    said = capsys.readouterr().err.splitlines()
    assert re.fullmatch(STAMP + r"[+-]\d{4} WARNING my_models \(run vgg11-Digits-r8-bs64-e1\): planted warning",
                        said[0]), said
    assert not any("info line" in line or "(run" in line for line in said[1:]), said


WARNING_MODELS = '''
import logging

from torch import nn


def warns(*, num_classes, in_channels=3):
    """A tiny net whose factory warns, as a user's registry may."""
    logging.getLogger("my_models").warning("planted warning")
    return nn.Sequential(nn.Conv2d(in_channels, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, num_classes))
'''


def test_what_a_run_logs_while_building_its_data_and_model_is_in_its_log_file_too(tmp_path, single_thread):
    """A data set's or model factory's warnings are logged while the run builds them, before its log file is
    open: they reached the console (a batch job's .out) alone, and the run's .log never said them."""
    from phd_lab.experiment import Main
    from tests.conftest import write_config
    (tmp_path / "my_models.py").write_text(WARNING_MODELS)
    config = write_config(tmp_path, model="warns", model_args={}, registries={"models": str(tmp_path / "my_models.py")},
                          epoch=1, resolution=8, track_saturation=False, post_processing=[])
    [outcome] = Main(progress=False)(config)
    assert outcome.status == "finished"
    lines = next(Path(outcome.folder).glob("*.log")).read_text(encoding="utf-8").splitlines()
    planted = [i for i, line in enumerate(lines) if line.endswith(" WARNING my_models: planted warning")]
    folder = next(i for i, line in enumerate(lines) if "INFO phd_lab.executor: Run folder " in line)
    # the factory builds a model twice (the data's fit check, then the run's), each said once in the file, after
    # the lines that open the attempt, at the time it was logged
    assert planted == [folder + 1, folder + 2], lines


def test_the_data_line_names_the_data_folder_as_the_logged_config_does(tmp_path, monkeypatch, single_thread):
    """A relative data_dir was logged as given ("data_dir ./data"), relative to a working directory the log does not
    name, while the logged config names the folder absolutely: the two files disagreed on where the data was."""
    from phd_lab.experiment import Main
    from tests.conftest import write_config
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, data_dir="./data", epoch=1, resolution=8, track_saturation=False,
                          post_processing=[])
    [outcome] = Main(progress=False)(config)
    logged = json.loads(next(Path(outcome.folder).glob("*_config.json")).read_text())["data_dir"]
    assert logged == str(tmp_path / "data")
    text = next(Path(outcome.folder).glob("*.log")).read_text(encoding="utf-8")
    assert f"1 channel(s) at 8 px (data_dir {logged})\n" in text, text


def test_a_runs_log_file_takes_no_lines_of_another_thread_of_its_process(tmp_path, caplog):
    """A Dask worker with several threads runs one task while the next one checks its config and waits for its
    turn: the waiting run's "Another training run is in progress ..." (and its checks' warnings) went into the log
    file of the run that held the turn, as if that run had said them."""
    import threading

    from phd_lab.executor import RUN_TURN
    from phd_lab.run_guards import run_log

    def next_task() -> None:
        with RUN_TURN():
            pass

    caplog.set_level(logging.INFO)  # the root at INFO: run_log leaves the capturing handler at its level
    path = tmp_path / "run.log"
    waiting = threading.Thread(target=next_task)
    with RUN_TURN(), run_log(path):
        logging.getLogger("phd_lab.test").info("the run's own line")
        waiting.start()
        deadline = time.monotonic() + 30
        while "Another training run is in progress" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    waiting.join()
    assert "Another training run is in progress" in caplog.text
    text = path.read_text()
    assert "the run's own line" in text and "Another training run" not in text, text


FAILING_MODELS = '''
from torch import nn


class Boom(nn.Module):
    def forward(self, x):
        if self.training:
            raise RuntimeError("planted failure in forward")
        return x


def fails(*, num_classes, in_channels=3):
    """A tiny net that raises in training."""
    return nn.Sequential(nn.Conv2d(in_channels, 2, 3), Boom(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2, num_classes))
'''


def test_a_failed_runs_log_says_how_to_go_on_above_its_traceback(tmp_path, single_thread):
    """A run that failed in training logged "Run failed" and its traceback: the interrupted run's line said that the
    same command resumes it, the failed one's said nothing of what to do next. The report still reads the error."""
    from phd_lab.analysis.run_tables import last_failure
    from phd_lab.experiment import Main
    from tests.conftest import write_config
    (tmp_path / "my_models.py").write_text(FAILING_MODELS)
    config = write_config(tmp_path, model="fails", model_args={}, registries={"models": str(tmp_path / "my_models.py")},
                          epoch=1, resolution=8, track_saturation=False, post_processing=[])
    [outcome] = Main(progress=False)(config)
    assert outcome.status == "failed"
    [log] = Path(outcome.folder).glob("*.log")
    text = log.read_text(encoding="utf-8")
    assert (" ERROR phd_lab.run_guards: Run failed (the traceback follows); once its cause is fixed, the same command "
            "resumes it: training after the last completed epoch, post-processing keeping the steps that had "
            "finished\nTraceback (most recent call last):\n") in text, text
    assert last_failure(log) == "RuntimeError: planted failure in forward"


def test_counts_of_one_are_written_in_the_singular(tmp_path, caplog):
    """Lines said 'after 1 epochs', 'over 1 layers' and 'Extracted 1 layers (1 files per split)'; 'already
    finished 1 epochs' is tested with the runs (tests/test_runs.py)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from phd_lab.analysis.recommendations import _no_advice
    from phd_lab.analysis.run_tables import TrainingStatus
    from phd_lab.extraction import extract_latents
    assert TrainingStatus("failed", 1, None, False, reason="boom").label() == "failed after 1 epoch (boom)"
    assert TrainingStatus("failed", 2, None, False, reason="boom").label() == "failed after 2 epochs (boom)"
    assert "over 1 layer:" in _no_advice({"mean": 0.0, "layers": ["conv1"]}, tracked=True)["text"]
    assert "over 1 layer:" in _no_advice({"mean": 0.25, "layers": ["conv1"]}, tracked=True)["text"]
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    images = TensorDataset(torch.zeros(4, 1, 6, 6), torch.tensor([0, 1, 2, 0]))
    data = {"train": DataLoader(images, batch_size=2), "eval": DataLoader(images, batch_size=2)}
    with caplog.at_level(logging.INFO, logger="phd_lab"):
        extract_latents(model, data, tmp_path / "latents", run_dir=tmp_path, layers=["0"], downsampling=None,
                        progress=False)
    assert "Extracted 1 layer (1 file per split) into" in caplog.text, caplog.text
