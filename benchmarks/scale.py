"""Large grids: loading a grid of many points, and rebuilding the report of many runs, side by side.

    python benchmarks/scale.py                      # 400-point grid, 100 fabricated runs
    python benchmarks/scale.py --points 1600 --runs 300
    python benchmarks/scale.py --only repeated --groups 40   # 40 configurations × 3 repetitions
    python benchmarks/scale.py --only probes --probe-runs 30  # a probe job repeated beside a growing grid

Grid load: ``Main.load`` validates every point before anything runs; the checks that need a built model
(a forward pass on the meta device, the receptive-field trace) depend only on the model, the resolution and
a step's parameters, so they are shared between points. The comparison row runs the same validation with a
fresh share per point, which is what every point cost before the checks were shared (and what a SLURM array
task paid before its first epoch). The grid sweeps 4 widths × seeds × learning rates of VGG11 on Digits.

Report: ``write_report`` over fabricated run folders (the test fixtures' tables, figures drawn for real).
The first build with every figure drawn in the report's process (``-mp 0``) against the first build of a copy
with the default worker processes (one per core, at most 8); then a rebuild with nothing changed, in which a
run's figure is redrawn only when its ``figure_key`` changes, and the first report of a copy of that logs folder
elsewhere (as when logs come from a cluster), whose figures are kept too. The rows also report the peak resident
memory of this process so far.

Repeated: a report of configurations run three times each draws two figures per group (saturation over the
repetitions, the projections' t-tests); a rebuild takes them from the previous page where their data did not
change. Compared: a rebuild with that page beside it, and one with the page removed first.

Probes: one probe job over fabricated runs' latents (4 layers of 2,000 + 500 × 1,024 float32 each, lbfgs with
at most 30 iterations), then the same job again with nothing new, and once more after one run was added, as
when a probe job is repeated beside a growing grid. A repeat reads (and hashes) only the latents of layers
that are not in the cache, and leaves the files of runs whose results are in place as they are.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phd_lab.report.cli import default_processes  # noqa: E402


WIDTHS = [0.0625, 0.125, 0.25, 0.5]


def grid_config(folder: Path, points: int) -> Path:
    """A grid of about ``points`` points: 4 widths × seeds × 4 learning rates."""
    seeds = max(1, points // 16)
    config = {"model": "vgg11", "model_args": {"width": WIDTHS}, "dataset": "Digits", "resolution": 16,
              "epoch": 2, "batch_size": 128, "optimizer": "adam",
              "optimizer_args": {"lr": [0.001, 0.002, 0.003, 0.004]}, "seed": list(range(seeds)),
              "logs_dir": str(folder / "logs"), "data_dir": str(folder / "data"), "device": "cpu",
              "post_processing": ["receptive_field", "flops", "extract", "analysis"]}
    path = folder / "grid.json"
    path.write_text(json.dumps(config))
    return path


def load_shared(config: Path) -> tuple[float, int]:
    from phd_lab.experiment import Main  # here, not at the top: the report's spawned workers import this module
    started = time.perf_counter()
    grid = Main(progress=False).load(config)
    return time.perf_counter() - started, len(grid)


def load_unshared(config: Path) -> float:
    """The same validation as ``Main.load``, with the model checks' share made anew for every point."""
    from phd_lab.executor import TrainTestExecutor
    from phd_lab.experiment import Main
    main = Main(progress=False)
    started = time.perf_counter()
    grid = main.load(config)  # the grid's own checks (folders, probe keys), then the per-point model checks again
    shared_cost = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(len(grid)):
        cfg = grid[index]
        TrainTestExecutor(cfg, main._registries_for(cfg.registries), progress=False).check_model({})
    return shared_cost + time.perf_counter() - started


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_rebuild(folder: Path, runs: int) -> tuple[float, float, float, float]:
    """Seconds of four reports: the first build with every figure drawn in this process (``-mp 0``), the first
    build of a copy of the same runs with the default worker processes, a rebuild of that copy, and the first
    report of a copy of the reported folder."""
    import shutil

    from phd_lab.report.cli import write_report
    from tests.analysis_fixtures import write_run
    logs, copy = folder / "runs", folder / "copy" / "runs"
    for index in range(runs):
        write_run(logs, width=WIDTHS[index % len(WIDTHS)], stage="full", run_id=str(index),
                  test_accuracy=0.9 + 0.05 * (index % 7) / 7)
    shutil.copytree(logs, copy)  # copied before any report: its figures are drawn too
    write_run(folder / "warm-up", width=WIDTHS[0], stage="full")
    write_report(folder / "warm-up", processes=0)  # imports and matplotlib's font set-up, timed in neither build
    started = time.perf_counter()
    write_report(logs, processes=0)
    one = time.perf_counter() - started
    started = time.perf_counter()
    write_report(copy)
    workers = time.perf_counter() - started
    started = time.perf_counter()
    write_report(copy)
    rebuild = time.perf_counter() - started
    shutil.copytree(copy.parent, folder / "elsewhere")
    started = time.perf_counter()
    write_report(folder / "elsewhere" / "runs")
    return one, workers, rebuild, time.perf_counter() - started


