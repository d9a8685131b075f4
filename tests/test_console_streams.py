"""The commands where stdout or stderr is closed (``>&-``, ``2>&-``), full (``> /dev/full``) or a pipe whose reader
has gone (``| head -1``): the text is lost, never the run or the command's exit status, and no traceback is
printed."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys

import pytest
from tqdm import tqdm

from phd_lab.__main__ import main as phd_lab_main
from phd_lab.cli import command_logging, logs_above_progress_bars, main_cli
from phd_lab.console import BarStream, readable_output, write_stdout
from phd_lab.errors import EXIT_OK, EXIT_USAGE
from phd_lab.progress import bar_options
from tests.conftest import ROOT

COMMANDS = {"main.py --list-keys": lambda: main_cli(["--list-keys"]),
            "python -m phd_lab --help": lambda: phd_lab_main(["--help"])}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_closed_stdout_loses_the_output_not_the_exit_status(command, monkeypatch, capsys, caplog):
    """`main.py ... >&-` (Python sets sys.stdout to None) raised AttributeError: 'NoneType' object has no attribute
    'write' with a traceback and exit 1, also after a grid had trained (its 'Results:' list). The warning is on the
    command's console log (main.py), or Python's last-resort one (``python -m phd_lab`` sets up none)."""
    monkeypatch.setattr(sys, "stdout", None)
    assert COMMANDS[command]() == EXIT_OK
    err = capsys.readouterr().err + caplog.text
    assert "stdout is closed, so this command's output was not printed" in err
    assert "Traceback" not in err


def test_a_full_stdout_is_named_in_a_warning(monkeypatch, capsys, tmp_path):
    """`main.py --list-keys > /dev/full`: the write's OSError (No space left on device) was a traceback."""
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        assert main_cli(["--list-keys"]) == EXIT_OK
        monkeypatch.undo()
    err = capsys.readouterr().err
    assert "stdout could not be written (No space left on device)" in err
    assert "Traceback" not in err


def test_a_reader_that_has_gone_ends_the_output_quietly():
    """`main.py --list-keys | head -1` once head had exited: BrokenPipeError with a traceback and exit 1. The pipe
    here has no reader from the start, so every write of the command breaks it."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--list-keys"], cwd=ROOT, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (EXIT_OK, "")


def test_a_closed_stderr_keeps_the_usage_error_status(monkeypatch):
    """`main.py 2>&-` (no --config): writing the error paragraph raised AttributeError inside the handler of the
    usage error, so the command ended with a traceback no one saw and exit 1 instead of 2."""
    monkeypatch.setattr(sys, "stderr", None)
    assert main_cli([]) == EXIT_USAGE


def test_a_closed_stderr_draws_the_progress_bars_nowhere_and_the_log_lines_not_on_stdout(monkeypatch, capsys):
    """`main.py --config exp.json 2>&-`: a run's first progress bar fell back on sys.stderr, None, and the run failed
    ('NoneType' object has no attribute 'write'); the log lines went to stdout through tqdm's redirect. (The
    bars and the console log of a command, as the trainer draws them, without the seconds of a training.)"""
    monkeypatch.setattr(sys, "stderr", None)
    with command_logging(), logs_above_progress_bars():
        for step in tqdm(range(3), desc="epoch 1/1", **bar_options()):
            logging.getLogger("phd_lab.trainer").info("batch %d", step)
    assert capsys.readouterr().out == ""


def test_a_reader_of_stderr_that_has_gone_ends_the_progress_bars_not_the_run(monkeypatch):
    """`main.py --config exp.json 2>&1 | head -1`: once head had exited, the next progress bar raised
    BrokenPipeError and the run failed (exit 1, 'Run 0 ... failed: BrokenPipeError' in its log)."""
    read, write = os.pipe()
    os.close(read)
    with open(write, "w") as broken:
        monkeypatch.setattr(sys, "stderr", broken)
        for _ in tqdm(range(3), desc="epoch 1/1", **bar_options()):
            pass
        monkeypatch.undo()


def test_characters_that_stdout_cannot_encode_are_written_as_escapes(monkeypatch):
    """`PYTHONIOENCODING=ascii main.py --list-keys` (or a terminal in Latin-1): UnicodeEncodeError on the key
    table's '≥' and a traceback, with nothing printed."""
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    assert main_cli(["--list-keys"]) == EXIT_OK
    printed = ascii_out.buffer.getvalue().decode("ascii")
    assert "an integer \\u2265 1 and \\u2264 8192" in printed and printed.startswith("model ")


