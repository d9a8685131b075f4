"""Session 45: resource growth over long horizons in the probe job and on Dask, in one process.

(p) the probe job (``probe_cli``, what probe_main.py calls) over --runs latents folders of --layers layers each
    (--samples samples x --features features, 10 classes), one call per run, all in one process: with -mp 0, with
    -mp 2, then -mp 2 again over the same folders (every layer a cache hit). The parent's counters (those of
    benchmarks/soak.py plus its child processes) are sampled at chosen layers of the first and last run (as the
    parent receives each layer's record) and after each run; the PIDs of the children seen during each run say
    whether worker processes are reused or started afresh;
(d) a grid of --points runs of 1 epoch (tiny VGG11 on Digits at 8 px) through ``main_cli --scheduler local:2``,
    and through the library (``Main.run_on_cluster`` on a ``LocalCluster`` of 2 workers this script starts, one
    point per call): the client process's counters per run and, through ``client.run``, each worker's RSS, fds,
    threads, figures, handlers, modules and gc objects after each run.
Usage: python benchmarks/soak_probes.py [--runs 8] [--layers 40] [--samples 300] [--features 64] [--points 24]
       [--skip p,d]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# soak also puts the project on the path
from soak import TINY, counters, grid_values, show, succeeded, write_config  # noqa: E402


def children() -> list[int]:
    """PIDs of this process's descendants (worker processes, a local cluster's nannies and workers)."""
    import psutil
    return sorted(child.pid for child in psutil.Process().children(recursive=True))


def left_children() -> list[str]:
    """What each remaining descendant runs (its command line's last words)."""
    import psutil
    return [" ".join(child.cmdline()[-2:])[-70:] for child in psutil.Process().children(recursive=True)]


def children_rss_mb() -> float:
    """The RSS of this process's descendants together (the probe job's worker processes)."""
    import psutil
    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2 ** 20


def parent_counters() -> dict[str, float]:
    return {**counters(), "children": len(children()), "children_mb": children_rss_mb()}


def make_latents(folder: Path, runs: int, layers: int, samples: int, features: int) -> list[Path]:
    """``runs`` latents folders with ``layers`` noisy random projections of 10 Gaussian classes each."""
    import numpy as np

    from phd_lab.probes.synthetic import write_latents
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.5, (10, features))
    y = rng.integers(0, 10, 2 * samples)
    base = centers[y] + rng.normal(0, 1.0, (2 * samples, features))
    made = []
    for run in range(runs):
        arrays = {}
        for layer in range(layers):
            mix = rng.normal(0, 1 / np.sqrt(features), (features, features))
            x = (base @ mix + rng.normal(0, 0.1 * (layer + 1) / layers, base.shape)).astype(np.float32)
            arrays[f"block{layer}.conv"] = (x[:samples], x[samples:])
        run_dir = folder / f"run{run}"
        run_dir.mkdir(parents=True)
        made.append(write_latents(run_dir / "latents", arrays, y[:samples], y[samples:], run_dir, 0.9))
    return made


class LayerSampler:
    """Wraps the parent's hand-over of each layer's record (``_Results.deliver``) to sample the counters at
    chosen layers of chosen runs and collect the PIDs of the children alive meanwhile."""

    def __init__(self) -> None:
        from phd_lab.probes import runner
        self.runner, self.original = runner, runner._Results.deliver
        self.layer, self.marks, self.rows, self.pids = 0, set(), {}, set()

    def start_run(self, marks: set[int]) -> None:
        self.layer, self.marks, self.rows, self.pids = 0, marks, {}, set()

    def __enter__(self) -> "LayerSampler":
        sampler = self

        def deliver(finished, position, record, from_cache):
            sampler.original(finished, position, record, from_cache)
            sampler.layer += 1
            sampler.pids.update(children())
            if sampler.layer in sampler.marks:
                sampler.rows[sampler.layer] = parent_counters()
        self.runner._Results.deliver = deliver
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner._Results.deliver = self.original


