"""The sha256 of one registry factory's code: its source and what it names from its own module.

A run's logged config records the sha256 of each whole registry file, so every upgrade of phd-lab (a model added
to ``registries/models.py``, a docstring reworded) made every logged run warn that "the code of the models
registry file changed", although the factory the run used had not. The digest here covers what the factory
builds with from its file: its own source; every function or class of the same module that it names, transitively,
by their source, with their defaults, base classes and class attributes; the values it names from the module by
value (numbers, strings, bytes, lists, dicts in their order, sets by their sorted items, numpy arrays and torch
tensors by the sha256 of their bytes, enum members, torch dtypes and devices, ``functools.partial`` objects,
objects of the module's own classes by their attributes, objects of other modules' classes by their repr where it
is the same in every process and checkout, as a layer's is: ``ACT = nn.LeakyReLU(0.1)``); the identity (module
and qualified name) of what it names from elsewhere, whose code the logged versions and git commit cover (and,
for files beside a registry file, their own sha256); the files beside its module's file that its code imports in
its body, by their sha256; the values its closure holds; and the plain attributes set on it
(``phd_lab_objective``, a dataset's ``check_data``). Nothing in it depends on the registry file's path or on
the process (``__name__`` and ``__file__`` are left out) or on ``python -O`` (which drops asserts: the names code
looks up are read from it as compiled without -O), so identical code has the same digest in every checkout.
Not covered: statements at the module's top level that change other modules when the file is imported (setting
torch defaults), which the whole file's sha256, still logged, shows; objects of other modules' classes whose repr
holds an address or a path (described by their type); what a class decorator does; and names looked up dynamically
(``globals()[name]``). A decorated function's wrappers are covered by the decorator that made them (its source)
and their closures.
"""

from __future__ import annotations

import __future__
import dis
import enum
import functools
import hashlib
import inspect
import json
import linecache
import os
import sys
import types
from typing import Any, Callable

_PLAIN = (type(None), bool, int, float, str)
_FUTURE_FLAGS = functools.reduce(lambda flags, feature: flags | getattr(__future__, feature).compiler_flag,
                                 __future__.all_feature_names, 0)


def factory_sha256(factory: Callable[..., Any]) -> str | None:
    """sha256 of the factory's code as described above; None where its source cannot be read (a factory made by
    ``functools.partial`` or outside a file), for which the registry file's sha256 stands."""
    arguments: list[Any] = []
    while isinstance(factory, functools.partial):  # a prefix's factory (tv:resnet50): the name it was given too
        arguments.append(_described((factory.args, factory.keywords), None, set()))
        factory = factory.func
    try:
        described = _described(factory, getattr(inspect.unwrap(factory), "__module__", None), set())
    except Exception:  # noqa: BLE001 - no source (OSError, TypeError) or a module it cannot be read from: no digest
        return None
    if not isinstance(described, dict):  # no function or class: no source to describe it by
        return None
    if arguments:
        described = {**described, "partial": arguments}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _described(value: Any, module: str | None, seen: set[int]) -> Any:
    """``value`` as the digest holds it: code of ``module`` by its source and what it names, values by their value
    (item by item), anything else by its identity; ``seen`` holds the ids of the functions and classes described."""
    if isinstance(value, (types.FunctionType, type)) or (
            callable(value) and isinstance(inspect.unwrap(value), types.FunctionType)):  # functools.lru_cache's too
        return _code(value, module, seen)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (bytes, bytearray, complex)):  # values JSON cannot hold
        return {type(value).__name__: value.hex() if isinstance(value, (bytes, bytearray)) else repr(value)}
    if isinstance(value, (list, tuple)):
        return [_described(item, module, seen) for item in value]
    if isinstance(value, dict):  # in their order, which a factory looping over them builds by
        return {"dict": [[_described(key, module, seen), _described(item, module, seen)] for key, item in
                         value.items()]}
    if isinstance(value, (set, frozenset)):  # by value: their order is the process's string hash seed's
        return {"set": sorted((_described(item, module, seen) for item in value), key=json.dumps)}
    if isinstance(value, functools.partial):
        return {"partial": _described([value.func, value.args, value.keywords], module, seen)}
    array = _array(value, module, seen)
    if array is not None:
        return array
    if isinstance(value, types.ModuleType):
        return value.__name__
    if isinstance(value, enum.Enum):  # InterpolationMode.BICUBIC: by its class and its name
        return {"enum": [_described(type(value), module, seen), value.name]}
    if type(value).__module__ == module:  # an object of the module's own class: its name holds the file's path
        return {"instance": _described(type(value), module, seen),
                "state": _described(dict(getattr(value, "__dict__", {})), module, seen)}
    identity = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    shown = _stable_repr(value, module)
    return {"object": [identity, shown]} if shown is not None else identity


