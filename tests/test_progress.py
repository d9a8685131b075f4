"""Progress bars written to a file (a SLURM job's .out) are redrawn rarely; in a terminal they stay live."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

from phd_lab.cli import main_cli
from phd_lab.probes.cli import probe_cli
from phd_lab.progress import FILE_INTERVAL, bar_options
from tests.conftest import ROOT, write_config
from tests.probe_latents import blob_layers, make_latents


def test_a_file_gets_rare_redraws_and_a_terminal_the_live_bar(tmp_path):
    """A regular file and a pipe are no terminal; a pseudo-terminal (what an interactive shell gives) is."""
    with open(tmp_path / "job.out", "w") as file:
        assert bar_options(file) == {"mininterval": FILE_INTERVAL, "maxinterval": FILE_INTERVAL}
    read, write = os.pipe()
    with os.fdopen(read) as reader, os.fdopen(write, "w") as writer:
        assert bar_options(writer) == bar_options(reader) == {"mininterval": 60.0, "maxinterval": 60.0}
    leader, follower = os.openpty()
    with os.fdopen(leader, "w") as _, os.fdopen(follower, "w") as terminal:
        assert bar_options(terminal) == {}
    closed = open(tmp_path / "closed.out", "w")
    closed.close()
    assert bar_options(closed) == {"mininterval": FILE_INTERVAL, "maxinterval": FILE_INTERVAL}


def test_a_run_logging_to_a_file_draws_each_bar_when_it_starts_and_ends_not_ten_times_a_second(tmp_path):
    """main.py with stderr in a file, as under SLURM: one epoch of 360 batches, its evaluation and the
    saturation pass. Each bar is drawn when it starts, at 0 % (a line of its own), at most once a minute after
    (the bound allows one redraw for a machine so busy that a pass takes that long), and when it ends, with its
    count, time and rate; before, every bar was redrawn every 0.1 s (about 20 times here for the epoch alone; a
    24-hour job's .out grew by about 95 MB), and later the bars that vanish in a terminal were left at 0 %."""
    config = write_config(tmp_path, epoch=1, batch_size=4, cpu_threads=1, post_processing=[])
    with open(tmp_path / "job.out", "w") as out:
        done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(config)], cwd=ROOT,
                              stdout=out, stderr=subprocess.STDOUT, timeout=600,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    text = (tmp_path / "job.out").read_text()
    assert done.returncode == 0, text
    drawn = [piece for segment in text.split("\r") for piece in segment.split("\n") if "%|" in piece]
    bars = Counter(segment.split(":")[0] for segment in drawn)
    # the test split's saturation is tracked during the evaluation: no pass, and no bar, of its own
    assert {name.split(" ", 1)[1] for name in bars} == {"epoch 1/1", "evaluating", "saturation (train)"}, drawn
    assert max(bars.values()) <= 3, bars
    assert sum(" 0%|" in segment for segment in drawn) == len(bars), drawn
    ended = {segment.split(":")[0] for segment in drawn if "100%|" in segment}
    assert ended == set(bars), drawn
    last = r"epoch 1/1: 100%\|.*\| (\d+)/\1 \[\d\d:\d\d<00:00, +[\d.]+batch/s, loss=[\d.]+, accuracy=[\d.]+\]$"
    assert any(re.search(last, segment) for segment in drawn), drawn


def test_a_bar_that_vanishes_in_a_terminal_is_cleared_there_and_kept_in_a_file(tmp_path):
    """The bars of an epoch or a pass are cleared from a terminal when they end; a file keeps their last drawing."""
    with open(tmp_path / "job.out", "w") as file:
        assert bar_options(file, transient=True) == bar_options(file)
    leader, follower = os.openpty()
    with os.fdopen(leader, "w") as _, os.fdopen(follower, "w") as terminal:
        assert bar_options(terminal, transient=True) == {"leave": False}


def test_quiet_hides_the_bars_of_training_and_probing_as_it_does_the_report_s(tmp_path, capsys):
    """-q hid the report's progress bar but not main.py's or probe_main.py's: a quiet job's log still showed every
    epoch's and every probe's bar. In all three commands -q now writes only warnings and errors."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    capsys.readouterr()
    assert main_cli(["--config", str(config), "-q"]) == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "epoch 1/1" not in err, err
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    assert probe_cli(["--latents", str(latents), "-mp", "0", "--solver", "lbfgs", "-q"]) == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "probes" not in err, err


def test_the_bars_leave_the_callers_multiprocessing_start_method_unchosen():
    """tqdm's first bar (drawn or disabled) made its multiprocessing lock from the default context, which fixes
    the start method: a notebook or script that ran a grid (``Main``, whose bars are built so) and then chose its
    own start method (``set_start_method("spawn")``, as code written for macOS does) stopped with 'context has
    already been set'. The lock is made by the start method the platform would choose, still left unchosen."""
    code = ("import multiprocessing; from tqdm import tqdm; from tqdm.auto import tqdm as auto; "
            "from phd_lab.progress import bar_options\n"
            "for bar in (tqdm, auto):\n"
            "    list(bar(range(2), disable=True, **bar_options())); list(bar(range(2), **bar_options()))\n"
            "assert multiprocessing.get_start_method(allow_none=True) is None\n"
            "assert type(tqdm.get_lock().locks[0]).__module__ == 'multiprocessing.synchronize'  # still one\n"
            "multiprocessing.set_start_method('spawn'); print(multiprocessing.get_start_method())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.split() == ["spawn"], done.stderr
