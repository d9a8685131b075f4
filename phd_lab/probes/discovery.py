"""Which latents a probe job probes: every run of a grid that has them, or one latents folder.

Finding the jobs only reads (configs, manifests, lock files); it decides which runs are probed now, which
wait for an extraction that is still running, and which need the user (an extraction that died). The
driver (``job``) validates and fits them; ``outputs`` writes their results.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from phd_lab.atomic import temp_name
from phd_lab.errors import ConfigError, DataError
from phd_lab.latents_sets import (PREVIOUS_EXTRACTION_VERSION, extracted_by_older_version, lists_extract_step,
                                  set_of_folder)
from phd_lab.probes.manifest import MANIFEST, Manifest, read_manifest
from phd_lab.probes.settings import ProbeSettings
from phd_lab.rundir import FolderListings, RunDir, earlier_version_advice, earlier_version_runs, read_config_grid
from phd_lab.user_paths import NAME_MAX, dangling_link, gone_link_target, name_bytes, unreachable

log = logging.getLogger(__name__)

CACHE_FOLDER = ".probe_cache"


@dataclass(frozen=True)
class ProbeJob:
    """One latents folder to probe with its settings, and the run folder that receives the results."""

    manifest: Manifest
    settings: ProbeSettings
    outputs: RunDir
    label: str  # for messages: the run's name or the latents folder
    extract_again: str = ""  # the command that extracts a grid run's latents again (empty for --latents)


def jobs_from_config(config_path: Path | str, run_id: str | None = None,
                     overrides: Mapping[str, Any] | None = None) -> tuple[list[ProbeJob], Path, list[str]]:
    """Every run of the config's grid that has latents: the jobs, the default cache folder, and the runs left
    unprobed that need the user's action.

    Runs are located exactly as training places them (``RunDir.for_run``); the probe settings
    of each run come from its ``probe_*`` keys, then the command-line ``overrides``. Runs
    without a latents folder are skipped, and so are runs whose extraction is running (their turn comes in
    a later job) or died (listed in the third value: the others are probed meanwhile). Without any other
    run to probe, either is an error.
    """
    where = str(config_path)
    grid = read_config_grid(config_path, run_id=run_id)
    scan = _scan_grid(grid, where, overrides, run_id)
    if scan.invalid:  # before any other run is probed: exit 2, nothing written, every such run named at once
        raise invalid_latents_error(scan.invalid)
    jobs = _without_repeats(scan.jobs, where)
    if not jobs:
        _nothing_to_probe(scan, where, len(grid), run_id)
    stopped = [index for index, _ in scan.stopped]
    waiting = [index for index in scan.skipped if index not in scan.not_extracted and index not in stopped]
    if waiting:
        log.info("%d run(s) without latents (skipped): %s", len(waiting), index_ranges(waiting))
    if scan.not_extracted:
        command = (extraction_command(where, run_id, scan.not_extracted[0]) if len(scan.not_extracted) == 1
                   else grid_command(where, run_id))
        log.warning("run(s) %s of %s: trained (a checkpoint, and no process at work on the run) but without latents, "
                    "though the config's post_processing lists 'extract': their extraction has not run (the step "
                    "was added after training, or the training was stopped); skipped. `%s` extracts them (a "
                    "trained run is not trained again).", index_ranges(scan.not_extracted), where, command)
    for index, how_far in scan.stopped[:SAID_ONE_BY_ONE]:
        log.warning("run %d of %s (training: %s; no process at work on it): it stopped before its last epoch, so "
                    "the latents its config's post_processing lists ('extract') were not extracted; skipped. `%s` "
                    "resumes the training from its checkpoint, then extracts them.", index, where, how_far,
                    extraction_command(where, run_id, index))
    if len(scan.extracting) > SAID_ONE_BY_ONE:
        log.warning("%d run(s) whose latents are being extracted (skipped): %s", len(scan.extracting),
                    index_ranges(scan.extracting))
    if scan.unfinished:
        log.warning("%d run(s) whose extraction did not finish (those latents not probed): %s", len(scan.unfinished),
                    index_ranges(scan.unfinished))
    if len(scan.outdated) > SAID_ONE_BY_ONE:
        log.warning("%d run(s) whose latents an older phd-lab extracted (not probed): %s", len(scan.outdated),
                    index_ranges(scan.outdated))
    notes = [f"run(s) {index_ranges(scan.unfinished)}: extraction unfinished"] if scan.unfinished else []
    if scan.not_extracted:
        notes.append(f"run(s) {index_ranges(scan.not_extracted)}: trained, latents not extracted ({command} "
                     f"extracts them)")
    if scan.stopped:
        resume = extraction_command(where, run_id, stopped[0]) if len(stopped) == 1 else grid_command(where, run_id)
        notes.append(f"run(s) {index_ranges(stopped)}: training stopped before its last epoch, no latents ({resume} "
                     f"resumes {'it' if len(stopped) == 1 else 'them'})")
    if scan.outdated:
        notes.append(f"run(s) {index_ranges(scan.outdated)}: latents of an older extraction, to be extracted again "
                     f"by {grid_command(where, run_id)}")
    return jobs, Path(sorted(scan.logs_dirs)[0]) / CACHE_FOLDER, notes


@dataclass
class _GridScan:
    """What a grid's runs hold: jobs to probe, and the grid indices of the runs left out, by reason."""

    jobs: list[ProbeJob] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # no latents folder
    not_extracted: list[int] = field(default_factory=list)  # of those, trained runs whose extract step has not run
    stopped: list[tuple[int, str]] = field(default_factory=list)  # of those, idle runs stopped before their last epoch
    unprobed: list[tuple[int, Any]] = field(default_factory=list)  # the same runs, with their configs
    extracting: list[int] = field(default_factory=list)  # an extraction holds the run right now
    unfinished: list[int] = field(default_factory=list)  # an extraction died: no manifest
    diverged: list[int] = field(default_factory=list)  # its training diverged: no latents will come
    outdated: list[int] = field(default_factory=list)  # latents of an older extraction: the training command redoes
    invalid: list[tuple[str, str, DataError]] = field(default_factory=list)  # invalid latents (label, command, error)
    logs_dirs: set[str] = field(default_factory=set)


