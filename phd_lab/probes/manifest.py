"""Read and validate a latents folder's ``manifest.json`` (the contract with the extraction step).

The manifest is written last by the extraction, so a folder without one is an unfinished
extraction. ``read_manifest`` checks the structure, that the files lie in the folder, their presence,
shapes and label lengths (array headers only, no data read); ``verify_hashes`` compares every
file's sha256 with the manifest. Every problem is a ``DataError`` (exit status 2) naming the file.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from phd_lab.atomic import non_finite_at, open_regular, read_json, temp_name
from phd_lab.config_paths import safe_name
from phd_lab.environment import LIMIT_ERRNOS
from phd_lab.errors import DataError, NotARegularFile
from phd_lab.file_hash import hash_and_stamp
from phd_lab.latents_sets import MANIFEST, MANIFEST_FORMAT, SPLITS, manifest_path
from phd_lab.user_paths import NAME_MAX, dangling_link, gone_link_target, name_bytes

log = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"  # how every .npy file begins (numpy.lib.format)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SHOWN = 5  # unlisted layer files named in the warning


@dataclass(frozen=True)
class LayerFiles:
    """One layer's latents: forward-order index, module name, files and their sha256."""

    index: int
    name: str
    train: Path
    eval: Path
    shape: tuple[int, int]  # of the training array
    sha256: dict[str, str]
    dtypes: dict[str, str]  # of the train and eval arrays (they may differ: see ``_check_dtype``)


@dataclass(frozen=True)
class Manifest:
    folder: Path
    run_dir: Path
    model_test_accuracy: float | None
    layers: tuple[LayerFiles, ...]
    train_labels: Path
    eval_labels: Path
    labels_sha256: dict[str, str]
    raw: dict[str, Any]

    def layer(self, name: str) -> LayerFiles:
        """The layer (a pixelwise position is one) called ``name``."""
        return self._by_name[name]

    @functools.cached_property
    def _by_name(self) -> dict[str, LayerFiles]:
        return {layer.name: layer for layer in self.layers}

    def files(self) -> list[tuple[Path, str]]:
        """Every (path, expected sha256) the manifest lists."""
        pairs = [(self.train_labels, self.labels_sha256["train"]), (self.eval_labels, self.labels_sha256["eval"])]
        for layer in self.layers:
            pairs += [(layer.train, layer.sha256["train"]), (layer.eval, layer.sha256["eval"])]
        return pairs


def _fail(manifest: Path, what: str) -> DataError:
    return DataError(f"Latents manifest {str(manifest)!r} is incomplete or invalid: {what}. Rerun the extraction "
                     f"step (python main.py --config ... with post_processing 'extract') to rewrite it.")


