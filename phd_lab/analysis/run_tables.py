"""Read the saved tables of one run folder, tolerating anything that is missing or unreadable.

A run folder may hold only a config (queued), a growing metrics CSV (training), the tables of
the post-processing steps, and later the probe job's results. ``load_run`` reads whatever is
there and records what is missing or broken instead of raising, so the analysis and the report
work on every stage of a run. Nothing here trains, loads a model or recomputes a table.

File names follow the contract in DESIGN.md (``<name>_config.json``, ``<name>.csv``,
``receptive_field.csv``, ``computational_info.json/.csv``, ``probe_performances.csv``,
``projections.csv``, ``latents/manifest.json``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import socket
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from phd_lab.atomic import open_regular, read_bytes, read_json, read_json_object
from phd_lab.config import META_KEY, with_logged_linear_init
from phd_lab.config_paths import extraction_latents_dir
from phd_lab.file_hash import latents_digest
from phd_lab.latents_sets import LATENTS, MANIFEST, extracted_by_older_version
from phd_lab.layer_table import read_layer_table
from phd_lab.rundir import RunDir, lies_in_its_run_folder
from phd_lab.wording import plural

log = logging.getLogger(__name__)

CONFIG_SUFFIX = "_config.json"
RECEPTIVE_FIELD = "receptive_field.csv"
COMPUTATIONAL_JSON = "computational_info.json"
COMPUTATIONAL_CSV = "computational_info.csv"
PROBES = "probe_performances.csv"
PROJECTIONS = "projections.csv"
_MARKERS = (RECEPTIVE_FIELD, COMPUTATIONAL_JSON, PROBES)  # a folder with one of these is a run too




def _name_of(folder: Path) -> str | None:
    """The run's file prefix: its logged config's, else its checkpoint's, else its metrics CSV's (the table whose
    header starts with ``epoch``), else that of a table no step writes. A run folder that lost its config was
    named after projections_layers.csv, which sorts before the metrics CSV of a VGG run, and the report read
    that table's 240 rows as epochs."""
    configs = sorted(p.name[:-len(CONFIG_SUFFIX)] for p in folder.glob(f"*{CONFIG_SUFFIX}"))
    if configs:
        return configs[0]
    checkpoints = sorted(p.stem for p in folder.glob("*.pt") if not p.name.endswith(".previous.pt"))
    if checkpoints:
        return checkpoints[0]
    known = {RECEPTIVE_FIELD, COMPUTATIONAL_CSV, PROBES, PROJECTIONS}
    csvs = sorted(p for p in folder.glob("*.csv") if p.name not in known
                  and not p.name.startswith(("probe_performances_", "projections_")))
    metrics = [p.stem for p in csvs if _header_starts_with_epoch(p)]
    return (metrics or [p.stem for p in csvs] or [None])[0]


