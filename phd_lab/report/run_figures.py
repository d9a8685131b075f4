"""Draw the run figures a report lacks on several cores.

Drawing is most of a report's first build over many runs (0.6–1 s a figure, against about 0.05 s for the
rest of a run's analysis), and each figure depends only on its run's tables and summary, so worker
processes draw them while this process does all reading and writing.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Sequence

from phd_lab.analysis.run_tables import RunTables
from phd_lab.plots.run_figure import figure_png
from phd_lab.worker_processes import spawn_pool, terminate_workers

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
                     progress: bool = False) -> list[bytes | Exception]:
    """The PNG bytes of each requested run figure, in order; a figure that could not be drawn is its exception
    instead, so that one odd run never stops the others. Up to ``processes`` worker processes draw them."""
    from tqdm import tqdm

    results: list[bytes | Exception | None] = [None] * len(requests)
    workers = figure_workers(len(requests), processes)
    with tqdm(total=len(requests), desc="drawing run figures", unit="figure", leave=False,
              disable=not progress or not requests) as bar:
        if workers:
            log.info("Drawing %d run figures in %d worker processes", len(requests), workers)
            _draw_in_workers(requests, workers, results, bar)
        lost = [position for position, result in enumerate(results)
                if result is None or isinstance(result, BrokenProcessPool)]
        if workers and lost:
            log.warning("A figure worker process ended abruptly (killed by a signal or crashed); the %d figures it "
                        "left are drawn in this process", len(lost))
        for position in lost:
            results[position] = _draw_here(requests[position])
            if not workers:
                bar.update()
    return results  # type: ignore[return-value]


def _draw_in_workers(requests: Sequence[FigureRequest], workers: int, results: list[Any], bar: Any) -> None:
    with spawn_pool(workers) as pool:
        futures = {pool.submit(figure_png, *request): position for position, request in enumerate(requests)}
        try:
            for future in as_completed(futures):
                error = future.exception()
                results[futures[future]] = future.result() if error is None else error
                bar.update()
        except BaseException:  # Ctrl-C, SIGTERM: no worker goes on drawing for nobody
            terminate_workers(pool)
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _draw_here(request: FigureRequest) -> bytes | Exception:
    try:
        return figure_png(*request)
    except Exception as error:  # noqa: BLE001 - reported as that run's failed analysis
        return error
