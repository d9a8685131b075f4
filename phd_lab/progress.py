"""Progress bars that suit where they are written: live in a terminal, a line a minute in a file.

tqdm redraws a bar up to ten times a second. In a terminal that is one line kept up to date; where stderr is a
file (a SLURM job's ``.out``, ``nohup``, a pipe), every redraw stays in it: a 24-hour job wrote about 95 MB of
bars. ``bar_options`` gives the keyword arguments every tqdm of phd-lab is built with: none in a terminal (or a
Jupyter kernel, whose widget bars are not written to the file), and otherwise a redraw at most every
``FILE_INTERVAL`` seconds, so a job's log still shows how far each loop got, in kilobytes.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from phd_lab.console import Discarded

FILE_INTERVAL = 60.0  # seconds between redraws of a bar written to a file


def bar_options(stream: IO[str] | None = None) -> dict[str, Any]:
    """tqdm keyword arguments for a bar written to ``stream`` (default: ``sys.stderr``, where tqdm writes). Not a
    terminal: ``mininterval`` and ``maxinterval`` (tqdm's monitor thread would redraw a slow bar every 10 s) of
    ``FILE_INTERVAL``; a bar still shows when it starts and is cleared when it ends. No stderr at all: a stream
    that drops the bars."""
    stream = sys.stderr if stream is None else stream
    if stream is None:  # stderr closed by the caller (``2>&-``): bars that no one can see, drawn nowhere
        return {"file": Discarded()}
    if type(stream).__module__.startswith("ipykernel"):  # Jupyter: tqdm.auto draws a widget
        return {}
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        terminal = False
    return {} if terminal else {"mininterval": FILE_INTERVAL, "maxinterval": FILE_INTERVAL}
