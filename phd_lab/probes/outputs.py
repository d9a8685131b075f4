"""What a probe job writes into a run folder once all of the run's layers are fitted.

``probe_performances.csv`` and its plot, the settings the results were fitted with, one confusion matrix
per layer (``.npy`` and ``.png``), each written atomically, and a refreshed ``analysis.json`` when the
run has one. Confusion matrices of layers the run's latents no longer hold are removed. A run probed on
several latents sets (the extract step's ``sizes``) gets each set's files under its name and one plot
that compares the sets (``probe_performances_by_set.png``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from phd_lab import atomic
from phd_lab.atomic import write_with
from phd_lab.file_hash import latents_digest
from phd_lab.interrupts import raise_interruption_behind
from phd_lab.latents_sets import DEFAULT_METHOD, MANIFEST, PIXELWISE, named_set
from phd_lab.probes.cache import library_versions, read_npy
from phd_lab.probes.discovery import ProbeJob
from phd_lab.probes.fit import ProbeRecord
from phd_lab.probes.probe_log import PROBE_JOB
from phd_lab.rundir import RunDir

if TYPE_CHECKING:
    from phd_lab.plots.probes import ConfusionPlots

log = logging.getLogger(__name__)

CSV_COLUMNS = ("index", "layer", "train_acc", "eval_acc", "relative_acc", "n_iter", "converged", "seconds", "solver")


def performance_table(records: Sequence[ProbeRecord], model_accuracy: float | None) -> "Any":
    """The ``probe_performances.csv`` table: one row per layer in forward order (a stable sort by index:
    records already in the manifest's order keep it among a pixelwise layer's positions)."""
    import pandas as pd
    rows = []
    for record in sorted(records, key=lambda r: r.index):
        relative = record.eval_acc / model_accuracy if model_accuracy else float("nan")
        rows.append({"index": record.index, "layer": record.layer, "train_acc": record.train_acc,
                     "eval_acc": record.eval_acc, "relative_acc": relative, "n_iter": record.n_iter,
                     "converged": record.converged, "seconds": record.seconds, "solver": record.solver})
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def confusion_png(record: ProbeRecord, plots: "ConfusionPlots | None" = None) -> bytes:
    """One layer's confusion plot as PNG bytes, drawn on the figures of ``plots`` when given (a job's many)."""
    from phd_lab.plots.probes import ConfusionPlots
    title = f"{record.layer} (eval\u00a0acc\u00a0{record.eval_acc:.1%})"  # the accuracy stays on one line
    with contextlib.nullcontext(plots) if plots is not None else ConfusionPlots() as drawing:
        return drawing.png(record.confusion_matrix(), record.classes, title)


def write_confusion(outputs: RunDir, record: ProbeRecord, png: bytes | None = None) -> list[Path]:
    """Write one layer's confusion matrix (.npy) and its plot (.png, drawn now unless ``png`` holds it);
    returns both paths."""
    matrix = record.confusion_matrix()
    array, plot = (outputs.probe_confusion(record.index, record.layer, suffix) for suffix in (".npy", ".png"))
    write_with(array, lambda handle: np.save(handle, matrix))
    atomic.write_bytes(plot, confusion_png(record) if png is None else png)
    return [array, plot]


def remove_other_confusions(folder: Path, kept: Sequence[Path]) -> None:
    """Remove the confusion matrices of layers a run's latents no longer have (another extraction)."""
    kept_names = {path.name for path in kept}
    for path in sorted(folder.glob("*")):
        if path.suffix in (".npy", ".png") and not path.name.startswith(".") and path.name not in kept_names:
            path.unlink()
            log.info("Removed %s: its layer is no longer among the run's latents.", path)


def in_manifest_order(job: ProbeJob, records: Sequence[ProbeRecord]) -> list[ProbeRecord]:
    """Records in the manifest's (forward) order, whatever order the workers finished them in; the
    positions of a pixelwise layer share its index, so the index alone does not order them."""
    order = {layer.name: position for position, layer in enumerate(job.manifest.layers)}
    return sorted(records, key=lambda record: order[record.layer])


