"""Importing registry modules, and the code they ran: the module a config's 'registries' names, by a dotted name or
by a file's path.

A registry file given by its path is imported under its ``registry_files`` name (any process can import it again),
with its own folder on the module path for the helpers beside it (``helper.py``). A module imported before in
this process is executed again, into a new module, when its file (or such a helper) changed since, so the code a
run trains with is the code whose sha256 it records: that of the source each module was executed from
(``executed_sha256``) and those of the helpers a registry file imported from its own folder (``helper_sha256``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import logging
import os
import shlex
import stat
import sys
import threading
import weakref
from pathlib import Path
from types import ModuleType
from typing import Iterator, Mapping, Sequence

from phd_lab import registry_files
from phd_lab.errors import NOT_REGULAR, RegistryError
from phd_lab.interrupts import raise_interruption_behind

log = logging.getLogger(__name__)


# The sha256 of the source each registry module was last executed from, by module name. A long-lived process
# (a Dask worker, a notebook) sees a registry file edited between two grids: the module is executed again
# from its new source, so the code a run trains with is always the code whose hash its _meta records.
_EXECUTED_SHA256: dict[str, str] = {}


# The sha256 and linecache entry of the source each registry module object was executed from (or, first seen by
# name, imported from): an edited dotted module is executed into a new module, and an earlier one (a notebook's own
# handle on it, given to Registries as a module) runs the code before, which its name's sha256 no longer is.
_EXECUTED_BY_MODULE: weakref.WeakKeyDictionary[ModuleType, tuple[str, tuple[object, ...]]] = \
    weakref.WeakKeyDictionary()


def executed_sha256(module: ModuleType) -> str | None:
    """sha256 of the source the registry module was executed from (None: not from a readable file)."""
    record = _EXECUTED_BY_MODULE.get(module)
    if record is not None:
        return record[0]
    known = _EXECUTED_SHA256.get(module.__name__)
    if known is not None:
        return known
    source = _source(getattr(module, "__file__", None))
    return hashlib.sha256(source).hexdigest() if source is not None else None


def executed_lines(module: ModuleType) -> tuple[object, ...] | None:
    """The linecache entry of the source the registry module object was executed from (``_remember_lines``), for
    its factories' digests; None for a module this process's registry imports never ran or saw."""
    record = _EXECUTED_BY_MODULE.get(module)
    return record[1] if record is not None else None


def remember_given(module: ModuleType) -> None:
    """Keep the sha256 and lines of a registry module given as a module object (``Registries({'models': models})``)
    the first time it is seen, as ``_current`` does for one imported by name: one the user imported was executed
    from its file as it is then, and given again after an edit (a notebook's handle on it, not imported again) it
    runs that code, while its file's sha256 and factory digests were read from the edited file."""
    if module in _EXECUTED_BY_MODULE:
        return
    file = getattr(module, "__file__", None)
    source = _source(file)
    if source is not None:
        digest = hashlib.sha256(source).hexdigest()
        _EXECUTED_BY_MODULE[module] = (digest, _remember_lines(source, Path(file)))
        if sys.modules.get(module.__name__) is module:  # its name given later, after an edit, executes that
            _EXECUTED_SHA256.setdefault(module.__name__, digest)


def _source(file: str | None) -> bytes | None:
    if not file or not file.endswith(".py"):
        return None
    try:
        return Path(file).read_bytes()
    except OSError:
        return None


# The modules a registry file given by its path imported from its own folder (``helper.py`` beside it, or a
# package there), by the registry's module name: {path relative to the folder: sha256}. Their code is part of
# what a run trains with, and the logged git commit does not cover a folder outside phd-lab.
_HELPER_SHA256: dict[str, dict[str, str]] = {}
# Each helper's top-level module name → (the folder it was imported from, the registry file that imported it).
# One process holds one module per name: a same-named helper of another folder would be that first one.
_HELPER_NAMES: dict[str, tuple[Path, Path]] = {}
# Each helper module a registry file's execution imported afresh → (the sha256 of its file then, the helpers it
# imported itself, the registry modules that imported it): another registry file of its folder reuses it where
# none of them changed since; one executed again (edited) imports it afresh, as its own code may change it.
_HELPER_RECORDS: weakref.WeakKeyDictionary[ModuleType, tuple[str, frozenset[str], set[str]]] = \
    weakref.WeakKeyDictionary()
# The helper modules each registry module's execution left in place, by the registry's module name: one imported
# afresh since for another registry file of its folder (edited) is no longer the one its objects' classes are of.
_HELPER_MODULES: dict[str, dict[str, weakref.ref[ModuleType]]] = {}
FRAMEWORK_PACKAGES = ("phd_lab", "registries")  # phd-lab's own code, which its git commit covers


def helper_sha256(module: ModuleType) -> dict[str, str]:
    """sha256 of each module the registry file imported from beside it, by its path relative to the file's
    folder (a moved project compares the same names); empty for a dotted registry module."""
    return dict(_HELPER_SHA256.get(module.__name__, {}))


def _helpers_changed(module_name: str, folder: Path) -> bool:
    """Whether a helper the registry module imported from ``folder`` was edited (or removed) since."""
    for relative, digest in _HELPER_SHA256.get(module_name, {}).items():
        try:
            if hashlib.sha256((folder / relative).read_bytes()).hexdigest() != digest:
                return True
        except OSError:
            return True
    return False


def helpers_replaced(module: ModuleType) -> bool:
    """Whether a helper the registry module imported is no longer the module its name gives in this process:
    imported afresh since for another registry file of its folder (edited since), whose objects' classes the
    helper's name now gives, so that this module's objects can no longer be pickled (spawn DataLoader workers)."""
    helpers = _HELPER_MODULES.get(module.__name__, {})
    return any(sys.modules.get(name) is not helper() for name, helper in helpers.items())


def _beside(folder: Path, top: str) -> Path | None:
    """The module ``top`` as the folder holds it, or None: a package ``top/``, an extension module (``top.so``) or
    ``top.py``, in the order Python's import looks for them. A file ``top`` without a suffix imports nothing, and a
    folder without ``__init__.py`` (a namespace portion) loses to an installed module of its name in any process:
    counted, a registry file importing the installed ``tqdm`` beside such a file or data folder was refused."""
    if (folder / top / "__init__.py").is_file():
        return folder / top
    return next((path for path in _module_files(folder, top) if path.is_file()), None)


def _module_files(folder: Path, top: str) -> list[Path]:
    """The files a top-level module ``top`` other than a package may be in ``folder``: its extension modules, then
    its source."""
    return [*(folder / f"{top}{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES), folder / f"{top}.py"]


def _helper_file(name: str, module: ModuleType | None, folder: Path) -> Path | None:
    """The file of a module imported from ``folder`` (``folder/<top>.py``, an extension module ``folder/<top>.so``
    or inside ``folder/<top>/``); None for any other module (installed, phd-lab's own, a virtual environment's
    inside the folder). A symbolic link there (``helper.py`` linked to a shared file) is the folder's module: its
    target's path, all that was compared, lies elsewhere, and the registry file was refused as one that imports
    "'folder/helper.py' beside it, but 'helper' resolves to 'folder/helper.py'"."""
    top = name.split(".")[0]
    file = getattr(module, "__file__", None)
    if top in FRAMEWORK_PACKAGES or not file:
        return None
    try:
        paths = (Path(os.path.abspath(file)), Path(file).resolve())
    except (OSError, RuntimeError, ValueError):
        return None
    return next((path for path in paths if path in _module_files(folder, top) or folder / top in path.parents), None)


def _same_named_helper(path: Path, imported: Mapping[str, ModuleType], asked: set[str]) -> str | None:
    """Why the registry file ``path`` would run another file than the same-named one beside it: a module it
    imports that resolved to another folder's file, or whose name another registry file's helper holds. Only
    the names it or a module of its folder imported (``asked``) are looked at: a library's import of an installed
    package of the name of a file beside it (Hugging Face's ``datasets``, its folder's datasets registry file) is
    no import of that file."""
    folder = path.parent
    for name in sorted(imported):
        top = name.split(".")[0]
        mine = _beside(folder, top)
        if "." in name or top in FRAMEWORK_PACKAGES or mine is None or name not in asked:
            continue
        first = _recorded_helper(top)
        file = getattr(imported[name], "__file__", None)
        if file and _helper_file(name, imported[name], folder) is None:
            return f"{str(mine)!r} beside it, but {top!r} resolves to {file!r} in this process"
        if first is not None and first[0] != folder:
            return (f"{str(mine)!r} beside it, but the registry file {str(first[1])!r} imported another {top!r} from "
                    f"its own folder ({str(_beside(first[0], top))!r}) in this process")
    return None


def _recorded_helper(top: str) -> tuple[Path, Path] | None:
    """The (folder, registry file) that first imported the helper ``top`` in this process, while that folder still
    holds it: one that no longer does (a project moved within one process) gives way, else its registry file was
    refused as one that imported another folder's helper ("rename the helper"), though no other file was left."""
    first = _HELPER_NAMES.get(top)
    return None if first is None or _beside(first[0], top) is None else first


def _record_helper_name(top: str, folder: Path, path: Path) -> None:
    """Record that the registry file ``path`` imported the helper ``top`` from ``folder``, unless a folder that
    still holds it did so first (``_recorded_helper``)."""
    if _recorded_helper(top) is None:
        _HELPER_NAMES[top] = (folder, path)


def _execute_beside(module: ModuleType, source: bytes, path: Path, kind: str) -> None:
    """Execute a registry file given by its path, recording the modules it imports from its own folder (each
    helper imported before by a registry file is imported again, so that this file's own imports are seen and
    an edited helper runs its new code, but for the unchanged ones of its folder that another registry file
    imported, which the two share as in a fresh process: ``_HelperImports``); a same-named helper of another
    folder is refused."""
    folder = path.parent
    beside = _module_names_beside_registry_files()
    hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if _is_a_helper(name, beside)}
    before = set(sys.modules)

    def restore() -> None:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in _HELPER_NAMES or _helper_file(name, sys.modules[name], folder) is not None:
                del sys.modules[name]
        sys.modules.update(hidden)

    watch = _HelperImports(folder, hidden, module.__name__)
    failed: BaseException | None = None
    try:
        with _other_registry_folders_hidden(folder), watch:
            _execute(module, source, path)
    except BaseException as error:  # noqa: BLE001 - raised again below (as the refusal where that is the cause)
        failed = error
    imported = {name: sys.modules[name] for name in set(sys.modules) - before}
    # the other folder's helper may lack what this file uses: the refusal says why, not the AttributeError
    asked = {name for importer, names in watch.imports.items()
             if importer == module.__name__ or _of_folder(importer, folder) for name in names}
    earlier = _imported_before(module, failed, before)
    conflict = (_same_named_helper(path, {**earlier, **imported}, asked | set(earlier))
                if failed is None or isinstance(failed, Exception) else None)
    if failed is not None or conflict is not None:
        restore()
    if conflict is None and failed is not None:
        raise failed
    if conflict is not None:
        raise RegistryError(
            f"The {kind} registry file {str(path)!r} imports a module that lies as {conflict}: one process holds "
            f"one module per name, so the registry would run another file than the one beside it. Rename the "
            f"helper (or put it in a package named after its folder) so that no two registry folders share its "
            f"name.")
    for name in set(hidden) - set(sys.modules):  # helpers of other registry files that this one does not import
        sys.modules[name] = hidden[name]
    helpers = {}
    files = {name: _helper_file(name, imported_module, folder) for name, imported_module in imported.items()}
    for name, file in files.items():
        if file is not None:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            helpers[file.relative_to(folder).as_posix()] = digest
            _record_helper_name(name.split(".")[0], folder, path)
            if name in watch.reused:
                _HELPER_RECORDS[imported[name]][2].add(module.__name__)
            else:  # the helpers it imports (not the installed modules it was the first to import)
                uses = frozenset(used for used in watch.imports.get(name, ()) if files.get(used) is not None)
                _HELPER_RECORDS[imported[name]] = (digest, uses, {module.__name__})
    _HELPER_SHA256[module.__name__] = dict(sorted(helpers.items()))
    _HELPER_MODULES[module.__name__] = {name: weakref.ref(imported[name]) for name, file in files.items()
                                        if file is not None}


def _imported_before(module: ModuleType, failed: BaseException | None, before: set[str]) -> dict[str, ModuleType]:
    """The modules the registry file's code names that this process had imported before it ran (its import of an
    installed ``tqdm`` reached no finder): those it holds (``import tqdm``), and the one whose import failed
    (``from tqdm import my_fn``: cannot import name), so that a same-named file beside it is named as such."""
    names = {value.__name__ for value in vars(module).values() if isinstance(value, ModuleType)}
    if isinstance(failed, ImportError) and failed.name:
        names.add(failed.name)
    return {name: sys.modules[name] for name in names if name in before and name in sys.modules}


def _of_folder(name: str, folder: Path) -> bool:
    """Whether the module ``name`` was imported from ``folder``; one that failed (gone from sys.modules): whether the
    folder holds a module of its name."""
    module = sys.modules.get(name)
    if module is None:
        return _beside(folder, name.split(".")[0]) is not None
    return _helper_file(name, module, folder) is not None


class _HelperImports(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """While a registry file is executed: which helper imported which (``imports``), and the helpers of its own
    folder that another registry file of that folder imported, unchanged since (nor any helper they import), given
    back as they are (``reused``). Imported afresh, two registry files of one folder held two copies of a shared
    helper: the dataset of the first was of another class than the one its module's name now gave, so a DataLoader
    worker under spawn or forkserver could not be sent it ("Can't pickle ... not the same object"). A helper an
    earlier execution of the same registry module imported is imported afresh: the file's code may have set things
    in it (registered its factories), which it does again."""

    def __init__(self, folder: Path, hidden: Mapping[str, ModuleType], registry: str) -> None:
        self.folder, self.hidden, self.registry = folder, hidden, registry
        self.imports: dict[str, set[str]] = {}
        self.reused: set[str] = set()
        self._reusable: dict[str, bool] = {}

    def __enter__(self) -> None:
        sys.meta_path.insert(0, self)

    def __exit__(self, *exc: object) -> None:
        sys.meta_path.remove(self)

    def can_reuse(self, name: str) -> bool:
        """Whether the hidden helper ``name`` is of this folder, its file unchanged, and so are those it imports."""
        if name not in self._reusable:
            self._reusable[name] = False  # an import cycle: decided by its other modules
            module = self.hidden.get(name)
            record = _HELPER_RECORDS.get(module) if module is not None else None
            record = None if record is None or self.registry in record[2] else record
            file = _helper_file(name, module, self.folder) if record is not None else None
            try:
                same = file is not None and hashlib.sha256(file.read_bytes()).hexdigest() == record[0]
            except OSError:
                same = False
            self._reusable[name] = same and all(self.can_reuse(used) for used in record[1])
        return self._reusable[name]

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        importer = _importer()
        if importer is not None:
            self.imports.setdefault(importer, set()).add(fullname)
        if not self.can_reuse(fullname):
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=hasattr(self.hidden[fullname], "__path__"))

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.hidden[spec.name]

    def exec_module(self, module: ModuleType) -> None:
        original = self.hidden[module.__name__]
        module.__spec__, module.__loader__ = original.__spec__, original.__loader__  # the import set them to ours
        self.reused.add(module.__name__)
        for used in sorted(_HELPER_RECORDS[original][1]):  # its helpers are this file's too (and back in place)
            importlib.import_module(used)


def _importer() -> str | None:
    """The name of the module whose code runs the import that is being found (the first frame outside
    importlib), or None."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib")
                                 or frame.f_globals.get("__name__") == "importlib"):
        frame = frame.f_back
    return frame.f_globals.get("__name__") if frame is not None else None


def _module_names_beside_registry_files() -> dict[Path, set[str]]:
    """The top-level module names each registry folder holds (``name.py``, an extension module ``name.so``, a
    folder ``name/``), read once per import: a module of another name is no module of that folder, and need not
    have its path resolved (a few thousand modules by the folders on sys.path made each registry file's import 0.2 s
    slower per folder)."""
    names: dict[Path, set[str]] = {}
    for folder in registry_files.FOLDERS_ADDED:
        try:
            with os.scandir(folder) as entries:
                names[Path(folder)] = {_module_name_of(entry.name) for entry in entries}
        except OSError:  # gone or unreadable since: no module is imported from it again
            names[Path(folder)] = set()
    return names


# The suffixes of a module's file, longest first: ``fast.cpython-311-x86_64-linux-gnu.so`` also ends in ``.so``
_MODULE_SUFFIXES = sorted({*importlib.machinery.EXTENSION_SUFFIXES, *importlib.machinery.SOURCE_SUFFIXES},
                          key=len, reverse=True)


def _module_name_of(file_name: str) -> str:
    """The module name a file of a folder imports as (``fast`` for ``fast.cpython-311-x86_64-linux-gnu.so`` or
    ``fast.abi3.so``, ``helper`` for ``helper.py``); any other name as it is (a package's folder). Only ``.py`` was
    stripped: an extension helper that a registry module imported by its name (a worker process) was not hidden
    from the registry file's execution, so its sha256 went unlogged."""
    suffix = next((suffix for suffix in _MODULE_SUFFIXES if file_name.endswith(suffix)), None)
    return file_name[:-len(suffix)] if suffix and len(file_name) > len(suffix) else file_name


def _is_a_helper(name: str, beside: Mapping[Path, set[str]]) -> bool:
    """Whether the module ``name`` was imported from beside a registry file: a helper some registry file imported
    as such, or any module of a registry file's folder (one imported by its module name, in a worker process);
    ``beside``: the module names each such folder holds (``_module_names_beside_registry_files``)."""
    top = name.split(".")[0]
    if top in _HELPER_NAMES:
        return True
    module = sys.modules.get(name)
    return any(top in names and _helper_file(name, module, folder) is not None for folder, names in beside.items())


@contextlib.contextmanager
def _other_registry_folders_hidden(folder: Path) -> Iterator[None]:
    """sys.path without the folders other registry files put there, while the file of ``folder`` is executed: its
    import of a module that lies beside none of its own paths found the one beside a registry file an earlier grid
    point (or task of a Dask worker) had imported, so the file imported in one process and failed in a fresh one,
    and ran code its run never recorded (no helper of its folder)."""
    hidden = [(index, entry) for index, entry in enumerate(sys.path)
              if entry in registry_files.FOLDERS_ADDED and entry != str(folder)]
    for index, _entry in reversed(hidden):
        del sys.path[index]
    try:
        yield
    finally:
        for index, entry in hidden:
            sys.path.insert(index, entry)


def _execute(module: ModuleType, source: bytes, path: Path) -> ModuleType:
    """Run ``source`` (the bytes that are hashed) as the module's code, in its namespace, and remember them."""
    registry_files.execute(module, source, path)
    digest = hashlib.sha256(source).hexdigest()
    _EXECUTED_SHA256[module.__name__] = digest
    _EXECUTED_BY_MODULE[module] = (digest, _remember_lines(source, path))
    return module


def _remember_lines(source: bytes, path: Path) -> tuple[object, ...]:
    """Keep the lines a module was executed from, for inspect.getsource (factory_sha256) and tracebacks: a file
    edited since is not them (no modification time: linecache.checkcache keeps the entry). Returns the entry."""
    lines = source.decode("utf-8", errors="replace").splitlines(keepends=True)
    entry = (len(source), None, lines, str(path))
    linecache.cache[str(path)] = entry
    return entry


def _current(module: ModuleType) -> ModuleType:
    """A module imported by name earlier in this process; one whose file changed since is executed again into a
    new module (``_executed_afresh``), so that the code a run trains with is the code whose sha256 it records."""
    source = _source(getattr(module, "__file__", None))
    if source is None:
        return module
    digest = hashlib.sha256(source).hexdigest()
    known = _EXECUTED_SHA256.setdefault(module.__name__, digest)  # first seen: imported from this source
    if known != digest:
        log.info("The registry module %s (%s) changed since this process imported it; executing it again.",
                 module.__name__, module.__file__)
        return _executed_afresh(module, source)
    entry = _remember_lines(source, Path(module.__file__))  # imported from these bytes: a later edit is not run
    if module not in _EXECUTED_BY_MODULE:
        _EXECUTED_BY_MODULE[module] = (digest, entry)
    return module


def _executed_afresh(module: ModuleType, source: bytes) -> ModuleType:
    """Execute ``source`` (the edited file of the dotted module ``module``) into a new module of its name, which
    sys.modules and its package then hold (later imports get it): executed again in the old module's namespace,
    the factories of an earlier ``Registries`` (a grid still training in a notebook or another thread) ran their
    own code with the edited file's globals, under the sha256 of the code before. On a failure the old module
    stays in place."""
    spec = getattr(module, "__spec__", None)
    fresh = importlib.util.module_from_spec(spec) if spec is not None else ModuleType(module.__name__)
    if spec is None:
        fresh.__file__ = module.__file__
    _submodules_set(fresh)
    package, _, leaf = module.__name__.rpartition(".")
    parent = sys.modules.get(package) if package else None
    sys.modules[module.__name__] = fresh
    try:
        _execute(fresh, source, Path(module.__file__))
    except BaseException:
        sys.modules[module.__name__] = module
        raise
    if parent is not None:  # ``from package import models`` reads the package's attribute first
        setattr(parent, leaf, fresh)
    return fresh


def _submodules_set(package: ModuleType) -> None:
    """Give a package executed afresh (``_executed_afresh``) its submodules that this process imported, as its
    attributes, as the import system set them on the earlier module: ``import package.layers`` finds the submodule in
    sys.modules and sets no attribute, so a registry package whose code then read ``package.layers.WIDTH`` failed
    with an AttributeError after an edit."""
    if not hasattr(package, "__path__"):
        return
    prefix = package.__name__ + "."
    for name, submodule in list(sys.modules.items()):
        if name.startswith(prefix) and "." not in name[len(prefix):] and submodule is not None:
            setattr(package, name[len(prefix):], submodule)


# Held while a registry module and its helpers are imported: the import edits sys.path, sys.modules and the
# bookkeeping above, so two threads of one process (a notebook running two grids in threads, a Main called from
# two threads) importing at once hid each other's helpers and put a registry's folder off sys.path mid-import.
# Re-entrant: a registry file's code may import another registry module in the same thread.
_IMPORT_LOCK = threading.RLock()


@contextlib.contextmanager
def imports_held() -> Iterator[None]:
    """Keep other threads' registry imports waiting (``_IMPORT_LOCK``) while several modules are imported and what
    they ran is read (``Registries``): one let in between may run an edited file's code again after the module was
    imported and before its sha256 (recorded by the module's name) was read."""
    with _IMPORT_LOCK:
        yield


def import_registry_module(spec: str, kind: str) -> ModuleType:
    """Import a registry module given as dotted name or as a path to a ``.py`` file; one imported before
    in this process is executed again when its file has changed since. One thread at a time (``_IMPORT_LOCK``)."""
    with _IMPORT_LOCK:
        return _import_registry_module(spec, kind)


def _import_registry_module(spec: str, kind: str) -> ModuleType:
    """``import_registry_module``, the lock held."""
    try:
        if spec.endswith(".py") or "/" in spec:
            path = Path(spec).expanduser().resolve()
            if path.is_dir():
                raise RegistryError(f"The {kind} registry module {spec!r} is a folder; give a path to a .py file "
                                    f"or a dotted module name (e.g. 'registries.{kind}').")
            if path.exists() and not path.is_file():  # a FIFO or a device was said not to exist
                what = NOT_REGULAR.get(stat.S_IFMT(path.stat().st_mode), "no regular file")
                raise RegistryError(f"The {kind} registry module {spec!r} is {what}, not a regular file; give a path "
                                    f"to a .py file or a dotted module name (e.g. 'registries.{kind}').")
            if not path.is_file():
                raise RegistryError(
                    f"The {kind} registry module file {spec!r} does not exist; give a dotted module name (e.g. "
                    f"'registries.{kind}') or a path to a .py file. If the file moved (with a moved project), set "
                    f"'registries.{kind}' to its new path, in a run's logged config as well: the registry modules "
                    f"are no part of a run's identity (its folder's hash), so the edited config reruns the same "
                    f"run in its folder, and warns if the file's code differs from the sha256 the run logged.")
            module_name = registry_files.module_name(kind, path)  # importable by that name in workers
            source = path.read_bytes()
            _refuse_relative_imports(source, path, spec, kind)
            earlier = sys.modules.get(module_name)
            unchanged = (earlier is not None and _EXECUTED_SHA256.get(module_name) == hashlib.sha256(source).hexdigest()
                         and not _helpers_changed(module_name, path.parent))
            if unchanged and not helpers_replaced(earlier):
                return earlier
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None or path.suffix != ".py":
                raise RegistryError(f"The {kind} registry module {spec!r} is not a Python source file; give a "
                                    f"path ending in .py or a dotted module name.")
            if unchanged:  # its helper imported afresh for another file of its folder: theirs is shared now
                log.info("The %s registry file %s imports a helper that another registry file of its folder imported "
                         "afresh since (edited); importing it again, so that the two share it.", kind, path)
            elif earlier is not None:  # edited since: a new module, so that factories removed from it are gone
                log.info("The %s registry file %s (or a file beside it that it imports) changed since this process "
                         "imported it; importing it again.", kind, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            # its own imports of files beside it (from my_layers import ...), as Python gives a script
            registry_files.add_folder(path.parent)
            try:
                _execute_beside(module, source, path, kind)
            except BaseException:
                if earlier is not None:
                    sys.modules[module_name] = earlier
                else:
                    del sys.modules[module_name]
                raise
            return module
        return _current(_import_dotted(spec))
    except RegistryError:
        raise
    except ModuleNotFoundError as error:
        raise_interruption_behind(error)
        missing = error.name or ""
        _refuse_own_package_by_name(spec, kind, missing)
        if missing and not (spec == missing or spec.startswith(missing + ".")):  # the module's own import failed
            raise RegistryError(f"The {kind} registry module {spec!r} imports {missing!r}, which is not installed "
                                f"here ({error}). Install it, or point the key 'registries.{kind}' elsewhere."
                                ) from None
        _refuse_file_named_like_a_dotted_name(spec, kind)
        raise _unimportable(spec, f"Cannot import the {kind} registry module {spec!r}: {error}. Give a dotted "
                                  f"module name importable from the working directory or a path to a .py file."
                            ) from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the module itself is broken: say where
        # SystemExit too (a module that calls sys.exit() at import ended the command without a word); Ctrl-C
        # (KeyboardInterrupt) and SIGTERM (Terminated) still stop it, also as the error of a compiled module's import
        raise_interruption_behind(error)
        where = f" ({error.filename}, line {error.lineno})" if isinstance(error, SyntaxError) else ""
        what = (f"it calls sys.exit({'' if error.code is None else repr(error.code)}) or raises SystemExit"
                if isinstance(error, SystemExit) else (error.msg or error) if isinstance(error, SyntaxError) else error)
        raise RegistryError(f"The {kind} registry module {spec!r} failed while being imported: "
                            f"{type(error).__name__}: {what}{where}. Fix the module (run `{_import_command(spec)}` "
                            f"to see the traceback) or point the key 'registries.{kind}' elsewhere.") from None


def _refuse_relative_imports(source: bytes, path: Path, spec: str, kind: str) -> None:
    """Refuse a registry file given by its path whose code imports relatively (``from .layers import WIDTH``,
    also inside a factory): it is executed as a module of its own (``registry_files``), never as a module of the
    package it may lie in, so such an import looked for ``phd_lab.registry_files.layers`` and its error named
    that. A file that does not parse is left to its import, which says where."""
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError):
        return
    node = next((node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level), None)
    if node is None:
        return
    written = f"from {'.' * node.level}{node.module or ''} import ..."
    beside = node.module if node.level == 1 and node.module else "helper"
    absolute = f"import the files beside it by their own names (from {beside} import ...: its folder is on the " \
               f"module path)"
    dotted, root = _dotted_name(path)
    if dotted:
        absolute = (f"Give the dotted module name {dotted!r} (from {str(root)!r}, on the module path or the working "
                    f"directory) as 'registries.{kind}', which imports the file as part of its package, or {absolute}")
    raise RegistryError(f"The {kind} registry file {spec!r} imports relatively (line {node.lineno}: {written!r}), "
                        f"which a registry file given by its path cannot: it is imported as a module of its own, not "
                        f"as part of a package. {absolute[0].upper()}{absolute[1:]}.")


def _refuse_own_package_by_name(spec: str, kind: str, missing: str) -> None:
    """Say what to give instead where a registry file given by its path imports the package it lies in by name
    (``from lenses.layers import WIDTH`` in ``lenses/models.py``), which is not on the module path: only the
    file's own folder is put there. The error said to install 'lenses'."""
    if not (spec.endswith(".py") or "/" in spec) or not missing:
        return
    dotted, root = _dotted_name(Path(spec).expanduser().resolve())
    if dotted is None or dotted.split(".")[0] != missing.split(".")[0]:
        return
    raise RegistryError(f"The {kind} registry file {spec!r} imports the package it lies in by name ({missing!r}), "
                        f"which is not on the module path: a registry file given by its path has only its own "
                        f"folder there. Give the dotted module name {dotted!r} (from {str(root)!r}, on the module "
                        f"path or the working directory) as 'registries.{kind}', or import the files beside it by "
                        f"their own names (from helper import ...).")


def _refuse_file_named_like_a_dotted_name(spec: str, kind: str) -> None:
    """Point to the file ``a.b.py`` (in the working directory or a folder on the module path) that a dotted name
    ``a.b`` that imports nothing names: a dot in a file's name makes it no module name, and the message only said to
    give a path to a .py file."""
    if "." not in spec:
        return
    folders = [os.getcwd(), *(entry for entry in sys.path if isinstance(entry, str) and entry)]
    found = next((Path(folder, f"{spec}.py") for folder in folders if Path(folder, f"{spec}.py").is_file()), None)
    if found is None:
        return
    package, module = spec.rsplit(".", 1)
    raise _unimportable(spec, f"Cannot import the {kind} registry module {spec!r}: no module of that name exists, but "
                              f"the file {str(found.resolve())!r} does; a dot in a file's name makes it no module name "
                              f"(Python reads {spec!r} as the module {module!r} of a package {package!r}). Give the "
                              f"file's path as 'registries.{kind}', or rename the file without the dot.")


def _unimportable(spec: str, message: str) -> RegistryError:
    """The RegistryError of a registry module that cannot be imported from here, carrying its name as
    ``unimportable_module``: a logged config's rerun names the working directory its run was started in
    (``experiment``), where the name was importable."""
    error = RegistryError(message)
    error.unimportable_module = spec  # type: ignore[attr-defined]
    return error


def _dotted_name(path: Path) -> tuple[str | None, Path]:
    """The dotted module name of a file inside packages (folders with ``__init__.py``) and the folder above the
    outermost one; (None, its folder) for a file in no package."""
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").is_file() and folder.name.isidentifier() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return (".".join(parts), folder) if len(parts) > 1 and path.stem.isidentifier() else (None, path.parent)


def _import_command(spec: str) -> str:
    """The shell command that shows the traceback of a registry module's import: a file runs as a script, a dotted
    module name is imported (``python registries.mine`` looks for a file of that name). A '~' is expanded first: the
    shell leaves a quoted one as it is ("python '~/my_models.py'": can't open file)."""
    if spec.endswith(".py") or "/" in spec:
        return f"python {shlex.quote(os.path.expanduser(spec))}"
    return f"python -c 'import {spec}'"


def _import_dotted(spec: str) -> ModuleType:
    """A dotted module name, also from the working directory: ``main.py`` puts its own folder first on
    ``sys.path``, not the working directory that ``python -m`` would, and the messages promise it."""
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as error:
        cwd = os.getcwd()
        top = spec.split(".")[0]
        if error.name not in (top, spec) or cwd in sys.path or not (
                Path(cwd, top + ".py").is_file() or Path(cwd, top).is_dir()):
            raise
        sys.path.append(cwd)  # after the installed packages: it never shadows them
        return importlib.import_module(spec)

