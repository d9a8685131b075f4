"""``python -m phd_lab report LOGS_DIR [--out FILE]``: refresh every run's analysis and write the HTML page."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from phd_lab import atomic
from phd_lab.console import readable_output, write_stdout
from phd_lab.environment import available_cores
from phd_lab.errors import EXIT_OK, DataError, ReportError, UsageError, storage_refusal
from phd_lab.report.repetition_files import DEFAULT_ALPHA, REPETITION_TABLES, TITLE, csv_path, is_repetition_table
from phd_lab.user_paths import check_writable_dir, unreachable

if TYPE_CHECKING:
    import pandas as pd

    from phd_lab.report.collect import RunEntry
    from phd_lab.report.figure_reuse import KeyedFigure

log = logging.getLogger(__name__)

RELATIVE_ACCURACY = "Accuracy of the projected networks relative to the unprojected ones"
# Reports are often built on a shared login node: by default at most this many figure workers (about 130 MB each);
# eight draw 300 runs' figures in about half a minute.
DEFAULT_MAX_PROCESSES = 8


def default_processes() -> int:
    """The figure workers of a report without ``-mp``: one per core this process may use, at most
    ``DEFAULT_MAX_PROCESSES``."""
    return min(available_cores(), DEFAULT_MAX_PROCESSES)


def build_parser(prog: str = "python -m phd_lab report") -> argparse.ArgumentParser:
    from phd_lab.cli import CommandParser, add_verbosity  # no option prefixes; -q and -v as in every command

    parser = CommandParser(
        prog=prog,
        description="Analyse every run below LOGS_DIR from its saved files (saturation, receptive fields, FLOPs, "
                    "probes) and write one static HTML page with a sortable table, comparison plots and a section "
                    "per run. Runs repeated with other seeds get statistics over the repetitions (saturation "
                    "stability, t-tests of the projections), also written to <page>_saturation_stability.csv and "
                    "<page>_relevant_eigenspace.csv beside it. Each run's analysis.json and analysis.png are "
                    "refreshed unless --no-refresh.",
        epilog="Exit status: 0 success, 2 LOGS_DIR missing or without runs, or a bad option, 1 the page or a table "
               "could not be written (a full disk), or an unexpected failure, 130 Ctrl-C, 143 SIGTERM.")
    parser.add_argument("logs_dir", metavar="LOGS_DIR", help="the logs folder of a grid (the config's logs_dir)")
    parser.add_argument("--out", help="HTML file to write (default: LOGS_DIR/report.html)")
    parser.add_argument("--no-refresh", action="store_true",
                        help="do not write analysis.json/analysis.png into the run folders (read-only logs)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help="significance level of the t-tests over repeated runs (default %(default)s, as the "
                             "thesis' Table 5; its Tables 4 and 14-16 use 0.01)")
    parser.add_argument("-mp", "--processes", type=int, default=None,
                        help="worker processes that draw the run figures not in the run folders yet (default: the "
                             f"number of cores, at most {DEFAULT_MAX_PROCESSES}; 0 or 1 draws them in this process); "
                             "one starts for every 4 figures at most")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_verbosity(parser)
    return parser


def _is_report(path: Path) -> bool:
    """Whether ``path`` is a page this command wrote (which a new report may replace). A FIFO there is none: it is
    not read (``open_regular``), and opening it waited for a writer for ever."""
    try:
        with atomic.open_regular(path) as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return f"<title>{TITLE}".encode() in head


def _refuse_a_page_sharing_the_tables(out_path: Path, table: Path) -> None:
    """Refuse ``--out r.htm`` beside the report page ``r.html``: the tables of repeated runs are named after the
    page's stem (``r_saturation_stability.csv``), so the new report would replace that page's tables with other
    runs' statistics, or remove them and leave its links broken."""
    try:
        siblings = [path for path in out_path.parent.iterdir() if path.stem == out_path.stem and path != out_path]
    except OSError:  # no such folder yet: no page in it
        return
    for page in sorted(siblings):
        if page.is_file() and _is_report(page):
            raise UsageError(f"--out {str(out_path)!r}: the report page {str(page)!r} beside it has the same name "
                             f"before its suffix, and the tables of repeated runs are named after it ({table.name}): "
                             f"this report would replace or remove that page's tables. Pass another --out name, or "
                             f"that page's own.")


def _not_written(out_path: Path, path: Path, error: OSError) -> str:
    """What a report whose page (or, after the page, one of its tables at ``path``) could not be written says."""
    why = error.strerror or str(error)
    if path == out_path:
        return (f"The report page {str(out_path)!r} could not be written ({why}); a page that was there is left as "
                f"it was. {_remedy(error, ' (or pass another --out)')}")
    return (f"The report page {str(out_path)!r} was written, but its table {str(path)!r} could not be ({why}), so "
            f"the page's link to it is stale or broken. {_remedy(error, '')}")


