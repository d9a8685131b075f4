"""Turn a config's device string into a ``torch.device`` that exists on this machine.

Used by the executor for ``device`` and ``tracking_device`` and by the experiment for ``--device``;
kept on its own so that checking a device name does not need the executor and what it imports.
"""

from __future__ import annotations

import torch

from phd_lab.errors import ConfigError


def resolve_device(spec: str, where: str = "The device") -> torch.device:
    """'auto' → CUDA when available, else CPU; a CUDA device that is absent is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{where} {spec!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where} {spec!r} asks for CUDA, but no CUDA device is available here; use "
                              f"'cpu' or 'auto'.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{where} {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s).")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{where} {spec!r} asks for Apple's MPS, which is not available here; use 'cpu' or 'auto'.")
    elif device.type not in ("cpu", "mps"):
        raise ConfigError(f"{where} {spec!r} is not supported; use auto, cpu, cuda or cuda:N.")
    return device
