"""Registries: factories looked up by name from plain Python modules.

A registry module (``registries/models.py`` or a user's own file) exposes its factories as
module-level callables; the function name is the key used in configs and run folders. A
module may list its keys in ``__all__``; otherwise every public function or class defined
in the module itself counts. A module may also define ``PREFIXES = {"tv:": factory}``: a
name ``tv:resnet50`` then calls ``factory("resnet50", **kwargs)``; a ``factory.names()`` function, where
given, lists the valid names after the prefix (unknown ones are refused up front, and listed). A registry file
given by its path may import the files beside it; their sha256 is logged with the file's own (``helper_sha256``).

Factory contracts (documented once, here):
- model: ``f(*, num_classes: int, in_channels: int = 3, **model_args) -> torch.nn.Module``
- dataset: ``f(*, batch_size, resolution, data_dir, seed, num_workers, **dataset_args) -> DataBundle``
- optimizer: ``f(model, *, epochs, **optimizer_args) -> (optimizer, scheduler or None)``
- metric: ``f() -> Metric`` with ``update(y_true, y_pred)``, ``value``, ``reset()``

A factory's keyword defaults and annotations say the types a config's ``*_args`` may give
(``phd_lab.factory_args``): a numeric default refuses strings and booleans (annotated ``int`` or ``float``, also
null, objects and lists; ``int | None`` takes null), and an argument annotated ``bool``
takes only true or false (or 0 and 1); one annotated otherwise (``canvas: bool | int = False``) or not at all is
checked by the factory itself. A ``tv:`` model's arguments are held to its torchvision class' ``__init__`` the
same way (its builder takes ``**kwargs``).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import linecache
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

from phd_lab import registry_files
from phd_lab.errors import RegistryError

log = logging.getLogger(__name__)

KINDS = ("models", "datasets", "optimizers", "metrics")
DEFAULT_MODULES = {kind: f"registries.{kind}" for kind in KINDS}


def did_you_mean(value: str, choices: "list[str] | Mapping[str, Any]", n: int = 3) -> str:
    """A short 'closest matches' clause for error messages (empty when nothing is close)."""
    names = list(choices)
    lowered = {name.lower(): name for name in names}
    close = difflib.get_close_matches(value.lower(), list(lowered), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(lowered[c]) for c in close) + "?"


class Registry:
    """Name → factory mapping of one kind, built from a module."""

    def __init__(self, kind: str, factories: Mapping[str, Callable[..., Any]],
                 prefixes: Mapping[str, Callable[..., Any]] | None = None, source: str = "",
                 built_in: bool = True) -> None:
        self.kind = kind
        self.source = source
        self.built_in = built_in  # False: a module a config's 'registries' names, which plain --list does not list
        self._factories = dict(factories)
        self._prefixes = dict(prefixes or {})

    @classmethod
    def from_module(cls, kind: str, module: ModuleType) -> "Registry":
        names = getattr(module, "__all__", None)
        if names is None:
            names = [name for name, obj in vars(module).items()
                     if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                     and getattr(obj, "__module__", None) == module.__name__]
        factories = {}
        for name in names:
            obj = getattr(module, name, None)
            if not callable(obj):
                raise RegistryError(f"Registry module {module.__name__!r} lists {name!r} in __all__, "
                                    f"but it is not a callable factory.")
            factories[name] = obj
        prefixes = getattr(module, "PREFIXES", {}) or {}
        return cls(kind, factories, prefixes, source=getattr(module, "__file__", module.__name__) or "",
                   built_in=module.__name__ == DEFAULT_MODULES.get(kind))

    def names(self, pattern: str = "*") -> list[str]:
        return sorted((name for name in self._factories if fnmatch.fnmatchcase(name.lower(), pattern.lower())),
                      key=str.lower)

    def prefixed_names(self, pattern: str = "*") -> list[str]:
        """The names behind the prefixes whose factory lists them (``factory.names()``), e.g. ``tv:resnet50``."""
        names = [prefix + name for prefix, factory in sorted(self._prefixes.items())
                 for name in (getattr(factory, "names", None) or list)()]
        return [name for name in names if fnmatch.fnmatchcase(name.lower(), pattern.lower())]

    def prefix_forms(self, pattern: str = "*") -> list[tuple[str, str]]:
        """``(form, doc)`` of the prefixes whose factory lists no names (any name after the prefix goes, e.g. an
        image folder's path): the form names the factory's first argument, e.g. ``folder:<path>``."""
        forms = []
        for prefix, factory in sorted(self._prefixes.items()):
            if getattr(factory, "names", None) is not None:
                continue
            try:
                argument = next(iter(inspect.signature(factory).parameters), "name")
            except (TypeError, ValueError):  # a callable without a signature to inspect
                argument = "name"
            form = f"{prefix}<{argument}>"
            if fnmatch.fnmatchcase(form.lower(), pattern.lower()):
                text = inspect.getdoc(factory) or ""
                forms.append((form, text.strip().splitlines()[0] if text.strip() else ""))
        return forms

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._resolve(name) is not None

    def _resolve(self, name: str) -> Callable[..., Any] | None:
        if name in self._factories:
            return self._factories[name]
        for prefix, factory in self._prefixes.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                known = getattr(factory, "names", None)
                if known is not None and name[len(prefix):] not in known():
                    return None
                resolved = functools.partial(factory, name[len(prefix):])
                check_data = getattr(factory, "check_data", None)  # the check before training, for this name too
                if check_data is not None:
                    setattr(resolved, "check_data", functools.partial(check_data, name[len(prefix):]))
                return resolved
        return None

    def check(self, name: Any, key: str) -> None:
        """Raise a RegistryError naming ``key`` and the close matches if ``name`` is unknown."""
        if isinstance(name, str) and self._resolve(name) is not None:
            return
        prefix_note = ""
        if self._prefixes:
            prefix_note = " Names may also start with " + ", ".join(repr(p) for p in sorted(self._prefixes)) + "."
        hint = did_you_mean(str(name), [*self._factories, *self.prefixed_names()])
        listing = (f"`python main.py --list {self.kind}`" if self.built_in else
                   f"`python main.py --config CONFIG --list {self.kind}` (CONFIG: the config file whose key "
                   f"registries.{self.kind} names them)")
        raise RegistryError(
            f"Unknown {self.kind[:-1]} {name!r} for key {key!r}.{hint} Valid {self.kind}: "
            f"{', '.join(self.names()) or '(none)'}.{prefix_note} List them with {listing}.")

    def get(self, name: str, key: str | None = None) -> Callable[..., Any]:
        self.check(name, key or self.kind[:-1])
        factory = self._resolve(name)
        assert factory is not None
        return factory

    def doc(self, name: str) -> str:
        """First docstring line of a factory (for listings)."""
        factory = self._factories.get(name)
        text = inspect.getdoc(factory) if factory is not None else ""
        return (text or "").strip().splitlines()[0] if text else ""


# The sha256 of the source each registry module was last executed from, by module name. A long-lived process
# (a Dask worker, a notebook) sees a registry file edited between two grids: the module is executed again
# from its new source, so the code a run trains with is always the code whose hash its _meta records.
_EXECUTED_SHA256: dict[str, str] = {}


def executed_sha256(module: ModuleType) -> str | None:
    """sha256 of the source the registry module was executed from (None: not from a readable file)."""
    known = _EXECUTED_SHA256.get(module.__name__)
    if known is not None:
        return known
    source = _source(getattr(module, "__file__", None))
    return hashlib.sha256(source).hexdigest() if source is not None else None


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


def _beside(folder: Path, top: str) -> Path | None:
    """The module ``top`` as the folder holds it (``top.py`` or a package ``top/``), or None."""
    return next((path for path in (folder / f"{top}.py", folder / top) if path.is_file()
                 or (path / "__init__.py").is_file()), None)


def _helper_file(name: str, module: ModuleType | None, folder: Path) -> Path | None:
    """The file of a module imported from ``folder`` (``folder/<top>.py`` or inside ``folder/<top>/``); None for
    any other module (installed, phd-lab's own, a virtual environment's inside the folder)."""
    top = name.split(".")[0]
    file = getattr(module, "__file__", None)
    if top in FRAMEWORK_PACKAGES or not file:
        return None
    try:
        path = Path(file).resolve()
    except (OSError, RuntimeError):
        return None
    return path if path == folder / f"{top}.py" or folder / top in path.parents else None


def _same_named_helper(path: Path, imported: Mapping[str, ModuleType]) -> str | None:
    """Why the registry file ``path`` would run another file than the same-named one beside it: a module it
    imports that resolved to another folder's file, or whose name another registry file's helper holds."""
    folder = path.parent
    for name in sorted(imported):
        top = name.split(".")[0]
        mine = _beside(folder, top)
        if "." in name or top in FRAMEWORK_PACKAGES or mine is None:
            continue
        first = _HELPER_NAMES.get(top)
        file = getattr(imported[name], "__file__", None)
        if file and _helper_file(name, imported[name], folder) is None:
            return f"{str(mine)!r} beside it, but {top!r} resolves to {file!r} in this process"
        if first is not None and first[0] != folder:
            return (f"{str(mine)!r} beside it, but the registry file {str(first[1])!r} imported another {top!r} from "
                    f"its own folder ({str(_beside(first[0], top) or first[0] / top)!r}) in this process")
    return None


def _execute_beside(module: ModuleType, source: bytes, path: Path, kind: str) -> None:
    """Execute a registry file given by its path, recording the modules it imports from its own folder (each
    helper imported before by a registry file is imported again, so that this file's own imports are seen and
    an edited helper runs its new code); a same-named helper of another folder is refused."""
    folder = path.parent
    hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] in _HELPER_NAMES}
    before = set(sys.modules)

    def restore() -> None:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in _HELPER_NAMES or _helper_file(name, sys.modules[name], folder) is not None:
                del sys.modules[name]
        sys.modules.update(hidden)

    failed: BaseException | None = None
    try:
        _execute(module, source, path)
    except BaseException as error:  # noqa: BLE001 - raised again below (as the refusal where that is the cause)
        failed = error
    imported = {name: sys.modules[name] for name in set(sys.modules) - before}
    # the other folder's helper may lack what this file uses: the refusal says why, not the AttributeError
    conflict = _same_named_helper(path, imported) if failed is None or isinstance(failed, Exception) else None
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
    for name, imported_module in imported.items():
        file = _helper_file(name, imported_module, folder)
        if file is not None:
            helpers[file.relative_to(folder).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
            _HELPER_NAMES.setdefault(name.split(".")[0], (folder, path))
    _HELPER_SHA256[module.__name__] = dict(sorted(helpers.items()))


def _execute(module: ModuleType, source: bytes, path: Path) -> ModuleType:
    """Run ``source`` (the bytes that are hashed) as the module's code, in its namespace."""
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own registry module
    _EXECUTED_SHA256[module.__name__] = hashlib.sha256(source).hexdigest()
    _remember_lines(source, path)
    return module


def _remember_lines(source: bytes, path: Path) -> None:
    """Keep the lines a module was executed from, for inspect.getsource (factory_sha256) and tracebacks: a file
    edited since is not them (no modification time: linecache.checkcache keeps the entry)."""
    lines = source.decode("utf-8", errors="replace").splitlines(keepends=True)
    linecache.cache[str(path)] = (len(source), None, lines, str(path))


def _current(module: ModuleType) -> ModuleType:
    """A module imported by name earlier in this process, executed again in its namespace if its file changed
    since (as ``importlib.reload`` does, but from the bytes that are hashed)."""
    source = _source(getattr(module, "__file__", None))
    if source is None:
        return module
    digest = hashlib.sha256(source).hexdigest()
    known = _EXECUTED_SHA256.setdefault(module.__name__, digest)  # first seen: imported from this source
    if known != digest:
        log.info("The registry module %s (%s) changed since this process imported it; executing it again.",
                 module.__name__, module.__file__)
        _execute(module, source, Path(module.__file__))
    else:  # imported from these bytes: a later edit of the file is not the code the factories run
        _remember_lines(source, Path(module.__file__))
    return module


def import_registry_module(spec: str, kind: str) -> ModuleType:
    """Import a registry module given as dotted name or as a path to a ``.py`` file; one imported before
    in this process is executed again when its file has changed since."""
    try:
        if spec.endswith(".py") or "/" in spec:
            path = Path(spec).expanduser().resolve()
            if path.is_dir():
                raise RegistryError(f"The {kind} registry module {spec!r} is a folder; give a path to a .py file "
                                    f"or a dotted module name (e.g. 'registries.{kind}').")
            if not path.is_file():
                raise RegistryError(
                    f"The {kind} registry module file {spec!r} does not exist; give a dotted module name (e.g. "
                    f"'registries.{kind}') or a path to a .py file. If the file moved (with a moved project), set "
                    f"'registries.{kind}' to its new path, in a run's logged config as well: the registry modules "
                    f"are no part of a run's identity (its folder's hash), so the edited config reruns the same "
                    f"run in its folder, and warns if the file's code differs from the sha256 the run logged.")
            module_name = registry_files.module_name(kind, path)  # importable by that name in workers
            source = path.read_bytes()
            earlier = sys.modules.get(module_name)
            if (earlier is not None and _EXECUTED_SHA256.get(module_name) == hashlib.sha256(source).hexdigest()
                    and not _helpers_changed(module_name, path.parent)):
                return earlier
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None or path.suffix != ".py":
                raise RegistryError(f"The {kind} registry module {spec!r} is not a Python source file; give a "
                                    f"path ending in .py or a dotted module name.")
            if earlier is not None:  # edited since: a new module, so that factories removed from it are gone
                log.info("The %s registry file %s (or a file beside it that it imports) changed since this process "
                         "imported it; importing it again.", kind, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            if str(path.parent) not in sys.path:  # its own imports of files beside it (from my_layers import ...),
                sys.path.append(str(path.parent))  # as Python gives a script; after the installed packages
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
        missing = error.name or ""
        if missing and not (spec == missing or spec.startswith(missing + ".")):  # the module's own import failed
            raise RegistryError(f"The {kind} registry module {spec!r} imports {missing!r}, which is not installed "
                                f"here ({error}). Install it, or point the key 'registries.{kind}' elsewhere."
                                ) from None
        raise RegistryError(f"Cannot import the {kind} registry module {spec!r}: {error}. Give a dotted "
                            f"module name importable from the working directory or a path to a .py file.") from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the module itself is broken: say where
        # SystemExit too (a module that calls sys.exit() at import ended the command without a word); Ctrl-C
        # (KeyboardInterrupt) and SIGTERM (Terminated) still stop it
        where = f" ({error.filename}, line {error.lineno})" if isinstance(error, SyntaxError) else ""
        what = (f"it calls sys.exit({'' if error.code is None else repr(error.code)}) or raises SystemExit"
                if isinstance(error, SystemExit) else error)
        raise RegistryError(f"The {kind} registry module {spec!r} failed while being imported: "
                            f"{type(error).__name__}: {what}{where}. Fix the module (run `python {spec}` to see "
                            f"the traceback) or point the key 'registries.{kind}' elsewhere.") from None


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


BUILT_IN_FOLDER = Path(__file__).resolve().parents[1] / "registries"


def working_directory_file(spec: str, module: ModuleType) -> str | None:
    """The file of a registry module named ``spec`` (a dotted name) that only the working directory holds: a
    ``mymods.py`` beside where the command started (``_import_dotted``). A logged config names that file
    instead of the bare name, which another working directory cannot import. None for a module importable from
    anywhere: installed, or phd-lab's own (``main.py`` puts its checkout on the module path), or a package."""
    file = getattr(module, "__file__", None)
    if "." in spec or "/" in spec or not file or Path(file).name == "__init__.py":
        return None
    try:
        cwd, path = Path.cwd().resolve(), Path(file).resolve()
        if path.parent != cwd:
            return None
        # the module path without the working directory (phd-lab's checkout, which main.py puts there, stays)
        elsewhere = [entry for entry in sys.path if isinstance(entry, str)
                     and (Path(entry or ".").resolve() != cwd or cwd == BUILT_IN_FOLDER.parent)]
    except (OSError, RuntimeError):  # a working directory removed since, a loop of links on the module path
        return None
    return None if importlib.machinery.PathFinder.find_spec(spec, elsewhere) else str(path)


def _warn_if_shadowed(kind: str, file: str | None) -> None:
    """'registries.models' is phd-lab's own module unless a 'registries' package earlier on sys.path (the
    working directory under ``python -m``) shadows it: then runs train other factories under the same names."""
    if file is not None and Path(file).resolve().parent != BUILT_IN_FOLDER:
        log.warning("The built-in %s registry %r was imported from %s, not from phd-lab's %s: a 'registries' "
                    "package earlier on the module path (e.g. in the working directory) shadows it. Runs use its "
                    "factories; name your own modules in the config's 'registries' key instead.",
                    kind, DEFAULT_MODULES[kind], file, BUILT_IN_FOLDER)


_ANNOUNCED: set[tuple[str, str]] = set()  # (kind, spec) of the registry modules named once in this process


def _announce(kind: str, spec: str) -> None:
    """Say, before it runs, which code a config's 'registries' imports: a registry is code, and a config received
    from someone else (a run's logged config) that names a .py file beside it or any importable module by a dotted
    name ran it without a word, also under --dry-run. Said once per process (a grid builds its registries for
    every run)."""
    if (kind, spec) in _ANNOUNCED:
        return
    _ANNOUNCED.add((kind, spec))
    log.info("Importing the %s registry module %r named by the config's 'registries': its code runs in this "
             "process (read a registry that came with someone else's config before running it).", kind, spec)


class Registries:
    """The four registries a run draws from."""

    def __init__(self, modules: Mapping[str, "str | ModuleType"] | None = None) -> None:
        chosen = dict(DEFAULT_MODULES)
        chosen.update(modules or {})
        unknown = sorted(set(chosen) - set(KINDS))
        if unknown:
            raise RegistryError(f"Unknown registry kind(s) {unknown}; valid kinds: {list(KINDS)}.")
        self.modules = {kind: chosen[kind] if isinstance(chosen[kind], str) else chosen[kind].__name__
                        for kind in KINDS}
        self._registries: dict[str, Registry] = {}
        self.files: dict[str, str | None] = {}  # where each module was loaded from (logged with a run)
        self.sha256: dict[str, str | None] = {}  # of the source each module was executed from
        self.helper_sha256: dict[str, dict[str, str]] = {}  # of the files a registry file imported from beside it
        self.working_directory_files: dict[str, str] = {}  # dotted modules only the working directory holds
        for kind in KINDS:
            module = chosen[kind]
            if isinstance(module, str):
                if module != DEFAULT_MODULES[kind]:
                    _announce(kind, module)
                module = import_registry_module(module, kind)
                found = working_directory_file(chosen[kind], module)
                if found is not None:
                    self.working_directory_files[kind] = found
            self.files[kind] = getattr(module, "__file__", None)
            self.sha256[kind] = executed_sha256(module)
            self.helper_sha256[kind] = helper_sha256(module)
            if chosen[kind] == DEFAULT_MODULES[kind]:
                _warn_if_shadowed(kind, self.files[kind])
            self._registries[kind] = Registry.from_module(kind, module)

    def logged_specs(self, specs: Any) -> Any:
        """A config's 'registries' (``specs``) as a logged config names them: a dotted name these registries
        found only in the working directory becomes its file's path (``working_directory_file``), so that the
        logged config reruns from any directory; every other value stays as it is. The file is the module
        the name loaded, so a run logged with the name by an earlier version has the same setup."""
        if not isinstance(specs, dict):
            return specs
        return {kind: self.working_directory_files.get(kind, spec) if spec == self.modules.get(kind) else spec
                for kind, spec in specs.items()}

    def file_hashes(self) -> dict[str, str | None]:
        """sha256 of the source each registry module was executed from: a custom registry outside the
        repository is not covered by the logged git commit, and its code is part of what a run trained with."""
        return dict(self.sha256)

    def factory_hashes(self, config: Any) -> dict[str, dict[str, str | None]]:
        """``factory_sha256`` of each factory a run's config draws from these registries, by kind and name: a rerun
        years later asks whether the factory the run used changed, not whether anything in its file did."""
        from phd_lab.factory_digest import factory_sha256
        names = {"models": [config.model], "datasets": [config.dataset], "optimizers": [config.optimizer],
                 "metrics": list(config.metrics)}
        return {kind: {name: factory_sha256(self[kind].get(name)) for name in names[kind]} for kind in KINDS}

    def helper_hashes(self) -> dict[str, dict[str, str]]:
        """sha256 of the files each registry file imported from its own folder (``helper.py`` beside it), by their
        path relative to that folder: their code is part of what a run trained with, as the registry file's is."""
        return {kind: dict(hashes) for kind, hashes in self.helper_sha256.items()}

    def __getitem__(self, kind: str) -> Registry:
        return self._registries[kind]

    def check_names(self, config: Any) -> None:
        """Every factory name a run's config draws from these registries: a RegistryError naming the
        key, the close matches and the valid names when one is unknown."""
        self.models.check(config.model, "model")
        self.datasets.check(config.dataset, "dataset")
        self.optimizers.check(config.optimizer, "optimizer")
        for metric in config.metrics:
            self.metrics.check(metric, "metrics")

    @property
    def models(self) -> Registry:
        return self._registries["models"]

    @property
    def datasets(self) -> Registry:
        return self._registries["datasets"]

    @property
    def optimizers(self) -> Registry:
        return self._registries["optimizers"]

    @property
    def metrics(self) -> Registry:
        return self._registries["metrics"]
