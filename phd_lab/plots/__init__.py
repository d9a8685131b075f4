"""Plots drawn from saved tables only (matplotlib is imported lazily inside the functions).

Every figure is made here, on an Agg canvas of its own and outside pyplot: the process's backend and its pyplot
figures are the caller's. ``matplotlib.use("Agg")`` before each plot closed every open pyplot figure of a notebook
and replaced its inline backend for good.
"""

from __future__ import annotations

import logging
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def matplotlib_module() -> ModuleType:
    """``matplotlib``, imported also where ``MPLBACKEND`` names no backend it knows (a typo, or ``inline`` from a
    notebook's environment): its import refused with ValueError, and the first figure (the saturation plot at the
    end of epoch 1) failed the run, though these figures are drawn on Agg canvases whatever the backend."""
    try:
        import matplotlib
    except ValueError as error:  # "Key backend: 'nonsense' is not a valid value for backend; supported ..."
        backend = os.environ.get("MPLBACKEND")
        if not backend or "backend" not in str(error):
            raise
        for name in [name for name in sys.modules if name.startswith("matplotlib.")]:  # of the failed import
            del sys.modules[name]
        del os.environ["MPLBACKEND"]
        try:
            import matplotlib
        finally:
            os.environ["MPLBACKEND"] = backend
        log.warning("MPLBACKEND=%r names no matplotlib backend (%s); phd-lab draws its figures on Agg canvases "
                    "and leaves pyplot's default backend in place.", backend, error)
    return matplotlib


def figure(figsize: tuple[float, float] | None = None, dpi: float | None = None) -> "Figure":
    """A figure drawn by Agg that no pyplot backend holds (saved with ``savefig``, freed with ``close``)."""
    matplotlib_module()
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