def _require(mapping: Any, key: str, kind: type, manifest: Path, where: str, *, path: bool = False) -> Any:
    """``mapping[key]``, a non-empty ``kind``. A string must be text: a lone surrogate ("\\ud800") is legal JSON,
    and file names, logs and plots raised on it. A ``path`` may hold the escapes (U+DC80–U+DCFF) by which Python
    names a file-system byte that is no UTF-8 (a run folder below ``x\\xff``); it is returned as this process names
    the file of those UTF-8 bytes (a locale without UTF-8 mode had no name for a '数据' written under one)."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise _fail(manifest, f"{where or 'the top level'} has no {key!r}")
    value = mapping[key]
    field = f"{where}{'.' if where else ''}{key}"
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool) or value in ("", []):
        raise _fail(manifest, f"{field} is {json.dumps(value)[:60]}, expected a non-empty {kind.__name__}")
    if isinstance(value, str) and "\0" in value:  # Path.resolve() and open() raise ValueError on it
        raise _fail(manifest, f"{field} is {json.dumps(value)[:60]}, which holds a NUL character (\\u0000); no file "
                              f"name or path can hold one")
    if isinstance(value, str):
        try:
            value.encode("utf-8", "surrogateescape" if path else "strict")
        except UnicodeEncodeError as error:
            raise _fail(manifest, f"{field} is {json.dumps(value)[:60]}, which is not valid Unicode text (a lone "
                                  f"surrogate at character {error.start}); names must be UTF-8 text, and paths "
                                  f"the names the file system gives") from None
        if path:  # its UTF-8 bytes, as this process names them (a '数据' of a UTF-8 locale, read under LC_ALL=C)
            return manifest_path(value)
    return value


def _sha_pair(mapping: dict, manifest: Path, where: str) -> dict[str, str]:
    shas = _require(mapping, "sha256", dict, manifest, where)
    for split in SPLITS:
        value = _require(shas, split, str, manifest, f"{where}.sha256")
        if not _SHA256.fullmatch(value):
            raise _fail(manifest, f"{where}.sha256.{split} is {json.dumps(value)[:80]}, which is not a sha256: "
                                  f"expected 64 hexadecimal digits (0-9, a-f or A-F)")
    return {split: shas[split].lower() for split in SPLITS}


_PICKLED = "it holds pickled Python objects, which are never loaded (loading them could run code)"


def _header(path: Path, manifest: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the .npy header (memory-mapped: no data is read). A file that does not begin
    with the .npy signature is refused before numpy reads it: numpy takes any other file for a pickle
    (a CSV file, too) or, for a zip archive (.npz, torch.save), returns an archive instead of an array. A FIFO there
    is named as what it is (``NotARegularFile``): it was said not to exist, and never read."""
    mode = _mode_of(path)
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise NotARegularFile(path, mode)
    if mode is not None and stat.S_ISDIR(mode):  # it was said not to exist
        raise DataError(f"Latents file {str(path)!r} listed in {str(manifest)!r} is a folder, not a .npy array "
                        f"file. Rerun the extraction step.")
    if not path.is_file():
        raise DataError(f"Latents file {str(path)!r} listed in {str(manifest)!r} does not exist; the extraction is "
                        f"incomplete or the folder was moved. Rerun the extraction step.")
    try:
        with open_regular(path) as handle:
            start = handle.read(512)
    except NotARegularFile:
        raise
    except OSError as error:
        if error.errno in LIMIT_ERRNOS:  # this machine's limit, not the file: the command says which
            raise
        raise DataError(f"Latents file {str(path)!r} is not a readable .npy array ({error}); rerun the extraction "
                        f"step.") from None
    if not start:  # numpy 1.24 took an empty file for a pickle and said so
        raise DataError(f"Latents file {str(path)!r} is not a readable .npy array (the file is empty); rerun the "
                        f"extraction step.")
    if not start.startswith(NPY_MAGIC):
        raise _not_npy(path, manifest, start)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # EOFError: cut short
        if isinstance(error, OSError) and error.errno in LIMIT_ERRNOS:
            raise
        reason = (_PICKLED if "pickle" in str(error) or _holds_objects(path)
                  else str(error) or type(error).__name__)
        raise DataError(f"Latents file {str(path)!r} is not a readable .npy array ({reason}); rerun the extraction "
                        f"step.") from None
    if not isinstance(array, np.ndarray):  # replaced since its first bytes were read
        raise _not_npy(path, manifest, b"")
    return array.shape, array.dtype


def _not_npy(path: Path, manifest: Path, start: bytes) -> DataError:
    """The error for a file listed in the manifest that is not a .npy file, saying what it looks like."""
    if start.startswith(b"PK\x03\x04"):
        seems = "; it is a zip archive, as numpy.savez (.npz) and torch.save write"
    elif start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        seems = f"; it looks like a Python pickle (pickle.dump, older torch.save): {_PICKLED}"
    elif b"\0" not in start and _is_text(start):
        seems = "; it looks like a text file (CSV or the like)"
    else:
        seems = ""
    return DataError(f"Latents file {str(path)!r} listed in {str(manifest)!r} is not a .npy array file: it does not "
                     f"begin with the .npy signature {NPY_MAGIC!r}{seems}. Every layer and label file must be a "
                     f"single array saved with numpy.save; rerun the extraction step.")


def _is_text(start: bytes) -> bool:
    try:
        start.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at the end of the sample is still text
        return error.start >= len(start) - 3
    return True


