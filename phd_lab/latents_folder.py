"""A latents folder on disk: its manifest, whether it can be reused, and clearing a half-written one.

The manifest is the contract with the probe job (DESIGN.md). It is written last, so a folder without a
valid one is a half-written extraction; a complete one with the same settings, layers, sample counts and
unchanged files is reused instead of extracting again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shlex
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from phd_lab import atomic
from phd_lab.errors import ConfigError, DataError
from phd_lab.file_hash import sha256_file
from phd_lab.latents_sets import (DEFAULT_METHOD, EXTRACTION_VERSION, MANIFEST, MANIFEST_FORMAT,
                                  PREVIOUS_EXTRACTION_VERSION, SPLITS, extraction_version, manifest_path, manifest_text)

log = logging.getLogger(__name__)

# written before an extraction writes its first file, removed once its manifest is: the files beside it are an
# extraction's (``refuse_foreign_link``), also where a SIGKILL left them without a manifest
IN_PROGRESS = ".extraction-in-progress.json"


def expected_settings(run_dir: Path, downsampling: Any, dtype: str, model: nn.Module,
                      method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """What a reusable extraction's manifest must say. ``downsampling_method`` appears only off its default
    (adaptive average pooling), so that the manifests written before it existed stay reusable."""
    settings = {"format": MANIFEST_FORMAT, "extraction_version": EXTRACTION_VERSION,
                "run_dir": manifest_text(Path(run_dir).resolve()), "downsampling": downsampling, "dtype": dtype,
                "model_sha256": model_fingerprint(model)}
    if method != DEFAULT_METHOD:
        settings["downsampling_method"] = method
    return settings


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state (names, dtypes, shapes, values): latents are reused only for the very
    weights they came from. A run retrained in its folder (checkpoints deleted, another device or
    precision, which are not part of the run's identity) must not keep the old model's latents."""
    return state_fingerprint(model.state_dict())


def state_fingerprint(state: dict[str, Any]) -> str:
    """``model_fingerprint`` of a model with this state dict: also of a checkpoint's ``model`` entry, which
    ``--dry-run`` compares with the manifest's without building the model (``looks_reusable``)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        if isinstance(tensor, nn.parameter.UninitializedTensorMixin):  # a lazy layer before its first call
            digest.update(f"{name}:uninitialized;".encode())
            continue
        tensor = tensor.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it is missing or unreadable (= not a complete extraction). One holding
    a NaN or infinity (a hand edit: Python's JSON reader takes them, an extraction writes none) is refused, as the
    probe job refuses it: reused after its run folder moved, its rewrite (``record_move``, strict JSON) ended the
    run with a ValueError once it had resumed."""
    path = Path(folder) / MANIFEST
    manifest = atomic.read_json_object(path)
    found = atomic.non_finite_at(manifest) if manifest is not None else None
    if found is not None:
        raise DataError(f"Latents manifest {str(path)!r} is invalid: its value at {found[0]} is {found[1]}, which "
                        f"strict JSON has no number for (an extraction writes none). Put the number back, or delete "
                        f"the manifest (rm {shlex.quote(str(path))}) to have the extract step extract again.")
    return manifest


def latents_look_whole(folder: Path) -> bool:
    """Whether a latents folder holds its manifest and every file it lists, whole (``_files_as_listed``). Only
    the files' headers are read, which is cheap enough for ``--dry-run``; their sha256 are compared when the
    step runs (``reusable``) and by the probe job."""
    try:
        manifest = atomic.read_json(Path(folder) / MANIFEST)
        return _files_as_listed(Path(folder), manifest)
    except (KeyError, TypeError, IndexError, AttributeError, OSError, ValueError, EOFError):  # EOF: an empty .npy
        return False


