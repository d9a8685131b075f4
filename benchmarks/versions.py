"""The CPU time of the same commands under two checkouts of phd-lab, side by side: what a day's changes cost.

    git worktree add --detach /tmp/old <commit before the changes>
    python benchmarks/versions.py --old /tmp/old --new . --grid grid.json --reps 7

Each round runs every command once under each checkout, in an order that alternates between rounds (old first,
then new first), each as its own process with the checkout as working directory and first on PYTHONPATH. The
numbers are the medians of the child's CPU seconds (user + sys, from ``wait4``: a shared machine's wall clock
drifts with the other processes, its CPU time much less) and of its wall seconds, and the ratio new / old of the
CPU medians. The commands:

  help          ``main.py --help`` (no torch imported)
  dry run       ``main.py --config GRID --dry-run``: the grid's checks and each point's status, read from its
                checkpoint (``CheckpointStore.peek``); GRID is a grid of finished runs both checkouts name alike
  rerun         ``main.py --config GRID``: the same finished grid run again (each point's checks, its folder
                found finished, nothing trained)
  probe rerun   with ``--probe``: ``probe_main.py --config GRID -mp 0 --max-iter 50``, every layer of every run
                found in the probe cache (GRID's runs extracted and probed once beforehand with the same flags)
  train         one new 1-epoch run of VGG11 1/8 on Digits at 32 px, saturation tracked (its plot drawn), one
                thread, in a fresh logs folder of its own per round and checkout

A command that fails under either checkout stops the script with its output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

LOG = logging.getLogger("versions")

TRAIN = {"model": "vgg11", "model_args": {"width": 0.125}, "dataset": "Digits", "resolution": 32, "epoch": 1,
         "batch_size": 64, "optimizer": "adam", "optimizer_args": {"lr": 0.001}, "metrics": ["Accuracy"],
         "cpu_threads": 1, "device": "cpu"}


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """CPU seconds (user + sys) and wall seconds of one command run under the checkout ``cwd``."""
    env = dict(os.environ, PYTHONPATH=str(cwd), MPLBACKEND="Agg")
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed under {cwd}:\n{output.decode(errors='replace')}")
    return usage.ru_utime + usage.ru_stime, wall


def commands(grid: Path | None, scratch: Path, probe: bool = False) -> dict[str, Callable[[int, str], list[str]]]:
    """The commands by name, each a function of the round and the checkout's label giving its argument list."""
    python = sys.executable
    found = {"help": lambda round_, label: [python, "main.py", "--help"]}
    if grid is not None:
        found["dry run"] = lambda round_, label: [python, "main.py", "--config", str(grid), "--dry-run", "-q"]
        found["rerun"] = lambda round_, label: [python, "main.py", "--config", str(grid), "-q", "--no-progress"]
        if probe:
            found["probe rerun"] = lambda round_, label: [python, "probe_main.py", "--config", str(grid), "-mp", "0",
                                                          "--max-iter", "50", "-q", "--no-progress"]

    def train(round_: int, label: str) -> list[str]:
        """A config of its own per round and checkout, so that every round trains."""
        path = scratch / f"train_{label}_{round_}.json"
        path.write_text(json.dumps(dict(TRAIN, logs_dir=str(scratch / f"logs_{label}_{round_}"))))
        return [python, "main.py", "--config", str(path), "-q", "--no-progress"]

    found["train"] = train
    return found


def main() -> None:
    """Alternate the commands under both checkouts and print the medians and ratios."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout before the changes")
    parser.add_argument("--new", type=Path, required=True, help="checkout after the changes")
    parser.add_argument("--grid", type=Path, help="config of a finished grid for the dry run and the rerun")
    parser.add_argument("--probe", action="store_true", help="also time a probe job rerun on GRID (all cached)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated command names")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    with tempfile.TemporaryDirectory(prefix="versions-") as scratch:
        todo = commands(args.grid.resolve() if args.grid else None, Path(scratch), args.probe)
        if args.only:
            todo = {name: todo[name] for name in args.only.split(",")}
        checkouts = {"old": args.old.resolve(), "new": args.new.resolve()}
        cpu = {(name, label): [] for name in todo for label in checkouts}
        wall = {(name, label): [] for name in todo for label in checkouts}
        for round_ in range(args.reps):
            order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
            for name, command in todo.items():
                for label in order:
                    seconds, elapsed = timed(command(round_, label), checkouts[label])
                    cpu[name, label].append(seconds)
                    wall[name, label].append(elapsed)
            LOG.info("round %d of %d done", round_ + 1, args.reps)
        LOG.info("%-11s %10s %10s %10s %10s %8s", "command", "old CPU s", "new CPU s", "old wall", "new wall",
                 "new/old")
        for name in todo:
            old, new = statistics.median(cpu[name, "old"]), statistics.median(cpu[name, "new"])
            LOG.info("%-11s %10.2f %10.2f %10.2f %10.2f %8.3f", name, old, new, statistics.median(wall[name, "old"]),
                     statistics.median(wall[name, "new"]), new / old)
            LOG.info("%-11s old %s | new %s", "", " ".join(f"{s:.2f}" for s in cpu[name, "old"]),
                     " ".join(f"{s:.2f}" for s in cpu[name, "new"]))


if __name__ == "__main__":
    main()
