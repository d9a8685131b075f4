"""How long a probe job waits for its worker processes to end, with and without their teardown (issue 5).

A probe job leaves its worker pool only when every worker process has ended. A worker that has
imported scikit-learn and SciPy spends about half a second freeing their modules when its interpreter
shuts down. Since session 28, the runner's worker initializer makes a worker that has finished its
tasks exit without that teardown. For each of ``--rounds`` rounds, this script starts a one-worker
spawn pool twice, in alternating order:
  - "teardown": the runner's initializer, with that exit hook removed again;
  - "runner": the runner's initializer as the job uses it.
Each worker imports the solvers' modules and fits a small SAGA probe, as a job's worker does. The
script times the start (spawn, imports and the fit) and the end (``shutdown(wait=True)``, what the
job waits for). It prints the medians and the paired ratio of the end times.

  python benchmarks/worker_exit.py --rounds 9
"""

from __future__ import annotations

import argparse
import atexit
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired_stats import interval_label, median_interval  # noqa: E402
from phd_lab import worker_processes  # noqa: E402
from phd_lab.probes import runner  # noqa: E402


def _with_teardown(parent: int) -> None:
    """The runner's initializer without its exit hook: workers end through the interpreter's teardown."""
    worker_processes.init_worker(parent)
    atexit.unregister(worker_processes.exit_without_teardown)


def _small_fit() -> int:
    """What a job's worker has loaded after its first layer: the solvers' modules, one SAGA fit."""
    import numpy as np

    from phd_lab.probes.fit import probe_arrays
    from phd_lab.probes.settings import ProbeSettings
    restore = runner._single_threaded("saga")
    try:
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((600, 64), dtype=np.float32), rng.integers(0, 3, 600)
        probe_arrays(0, "layer", x[:500], y[:500], x[500:], y[500:], ProbeSettings(max_iter=5).resolved())
    finally:
        restore()
    return os.getpid()


def one_pool(initializer) -> tuple[float, float]:
    """Seconds to the first result (spawn, imports, fit) and seconds ``shutdown(wait=True)`` takes."""
    start = time.perf_counter()
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=initializer,
                               initargs=(os.getpid(),))
    pool.submit(_small_fit).result()
    ready = time.perf_counter()
    pool.shutdown(wait=True)
    return ready - start, time.perf_counter() - ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    rounds = parser.parse_args().rounds
    variants = {"teardown": _with_teardown, "runner": worker_processes.init_worker}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    one_pool(worker_processes.init_worker)  # warm the file cache
    for round_ in range(rounds):
        for name in (("teardown", "runner") if round_ % 2 == 0 else ("runner", "teardown")):
            times[name].append(one_pool(variants[name]))
    print(f"one-worker spawn pool, {rounds} paired rounds, median seconds")
    print(f"{'worker end':>12} {'start':>7} {'end':>7}")
    for name, values in times.items():
        print(f"{name:>12} {median_interval([s for s, _ in values])[0]:7.3f} "
              f"{median_interval([e for _, e in values])[0]:7.3f}")
    ratios = [teardown / runner_ for (_, teardown), (_, runner_) in zip(times["teardown"], times["runner"])]
    median, low, high = median_interval(ratios)
    print(f"end with teardown / end without: {median:.1f}x [{low:.1f}, {high:.1f}] ({interval_label(len(ratios))})")


if __name__ == "__main__":
    main()