def _stable_repr(value: Any, module: str | None) -> str | None:
    """The repr of an object of another module's class (``ACT = nn.LeakyReLU(0.1)``, a transform), which says its
    settings, so that changing 0.1 to 0.2 changes the digest; None where it would not be the same in every process
    and checkout, or says nothing of the object: functions, classes and modules (named by their identity, which has
    a ``__qualname__`` or ``__name__``), paths, a repr with a memory address (``<... object at 0x7f...>``), the
    module's own name or its file's folder (which differ between checkouts), and loggers (whose repr says the level
    of the moment)."""
    if (hasattr(value, "__qualname__") or hasattr(value, "__name__") or isinstance(value, os.PathLike)
            or type(value).__module__ == "logging"):
        return None
    try:
        shown = repr(value)
    except Exception:  # noqa: BLE001 - an object whose repr fails: its type alone, as before
        return None
    file = getattr(sys.modules.get(module or ""), "__file__", None)
    if " at 0x" in shown or (module and module in shown) or (file and os.path.dirname(file) in shown):
        return None
    return shown


def _code(value: Any, module: str | None, seen: set[int]) -> Any:
    """A function or class of ``module`` by its source, what it names, its closure, its defaults (a class: its
    bases), its attributes and its wrappers; one of another module by its module and qualified name."""
    wrappers = _wrappers(value)
    value = inspect.unwrap(value)
    if value.__module__ != module:
        return f"{value.__module__}.{value.__qualname__}"
    if id(value) in seen:  # by identity: two closures of one maker share their qualified name
        return value.__qualname__  # not by the module's name, which a registry file's path gives it
    seen.add(id(value))
    namespace = _namespace(value, module)
    function = isinstance(value, types.FunctionType)
    described = {"source": inspect.getsource(value),
                 "names": {name: _described(namespace[name], module, seen)
                           for name in sorted(_global_names(value)) if name in namespace and not _dunder(name)},
                 "closure": [_described(cell.cell_contents, module, seen)
                             for cell in (getattr(value, "__closure__", None) or ()) if _filled(cell)],
                 # what the source names outside the code of its functions: defaults, base classes, class attributes
                 "defaults": _described([value.__defaults__, value.__kwdefaults__] if function else
                                        list(value.__bases__), module, seen),
                 "attributes": {name: _described(attribute, module, seen) for name, attribute in
                                sorted(vars(value).items()) if not _dunder(name)}}
    if wrappers:  # a decorated function: the code that wraps it runs too
        described["wrappers"] = [_wrapper(layer, module, seen) for layer in wrappers]
    beside = _imported_beside(value, namespace.get("__file__"))
    if beside:  # only where there are such imports: the digests of other factories stay as they were
        described["imported_beside"] = beside
    return described


def _imported_beside(value: Any, file: Any) -> dict[str, str]:
    """The sha256 of each file beside the module's own file (``file``) that the code of ``value`` imports in its
    body (``from my_layers import block`` inside a factory), by its path relative to that folder. A registry file's
    helpers imported when the file runs are logged on their own (``registry_helper_sha256``), but one imported
    only when the factory is called was in no digest: editing it trained another model without a word. Read from
    the code's import instructions and the files they name there; nothing is imported."""
    if not isinstance(file, str) or not file.endswith(".py"):
        return {}
    folder = os.path.dirname(os.path.abspath(file))
    codes = [_unoptimized(value.__code__)] if isinstance(value, types.FunctionType) else [
        _unoptimized(member.__code__) for member in _class_functions(value)]
    found: dict[str, str] = {}
    while codes:
        code = codes.pop()
        codes.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
        parts: list[str] = []
        for instruction in dis.get_instructions(code):
            if instruction.opname == "IMPORT_NAME" and isinstance(instruction.argval, str):
                parts = instruction.argval.split(".")
                candidates = [parts[:end] for end in range(1, len(parts) + 1)]
            elif instruction.opname == "IMPORT_FROM" and parts and isinstance(instruction.argval, str):
                candidates = [parts + [instruction.argval]]  # a module of the package: from my_pkg import layers
            else:
                continue
            for names in candidates:
                for path in (os.path.join(folder, *names) + ".py", os.path.join(folder, *names, "__init__.py")):
                    if os.path.isfile(path):
                        with open(path, "rb") as handle:
                            found["/".join(names) + path[len(os.path.join(folder, *names)):]] = hashlib.sha256(
                                handle.read()).hexdigest()
    return dict(sorted(found.items()))


def _namespace(value: Any, module: str) -> dict[str, Any]:
    """The globals ``value`` (a function, or a class by its functions) runs with: its module's in
    ``sys.modules`` was read, which for a registry file imported again since (edited, by a later grid point or
    another thread) is the new module's, not the one the factory of an earlier ``Registries`` was made in."""
    for function in [value] if isinstance(value, types.FunctionType) else _class_functions(value):
        if isinstance(function, types.FunctionType) and function.__globals__.get("__name__") == module:
            return function.__globals__  # (a class's attribute may be a function of another module)
    return vars(sys.modules[module]) if module in sys.modules else getattr(value, "__globals__", {})