def _remedy(error: OSError, elsewhere: str) -> str:
    """What to do about a write the file system refused: its cause in words where ``storage_refusal`` knows it
    (free space is no help for ``ulimit -f`` or a read-only mount), else free space, the usual cause."""
    refusal = storage_refusal(error)
    if refusal is None:
        return f"Free space on its disk{elsewhere} and rerun the command."
    return f"The cause: {refusal}{elsewhere}, then rerun the command."


def write_report(logs_dir: Path | str, out: Path | str | None = None, *, refresh: bool = True,
                 progress: bool = False, alpha: float = DEFAULT_ALPHA, processes: int | None = None) -> Path:
    """Analyse all runs of ``logs_dir`` and write the report, with the tables of its repeated runs beside
    it (``<out>_saturation_stability.csv``, ``<out>_relevant_eigenspace.csv``); return its path.
    Up to ``processes`` worker processes (default: the available cores, at most ``DEFAULT_MAX_PROCESSES``) draw
    the run figures that are not in the run folders yet; they are spawned, so a script that calls this needs an
    ``if __name__ == "__main__":`` guard (or ``processes=0``)."""
    logs_dir, out_path, tables = _checked_paths(logs_dir, out, alpha, processes)
    check_writable_dir(str(out_path.parent), "--out", "report", subject="the folder of --out")  # before any
    # run folder is refreshed; then a killed report's temp page (15 minutes old), and nothing else of that folder
    for name in [out_path.name, *(path.name for path in tables.values())]:
        for stale in atomic.remove_stale_temps(out_path.parent, only=name):
            log.info("Removed %s, left half-written by a process that was killed.", stale)
    # imported once the options are found usable: they import pandas and numpy, which a usage error need not wait for
    from phd_lab.report.collect import collect
    from phd_lab.report.html import render_report
    from phd_lab.report.figure_reuse import previous_figures
    from phd_lab.report.repetitions import draw_figures, repetition_groups, repetitions_csvs

    entries = collect(logs_dir, refresh=refresh, progress=progress,
                      processes=default_processes() if processes is None else processes)
    if not entries:
        raise DataError(f"LOGS_DIR {str(logs_dir)!r} holds no runs: no folder below it holds a run's logged "
                        f"<name>_config.json in its place in a logs tree or beside the run's metrics CSV or a "
                        f"post-processing table (a logged config copied elsewhere on its own is no run). Train a "
                        f"grid into it first (python main.py --config FILE).")
    previous = previous_figures(out_path)  # a report page where one exists (checked above)
    comparison = _comparison_figures(entries, previous)
    groups = [draw_figures(group, previous) for group in repetition_groups(entries, alpha)]
    frames = repetitions_csvs(groups)
    page = render_report(entries, logs_dir, out_path, comparison, groups,
                         [tables[suffix] for suffix in REPETITION_TABLES if suffix in frames])
    _write_page(out_path, page, tables, frames)
    log.info("Report of %d run(s) written to %s", len(entries), out_path)
    for group in groups:
        if group.relevant_delta is not None:
            log.info("%s: relevant eigenspace from delta %g on (paired t-tests over %d projected runs, alpha %g)",
                     group.label, group.relevant_delta, group.projected, alpha)  # the n of the page's tests
    return out_path


def _checked_paths(logs_dir: Path | str, out: Path | str | None, alpha: float,
                   processes: int | None) -> tuple[Path, Path, dict[str, Path]]:
    """LOGS_DIR, the page to write and its repetition tables by suffix, once every option is usable: a
    UsageError before any run folder is read or written."""
    if not str(logs_dir).strip():  # Path("") is the working directory: an unset shell variable, not a choice
        raise UsageError("LOGS_DIR is empty; pass the logs folder of a grid (the config's 'logs_dir', ./logs by "
                         "default), or '.' for the working directory.")
    logs_dir = Path(logs_dir)
    if why := unreachable(logs_dir):  # a loop: exists() said it does not exist; a name too long: a traceback
        raise UsageError(f"LOGS_DIR {str(logs_dir)!r} cannot be used: {why}.")
    if not logs_dir.exists():
        raise UsageError(f"LOGS_DIR {str(logs_dir)!r} does not exist; pass the logs folder of a grid (the config's "
                         f"'logs_dir', ./logs by default).")
    if not logs_dir.is_dir():
        raise UsageError(f"LOGS_DIR {str(logs_dir)!r} is not a folder; pass the logs folder of a grid.")
    out_path = Path(out) if out is not None else logs_dir / "report.html"
    if why := unreachable(out_path):  # a name too long: is_dir() raised OSError, a traceback
        raise UsageError(f"--out {str(out_path)!r} cannot be used: {why}.")
    if out_path.is_dir():
        raise UsageError(f"--out {str(out_path)!r} is a folder; pass the path of the HTML file to write.")
    if out_path.exists() and not _is_report(out_path):
        raise UsageError(f"--out {str(out_path)!r} exists and is no phd-lab report; it would be replaced (a run's CSV "
                         f"lost its history this way). Pass a new file name or remove that file first.")
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"--alpha {alpha:g} is no significance level; pass a number between 0 and 1, e.g. 0.05 "
                         f"(the thesis' Table 5) or 0.01 (its Tables 4 and 14-16).")
    if processes is not None and processes < 0:
        raise UsageError(f"-mp must be ≥ 0 (0 draws the run figures in this process); got {processes}. Leave it out "
                         f"to draw them with one worker process per core (at most {DEFAULT_MAX_PROCESSES}).")
    tables = {suffix: csv_path(out_path, suffix) for suffix in REPETITION_TABLES}
    for path in tables.values():
        if path.exists() and not is_repetition_table(path):
            raise UsageError(f"{str(path)!r} exists and is no table of a phd-lab report; the report would replace "
                             f"it with the statistics of its repeated runs. Pass another --out or move that file.")
    _refuse_a_page_sharing_the_tables(out_path, tables[REPETITION_TABLES[0]])
    return logs_dir, out_path, tables


