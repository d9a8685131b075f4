"""Issue 8: wall time of a 4-point quickstart grid, sequential vs a local Dask cluster of 2 workers.

The grid is configs/quickstart.json (training with saturation tracking and every post-processing
step) with a second batch size. Both variants run as `python main.py` subprocesses from this script
(same process tree), on fresh logs folders, alternating order over repetitions. Prints each time and
the ratio dask/sequential. The probe job is timed the same way on the grid's latents: `-mp 0`
(sequential, in-process) against `--scheduler local:2`.
Usage: python benchmarks/grid_scaling.py [--repeats 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def grid_config(folder: Path, epochs: int) -> Path:
    config = json.loads((ROOT / "configs" / "quickstart.json").read_text())
    config.update({"model_args": {"width": [0.25, 0.125]}, "batch_size": [64, 128], "epoch": epochs,
                   "logs_dir": str(folder / "logs"), "device": "cpu"})  # the quickstart's steps included
    path = folder / "grid.json"
    path.write_text(json.dumps(config))
    return path


def timed(script: str, args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / script), *args, "--no-progress", "-q"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--jobs", default="train,probe", help="comma-separated subset of train,probe")
    parser.add_argument("--schedulers", default="local:2",
                        help="comma-separated Dask schedulers to compare with sequential (default local:2)")
    args = parser.parse_args()
    jobs = [job for job in ("train", "probe") if job in args.jobs.split(",")]
    variants = ["sequential", *[s.strip() for s in args.schedulers.split(",") if s.strip()]]
    times: dict[str, list[float]] = {f"{job} {variant}": [] for job in jobs for variant in variants}
    for repeat in range(args.repeats):
        order = variants if repeat % 2 == 0 else variants[::-1]
        for variant in order:
            with tempfile.TemporaryDirectory() as tmp:
                config = grid_config(Path(tmp), args.epochs)
                extra = [] if variant == "sequential" else ["--scheduler", variant]
                times[f"train {variant}"].append(timed("main.py", ["--config", str(config), *extra]))
                if "probe" in jobs:
                    probe_extra = ["-mp", "0"] if variant == "sequential" else ["--scheduler", variant]
                    times[f"probe {variant}"].append(timed("probe_main.py", ["--config", str(config),
                                                                             *probe_extra]))
            print(f"repeat {repeat}: {variant:10} " + ", ".join(f"{job} {times[f'{job} {variant}'][-1]:6.1f} s"
                                                                 for job in jobs), flush=True)
    print(f"\n4-point grid, {args.epochs} epochs, medians of {args.repeats}, {os.cpu_count()} cores "
          f"(target <= 0.60x on 2 cores):")
    for job in jobs:
        seq = statistics.median(times[f"{job} sequential"])
        for variant in variants[1:]:
            dask = statistics.median(times[f"{job} {variant}"])
            print(f"  {job:5}: sequential {seq:6.1f} s, {variant} {dask:6.1f} s, ratio {dask / seq:.2f}x")


if __name__ == "__main__":
    main()