def _holds_objects(path: Path) -> bool:
    """Whether a .npy file's header declares Python objects (stored pickled), read without loading them."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return bool(read(handle)[2].hasobject)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return False


def read_manifest(folder: Path | str) -> Manifest:
    """Parse ``<folder>/manifest.json`` and check it against the array headers."""
    folder = Path(folder)
    path = folder / MANIFEST
    _require_manifest_file(folder, path)
    raw = _load_json(path)
    run_dir = _require(raw, "run_dir", str, path, "", path=True)
    dtype = _require(raw, "dtype", str, path, "")
    accuracy = _model_test_accuracy(raw, path)
    _refuse_non_finite(raw, path)
    labels = _require(raw, "labels", dict, path, "")
    label_files = {split: _inside(folder, _require(labels, split, str, path, "labels", path=True), path,
                                  f"labels.{split}") for split in SPLITS}
    label_shas = _sha_pair(labels, path, "labels")
    entries = _require(raw, "layers", list, path, "")
    if not entries:
        raise _fail(path, "it lists no layers")
    label_lengths = {split: _label_count(label_files[split], path) for split in SPLITS}
    layers, positional = _read_layers(entries, folder, path, label_files, label_lengths)
    _check_dtype(dtype, {layer.dtypes["train"] for layer in layers}, path)
    _check_layer_sets(folder, path, layers, positional, set(label_files.values()))
    layers.sort(key=lambda layer: layer.index)  # stable: a pixelwise layer's positions keep the manifest's order
    # a relative run_dir is relative to the latents folder, not to the current folder of whoever probes
    return Manifest(folder, folder / run_dir, None if accuracy is None else float(accuracy), tuple(layers),
                    label_files["train"], label_files["eval"], label_shas, raw)


def _require_manifest_file(folder: Path, path: Path) -> None:
    """Fail unless ``folder`` is a folder holding ``path``, saying which folder was likely meant."""
    link = dangling_link(folder)
    if link is not None:
        raise DataError(f"No latents found at {str(folder)!r}: {gone_link_target(link, folder)}. If that file system "
                        f"is mounted elsewhere, probe there; if the latents are gone, the training command extracts "
                        f"them again once the link leads to a folder (create it) or is removed.")
    if not folder.is_dir():
        raise DataError(f"No latents found: {str(folder)!r} is not a folder. Pass the latents folder written by the "
                        f"extraction step (by default <run folder>/latents).")
    mode = _mode_of(path)
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise NotARegularFile(path, mode)  # a FIFO: not "the extraction is unfinished", and never read
    if not path.is_file():
        inside = sorted(str(p.parent) for p in folder.glob(f"*/{MANIFEST}"))
        if inside:  # a run folder given instead of its latents folder
            more = f" and {len(inside) - 3} more" if len(inside) > 3 else ""
            which = ("does: pass that latents folder" if len(inside) == 1 else
                     "do (latents sets): pass one of those latents folders")
            raise DataError(f"{str(folder)!r} holds no {MANIFEST} itself, but "
                            f"{', '.join(repr(i) for i in inside[:3])}{more} {which} to --latents, or probe them "
                            f"all with --config.")
        raise DataError(f"Latents folder {str(folder)!r} has no {MANIFEST}: the extraction is unfinished (the "
                        f"manifest is written last). Rerun the training command with the 'extract' step; it redoes "
                        f"a half-written extraction.")


def _mode_of(path: Path) -> int | None:
    """The mode of what ``path`` names (links followed), or None where nothing can be found there."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _load_json(path: Path) -> dict[str, Any]:
    """The manifest's JSON object, of the format this version reads."""
    try:
        raw = read_json(path)
    except NotARegularFile:
        raise
    except (OSError, ValueError) as error:
        raise _fail(path, f"it is not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise _fail(path, "it does not hold a JSON object")
    if type(raw.get("format")) is not int or raw["format"] != MANIFEST_FORMAT:  # not True or 1.0, which equal 1
        raise _fail(path, f"format is {json.dumps(raw.get('format'))}, this version reads format {MANIFEST_FORMAT} (an "
                          f"integer)")
    return raw


def _refuse_non_finite(raw: dict[str, Any], path: Path) -> None:
    """Refuse a NaN or infinity anywhere in the manifest, which Python's JSON reader takes: one copied into
    probe_settings.json (strict JSON, ``atomic.write_json``) ended the job with a traceback once every layer was
    fitted, its probe_performances.csv written and its settings not."""
    found = non_finite_at(raw)
    if found is not None:
        raise _fail(path, f"its value at {found[0]} is {found[1]}, which strict JSON has no number for (an "
                          f"extraction writes none)")


def _model_test_accuracy(raw: dict[str, Any], path: Path) -> Any:
    """The manifest's ``model_test_accuracy``: None, or a number between 0 and 1."""
    accuracy = raw.get("model_test_accuracy")
    if accuracy is not None and (isinstance(accuracy, bool) or not isinstance(accuracy, (int, float))
                                 or not 0 <= accuracy <= 1):  # NaN fails too; relative_acc divides by it
        raise _fail(path, f"model_test_accuracy must be an accuracy between 0 and 1 or null, got "
                          f"{json.dumps(accuracy)}")
    return accuracy


def _inside(folder: Path, name: str, manifest: Path, field: str) -> Path:
    """``folder / name`` where ``name`` is a path inside the latents folder: relative, without "..". A manifest
    naming "../../x.npy" or an absolute path had any file of the machine read, hashed and probed as latents."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise _fail(manifest, f"{field} is {json.dumps(name)[:80]}, which is not inside the latents folder: a layer "
                              f"or label file is named by its path relative to that folder, without '..'")
    return folder / name


def _label_count(file: Path, manifest: Path) -> int:
    """The number of labels in a label file, which must be a 1-d integer array."""
    shape, dtype = _header(file, manifest)
    if len(shape) != 1 or not np.issubdtype(dtype, np.integer):
        raise DataError(f"Label file {str(file)!r} must be a 1-d integer array; it has shape "
                        f"{list(shape)} and dtype {dtype}. Rerun the extraction step.")
    return shape[0]


def _read_layers(entries: list, folder: Path, path: Path, label_files: dict[str, Path],
                 label_lengths: dict[str, int]) -> tuple[list[LayerFiles], set[str]]:
    """The layers in manifest order, each checked against its array headers and the labels, and the
    names of the positional entries (the positions of a pixelwise layer)."""
    layers, seen_names, seen_files, positional = [], set(), set(), set()
    for position, entry in enumerate(entries):
        where = f"layers[{position}]"
        name = _require(entry, "name", str, path, where)
        index = _require(entry, "index", int, path, where)
        if index < 0:  # a record's index is >= 0: the cache refused such a layer's entry, and every rerun failed
            raise _fail(path, f"{where}.index is {index}, expected an integer >= 0")
        _check_result_name(index, name, path, where)
        present = [split for split in SPLITS if isinstance(entry, dict) and entry.get(split)]
        if len(present) == 1:
            raise DataError(f"The train and eval layer sets in {str(path)!r} differ: layer {name!r} has only a "
                            f"{present[0]} file. Both splits need the same layers; rerun the extraction step.")
        files = {split: _require(entry, split, str, path, where, path=True) for split in SPLITS}
        paths = {split: _inside(folder, files[split], path, f"{where}.{split}") for split in SPLITS}
        shas = _sha_pair(entry, path, where)
        if name in seen_names:
            raise _fail(path, f"layer {name!r} is listed twice")
        seen_names.add(name)
        shapes, dtypes = {}, {}
        for split in SPLITS:
            file = paths[split]
            if file in seen_files:
                raise _fail(path, f"file {files[split]!r} is listed twice")
            seen_files.add(file)
            shapes[split], dtype = _latents_header(file, path)
            dtypes[split] = str(dtype)
            if shapes[split][0] != label_lengths[split]:
                raise DataError(f"Label file {str(label_files[split])!r} has {label_lengths[split]} labels, but the "
                                f"{split} latents of layer {name!r} ({str(file)!r}) have {shapes[split][0]} samples; "
                                f"labels and latents must come from the same extraction. Rerun the extraction step.")
        if shapes["train"][1] != shapes["eval"][1]:
            raise DataError(f"Layer {name!r} has {shapes['train'][1]} features in {files['train']!r} but "
                            f"{shapes['eval'][1]} in {files['eval']!r} (in {str(folder)!r}); train and eval latents "
                            f"must have the same width. Rerun the extraction step.")
        declared = entry.get("shape")
        if declared is not None and (not isinstance(declared, list) or declared != list(shapes["train"])):
            raise _fail(path, f"{where}.shape is {declared}, but {files['train']!r} has shape {list(shapes['train'])}")
        layers.append(LayerFiles(index, name, paths["train"], paths["eval"],
                                 tuple(shapes["train"]), shas, dtypes))
        if isinstance(entry, dict) and "position" in entry:
            positional.add(name)
    return layers, positional


def _check_result_name(index: int, name: str, manifest: Path, where: str) -> None:
    """A layer's confusion matrix is written as ``probe_confusion/<index:03d>-<name>.npy`` (and ``.png``), through a
    temp file of that name: where it takes more than the file systems' 255 bytes, the job fitted every layer, and
    then stopped with exit 1 ('File name too long') while writing its results (an index of 10**400, a name of
    5000 characters)."""
    longest = temp_name(f"{index:03d}-{safe_name(name)}.npy")  # the temp file of an atomic write
    if name_bytes(longest) > NAME_MAX:
        field = f"{where}.index" if name_bytes(f"{index:03d}") > NAME_MAX // 2 else f"{where}.name"
        raise _fail(manifest, f"{field} gives the layer's confusion-matrix file name {longest[1:41]!r}... of "
                              f"{name_bytes(longest) - 14} bytes, too long for file names of at most {NAME_MAX} bytes "
                              f"(with the temp file's 14 more): a layer's index and name must be shorter")


def _latents_header(file: Path, manifest: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of a latents file, which must be a 2-d array (samples × features) of float16, float32
    or float64 with at least one feature. The fits refuse an empty layer, and no solver computes in longdouble
    (float96/float128): scikit-learn's cast it to float64, torch refuses it. Both were found out only in the fit,
    after the job had written its log, lock and cache."""
    shape, dtype = _header(file, manifest)
    if len(shape) != 2 or shape[1] == 0 or dtype.kind != "f" or dtype.itemsize > 8:
        raise DataError(f"Latents file {str(file)!r} must be a 2-d array of float16, float32 or float64 with at "
                        f"least one feature (samples × features); it has shape {list(shape)} and dtype {dtype}. "
                        f"Rerun the extraction step.")
    return shape, dtype


def _check_dtype(declared: str, train_dtypes: set[str], manifest: Path) -> None:
    """The manifest's ``dtype`` is what both writers put there: the training files' dtypes, sorted and
    comma-joined (the extraction writes every file in its one configured dtype; ``write_latents`` joins
    the dtypes of the training arrays, so the evaluation files may differ)."""
    actual = ",".join(sorted(train_dtypes))
    if declared != actual:
        raise _fail(manifest, f"dtype is {json.dumps(declared)[:60]}, but the layers' training files hold "
                              f"{json.dumps(actual)} (the field is their dtypes, sorted and joined by commas)")


def _check_layer_sets(folder: Path, manifest: Path, layers: list[LayerFiles], positional: set[str],
                      label_files: set[Path]) -> None:
    """The manifest is the contract: only the layers it lists are probed, each with the train and eval file its
    entry names (``_read_layers`` refuses an entry of one split). Layer files on disk that it does not list (left
    over from another extraction, or copied in, with or without a file of the other split) are named in one
    warning; a stray ``train-extra.npy`` refused the whole folder as "layer sets differ". Indices are unique,
    except that the positions of a pixelwise layer (entries with a ``position``) share their layer's index."""
    on_disk = {split: {p.name[len(split) + 1:-4] for p in folder.glob(f"{split}-*.npy")} - {"labels"}
               for split in SPLITS}
    listed = {file for layer in layers for file in (layer.train, layer.eval)} | label_files
    unlisted = sorted(f"{split}-{name}.npy" for split in SPLITS for name in on_disk[split]
                      if folder / f"{split}-{name}.npy" not in listed)
    if unlisted:
        more = f" and {len(unlisted) - _SHOWN} more" if len(unlisted) > _SHOWN else ""
        log.warning("Latents folder %s holds %d layer file(s) that its %s does not list, which are not probed: "
                    "%s%s.", folder, len(unlisted), MANIFEST, ", ".join(unlisted[:_SHOWN]), more)
    indices = [layer.index for layer in layers if layer.name not in positional]
    shared = {layer.index for layer in layers if layer.name in positional}
    if len(set(indices)) != len(indices) or shared & set(indices):
        raise _fail(manifest, f"layer indices repeat ({sorted(indices + list(shared))})")


def verify_hashes(manifest: Manifest, threads: int = 2, pairs: Iterable[tuple[Path, str]] | None = None,
                  read: Callable[[int], None] | None = None) -> dict[str, tuple[int, int, int]]:
    """Raise a DataError for the first file whose sha256 differs from the manifest; return the stamp
    (``file_stamp``) of every verified file, so that a fit can tell the file it loads is that one. ``read`` is
    told the size of each chunk hashed, from the hashing threads."""
    pairs = list(manifest.files() if pairs is None else pairs)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(lambda pair: hash_and_stamp(pair[0], read), pairs))
    for (path, expected), (digest, _) in zip(pairs, results):
        if digest != expected:
            raise DataError(f"Latents file {str(path)!r} has sha256 {digest}, but {str(manifest.folder / MANIFEST)!r} "
                            f"records {expected}: the file changed after the extraction (or is corrupt). Rerun the "
                            f"extraction step so that files and manifest agree.")
    log.debug("verified sha256 of %d files in %s", len(pairs), manifest.folder)
    return {str(path): stamp for (path, _), (_, stamp) in zip(pairs, results)}
