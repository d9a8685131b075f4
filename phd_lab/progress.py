"""Progress bars that suit where they are written: live in a terminal, a line a minute in a file.

tqdm redraws a bar up to ten times a second. In a terminal that is one line kept up to date; where stderr is a
file (a SLURM job's ``.out``, ``nohup``, a pipe), every redraw stays in it: a 24-hour job wrote about 95 MB of
bars. ``bar_options`` gives the keyword arguments every tqdm of phd-lab is built with: none in a terminal (or a
Jupyter kernel, whose widget bars are not written to the file), and otherwise a redraw at most every
``FILE_INTERVAL`` seconds, so a job's log still shows how far each loop got, in kilobytes; there each drawing is
a line of its own (``console.BarLines``), so that the log lines between them start clean.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import IO, Any

from phd_lab.console import BarLines, BarStream, Discarded

FILE_INTERVAL = 60.0  # seconds between redraws of a bar written to a file


def bar_options(stream: IO[str] | None = None, transient: bool = False) -> dict[str, Any]:
    """tqdm keyword arguments for a bar written to ``stream`` (default: ``sys.stderr``, where tqdm writes). Not a
    terminal: ``mininterval`` and ``maxinterval`` (tqdm's monitor thread would redraw a slow bar every 10 s) of
    ``FILE_INTERVAL``; a bar still shows when it starts. On ``sys.stderr``, also the ``file`` to draw on: stderr
    wrapped so that a reader that has gone ends the bars, not the run (not a terminal: each drawing on a line of its
    own, ``BarLines``), or where stderr is closed (``2>&-``), a stream that drops them. A ``transient`` bar (an
    epoch's, a pass's) vanishes when it ends in a terminal; in a file it draws its last state (count, time, rate)
    as any bar does: there it was left at its first drawing, 0 %, and a job's log read as if no loop had progressed."""
    leave_the_start_method_unchosen()
    if stream is not None:
        return _redraws(_live(stream), transient)
    if sys.stderr is None:
        return {"file": Discarded()}
    if _in_jupyter(sys.stderr):
        return _redraws(True, transient)
    live = _live(sys.stderr)
    return {**_redraws(live, transient), "file": BarStream(sys.stderr) if live else BarLines(sys.stderr)}


def leave_the_start_method_unchosen() -> None:
    """Make tqdm's multiprocessing lock before its first bar (or its first log line written above the bars,
    ``tqdm.write``) does, by the start method the platform would choose (the lock tqdm made there) without choosing
    it (``start_method_context``): tqdm takes the default context, which fixes the process' start method. Left to
    tqdm where the method is chosen already, or its lock made."""
    from tqdm.std import TqdmDefaultWriteLock

    from phd_lab.worker_processes import start_method_context

    if hasattr(TqdmDefaultWriteLock, "mp_lock") or multiprocessing.get_start_method(allow_none=True) is not None:
        return
    with TqdmDefaultWriteLock.th_lock:
        if not hasattr(TqdmDefaultWriteLock, "mp_lock"):
            try:
                TqdmDefaultWriteLock.mp_lock = start_method_context().RLock()
            except (ImportError, OSError):  # no working semaphores here: tqdm then does without one too
                TqdmDefaultWriteLock.mp_lock = None


def _in_jupyter(stream: IO[str]) -> bool:
    """Whether ``stream`` is a Jupyter kernel's, where tqdm.auto draws a widget (not written to the file)."""
    return type(stream).__module__.startswith("ipykernel")


def _live(stream: IO[str]) -> bool:
    """Whether a bar on ``stream`` is drawn live, one line kept up to date: in a terminal or Jupyter."""
    if _in_jupyter(stream):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _redraws(live: bool, transient: bool) -> dict[str, Any]:
    """How often a bar is redrawn (tqdm's default where it is ``live``, else ``FILE_INTERVAL``), and whether it
    stays when it ends: a live ``transient`` bar is cleared; a file keeps every bar's last drawing."""
    if live:
        return {"leave": False} if transient else {}
    return {"mininterval": FILE_INTERVAL, "maxinterval": FILE_INTERVAL}
