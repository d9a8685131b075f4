"""Shared fixtures: tiny configs on the embedded Digits data, and helpers to run main.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

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


def write_config(folder: Path, name: str = "exp.json", **overrides: Any) -> Path:
    """A tiny Digits config in ``folder`` with logs under ``folder/logs``."""
    config = {**TINY, "logs_dir": str(folder / "logs"), "data_dir": str(folder / "data"), **overrides}
    config = {k: v for k, v in config.items() if v is not None}
    path = folder / name
    path.write_text(json.dumps(config, indent=2))
    return path


def run_main(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python main.py ARGS`` in a real subprocess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


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
