"""Command line of ``main.py``: parse arguments, call Main, map errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import signal
import sys
import textwrap
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from phd_lab.console import readable_output, write_stderr, write_stdout
from phd_lab.entry import restore_handlers
from phd_lab.environment import limit_refusal
from phd_lab.errors import EXIT_FAILURE, EXIT_OK, PhdLabError, Terminated, UsageError
from phd_lab.interrupts import clear_terminated, interruption_behind, note_terminated, terminated_noted
from phd_lab.log_file import Formatter

if TYPE_CHECKING:
    from phd_lab.experiment import RunOutcome

log = logging.getLogger("phd_lab")

LISTABLE = ("models", "datasets", "optimizers", "metrics", "steps")
# libraries whose debug messages -v leaves out (matplotlib's font search alone logged 2,410 lines per figure-drawing
# process into the console and every run's .log file); a level set on one of them (a notebook's) is kept
QUIET_LIBRARIES = ("matplotlib", "PIL", "fsspec", "asyncio", "urllib3", "numba", "filelock")


@contextlib.contextmanager
def command_logging(verbosity: int = 0) -> Iterator[None]:
    """The console log of one command, at the verbosity of -q/-v; the root logger at INFO (DEBUG with -v, but for
    the QUIET_LIBRARIES) so that every run's .log file is complete. The caller's root handlers and level come back
    when the command returns: ``logging.basicConfig(force=True)`` closed a notebook's own handlers for good and left
    the root at INFO."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    root = logging.getLogger()
    before, handlers = root.level, list(root.handlers)
    # no stderr (closed by the caller): a log line would otherwise reach stdout through tqdm's redirect
    console = logging.StreamHandler(sys.stderr) if sys.stderr is not None else logging.NullHandler()
    console.setFormatter(Formatter())
    console.setLevel(level)
    for handler in handlers:
        root.removeHandler(handler)
    root.addHandler(console)
    root.setLevel(min(level, logging.INFO))
    quieted = [logger for logger in map(logging.getLogger, QUIET_LIBRARIES) if logger.level == logging.NOTSET]
    for logger in quieted:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(console)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(before)
        for logger in quieted:
            logger.setLevel(logging.NOTSET)


def report_error(error: BaseException | str) -> None:
    """One paragraph on stderr, no traceback."""
    text = " ".join(str(error).split())
    lines = textwrap.wrap(f"error: {text}", width=110, break_on_hyphens=False, break_long_words=False)
    write_stderr("\n".join(lines) + "\n")


RESUME_TRAINING = ("interrupted; rerun the same command to resume: training continues after the last completed "
                   "epoch, post-processing keeps the steps that had finished")


