"""The line-length limit of setup.cfg holds for every Python file of the project."""

from __future__ import annotations

import configparser

from tests.conftest import ROOT

FOLDERS = ("phd_lab", "registries", "tests", "benchmarks")


def test_no_python_line_is_longer_than_setup_cfg_allows():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    limit = parser.getint("flake8", "max-line-length")
    files = [ROOT / "main.py", ROOT / "probe_main.py"]
    files += [path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py")]
    too_long = [f"{path.relative_to(ROOT)}:{number} ({len(line)} characters)"
                for path in files for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                if len(line) > limit]
    assert len(files) > 50
    assert not too_long, f"lines over {limit} characters: " + ", ".join(too_long)