def test_a_file_names_undecodable_bytes_go_out_as_they_were_and_other_characters_as_escapes(monkeypatch):
    """A folder named with bytes that are no UTF-8 (``x\\xff``, ``x\\x80``: Python's lone surrogates \\udcff and
    \\udc80) is printed as those bytes, as the shell would show the name; a character the encoding lacks as its
    escape. Once the command returns, stdout has its own error handler back."""
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    readable_output(lambda: write_stdout("x\udc80 x\udcff \u2265\n"))()
    assert ascii_out.buffer.getvalue() == b"x\x80 x\xff \\u2265\n"
    assert ascii_out.errors == "strict"


def test_the_escape_handler_leaves_a_decoding_error_as_it_was():
    """The handler is for writing text; where the same stream reads bytes, the decoder's own error is raised."""
    with pytest.raises(UnicodeDecodeError):
        b"\xff".decode("utf-8", "phd_lab_escape")


def test_one_short_line_on_a_full_stdout_is_named_in_a_warning(monkeypatch, caplog):
    """`main.py ... > /dev/full` with a short result (a line or two, held in the stream's buffer): the write alone
    succeeds, so only the flush finds the full disk; the warning names what was not printed."""
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        write_stdout("results in /tmp/x\n")
        monkeypatch.undo()
        with contextlib.suppress(OSError):
            full.close()
    assert "stdout could not be written (No space left on device)" in caplog.text
    assert "'results in /tmp/x'" in caplog.text


@pytest.mark.parametrize("draw", [write_stdout, lambda text: BarStream(sys.stdout).write(text)])
def test_a_reader_that_has_gone_sends_the_streams_later_output_nowhere(draw, monkeypatch):
    """Once the reader of a pipe has gone, its descriptor points at the null device: what is written to it after
    (Python's own flush of the stream at exit, which printed 'Exception ignored ... BrokenPipeError' and exit 120)
    goes nowhere instead of breaking the pipe again."""
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", buffering=1) as broken:
        monkeypatch.setattr(sys, "stdout", broken)
        draw("x" * 70_000)
        monkeypatch.undo()
        assert os.write(write, b"more") == 4


def test_a_log_line_clears_the_progress_bar_it_is_written_above(monkeypatch):
    """A log line during a bar is written on a line of its own: tqdm clears the bars of a stream before it writes
    a log line there, and knows the bar's stream (wrapped) as stderr only by comparing equal to it."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with command_logging(), logs_above_progress_bars():
        for step in tqdm(range(2), desc="epoch 1/1", **bar_options()):
            logging.getLogger("phd_lab.trainer").info("batch %d", step)
    lines = re.split(r"[\r\n]", stderr.getvalue())
    assert sum(line.endswith("batch 0") and "epoch 1/1" not in line for line in lines) == 1, stderr.getvalue()


def test_the_warning_names_lost_output_by_its_first_line_shortened(monkeypatch, caplog):
    """A closed stdout loses a grid's whole 'Results:' list; the warning quotes its first line, cut at 80
    characters, not the list."""
    monkeypatch.setattr(sys, "stdout", None)
    write_stdout("  " + "r" * 81 + "\nsecond line\n")
    write_stdout("s" * 80 + "\nsecond line\n")
    assert f"(it begins '{'r' * 77}...')" in caplog.text and f"(it begins '{'s' * 80}')" in caplog.text
    assert "second line" not in caplog.text


def test_progress_bars_in_a_file_leave_no_fragment_in_front_of_the_log_lines(tmp_path, monkeypatch):
    """stderr in a file (a SLURM job's .out): each bar was drawn as '\\r<bar>' and cleared with '\\r<spaces>\\r', so
    the next log line began with '\\r... 0%|...\\r      \\r' (grep and editors show it). Each drawing is a line of
    its own now, and a log line, written while a bar is open or after it closed, starts its line."""
    with open(tmp_path / "job.out", "w") as out:
        monkeypatch.setattr(sys, "stderr", out)
        with command_logging(), logs_above_progress_bars():
            for step in tqdm(range(3), desc="epoch 1/1", leave=False, **bar_options()):
                if step == 1:
                    logging.getLogger("phd_lab.trainer").info("during the bar")
            logging.getLogger("phd_lab.trainer").info("after the bar")
        monkeypatch.undo()
    lines = (tmp_path / "job.out").read_bytes().decode().split("\n")
    assert all("\r" not in line and "\x1b" not in line for line in lines), lines
    assert lines[0].startswith("epoch 1/1:   0%|"), lines
    assert [line.split(" INFO phd_lab.trainer: ")[1] for line in lines if " INFO " in line] == [
        "during the bar", "after the bar"], lines
    assert all("%|" in line or " INFO " in line for line in lines[:-1]) and lines[-1] == "", lines
