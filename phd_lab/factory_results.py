"""What a registry factory returns, held to its contract (``phd_lab.registry`` documents them).

A factory of the user's own registry file that returns something else (a model factory without its ``return``, an
optimizer factory that returns the bare optimizer) failed later with an AttributeError or "cannot unpack"
traceback, exit 1, some only after the run folder was made; now it is a RegistryError (exit 2) that names the
factory, its file and the contract, raised where the result comes back.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from phd_lab.errors import RegistryError, first_line


def _is_model(result: Any) -> bool:
    from torch import nn
    return isinstance(result, nn.Module)


def _is_optimizer_pair(result: Any) -> bool:
    import torch
    return (isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], torch.optim.Optimizer)
            and (result[1] is None or callable(getattr(result[1], "step", None))))


def _is_data_bundle(result: Any) -> bool:
    from phd_lab.data import DataBundle
    return isinstance(result, DataBundle)


def _is_metric(result: Any) -> bool:
    """``update`` and ``reset`` methods and a ``value`` (a property, as ``phd_lab.metrics.Metric`` has it, is
    looked up, not read: a fresh metric may have nothing to tell yet). A ``value`` defined as a plain method is no
    value: the trainer reads ``metric.value``, and such a metric failed the run after its first epoch."""
    import inspect
    return (all(callable(getattr(result, method, None)) for method in ("update", "reset")) and "value" in dir(result)
            and not inspect.isfunction(inspect.getattr_static(type(result), "value", None)))


# registry kind → (the contract as docs/registries.md writes it, the check of a result)
CONTRACTS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "models": ("f(*, num_classes, in_channels=3, **model_args) -> torch.nn.Module", _is_model),
    "optimizers": ("f(model, *, epochs, **optimizer_args) -> (torch.optim.Optimizer, scheduler or None)",
                   _is_optimizer_pair),
    "datasets": ("f(*, batch_size, resolution, data_dir, seed, num_workers, **dataset_args) -> "
                 "phd_lab.data.DataBundle", _is_data_bundle),
    "metrics": ("f() -> a metric with update(y_true, y_pred), value (a property or attribute, not a method) and "
                "reset()", _is_metric),
}


def _required_parameters(owner: Any, method: str) -> list[str]:
    """Names of the parameters ``owner.<method>()`` cannot be called without. Read from the class' function
    unwrapped (torch wraps an optimizer's step in hooks whose bound signature still names ``self``)."""
    import inspect
    try:
        parameters = list(inspect.signature(inspect.unwrap(getattr(type(owner), method))).parameters.values())[1:]
    except (AttributeError, TypeError, ValueError):  # no signature to read: taken as callable without arguments
        return []
    return [p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                              p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def stepping_refusal(optimizer: Any, scheduler: Any) -> str | None:
    """Why the trainer cannot step what an optimizer factory returned, or None. The trainer calls
    ``optimizer.step()`` once per batch without a closure, and ``scheduler.step()`` once per epoch, a
    ReduceLROnPlateau with the epoch's test loss (so in mode 'min'): an LBFGS (its step needs a closure) or a
    scheduler whose step needs an argument failed after the first batch or epoch, its run folder made."""
    import torch
    needed = _required_parameters(optimizer, "step")
    if needed:
        return (f"its optimizer {type(optimizer).__name__}'s step() requires {', '.join(needed)}, but the trainer "
                f"calls optimizer.step() without arguments once per batch (optimizers that need a closure, such as "
                f"LBFGS, are not supported)")
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if scheduler.mode != "min":
            return (f"its ReduceLROnPlateau has mode {scheduler.mode!r}, but the trainer steps it with the epoch's "
                    f"test loss, which needs mode 'min'")
        return None
    needed = _required_parameters(scheduler, "step") if scheduler is not None else []
    if needed:
        return (f"its scheduler {type(scheduler).__name__}'s step() requires {', '.join(needed)}, but the trainer "
                f"calls scheduler.step() without arguments once per epoch (a ReduceLROnPlateau with the test loss)")
    return None


def none_of_the_models_parameters(optimizer: Any, model: Any) -> str | None:
    """Why an optimizer that holds none of ``model``'s parameters cannot train it, or None. One made over another
    model's parameters (a model the factory built itself, a copy) trained with exit 0: every epoch's loss and
    saturations those of the untrained model, without a word. An optimizer over part of them (a fine-tuned head)
    is fine."""
    own = {id(parameter) for parameter in model.parameters()}
    held = [parameter for group in getattr(optimizer, "param_groups", []) for parameter in group.get("params", [])]
    if not held or any(id(parameter) in own for parameter in held):
        return None
    return (f"its optimizer {type(optimizer).__name__} holds {len(held)} parameter tensor(s), none of them the "
            f"model's it was given (another model's, or a copy's), so training would leave the model as it was "
            f"initialised; build it over model.parameters() (or a part of them)")


def unrestorable_scheduler(scheduler: Any) -> str | None:
    """Why a checkpoint could not carry ``scheduler``'s state, or None. A scheduler without ``state_dict`` failed
    the run after its first epoch; one whose state holds what ``torch.load(weights_only=True)`` refuses (a numpy
    scalar, a function) was saved every epoch, but every resume called each checkpoint damaged, the run lost."""
    if scheduler is None:
        return None
    missing = [method for method in ("state_dict", "load_state_dict") if not callable(getattr(scheduler, method, None))]
    if missing:
        return (f"its scheduler {type(scheduler).__name__} has no {' or '.join(m + '()' for m in missing)}, which a "
                f"checkpoint saves and a resume restores")
    held = refused_by_weights_only(scheduler.state_dict())
    if held is not None:
        return (f"its scheduler {type(scheduler).__name__}'s state_dict() holds {held}, which a checkpoint cannot "
                f"restore (it is read with torch.load(weights_only=True)): keep its state to tensors, numbers, "
                f"strings and lists and dicts of them")
    return None


def unrestorable_optimizer(optimizer: Any) -> str | None:
    """Why a checkpoint could not carry ``optimizer``'s hyperparameters, or None. One given as a numpy scalar
    (``lr=0.1 * np.sqrt(batch_size / 256)``) trained, and was saved every epoch, but ``torch.load(weights_only=True)``
    refuses numpy scalars: every resume called each checkpoint damaged (also the rerun of a finished run that adds a
    post-processing step), the run lost."""
    values = {(index, key): value for index, group in enumerate(getattr(optimizer, "param_groups", []))
              for key, value in group.items() if key != "params"}
    for (index, key), held in refused_entries(values).items():
        return (f"its optimizer {type(optimizer).__name__}'s parameter group {index} holds {key!r} = "
                f"{values[index, key]!r} ({held}), which a checkpoint cannot restore (it is read with "
                f"torch.load(weights_only=True)): give it as a Python number (float(...), int(...)) or a tensor")
    return None


def unrestorable_model_state(model: Any) -> str | None:
    """Why a checkpoint could not carry ``model``'s state, or None: an entry of its ``state_dict()`` that is no tensor
    (what a module's ``get_extra_state()`` returns) and that ``torch.load(weights_only=True)`` refuses, such as a numpy
    scalar. Such a run trained and wrote a checkpoint every epoch, but every resume (and the rerun of the finished run
    for a new post-processing step) called each checkpoint damaged, the run lost. Only those entries are saved for
    the check: the weights are tensors, which every checkpoint reads."""
    import torch
    extra = {name: value for name, value in model.state_dict().items() if not isinstance(value, torch.Tensor)}
    for name, held in refused_entries(extra).items():
        return (f"its model's state_dict() holds {name!r} ({held}), which a checkpoint cannot restore (it is read "
                f"with torch.load(weights_only=True)): keep what get_extra_state() returns to tensors, Python "
                f"numbers, strings and lists and dicts of them (float(...) of a numpy number)")
    return None


def refused_entries(entries: Mapping[Any, Any], known_refused: bool = False) -> dict[Any, str]:
    """Each value of ``entries`` that ``torch.load(weights_only=True)`` refuses once saved, with what it refuses
    (``refused_by_weights_only``), in their order. One round trip for all of them (every grid point's factories are
    checked), then one per entry only where that one is refused; ``known_refused`` skips the first where the caller
    saw the whole refused already (a checkpoint read back)."""
    if not entries or (not known_refused and refused_by_weights_only(list(entries.values())) is None):
        return {}
    held = {key: refused_by_weights_only(value) for key, value in entries.items()}
    return {key: what for key, what in held.items() if what is not None}


def refused_by_weights_only(state: Any) -> str | None:
    """What of ``state`` ``torch.load(weights_only=True)`` refuses once saved (the global it names, such as a numpy
    scalar's type), or None where it reads ``state`` back."""
    import io
    import pickle
    import re

    import torch
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except (pickle.PicklingError, pickle.UnpicklingError, TypeError, AttributeError) as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        return refused.group(1) if refused else f"what pickle refuses ({first_line(error)})"
    return None


def _a(kind: str) -> str:
    """'a model', 'an optimizer': the singular of a registry kind with its article."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind[:-1]}"


def check_callable(kind: str, name: str, factory: Callable[..., Any], source: str, where: str, *args: Any,
                   **kwargs: Any) -> None:
    """Raise a RegistryError where the ``kind`` factory ``name`` cannot take the arguments its contract passes
    (``args`` and ``kwargs``; a config's ``*_args`` are the caller's to check): a metric factory that needs an
    argument ended the grid check with a TypeError traceback, an optimizer factory without ``epochs`` was said to
    be called with the wrong optimizer_args. A factory without a signature to read is left to its call."""
    import inspect
    try:
        inspect.signature(factory).bind_partial(*args, **kwargs)
        if kind == "metrics":
            inspect.signature(factory).bind(*args, **kwargs)
    except ValueError:
        return
    except TypeError as error:
        raise RegistryError(f"{where}: the {kind[:-1]} factory {name!r} of {source or 'its registry'!r} cannot be "
                            f"called as the framework calls it ({error}): {_a(kind)} factory is "
                            f"{CONTRACTS[kind][0]} (see docs/registries.md). Fix its signature.") from None


def check_data_callable(name: str, check: Callable[..., Any], source: str, where: str, *args: Any,
                        **kwargs: Any) -> None:
    """Raise a RegistryError where the ``check_data`` of the dataset factory ``name`` cannot take what the
    executor passes it (the data_dir, then the point's dataset_args, and resolution where it names it): one
    without ``**dataset_args`` ended the grid check, a dry run's too, with a TypeError traceback, exit 1."""
    import inspect
    try:
        inspect.signature(check).bind(*args, **kwargs)
    except ValueError:
        return
    except TypeError as error:
        raise RegistryError(f"{where}: the check_data of the dataset factory {name!r} of "
                            f"{source or 'its registry'!r} cannot be called as the framework calls it ({error}): "
                            f"it is check_data(data_dir, **dataset_args), called with every key of the config's "
                            f"dataset_args (and resolution, where it names it). Fix its signature.") from None


def checked_result(kind: str, name: str, result: Any, source: str, where: str) -> Any:
    """``result`` of the ``kind`` factory ``name`` (from the registry ``source``), or a RegistryError."""
    contract, holds = CONTRACTS[kind]
    if holds(result):
        return result
    shown = type(result).__name__ if not isinstance(result, (tuple, list)) else (
        f"a {type(result).__name__} of {', '.join(type(item).__name__ for item in result[:3])}"
        f"{', ...' if len(result) > 3 else ''}")
    raise RegistryError(f"{where}: the {kind[:-1]} factory {name!r} of {source or 'its registry'!r} returned {shown}, "
                        f"which its contract does not allow: {_a(kind)} factory is {contract} (see "
                        f"docs/registries.md). Fix the factory{' (is its return missing?)' if result is None else ''}.")
