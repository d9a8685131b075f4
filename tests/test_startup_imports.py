"""Commands that end before any work import none of the heavy libraries: a config the schema refuses, the probe
job's help and usage errors, the report's usage errors. Each command runs in a real subprocess, in-process there
through ``runpy``, which then prints the heavy modules it imported; its own output and exit status are checked too,
so that a refusal moved before the imports is still the same refusal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.analysis_fixtures import write_run

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ("torch", "torchvision", "sklearn", "pandas", "matplotlib", "scipy")

# the command's script or module run as ``python SCRIPT ARGS`` would, then the heavy modules it left imported
RUN_AND_LIST = """import runpy, sys
target, *args = sys.argv[1:]
sys.argv = [target, *args]
code = 0
try:
    (runpy.run_path(target, run_name='__main__') if target.endswith('.py') else
     runpy.run_module(target, run_name='__main__', alter_sys=True))
except SystemExit as stop:
    code = stop.code
sys.stdout.write('\\nEXIT %s IMPORTED %s\\n' % (code, ','.join(m for m in HEAVY if m in sys.modules)))
"""


def _imported(*command: str) -> tuple[int, list[str], str]:
    """The exit status, the heavy modules imported and stdout + stderr of ``python COMMAND`` (a script of the
    checkout, or ``phd_lab`` for ``-m phd_lab``), its lines joined as one."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + RUN_AND_LIST, *command], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    last = [line for line in done.stdout.splitlines() if line.startswith("EXIT ")][-1].split()
    return int(last[1]), last[3].split(",") if len(last) > 3 else [], " ".join((done.stdout + done.stderr).split())


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    """A config the schema refuses: 'epoch' is no integer."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": "vgg11", "dataset": "Digits", "epoch": "x", "logs_dir": str(tmp_path)}))
    return path


def test_main_refuses_a_config_before_importing_torch(bad_config: Path, tmp_path: Path) -> None:
    code, imported, output = _imported("main.py", "--config", str(bad_config))
    assert code == 2 and "the key 'epoch' must be an integer" in output
    assert imported == []
    code, imported, output = _imported("main.py", "--config", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json" in output and imported == []


def test_listing_the_steps_imports_no_torch() -> None:
    """``--list steps`` only reads each step's name and parameters, but the extract and project steps imported
    their storage types and default deltas from the modules that run them, which import torch: 2.1 s of CPU, 0.5 s
    now. The analysis and receptive_field steps imported pandas (the analysis' settings, the saved table's reader)
    at import: none of the heavy libraries now."""
    code, imported, output = _imported("main.py", "--list", "steps")
    assert code == 0 and "extract" in output and "deltas (" in output and "dtype (" in output
    assert "analysis" in output and "receptive_field" in output
    assert imported == []


def test_probe_help_and_usage_errors_import_no_pandas(bad_config: Path) -> None:
    code, imported, output = _imported("probe_main.py", "--help")
    assert code == 0 and "--latents" in output and imported == []
    code, imported, output = _imported("probe_main.py", "--config", str(bad_config), "-mp", "-1")
    assert code == 2 and "-mp must be ≥ 0" in output and imported == []
    code, imported, output = _imported("probe_main.py", "--config", str(bad_config))  # read by the schema only
    assert code == 2 and "the key 'epoch' must be an integer" in output and imported == []


def test_report_usage_errors_import_no_pandas(tmp_path: Path) -> None:
    code, imported, output = _imported("phd_lab", "report", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in output and imported == []
    code, imported, output = _imported("phd_lab", "report", str(tmp_path), "--alpha", "2")
    assert code == 2 and "no significance level" in output and imported == []
    # where the page is there (the report is being rerun) the check that it is one imported the page's renderer,
    # and with it pandas, before the same usage error was told
    (tmp_path / "report.html").write_text("<!DOCTYPE html>\n<html><head><title>phd-lab report: logs</title>")
    code, imported, output = _imported("phd_lab", "report", str(tmp_path), "--alpha", "2")
    assert code == 2 and "no significance level" in output and imported == [], output


def test_the_probe_package_still_exports_its_names() -> None:
    """``phd_lab.probes`` imports its names on first use: every name of ``__all__`` is there, and a submodule
    (a spawned worker's ``runner``) still imports by ``from phd_lab.probes import``."""
    import phd_lab.probes as probes
    from phd_lab.probes import runner

    assert runner.__name__ == "phd_lab.probes.runner"
    for name in probes.__all__:
        assert getattr(probes, name) is not None
    with pytest.raises(AttributeError):
        probes.no_such_name  # noqa: B018



def test_the_probe_package_lists_its_names_before_their_first_use() -> None:
    """dir() (a notebook's tab completion) listed none of the names the package imports on first use, so
    that ``phd_lab.probes.<Tab>`` offered no run_jobs or ProbeSettings; it lists ``__all__``, importing nothing."""
    script = ("import sys, phd_lab.probes as probes; names = dir(probes); "
              "print(sorted(set(probes.__all__) - set(names)), 'pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["[]", "False"], done.stdout + done.stderr

def test_a_report_rebuilt_with_nothing_changed_imports_no_matplotlib(tmp_path: Path) -> None:
    """Its figures all come from the page it replaces and the run folders; reading matplotlib's version for their
    keys imported matplotlib (0.1 s of CPU). The page rebuilt is the page built."""
    write_run(tmp_path / "logs", width=0.25, stage="full")
    code, imported, output = _imported("phd_lab", "report", str(tmp_path / "logs"), "-q", "-mp", "0")
    assert code == 0 and "matplotlib" in imported, output  # it drew the figures
    page = _without_generated_time((tmp_path / "logs" / "report.html").read_text())
    code, imported, output = _imported("phd_lab", "report", str(tmp_path / "logs"), "-q", "-mp", "0")
    assert code == 0 and "pandas" in imported and "matplotlib" not in imported, output
    assert _without_generated_time((tmp_path / "logs" / "report.html").read_text()) == page


def _without_generated_time(page: str) -> str:
    """The report page without the minute it was generated in ('generated 2026-12-04 18:22 +0000'), which a rebuild
    a few seconds later changes where a minute ends between the two (the test failed so)."""
    stamped, count = re.subn(r"generated \d{4}-\d\d-\d\d \d\d:\d\d [+-]\d{4}", "generated (time)", page)
    assert count == 1
    return stamped
