"""What the framework knows about registry factories' keyword arguments.

A config's ``model_args``, ``dataset_args`` and ``optimizer_args`` are checked against the factory's
signature before any run trains (a typo fails at once, not deep in a factory), and the defaults the
config left in effect are logged with the run. ``FRAMEWORK_MODEL_OPTIONS`` names the model_args that
never reach the factory. Kept apart from the executor, which only calls these.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import inspect
import json
import re
from typing import Any, Callable, Iterator, Mapping

from phd_lab.config_file import cut_short, shown_value
from phd_lab.errors import ConfigError, first_line
from phd_lab.registry_files import file_of

# model_args the framework handles itself (not passed to the model factory):
# "truncate": cut the model before a layer ("border" = before the border layer b_min) and add a GAP + linear head.
# "linear_init": draw Linear layers of the built model again (default "torch_output": the output layer only,
# with torch's default; docs/initialisation.md).
FRAMEWORK_MODEL_OPTIONS = ("truncate", "linear_init")


def factory_model_args(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The model_args that go to the model factory: all but the framework's own (``FRAMEWORK_MODEL_OPTIONS``).
    One place for the checks, the meta-device build and the real build, which must pass the factory the same."""
    return {k: v for k, v in model_args.items() if k not in FRAMEWORK_MODEL_OPTIONS}


# where a factory's own message is cut: mlp's "units[0] must be a positive integer; got 'é...'" repeated a value of
# 3,000 characters whole
FACTORY_MESSAGE_CHARACTERS = 400


def refused_args(source: str, kind: str, name: str, args: Mapping[str, Any], error: BaseException) -> ConfigError:
    """The error of the ``kind`` factory (dataset, model, optimizer) ``name`` whose call with the config's
    ``<kind>_args`` raised ``error`` (a TypeError or ValueError): one wording for the checks before training and
    the run, which ``experiment._with_args_axis_hint`` recognises ("cannot be built with model_args")."""
    return ConfigError(f"{source}: {kind} {name!r} cannot be built with {kind}_args {shown_value(args)}: "
                       f"{cut_short(first_line(error), FACTORY_MESSAGE_CHARACTERS)}.")


PASSED_BY_POSITION = ("model",)  # an optimizer factory is called f(model, epochs=..., ...): any first name will do


def _takes_one_by_position(params: Any) -> bool:
    """Whether a factory with the parameters ``params`` takes a first argument by position."""
    kinds = [p.kind for p in params]
    return bool(kinds) and (kinds[0] in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                            or inspect.Parameter.VAR_POSITIONAL in kinds)


def check_factory_args(factory: Callable[..., Any], args: dict[str, Any], key: str, name: str,
                       where: str, reserved: tuple[str, ...], framework: tuple[str, ...] = (),
                       logged: bool = False) -> None:
    """Reject arguments a factory does not accept (a typo in model_args fails before training), and values of
    the wrong type where the factory's default says the type. ``framework``: the arguments of ``key`` that the
    framework handles itself (left out of ``args``), offered with the factory's own in the message. ``logged``:
    the config is a run's logged config (``logged_run``)."""
    signature = inspect.signature(factory)
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [p for p in reserved if p not in params and not (p in PASSED_BY_POSITION and _takes_one_by_position(
        params.values()))]
    if missing:  # the call fails with "got an unexpected keyword argument", which blamed the config's args
        kind = key.split("_")[0]
        raise ConfigError(f"{where}: the {kind} factory {name!r} has no parameter {', '.join(map(repr, missing))}, "
                          f"which phd-lab passes to every {kind} factory ({', '.join(reserved)}, then the "
                          f"{key}); add {'it' if len(missing) == 1 else 'them'} to its signature "
                          f"(docs/registries.md).")
    accepted = sorted(p for p, spec in params.items()
                      if spec.kind is not inspect.Parameter.VAR_POSITIONAL and p not in reserved
                      and spec.kind is not inspect.Parameter.POSITIONAL_ONLY)
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        from phd_lab.registry import did_you_mean
        hint = "".join(did_you_mean(u, [*accepted, *framework]) for u in unknown)
        own = f" (and the framework's own {', '.join(framework)})" if framework else ""
        raise ConfigError(f"{where}: {key} {unknown} are not accepted by {name!r}.{hint} It accepts: "
                          f"{', '.join(accepted) or 'no arguments'}{own}.")
    with logged_run(logged):
        for arg, value in args.items():  # "lr": "fast" failed deep in the factory with a comparison of float and str
            check_argument_type(params[arg], value, f"{where}: {key} {arg!r} of {name!r}")


# Annotations that admit numbers only: such an argument refuses null, objects and lists too ("lr": null failed in
# torch with "'<=' not supported between instances of 'float' and 'NoneType'"); "int | None" admits null.
NUMBER_ANNOTATIONS = (int, float, "int", "float", "int | float", "float | int")
# True while the factories of a point read from a run's logged config are checked and built (``logged_run``)
_LOGGED_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("phd_lab_logged_run", default=False)


@contextlib.contextmanager
def logged_run(logged: bool) -> Iterator[None]:
    """Check and build factories for a point read from a run's logged config (``logged``): a float where an
    argument is annotated ``int`` is left to the factory there, as before that check, so that a run logged with
    one that trained (tv:resnet50's "width_per_group": 32.0, an int only used in arithmetic) reruns."""
    token = _LOGGED_RUN.set(logged)
    try:
        yield
    finally:
        _LOGGED_RUN.reset(token)