def soak_probes(folder: Path, runs: int, layers: int, samples: int, features: int) -> None:
    from phd_lab.probes.cli import probe_cli
    latents = make_latents(folder / "latents", runs, layers, samples, features)
    show("before", parent_counters())
    devnull = open(os.devnull, "w")
    with LayerSampler() as sampler:
        for label, processes, cache in (("-mp 0", 0, "cache0"), ("-mp 2", 2, "cache2"),
                                        ("-mp 2 cached", 2, "cache2")):
            started = time.perf_counter()
            all_pids: list[set[int]] = []
            for run, path in enumerate(latents, 1):
                sampler.start_run({1, 2, 10, layers // 2, layers} if run in (1, runs) else set())
                stdout, sys.stdout = sys.stdout, devnull
                try:
                    code = probe_cli(["--latents", str(path), "-mp", str(processes), "--cache-dir",
                                      str(folder / cache), "--no-progress", "-q"])
                finally:
                    sys.stdout = stdout
                succeeded(code, "probe_main.py")
                all_pids.append(set(sampler.pids))
                if run in (1, runs):
                    for layer in sorted(sampler.rows):
                        show(f"r{run} layer {layer}", sampler.rows[layer])
                show(f"after run {run}", parent_counters())
            seconds = time.perf_counter() - started
            distinct = len(set().union(*all_pids))
            print(f"(p) {label}: {runs} runs x {layers} layers ({samples} x {features}) in {seconds:.1f} s; "
                  f"children seen per run {[len(p) for p in all_pids]}, distinct over all runs {distinct}; "
                  f"left after the last run: {left_children()}", flush=True)
    devnull.close()


def worker_counters(dask_worker=None) -> dict[str, float]:
    """The counters of a Dask worker process (self-contained: pickled by value to the worker)."""
    import gc
    import logging
    import os
    import sys
    gc.collect()
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    figures = 0
    if "matplotlib.figure" in sys.modules:
        from matplotlib.figure import Figure
        figures = sum(issubclass(type(o), Figure) for o in gc.get_objects())
    loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "fds": len(os.listdir("/proc/self/fd")),
            "threads": int(status["Threads"]), "figures": figures, "all_h": sum(len(lg.handlers) for lg in loggers),
            "modules": len(sys.modules), "gc_objects": len(gc.get_objects()), "pid": os.getpid()}


def soak_dask_cli(folder: Path, points: int) -> None:
    from phd_lab.cli import main_cli
    sub = folder / "cli"
    sub.mkdir()
    values = grid_values(points)
    config = write_config(sub, "grid.json", epoch=1, **values)
    points = len(values["run_id"]) * len(values["optimizer_args"]["lr"])  # whole rows of the 6 learning rates
    before = parent_counters()
    show("before", before)
    for attempt in (1, 2):  # the second call finds every point finished
        started = time.perf_counter()
        stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
        try:
            succeeded(main_cli(["--config", str(config), "--scheduler", "local:2", "--no-progress", "-q"]),
                      "main.py --scheduler local:2")
        finally:
            sys.stdout.close()
            sys.stdout = stdout
        print(f"(d) main_cli --scheduler local:2, call {attempt}: {points} points in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        show(f"after call {attempt}", parent_counters())
        print(f"    children left: {left_children()}", flush=True)


def soak_dask_library(folder: Path, points: int) -> None:
    import dask
    import distributed

    from phd_lab.distributed import WORKER_CONFIG, worker_thread_environment
    from phd_lab.experiment import Main
    sub = folder / "library"
    sub.mkdir()
    config = write_config(sub, "grid.json", epoch=1, **grid_values(points))
    with dask.config.set(WORKER_CONFIG), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     env=worker_thread_environment(2), dashboard_address=":0",
                                     silence_logs=logging.WARNING) as cluster, \
            distributed.Client(cluster) as client:
        main = Main(progress=False)
        grid = main.load(config)
        rows = [("start", parent_counters(), client.run(worker_counters))]
        started = time.perf_counter()
        for index in range(len(grid)):
            outcomes = main.run_on_cluster(grid, cluster.scheduler_address, indices=[index])
            assert all(o.status == "finished" for o in outcomes), outcomes
            rows.append((f"run {index + 1}", parent_counters(), client.run(worker_counters)))
        seconds = time.perf_counter() - started
    print(f"(d) library: {len(grid)} points, one Main.run_on_cluster call each, in {seconds:.1f} s", flush=True)
    for label, parent, workers in rows:
        if label in ("start", "run 1", "run 2", "run 3") or label.endswith(f" {len(grid) // 2}") \
                or label.endswith(f" {len(grid)}"):
            show(label + " client", parent)
            for address, row in sorted(workers.items()):
                show("  worker " + address.rsplit(":", 1)[-1], row)
    show("after cluster", parent_counters())
    print(f"    children left: {left_children()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--points", type=int, default=24)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: p, d (both Dask parts), "
                                                   "dcli, dlib")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    logging.basicConfig(level=logging.WARNING)
    assert TINY["device"] == "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "p" not in skip:
            soak_probes(folder, args.runs, args.layers, args.samples, args.features)
        if "d" not in skip and "dcli" not in skip:
            soak_dask_cli(folder, args.points)
        if "d" not in skip and "dlib" not in skip:
            soak_dask_library(folder, args.points)


if __name__ == "__main__":
    main()
