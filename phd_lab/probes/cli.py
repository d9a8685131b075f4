"""Command line of ``probe_main.py``: parse arguments, run the probe job, map errors to exit codes."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from phd_lab.cli import CommandParser, add_verbosity, command_logging, guarded, verbosity
from phd_lab.console import readable_output, write_stdout
from phd_lab.errors import EXIT_OK, RunFailure, UsageError

log = logging.getLogger("phd_lab")


def build_parser(prog: str = "probe_main.py") -> argparse.ArgumentParser:
    from phd_lab.environment import available_cores
    from phd_lab.probes.settings import SOLVERS
    parser = CommandParser(
        prog=prog,
        description="Fit a logistic-regression probe on the extracted latents of every layer (thesis §4.3, §6.2.5) "
                    "and write probe_performances.csv, its plot and per-layer confusion matrices into the run "
                    "folder. Finished layers are cached, so a killed job resumes where it stopped.",
        epilog="Solver options default to the config's probe_* keys (see `python main.py --list-keys`); with "
               "--latents, to those of the run's logged config (to the keys' defaults where the run folder has none). "
               "Exit status: 0 success, 2 invalid usage/config/latents (nothing written), 1 a fit failed, "
               "130 Ctrl-C, 143 SIGTERM.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="JSON config: probe every run of its grid that has latents")
    source.add_argument("--latents", help="probe one latents folder (with its manifest.json)")
    parser.add_argument("--run-id", help="name of the repetition (overrides the config's run_id)")
    parser.add_argument("-mp", "--processes", type=int, default=available_cores(),
                        help="worker processes, one thread each (default: the number of cores); 0 fits in-process")
    parser.add_argument("--cache-dir", help="result cache folder (default: <logs_dir>/.probe_cache, or "
                                            "<run folder>/.probe_cache with --latents)")
    parser.add_argument("--solver", choices=SOLVERS, help="probe solver (config key probe_solver; default saga)")
    parser.add_argument("--C", type=float, dest="C", help="inverse L2 strength (probe_C)")
    parser.add_argument("--max-iter", type=int, help="iteration limit (probe_max_iter)")
    parser.add_argument("--tol", type=float, help="stopping tolerance (probe_tol)")
    # two options that exclude each other, as -q and -v: given both, the last won without a word
    scaling = parser.add_mutually_exclusive_group()
    scaling.add_argument("--standardize", action="store_const", const=True, default=None,
                         help="standardise features (probe_standardize; default: off for saga, on for lbfgs and "
                              "lbfgs-torch)")
    scaling.add_argument("--no-standardize", action="store_const", const=False, dest="standardize",
                         help="fit on the raw features")
    parser.add_argument("--train-samples", type=int, help="stratified training subsample size (probe_train_samples)")
    parser.add_argument("--seed", type=int, help="seed of saga and the subsample (probe_seed)")
    parser.add_argument("--probe-device", help="device of lbfgs-torch: cpu, cuda, cuda:N (probe_device)")
    parser.add_argument("--scheduler", help="fit every layer as a task on a Dask scheduler at this address, or on "
                        "a local cluster of N worker processes with local:N (plain local: one per core; the cache "
                        "folder must be shared)")
    parser.add_argument("--max-memory", type=float, metavar="GB",
                        help="memory the -mp worker processes' layer copies may take together (default: 80 %% of "
                             "what the machine or the batch job's cgroup has available); fewer workers are started "
                             "where -mp of the largest layers would not fit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_verbosity(parser)
    return parser


@readable_output
def probe_cli(argv: Sequence[str] | None = None, prog: str = "probe_main.py") -> int:
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        from phd_lab.probes.settings import ProbeSettings
        if not args.config and not args.latents:
            raise UsageError("pass --config FILE (probe every run of a grid that has latents) or --latents DIR "
                             "(probe one latents folder).")
        if args.run_id is not None and not args.config:
            raise UsageError("--run-id only applies with --config; a latents folder belongs to one run already.")
        if args.processes < 0:
            raise UsageError(f"-mp must be ≥ 0 (0 fits in this process); got {args.processes}.")
        if args.cache_dir is not None and not args.cache_dir.strip():
            raise UsageError("--cache-dir is empty; name a folder, or leave the option out for the default "
                             "(<logs_dir>/.probe_cache, or .probe_cache in the run folder with --latents).")
        if args.max_memory is not None and not 0 < args.max_memory < 1e9:  # also no nan or inf
            raise UsageError(f"--max-memory must be a positive, finite number of GB; got {args.max_memory}.")
        if args.scheduler is not None:  # also an empty one (an unset variable), as main.py
            from phd_lab.distributed import parse_scheduler
            parse_scheduler(args.scheduler)  # a malformed address fails before any file is read or hashed
        overrides = {"solver": args.solver, "C": args.C, "max_iter": args.max_iter, "tol": args.tol,
                     "standardize": args.standardize, "train_samples": args.train_samples, "seed": args.seed,
                     "device": args.probe_device}
        ProbeSettings.check_overrides(overrides)
        # imported once the options are found valid: they import pandas and numpy, which a usage error need not wait for
        from phd_lab.probes.discovery import SAID_ONE_BY_ONE, jobs_from_config, jobs_from_latents
        from phd_lab.probes.job import run_jobs
        not_probed: list[str] = []  # grid runs left out that need the user (the others are probed meanwhile)
        if args.config:
            jobs, cache_dir, not_probed = jobs_from_config(args.config, args.run_id, overrides)
        else:
            jobs, cache_dir = jobs_from_latents(args.latents, overrides)
        if args.cache_dir is not None:
            cache_dir = Path(args.cache_dir)
        busy: list[str] | None = [] if args.config else None
        run_jobs(jobs, cache_dir, workers=args.processes, progress=not (args.no_progress or args.quiet),
                 scheduler=args.scheduler, busy=busy,
                 memory=None if args.max_memory is None else int(args.max_memory * 1e9))
        if busy:
            shown = ", ".join(busy[:SAID_ONE_BY_ONE]) + (f" and {len(busy) - SAID_ONE_BY_ONE} more"
                                                         if len(busy) > SAID_ONE_BY_ONE else "")
            not_probed.append(f"{shown}: another probe job is writing their results")
        probed = [job for job in jobs if job.label not in (busy or [])]
        if probed:
            write_stdout("Probe results:\n" + "\n".join(f"  {job.outputs.probe_csv}" for job in probed) + "\n")
        if not_probed:
            written = (f"the {len(probed)} probe table(s) listed above are written" if probed else
                       "no probe table was written")
            raise RunFailure(f"Not every run of {args.config} was probed ({'; '.join(not_probed)}); {written}. Rerun "
                             f"this command once that is resolved: runs already probed come from the cache.")
        return EXIT_OK

    with command_logging(verbosity(args)):
        return guarded(body, "interrupted; rerun the same command: the layers already fitted come from the cache")
