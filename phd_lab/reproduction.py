"""How the setup of a rerun differs from the one a run was logged with (its config's ``_meta``).

A logged config reproduces its run only under the same code, libraries and machine: the factory defaults
the config left unset, the code of the registry files, the versions, the device and the CPU instruction set
are recorded in ``_meta`` for that reason, and a rerun names every difference instead of quietly training
something else.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from phd_lab.environment import cpu_architectures, isa_variables_in_effect
from phd_lab.factory_args import comparable_default
from phd_lab.optim import DEFAULT_GAMMA

VERSION_KEYS = ("phd_lab", "git_commit", "python", "torch", "torchvision", "numpy", "scikit_learn", "numba")
_ABSENT = object()
# What a null factory argument stands for where the framework's helper reads it (``optim.step_schedule``: gamma
# null is DEFAULT_GAMMA), per ``*_args`` key: a default changed between that value and null builds the same
# optimizer, so it is no difference (runs logged before gamma's default became null logged 0.1). A user's factory
# that reads such a null otherwise is still named when its code changes (``registry_factory_sha256``).
NULL_STANDS_FOR: dict[str, dict[str, Any]] = {"optimizer_args": {"gamma": DEFAULT_GAMMA}}


def _plain(value: Any) -> Any:
    """The value as the logged JSON holds it (tuples as lists, other objects as their repr)."""
    return json.loads(json.dumps(value, default=repr))


def _shown(values: Mapping[str, Any], name: str) -> str:
    return json.dumps(values[name]) if name in values else "(no such argument)"


def code_differences(logged: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Differences that build another model, data set or optimizer from the same config: the factory
    defaults in effect, the layer ``truncate`` cut before, and the code of the registry files and of the files
    beside them that they import. Keys an older ``_meta`` lacks are skipped, and so is a factory argument added
    since whose default is null: an argument is added with null meaning what the factory did before it existed
    (Digits' ``normalization``, the image sets' ``flip``). Defaults are compared by what they resolve to
    (``NULL_STANDS_FOR``): a default changed from 0.1 to null that means 0.1 is the same default; and a repr
    without its memory address, a set's with its items sorted, as earlier versions did not log them
    (``factory_args.comparable_default``)."""
    found = []
    old_defaults, new_defaults = logged.get("defaults_in_effect"), _plain(now.get("defaults_in_effect"))
    if isinstance(old_defaults, Mapping) and isinstance(new_defaults, Mapping):
        for args in sorted(set(old_defaults) & set(new_defaults)):
            old, new = old_defaults[args] or {}, new_defaults[args] or {}
            if not isinstance(old, Mapping) or not isinstance(new, Mapping):  # a logged config edited by hand
                continue
            for name in sorted(set(old) | set(new)):
                if name not in old and new.get(name, _ABSENT) is None:
                    continue
                if _resolved(args, name, old) != _resolved(args, name, new):
                    found.append(f"the {args} default {name}: {_shown(old, name)} (now {_shown(new, name)})")
    found += _registry_differences(logged, now)
    old_helpers, new_helpers = logged.get("registry_helper_sha256"), now.get("registry_helper_sha256")
    if isinstance(old_helpers, Mapping) and isinstance(new_helpers, Mapping):
        for kind in sorted(set(old_helpers) & set(new_helpers)):
            old, new = old_helpers[kind], new_helpers[kind]
            if not isinstance(old, Mapping) or not isinstance(new, Mapping):
                continue
            for file in sorted(set(old) | set(new)):
                if old.get(file) != new.get(file):
                    found.append(f"the code of {file} beside the {kind} registry file, which it imports "
                                 f"({_helper_state(old.get(file))}, now {_helper_state(new.get(file))})")
    # where truncate ('border') cut the model: found by the receptive-field code, which a later version may change.
    # A cut asked for inside a residual block goes before the block, which truncated_before names, and the layer
    # named, truncate_named now, which earlier versions logged as truncated_before: the same cut
    old_cut, new_cut = logged.get("truncated_before", _ABSENT), now.get("truncated_before", _ABSENT)
    same_cut = (new_cut, now.get("truncate_named", _ABSENT))
    if old_cut is not _ABSENT and new_cut is not _ABSENT and old_cut not in same_cut:
        found.append(f"the layer model_args truncate cuts the model before: {_cut(old_cut)} (now {_cut(new_cut)})")
    # the same commit with other uncommitted changes (an older _meta lacks the key: not compared)
    old_diff, new_diff = logged.get("git_diff_sha256", _ABSENT), now.get("git_diff_sha256")
    same_commit = bool(logged.get("git_commit")) and logged.get("git_commit") == now.get("git_commit")
    if old_diff is not _ABSENT and same_commit and old_diff != new_diff:
        kept = "; the run's <name>_git.diff holds its own" if old_diff else ""
        found.append(f"the uncommitted changes to phd-lab ({_diff_state(old_diff)}, now {_diff_state(new_diff)}"
                     f"{kept})")
    return found + _package_difference(logged, now)