def looks_reusable(folder: Path, downsampling: Any, dtype: str, method: str,
                   previous_version_current: Callable[[list[str]], bool],
                   trained_fingerprint: Callable[[], str | None] = lambda: None) -> bool:
    """What ``--dry-run`` can tell of ``reusable`` without building the model or the data: the manifest says this
    format, extraction version, downsampling, dtype and method and records the model's fingerprint (one written
    before it was recorded, or by an older extraction, is made anew by the step), which is that of the trained
    weights where ``trained_fingerprint()`` gives it (a run retrained in its folder extracts again), and every file
    it lists is there, whole (``latents_look_whole``). A manifest of ``PREVIOUS_EXTRACTION_VERSION`` counts where
    ``previous_version_current(its layers)`` says that version extracted them as this one does. Not checked here:
    the sample counts and the files' sha256, which the step compares when it runs."""
    try:
        manifest = load_manifest(folder)
    except DataError:  # the step refuses it when it runs (a status or dry run only asks whether it would run)
        return False
    if manifest is None:
        return False
    wanted = {"format": MANIFEST_FORMAT, "downsampling": downsampling, "dtype": dtype,
              "downsampling_method": method if method != DEFAULT_METHOD else None}
    if any(manifest.get(key) != value for key, value in wanted.items()):
        return False
    if not isinstance(manifest.get("model_sha256"), str):
        return False
    version = extraction_version(manifest)
    if version != EXTRACTION_VERSION:
        try:
            layers = sorted({entry.get("layer", entry["name"]) for entry in manifest["layers"]})
        except (KeyError, TypeError, AttributeError):
            return False
        if version != PREVIOUS_EXTRACTION_VERSION or not previous_version_current(layers):
            return False
    if not latents_look_whole(folder):
        return False
    trained = trained_fingerprint()  # last: it reads the trained weights
    return trained is None or trained == manifest["model_sha256"]


def _files_as_listed(folder: Path, manifest: dict[str, Any], samples: dict[str, int] | None = None) -> bool:
    """Every file the manifest lists is there with its row shape and dtype (labels: int64, one per row), and
    each split has ``samples`` rows when given. Reads the .npy headers only (memory-mapped)."""
    rows = {}
    for split in SPLITS:
        labels = np.load(folder / manifest["labels"][split], mmap_mode="r", allow_pickle=False)
        if labels.ndim != 1 or labels.dtype != np.dtype("int64"):
            return False
        rows[split] = labels.shape[0]
    if samples is not None and any(rows[split] != samples[split] for split in SPLITS):
        return False
    for entry in manifest["layers"]:
        for split in SPLITS:
            array = np.load(folder / entry[split], mmap_mode="r", allow_pickle=False)
            if (array.shape[0] != rows[split] or list(array.shape[1:]) != list(entry["shape"][1:])
                    or array.dtype != np.dtype(manifest["dtype"])):
                return False
    return True


def reusable(folder: Path, manifest: dict[str, Any] | None, settings: dict[str, Any], layers: list[str],
              samples: dict[str, int]) -> bool:
    """A complete extraction with the same settings, layers and sample counts, every file present
    and unchanged (its sha256 as in the manifest: a file edited since would fail the probe job's
    check, and only a new extraction can mend it)."""
    if manifest is None or any(manifest.get(k) != v for k, v in settings.items() if k != "run_dir"):
        return False
    if manifest.get("downsampling_method") != settings.get("downsampling_method"):  # absent: average pooling
        return False
    try:
        entries = manifest["layers"]
        if {e.get("layer", e["name"]) for e in entries} != set(layers):
            return False
        if not _files_as_listed(Path(folder), manifest, samples):
            return False
        checks = [(e[split], e["sha256"][split]) for e in entries for split in SPLITS]
        checks += [(manifest["labels"][split], manifest["labels"]["sha256"][split]) for split in SPLITS]
        for name, expected in checks:
            if sha256_file(Path(folder) / name) != expected:
                log.warning("Latents file %s changed since it was extracted; extracting again.", Path(folder) / name)
                return False
    except (KeyError, TypeError, IndexError, AttributeError, OSError, ValueError, EOFError):  # EOF: an empty .npy
        return False
    return True


def other_runs_latents(folder: Path, run_dir: Path | str) -> str | None:
    """The run folder whose latents ``folder`` holds, where that is not ``run_dir`` and still holds its run (a
    logged config): two logs trees (a grid over logs_dir, a copied project) mirror their runs to one folder under
    a shared latents_dir, which keeps only <model>/<dataset>_<resolution>/<run_id>/<variant>. None for latents
    inside the run folder (a copied or moved run folder's own), and for a run folder that moved or is gone."""
    run_dir = Path(run_dir).resolve()
    if Path(folder).resolve().is_relative_to(run_dir):
        return None
    manifest = load_manifest(folder)
    named = manifest.get("run_dir") if manifest is not None else None
    if not isinstance(named, str) or not named or "\0" in named:
        return None
    named = manifest_path(named)  # as this process names it, whichever locale wrote it
    if named is None:
        return None
    other = Path(folder) / named  # a relative run_dir is relative to the latents folder (docs/probes.md)
    try:
        if other.resolve() == run_dir or not any(other.glob("*_config.json")):
            return None
    except (OSError, ValueError):
        return None
    return str(other)