def _scan_grid(grid: Any, where: str, overrides: Mapping[str, Any] | None, run_id: str | None = None) -> _GridScan:
    """Look at every run's latents folders once (the default set's, and one per further set of the extract
    step's ``sizes``); the first few runs left out say why one by one. A manifest that does not agree with its
    files (headers, label lengths, layer sets) does not end the scan: every run with invalid latents is found
    before the job is refused, so that one extraction repairs them all."""
    from phd_lab.config_paths import extraction_latents_dir
    from phd_lab.latents_sets import config_sets

    scan = _GridScan()
    listings: FolderListings = {}  # each parent folder listed once, not once per run
    for index in range(len(grid)):
        cfg = grid[index]
        rundir = RunDir.for_run(cfg, listings=listings)
        scan.logs_dirs.add(cfg.logs_dir)
        found, absent = False, []
        for latents in config_sets(cfg.values, f"{where} (run {index})"):
            folder = rundir.latents(extraction_latents_dir(cfg.values), latents.folder_name)
            label = f"run {index} ({cfg.name})" + (f", latents set {latents.name}" if latents.name else "")
            if not folder.exists():
                link = dangling_link(folder)
                if link is None:
                    absent.append(latents.folder_name)
                    continue
                found = True  # was read as latents never extracted, and the extraction failed on the link
                scan.invalid.append((label, extraction_command(where, run_id, index), DataError(
                    f"Its latents folder {str(folder)!r} cannot be read: {gone_link_target(link, folder)}. If that "
                    f"file system is mounted elsewhere, probe there; if the latents are gone, create the folder the "
                    f"link points to or remove the link, so that the extraction can write them again.")))
                continue
            found = True
            owner = extracting_owner(folder, rundir)
            if owner is not None:  # probing beside a training grid: this run's turn comes in a later job
                if index not in scan.extracting and len(scan.extracting) < SAID_ONE_BY_ONE:
                    log.warning("run %d (%s): its latents are being extracted (%s); skipped, probe it once that has "
                                "finished", index, cfg.name, owner or "another process")
                _note(scan.extracting, index)
                continue
            if unfinished_extraction(folder):  # its process was killed: the other runs need not wait for this one
                if index not in scan.unfinished and len(scan.unfinished) < SAID_ONE_BY_ONE:  # an array job killed
                    log.warning("run %d (%s): its latents folder %s has no %s: the extraction did not finish (its "
                                "process was killed?); skipped. `%s` finishes it.", index, cfg.name, folder, MANIFEST,
                                extraction_command(where, run_id, index))
                _note(scan.unfinished, index)
                continue
            extract_again = extraction_command(where, run_id, index)
            try:
                manifest = read_manifest(folder)
            except DataError as error:
                scan.invalid.append((label, extract_again, error))
                continue
            if extracted_by_older_version(manifest.raw, rundir.root):
                if index not in scan.outdated and len(scan.outdated) < SAID_ONE_BY_ONE:
                    log.warning("run %d (%s): %s; not probed.", index, cfg.name,
                                older_extraction_reason(folder, extraction_command(where, run_id, index)))
                _note(scan.outdated, index)
                continue
            settings = ProbeSettings.from_mapping(cfg.values, overrides, f"{where} (run {index})")
            try:
                job = _job(manifest, settings, label, expected_root=rundir.root, probe_set=latents.name)
            except DataError as error:
                scan.invalid.append((label, extract_again, error))
                continue
            scan.jobs.append(replace(job, extract_again=extract_again))
        if not found and rundir.diverged.exists():  # the training command would only say so again
            if len(scan.diverged) < SAID_ONE_BY_ONE:
                log.warning("run %d (%s) diverged in training (%s), so it has no latents to probe; skipped. Train it "
                            "again with a smaller learning rate, under a new run_id.", index, cfg.name,
                            rundir.diverged.name)
            scan.diverged.append(index)
        elif not found:
            scan.skipped.append(index)
            scan.unprobed.append((index, cfg))
            if lists_extract_step(cfg.values) and _trained_and_idle(rundir):  # not a run being trained now
                how_far = _training_stopped(rundir, cfg.values)
                if how_far is None:
                    scan.not_extracted.append(index)
                else:
                    scan.stopped.append((index, how_far))
        elif absent:  # the config names latents sets the run has not extracted (yet): say so, probe the others
            log.warning("run %d (%s): no %s yet (the config's extract step names %s); probed without %s. The training "
                        "command extracts %s.", index, cfg.name, ", ".join(absent),
                        "it" if len(absent) == 1 else "them", "it" if len(absent) == 1 else "them",
                        "it" if len(absent) == 1 else "them")
    return scan