def _package_difference(logged: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Other source of the phd_lab package (``phd_lab_sha256``) where no git commit on one side or the other says
    which code ran (a copy without its ``.git``); where both have one, the commit and the patch name the change."""
    old, new = logged.get("phd_lab_sha256"), now.get("phd_lab_sha256")
    if not old or not new or old == new or (logged.get("git_commit") and now.get("git_commit")):
        return []
    return [f"the code of the phd_lab package (sha256 {str(old)[:12]}…, now {str(new)[:12]}…; no git commit "
            f"{'was logged' if not logged.get('git_commit') else 'is here'} to name the change)"]


def _resolved(args: str, name: str, values: Mapping[str, Any]) -> Any:
    """The default ``name`` of ``args`` as the factory reads it: a null the framework reads as a value
    (``NULL_STANDS_FOR``) is that value; an argument not in ``values`` is ``_ABSENT``."""
    value, stands_for = comparable_default(values.get(name, _ABSENT)), NULL_STANDS_FOR.get(args, {})
    return stands_for[name] if value is None and name in stands_for else value


def _registry_differences(logged: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The factories of a registry the run used whose code changed (``registry_factory_sha256``: their source and
    what they name from their file; any other change to the file, such as a model added, is no difference); for a
    kind whose factories were logged without it (versions before December 2026) or cannot be told by their source,
    the whole registry file's sha256, as those versions compared it."""
    found = []
    old_files, new_files = logged.get("registry_sha256"), now.get("registry_sha256")
    old_factories, new_factories = logged.get("registry_factory_sha256"), now.get("registry_factory_sha256")
    if not isinstance(old_files, Mapping) or not isinstance(new_files, Mapping):
        return found
    for kind in sorted(set(old_files) & set(new_files)):
        old = old_factories.get(kind) if isinstance(old_factories, Mapping) else None
        new = new_factories.get(kind) if isinstance(new_factories, Mapping) else None
        if (isinstance(old, Mapping) and isinstance(new, Mapping) and set(old) <= set(new)
                and all(old[name] and new[name] for name in old)):
            found += [f"the code of the {kind} factory {name!r} (sha256 {str(old[name])[:12]}…, now "
                      f"{str(new[name])[:12]}…)" for name in sorted(old) if old[name] != new[name]]
        elif old_files[kind] and old_files[kind] != new_files[kind]:
            found.append(f"the code of the {kind} registry file (sha256 {str(old_files[kind])[:12]}…, now "
                         f"{str(new_files[kind])[:12]}…)")
    return found


def _cut(layer: Any) -> str:
    return json.dumps(layer) if layer is not None else "none (no border layer: not truncated)"


def _helper_state(digest: Any) -> str:
    return f"sha256 {str(digest)[:12]}…" if digest else "not imported"


def _diff_state(digest: Any) -> str:
    return f"diff sha256 {str(digest)[:12]}…" if digest else "none"


def version_differences(logged: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Other versions of phd-lab (or another commit of it), Python and the numerical libraries."""
    return [f"{key} {logged[key]} (now {now.get(key)})" for key in VERSION_KEYS
            if logged.get(key) is not None and logged[key] != now.get(key)]


def machine_differences(logged: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Another device type or model, and another CPU instruction set of torch's kernels or another value of the
    variables that cap it (``environment.CPU_ISA_VARIABLES``): the same code sums in another order there, so
    the same config gives other weights. Another GPU index is the same setup; keys an older ``_meta`` lacks are
    skipped (DNNL_MAX_CPU_ISA and MKL_CBWR among the variables: older runs did not log them), and so is a CPU's
    model that phd-lab 0.1 logged as only the architecture (``x86_64``), where this machine has that architecture:
    which model it was is not known."""
    found = []
    old_device, new_device = logged.get("device"), now.get("device")
    same_type = not (old_device and new_device) or device_type(old_device) == device_type(new_device)
    if not same_type:
        found.append(f"the device {old_device} (now {new_device})")
    for key, label in (("device_name", "the device model"), ("cpu_capability", "the CPU instruction set")):
        if same_type and logged.get(key) and now.get(key) and logged[key] != now[key] and not (
                key == "device_name" and _only_this_architecture(logged[key], now)):
            found.append(f"{label} {logged[key]} (now {now[key]})")
    old_variables = isa_variables_in_effect(logged.get("cpu_isa_variables"), logged.get("cpu_capability"))
    new_variables = isa_variables_in_effect(now.get("cpu_isa_variables"), now.get("cpu_capability"))
    if isinstance(old_variables, Mapping) and isinstance(new_variables, Mapping):
        for name in sorted(set(old_variables) & set(new_variables)):  # one an older _meta lacks: not known
            if (old_variables.get(name) or None) != (new_variables.get(name) or None):  # empty: unset for both
                found.append(f"{name} {_variable(old_variables.get(name))} (now {_variable(new_variables.get(name))})")
    return found


def _only_this_architecture(logged_name: Any, now: Mapping[str, Any]) -> bool:
    """Whether a logged CPU device name is only the architecture this CPU run's machine has, as phd-lab 0.1 logged
    it (platform.machine()), rather than another CPU's model. A name that is no string (a hand-edited ``_meta``:
    a list or an object, which no set of names can be asked for) is none."""
    return (device_type(now.get("device", "")) == "cpu" and isinstance(logged_name, str)
            and logged_name in cpu_architectures())


def device_type(device: Any) -> str:
    """A logged device's type: 'cuda:1' is 'cuda' (another GPU index is the same setup)."""
    return str(device).split(":")[0]


def _variable(value: Any) -> str:
    return "unset" if not value else json.dumps(value)


def setup_differences(logged: Any, now: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(code differences, differences of the versions and of the machine) between a logged ``_meta`` and the
    current one; none when nothing was logged (a config written by hand)."""
    if not isinstance(logged, Mapping):
        return [], []
    return code_differences(logged, now), version_differences(logged, now) + machine_differences(logged, now)
