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
