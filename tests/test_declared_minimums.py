"""The minimum versions that setup.cfg declares can be installed together and are the ones that were tested.

``make test`` installs constraints.txt (the newest releases); a cluster's older environment gets whatever the
``>=`` floors allow, so a floor that pip can satisfy but the code cannot use is a defect found years later.
"""

from __future__ import annotations

import configparser
import re
from importlib import metadata

import pytest

from tests.conftest import ROOT

# Floors found by installing the oldest allowed releases and running the tests (README, "Oldest versions"):
# the release below each one failed the tests, for the reason given.
TESTED_FLOORS = {
    "tqdm": ((4, 62, 1), "older logging_redirect_tqdm wrote every console log line to stdout, not stderr"),
    "numpy": ((1, 24, 1), "1.24.0's ma.masked_invalid fails on a pandas Series: every fill_between of a Series did"),
    "ptflops": ((0, 7, 1), "0.7 has no pytorch_engine.patch_functional: every flops step failed with ImportError"),
    "pytest-xdist": ((3, 8), "3.7 has no --no-loadscope-reorder: make test and the README's pytest command "
                             "stopped with 'unrecognized arguments'"),
}


def _version(text: str) -> tuple[int, ...]:
    """``"2.7"`` -> ``(2, 7)``; release numbers only (no pre-release or local part)."""
    return tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", text).group(0).split("."))


def _declared_minimums() -> dict[str, tuple[int, ...]]:
    """``name >= version`` of every install requirement and extra in setup.cfg."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    lines += [line for extra in config["options.extras_require"].values() for line in extra.splitlines()]
    found = {}
    for line in filter(None, (line.strip() for line in lines)):
        name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", line).groups()
        found[name.lower()] = _version(floor)
    return found


def _pinned_torch(torchvision_requires: list[str]) -> tuple[int, ...]:
    """The torch release a torchvision release is built for (its ``torch==X``, lately ``torch>=X``, requirement)."""
    pins = [re.search(r"[=>]=\s*([0-9.]+)", line) for line in torchvision_requires if re.match(r"torch\b", line)]
    found = [pin.group(1) for pin in pins if pin]
    if not found:  # a torchvision installed without pip's metadata (a system package)
        pytest.skip("the installed torchvision names no torch release in its metadata")
    return _version(found[0])


def test_the_torch_floor_is_the_one_the_torchvision_floor_needs():
    """``torch>=2.1`` beside ``torchvision>=0.22``: torchvision 0.22.0 requires ``torch==2.7.0``, so no torch
    before 2.7 could ever be installed with it and the floor promised what was never tested. Each torchvision
    minor release is built for one torch minor release, a fixed distance apart (0.22 <-> 2.7, 0.29 <-> 2.14);
    the distance is read from the installed pair's own metadata."""
    declared = _declared_minimums()
    installed_torch = _pinned_torch(metadata.requires("torchvision") or [])
    distance = _version(metadata.version("torchvision"))[1] - installed_torch[1]
    assert declared["torch"][:2] == (installed_torch[0], declared["torchvision"][1] - distance), (
        f"setup.cfg: torch>={'.'.join(map(str, declared['torch']))} but torchvision>="
        f"{'.'.join(map(str, declared['torchvision']))} is built for torch "
        f"{installed_torch[0]}.{declared['torchvision'][1] - distance}")


def test_no_floor_is_below_the_oldest_release_that_passed():
    declared = _declared_minimums()
    too_low = {name: reason for name, (floor, reason) in TESTED_FLOORS.items() if declared[name] < floor}
    assert too_low == {}, f"setup.cfg allows releases that fail: {too_low}"


def test_the_tested_releases_satisfy_every_floor():
    """constraints.txt (what ``make test`` installs) lies inside the declared ranges."""
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==")
            pinned[name.strip().lower()] = _version(version)
    declared = _declared_minimums()
    assert set(declared) <= set(pinned), "a requirement of setup.cfg is not pinned in constraints.txt"
    assert {name: floor for name, floor in declared.items() if pinned[name] < floor} == {}
