"""Session 44: resource growth over long horizons, in one process.

(a) one run of --epochs epochs (saturation tracking on): RSS, open file descriptors, threads, matplotlib figures
    alive, logging handlers, gc objects and the epoch's wall time at chosen epochs;
(s) a grid of --step-points points with the quickstart's post-processing steps (counters per run);
(b) a grid of --points points of 1 epoch each, once through ``Main`` and once through ``main_cli`` (what main.py
    calls), in the same process: the same counters per run, plus handlers on the root and phd_lab loggers,
    sys.modules and sys.path, the registry caches, and the gc types that grew most;
(c) ``--dry-run`` of that grid and the report over its logs folder, at a third, two thirds and all of the runs:
    seconds per run.
Counters are sampled through a callback factory (``phd_lab.executor.CALLBACK_FACTORIES``): the factory is called
when a run starts (after the previous run's post-processing), its callback at each epoch's end.
Usage: python benchmarks/soak.py [--epochs 150] [--points 60] [--step-points 18] [--skip a,s,b,c] [--mode inline]
       [--tracemalloc]
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import linecache
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {"model": "vgg11", "model_args": {"width": 0.0625}, "dataset": "Digits", "resolution": 8,
        "batch_size": 128, "optimizer": "adam", "optimizer_args": {"lr": 0.003}, "metrics": ["Accuracy"],
        "seed": None, "device": "cpu", "cpu_threads": 1}


def status_field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return -1


def figures_alive() -> int:
    if "matplotlib.figure" not in sys.modules:
        return 0
    from matplotlib.figure import Figure
    return sum(issubclass(type(o), Figure) for o in gc.get_objects())


def all_handlers() -> int:
    loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]
    return sum(len(lg.handlers) for lg in loggers)


def registry_caches() -> int:
    """Entries of the module-level caches a run may fill (lru caches and the fused-kernel cache)."""
    total = 0
    for name, attribute in (("phd_lab.tracking.saturation", None), ("phd_lab.models.torchvision_models", None),
                            ("phd_lab.report.figure_reuse", None), ("phd_lab.report.collect", None)):
        module = sys.modules.get(name)
        if module is None:
            continue
        for value in vars(module).values():
            info = getattr(value, "cache_info", None)
            if callable(info) and getattr(value, "__module__", None) == name:
                total += info().currsize
    return total


def counters() -> dict[str, float]:
    gc.collect()
    return {"rss_mb": status_field("VmRSS") / 1024, "fds": len(os.listdir("/proc/self/fd")),
            "threads": status_field("Threads"), "py_threads": threading.active_count(), "figures": figures_alive(),
            "root_h": len(logging.getLogger().handlers), "phd_h": len(logging.getLogger("phd_lab").handlers),
            "all_h": all_handlers(), "loggers": len(logging.Logger.manager.loggerDict),
            "modules": len(sys.modules), "sys_path": len(sys.path), "caches": registry_caches(),
            "fx_src": sum(key.startswith("<eval_with_key>") for key in list(linecache.cache)),
            "gc_objects": len(gc.get_objects())}


def type_counts() -> collections.Counter:
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def show(label: str, row: dict[str, float]) -> None:
    print(f"{label:>14} " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in row.items()), flush=True)


def show_growth(before: collections.Counter, after: collections.Counter, top: int = 12) -> None:
    grown = (after - before).most_common(top)
    print("    gc types grown: " + (", ".join(f"{t}+{n}" for t, n in grown) or "none"), flush=True)


class Sampler:
    """A callback factory that records the counters at each run's start and chosen epochs' ends."""

    def __init__(self, epochs: set[int], last_run: int = 0) -> None:
        self.last_run = last_run
        self.seconds: dict[int, float] = {}  # each epoch's wall time, from one epoch's end to the next
        self.epochs, self.run_starts, self.epoch_rows, self._last, self.types = epochs, [], {}, None, {}

    def __call__(self, config, rundir):
        from phd_lab.callbacks import Callback
        self.run_starts.append(counters())
        if len(self.run_starts) in (2, 3) or len(self.run_starts) == self.last_run:
            self.types[len(self.run_starts)] = type_counts()
        sampler = self

        class Probe(Callback):
            def on_fit_start(self, trainer, bundle) -> None:
                sampler._last = time.perf_counter()

            def on_epoch_end(self, trainer, bundle, epoch, row) -> None:
                now = time.perf_counter()
                seconds, sampler._last = now - sampler._last, now
                sampler.seconds[epoch] = seconds
                if epoch in sampler.epochs:
                    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in trainer.model.modules())
                    sampler.epoch_rows[epoch] = {"hooks": hooks, **counters()}
                    sampler.types[epoch] = type_counts()
        return Probe()


def succeeded(exit_code: int, command: str) -> None:
    """Stop the soak where a command it times failed. Not ``assert command(...) == 0``: ``python -O`` compiles an
    assert away with the call in it, so the command never ran and the soak printed its 0 s as a measurement."""
    if exit_code != 0:
        raise SystemExit(f"{command} exited with {exit_code}; the soak stops (its timings would not be of a run).")


def write_config(folder: Path, name: str, **values: object) -> Path:
    path = folder / name
    path.write_text(json.dumps({**TINY, "logs_dir": str(folder / "logs"), **values}))
    return path


def soak_epochs(folder: Path, epochs: int, trace: bool, mode: str) -> None:
    from phd_lab import executor
    from phd_lab.experiment import Main
    marks = {1, 2, 10, 50, 100, 150, epochs} & set(range(1, epochs + 1))
    sampler = Sampler(marks)
    executor.CALLBACK_FACTORIES.append(sampler)
    try:
        config = write_config(folder, "epochs.json", epoch=epochs, tracking_mode=mode)
        main = Main(progress=True)  # bars on stderr, as main.py shows them
        show("before", counters())
        if trace:
            import tracemalloc
            tracemalloc.start(8)
        grid = main.load(config)
        sampler.epochs = marks
        started = time.perf_counter()
        main.run(grid)
        print(f"(a) {epochs} epochs, tracking_mode {mode}, in {time.perf_counter() - started:.1f} s (an epoch's wall "
              f"time: training, test, tracking, plot, CSV and checkpoint)")
        for epoch in sorted(sampler.epoch_rows):
            show(f"epoch {epoch}", sampler.epoch_rows[epoch])
        for end in sorted({10, 50, 100, 150, epochs}):
            window = [sampler.seconds[e] for e in range(max(2, end - 9), end + 1) if e in sampler.seconds
                      and e - 1 not in sampler.epochs]  # not an epoch after a sample (gc counts cost ~1 s)
            if window and end <= epochs:
                print(f"    epochs {max(2, end - 9)}-{end}: median wall time {statistics.median(window):.3f} s "
                      f"(min {min(window):.3f})")
        show("after run", counters())
        marked = sorted(sampler.types)
        print(f"    between epoch {marked[1]} and {marked[-1]}:", end="")
        show_growth(sampler.types[marked[1]], sampler.types[marked[-1]])
        if trace:
            snapshot = tracemalloc.take_snapshot()
            for stat in snapshot.statistics("traceback")[:5]:
                print(f"    {stat.size / 1e6:.2f} MB in {stat.count} blocks:\n      "
                      + "\n      ".join(stat.traceback.format()[-4:]))
            tracemalloc.stop()
    finally:
        executor.CALLBACK_FACTORIES.remove(sampler)


def grid_values(points: int) -> dict[str, object]:
    lrs = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]
    return {"optimizer_args": {"lr": lrs}, "run_id": [str(i) for i in range(max(1, points // len(lrs)))]}


STEPS = ["receptive_field", "flops", "extract", "project", "analysis"]  # the quickstart's


def soak_grid(folder: Path, points: int, via: str, steps: bool = False) -> Path:
    from phd_lab import executor
    sampler = Sampler(set(), len(grid_values(points)["run_id"]) * 6)
    executor.CALLBACK_FACTORIES.append(sampler)
    sub = folder / (via + "-steps" * steps)
    sub.mkdir()
    config = write_config(sub, "grid.json", epoch=1, **grid_values(points), post_processing=STEPS if steps else [])
    path_before = list(sys.path)
    try:
        started = time.perf_counter()
        if via == "Main":
            from phd_lab.experiment import Main
            main = Main(progress=False)
            main.run(main.load(config))
        else:
            from phd_lab.cli import main_cli
            stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
            try:  # with the progress bars (on stderr), as a user's main.py shows them
                succeeded(main_cli(["--config", str(config), "-q"]), "main.py")
            finally:
                sys.stdout.close()
                sys.stdout = stdout
        seconds = time.perf_counter() - started
    finally:
        executor.CALLBACK_FACTORIES.remove(sampler)
    runs = sampler.run_starts
    with_steps = " with the steps " + ", ".join(STEPS) if steps else ""
    print(f"({'s' if steps else 'b'}) {len(runs)} runs of 1 epoch through {via}{with_steps} in {seconds:.1f} s")
    for i in sorted({0, 1, 2, 9, len(runs) // 2, len(runs) - 1} & set(range(len(runs)))):
        show(f"run {i + 1} start", runs[i])
    show("after grid", counters())
    marked = sorted(sampler.types)
    print(f"    between run {marked[0]} and run {marked[-1]} start:", end="")
    show_growth(sampler.types[marked[0]], sampler.types[marked[-1]])
    print(f"    sys.path added: {[p for p in sys.path if p not in path_before]}")
    return sub


def timed_commands(grid_folder: Path, points: int) -> None:
    from phd_lab.cli import main_cli
    from phd_lab.report.cli import main_report
    config = grid_folder / "grid.json"
    full = json.loads(config.read_text())
    ids = full["run_id"]
    devnull = open(os.devnull, "w")
    for size in sorted({max(1, round(len(ids) / share)) for share in (3, 3 / 2, 1)}):
        kept = ids[:size]
        subset = {**full, "run_id": kept}
        path = grid_folder / f"grid-{len(kept)}.json"
        path.write_text(json.dumps(subset))
        runs = len(kept) * len(full["optimizer_args"]["lr"])
        stdout, sys.stdout = sys.stdout, devnull
        try:
            started = time.perf_counter()
            succeeded(main_cli(["--config", str(path), "--dry-run", "--no-progress", "-q"]), "main.py --dry-run")
            dry = time.perf_counter() - started
        finally:
            sys.stdout = stdout
        logs = grid_folder / f"logs-{len(kept)}"
        source = grid_folder / "logs" / "vgg11" / "Digits_8"
        for run_id in kept:
            shutil.copytree(source / run_id, logs / "vgg11" / "Digits_8" / run_id)
        before = counters()
        started = time.perf_counter()
        succeeded(main_report([str(logs), "-mp", "0", "--no-progress", "-q"]), "python -m phd_lab report")
        report = time.perf_counter() - started
        after = counters()
        print(f"(c) {runs:3d} runs: --dry-run {dry:6.2f} s ({1000 * dry / runs:5.1f} ms/run), report {report:6.2f} s "
              f"({1000 * report / runs:5.1f} ms/run); report: figures {before['figures']}->{after['figures']}, "
              f"fds {before['fds']}->{after['fds']}, rss {before['rss_mb']:.0f}->{after['rss_mb']:.0f} MB",
              flush=True)
    devnull.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--points", type=int, default=60)
    parser.add_argument("--step-points", type=int, default=18, help="(s): points of the grid with the steps")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a, s (the grid with post-processing "
                                                   "steps), b, c")
    parser.add_argument("--mode", default="passes", choices=["passes", "inline"], help="(a): tracking_mode")
    parser.add_argument("--tracemalloc", action="store_true", help="(a): the biggest allocations still alive")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "a" not in skip:
            (folder / "a").mkdir()
            soak_epochs(folder / "a", args.epochs, args.tracemalloc, args.mode)
        if "s" not in skip:
            soak_grid(folder, args.step_points, "Main", steps=True)
        if "b" not in skip:
            soak_grid(folder, args.points, "Main")
            grid = soak_grid(folder, args.points, "main_cli")
            if "c" not in skip:
                timed_commands(grid, args.points)


if __name__ == "__main__":
    main()