def write_results(job: ProbeJob, records: Sequence[ProbeRecord], position: int | None = None) -> None:
    """The run's table, settings and plot; ``position`` tags the log lines for the run's ``probe.log``."""
    from phd_lab.plots.probes import save_probe_accuracy_plot, save_probe_sets_plot
    table = performance_table(in_manifest_order(job, records), job.manifest.model_test_accuracy)
    tag = _run_log_tag(position)
    earlier, now = _earlier_settings(job.outputs.probe_settings), job.settings.key()
    if earlier is not None and earlier != now:
        changed = sorted(k for k in set(earlier) | set(now) if earlier.get(k) != now.get(k))
        log.warning("%s: these results replace the run's earlier probe results, fitted with other settings (%s)",
                    job.label, ", ".join(f"{k}: {json.dumps(earlier.get(k))} -> {json.dumps(now.get(k))}"
                                         for k in changed), extra=tag)
    elif earlier is not None:  # the same settings under other libraries: a refit whose numbers may differ
        _say_other_versions(job, tag)
    csv = table_bytes(table)
    atomic.write_bytes(job.outputs.probe_csv, csv)
    run = (job.outputs.name + (f", latents {job.outputs.probe_set}" if job.outputs.probe_set else "")
           + f"\n{job.outputs.variant}")  # the variant tells the runs of a grid apart (their names are one)
    save_probe_accuracy_plot(table, job.manifest.model_test_accuracy, job.outputs.probe_plot, run=run)
    log.info("%s: probe results in %s", job.label, job.outputs.probe_csv, extra=tag)
    document = settings_document(job, csv)
    sets = _compared_sets(job, document, tag)
    if len(sets) > 1:
        save_probe_sets_plot(sets, job.manifest.model_test_accuracy, job.outputs.probe_sets_plot,
                             run=f"{job.outputs.name}\n{job.outputs.variant}")
        log.info("%s: %d latents sets compared in %s", job.label, len(sets), job.outputs.probe_sets_plot, extra=tag)
    elif (earlier is not None and job.outputs.probe_sets_plot.is_file()
          and len(probe_set_tables(job.outputs, earlier, tag=tag)) > 1):  # (this set's document still says ``earlier``)
        # the comparison was drawn with this set's earlier results, now replaced, and no other set has these settings
        atomic.remove(job.outputs.probe_sets_plot, missing_ok=True)
        log.info("%s: removed %s: it drew this set's earlier probe results, and no other latents set of the run is "
                 "fitted with these settings", job.label, job.outputs.probe_sets_plot, extra=tag)
    if job.outputs.analysis_json.exists() and not job.outputs.probe_set:  # it reads the default set's probes
        refresh_analysis(job, tag)
    # last: the digest of the table it names says that everything above was written for that table
    atomic.write_json(job.outputs.probe_settings, document)


def table_bytes(table: Any) -> bytes:
    """``probe_performances.csv`` as written: ``results_in_place`` compares a run's file with these bytes."""
    return table.to_csv(index=False).encode("utf-8")


def settings_document(job: ProbeJob, csv: bytes) -> dict[str, Any]:
    """``probe_settings.json``: the settings the results were fitted with (the run's logged config only holds the
    config's probe keys), the latents set's reduction and digest (which latents were probed: a copied run whose
    file times are new still reads as probed on its latents), the library versions, and the sha256 of the table
    (``csv``) whose writing, with the plots and the analysis, it completes."""
    latents = {"downsampling": job.manifest.raw.get("downsampling"),
               "downsampling_method": job.manifest.raw.get("downsampling_method", DEFAULT_METHOD),
               "sha256": latents_digest(job.manifest.raw)}
    return {"settings": job.settings.key(), "latents": latents,
            "library_versions": library_versions(job.settings.solver),
            "results_sha256": hashlib.sha256(csv).hexdigest()}


