"""The names of a module's calls: the receptive-field table names a module called several times
``name``, ``name:2``, ``name:3``, ..., and ``truncate`` accepts those names to cut before a later call."""

from __future__ import annotations


def call_name(module: str, call: int) -> str:
    """The name of the ``call``-th call (from 1) of ``module``."""
    return module if call == 1 else f"{module}:{call}"


def split_call_name(name: str) -> tuple[str, int]:
    """(module, call) of a call's name; a name without a call number (or with one below 2) is the first call."""
    module, _, count = name.rpartition(":")
    if module and count.isdigit() and int(count) >= 2:
        return module, int(count)
    return name, 1
