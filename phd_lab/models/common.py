"""Small helpers shared by the model families: argument checks and width scaling."""

from __future__ import annotations

from typing import Any


def check_width(width: Any) -> float:
    """A width factor must be a positive, finite number (any float: 1, 0.5, 0.125, 1.5 ...)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < float(width) < float("inf")):
        raise ValueError(f"width must be a positive number (e.g. 1, 0.5, 0.125); got {width!r}")
    return float(width)


def scaled(filters: int, width: float) -> int:
    """Filters after applying the width factor: rounded, at least one."""
    return max(1, int(round(filters * width)))


def _as_written(value: Any) -> str:
    """A choice as a config writes it: None is JSON's null (a config that copied "None" would give a string)."""
    return "null" if value is None else repr(value)


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(_as_written(c) for c in choices)}; "
                         f"got {_as_written(value)}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value
