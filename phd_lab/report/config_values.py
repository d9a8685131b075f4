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
    """``key`` / ``mapping.key`` → compact JSON text (a top-level string as it is). Mappings nested deeper are
    written with sorted keys, as a run's folder hash reads them: ``{"k": 3, "act": "relu"}`` in either order is
    one value, so that repetitions logged in two orders are one group and no varying column."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                flat[f"{key}.{inner}"] = _compact(inner_value)
        else:
            flat[key] = value if isinstance(value, str) else _compact(value)
    return flat


def _compact(value: Any) -> str:
    """``value`` as compact JSON text with sorted keys."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def varying_keys(entries: Sequence[RunEntry]) -> list[str]:
    """Config values that differ between runs (model, dataset and resolution have their own columns). A run
    whose config could not be read has no values to compare: it would make every key look varied."""
    flats = [flat_config(e.tables.config) for e in entries if e.tables.config]
    keys = sorted({k for f in flats for k in f} - set(FIXED_COLUMNS))
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]
