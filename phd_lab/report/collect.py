"""Analyse run folders from their current files and (optionally) refresh analysis.json + analysis.png.

Used by the ``analysis`` post-processing step (one run) and by ``python -m phd_lab report`` (all
runs of a logs folder), so probe results that arrive after training show up on the next report.
A run that a live process still owns is analysed but its folder is left alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phd_lab import atomic
from phd_lab.analysis.run_summary import AnalysisSettings, summarize
from phd_lab.analysis.run_tables import RunTables, discover_runs, latents_manifest_path, load_run, lock_owner_alive
from phd_lab.interrupts import raise_interruption_behind
from phd_lab.latents_sets import LATENTS, MANIFEST
from phd_lab.rundir import RunDir
from phd_lab.errors import ConfigError
from phd_lab.file_hash import file_stamp
from phd_lab.lock import PROBE_LOCK

log = logging.getLogger(__name__)


@dataclass
class RunEntry:
    """One analysed run: its tables, summary, figure (PNG bytes) and whether its files were refreshed."""

    folder: RunDir
    tables: RunTables
    summary: dict[str, Any]
    figure: bytes | None
    written: bool = False
    errors: list[str] = field(default_factory=list)
    probe_stamp: Any = "not analysed"  # the probe results the analysis read (``stamp_if_present``)


def analyse_run(folder: RunDir, *, write: bool = True, settings: AnalysisSettings | None = None,
                skip_active: bool = True, last_step: bool = False, probe_job: bool = False) -> RunEntry:
    """Summarise one run and draw its figure; write both into the folder when ``write``.

    ``skip_active``: do not write into a folder whose lock names a live process, or a process on
    another host that cannot be checked, nor into one where a probe job on this host is writing
    (a running training or probe job writes its own analysis at the end). Probe results that arrive
    while the run is analysed are read again (up to ``MAX_ATTEMPTS`` times; still changing, nothing
    is written: their probe job writes the analysis), so an analysis read before they came never
    replaces the one written with them. ``last_step``: called by the run's own analysis step, its
    last: a finished run is described as finished, not as still post-processing (its lock is released
    right after). ``probe_job``: called by the probe job that holds the folder's probe lock. The same holds for
    the run's other files (``_read_stamps``): a run that changed while it was analysed is analysed again.
    """
    from phd_lab.plots.run_figure import figure_png

    for _ in range(MAX_ATTEMPTS):
        analysis = _analyse(folder, settings, last_step, probe_job)
        if analysis.entry.figure is None:
            analysis.entry.figure = figure_png(analysis.entry.tables, analysis.entry.summary)
        changed = _changed_since_read(analysis)
        if not changed:
            break
        log.info("%s while it was analysed; analysing again", _what_changed(changed, folder))
    else:
        return analysis.entry
    _write(analysis, write=write, skip_active=skip_active, strict=last_step)
    return analysis.entry


@dataclass
class _Analysis:
    """A run analysed but not yet written: its entry, the analysis.json document, whether the folder holds its
    figure or both already, and the stamps of the files it read (``_read_stamps``, before reading the tables)."""

    entry: RunEntry
    document: dict[str, Any]
    figure_in_place: bool
    up_to_date: bool
    stamps: dict[Path, Any]


def _read_stamps(folder: RunDir) -> dict[Path, Any]:
    """``stamp_if_present`` of every file an analysis reads, and of the run's lock and checkpoint: a process that
    took the folder and let it go (a training resumed to its end) leaves other stamps, though no lock is held now."""
    paths = (folder.probe_csv, folder.config, folder.metrics_csv, folder.receptive_field_csv,
             folder.computational_info_json, folder.computational_info_csv, folder.projections_csv,
             folder.root / LATENTS / MANIFEST, folder.diverged, folder.checkpoint, folder.lock,
             folder.root / PROBE_LOCK)
    return {path: stamp_if_present(path) for path in paths}


def _changed_since_read(analysis: _Analysis) -> list[Path]:
    """The files whose stamps are no longer those taken before the analysis read the run (none: it may be written)."""
    return [path for path, stamp in analysis.stamps.items() if stamp_if_present(path) != stamp]


def _what_changed(changed: list[Path], folder: RunDir) -> str:
    """What the log says changed: new probe results, or the other files by name."""
    if folder.probe_csv in changed:
        return f"Probe results of {folder.root} arrived"
    return f"{', '.join(path.name for path in changed)} of {folder.root} changed"


def _taken_since_read(analysis: _Analysis) -> bool:
    """Whether a live process holds the run's folder now, when none did as its tables were read."""
    status, lock = analysis.entry.tables.status, analysis.entry.folder.lock
    was_free = status is None or status.active is False
    return was_free and lock.exists() and lock_owner_alive(lock)[0] is not False