def check_argument_type(param: inspect.Parameter, value: Any, what: str) -> None:
    """A string or boolean where the factory's default is a number: "lr": true trained with lr 1. Anything but
    true or false (or 0 and 1, which Python reads the same) where the argument is annotated ``bool``: "amsgrad":
    "no" trained with AMSGrad, a non-empty string being true. An argument annotated otherwise (the datasets'
    ``canvas: bool | int``, false or a size) or not at all (a user's ``weights=False`` that also takes a name)
    is the factory's to check. A float where it is annotated ``int`` (8.0 or 8.5 for a channel count) is refused
    too, except for a run's logged config (``logged_run``)."""
    default = param.default
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and (isinstance(value, (str, bool)) or (param.annotation in NUMBER_ANNOTATIONS and not (
            isinstance(value, (int, float)) and not isinstance(value, bool)))):
        raise ConfigError(f"{what} must be a number (its default is {default!r}); got {shown_value(value)}.")
    # "width": 8.0 failed in torch's empty()
    if param.annotation in (int, "int") and isinstance(value, float) and not _LOGGED_RUN.get():
        raise ConfigError(f"{what} must be a whole number without a decimal point (the factory annotates it int; "
                          f"its default is {default!r}); got {shown_value(value)}.")
    if isinstance(default, bool) and param.annotation in (bool, "bool") and not isinstance(value, bool) \
            and not (type(value) is int and value in (0, 1)):
        raise ConfigError(f"{what} must be true or false (its default is {json.dumps(default)}); got "
                          f"{shown_value(value)}. Write JSON's true or false without quotes.")


# The keyword arguments the framework passes to each kind of factory itself (not config ``*_args``).
SUPPLIED_ARGS = {"models": ("num_classes", "in_channels"),
                 "datasets": ("batch_size", "resolution", "data_dir", "seed", "num_workers"),
                 "optimizers": ("model", "epochs")}


def defaults_in_effect(factory: Callable[..., Any], given: Mapping[str, Any], supplied: tuple[str, ...]) -> dict:
    """The factory's keyword defaults that a run used because its config did not set them.

    Logged with the run: a default changed in a later version of a registry would otherwise change what
    the same logged config trains, without a trace. Values JSON cannot hold are logged as their repr, without the
    memory address or registry file's path it may hold (``stable_text``), a set with its items in sorted order
    (``_set_text``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return {}
    defaults = {}
    for param in params:
        if param.default is inspect.Parameter.empty or param.name in given or param.name in supplied:
            continue
        value = param.default
        defaults[param.name] = value if _json_value(value) else _logged_text(value)
    return defaults


def _logged_text(value: Any) -> str:
    return _set_text(value) if isinstance(value, (set, frozenset)) else stable_text(repr(value))


def _set_text(items: set[Any] | frozenset[Any]) -> str:
    """A set's repr with its items in sorted order: Python's repr lists a set of strings in the order of the process's
    string hash seed, so that ``frozenset({"conv", "fc"})`` was logged as "frozenset({'fc', 'conv'})" in one process
    and "frozenset({'conv', 'fc'})" in the next, and a rerun named the unchanged default as changed."""
    inner = ", ".join(sorted(stable_text(repr(item)) for item in items))
    if isinstance(items, frozenset):
        return f"frozenset({{{inner}}})" if inner else "frozenset()"
    return f"{{{inner}}}" if inner else "set()"


_SET_TEXT = re.compile(r"(frozenset\()?(\{.*\})(?(1)\))", re.DOTALL)


def comparable_default(value: Any) -> Any:
    """A logged default as a rerun compares it (``stable_text``: without a memory address or a registry file's path),
    and a set logged by an earlier version in its process's order with its items sorted (read with
    ``ast.literal_eval``, which runs no code)."""
    value = stable_text(value)
    found = _SET_TEXT.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        return value
    try:
        items = ast.literal_eval(found.group(2))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return value
    if not isinstance(items, set):
        return value
    return _set_text(frozenset(items) if found.group(1) else items)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# the module name of a registry file given by its path (``phd_lab.registry_files.module_name``): its path in hex
_REGISTRY_MODULE = re.compile(r"phd_lab\.registry_files\.[a-z]+_((?:[0-9a-f]{2})+)\b")


def stable_text(text: Any) -> Any:
    """A logged default's repr as every process and checkout writes it: without the memory address it holds
    (``act=F.relu``: '<function relu at 0x7fc3e6cd7ce0>' is '<function relu>'), which is another in every process,
    and with a registry file's module, whose name holds the file's path, named by the file's name (``block=Block``
    of my_models.py: "<class 'my_models.Block'>"), so that a moved project's rerun names no change. Logged with
    either, every such rerun named the unchanged default as changed. Which function or class it is the factory's
    digest (``registry_factory_sha256``) covers; other values are returned as they are."""
    if not isinstance(text, str):
        return text
    return _REGISTRY_MODULE.sub(_registry_file_stem, _ADDRESS.sub("", text))


def _registry_file_stem(found: re.Match[str]) -> str:
    path = file_of(found.group(0))
    return path.stem if path is not None and path.stem else found.group(0)


def _json_value(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def args_taking(argument: str) -> list[str]:
    """The ``*_args`` keys whose built-in factories take ``argument`` (``lr`` → ``optimizer_args``): for a config
    that wrote a factory's argument at its top level. Looked up only when such a key is found unknown."""
    from phd_lab.registry import Registries
    registries = Registries()
    found = []
    for args_key, kind in (("model_args", "models"), ("dataset_args", "datasets"), ("optimizer_args", "optimizers")):
        registry = registries[kind]
        taken = set(FRAMEWORK_MODEL_OPTIONS) if kind == "models" else set()
        for name in registry.names():
            try:
                taken.update(inspect.signature(registry.get(name)).parameters)
            except (TypeError, ValueError):  # a callable without a signature
                continue
        if argument in taken - set(SUPPLIED_ARGS[kind]):
            found.append(args_key)
    return found
