"""Read a saved per-layer table (a CSV with a ``layer`` column) with its layer names exactly as written."""
from __future__ import annotations

import io

import pandas as pd

LAYER = "layer"


def read_layer_table(text: str) -> pd.DataFrame:
    """The CSV ``text`` as a DataFrame whose ``layer`` column, where it has one, holds the names as written.

    pandas reads an nn.Sequential's names ("8", "0.10") as numbers, and names such as "NA", "null" or "nan" (a
    model's attributes) as missing values, as it does an empty cell: such names then matched no saturation column,
    or were drawn as "nan". Only the ``layer`` column is read as text; every other column as pandas reads it.
    """
    frame = pd.read_csv(io.StringIO(text))
    if LAYER in frame.columns:
        names = pd.read_csv(io.StringIO(text), usecols=[LAYER], dtype=str, keep_default_na=False)[LAYER]
        frame[LAYER] = names
    return frame
