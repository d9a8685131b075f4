"""Ctrl-C and SIGTERM held back while a group of files is written (real signals to this process)."""

from __future__ import annotations

import os
import signal

import pytest

from phd_lab.cli import guarded
from phd_lab.interrupts import deferred_interrupts


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
