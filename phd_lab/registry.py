"""Registries: factories looked up by name from plain Python modules.

A registry module (``registries/models.py`` or a user's own file) exposes its factories as
module-level callables; the function name is the key used in configs and run folders. A
module may list its keys in ``__all__``; otherwise every public function or class defined
in the module itself counts. A module may also define ``PREFIXES = {"tv:": factory}``: a
name ``tv:resnet50`` then calls ``factory("resnet50", **kwargs)``; a ``factory.names()`` function, where
given, lists the valid names after the prefix (unknown ones are refused up front, and listed). A registry file
given by its path may import the files beside it; their sha256 is logged with the file's own (``helper_sha256``;
``phd_lab.registry_import`` imports the modules).

Factory contracts (documented once, here):
- model: ``f(*, num_classes: int, in_channels: int = 3, **model_args) -> torch.nn.Module``
- dataset: ``f(*, batch_size, resolution, data_dir, seed, num_workers, **dataset_args) -> DataBundle``
- optimizer: ``f(model, *, epochs, **optimizer_args) -> (optimizer, scheduler or None)``: the optimizer stepped
  per batch without a closure, the scheduler once per epoch (``factory_results.stepping_refusal``)
- metric: ``f() -> Metric`` with ``update(y_true, y_pred)``, ``value``, ``reset()``

A factory's keyword defaults and annotations say the types a config's ``*_args`` may give
(``phd_lab.factory_args``): a numeric default refuses strings and booleans (annotated ``int`` or ``float``, also
null, objects and lists; ``int | None`` takes null), and an argument annotated ``bool``
takes only true or false (or 0 and 1); one annotated otherwise (``canvas: bool | int = False``) or not at all is
checked by the factory itself. A ``tv:`` model's arguments are held to its torchvision class' ``__init__`` the
same way (its builder takes ``**kwargs``).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import fnmatch
import functools
import importlib.machinery
import inspect
import linecache
import logging
import re
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping

from phd_lab.errors import RegistryError
from phd_lab.registry_import import (executed_lines, executed_sha256, helper_sha256, helpers_replaced,
                                    import_registry_module, imports_held, remember_given)

log = logging.getLogger(__name__)

KINDS = ("models", "datasets", "optimizers", "metrics")
DEFAULT_MODULES = {kind: f"registries.{kind}" for kind in KINDS}


def did_you_mean(value: str, choices: "list[str] | Mapping[str, Any]", n: int = 3, cutoff: float = 0.5) -> str:
    """A short 'closest matches' clause for error messages (empty when nothing is close: a similarity below
    ``cutoff``)."""
    names = list(choices)
    lowered = {name.lower(): name for name in names}
    close = difflib.get_close_matches(value.lower(), list(lowered), n=n, cutoff=cutoff)
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
                forms.append((form, factory_summary(factory)))
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
        return factory_summary(factory) if factory is not None else ""


def factory_summary(factory: Callable[..., Any]) -> str:
    """The first line of a factory's docstring, which listings show beside its name; empty where it has none.
    reStructuredText's double backquotes around code (``flip``) are shown as Markdown's single ones (`flip`)."""
    text = factory_doc(factory).strip()
    return re.sub(r"``([^`]+)``", r"`\1`", text.splitlines()[0]) if text else ""


def factory_doc(factory: Callable[..., Any]) -> str:
    """A factory's docstring, cleaned as ``inspect.getdoc`` does; read from its source under ``python -OO``, which
    drops docstrings (``--list`` showed the names without a word on them). Empty where it has none. A class is
    described by its own docstring only: ``inspect.getdoc`` gives a helper block without one nn.Module's "Base class
    for all neural network modules.", which ``--list models`` showed as if it described a model."""
    if inspect.isclass(factory):
        own = vars(factory).get("__doc__")
        text = inspect.cleandoc(own) if isinstance(own, str) else None
    else:
        text = inspect.getdoc(factory)
    if text is None and sys.flags.optimize >= 2:
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(factory))))
        except (OSError, TypeError, SyntaxError):  # no source to read it from
            return ""
        definition = tree.body[0] if tree.body else None
        if isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            text = ast.get_docstring(definition)
    return text or ""


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


