"""The commands where stdout or stderr is closed (``>&-``), full (``> /dev/full``) or a pipe whose reader has gone
(``| head -1``): the text is lost, never the command's exit status, and no traceback is printed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from phd_lab.__main__ import main as phd_lab_main
from phd_lab.cli import main_cli
from phd_lab.errors import EXIT_OK
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