def shared_latents_error(folder: Path, run_dir: Path | str, other: str, where: str, in_grid: bool = False) -> str:
    """The refusal of a latents folder that holds another run's latents (``other_runs_latents``), or that another
    point of the grid (``in_grid``) extracts into."""
    whose = "is also that of the grid's run folder" if in_grid else "holds the latents of the run folder"
    return (f"{where}: the latents folder {str(folder)!r} {whose} {other!r}, and this "
            f"run's folder is {str(run_dir)!r}: both mirror to the same place under latents_dir, which keeps only "
            f"<model>/<dataset>_<resolution>/<run_id>/<variant> of a run folder (two logs_dir values, or a copied "
            f"project whose config names the original's latents_dir). Give this run a latents_dir of its own (the "
            f"key 'latents_dir', or the extract step's), or null for latents inside its run folder.")


def record_move(folder: Path, manifest: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The logs tree was moved (``other_runs_latents`` found no other run in the folder the manifest names):
    the manifest names the run folder's new place (the probe job writes its results there). Its modification
    time is kept, since the latents are the same: probe results newer than them stay current."""
    path = Path(folder) / MANIFEST
    stamp = path.stat()
    manifest = {**manifest, "run_dir": run_dir}
    atomic.write_json(path, manifest)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    log.info("The run folder lies at %s now (moved or copied since its latents were extracted); their manifest "
             "names it.", readable_path(run_dir))
    return manifest


def readable_path(text: str) -> str:
    """A manifest's path (``manifest_text``) for a log line: that UTF-8 text, or, where the folder's bytes are no
    UTF-8 (a Latin-1 locale's 'café'), the folder as this process names it; the escape of such a byte was logged
    ('caf\\udce9')."""
    named = manifest_path(text)
    escaped = any(0xDC80 <= ord(char) <= 0xDCFF for char in text)
    return named if escaped and named is not None else text


_EXTRACTION_FILES = ("train-*.npy", "eval-*.npy", ".*.tmp", ".scratch-*")  # what an extraction writes, by name


def leftovers(folder: Path) -> list[Path]:
    """The files of the names an extraction writes in ``folder`` (its manifest aside): what ``clear`` removes."""
    return sorted(path for pattern in _EXTRACTION_FILES for path in folder.glob(pattern))


def refuse_foreign_link(folder: Path, manifest: dict[str, Any] | None, run_dir: str) -> None:
    """Raise a ``ConfigError`` where ``folder`` is a symbolic link without an extraction's manifest (``manifest``:
    ``load_manifest``'s) that holds files of the names an extraction writes (``train-*.npy``, ``.*.tmp``, or a
    ``manifest.json`` of another program): they need not be a killed extraction's. A run folder received from
    someone else whose ``latents`` was a link to a folder of the user's had its ``train-images.npy`` and hidden
    ``.*.tmp`` files deleted by the rerun's extract step. A link to an empty folder, or to one holding an
    extraction (a scratch disk), is followed, and so is one holding the files of an extraction that was killed
    (``IN_PROGRESS``) of this run (``run_dir``, as ``expected_settings`` has it): the rerun of a run whose extraction
    into a scratch disk was killed (SIGKILL) was refused."""
    if not os.path.islink(folder) or isinstance(manifest, dict) and {"layers", "labels"} <= set(manifest):
        return
    if _marked_by(folder, run_dir):  # this run's killed extraction's files, in a folder it wrote
        return
    found = ([folder / MANIFEST] if manifest is not None else []) + leftovers(folder)
    if found:
        shown = ", ".join(path.name for path in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConfigError(f"Step 'extract': the latents folder {str(folder)!r} is a symbolic link (to "
                          f"{os.readlink(folder)!r}) to a folder without an extraction's {MANIFEST} that holds "
                          f"{shown}; the step would remove them as a killed extraction's files, but they need not be "
                          f"(a run folder received from someone else may carry such a link). Nothing was removed. "
                          f"{_marker_note(folder, run_dir)}Delete them if they are a killed extraction's, or the link "
                          f"(rm {shlex.quote(str(folder))}) to extract into the run folder.")


def _marker_note(folder: Path, run_dir: str) -> str:
    """What the refusal says of another run folder's ``IN_PROGRESS`` marker in ``folder``: the run folder it names
    (where a run folder moved after its extraction into a linked scratch folder was killed, its old place), and the
    command that removes the killed extraction's files with the marker; the refusal named neither, so the moved
    run could not tell why its own files were refused. Empty where there is no such marker."""
    marker = atomic.read_json_object(folder / IN_PROGRESS)
    named = marker.get("run_dir") if marker is not None else None
    if not isinstance(named, str) or not named:
        return ""
    patterns = " ".join(_EXTRACTION_FILES)
    return (f"It holds {IN_PROGRESS}, the marker of a killed extraction of the run folder {readable_path(named)!r}, "
            f"not of this run's {readable_path(run_dir)!r} (a run folder moved since is named at its old place). "
            f"If they are that extraction's files, remove them and the marker (cd {shlex.quote(str(folder))} && "
            f"rm -f -- {patterns} {IN_PROGRESS}) and rerun. ")


def _marked_by(folder: Path, run_dir: str) -> bool:
    """Whether ``folder`` holds the ``IN_PROGRESS`` marker of the run folder ``run_dir``. Another run's marker stays
    in a folder that its killed extraction wrote after `rm *` (the shell's * skips dot files), where the user may
    keep files of the same names later: any run linked to it removed them as a killed extraction's."""
    marker = atomic.read_json_object(folder / IN_PROGRESS)
    named = marker.get("run_dir") if marker is not None else None
    return isinstance(named, str) and manifest_path(named) is not None and \
        manifest_path(named) == manifest_path(run_dir)


def mark_in_progress(folder: Path, run_dir: str) -> None:
    """Mark ``folder`` as one an extraction writes into (``IN_PROGRESS``) before it writes any file there."""
    atomic.write_json(folder / IN_PROGRESS, {"run_dir": run_dir})


def unmark_in_progress(folder: Path) -> None:
    """Remove ``IN_PROGRESS`` once the manifest is written (or the extraction's files removed). Only where it is
    there: reused latents may lie on a read-only mount, where even the unlink of a missing file fails (EROFS)."""
    if os.path.lexists(folder / IN_PROGRESS):
        atomic.remove(folder / IN_PROGRESS, missing_ok=True)


def clear(folder: Path) -> None:
    """Remove a previous (possibly half-written) extraction: the manifest first, then its files."""
    manifest = folder / MANIFEST
    if manifest.exists():
        atomic.remove(manifest)
        atomic.fsync_dir(folder)
    for path in leftovers(folder):  # a folder of such a name: FolderInTheWay, not a bare IsADirectoryError
        atomic.remove(path, missing_ok=True)


def build_manifest(results: dict[str, Any], settings: dict[str, Any], test_accuracy: float | None) -> dict[str, Any]:
    """The manifest of a finished extraction from each split's (layer order, files, labels writer): one entry
    per layer, or per position of a pixelwise layer (sharing the layer's index)."""
    entries = []
    for index, name in enumerate(results["train"][0], 1):
        keys = [key for key, info in results["train"][1].items() if info["layer"] == name]
        for key in keys:
            train, evaluation = results["train"][1][key], results["eval"][1][key]
            entry: dict[str, Any] = {"index": index, "name": key, "train": train["file"], "eval": evaluation["file"],
                                     "shape": train["shape"],
                                     "sha256": {"train": train["sha256"], "eval": evaluation["sha256"]}}
            if "position" in train:
                entry.update(layer=name, position=train["position"])
            entries.append(entry)
    label_files = {split: results[split][2].path.name for split in SPLITS}
    return {"format": MANIFEST_FORMAT, "extraction_version": EXTRACTION_VERSION, "run_dir": settings["run_dir"],
            "model_test_accuracy": (float(test_accuracy) if test_accuracy is not None
                                    and math.isfinite(test_accuracy) else None),
            "downsampling": settings["downsampling"],
            **{key: settings[key] for key in ("downsampling_method",) if key in settings},
            "dtype": settings["dtype"], "model_sha256": settings["model_sha256"], "layers": entries,
            "labels": {**label_files, "sha256": {split: results[split][2].sha256 for split in SPLITS}}}
