"""The fixed start-up cost of the commands under two checkouts of phd-lab, side by side: what lazy imports save.

    git worktree add --detach /tmp/old <commit before the changes>
    python benchmarks/startup.py --old /tmp/old --new . --reps 7

Each round runs every command once under each checkout, in an order that alternates between rounds (old first,
then new first), each as its own cold process with the checkout as working directory and first on PYTHONPATH.
The numbers are the medians of the child's CPU seconds (user + sys, from ``wait4``: a shared machine's wall clock
drifts with the other processes, its CPU time much less) and of its wall seconds, the ratio new / old of the CPU
medians, and the heavy modules the command imported under each checkout (one more run of each, in-process through
``runpy``, reading ``sys.modules`` at its exit). The commands are those that end before any work: the help texts,
the steps' listing, a config the schema refuses, a missing config file, a probe job's usage error and bad config,
the report's usage error and its refusal of a folder without runs, and with ``--logs`` the report of finished runs
rebuilt with nothing changed; each must exit as it did before (the exit status is printed, and flagged where the
two checkouts differ).
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

LOG = logging.getLogger("startup")

HEAVY = ("torch", "torch._dynamo", "torchvision", "sklearn", "pandas", "numpy", "matplotlib", "scipy", "PIL")

# runs a command's script or module in-process and prints the heavy modules imported by its end
PROBE = """import runpy, sys
target, *args = sys.argv[1:]
sys.argv = [target, *args]
try:
    (runpy.run_path(target, run_name='__main__') if target.endswith('.py') else
     runpy.run_module(target, run_name='__main__', alter_sys=True))
except SystemExit:
    pass
sys.__stdout__.write('\\nHEAVY ' + ' '.join(m for m in {heavy!r} if m in sys.modules) + '\\n')
"""


def commands(scratch: Path, logs: Path | None) -> dict[str, list[str]]:
    """The commands by name, each as the arguments after ``python``; with ``logs`` (a folder of finished runs)
    also its report rebuilt with nothing changed, into a page in ``scratch``."""
    bad = scratch / "bad.json"
    bad.write_text(json.dumps({"model": "vgg11", "dataset": "Digits", "epoch": "x"}))
    empty = scratch / "no_runs"
    empty.mkdir(exist_ok=True)
    found = {"main.py --help": ["main.py", "--help"],
            "main.py --config BAD (schema)": ["main.py", "--config", str(bad)],
            "main.py --config MISSING": ["main.py", "--config", str(scratch / "missing.json")],
            "main.py --list-keys": ["main.py", "--list-keys"],
            "main.py --list steps": ["main.py", "--list", "steps"],
            "probe_main.py --help": ["probe_main.py", "--help"],
            "probe_main.py -mp -1 (usage)": ["probe_main.py", "--config", str(bad), "-mp", "-1"],
            "probe_main.py --config BAD": ["probe_main.py", "--config", str(bad)],
            "report MISSING (usage)": ["-m", "phd_lab", "report", str(scratch / "missing")],
            "report NO_RUNS": ["-m", "phd_lab", "report", str(empty)]}
    if logs is not None:
        found["report LOGS (nothing changed)"] = ["-m", "phd_lab", "report", str(logs), "-q", "-mp", "0",
                                                  "--out", str(scratch / "report.html")]
    return found


def timed(arguments: list[str], cwd: Path) -> tuple[float, float, int]:
    """CPU seconds (user + sys), wall seconds and exit status of one command run under the checkout ``cwd``."""
    env = dict(os.environ, PYTHONPATH=str(cwd), MPLBACKEND="Agg")
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *arguments], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - start, os.waitstatus_to_exitcode(status)


def heavy_modules(arguments: list[str], cwd: Path) -> str:
    """The heavy modules the command imported under the checkout ``cwd``."""
    env = dict(os.environ, PYTHONPATH=str(cwd), MPLBACKEND="Agg")
    target = arguments[1] if arguments[0] == "-m" else arguments[0]
    rest = arguments[2:] if arguments[0] == "-m" else arguments[1:]
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), target, *rest], cwd=cwd, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("HEAVY")]
    return (lines[-1][len("HEAVY"):].strip() or "-") if lines else "?"


def main() -> None:
    """Alternate the commands under both checkouts and print the medians, ratios and heavy modules."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout before the changes")
    parser.add_argument("--new", type=Path, required=True, help="checkout after the changes")
    parser.add_argument("--reps", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--logs", type=Path, help="a logs folder of finished runs: time its report rebuilt with "
                        "nothing changed too (built once by each checkout first)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    checkouts = {"old": args.old.resolve(), "new": args.new.resolve()}
    with tempfile.TemporaryDirectory() as scratch:
        found = commands(Path(scratch), args.logs)
        for name, arguments in found.items():  # the page a rebuild reuses the figures of
            if name.startswith("report LOGS"):
                for path in checkouts.values():
                    timed(arguments, path)
        cpu = {(name, label): [] for name in found for label in checkouts}
        wall = {(name, label): [] for name in found for label in checkouts}
        codes: dict[tuple[str, str], set[int]] = {key: set() for key in cpu}
        for round_ in range(args.reps):
            order = list(checkouts) if round_ % 2 == 0 else list(reversed(checkouts))
            for name, arguments in found.items():
                for label in order:
                    seconds, elapsed, code = timed(arguments, checkouts[label])
                    cpu[name, label].append(seconds)
                    wall[name, label].append(elapsed)
                    codes[name, label].add(code)
        modules = {(name, label): heavy_modules(arguments, path) for name, arguments in found.items()
                   for label, path in checkouts.items()}
    LOG.info("%-30s %8s %8s %7s %8s %8s  %s", "command", "old CPU", "new CPU", "new/old", "old wall", "new wall",
             "exit; heavy modules imported (old -> new)")
    for name in found:
        old, new = (statistics.median(cpu[name, label]) for label in checkouts)
        old_wall, new_wall = (statistics.median(wall[name, label]) for label in checkouts)
        same = "" if codes[name, "old"] == codes[name, "new"] else " EXIT STATUS DIFFERS"
        LOG.info("%-30s %8.2f %8.2f %7.2f %8.2f %8.2f  %s; %s -> %s%s", name, old, new, new / old, old_wall,
                 new_wall, "/".join(map(str, sorted(codes[name, "new"]))), modules[name, "old"], modules[name, "new"],
                 same)


if __name__ == "__main__":
    main()