@contextlib.contextmanager
def _lines_read(lines: Mapping[str, tuple[Any, ...]]) -> Iterator[None]:
    """linecache holding ``lines`` (the source each registry file was executed from), for ``inspect.getsource``:
    another thread's (a notebook's second grid) or a later grid point's import of an edited registry file put the
    edited lines there, and the factory digests logged for a run of the code before were the edited code's."""
    before = {file: linecache.cache.get(file) for file in lines}
    linecache.cache.update(lines)
    try:
        yield
    finally:
        for file, entry in before.items():
            if entry is None:
                linecache.cache.pop(file, None)
            else:
                linecache.cache[file] = entry


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
        self._lines: dict[str, tuple[Any, ...]] = {}  # linecache's entry of each file as it was executed here
        with imports_held():  # another thread's import of an edited module waits until its code is read here
            loaded = {kind: self._load(kind, chosen[kind]) for kind in KINDS}
            # a registry file executed again (edited) imports the helpers of its folder afresh: the file of an
            # earlier kind that shares one is executed again too, so that the two share it as in a fresh process
            for kind in KINDS:
                if isinstance(chosen[kind], str) and helpers_replaced(loaded[kind]):
                    self._load(kind, chosen[kind])

    def _load(self, kind: str, module: "str | ModuleType") -> ModuleType:
        """Import the registry module of ``kind`` (given by name or path, or as a module) and record where it was
        loaded from and the sha256 of its code and helpers."""
        spec = module
        if isinstance(module, str):
            if module != DEFAULT_MODULES[kind]:
                _announce(kind, module)
            module = import_registry_module(module, kind)
            found = working_directory_file(spec, module)
            if found is not None:
                self.working_directory_files[kind] = found
        else:
            remember_given(module)  # the code it runs: its file may be edited before it is given again
        self.files[kind] = getattr(module, "__file__", None)
        self.sha256[kind] = executed_sha256(module)
        executed = executed_lines(module)  # a module given as such may be one an edit's import replaced since
        if executed is None and isinstance(spec, str):
            executed = linecache.cache.get(str(self.files[kind]))
        if executed is not None:  # the lines import_registry_module ran (a later import of an edit replaces them)
            self._lines[str(self.files[kind])] = executed
        self.helper_sha256[kind] = helper_sha256(module)
        if spec == DEFAULT_MODULES[kind]:
            _warn_if_shadowed(kind, self.files[kind])
        self._registries[kind] = Registry.from_module(kind, module)
        return module

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
        with imports_held(), _lines_read(self._lines):
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
        require_own_metric_columns(config.metrics)

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


# Columns of a run's CSV that a metric's train_<name>/test_<name> (its name lower-cased) would overwrite
OTHER_SPLIT_COLUMNS = ("loss", "saturation_mean")


def require_own_metric_columns(metrics: list[str]) -> None:
    """A metric's columns are ``train_<name>`` and ``test_<name>``, its name lower-cased: one named ``Loss`` wrote
    its values into the loss columns (the CSV's train_loss was the accuracy a metric of one's own computed), one
    named ``Saturation_Mean`` was overwritten by the saturation mean, and two names that differ only in letter case
    shared one column, each without a word."""
    for metric in metrics:
        if metric.lower() in OTHER_SPLIT_COLUMNS:
            raise RegistryError(f"The metric {metric!r} of key 'metrics' would write its values into the columns "
                                f"train_{metric.lower()} and test_{metric.lower()} of the run's CSV, which hold the "
                                f"run's own {metric.lower().replace('_', ' ')}; rename the metric's factory (its "
                                f"columns are train_<name> and test_<name>, the name lower-cased).")
    distinct = set(metrics)  # a name repeated as written is the duplicate check's (a logged config may hold one)
    lowered = [metric.lower() for metric in distinct]
    shared = sorted(metric for metric in distinct if lowered.count(metric.lower()) > 1)
    if shared:
        raise RegistryError(f"The metrics {', '.join(map(repr, shared))} of key 'metrics' differ only in letter case, "
                            f"so they would share the columns train_{shared[0].lower()} and test_{shared[0].lower()} "
                            f"of the run's CSV (its name lower-cased); rename one of their factories.")
