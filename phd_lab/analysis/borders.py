"""The border-layer rule on a table of input receptive fields (thesis §9.3, §10.2).

Kept apart from ``receptive_field`` (which traces models and needs torch) so that reading a
saved ``receptive_field.csv`` — the report over hundreds of runs — never imports torch.
"""

from __future__ import annotations

import math

import pandas as pd


def border_in(convs: pd.DataFrame, column: str, resolution: int) -> str | None:
    """The border layer by one column of numeric input receptive fields of the Conv2d rows (in
    forward order): the first from which on every value exceeds ``resolution``, global (inf) rows
    never starting the sequence."""
    border = None
    for layer, value in zip(reversed(convs["layer"].tolist()), reversed(convs[column].tolist())):
        if not value > resolution:
            break
        if math.isfinite(value):
            border = layer
    return border


def side_branch_flags(column: pd.Series) -> pd.Series:
    """The ``side_branch`` column as booleans, whether written by pandas (True) or by hand (true, 1)."""
    return column.astype(str).str.lower().isin(["true", "1", "1.0"])


def borders_of(convs: pd.DataFrame, resolution: int) -> tuple[str | None, str | None]:
    """(b_min, b_max) of the Conv2d rows of a receptive-field table (built here or read from a CSV):
    side branches left out, values read as numbers ('inf' = global), b_min by ``prev_r_min``
    (``in_r_min`` in tables written before that column existed), b_max by ``in_r_max``."""
    if "side_branch" in convs.columns:
        convs = convs[~side_branch_flags(convs["side_branch"])]
    by_min = "prev_r_min" if "prev_r_min" in convs.columns else "in_r_min"
    numeric = convs.assign(**{column: pd.to_numeric(convs[column], errors="coerce") for column in (by_min, "in_r_max")})
    return border_in(numeric, by_min, resolution), border_in(numeric, "in_r_max", resolution)