@contextlib.contextmanager
def logs_above_progress_bars() -> Iterator[None]:
    """Console log lines printed above the progress bars instead of into them (tqdm's redirect of the
    console handler, which keeps its format and stream but not its level: that is carried over). Without a stderr
    there are no bars, and tqdm's handler would write the log lines on stdout instead."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from phd_lab.progress import leave_the_start_method_unchosen
    if sys.stderr is None:
        yield
        return
    # the redirect's first line (the probe job logs before any bar) made tqdm's lock by the default context: a
    # script's set_start_method after the call stopped with 'context has already been set'
    leave_the_start_method_unchosen()
    root = logging.getLogger()
    before = list(root.handlers)
    levels = [handler.level for handler in before if type(handler) is logging.StreamHandler]
    with logging_redirect_tqdm():
        for handler in root.handlers:
            if handler not in before and levels:
                handler.setLevel(levels[0])
        yield


def guarded(body: Callable[[], int], interrupted: str = RESUME_TRAINING) -> int:
    """Run a command body and turn the framework's errors into exit codes; ``interrupted`` is what
    Ctrl-C prints (how this command resumes)."""
    clear_terminated()
    previous = _terminate_like_ctrl_c()
    try:
        with logs_above_progress_bars():
            return body()
    except PhdLabError as error:  # UsageError: 2, anything else the framework raises: 1
        stop = interruption_behind(error)  # a probe worker's own Ctrl-C, taken for its layer's failure (exit 1)
        if stop is not None:
            return _stopped(stop, interrupted)
        report_error(error)
        return error.exit_code
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
        return _stopped(stop, interrupted)
    except Exception as error:
        stop = interruption_behind(error)
        if stop is not None:
            return _stopped(stop, interrupted)
        refusal = limit_refusal(error)
        if refusal is None:
            raise
        log.debug("The system refused a thread or process:", exc_info=True)  # the run's or job's log file
        report_error(refusal)
        return EXIT_FAILURE
    finally:
        clear_terminated()
        restore_handlers()  # a stop sent again (``ResentStop``) goes no further than its command
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stopped(stop: KeyboardInterrupt, interrupted: str) -> int:
    """Say how the command was stopped and return its exit code: 143 for SIGTERM, 130 for Ctrl-C."""
    if isinstance(stop, Terminated):
        how = interrupted.removeprefix("interrupted")  # "; rerun the same command to resume: ..." or nothing
        write_stderr(f"terminated (SIGTERM){how}\n")
        return 128 + signal.SIGTERM
    write_stderr(interrupted + "\n")
    return 130


def _terminate_like_ctrl_c() -> Any:
    """SIGTERM raises ``Terminated`` in the main thread (a batch system's time limit used to end a run without a
    word in its log), and again at the next batch should something swallow it (``note_terminated``); a second
    SIGTERM while the first stops the command is left alone (it raised inside the clean-up); returns the
    handler it replaced, or None where handlers cannot be set (other threads)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum: int, frame: object) -> None:
        if terminated_noted():  # a second SIGTERM (from each process of the job) while the first stops it
            return
        note_terminated()
        raise Terminated()
    return signal.signal(signal.SIGTERM, terminate)


class CommandParser(argparse.ArgumentParser):
    """The parser of every command. An option must be spelled in full: argparse took any unambiguous prefix, so
    ``--run 3`` meant ``--run-id 3`` (the whole grid trained as repetition '3' where grid point 3 was meant),
    ``probe_main.py -m 2`` meant ``-mp 2``, and an option added later would make a batch script's prefix
    ambiguous. An option it does not know is answered with the closest ones it has."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """The parsed options; exit 2 naming the arguments it does not know and the options closest to them."""
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}.{self._closest_options(unknown)}")
        return parsed

    def _print_message(self, message: str, file: Any = None) -> None:
        """--help, the usage and argparse's errors through the commands' own writers: argparse dropped the help
        without a word where stdout is full (``--help > /dev/full``, exit 0) and wrote it on stderr where stdout is
        closed; both now warn as every command's output does."""
        if message:
            (write_stderr if file is sys.stderr else write_stdout)(message)

    def _get_option_tuples(self, option_string: str) -> list[Any]:
        """The options an argument not spelled as one may be: a one-letter option with its value attached (``-mp``
        is not ``-m p``), never the prefix of a longer one (which allow_abbrev leaves to single-dash options)."""
        return [match for match in super()._get_option_tuples(option_string) if len(match[1]) == 2]

    def _closest_options(self, unknown: Sequence[str]) -> str:
        """' Did you mean ...?' with the parser's closest option to each unknown one (``--confg=x`` by its name)."""
        from phd_lab.registry import did_you_mean
        options = [name for name in self._option_string_actions if name not in ("-h", "--help")]
        # an option of its own is unknown only after '--' (``main.py -- --config x``): it is meant literally there
        names = [name for name in (arg.split("=", 1)[0] for arg in unknown if arg.startswith("-"))
                 if name not in self._option_string_actions]
        # options share their '--', which makes any two alike: only a close one ('--bogus' is no '--verbose')
        hints = [(name, did_you_mean(name, options, n=1, cutoff=0.7)) for name in names]
        hints = [(name, hint) for name, hint in hints if hint]
        if len(hints) == 1:
            return hints[0][1]
        return "".join(hint.replace(" Did you mean", f" For {name!r} did you mean") for name, hint in hints)


