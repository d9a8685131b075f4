"""The config values that tell a grid's runs apart, as compact text: what the report's columns and groups read."""

from __future__ import annotations

import json
from typing import Any, Sequence

from phd_lab.config import SCHEMA_BY_NAME
from phd_lab.report.collect import RunEntry

FIXED_COLUMNS = ("model", "dataset", "resolution")  # every report names them; they are no "varying" column


def flat_config(config: dict[str, Any] | None) -> dict[str, str]:
    """Result-affecting config values as ``key`` / ``mapping.key`` → compact JSON text."""
    return flat_values({key: value for key, value in (config or {}).items()
                        if key != "_meta" and not getattr(SCHEMA_BY_NAME.get(key), "technical", False)})


def flat_values(values: dict[str, Any]) -> dict[str, str]:
    """``key`` / ``mapping.key`` → compact JSON text (a top-level string as it is)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                flat[f"{key}.{inner}"] = json.dumps(inner_value, separators=(",", ":"))
        else:
            flat[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return flat


def varying_keys(entries: Sequence[RunEntry]) -> list[str]:
    """Config values that differ between runs (model, dataset and resolution have their own columns). A run
    whose config could not be read has no values to compare: it would make every key look varied."""
    flats = [flat_config(e.tables.config) for e in entries if e.tables.config]
    keys = sorted({k for f in flats for k in f} - set(FIXED_COLUMNS))
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]
