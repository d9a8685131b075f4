"""Where the report writes the tables of its repeated runs, and how it knows them and its page again (no heavy
imports: the report command's options and checks read this before anything is analysed)."""

from __future__ import annotations

from pathlib import Path

TITLE = "phd-lab report: "  # marks a page this command wrote (every version): --out replaces no other file

DEFAULT_ALPHA = 0.05  # Table 5's level; Tables 4 and 14–16 use 0.01 (``report --alpha``)

REPETITION_TABLES = ("saturation_stability", "relevant_eigenspace")  # file name suffixes, in the page's order
_HEADERS = ("group,layer,position,", "group,basis,delta,")  # how those tables begin


def is_repetition_table(path: Path) -> bool:
    """Whether ``path`` is a table a report wrote (which the next report may replace or remove). A FIFO there is
    none: it is not read (``open_regular``), and opening it waited for a writer for ever."""
    from phd_lab.atomic import open_regular
    try:
        with open_regular(path) as handle:
            first = handle.readline().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith(_HEADERS)


def csv_path(out_path: Path, suffix: str) -> Path:
    """Where the report writes one of its repetition tables: beside the page, named after it."""
    return out_path.with_name(f"{out_path.stem}_{suffix}.csv")