CONFIG_DOCS = "one object, each list in it a grid axis (README: 'The config and its grid'); its keys: --list-keys"


def build_parser(prog: str = "main.py") -> argparse.ArgumentParser:
    """main.py's options; ``prog``: the command as its usage and errors name it (``phd-lab train``)."""
    parser = CommandParser(
        prog=prog, description="Train and analyse every run of a JSON config grid.",
        epilog="Exit status: 0 success, 2 invalid usage/config/input (nothing written), 1 a run failed, "
               "130 Ctrl-C, 143 SIGTERM.")
    parser.add_argument("--config",
                        help=f"JSON config file (an experiment or a logged <run>_config.json): {CONFIG_DOCS}")
    parser.add_argument("--run-id", help="name of the repetition (overrides the config's run_id)")
    parser.add_argument("--device", help="compute device, overrides the config (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--index", type=int, help="run only grid point INDEX (e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the expanded grid (varying values, each point's status and folder) and exit")
    parser.add_argument("--scheduler", help="run the grid points as tasks on a Dask scheduler at this address, "
                        "or on a local cluster of N worker processes with local:N (plain local: one per core)")
    parser.add_argument("--list", choices=LISTABLE, metavar="KIND",
                        help=f"list the registered names of one kind ({', '.join(LISTABLE)}) and exit; with --config, "
                        "those of the registry modules the config names (its key 'registries')")
    parser.add_argument("--pattern", help="wildcard filter for --list (e.g. 'vgg*'; torchvision's models "
                        "by their prefix, e.g. 'tv:res*')")
    parser.add_argument("--list-keys", action="store_true", help="document every config key and exit")
    parser.add_argument("--markdown", action="store_true", help="with --list-keys: print a Markdown table")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    add_verbosity(parser)
    return parser


QUIET_HELP = "log warnings and errors only, and hide the progress bars (as --no-progress)"


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-q and -v, which exclude each other (given both, -q won without a word). -q hides the progress bars too, as
    in the report command: a quiet command writes nothing but warnings and errors."""
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log debug messages")


def verbosity(args: argparse.Namespace) -> int:
    """The command_logging level of add_verbosity's options: -1 quiet, 1 verbose, 0 neither."""
    return -1 if args.quiet else 1 if args.verbose else 0


GRID_OPTIONS = {"run_id": "--run-id", "device": "--device", "index": "--index", "dry_run": "--dry-run",
                "scheduler": "--scheduler"}


def refuse_options_without_effect(args: argparse.Namespace) -> None:
    """Refuse an option the chosen action would ignore: the user meant another command. ``--list-keys --config
    exp.json --index 3`` printed the key table and trained nothing with exit 0, ``--list models --list-keys``
    listed the models alone, and ``--pattern`` without ``--list`` or ``--markdown`` without ``--list-keys`` did
    nothing."""
    if args.list and args.list_keys:
        raise UsageError("--list and --list-keys each print one listing; pass one of them.")
    listing = "--list" if args.list else "--list-keys" if args.list_keys else None
    # by identity: `not in (None, False)` took --index 0 for an option not given (0 == False), so `--list steps
    # --index 0` listed with exit 0 where `--index 1` was refused
    ignored = [flag for key, flag in GRID_OPTIONS.items() if getattr(args, key) is not None
               and getattr(args, key) is not False]
    if listing and ignored:
        raise UsageError(f"{listing} only prints a listing, so {', '.join(ignored)} would do nothing; leave "
                         f"{listing} out to run (or list) the grid of --config.")
    if args.list_keys and args.config:
        raise UsageError("--list-keys documents every config key, whatever the config; leave out --config (with "
                         "--list KIND, --config names the registry modules to list).")
    if args.pattern is not None and not args.list:
        raise UsageError("--pattern filters the names of --list KIND; pass --list with it (KIND one of "
                         f"{', '.join(LISTABLE)}), or leave it out.")
    if args.markdown and not args.list_keys:
        raise UsageError("--markdown is the format of --list-keys; pass --list-keys with it, or leave it out.")


