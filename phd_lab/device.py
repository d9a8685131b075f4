"""Turn a config's device string into a ``torch.device`` that exists on this machine.

Used by the executor for ``device`` and ``tracking_device`` and by the experiment for ``--device``;
kept on its own so that checking a device name does not need the executor and what it imports.
"""

from __future__ import annotations

import torch

from phd_lab.errors import ConfigError


class DeviceMissing(ConfigError):
    """A valid device name whose device this machine lacks (a GPU run checked on a CPU-only login node)."""


def parse_device(spec: str, where: str = "The device") -> torch.device | None:
    """The torch device ``spec`` names (None for 'auto'), without asking whether this machine has it."""
    if spec == "auto":
        return None
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{where} {spec!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{where} {spec!r} is not supported; use auto, cpu, cuda or cuda:N.")
    return device


def resolve_device(spec: str, where: str = "The device") -> torch.device:
    """'auto' → CUDA when available, else CPU; a device this machine lacks is a DeviceMissing error."""
    device = parse_device(spec, where)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceMissing(f"{where} {spec!r} asks for CUDA, but no CUDA device is available here; use "
                              f"'cpu' or 'auto'.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceMissing(f"{where} {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s).")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceMissing(f"{where} {spec!r} asks for Apple's MPS, which is not available here; use 'cpu' or "
                            f"'auto'.")
    return device