def _header_starts_with_epoch(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(6) == b"epoch,"
    except OSError:
        return False


RUN_DEPTH = 4  # <logs_dir>/<model>/<dataset>_<resolution>/<run_id>/<variant>


def run_folder(root: Path | str) -> RunDir:
    """The RunDir of an existing run folder, its file prefix read off the files it holds."""
    root = Path(root)
    return RunDir(root, _name_of(root) or root.name)


def discover_runs(logs_dir: Path | str) -> list[RunDir]:
    """Every run folder below ``logs_dir``, sorted: a folder with a logged run config (a
    ``*_config.json`` carrying ``_meta``) that lies in the run folder its own values name or beside the
    run's metrics CSV or a step table (a run folder copied out of its logs tree, ``archive/my_run/``), or at
    a run folder's depth with any config (perhaps damaged) or step table. Other JSON files or tables
    somewhere in the tree (an experiment config, a logged config copied elsewhere to rerun it, notes)
    are no runs, and the report writes nothing there. Latents folders (a run folder's ``latents``,
    or any folder holding a ``manifest.json``) are not searched; a run whose run_id is "latents" is."""
    logs_dir = Path(logs_dir)
    found: dict[Path, RunDir] = {}
    elsewhere: list[str] = []
    unreadable: list[str] = []  # os.walk leaves out a folder it cannot list without a word: its runs would go unseen
    for dirpath, dirnames, filenames in os.walk(
            logs_dir, onerror=lambda error: unreadable.append(f"{error.filename} ({error.strerror or error})")):
        folder = Path(dirpath)
        at_depth = len(folder.relative_to(logs_dir).parts) == RUN_DEPTH
        if at_depth and any(f.endswith(CONFIG_SUFFIX) or f in _MARKERS for f in filenames):
            found[folder] = run_folder(folder)
        else:
            configs = [folder / f for f in sorted(filenames) if f.endswith(CONFIG_SUFFIX)]
            logged = [(path, raw) for path in configs if (raw := logged_config(path)) is not None]
            placed = [_lies_in_its_run_folder(raw, path) for path, raw in logged]
            if any(placed) or (logged and _holds_results(folder, filenames)):
                found[folder] = run_folder(folder)
            else:
                elsewhere += [str(path) for path, _ in logged]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not (d == "latents" and (folder in found or _is_latents_folder(folder / d))))
    if elsewhere:
        log.info("Skipped %d logged config(s) that do not lie in the run folder their values name (copied?): %s",
                 len(elsewhere), ", ".join(elsewhere))
    if unreadable:
        log.warning("%d folder(s) below %s cannot be read, so any runs in them are left out: %s. Make them "
                    "readable (chmod, or as their owner) and run this again.", len(unreadable), logs_dir,
                    "; ".join(unreadable))
    return [found[k] for k in sorted(found)]


def _is_latents_folder(folder: Path) -> bool:
    """A latents folder of the extraction step: one that holds a manifest.json."""
    return (folder / MANIFEST).is_file()


def logged_config(path: Path) -> dict[str, Any] | None:
    """The values of a logged run config (a JSON object with ``_meta``), or None."""
    values = read_json_object(path)
    return values if values is not None and META_KEY in values else None


def _lies_in_its_run_folder(raw: dict[str, Any], path: Path) -> bool | None:
    """``rundir.lies_in_its_run_folder``, with a folder that cannot be read counted as values that name no run."""
    try:
        return lies_in_its_run_folder(raw, path.resolve())
    except (IndexError, OSError):
        return None


def _holds_results(folder: Path, filenames: list[str]) -> bool:
    """The folder holds a run's metrics CSV or a step's table besides its config."""
    return run_folder(folder).metrics_csv.is_file() or any(f in _MARKERS for f in filenames)


@dataclass(frozen=True)
class TrainingStatus:
    """How far training got: finished, running, stopped, failed (the log's last attempt ended in an error:
    ``reason``), diverged, incomplete (not finished; a process on
    another host may still train it), unknown (trained epochs, but how many were planned, or how many were
    done, cannot be told: ``reason``), not started, no metrics (results of other steps but no metrics CSV),
    no epochs (a metrics CSV without rows)."""

    state: str
    epochs_done: int
    epochs_planned: int | None
    active: bool | None  # a live process holds the run folder (None: cannot tell, other host)
    owner: str = ""
    reason: str = ""  # why the state is unknown; the error of a failed run

    def label(self) -> str:
        if self.state == "unknown":
            done = plural(self.epochs_done, "epoch")
            return f"unknown ({self.reason})" if not self.epochs_done else f"unknown after {done} ({self.reason})"
        if self.state == "finished":
            return "finished (post-processing)" if self.active else "finished"
        if self.state == "diverged":
            planned = f" of {self.epochs_planned}" if self.epochs_planned else ""
            return f"diverged in epoch {self.epochs_done}{planned}"
        if self.state == "failed":
            planned = f"/{self.epochs_planned}" if self.epochs_planned else ""
            epochs = "epoch" if self.epochs_done == 1 and not planned else "epochs"
            when = f"after {self.epochs_done}{planned} {epochs}" if self.epochs_done else "before its first epoch"
            return f"failed {when} ({self.reason})"
        if self.state in ("not started", "no metrics", "no epochs"):
            return {"not started": "not started", "no metrics": "no metrics CSV",
                    "no epochs": "metrics CSV without epochs"}[self.state]
        if self.epochs_planned:
            return f"{self.state} {self.epochs_done}/{self.epochs_planned} epochs"
        return f"{self.state} after {plural(self.epochs_done, 'epoch')}"

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "label": self.label(), "epochs_done": self.epochs_done,
                "epochs_planned": self.epochs_planned, "active": self.active}