def config_registries(config_path: str | None) -> list[dict[str, str]]:
    """The registry modules (the key 'registries') of a config's grid points, each setting once in grid order; [{}]
    without a config: ``--list`` with ``--config`` lists the names that config can use, a user's own modules too."""
    if not config_path:
        return [{}]
    from phd_lab.rundir import read_config_grid
    grid = read_config_grid(config_path)
    settings: list[dict[str, str]] = []
    for index in range(len(grid)):
        chosen = grid.point(index).get("registries") or {}
        if chosen not in settings:
            settings.append(chosen)
    return settings or [{}]


def list_names(kind: str, pattern: str, registries: Sequence[Mapping[str, str]] = ({},)) -> str:
    """The names of one kind, with their first docstring line; ``registries``: the modules to list (several: each
    under the line that names it)."""
    if kind != "steps" and len(registries) > 1:
        return "\n".join(f"registries {json.dumps(dict(chosen))}:\n{list_names(kind, pattern, [chosen])}"
                         for chosen in registries)
    if kind == "steps":
        from phd_lab.steps import FROM_CONFIG, all_steps
        lines = []
        for name, step in all_steps().items():
            if fnmatch.fnmatchcase(name.lower(), pattern.lower()):
                lines.append(f"{name:24} {step.summary}")
                for key in step.params:
                    default = f"the config key {key.name!r}" if key.default is FROM_CONFIG else json.dumps(key.default)
                    lines.append(f"    {key.name} ({key.expectation()}, default {default}): {key.doc}")
        return "\n".join(lines) or "(none)"
    from phd_lab.errors import RegistryError
    from phd_lab.registry import Registries
    try:  # that kind's module only: another kind's broken file failed the listing of this one
        registry = Registries({key: module for key, module in registries[0].items() if key == kind})[kind]
    except RegistryError as error:
        raise RegistryError(f"--list {kind}: the key 'registries': {error}") from None
    lines = [f"{name:24} {registry.doc(name)}" for name in registry.names(pattern)]
    prefixed = registry.prefixed_names(pattern)
    forms = registry.prefix_forms(pattern)  # prefixes taking any name, e.g. folder:<path> for an image folder
    if prefixed or forms:  # e.g. every torchvision classification model, as tv:<name>: one wrapped block
        lines.append(f"{'and by' if lines else 'By'} prefix ({len(prefixed) + len(forms)}):")  # none named: no "and"
        lines += [f"  {form:22} {doc}" for form, doc in forms]
        if prefixed:
            lines.append(textwrap.fill(", ".join(prefixed), 116, initial_indent="  ", subsequent_indent="  ",
                                       break_on_hyphens=False))
    return "\n".join(lines) or "(none)"


def keys_table() -> str:
    from phd_lab.config import schema_table
    rows = schema_table()
    width = max(len(r["key"]) for r in rows)
    return "\n".join(f"{r['key']:{width}}  {r['default']:>10}  {r['type']}\n{'':{width}}  {'':>10}  {r['doc']}"
                     for r in rows)


def _on_other_machines(scheduler: str | None) -> bool:
    """Whether the runs train on a cluster's machines, which check the device themselves (``local:N`` and plain
    ``local`` are here: a local cluster's workers have this machine's devices, so a missing one is refused up
    front, before the cluster starts)."""
    if not scheduler:
        return False
    from phd_lab.distributed import parse_scheduler
    return parse_scheduler(scheduler)[0] != "local"


