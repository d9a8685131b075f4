"""The per-call cost of the guards and checks added in session 49, under two checkouts side by side.

    git worktree add --detach /tmp/old <commit before the changes>
    python benchmarks/guard_costs.py --old /tmp/old --new . --reps 5

Each round runs one process per checkout (the order alternating between rounds), with that checkout first on
PYTHONPATH and one BLAS/torch thread; each process times, in CPU seconds of its own (``time.process_time``):

  torch_flags_kept          entering and leaving the guard of torch's flags (per call, around each run and check)
  warning_filters_kept      the same for the warning filters (new only)
  import_registry_module    a registry module imported before, asked for again (the import lock, new)
  RUN_TURN                  an uncontended turn of the training runs (taken before a Dask task's checks, new)
  extraction marker         ``mark_in_progress`` + ``unmark_in_progress`` in a folder of ``--scratch`` (new only;
                            its wall seconds too, as the fsync waits for the disk)
  standardize               a 10,000 x 2,048 float32 layer and its 2,000-row eval split
  saga fit                  ``fit_arrays`` with saga on raw 5,000 x 512 float32 latents (10 classes, max_iter 30);
                            ``check_saga_step`` alone on the same latents (new only)

and prints the medians over rounds of each process' figures, and the ratios new / old.
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
from typing import Any, Callable

LOG = logging.getLogger("guard_costs")

CHILD = "child"


def per_call(action: Callable[[], Any], calls: int) -> float:
    """CPU seconds of one call of ``action``, the mean over ``calls`` calls."""
    start = time.process_time()
    for _ in range(calls):
        action()
    return (time.process_time() - start) / calls


def entered(manager: Callable[[], Any]) -> Callable[[], None]:
    """A call that enters and leaves the context manager ``manager()``."""
    def call() -> None:
        with manager():
            pass
    return call


def guard_costs(scratch: Path) -> dict[str, float]:
    """The guards' and locks' CPU seconds per call under the checkout on ``sys.path``."""
    from phd_lab import latents_folder, run_guards
    from phd_lab.executor import RUN_TURN
    from phd_lab.registry_import import import_registry_module
    found = {"torch_flags_kept": per_call(entered(run_guards.torch_flags_kept), 2000),
             "RUN_TURN": per_call(entered(RUN_TURN), 20000),
             "import_registry_module": per_call(lambda: import_registry_module("registries.models", "models"), 500)}
    if hasattr(run_guards, "warning_filters_kept"):
        found["warning_filters_kept"] = per_call(entered(run_guards.warning_filters_kept), 20000)
    if hasattr(latents_folder, "mark_in_progress"):
        def marker() -> None:
            latents_folder.mark_in_progress(scratch, "logs/run")
            latents_folder.unmark_in_progress(scratch)
        found["extraction marker"] = per_call(marker, 50)
        start = time.perf_counter()
        for _ in range(50):
            marker()
        found["extraction marker, wall"] = (time.perf_counter() - start) / 50
    return found


def probe_costs() -> dict[str, float]:
    """standardize's and a raw saga fit's CPU seconds under the checkout on ``sys.path``."""
    import numpy as np

    from phd_lab.probes import fit
    from phd_lab.probes.settings import ProbeSettings
    rng = np.random.default_rng(0)
    big, big_eval = rng.standard_normal((10000, 2048), np.float32), rng.standard_normal((2000, 2048), np.float32)
    found = {"standardize": per_call(lambda: fit.standardize(big.copy(), big_eval.copy()), 3)
             - per_call(lambda: (big.copy(), big_eval.copy()), 3)}
    labels = rng.integers(0, 10, 5000)
    x = (rng.standard_normal((5000, 512)) + labels[:, None] * 0.05).astype(np.float32)
    settings = ProbeSettings(solver="saga", standardize=False, max_iter=30)
    found["saga fit"] = per_call(lambda: fit.fit_arrays(x, labels, x[:1000], settings), 2)
    if hasattr(fit, "check_saga_step"):
        found["check_saga_step"] = per_call(lambda: fit.check_saga_step(x, "layer"), 20)
    return found


def child() -> None:
    """Print this checkout's figures as one JSON line."""
    import warnings
    warnings.simplefilter("ignore")  # saga's ConvergenceWarning at max_iter 30
    with tempfile.TemporaryDirectory(dir=os.environ.get("GUARD_SCRATCH")) as scratch:
        print(json.dumps(dict(guard_costs(Path(scratch)), **probe_costs())))


def run(checkout: Path, scratch: Path) -> dict[str, float]:
    """One child process's figures under ``checkout``."""
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", GUARD_SCRATCH=str(scratch))
    done = subprocess.run([sys.executable, "-c", f"import runpy, sys; sys.argv = ['x', '{CHILD}']; "
                           f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"],
                          cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the child under {checkout} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Alternate the child processes of both checkouts and print the medians and ratios."""
    if sys.argv[1:] == [CHILD]:
        import torch
        torch.set_num_threads(1)
        child()
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout before the changes")
    parser.add_argument("--new", type=Path, required=True, help="checkout after the changes")
    parser.add_argument("--reps", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the extraction marker is written (the latents' file system)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    figures: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for round_ in range(args.reps):
        for label in (["old", "new"] if round_ % 2 == 0 else ["new", "old"]):
            figures[label].append(run(getattr(args, label).resolve(), args.scratch))
        LOG.info("round %d of %d done", round_ + 1, args.reps)
    LOG.info("%-24s %12s %12s %8s", "what (CPU s per call)", "old", "new", "new/old")
    for name in figures["new"][0]:
        old = [f[name] for f in figures["old"] if name in f]
        new = statistics.median(f[name] for f in figures["new"])
        if old:
            LOG.info("%-24s %12.3g %12.3g %8.3f", name, statistics.median(old), new, new / statistics.median(old))
        else:
            LOG.info("%-24s %12s %12.3g", name, "-", new)


if __name__ == "__main__":
    main()
