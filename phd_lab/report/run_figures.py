"""Draw the run figures a report lacks on several cores.

Drawing is most of a report's first build over many runs (0.6–1 s a figure, against about 0.05 s for the
rest of a run's analysis), and each figure depends only on its run's tables and summary, so worker
processes draw them while this process does all reading and writing.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator, Sequence

from phd_lab.analysis.run_tables import RunTables
from phd_lab.interrupts import raise_interruption_behind
from phd_lab.plots.run_figure import figure_png
from phd_lab.worker_processes import spawn_pool, stop_pool, worker_death, worker_exit_codes

log = logging.getLogger(__name__)

# A worker's start (spawn, then importing pandas and matplotlib) costs about as much as drawing one or two figures
# (1.2 s against 0.6-0.8 s a figure on a 2-core VM), so a worker is started for every FIGURES_PER_WORKER figures.
FIGURES_PER_WORKER = 4

FigureRequest = tuple[RunTables, dict[str, Any]]


def figure_workers(figures: int, processes: int) -> int:
    """How many worker processes draw ``figures`` figures when up to ``processes`` may: 0 (this process draws
    them) where fewer than two workers would have enough to do, or where this process may have no children."""
    if multiprocessing.current_process().daemon:  # e.g. a pool's or a Dask worker: it may not start processes
        return 0
    workers = min(processes, figures // FIGURES_PER_WORKER)
    return workers if workers >= 2 else 0


def draw_run_figures(requests: Sequence[FigureRequest], *, processes: int = 0,
                     progress: bool = False) -> Iterator[tuple[int, bytes | Exception]]:
    """Yield ``(position, figure)`` for every request as its figure is ready: the PNG bytes, or the exception that
    stopped the drawing, so that one odd run never stops the others. Up to ``processes`` worker processes draw
    them; what they cannot (the pool could not start, or a worker was killed) is drawn in this process."""
    from tqdm import tqdm

    from phd_lab.progress import bar_options

    workers = figure_workers(len(requests), processes)
    left = set(range(len(requests)))
    with tqdm(total=len(requests), desc="drawing run figures", unit="figure",
              disable=not progress or not requests, **bar_options(transient=True)) as bar:
        if workers:
            log.info("Drawing %d run figures in %d worker processes", len(requests), workers)
            for position, figure in _drawn_by_workers(requests, workers):
                left.discard(position)
                bar.update()
                yield position, figure
            if left:
                log.warning("%d run figures were not drawn by the worker processes; they are drawn in this process",
                            len(left))
        for position in sorted(left):
            figure = _draw_here(requests[position])
            bar.update()
            yield position, figure


def _drawn_by_workers(requests: Sequence[FigureRequest], workers: int) -> Iterator[tuple[int, bytes | Exception]]:
    """``(position, figure)`` as the workers finish. A figure whose worker was lost (killed, interrupted) or that no
    worker took (the pool could not start) is not yielded."""
    pool = None
    futures: dict[Future, int] = {}
    try:
        pool = spawn_pool(workers)
        for position, request in enumerate(requests):
            try:
                future = pool.submit(figure_png, *request)
            except BrokenProcessPool as error:  # a worker died while the figures were handed over (killed at its
                future = Future()  # start): said below as a worker lost later, not as a pool that could not start
                future.set_exception(error)
                futures[future] = position
                break
            futures[future] = position
    except (OSError, RuntimeError) as error:  # no processes or semaphores left (a login node's limits)
        log.warning("The figure worker processes could not start (%s: %s)", type(error).__name__, error)
        if pool is not None:
            stop_pool(pool)
        return
    except BaseException:  # Ctrl-C or SIGTERM while the figures were handed over: no worker goes on drawing
        if pool is not None:
            stop_pool(pool)
        raise
    try:
        lost = False
        for future in as_completed(futures):
            error = future.exception()
            if error is None:
                yield futures[future], future.result()
            elif isinstance(error, Exception) and not isinstance(error, BrokenProcessPool):
                yield futures[future], error
            elif not lost:  # killed or interrupted (BrokenProcessPool for every figure not back yet)
                lost = True
                _say_lost(pool, error)
    except BaseException:  # Ctrl-C, SIGTERM, or the report stopped reading: no worker goes on drawing for nobody
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _say_lost(pool: ProcessPoolExecutor, error: BaseException) -> None:
    """Say how a figure worker was lost. One interrupted (SIGINT: Ctrl-C, or sent to it alone) stops the report as
    Ctrl-C does (exit 130), as it stops the probe job: it was said to be 'killed by a signal, e.g. the out-of-memory
    killer' and the report drew on. Otherwise the warning names what ended it (``worker_death``)."""
    codes = worker_exit_codes(pool) if isinstance(error, BrokenProcessPool) else []
    if isinstance(error, KeyboardInterrupt) or -signal.SIGINT in codes:
        log.warning("A figure worker process was interrupted (SIGINT); the report stops as on Ctrl-C")
        raise KeyboardInterrupt
    log.warning("A figure worker process ended abruptly: %s (%s)", worker_death(codes), type(error).__name__)


def _draw_here(request: FigureRequest) -> bytes | Exception:
    try:
        return figure_png(*request)
    except Exception as error:  # noqa: BLE001 - reported as that run's failed analysis
        raise_interruption_behind(error)  # but a Ctrl-C as matplotlib was first imported stops the report
        return error