def grid_command(where: str, run_id: str | None) -> str:
    """The training command of the grid the probe job reads: its --run-id, which changes the grid (a run_id list in
    the config repeats every point; --run-id keeps one repetition), belongs to every command a message names."""
    return " ".join(["python main.py --config", shlex.quote(where),
                     *(["--run-id", shlex.quote(run_id)] if run_id is not None else [])])


def extraction_command(where: str, run_id: str | None, index: int) -> str:
    """The training command that extracts grid run ``index``'s latents again (it retrains nothing)."""
    return f"{grid_command(where, run_id)} --index {index}"


def invalid_latents_error(invalid: Sequence[tuple[str, str, DataError]]) -> DataError:
    """The error of a grid job refused for the invalid latents of some of its runs, given as (label, command that
    extracts them again, error) each: the first error as it is, the other runs named, that nothing was probed, and
    what to do: extract those runs again (the training command), or probe the valid runs' folders one by one."""
    first_label, first_command, first = invalid[0]
    if len(invalid) == 1 and not first_command:  # --latents: the error names the folder already
        return first
    labels = list(dict.fromkeys(label for label, _, _ in invalid))
    others = ""
    if len(labels) > 1:
        shown = labels[1:1 + SAID_ONE_BY_ONE]
        more = f" and {len(labels) - 1 - len(shown)} more" if len(labels) - 1 > len(shown) else ""
        others = f" The latents of {'; '.join(shown)}{more} are invalid too."
        for label, _, error in invalid[1:1 + SAID_ONE_BY_ONE]:
            log.warning("%s: %s", label, str(error).rstrip())
    commands = list(dict.fromkeys(command for _, command, _ in invalid))
    if len(commands) == 1:
        rerun = f"`{commands[0]}` extracts its latents again from its checkpoint"
    else:  # several runs: one --index each, or the whole grid, whose valid runs are left as they are
        rerun = (f"`{first_command.rsplit(' --index ', 1)[0]}` (or one --index per run) extracts their latents "
                 f"again from their checkpoints, leaving the runs whose latents are valid as they are")
    return DataError(f"{first_label}: {str(first).rstrip()}{others} No run was probed and nothing was written: "
                     f"{rerun} (nothing is retrained); then rerun this command. To probe a run whose latents are "
                     f"valid before that, pass its latents folder: probe_main.py --latents DIR.")


