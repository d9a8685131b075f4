"""The modules of registry files given by their path: ``phd_lab.registry_files.<kind>_<hex of the path>``.

A registry file given by its path (``"registries": {"datasets": "my_data.py"}``) is no module any import can find
by itself, yet the objects it defines travel by their module's name whenever they are pickled: a dataset class to
DataLoader worker processes started by ``spawn`` (macOS' default) or ``forkserver`` (Linux' default from Python
3.14), which import the module again by that name. Its name therefore holds the file's path, and importing this
package installs the finder that turns such a name back into the file (and puts the file's folder on the module
path, as ``phd_lab.registry_import`` does for the files beside it), in any process.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Sequence


def module_name(kind: str, path: Path) -> str:
    """The module name of the registry file ``path`` (absolute) of ``kind``: the same in every process."""
    return f"{__name__}.{kind}_{os.fsencode(str(path)).hex()}"


def file_of(name: str) -> Path | None:
    """The registry file a ``module_name`` names; None for any other name."""
    package, _, leaf = name.rpartition(".")
    kind, _, encoded = leaf.rpartition("_")
    if package != __name__ or not kind:
        return None
    try:
        return Path(os.fsdecode(bytes.fromhex(encoded)))
    except ValueError:
        return None


# The folders of registry files put on sys.path here or by ``phd_lab.registry_import`` (not those that were there)
FOLDERS_ADDED: set[str] = set()


def add_folder(folder: Path) -> None:
    """Put a registry file's folder on sys.path after the installed packages, once, and remember that it was put."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
        FOLDERS_ADDED.add(str(folder))


def execute(module: ModuleType, source: bytes, path: Path) -> None:
    """Run a registry module's ``source`` (read from ``path``) as its code, in its namespace: under the file's
    own future statements, not those of the module that runs it (``annotations``: its annotations were strings, and
    its factory digests others, where the file is imported by its dotted name)."""
    exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - the user's own


class _Loader(importlib.abc.Loader):
    """Executes a registry file by its module name, with its folder on the module path (after the installed
    packages) so that its imports of the files beside it work in a worker process too."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        add_folder(self.path.parent)
        execute(module, self.path.read_bytes(), self.path)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the modules ``module_name`` names."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        file = file_of(fullname)
        if file is None or not file.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, file, loader=_Loader(file))


if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
    sys.meta_path.append(_Finder())
