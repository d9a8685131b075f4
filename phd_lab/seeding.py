"""Deterministic seeding of python, numpy, torch and DataLoader workers."""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed every global generator a training run draws from."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def global_generators_kept(device: torch.device) -> Iterator[None]:
    """The global generators of python, numpy and torch (and those of the GPUs, for a run on CUDA) as they were
    before the block, once it ends: a run seeds and draws from them, and a notebook's or script's own draws after
    a grid repeated those after any other grid of the same seed. A CPU run leaves CUDA uninitialised."""
    python, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive python/numpy seeds from the worker's torch seed."""
    worker_seed = torch.initial_seed() % (2**32)
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state a resumed run needs to continue bit-identically."""
    state: dict[str, Any] = {
        "python": _python_state_to_tensor(random.getstate()),
        "numpy": _numpy_state_to_dict(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    random.setstate(_python_state_from_tensor(state["python"]))
    np.random.set_state(_numpy_state_from_dict(state["numpy"]))
    torch.set_rng_state(state["torch"])
    for name, gen in (generators or {}).items():
        if name in state["generators"]:
            gen.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        restore_cuda_states(list(state["cuda"]), torch.cuda.device_count(), torch.cuda.set_rng_state)


def restore_cuda_states(states: list[torch.Tensor], visible: int, set_state: Any) -> None:
    """Give each visible GPU its saved state. A run resumed with fewer visible GPUs (rescheduled under
    another ``CUDA_VISIBLE_DEVICES``) restores those it has: ``set_rng_state_all`` raised an
    IndexError for the others, and the run could never resume. It trains on one device, so the
    states of GPUs it no longer sees drew nothing it needs."""
    for device, cuda_state in enumerate(states[:visible]):
        set_state(cuda_state, device)
    if len(states) > visible:
        log.warning("The checkpoint holds the random states of %d GPUs and %d are visible now; the states of "
                    "the others are not restored (the run trains on one device).", len(states), visible)


# The states are stored as tensors and plain containers so that torch.load(weights_only=True)
# can read the checkpoint back without unpickling arbitrary objects.
def _python_state_to_tensor(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_tensor(state: dict[str, Any]) -> tuple:
    return (state["version"], tuple(int(x) for x in state["internal"].tolist()), state["gauss"])


def _numpy_state_to_dict(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_dict(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached"])
