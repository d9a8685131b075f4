"""The border-layer rule on a table of input receptive fields (thesis §9.3, §10.2).

Kept apart from ``receptive_field`` (which traces models and needs torch) so that reading a
saved ``receptive_field.csv`` — the report over hundreds of runs — never imports torch.
"""

from __future__ import annotations

import math

import pandas as pd

# column of the border rule -> column of its minimum over the layer and every layer downstream of it
ONWARD = {"prev_r_min": "onward_prev_r_min", "in_r_max": "onward_in_r_max"}


def border_in(convs: pd.DataFrame, column: str, resolution: int) -> str | None:
    """The border layer by one column of numeric input receptive fields of the Conv2d rows (in
    forward order): the first from which on every value exceeds ``resolution``, global (inf) rows
    never starting the sequence. The rule for tables without the ``onward_*`` columns, exact on a
    chain of layers."""
    border = None
    for layer, value in zip(reversed(convs["layer"].tolist()), reversed(convs[column].tolist())):
        if not value > resolution:
            break
        if math.isfinite(value):
            border = layer
    return border


def border_onward(convs: pd.DataFrame, column: str, onward: str, resolution: int) -> str | None:
    """The border layer by the minimum over each layer and its downstream layers (``onward``): the
    first (in forward order) whose own value is finite — global rows never start the sequence —
    and whose onward minimum exceeds ``resolution``. Unlike ``border_in`` it does not depend on the
    order in which forward() runs parallel paths: only the layers on a layer's own paths count."""
    for layer, value, rest in zip(convs["layer"].tolist(), convs[column].tolist(), convs[onward].tolist()):
        if rest > resolution and math.isfinite(value):
            return layer
    return None


def side_branch_flags(column: pd.Series) -> pd.Series:
    """The ``side_branch`` column as booleans, whether written by pandas (True) or by hand (true, 1)."""
    return column.astype(str).str.lower().isin(["true", "1", "1.0"])


def _border(convs: pd.DataFrame, column: str, resolution: int) -> str | None:
    """The border by ``column``: from its onward minima where the table has them (written since they
    exist), else by the backward scan the older tables were written with."""
    onward = ONWARD.get(column)
    if onward in convs.columns:
        return border_onward(convs, column, onward, resolution)
    return border_in(convs, column, resolution)


def borders_of(convs: pd.DataFrame, resolution: int) -> tuple[str | None, str | None]:
    """(b_min, b_max) of the Conv2d rows of a receptive-field table (built here or read from a CSV):
    side branches left out, values read as numbers ('inf' = global), b_min by ``prev_r_min``
    (``in_r_min`` in tables written before that column existed), b_max by ``in_r_max``; both from
    the ``onward_*`` minima when the table has them (``border_onward``)."""
    if "side_branch" in convs.columns:
        convs = convs[~side_branch_flags(convs["side_branch"])]
    by_min = "prev_r_min" if "prev_r_min" in convs.columns else "in_r_min"
    columns = [c for c in (by_min, "in_r_max", *ONWARD.values()) if c in convs.columns]
    numeric = convs.assign(**{column: pd.to_numeric(convs[column], errors="coerce") for column in columns})
    return _border(numeric, by_min, resolution), _border(numeric, "in_r_max", resolution)