def _wrappers(value: Any) -> list[Any]:
    """The wrappers around a decorated function (``functools.wraps`` sets ``__wrapped__``), outermost first."""
    found: list[Any] = []
    while hasattr(value, "__wrapped__") and all(value is not layer for layer in found):
        found.append(value)
        value = value.__wrapped__
    return found


def _wrapper(layer: Any, module: str | None, seen: set[int]) -> Any:
    """A wrapper of a decorated function: one of ``module`` by the function that made it (the decorator, whose
    source holds the wrapper's) and the values its closure holds; one from elsewhere by its identity (``wraps``
    gives it the wrapped function's name and module, so its code's own are used)."""
    code = getattr(layer, "__code__", None)
    defined_in = getattr(layer, "__globals__", {}).get("__name__")
    if not isinstance(layer, types.FunctionType) or defined_in != module:
        return f"{defined_in}.{code.co_qualname}" if code is not None else (
            f"{type(layer).__module__}.{type(layer).__qualname__}")
    maker = layer.__globals__.get(code.co_qualname.split(".")[0])
    return {"maker": _described(maker, module, seen) if isinstance(maker, types.FunctionType)
            else inspect.getsource(code),
            "closure": [_described(cell.cell_contents, module, seen)
                        for cell in (layer.__closure__ or ()) if _filled(cell)]}


def _array(value: Any, module: str | None, seen: set[int]) -> dict[str, Any] | None:
    """A numpy array or torch tensor by its type, shape and the sha256 of its bytes (an array of objects by its
    items), a numpy scalar or dtype as an array, a torch dtype or device by its name; None for anything else."""
    numpy, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return {"tensor": [str(value.dtype), list(value.shape), hashlib.sha256(data).hexdigest()]}
    if torch is not None and isinstance(value, (torch.dtype, torch.device)):  # torch.float16, torch.device("cuda")
        return {"torch": str(value)}
    if numpy is not None and isinstance(value, (numpy.generic, numpy.dtype)):  # numpy.float32(1e-5), a dtype
        value = numpy.asarray(value) if isinstance(value, numpy.generic) else numpy.empty(0, dtype=value)
    if numpy is not None and isinstance(value, numpy.ndarray):
        if value.dtype.hasobject:  # its bytes are the addresses of its items
            return {"array": [list(value.shape), _described(value.tolist(), module, seen)]}
        return {"array": [value.dtype.str, list(value.shape),
                          hashlib.sha256(numpy.ascontiguousarray(value).tobytes()).hexdigest()]}
    return None


def _dunder(name: str) -> bool:
    """A name the module sets itself (``__name__``, ``__file__``): a registry file's path and, through its module's
    name, the process's string hash seed give it another value in every checkout and process."""
    return name.startswith("__") and name.endswith("__")


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a cell not bound yet
        return False
    return True


def _global_names(value: Any) -> set[str]:
    """The names the code of a function, or of a class's methods, looks up (nested functions and comprehensions
    included); some are attributes, which are then looked up in the module in vain."""
    codes = [_unoptimized(value.__code__)] if isinstance(value, types.FunctionType) else [
        _unoptimized(member.__code__) for member in _class_functions(value)]
    names: set[str] = set()
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    return names


def _unoptimized(code: types.CodeType) -> types.CodeType:
    """``code`` as compiled without ``python -O``, which drops the ``assert`` statements and ``if __debug__:`` blocks
    and with them the names they look up: a factory whose assert names a constant of its file had another digest
    under -O, and a rerun without -O warned that its code changed. ``code`` itself where its file cannot be read."""
    if not sys.flags.optimize:
        return code
    text = "".join(linecache.getlines(code.co_filename))  # what inspect.getsource read the source from
    return _plain_codes(code.co_filename, text, code.co_flags & _FUTURE_FLAGS).get(
        (code.co_qualname, code.co_firstlineno), code)


@functools.lru_cache(maxsize=16)
def _plain_codes(filename: str, text: str, flags: int) -> dict[tuple[str, int], types.CodeType]:
    """Every code object of a file's ``text`` compiled without -O (under the future flags it was compiled with),
    by qualified name and first line; two on one line (lambdas) are left out, as no name tells them apart."""
    try:
        codes = [compile(text, filename, "exec", flags=flags, dont_inherit=True, optimize=0)]
    except (SyntaxError, ValueError):  # not the file the code was compiled from
        return {}
    found: dict[tuple[str, int], types.CodeType] = {}
    twice: set[tuple[str, int]] = set()
    while codes:
        code = codes.pop()
        key = (code.co_qualname, code.co_firstlineno)
        if key in found:
            twice.add(key)
        found[key] = code
        codes.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    return {key: code for key, code in found.items() if key not in twice}


def _class_functions(cls: type) -> list[types.FunctionType]:
    """The functions a class defines: methods, static and class methods, and properties' accessors."""
    found = []
    for member in vars(cls).values():
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            found += [accessor for accessor in (member.fget, member.fset, member.fdel) if accessor is not None]
        elif isinstance(member, types.FunctionType):
            found.append(member)
    return [inspect.unwrap(function) for function in found if isinstance(inspect.unwrap(function), types.FunctionType)]