def _trained_and_idle(rundir: RunDir) -> bool:
    """Whether a run folder holds a checkpoint and no process (training, post-processing) holds its lock."""
    if not rundir.checkpoint.exists():
        return False
    if not rundir.lock.exists():
        return True
    from phd_lab.analysis.run_tables import lock_owner_alive
    return lock_owner_alive(rundir.lock)[0] is False


def _training_stopped(rundir: RunDir, values: Mapping[str, Any]) -> str | None:
    """How far the training of an idle run with a checkpoint got where its metrics say it stopped before its last
    epoch ("stopped 1/30 epochs", "failed after 1/30 epochs (...)"), or None: trained to its end, or its metrics
    cannot tell. Such a run was said to be trained, and its command one that "extracts" its latents."""
    from phd_lab.analysis.run_tables import read_metrics, training_status
    metrics, _ = read_metrics(rundir)
    if metrics is None or not len(metrics):
        return None
    status = training_status(rundir, dict(values), metrics)
    return None if status.state in ("finished", "diverged", "unknown", "running", "incomplete") else status.label()


def _note(indices: list[int], index: int) -> None:
    """Add a run's grid index once (several of its latents sets may be in the same state)."""
    if index not in indices:
        indices.append(index)


def _without_repeats(jobs: list[ProbeJob], where: str) -> list[ProbeJob]:
    """One job per run folder: a swept probe key that a command-line option overrides makes the same job twice;
    two different probe settings for one trained run are an error (one folder holds one probe table)."""
    folders: dict[tuple[Path, str], ProbeJob] = {}
    kept = []
    for job in jobs:
        root = (job.outputs.root.resolve(), job.outputs.probe_set)
        if root in folders and folders[root].settings == job.settings:
            continue
        if root in folders:
            raise ConfigError(f"{where}: {folders[root].label} and {job.label} are the same trained run (probe "
                              f"settings do not change a run's folder) with different probe settings, and one run "
                              f"folder holds one probe_performances.csv. Probe other settings one at a time with "
                              f"`probe_main.py --latents DIR` and command-line options such as --C.")
        folders[root] = job
        kept.append(job)
    return kept