@dataclass
class RunTables:
    """Everything saved for one run; ``None`` where a file is absent or unreadable."""

    folder: RunDir
    config: dict[str, Any] | None = None
    objective: str | None = None  # the logged _meta's "objective" of a model that is not a classifier
    metrics: pd.DataFrame | None = None
    receptive_field: pd.DataFrame | None = None
    computational: dict[str, Any] | None = None
    computational_layers: pd.DataFrame | None = None
    probes: pd.DataFrame | None = None
    projections: pd.DataFrame | None = None
    manifest: dict[str, Any] | None = None
    status: TrainingStatus | None = None
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # files with rows cut off (named in problems too)
    probes_predate_latents: bool = False  # the probe table is older than the latents manifest
    latents_of_older_extraction: bool = False  # a trained run's latents an older phd-lab extracted (up-sampled maps)
    probe_job_running: bool = False  # a live probe job on this host holds the run's probe lock (set by the report)

    def config_value(self, key: str, default: Any = None) -> Any:
        return (self.config or {}).get(key, default)


def _read_csv(path: Path, tables: RunTables, *, rows_stand_alone: bool = False) -> pd.DataFrame | None:
    """A saved table, without the rows a damaged file holds only in part.

    Every table is written atomically and ends with a newline: a last row without one, or a row with
    fewer fields than the header, was cut (a copy broken off, a full disk). Such rows are left out and the
    problem names the file. ``rows_stand_alone``: each row is a whole record of its own (the metrics CSV:
    one per epoch), so the rows before a cut can still be used; in any other table a lost row is a lost
    layer, and the whole table is unusable, as is one without a complete row. A ``layer`` column is read as
    written (``read_layer_table``); a row without a name makes the table unusable too.
    """
    if not path.is_file():
        tables.missing.append(path.name)
        return None
    try:
        text, damage = _complete_rows(read_bytes(path))
        frame = read_layer_table(text) if text.strip() or not damage else None
    except (OSError, UnicodeDecodeError, ValueError, csv.Error, pd.errors.ParserError,
            pd.errors.EmptyDataError) as error:
        tables.problems.append(f"{path.name} cannot be read: {error}")
        return None
    if damage:
        tables.damaged.append(path.name)
        if not rows_stand_alone or frame is None or not len(frame):
            tables.problems.append(f"{path.name} cannot be used: {damage}")
            return None
        tables.problems.append(f"{path.name}: {damage}; only its {len(frame)} complete row(s) are used")
    unnamed = _first_row_naming_no_layer(frame)
    if unnamed is not None:  # the framework writes a name in every row (a model's own layer: '<model>')
        tables.problems.append(f"{path.name} cannot be used: its row {unnamed} names no layer")
        return None
    return frame


def _first_row_naming_no_layer(frame: pd.DataFrame) -> int | None:
    """The number of the first row whose ``layer`` cell is empty (None: every row names its layer, or the table has
    no such column). Such a cell failed the run's whole analysis with an AttributeError that named no file."""
    if "layer" not in frame.columns:
        return None
    return next((number for number, name in enumerate(frame["layer"], 1) if not name), None)


def read_metrics(folder: RunDir) -> tuple[pd.DataFrame | None, str | None]:
    """A run's metrics CSV as ``load_run`` reads it (the complete rows of a damaged file), and what is wrong with
    the file, naming it (None: whole, or absent)."""
    tables = RunTables(folder)
    metrics = _read_csv(folder.metrics_csv, tables, rows_stand_alone=True)
    return metrics, "; ".join(tables.problems) or None


