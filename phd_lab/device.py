"""Turn a config's device string into a ``torch.device`` that exists on this machine.

Used by the executor for ``device`` and ``tracking_device`` and by the experiment for ``--device``;
kept on its own so that checking a device name does not need the executor and what it imports.
"""

from __future__ import annotations

import torch

from phd_lab.errors import ConfigError


class DeviceMissing(ConfigError):
    """A valid device name whose device this machine lacks (a GPU run checked on a CPU-only login node)."""


def parse_device(spec: str, where: str = "The device", *, auto: bool = True) -> torch.device | None:
    """The torch device ``spec`` names (None for 'auto'), without asking whether this machine has it.

    ``auto=False`` for ``tracking_device``, whose "the model's device" is null, not 'auto': its messages then
    offer null instead of 'auto', and 'auto' itself is refused here, before any run starts."""
    choices = "auto, cpu, cuda or cuda:N" if auto else "null (the model's device), cpu, cuda or cuda:N"
    if spec == "auto":
        if not auto:
            raise ConfigError(f"{where} {spec!r} is not accepted; use {choices}.")
        return None
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{where} {spec!r} is not a torch device; use {choices}.") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{where} {spec!r} is not supported; use {choices}.")
    return device


def resolve_device(spec: str, where: str = "The device", *, auto: bool = True) -> torch.device:
    """'auto' → CUDA when available, else CPU; a device this machine lacks is a DeviceMissing error.
    ``auto=False``: see ``parse_device``."""
    device = parse_device(spec, where, auto=auto)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    instead = "'cpu' or 'auto'" if auto else "'cpu' or null (the model's device)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceMissing(f"{where} {spec!r} asks for CUDA, but no CUDA device is available here; use "
                              f"{instead}.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceMissing(f"{where} {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s).")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceMissing(f"{where} {spec!r} asks for Apple's MPS, which is not available here; use {instead}.")
    return device
