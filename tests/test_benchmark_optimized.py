"""The soak benchmarks under ``python -O``: the commands they time must still run there."""

from __future__ import annotations

import dis
import types
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _names_loaded_under_o(script: str, function: str) -> set[str]:
    """The names ``function`` of ``script`` loads when compiled as ``python -O`` compiles it (asserts removed)."""
    path = BENCHMARKS / script
    module = compile(path.read_text(encoding="utf-8"), str(path), "exec", optimize=1)
    code = next(const for const in module.co_consts
                if isinstance(const, types.CodeType) and const.co_name == function)
    names: set[str] = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname.startswith("LOAD") and instruction.opname != "LOAD_CONST":  # (an import's names)
            # LOAD_FAST_LOAD_FAST (3.13) loads a pair
            value = instruction.argval
            names.update(value if isinstance(value, tuple) else (value,))
    return names


@pytest.mark.parametrize("script, function, commands", [
    ("soak.py", "soak_grid", {"main_cli"}),
    ("soak.py", "timed_commands", {"main_cli", "main_report"}),
    ("soak_probes.py", "soak_dask_cli", {"main_cli"}),
])
def test_soak_commands_run_under_python_o(script, function, commands):
    """``assert main_report([...]) == 0`` was compiled away with the call in it: under ``python -O`` the soak
    timed no command and printed 'report 0.00 s' (and a grid of no runs) as its measurements."""
    assert commands <= _names_loaded_under_o(script, function)