def _nothing_to_probe(scan: _GridScan, where: str, runs: int, run_id: str | None = None) -> None:
    """Raise the error that says why no run of the grid can be probed, the most telling reason first."""
    if scan.unfinished:
        raise DataError(f"The extraction of run(s) {index_ranges(scan.unfinished)} of {where!r} did not finish "
                        f"(their latents folders have no {MANIFEST}; it is written last), and no other run has "
                        f"latents yet. Rerun the training command with the 'extract' step; it redoes a half-written "
                        f"extraction.")
    if scan.extracting:
        raise DataError(f"The latents of run(s) {index_ranges(scan.extracting)} of {where!r} are still being "
                        f"extracted by the training command, and no other run has latents yet; probe once it has "
                        f"finished. (A lock held from another host cannot be checked from here: if that process has "
                        f"died, rerun the training command, which takes its lock over and finishes the extraction.)")
    if scan.outdated:
        raise DataError(f"The latents of run(s) {index_ranges(scan.outdated)} of {where!r} were extracted by an "
                        f"older phd-lab (their manifest has no extraction_version, or one below "
                        f"{PREVIOUS_EXTRACTION_VERSION}: feature maps smaller than 'downsampling' were up-sampled), so "
                        f"probes of them would not be those of this version's latents, and no other run has latents "
                        f"to probe. Run {grid_command(where, run_id)} first: it extracts them again "
                        f"from the trained checkpoints (nothing is retrained), then rerun this command.")
    if scan.diverged and not scan.unprobed:
        raise DataError(f"Run(s) {index_ranges(scan.diverged)} of {where!r} diverged in training (their folders hold "
                        f"diverged.json), so they have no latents, and no other run has any: nothing to probe. "
                        f"Train them again with a smaller learning rate, under a new run_id.")
    check_registry_names(scan.unprobed, where)
    earlier = earlier_version_runs(cfg for _, cfg in scan.unprobed)
    hint = f" {earlier_version_advice(earlier, runs)}" if earlier else ""
    with_id = "" if run_id is None else f" with --run-id {run_id!r}"
    command = grid_command(where, run_id)
    if any(lists_extract_step(cfg.values) for _, cfg in scan.unprobed):
        remedy = f"Train the runs with the 'extract' post-processing step first ({command})."
    else:  # the command the message named would train or skip the runs without extracting anything
        remedy = (f"The config's post_processing lists no 'extract' step: add \"extract\" to it, then run "
                  f"{command} (a trained run is not trained again, its latents are extracted).")
    from phd_lab.config_paths import extraction_latents_dir
    named = sorted({folder for _, cfg in scan.unprobed if (folder := extraction_latents_dir(cfg.values))})
    under = (f"under latents_dir {named[0]!r}{'' if os.path.isdir(named[0]) else ', which does not exist'}"
             if len(named) == 1 else "under latents_dir")
    raise DataError(f"No latents found for any of the {runs} run(s) of {where!r}{with_id} (looked for "
                    f"<run folder>/latents, and the latents_<size>_<method> folders of the extract step's 'sizes', or "
                    f"{under}). {remedy}{hint}")


SAID_ONE_BY_ONE = 5  # runs skipped for the same reason that get a line each; the rest are counted