def _complete_rows(data: bytes) -> tuple[str, str]:
    """The text of a CSV without rows that were cut, and what was wrong ('' if nothing)."""
    damage = []
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]  # a cut may also split a character of several bytes
        damage.append("the last row is incomplete (truncated?)")
    text = data.decode("utf-8-sig")  # a byte-order mark (a table saved by a spreadsheet) is no error
    records = list(csv.reader(io.StringIO(text, newline="")))
    fields = len(records[0]) if records else 0
    short = [number for number, record in enumerate(records[1:], 2) if record and len(record) < fields]
    if short:
        damage.append(f"line(s) {', '.join(map(str, short[:5]))}{', ...' if len(short) > 5 else ''} have fewer "
                      f"fields than the header (truncated?)")
        records = [record for record in records if not record or len(record) >= fields]
        kept = io.StringIO(newline="")
        csv.writer(kept, lineterminator="\n").writerows(records)
        text = kept.getvalue()
    return text, " and ".join(damage)


def _read_json(path: Path, tables: RunTables, *, record_missing: bool = True) -> Any:
    if not path.is_file():
        if record_missing:
            tables.missing.append(path.name)
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as error:
        tables.problems.append(f"{path.name} cannot be read: {error}")
        return None


def _require(frame: pd.DataFrame | None, columns: tuple[str, ...], filename: str,
             tables: RunTables) -> pd.DataFrame | None:
    if frame is None:
        return None
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        tables.problems.append(f"{filename} lacks the column(s) {absent}; ignored")
        return None
    return frame


def _accuracies_in_range(probes: pd.DataFrame | None, tables: RunTables) -> pd.DataFrame | None:
    """The probe table, unless an accuracy in it is no number from 0 to 1 (``eval_acc``, ``train_acc``) or a
    ``relative_acc`` is negative: an ``eval_acc`` of 7 (an edited or foreign table) was the run's best probe, 700 %,
    in the report and analysis.json, and one of text ('abc0.91') was left out of the layer's verdicts, without a
    word. An empty cell or NaN is a failed fit (a pixelwise position) and stays."""
    if probes is None:
        return None
    for column, low, high in (("eval_acc", 0.0, 1.0), ("train_acc", 0.0, 1.0), ("relative_acc", 0.0, math.inf)):
        if column not in probes.columns:
            continue
        values = pd.to_numeric(probes[column], errors="coerce")
        bad = (probes[column].notna() & values.isna()) | ~(values.isna() | values.between(low, high))
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            allowed = "a number from 0 to 1" if high == 1.0 else "a number >= 0"
            tables.problems.append(f"{PROBES} cannot be used: its {column} of layer {probes['layer'].iloc[row]!r} is "
                                   f"{probes[column].iloc[row]}, not {allowed} (an empty cell: a failed fit)")
            return None
    return probes


def _flock_held(lock_path: Path) -> bool | None:
    """Whether any process holds a flock on ``lock_path``, from /proc/locks (None: cannot tell).

    Reading /proc/locks takes no lock, so a report never gets in the way of a run that is starting.
    """
    try:
        st = lock_path.stat()
        text = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in text.splitlines():
        fields = line.split()
        if "FLOCK" in fields and any(f == device for f in fields):
            return True
    return False