def results_in_place(job: ProbeJob, records: Sequence[ProbeRecord], position: int | None = None) -> bool:
    """Whether the run folder holds what ``write_confusion`` and ``write_results`` would write for ``records``
    already: the table as it would be written, the settings that the job writes last and that name the table's
    sha256 (so the writing that table began also ended), each layer's matrix (equal) with its plot, no other
    layer's, the accuracy plot, and the plot that compares the run's latents sets where it has several. A job
    whose every layer came from the cache then leaves them be (a job repeated over a grid of hundreds of runs
    redrew and rewrote every finished run's files)."""
    outputs = job.outputs
    csv = table_bytes(performance_table(in_manifest_order(job, records), job.manifest.model_test_accuracy))
    try:
        document = settings_document(job, csv)
        if (atomic.read_bytes(outputs.probe_csv) != csv  # a FIFO there is refused, not waited on
                or atomic.read_json(outputs.probe_settings) != document
                or not outputs.probe_plot.is_file()):
            return False
        tag = _run_log_tag(position)
        if not outputs.probe_sets_plot.is_file() and len(_compared_sets(job, document, tag)) > 1:
            return False  # a deleted comparison was never drawn again while every layer came from the cache
        expected = set()
        for record in records:
            array, plot = (outputs.probe_confusion(record.index, record.layer, suffix) for suffix in (".npy", ".png"))
            if not plot.is_file() or not np.array_equal(read_npy(atomic.read_bytes(array)),
                                                             record.confusion_matrix()):
                return False
            expected |= {array.name, plot.name}
        present = {path.name for path in outputs.probe_confusion_dir.iterdir()
                   if path.suffix in (".npy", ".png") and not path.name.startswith(".")}
        return present == expected
    except (OSError, ValueError):  # read_npy: a header that declares more than the file holds is one
        return False


def _run_log_tag(position: int | None) -> dict[str, int] | None:
    """The ``extra`` of a log line about the job's run at ``position``, which sends it to that run's probe.log."""
    return {PROBE_JOB: position} if position is not None else None


def _compared_sets(job: ProbeJob, document: dict[str, Any], tag: dict[str, int] | None = None
                   ) -> list[tuple[str, str, Any]]:
    """The latents sets ``probe_performances_by_set.png`` compares (drawn where there are two or more): the run's
    sets fitted with the job's settings, this job's own set read from its settings ``document``."""
    return probe_set_tables(job.outputs, document["settings"], current=(job.outputs.probe_set, document), tag=tag)