@readable_output
def main_cli(argv: Sequence[str] | None = None, prog: str = "main.py") -> int:
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        refuse_options_without_effect(args)
        if args.list:
            write_stdout(list_names(args.list, args.pattern or "*", config_registries(args.config)) + "\n")
            return EXIT_OK
        if args.list_keys:
            from phd_lab.config import schema_markdown
            write_stdout((schema_markdown() if args.markdown else keys_table()) + "\n")
            return EXIT_OK
        if not args.config:
            raise UsageError("--config is required: pass a JSON config file (e.g. configs/quickstart.json), "
                             "or use --list KIND / --list-keys.")
        if args.scheduler is not None:  # before the config: also where every point is finished and none is sent
            from phd_lab.distributed import parse_scheduler
            parse_scheduler(args.scheduler, warn=args.dry_run)  # a run warns of its workers where it starts them
        from phd_lab.experiment import Main, chosen_indices, point_status, summary_table
        main = Main(progress=not (args.no_progress or args.quiet), missing_data="warn" if args.dry_run else "error",
                    missing_device="warn" if args.dry_run else "ignore" if _on_other_machines(args.scheduler) else
                    "error")
        grid = main.load(args.config, run_id=args.run_id, device=args.device, index=args.index)
        indices = chosen_indices(grid, args.index)
        if args.dry_run:
            chosen = "" if args.index is None else f", of which --index runs {len(indices)}"
            shown = range(len(grid)) if indices is None else indices
            extra = {"status": {i: point_status(main.executors[i], main.meta_models) for i in shown},
                     "folder": {i: str(main.executors[i].rundir.root) for i in shown}}
            write_stdout(f"{len(grid)} run(s) in {args.config}{chosen}\n{grid.table(indices, extra)}\n")
            return EXIT_OK
        if args.scheduler is not None:  # an empty one is refused there, not taken for a run on this machine
            outcomes = main.run_on_cluster(grid, args.scheduler, indices)
        else:
            outcomes = main.run(grid, indices)
        failed = [o for o in outcomes if o.status == "failed"]
        in_use = [o for o in outcomes if o.status == "in use"]
        if failed or in_use:  # on stderr even with -q: what this command did not do is what the user must read
            lines = [f"Summary:\n{summary_table(outcomes)}"]
            if failed:
                lines.append(failed_runs_advice(failed, len(outcomes), bool(args.scheduler)))
            if in_use:
                lines.append(f"{len(in_use)} of {len(outcomes)} run(s) are being run by another process and were not "
                             f"run here; rerun this command once it has finished to post-process them.")
            write_stderr("\n".join(lines) + "\n")
            return EXIT_FAILURE
        log.info("Summary:\n%s", summary_table(outcomes))
        write_stdout("Results:\n" + "\n".join(f"  {o.folder}" for o in outcomes) + "\n")
        return EXIT_OK

    with command_logging(verbosity(args)):  # a dry run or a listing: nothing to resume
        return guarded(body, "interrupted" if args.dry_run or args.list or args.list_keys else RESUME_TRAINING)


def failed_runs_advice(failed: list[RunOutcome], runs: int, on_cluster: bool) -> str:
    """Where the tracebacks of the failed runs are: in their run logs, or (for runs that failed before their log
    was opened) above on the console, or in the logs of the Dask workers that ran them."""
    died = sum(outcome.died for outcome in failed)
    gone = (f" {died} of them ended with their Dask worker processes (no traceback exists; the same command resumes "
            f"them).") if died else ""
    unlogged = sum(not outcome.logged and not outcome.died for outcome in failed)
    if not unlogged:
        see = "; see each failed run's .log file" if any(outcome.logged for outcome in failed) else ""
        return f"{len(failed)} of {runs} run(s) failed{see}.{gone}"
    where = "in the logs of the Dask workers that ran them (for local:N: above)" if on_cluster else "above"
    others = f" The other {len(failed) - unlogged}: see their .log files." if unlogged < len(failed) else ""
    unwritable = sum(not outcome.logged and outcome.log_unwritable for outcome in failed)
    why = [f"{unlogged - unwritable} of them failed before a run log was opened (while building the data, model or "
           f"optimizer)"] if unlogged > unwritable else []
    if unwritable:  # its log was open, but the disk (or a file size limit) refused the traceback
        why.append(f"{unwritable} of them failed into a run log that could not be written (a full disk or a file "
                   f"size limit)")
    return f"{len(failed)} of {runs} run(s) failed. {' and '.join(why)}; their tracebacks are {where}.{others}{gone}"


def entry_point() -> None:
    """Console script ``phd-lab-train``."""
    sys.exit(main_cli(prog="phd-lab-train"))