def _owner_line(lock_path: Path) -> str | None:
    """What ``lock_path`` says of its owner; None where it cannot be read or is no regular file, so no run holds it
    (``RunLock`` refuses one). A FIFO there (mkfifo) was read as a file: its open waited for a writer for ever, and
    the report and the probe command hung on it."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 4096).decode("utf-8", "replace").strip()  # one line, tens of bytes, while held
    except OSError:
        return None
    finally:
        os.close(fd)


def lock_owner_alive(lock_path: Path) -> tuple[bool | None, str]:
    """Whether a live process holds the run folder's lock (None: held on another host or unknown).

    The lock file holds its owner's "PID <pid> on host <host>" line while held and is emptied on
    release; a line left by a killed owner stays. On the same host, /proc/locks says whether the
    flock is held; without it, whether that PID lives. Another host's line cannot be checked.
    """
    text = _owner_line(lock_path)
    if text is None:
        return False, ""
    parts = text.split()
    if len(parts) >= 5 and parts[0] == "PID" and parts[4] != socket.gethostname():
        return None, text
    held = _flock_held(lock_path)
    if held is not None:
        return held, text
    if len(parts) < 5 or parts[0] != "PID" or not parts[1].isdigit():
        return (None if text else False), text
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False, text
    except PermissionError:
        return True, text
    except OSError:
        return None, text
    return True, text


def _last_test_loss_not_finite(metrics: pd.DataFrame | None) -> bool:
    if metrics is None or "test_loss" not in metrics.columns or not len(metrics):
        return False
    last = pd.to_numeric(metrics["test_loss"], errors="coerce").iloc[-1]
    return not math.isfinite(float(last))


def training_status(folder: RunDir, config: dict[str, Any] | None,
                    metrics: pd.DataFrame | None) -> TrainingStatus:
    planned = config.get("epoch") if isinstance(config, dict) else None
    planned = planned if isinstance(planned, int) and not isinstance(planned, bool) else None
    done = 0
    if metrics is not None and len(metrics):
        epochs = pd.to_numeric(metrics["epoch"], errors="coerce") if "epoch" in metrics.columns else None
        done = int(epochs.max()) if epochs is not None and epochs.notna().any() else len(metrics)
    active, owner = lock_owner_alive(folder.lock) if folder.lock.exists() else (False, "")
    if done == 0:
        state = "running" if active else "not started"
    elif not active and (folder.diverged.exists() or _last_test_loss_not_finite(metrics)):
        # the trainer stops a run whose weights became NaN/inf and says so in diverged.json (runs of older
        # versions: by their last test loss, NaN unless only a buffer such as BatchNorm's running_var overflowed)
        state = "diverged"
    elif planned is not None and done >= planned:
        state = "finished"
    elif planned is None and active is False:  # the run may have stopped or finished: how long was it to train?
        return TrainingStatus("unknown", done, planned, active, owner, "the number of epochs planned is unknown")
    else:
        state = "running" if active else ("stopped" if active is False else "incomplete")
    if state in ("not started", "stopped") and active is False:  # or did its last attempt fail?
        failure = last_failure(folder.log)
        if failure is not None:
            return TrainingStatus("failed", done, planned, active, owner, failure)
    return TrainingStatus(state, done, planned, active, owner)


# The lines of a run log (run_guards.run_log's format) that open an attempt and that end one in a failure
_ATTEMPT_STARTS = " INFO phd_lab.executor: Run folder "
_RUN_FAILED = " ERROR phd_lab.run_guards: Run failed"
_LOG_TAIL_BYTES = 1 << 18


def last_failure(log: Path) -> str | None:
    """The error that ended the run's last attempt, from the tail of its log (the record ``run_log`` writes
    with the traceback), or None where the last attempt did not fail (or the log says nothing): a crashed run
    otherwise looked "not started" or "stopped", as if it had been killed or never run. A FIFO at the log is no
    log (``open_regular``): opening it waited for a writer for ever, and the report and --dry-run with it."""
    try:
        with open_regular(log) as handle:
            handle.seek(max(0, handle.seek(0, 2) - _LOG_TAIL_BYTES))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    start = max((i for i, line in enumerate(lines) if _ATTEMPT_STARTS in line), default=0)
    failed = max((i for i, line in enumerate(lines) if i >= start and _RUN_FAILED in line), default=None)
    if failed is None:
        return None
    said = lines[failed].split(_RUN_FAILED, 1)[1]
    if said.startswith(": "):  # a diverged run or a lost folder: its message, no traceback
        return said[2:].strip()
    traceback = []  # the lines after the record up to the next record: the traceback, its exception last
    for following in lines[failed + 1:]:
        if _RECORD.match(following):
            break
        traceback.append(following)
    exception = next((text.strip() for text in reversed(traceback) if text.strip()), "")
    return exception or "see its log"


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}([+-]\d{4})? [A-Z]+ ")  # offset: newer logs


def _computational(info: Any, tables: RunTables) -> dict[str, Any] | None:
    """``{params, trainable_params, macs, flops}`` from computational_info.json (the flops step's format)."""
    if not isinstance(info, dict):
        if info is not None:
            tables.problems.append(f"{COMPUTATIONAL_JSON} is not a JSON object; ignored")
        return None

    def number(name: str, source: dict[str, Any] = info) -> float | None:
        value = source.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None

    computational: dict[str, Any] = {"params": number("params_total"), "trainable_params": number("params_trainable"),
                                     "macs": number("macs"), "flops": number("flops")}
    truncation = info.get("truncation")
    if isinstance(truncation, dict) and all(number(k, truncation) is not None for k in ("params_saved", "flops_saved")):
        computational["truncation"] = truncation  # measured by the flops step (see run_summary)
    elif truncation is not None:
        tables.problems.append(f"{COMPUTATIONAL_JSON}: 'truncation' is malformed; the estimate is used")
    return computational


def _layer_table(csv: pd.DataFrame | None) -> pd.DataFrame | None:
    """Per-layer ``layer, params, macs, flops`` of the leaf modules, forward order as saved."""
    if csv is None or not {"layer", "params", "macs", "flops"} <= set(csv.columns):
        return None
    frame = csv[["layer", "params", "macs", "flops"]].copy()
    for column in ("params", "macs", "flops"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["layer"] = frame["layer"].astype(str)
    names = set(frame["layer"])
    leaf = [not any(other.startswith(name + ".") for other in names) for name in frame["layer"]]
    return frame.loc[leaf].reset_index(drop=True)


def latents_manifest_path(tables: RunTables) -> Path:
    """Where the run's latents manifest lies (inside the run folder, or mirrored under latents_dir)."""
    latents_dir = extraction_latents_dir(tables.config or {})
    if latents_dir:
        try:
            return tables.folder.latents(latents_dir) / MANIFEST
        except (IndexError, ValueError):
            pass
    return tables.folder.root / LATENTS / MANIFEST


def _probes_predate_latents(tables: RunTables) -> bool:
    """The probe table describes latents that were replaced: ``probe_settings.json`` names other latents than the
    manifest does, or, where it names none (results of an older version), the table is older than the manifest
    (a copy made without keeping file times, such as ``cp -r``, may invert those)."""
    try:
        settings = read_json(tables.folder.probe_settings)
        probed = settings["latents"]["sha256"]
    except (OSError, ValueError, TypeError, KeyError):
        probed = None
    if isinstance(probed, str):  # a manifest that cannot be read (cut short, malformed) tells nothing of the latents:
        # its damage is among the run's problems; it was said "extracted again after the probes", by digest or time
        readable = isinstance(tables.manifest, dict) and isinstance(tables.manifest.get("layers"), list)
        return readable and probed != latents_digest(tables.manifest)
    try:
        return latents_manifest_path(tables).stat().st_mtime_ns > tables.folder.probe_csv.stat().st_mtime_ns
    except OSError:
        return False


def load_run(folder: RunDir) -> RunTables:
    """Read every saved table of one run; never raises for missing or malformed files."""
    tables = RunTables(folder)
    config = _read_json(folder.config, tables)
    if config is not None and not isinstance(config, dict):
        tables.problems.append(f"{folder.config.name} is not a JSON object; ignored")
        config = None
    if config is not None:
        meta = config.get(META_KEY)
        objective = meta.get("objective") if isinstance(meta, dict) else None
        tables.objective = objective if isinstance(objective, str) else None
        config = {k: v for k, v in with_logged_linear_init(config).items() if k != META_KEY}
    tables.config = config
    tables.metrics = _read_csv(folder.metrics_csv, tables, rows_stand_alone=True)
    tables.receptive_field = _require(_read_csv(folder.receptive_field_csv, tables),
                                      ("layer", "in_r_min", "in_r_max", "r_min", "r_max"), RECEPTIVE_FIELD, tables)
    info = _read_json(folder.computational_info_json, tables)
    tables.computational = _computational(info, tables)
    layer_csv = _read_csv(folder.computational_info_csv, tables) if folder.computational_info_csv.is_file() else None
    tables.computational_layers = _layer_table(layer_csv)
    tables.probes = _accuracies_in_range(_require(_read_csv(folder.probe_csv, tables), ("layer", "eval_acc"), PROBES,
                                                  tables), tables)
    tables.projections = _read_csv(folder.projections_csv, tables) if folder.projections_csv.is_file() else None
    manifest = _read_json(latents_manifest_path(tables), tables, record_missing=False)
    tables.manifest = manifest if isinstance(manifest, dict) else None
    if manifest is not None and tables.manifest is None:  # JSON, but no object: malformed, not missing
        tables.problems.append(f"latents/manifest.json is malformed: it holds a JSON {type(manifest).__name__}, "
                               f"not an object")
    if tables.manifest is not None and not isinstance(tables.manifest.get("layers"), list):
        tables.problems.append("latents/manifest.json is malformed: its 'layers' is no list, so the number of layers "
                               "extracted is unknown")
    tables.probes_predate_latents = _probes_predate_latents(tables)
    tables.latents_of_older_extraction = (isinstance(tables.manifest, dict)
                                           and extracted_by_older_version(tables.manifest, tables.folder.root))
    status = training_status(folder, config, tables.metrics)
    if status.state == "not started" and (tables.probes is not None or tables.receptive_field is not None
                                          or tables.computational is not None):
        state = "no epochs" if folder.metrics_csv.is_file() else "no metrics"  # results, but nothing trained?
        status = TrainingStatus(state, 0, status.epochs_planned, status.active, status.owner)
    tables.status = _unknown_if_unreadable(status, tables)
    steps = configured_steps(config)
    if isinstance(config, dict) and isinstance(config.get("post_processing"), list):  # known: what never ran
        not_asked = {RECEPTIVE_FIELD} if "receptive_field" not in steps else set()
        not_asked |= {COMPUTATIONAL_JSON} if "flops" not in steps else set()
        not_asked |= {PROBES} if "extract" not in steps else set()  # no latents: the probe job has nothing to fit
        tables.missing = [name for name in tables.missing if name not in not_asked]
    # not written yet (a run killed during its post-processing); a file that is there but unusable is a problem
    if ("project" in steps and tables.projections is None and folder.projections_csv.name not in tables.missing
            and not folder.projections_csv.is_file()):
        tables.missing.append(folder.projections_csv.name)
    if "extract" in steps and tables.manifest is None and not latents_manifest_path(tables).is_file():
        tables.missing.append("latents/manifest.json")
    return tables


def _unknown_if_unreadable(status: TrainingStatus, tables: RunTables) -> TrainingStatus:
    """The status says why it is unknown: a config that cannot be read (the epochs planned) or a metrics CSV whose
    rows were cut (the epochs done: a training that stopped and one that finished look alike)."""
    folder = tables.folder
    if status.state == "unknown":
        why = ("is missing" if not folder.config.is_file() else "cannot be read" if tables.config is None
               else "gives no number of epochs")
        return replace(status, reason=f"{folder.config.name} {why}")
    if folder.metrics_csv.name in tables.damaged and status.active is False and status.state not in (
            "finished", "diverged"):
        return replace(status, state="unknown", reason=f"{folder.metrics_csv.name} is truncated")
    return status


def configured_steps(config: dict[str, Any] | None) -> set[str]:
    """Names of the post-processing steps a (logged) config asks for."""
    steps = config.get("post_processing") if isinstance(config, dict) else None
    if not isinstance(steps, list):
        return set()
    return {step if isinstance(step, str) else step.get("name") for step in steps
            if isinstance(step, str) or isinstance(step, dict)} - {None}