def _comparison_figures(entries: list[RunEntry], previous: Mapping[str, bytes]) -> list[KeyedFigure]:
    """The grid's comparison plots, with §7.3's Fig. 43 where any run was projected; each one whose key is in
    ``previous`` (the page this one replaces) is taken from it: drawing them was most of a rebuilt report's time
    when nothing had changed (6.8 of 10.3 s on two runs, matplotlib's import included)."""
    from phd_lab.analysis.projection_tables import relative_accuracies
    from phd_lab.plots import grid_figures as drawing, projections
    from phd_lab.report.figure_reuse import figure_key, keyed_figure

    bands = {tuple(e.summary["settings"]["target_saturation"]) for e in entries if e.summary.get("settings")}
    summaries = [e.summary for e in entries]
    comparison = []
    for title, (x_of, labels, options) in drawing.comparison_plots(summaries, sorted(bands) or [(0.2, 0.3)]).items():
        key = figure_key(drawing, "comparison", title, data=[drawing.plotted_values(summaries, x_of), labels,
                                                             sorted(options.items())])
        comparison.append(keyed_figure(title, key, previous=previous, draw=lambda x_of=x_of, labels=labels,
                                       options=options: drawing.scatter_figure(summaries, x_of, *labels, **options)))
    relative = relative_accuracies({str(e.folder.root): e.tables.projections for e in entries
                                    if e.tables.projections is not None})
    if len(relative):  # §7.3's Fig. 43 over every projected run of the grid
        # the figure counts the runs and never names them: keyed by their order, not their folders' paths, a moved
        # or copied logs folder takes it from the page it replaces, as it takes the other comparison plots
        key = figure_key(projections, "relative accuracy", RELATIVE_ACCURACY,
                         relative.assign(run=relative["run"].factorize()[0]))
        comparison.append(keyed_figure(RELATIVE_ACCURACY, key, previous=previous,
                                       draw=lambda: projections.relative_accuracy_figure(relative)))
    return comparison


def _write_page(out_path: Path, page: str, tables: dict[str, Path], frames: dict[str, pd.DataFrame]) -> None:
    """Write the page, then its repetition tables (removing one the grid no longer has: it would describe other
    runs); a write that fails is one ReportError paragraph, not a traceback. A folder name the locale could not
    decode (a UTF-8 '数据' under LC_ALL=C with Python's UTF-8 mode off) goes into the page as the bytes it has."""
    writing = out_path
    try:
        atomic.write_bytes(out_path, page.encode("utf-8", "surrogateescape"))  # a path's undecoded bytes
        for suffix, writing in tables.items():
            if suffix in frames:
                atomic.write_csv(writing, frames[suffix])
            elif writing.exists():
                writing.unlink()
    except OSError as error:  # a full disk, a file size limit
        raise ReportError(_not_written(out_path, writing, error)) from None


@readable_output
def main_report(argv: Sequence[str], prog: str = "python -m phd_lab report") -> int:
    from phd_lab.cli import command_logging, guarded, verbosity

    args = build_parser(prog).parse_args(list(argv))

    def body() -> int:
        path = write_report(args.logs_dir, args.out, refresh=not args.no_refresh,
                            progress=not (args.no_progress or args.quiet), alpha=args.alpha, processes=args.processes)
        write_stdout(f"{path}\n")
        return EXIT_OK

    with command_logging(verbosity(args)):
        return guarded(body, "interrupted; the report was not written (run folders already refreshed stay so); "
                             "rerun the command")