def repeated_report(folder: Path, groups: int) -> tuple[float, float, float]:
    """A report of ``groups`` configurations run 3 times each, projected: each group gets two figures (saturation
    over the runs, the projections' t-tests). First build; rebuild with the previous page beside it (its
    group figures are taken over); rebuild with the page removed first (every group figure drawn again)."""
    import pandas as pd

    from phd_lab import atomic
    from phd_lab.report.cli import write_report
    from tests.analysis_fixtures import write_run
    logs = folder / "repeated"
    for group in range(groups):
        for run_id in range(3):
            run = write_run(logs, width=round(0.01 * (group + 1), 2), stage="full", run_id=str(run_id),
                            test_accuracy=0.9 + 0.01 * run_id)
            table = pd.read_csv(run.projections_csv)  # the fixture's table, with the unprojected model's row
            unprojected = {"delta": 1.0, "basis": "none", "accuracy": 0.9 + 0.01 * run_id, "loss": 0.3,
                           "dims_sum": 500, "feature_dims_sum": 500, "saturation_mean": 1.0}
            atomic.write_csv(run.projections_csv, pd.concat([table, pd.DataFrame([unprojected])]))
    timings = []
    for remove_page in (False, False, True):
        if remove_page:
            (logs / "report.html").unlink()
        started = time.perf_counter()
        write_report(logs)
        timings.append(time.perf_counter() - started)
    return timings[0], timings[1], timings[2]


def probe_runs(folder: Path, first: int, count: int) -> list[Path]:
    """``count`` fabricated runs' latents folders (numbered from ``first``): 4 layers, 10 classes, seeded."""
    import numpy as np

    from phd_lab.probes.synthetic import write_latents
    folders = []
    for number in range(first, first + count):
        rng = np.random.default_rng(number)
        labels = rng.integers(0, 10, 2_500)
        centres = rng.standard_normal((10, 1_024)).astype(np.float32)
        layers = {}
        for layer in range(4):
            x = centres[labels] * (0.2 + 0.1 * layer) + rng.standard_normal((2_500, 1_024), dtype=np.float32)
            layers[f"features.{layer}"] = (x[:2_000], x[2_000:])
        run = folder / "probe_runs" / f"run{number}"
        folders.append(write_latents(run / "latents", layers, labels[:2_000], labels[2_000:], run, 0.9))
    return folders


def repeated_probe_job(folder: Path, runs: int) -> tuple[float, float, float]:
    """Wall seconds of the first probe job over ``runs`` runs, of the same job again, and of the job after one
    more run was added."""
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import run_jobs
    latents = probe_runs(folder, 0, runs)
    cache = folder / "probe_cache"

    def job() -> float:
        jobs = [job for path in latents for job in jobs_from_latents(path, {"solver": "lbfgs", "max_iter": 30})[0]]
        started = time.perf_counter()
        run_jobs(jobs, cache, workers=0, progress=False)
        return time.perf_counter() - started

    first, again = job(), job()
    latents += probe_runs(folder, runs, 1)
    return first, again, job()


def print_comparison(title: str, rows: list[tuple[str, float]], ratio: tuple[str, float]) -> None:
    """A measurement's rows in seconds, then the ratio it is about and this process' peak memory so far."""
    print(title)
    for label, seconds in rows:
        print(f"  {label:<36} {seconds:8.2f} s")
    print(f"  {ratio[0]:<36} {ratio[1]:8.3f}x   peak RSS {peak_mb():.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=400, help="grid points to load (rounded to a multiple of 16)")
    parser.add_argument("--runs", type=int, default=100, help="fabricated run folders in the report")
    parser.add_argument("--groups", type=int, default=40, help="configurations of 3 runs each in the repeated report")
    parser.add_argument("--probe-runs", type=int, default=30, help="fabricated runs' latents in the probe job")
    parser.add_argument("--only", choices=("grid", "report", "repeated", "probes"), default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.only in (None, "grid"):
            config = grid_config(folder, args.points)
            load_shared(config)  # warm-up: imports, registry modules, the dataset check
            shared, points = load_shared(config)
            unshared = load_unshared(config)
            print_comparison(f"grid load, {points} points (4 models)",
                             [("model checks shared between points", shared),
                              ("model checks anew for every point", unshared)],
                             ("ratio shared / anew", shared / unshared))
        if args.only in (None, "repeated"):
            first, kept, removed = repeated_report(folder, args.groups)
            print_comparison(f"report of {args.groups} groups of 3 repeated runs",
                             [("first build", first), ("rebuild, previous page kept", kept),
                              ("rebuild, previous page removed", removed)], ("ratio kept / removed", kept / removed))
        if args.only in (None, "probes"):
            first, again, grown = repeated_probe_job(folder, args.probe_runs)
            print_comparison(f"probe job over {args.probe_runs} runs (4 layers each)",
                             [("first job", first), ("the same job again, nothing new", again),
                              ("again after one run was added", grown)], ("ratio again / first", again / first))
        if args.only in (None, "report"):
            one, workers, rebuild, copied = report_rebuild(folder, args.runs)
            print_comparison(f"report of {args.runs} runs, first build", [
                ("figures drawn in this process (-mp 0)", one),
                (f"figures drawn by workers (-mp {default_processes()})", workers)],
                             ("ratio workers / -mp 0", workers / one))
            print_comparison(f"report of {args.runs} runs, rebuild", [("first build", workers),
                                                                     ("rebuild, nothing changed", rebuild),
                                                                     ("first report of a copied folder", copied)],
                             ("ratio copied / first", copied / workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