def probe_set_tables(outputs: RunDir, settings: dict[str, Any] | None = None,
                     current: tuple[str, dict[str, Any]] | None = None,
                     tag: dict[str, int] | None = None) -> list[tuple[str, str, Any]]:
    """Every latents set's probe table in a run folder as (legend label, reduction method, table), averaged
    sets first, each method's sizes ascending (whole maps last); pixelwise sets are left out (one row per
    position, not per layer), and so are tables that cannot be read and, with ``settings``, tables fitted with
    other probe settings (another solver's accuracies would differ for other reasons than the latents).
    ``current`` is (set name, settings document) of a set whose document is not written yet; ``tag`` keeps the
    line about left-out tables in the run's own ``probe.log``."""
    from phd_lab.layer_table import read_layer_table  # imports pandas: not at import
    found, other_settings = [], []
    for path in [outputs.for_probe_set("").probe_csv, *sorted(outputs.root.glob("probe_performances_*.csv"))]:
        name = path.stem[len("probe_performances_"):] if path.stem != "probe_performances" else ""
        named = named_set(name) if name else None
        if (name and named is None) or name == PIXELWISE or not path.is_file():
            continue
        recorded = (current[1] if current is not None and current[0] == name
                    else atomic.read_json_object(outputs.for_probe_set(name).probe_settings) or {})
        if settings is not None and _dict_at(recorded, "settings") != settings:
            other_settings.append(path.name)
            continue
        latents = _dict_at(recorded, "latents") or {}
        if not name and "downsampling" not in latents:  # default-set results of an older version: its manifest
            manifest = atomic.read_json_object(outputs.latents() / MANIFEST) or {}
            latents = {"downsampling": manifest["downsampling"]} if "downsampling" in manifest else {}
        unknown = not name and "downsampling" not in latents
        size = latents.get("downsampling", named.downsampling if named else None)
        method = latents.get("downsampling_method", named.method if named else DEFAULT_METHOD)
        if size == PIXELWISE:
            continue
        try:
            table = read_layer_table(atomic.read_bytes(path).decode("utf-8-sig"))
        except (OSError, ValueError):
            continue
        if not {"index", "layer", "eval_acc"} <= set(table.columns):
            continue
        label = ("the run's downsampling" if unknown else "whole maps" if size is None else f"{size}×{size}")
        found.append(((method != DEFAULT_METHOD, size is None and not unknown, size or 0, name),
                      label + ("" if name else " (latents/)"), method, table))
    if other_settings and len(found) > 1:
        log.info("%s: left out of %s, fitted with other probe settings: %s", outputs.root, outputs.probe_sets_plot.name,
                 ", ".join(other_settings), extra=tag)
    return [(label, method, table) for _, label, method, table in sorted(found, key=lambda item: item[0])]


def _dict_at(value: dict[str, Any], key: str) -> dict[str, Any] | None:
    """``value[key]`` where it is an object, else None."""
    inner = value.get(key)
    return inner if isinstance(inner, dict) else None


def _say_other_versions(job: ProbeJob, tag: dict[str, int] | None) -> None:
    """Results that replace a run's earlier ones of the same settings, fitted under other versions of the libraries
    that can change a fit (``library_versions``, which ``probe_settings.json`` records): a job rerun years later
    refitted them and replaced the table, and the record of the versions it was fitted under, without a word."""
    before = _dict_at(atomic.read_json_object(job.outputs.probe_settings) or {}, "library_versions")
    if before is None:
        return
    now = library_versions(job.settings.solver)
    changed = sorted(k for k in set(before) & set(now) if before[k] != now[k])
    if changed:
        log.warning("%s: these results replace the run's earlier probe results, fitted with the same settings under "
                    "other library versions (%s): their numbers may differ; the earlier ones are no longer in the "
                    "run folder.", job.label,
                    ", ".join(f"{k}: {json.dumps(before[k])} -> {json.dumps(now[k])}" for k in changed), extra=tag)


def _earlier_settings(path: Path) -> dict[str, Any] | None:
    """The settings of the probe results a run folder holds (None: none, or unreadable)."""
    return _dict_at(atomic.read_json_object(path) or {}, "settings")


def refresh_analysis(job: ProbeJob, tag: dict[str, int] | None = None) -> None:
    """Rewrite the run's analysis.json/.png with the new probe results (it only reads the run's tables).
    A run whose folder a live process holds (training, post-processing) writes its own at the end."""
    from phd_lab.report.collect import analyse_run
    try:
        entry = analyse_run(job.outputs, write=True, probe_job=True)
    except Exception as error:  # the probe results are written; a broken analysis must not fail the job
        raise_interruption_behind(error)  # but a Ctrl-C as its first matplotlib import ran stops it
        log.warning("%s: the analysis could not be refreshed (python -m phd_lab report retries): %s: %s",
                    job.label, type(error).__name__, error, extra=tag)
        return
    if entry.written:
        log.info("%s: analysis refreshed in %s", job.label, job.outputs.analysis_json, extra=tag)
    elif not entry.errors:
        log.info("%s: analysis left to the process that holds the run folder (%s); it reads these probes when it "
                 "writes its own", job.label, entry.tables.status.owner if entry.tables.status else "", extra=tag)
