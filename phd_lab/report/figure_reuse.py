"""Figures the report draws itself (not a run's analysis.png), taken from the page it replaces when unchanged.

Each such figure is embedded with a key: a digest of the drawing code and of everything the figure shows. The
next report reads the keys of the page it replaces and takes a figure of the same key as it is. Drawing costs
about 0.2 s a figure, which on a grid of hundreds of runs would be most of a rebuilt report.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, NamedTuple

import pandas as pd


class KeyedFigure(NamedTuple):
    title: str
    png: bytes
    key: str  # what it was drawn from (``figure_key``): a later report with the same key takes it as it is


def drawing_versions() -> bytes:
    """phd-lab's and matplotlib's versions, the first part of every figure's key."""
    from phd_lab import __version__
    return f"{__version__} {_matplotlib_version()} ".encode()


@functools.lru_cache(maxsize=None)
def _matplotlib_version() -> str:
    """The version of the matplotlib that ``import matplotlib`` gives (the one that draws), read from the package
    metadata that records its files: importing matplotlib for it took 0.1 s of CPU, 13 % of a one-run report
    rebuilt with nothing changed (whose figures all come from the page and the run folders). The metadata found
    first on the path was read before, which another copy's (a source tree, or a second site folder ahead of
    it) could be, so that figures were not drawn again after the matplotlib drawing them changed. A matplotlib
    that no metadata records (a source tree on the path) is imported for its ``__version__``."""
    version = _recorded_version(importlib.util.find_spec("matplotlib"))
    if version is not None:
        return version
    from phd_lab.plots import matplotlib_module
    return matplotlib_module().__version__


def _recorded_version(spec: ModuleSpec | None) -> str | None:
    """The version that a distribution beside the package of ``spec`` gives, if it is that package's: its RECORD
    lists the package's ``__init__.py`` with the hashes of the very files imported (``_records_files_there``), or
    it has no RECORD (a Linux distribution's ``.egg-info``) and its ``top_level.txt`` names the package, where
    no RECORD does: ``pip install --ignore-installed`` over a distutils install ('Cannot uninstall ... a distutils
    installed project') leaves its .egg-info beside the new dist-info, and the first found was taken. None
    otherwise."""
    if spec is None or spec.origin is None:
        return None
    init = Path(spec.origin)
    unrecorded = None
    for distribution in importlib.metadata.distributions(name="matplotlib", path=[str(init.parent.parent)]):
        record = distribution.read_text("RECORD")
        if record is not None and _records_files_there(record, init):
            return distribution.version
        if record is None and unrecorded is None and init.parent.name in (distribution.read_text("top_level.txt")
                                                                            or "").split():
            unrecorded = distribution.version
    return unrecorded


def _records_files_there(record: str, init: Path) -> bool:
    """Whether ``record`` (a RECORD's text) lists the package's ``init`` file, and each of it and the package's
    ``_version.py`` that it lists with a hash has that hash there: a RECORD that an install beside it did not
    remove (``pip install --ignore-installed`` of another version leaves the old one) lists the same names, and
    the first found was taken, so the key could name the version that was replaced."""
    package = init.parent
    wanted = {f"{package.name}/{init.name}": init, f"{package.name}/_version.py": package / "_version.py"}
    listed = {row[0]: row[1] for row in csv.reader(record.splitlines()) if len(row) >= 2 and row[0] in wanted}
    if f"{package.name}/{init.name}" not in listed:
        return False
    return all(_has_hash(wanted[name], recorded) for name, recorded in listed.items() if recorded)


def _has_hash(file: Path, recorded: str) -> bool:
    """Whether ``file`` has the RECORD hash ``recorded`` (``sha256=`` and its urlsafe base64 without padding)."""
    algorithm, _, digest = recorded.partition("=")
    try:
        actual = hashlib.new(algorithm, file.read_bytes()).digest()
    except (OSError, ValueError):  # gone, unreadable, or an algorithm hashlib lacks
        return False
    return base64.urlsafe_b64encode(actual).rstrip(b"=").decode() == digest


def drawing_sources(*modules: ModuleType) -> bytes:
    """The text of the modules that draw a figure, then of those every figure is drawn with: the PNG writer's
    (``grid_figures``: also tick thinning and the width limit) and the Agg figures' (``plots.subplots``). Both kinds
    of figure key (a run's analysis.png, the report's own figures) list their modules here, so an edit of a module
    they share redraws them all: one forgotten left old figures in new pages."""
    from phd_lab import plots
    from phd_lab.plots import grid_figures
    return b"".join(Path(source.__file__).read_bytes()  # type: ignore[arg-type]
                    for source in (*modules, grid_figures, plots))


@functools.lru_cache(maxsize=8)
def _drawing_code(module: ModuleType) -> bytes:
    """The versions and the drawing modules' text of a report figure drawn by ``module``: an edit of them redraws
    every figure they drew."""
    return drawing_versions() + drawing_sources(module)


def figure_key(module: ModuleType, kind: str, label: str, *tables: pd.DataFrame, data: Any = None) -> str:
    """A digest of everything a figure shows: the module that draws it, its kind, its label, tables and data."""
    digest = hashlib.sha256(_drawing_code(module))
    digest.update(json.dumps([kind, label, data]).encode())
    for table in tables:
        digest.update(table.to_csv(index=False).encode())
    return digest.hexdigest()[:32]


_KEYED_IMAGE = re.compile(r'<img data-key="([0-9a-f]{32})" [^>]*?src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def previous_figures(page: Path) -> dict[str, bytes]:
    """The keyed figures a previous report page embeds, by key (none if there is no such page or it cannot be
    read). A page keeps a folder name's bytes that are no UTF-8 (``_write_page``), so it is read keeping them: read
    as strict UTF-8 it failed, and every figure was drawn again on each report of such a folder."""
    try:
        text = page.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return {}
    figures = {}
    for key, data in _KEYED_IMAGE.findall(text):
        try:
            figures[key] = base64.b64decode(data, validate=True)
        except ValueError:  # a damaged page: that figure is drawn again
            continue
    return figures


def keyed_figure(title: str, key: str, draw: Callable[[], Any], previous: Mapping[str, bytes]) -> KeyedFigure:
    """The figure of ``key`` from ``previous``, or ``draw()`` (a matplotlib figure) made into PNG bytes."""
    from phd_lab.plots.grid_figures import png_bytes

    png = previous.get(key)
    return KeyedFigure(title, png if png is not None else png_bytes(draw()), key)
