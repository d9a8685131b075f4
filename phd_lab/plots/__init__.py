"""Plots drawn from saved tables only (matplotlib is imported lazily inside the functions).

Every figure is made here, on an Agg canvas of its own and outside pyplot: the process's backend and its pyplot
figures are the caller's. ``matplotlib.use("Agg")`` before each plot closed every open pyplot figure of a notebook
and replaced its inline backend for good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure(figsize: tuple[float, float] | None = None, dpi: float | None = None) -> "Figure":
    """A figure drawn by Agg that no pyplot backend holds (saved with ``savefig``, freed with ``close``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    made = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(made)
    return made


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, dpi: float | None = None,
             **grid: Any) -> tuple["Figure", Any]:
    """``plt.subplots`` on such a figure: the figure and its axes (``grid``: sharex, squeeze, gridspec_kw, ...)."""
    made = figure(figsize, dpi)
    return made, made.subplots(nrows, ncols, **grid)


def close(made: "Figure") -> None:
    """Free a figure's artists now, as ``plt.close`` did (no pyplot manager holds it: nothing else to forget)."""
    made.clear()
