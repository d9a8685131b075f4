"""phd-lab used as a library in one long-lived process (a notebook, a script that runs several grids): a call
leaves the caller's logging, random state and torch flags as they were, and does its own work completely."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from tests.conftest import write_config


@pytest.fixture
def unconfigured_logging():
    """The root logger of a fresh interpreter (a notebook kernel, a plain script): level WARNING, no handler of
    the caller's own (pytest's capturing handlers stay; they are restored with the level after the test)."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    yield root
    root.setLevel(before)


def one_epoch(folder: Path, **overrides) -> Path:
    """A tiny one-epoch config without saturation tracking: the quickest real run."""
    return write_config(folder, epoch=1, track_saturation=False, **overrides)


def test_a_run_started_from_python_logs_its_whole_run_into_its_log_file(tmp_path, unconfigured_logging, single_thread):
    """``Main`` called from a process that never configured logging: the root logger's WARNING level dropped every
    INFO record before the run's file handler saw it, and the run's .log file stayed empty."""
    from phd_lab.experiment import Main
    [outcome] = Main(progress=False)(one_epoch(tmp_path))
    assert outcome.status == "finished"
    [run_log] = Path(outcome.folder).glob("*.log")
    text = run_log.read_text(encoding="utf-8")
    assert "INFO phd_lab.executor: Run folder" in text
    assert "epoch 1/1: train_loss=" in text
    assert unconfigured_logging.level == logging.WARNING  # and the caller's level is back