def index_ranges(indices: Sequence[int]) -> str:
    """Grid indices as ranges ("0-3, 7, 9-12"): a list of hundreds of runs stays one readable line."""
    parts, start = [], None
    for position, index in enumerate(indices):
        if start is None:
            start = index
        if position + 1 == len(indices) or indices[position + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ", ".join(parts)


def check_registry_names(runs: Sequence[tuple[int, Any]], where: str) -> None:
    """When no run has latents, a misspelt model, dataset, optimizer or metric name may be why (its
    folder cannot exist): name the key as training would, instead of only "no latents found".
    Checked only then, so a probe job normally imports neither torch nor the registry modules; a
    registry module that does not import on this node leaves the names unchecked."""
    from phd_lab.errors import RegistryError
    from phd_lab.registry import Registries

    loaded: dict[tuple[tuple[str, str], ...], Registries | None] = {}
    for index, cfg in runs:
        key = tuple(sorted(dict(cfg.registries).items()))
        if key not in loaded:
            try:
                loaded[key] = Registries(dict(key))
            except RegistryError as error:
                log.debug("registry names of run %d not checked: %s", index, error)
                loaded[key] = None
        registries = loaded[key]
        if registries is not None:
            try:
                registries.check_names(cfg)
            except RegistryError as error:
                raise RegistryError(f"{where} (run {index}): {error}") from None


def jobs_from_latents(folder: Path | str, overrides: Mapping[str, Any] | None = None) -> tuple[list[ProbeJob], Path]:
    """One latents folder with default settings plus ``overrides``; the cache defaults to the run folder."""
    if why := unreachable(folder):  # a loop: Path.resolve raised RuntimeError; a name too long: OSError
        raise DataError(f"Latents folder {str(folder)!r} cannot be used: {why}.")
    from phd_lab.analysis.run_tables import run_folder  # pandas: not for a refused config
    owner = extracting_owner(Path(folder), run_folder(Path(folder).resolve().parent))
    if owner is not None:
        holder = owner or "another process"
        raise DataError(f"Latents folder {str(folder)!r} is being extracted right now ({holder}): its manifest is "
                        f"written last. Probe it once that process has finished.")
    if unfinished_extraction(Path(folder)):
        _refuse_a_run_folder(Path(folder))
        _refuse_a_folder_without_latents(Path(folder))
    if unfinished_extraction(Path(folder)) and not any(Path(folder).resolve().parent.glob("*_config.json")):
        # not inside its run folder (mirrored under latents_dir): the run folder, whose lock would tell whether
        # the extraction is still running, is named only by the manifest
        raise DataError(f"Latents folder {str(folder)!r} has no {MANIFEST}: the extraction is unfinished, still "
                        f"running or killed (the manifest is written last, and without it the run folder that would "
                        f"tell is unknown). Probe it once the training command has finished; if its process died, "
                        f"rerun the training command with the 'extract' step, which redoes a half-written "
                        f"extraction.")
    manifest = read_manifest(folder)
    enclosing = Path(folder).resolve().parent
    if extracted_by_older_version(manifest.raw, enclosing):
        reason = older_extraction_reason(Path(folder), "the training command (python main.py --config <the run's "
                                                       "logged config>)")
        raise DataError(f"{reason[0].upper()}{reason[1:]}. Nothing was probed.")
    probe_set = set_of_folder(manifest.folder.resolve().name)
    _check_set_file_names(manifest.folder, probe_set)
    job = _job(manifest, ProbeSettings(), str(folder), probe_set=probe_set)
    # the options combine with the logged config's keys: checked against the defaults alone, --probe-device cuda was
    # refused as a GPU device for saga where the run's logged config sets probe_solver lbfgs-torch
    settings = (_logged_run_settings(job.outputs, overrides)
                or ProbeSettings.from_mapping({}, overrides, "command line"))
    job = replace(job, settings=settings)
    return [job], job.outputs.root / CACHE_FOLDER


def _logged_run_settings(outputs: RunDir, overrides: Mapping[str, Any] | None) -> ProbeSettings | None:
    """The settings of the run's own logged config (its ``probe_*`` keys) plus ``overrides``, as ``--config`` with
    that file gives them; None where the run folder holds no logged config (latents written by ``write_latents``
    for a folder of the user's). Without this, a ``--latents`` job on a run whose config set ``probe_solver`` or
    ``probe_train_samples`` fitted with the defaults and replaced the run's results with other ones."""
    from phd_lab.analysis.run_tables import logged_config

    path = outputs.config
    if not path.is_file():
        return None
    values = logged_config(path)
    if values is None:
        log.warning("%s cannot be read as a logged run config; probing with the probe settings' defaults and the "
                    "command line's options", path)
        return None
    log.info("Probe settings: the run's logged config %s, then the command line's options", path)
    return ProbeSettings.from_mapping(values, overrides, f"logged config {str(path)!r}")


def _refuse_a_folder_without_latents(folder: Path) -> None:
    """A folder given to --latents that holds neither a manifest nor anything an extraction writes (its .npy
    files, or their temp files), and lies in no run folder: no extraction ever wrote there (a data folder, a
    logs folder), which was said to be an extraction that did not finish, with a command that could not help."""
    if any(folder.resolve().parent.glob("*_config.json")):
        return  # a run's own latents folder, made before its first file: an unfinished extraction indeed
    if any(folder.glob("*.npy")) or any(folder.glob(".*.npy.*.tmp")):
        return
    raise DataError(f"{str(folder)!r} is not a latents folder: it holds no {MANIFEST} and no latents files "
                    f"(train-<layer>.npy, eval-<layer>.npy), and it lies in no run folder. Pass the latents folder "
                    f"the extraction step writes (by default <run folder>/latents), or probe the runs of a grid "
                    f"with --config.")


def _refuse_a_run_folder(folder: Path) -> None:
    """A run folder given to --latents that holds no latents folder with a manifest: say so, and what makes its
    latents (it was said to be an extraction that did not finish, also of a run that never extracted any)."""
    configs = sorted(folder.glob("*_config.json"))
    if not configs:
        return
    config = shlex.quote(str(configs[0]))
    latents = folder / "latents"
    mirrored = _mirrored_latents(folder, configs[0])
    if mirrored is not None:
        raise DataError(f"{str(folder)!r} is a run folder, not a latents folder; its run extracted its latents into "
                        f"the latents_dir of {config}: pass {str(mirrored)!r} to --latents, or probe the whole grid "
                        f"with --config.")
    if latents.is_dir():
        why = (f"its latents folder {str(latents)!r} has no {MANIFEST} yet: that extraction is unfinished, still "
               f"running or was killed (the manifest is written last). Probe it once the training command has "
               f"finished; if its process died, rerun python main.py --config {config}, which redoes a half-written "
               f"extraction")
    else:
        why = (f"it has no latents folder: its run extracted none, or into the config's latents_dir. Add \"extract\" "
               f"to the post_processing of {config} and rerun python main.py --config {config} (a trained run is "
               f"not trained again), then pass the latents folder it writes (by default {str(latents)!r}) to "
               f"--latents, or probe the whole grid with --config")
    raise DataError(f"{str(folder)!r} is a run folder, not a latents folder, and {why}.")


def _logged_latents_dir(config: Path) -> tuple[bool, str | None]:
    """Whether a logged config can be read, and the latents_dir its extraction writes to (None: the run folder)."""
    from phd_lab.config_paths import extraction_latents_dir
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
        return isinstance(values, dict), extraction_latents_dir(values) if isinstance(values, dict) else None
    except (OSError, ValueError, AttributeError):  # unreadable or hand-edited
        return False, None


def _mirrored_latents(folder: Path, config: Path) -> Path | None:
    """The latents folder with a manifest that the run of ``folder`` extracted under the latents_dir its logged
    ``config`` names (mirrored as ``<model>/<dataset>_<resolution>/<run_id>/<variant>``), or None."""
    _, latents_dir = _logged_latents_dir(config)
    if latents_dir is None:  # none, or an unreadable config: the general message then
        return None
    mirror = Path(os.path.expanduser(latents_dir)).joinpath(*folder.resolve().parts[-4:])
    found = [mirror / "latents", *sorted(mirror.glob("latents_*"))]
    return next((path for path in found if (path / MANIFEST).is_file()), None)


def older_extraction_reason(latents: Path, command: str) -> str:
    """One sentence for latents ``extracted_by_older_version``: what they are and the command that replaces them."""
    return (f"the latents {str(latents)!r} were extracted by an older phd-lab (the manifest names no "
            f"extraction_version, or one below {PREVIOUS_EXTRACTION_VERSION}: feature maps smaller than "
            f"'downsampling' were up-sampled); {command} extracts them again from the trained checkpoint "
            f"(nothing is retrained), then probe them")


def unfinished_extraction(latents: Path) -> bool:
    """A latents folder without its manifest, which the extraction writes last (and not a folder that holds
    latents folders, which ``read_manifest`` points to). A FIFO there is no missing manifest: ``read_manifest``
    names it as what it is (it was said to be an extraction that did not finish)."""
    return latents.is_dir() and not _manifest_there(latents) and not any(latents.glob(f"*/{MANIFEST}"))


def _manifest_there(latents: Path) -> bool:
    """Whether something other than a folder is at ``latents``' manifest path (a file, or a FIFO someone made)."""
    path = latents / MANIFEST
    return path.exists() and not path.is_dir()


def extracting_owner(latents: Path, rundir: RunDir) -> str | None:
    """The lock line of the process extracting ``latents`` right now (live here, or on another host where
    that cannot be checked; "" while a holder has not written its line yet), or None: a latents folder
    without its manifest whose run folder such a process holds is still being written."""
    if _manifest_there(latents) or not rundir.lock.exists():
        return None
    from phd_lab.analysis.run_tables import lock_owner_alive
    active, owner = lock_owner_alive(rundir.lock)
    return None if active is False else owner


def _check_set_file_names(folder: Path, probe_set: str) -> None:
    """A latents set's results are named after it (``probe_performances_<set>.csv``, ``probe_confusion_<set>/``): a
    folder of a set's name near the 255 bytes a name may take (``latents_<235 digits>x9_nearest``) gave names too
    long, and --latents ended with an OSError traceback (exit 1). Refused first, naming the folder."""
    longest = temp_name(f"probe_performances_{probe_set}.png")  # the temp file of the longest result's name
    if probe_set and name_bytes(longest) > NAME_MAX:
        raise DataError(f"Latents folder {str(folder)!r} is named as the latents set {probe_set[:40]!r}..., whose "
                        f"result files (probe_performances_<set>.csv, probe_confusion_<set>/) would have names longer "
                        f"than the {NAME_MAX} bytes file systems allow; a set's name is at most "
                        f"{NAME_MAX - name_bytes(longest) + name_bytes(probe_set)} bytes. Rename the folder "
                        f"(latents_<size>x<size>_<method>, as the extract step names it).")


def _job(manifest: Manifest, settings: ProbeSettings, label: str, expected_root: Path | None = None,
         probe_set: str = "") -> ProbeJob:
    run_dir = manifest.run_dir
    enclosing = manifest.folder.resolve().parent
    if enclosing != run_dir.resolve() and any(enclosing.glob("*_config.json")):
        # latents inside a run folder belong to that run, also after the logs were moved or copied
        log.warning("%s: the manifest names run folder %s, but the latents lie in run folder %s; writing the probe "
                    "results beside them", label, run_dir, enclosing)
        run_dir = enclosing
    if not run_dir.is_dir():
        manifest_path = str(manifest.folder / MANIFEST)
        raise DataError(f"The run folder {str(run_dir)!r} named by 'run_dir' in {manifest_path!r} "
                        f"does not exist; the probe results are written there. Move the latents back with their run "
                        f"or rerun the extraction step.")
    if run_dir is manifest.run_dir:
        _check_foreign_run_folder(manifest, run_dir)
    if expected_root is not None and run_dir.resolve() != expected_root.resolve():
        log.warning("%s: the manifest names run folder %s, not %s; writing the probe results to the manifest's",
                    label, run_dir, expected_root)
    # named: the analysis refresh reads its files
    from phd_lab.analysis.run_tables import run_folder
    return ProbeJob(manifest, settings, run_folder(run_dir).for_probe_set(probe_set), label)


def _check_foreign_run_folder(manifest: Manifest, run_dir: Path) -> None:
    """Refuse a manifest that names a run folder (one with a logged config) the latents are not of: neither do they
    lie in it, nor in its mirror under a ``latents_dir`` (``<model>/<dataset>_<resolution>/<run_id>/<variant>``, the
    last four parts of both paths). A latents folder received from someone else had the job write its results
    into, and remove the confusion matrices of, whichever run folder of yours its manifest named. A folder that is
    no run folder (``write_latents``'s ``run_dir`` may be any) takes them as before."""
    enclosing = manifest.folder.resolve().parent
    configs = sorted(run_dir.glob("*_config.json"))
    if enclosing == run_dir.resolve() or not configs:
        return
    manifest_path = str(manifest.folder / MANIFEST)
    if run_dir.resolve().parts[-4:] == enclosing.parts[-4:]:
        readable, latents_dir = _logged_latents_dir(configs[0])
        if not readable or latents_dir is not None:  # mirrored there (or cannot tell)
            return
        # a copy of a logs tree whose run folder lost its logged config (which would have made it the latents'
        # run, see ``_job``): the same last four parts, but the named run extracted into its own folder
        raise DataError(f"The manifest {manifest_path!r} names run folder {str(run_dir)!r} ('run_dir') for the "
                        f"probe results, but the latents lie in {str(enclosing)!r}, a copy of that run folder "
                        f"without its logged config (*_config.json), and {str(configs[0].name)!r} names no "
                        f"latents_dir the latents could have been mirrored to: the job would replace the results of "
                        f"the run in the other logs tree. Nothing was written. Copy the logged config back into "
                        f"{str(enclosing)!r} (the results are then written there), or correct 'run_dir' in the "
                        f"manifest.")
    raise DataError(f"The manifest {manifest_path!r} names run folder {str(run_dir)!r} ('run_dir') for the probe "
                    f"results, but the latents lie neither in that run folder nor in its mirror under a latents_dir "
                    f"(.../{'/'.join(run_dir.resolve().parts[-4:])}/<latents folder>), so they are not that run's; "
                    f"the job would replace its probe results. Nothing was written. Probe the latents where they lie "
                    f"in their own run folder, or correct 'run_dir' in the manifest.")