def _write(analysis: _Analysis, *, write: bool, skip_active: bool, strict: bool = False) -> None:
    """Write the analysis and the figure into the run folder, unless ``analyse_run``'s rules leave it alone. A probe
    job that took the run's probe lock after ``_analyse`` read it changed the lock's stamp, so the run is analysed
    again before it gets here: ``probe_job_running`` is current. A write the file system refuses is a warning
    (a report or probe job refreshes the analysis on the side), but ``strict`` (the run's own analysis step) raises
    it: the step's files are its result, so the run fails (exit 1) as any other step's would."""
    entry, folder = analysis.entry, analysis.entry.folder
    active = entry.tables.status is not None and entry.tables.status.active is not False  # None: another host
    active = active or (skip_active and entry.tables.probe_job_running)  # another probe job writes it at its end
    if not write or not folder.root.is_dir():  # never re-create a deleted run
        log.debug("%s: analysed, its analysis files not written (%s)", folder.root,
                  "not asked to" if not write else "the folder is gone")
        return
    if skip_active and active:
        log.debug("%s: analysed, its analysis files left to the process that owns the run", folder.root)
        return
    for name in (folder.analysis_plot.name, folder.analysis_json.name):  # a killed writer's, 15 minutes old
        for stale in atomic.remove_stale_temps(folder.root, only=name):  # (younger: another writer's now)
            log.info("Removed %s, left half-written by a process that was killed.", stale)
    if analysis.up_to_date:  # the same analysis and figure are there already: nothing to rewrite
        log.debug("%s: analysis.json and analysis.png are up to date", folder.root)
        entry.written = True
        return
    try:  # the figure first: analysis.json names it by its key, and a later report takes it by that key
        if not analysis.figure_in_place:
            atomic.write_bytes(folder.analysis_plot, entry.figure)
        write_analysis_json(folder.analysis_json, {**analysis.document,
                                                   FIGURE_SHA256: hashlib.sha256(entry.figure).hexdigest()})
        entry.written = True
        log.debug("%s: wrote analysis.json%s", folder.root, "" if analysis.figure_in_place else " and analysis.png")
    except OSError as error:
        if strict:
            raise
        log.warning("Cannot refresh the analysis of %s: %s", folder.root, error)
        entry.errors.append(f"analysis files not written: {error}")


MAX_ATTEMPTS = 3


def _analyse(folder: RunDir, settings: AnalysisSettings | None, last_step: bool,
             probe_job: bool = False) -> _Analysis:
    """The run's analysis, with the figure of analysis.png where it shows the same (else the figure is None).
    ``probe_job``: the caller is the probe job that holds the probe lock, not another one that may replace them."""
    from dataclasses import replace

    stamps = _read_stamps(folder)
    sources = _plotted_files_digest(folder)  # before the tables are read: a file replaced between only redraws
    tables = load_run(folder)
    manifest = latents_manifest_path(tables)  # mirrored under a latents_dir: known once the config is read
    stamps.setdefault(manifest, stamp_if_present(manifest))
    tables.probe_job_running = not probe_job and lock_owner_alive(folder.root / PROBE_LOCK)[0] is True
    if last_step and tables.status is not None and tables.status.state == "finished":
        tables.status = replace(tables.status, active=False, owner="")
    if settings is None:
        try:
            settings = AnalysisSettings.from_config(tables.config, str(folder.config))
        except ConfigError as error:
            tables.problems.append(f"analysis settings in the config are invalid, defaults used: {error}")
            settings = AnalysisSettings()
    summary = summarize(tables, settings)
    plain = json.loads(json.dumps(jsonable(summary), allow_nan=False))  # as analysis.json holds it
    key = run_figure_key(plain, sources)
    previous = atomic.read_json_object(folder.analysis_json) or {}
    own = _without_kept(previous)
    figure = _previous_figure(folder, own) if own.get("figure_key") == key else None
    document = {**plain, "figure_key": key, **({FIGURE_SHA256: own[FIGURE_SHA256]} if figure else {})}
    document = {**document, **_other_versions_keys(previous, document)}
    in_place = figure is not None
    return _Analysis(RunEntry(folder, tables, summary, figure, probe_stamp=stamps[folder.probe_csv]), document,
                     in_place, in_place and previous == document, stamps)


def jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy scalars unboxed, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_analysis_json(path: Any, document: dict[str, Any]) -> None:
    """Write ``analysis.json`` atomically from a document of plain JSON values (strict JSON: no NaN)."""
    atomic.write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def stamp_if_present(path: Path) -> tuple[int, int, int] | None:
    """``manifest.file_stamp`` (which file a path names now: atomic writes give a replaced file a new inode),
    or None where there is no file."""
    try:
        return file_stamp(path)
    except OSError:
        return None


def run_figure_key(plain_summary: dict[str, Any], plotted_files: str) -> str:
    """What the run's figure is drawn from: the summary (as plain JSON values) but the run's folder, which the
    figure does not show, the content of the files it plots (``_plotted_files_digest``) and the version that
    draws it. Drawing the figure costs about 0.2 s, most of a report over hundreds of runs; a figure of the same
    key is taken from analysis.png, also in a copied or moved logs folder."""
    shown = {**plain_summary, "run": {k: v for k, v in plain_summary["run"].items() if k != "folder"}}
    digest = hashlib.sha256(json.dumps(shown, sort_keys=True).encode())
    digest.update(plotted_files.encode())
    digest.update(_run_figure_code())
    return digest.hexdigest()[:16]


def _plotted_files_digest(folder: RunDir) -> str:
    """A digest of the content of the files the run's figure plots (absent ones named as such). By content, not
    by inode and time: a copy of the logs folder shows the same figures."""
    digest = hashlib.sha256()
    for path in (folder.metrics_csv, folder.probe_csv, folder.receptive_field_csv, folder.config):
        try:
            content = hashlib.sha256(atomic.read_bytes(path)).hexdigest()
        except OSError:
            content = "absent"
        digest.update(f"{path.name} {content};".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _run_figure_code() -> bytes:
    """The versions of the code that draws a figure: phd-lab, matplotlib and the text of the modules it draws with
    (an edit of one, without a new version, must not leave old figures in place)."""
    from phd_lab.plots import receptive_field, run_figure
    from phd_lab.report.figure_reuse import drawing_sources, drawing_versions
    # run_figure and receptive_field's plotted_rows, then the modules every figure is drawn with
    return drawing_versions() + hashlib.sha256(drawing_sources(run_figure, receptive_field)).digest()


def _without_kept(previous: dict[str, Any]) -> dict[str, Any]:
    """An analysis.json less the keys it says another version kept unrefreshed (``KEPT``): what they say may no
    longer hold (a ``figure_sha256`` kept by a version that drew the figure again), so this version, which knows
    them, does not go by them."""
    kept = previous.get(KEPT)
    stale = {key for key in kept if isinstance(key, str)} if isinstance(kept, list) else set()
    return {key: value for key, value in previous.items() if key not in stale}


FIGURE_SHA256 = "figure_sha256"  # analysis.json's sha256 of the analysis.png written with it
# analysis.json's list of the keys another phd-lab version wrote that this one does not: kept, not refreshed
KEPT = "kept_from_other_versions"
# the top-level keys this version may write beside the summary's (the others it writes every time)
OWN_KEYS = frozenset({"figure_key", FIGURE_SHA256, KEPT})


def _other_versions_keys(previous: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """The keys of the previous analysis.json that this version does not write (a newer version's; those of an older
    one it no longer writes), kept as they were, and ``KEPT`` naming them: a report of this version beside a newer
    one on the same logs (two checkouts, a cluster's module and a laptop) must not lose what the newer one wrote,
    yet they were not refreshed with the rest, which the list says. Keys inside a section both write as an object
    (``run``, ``accuracy``) are kept too, named by their path (``run.gpu``). Returns the top-level keys to write
    over ``document``: kept keys, sections with kept keys merged in, and ``KEPT``; empty where there are none."""
    kept: list[str] = []
    merged = _merge_kept(previous, document, "", kept, OWN_KEYS)
    return {**merged, KEPT: sorted(kept)} if kept else {}


def _merge_kept(previous: dict[str, Any], document: dict[str, Any], path: str, kept: list[str],
                own: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The entries of ``document`` (an object at ``path``) that keeping ``previous``'s other keys adds or changes:
    a key ``document`` lacks, as it was (its path appended to ``kept``), and an object both hold, merged alike."""
    changed: dict[str, Any] = {}
    for key, value in previous.items():
        if key in own:
            continue
        if key not in document:
            changed[key] = value
            kept.append(path + key)
        elif isinstance(value, dict) and isinstance(document[key], dict):
            inner = _merge_kept(value, document[key], f"{path}{key}.", kept)
            if inner:
                changed[key] = {**document[key], **inner}
    return changed


def _previous_figure(folder: RunDir, previous: dict[str, Any]) -> bytes | None:
    """analysis.png's bytes where they are those written with ``previous`` (its ``figure_sha256``); a figure cut or
    changed since (a copy broken off) would be embedded broken in the report, and is drawn again (None)."""
    try:
        figure = atomic.read_bytes(folder.analysis_plot)
    except OSError:
        return None
    if hashlib.sha256(figure).hexdigest() == previous.get(FIGURE_SHA256):
        return figure
    if FIGURE_SHA256 in previous:  # not an analysis.json of an earlier version, which recorded no sha256
        log.warning("%s is not the figure written with %s (damaged or changed since?); it is drawn again.",
                    folder.analysis_plot, folder.analysis_json.name)
    return None


def _failed_entry(folder: RunDir, error: BaseException) -> RunEntry:
    log.warning("Analysis of %s failed: %s: %s", folder.root, type(error).__name__, error)
    tables = RunTables(folder, problems=[f"analysis failed: {type(error).__name__}: {error}"])
    summary = {"run": {"name": folder.name, "folder": str(folder.root), "variant": folder.variant, "model": None,
                       "dataset": None, "resolution": None, "status": None},
               "accuracy": {"test": None}, "saturation": None, "tails": [], "borders": None, "agreement": None,
               "probes": {"status": "unknown"}, "computational": None, "truncation": None, "missing": [],
               "problems": tables.problems, "recommendations": []}
    return RunEntry(folder, tables, summary, None, errors=list(tables.problems))


def collect(logs_dir: Path | str, *, refresh: bool = True, progress: bool = False,
            processes: int = 0) -> list[RunEntry]:
    """Analyse every run below ``logs_dir``; one broken run never stops the others. The figures that are not in
    the run folders already are drawn by up to ``processes`` worker processes (0: in this process); all reading
    and writing happens here, each run's as soon as its figure is ready, so a stopped report keeps what it did."""
    from contextlib import closing

    from tqdm import tqdm

    from phd_lab.progress import bar_options
    from phd_lab.report.run_figures import draw_run_figures

    folders = list(discover_runs(logs_dir))
    log.info("Analysing %d run(s) below %s", len(folders), logs_dir)
    entries: list[RunEntry | None] = [None] * len(folders)
    waiting: list[tuple[int, _Analysis]] = []  # runs whose figure must be drawn
    for position, folder in enumerate(tqdm(folders, desc="analysing runs", unit="run",
                                           disable=not progress, **bar_options(transient=True))):
        try:
            analysis = _analyse(folder, None, last_step=False, probe_job=False)
        except Exception as error:  # a report must cover the whole grid even if one folder is odd
            raise_interruption_behind(error)  # a Ctrl-C as the plotting modules were first imported stops it
            entries[position] = _failed_entry(folder, error)
            continue
        if analysis.entry.figure is None:
            waiting.append((position, analysis))
        else:
            entries[position] = _finish(analysis, refresh)
    requests = [(analysis.entry.tables, analysis.entry.summary) for _, analysis in waiting]
    with closing(draw_run_figures(requests, processes=processes, progress=progress)) as figures:
        for index, figure in figures:
            position, analysis = waiting[index]
            if isinstance(figure, Exception):
                entries[position] = _failed_entry(folders[position], figure)
            else:
                analysis.entry.figure = figure
                entries[position] = _finish(analysis, refresh)
    return entries  # type: ignore[return-value]  # every position is filled


def _finish(analysis: _Analysis, refresh: bool) -> RunEntry:
    """Write a run's analysis as ``analyse_run`` would, or analyse the run again where it changed while the report
    was busy with other runs: new probe results, any other file it read, or a process (a resumed training) that took
    its folder, whether it holds it still or let it go already (its lock file changed)."""
    folder = analysis.entry.folder
    try:
        changed = _changed_since_read(analysis)
        if changed:
            log.info("%s while the report was built; analysing it again", _what_changed(changed, folder))
            return analyse_run(folder, write=refresh)
        if _taken_since_read(analysis):
            log.info("A process took %s while the report was built; analysing it again", folder.root)
            return analyse_run(folder, write=refresh)
        _write(analysis, write=refresh, skip_active=True)
        return analysis.entry
    except Exception as error:  # a report must cover the whole grid even if one folder is odd
        raise_interruption_behind(error)
        return _failed_entry(folder, error)
