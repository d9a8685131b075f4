"""read_manifest refuses malformed manifests and files that are not .npy arrays with a one-paragraph DataError."""

from __future__ import annotations

import io
import json
import logging
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phd_lab.errors import DataError
from phd_lab.probes.manifest import read_manifest
from phd_lab.probes.synthetic import write_latents
from tests.conftest import probe_job_in_process

ROOT = Path(__file__).resolve().parents[1]


def latents(tmp_path: Path, n_layers: int = 2, eval_dtype: type = np.float32) -> Path:
    """A small valid latents folder (40 training, 20 evaluation samples) of ``n_layers`` layers."""
    rng = np.random.default_rng(0)
    y_train, y_eval = np.arange(40) % 2, np.arange(20) % 2
    layers = {f"features.{i}": (rng.standard_normal((40, 3)).astype(np.float32),
                                rng.standard_normal((20, 3)).astype(eval_dtype)) for i in range(n_layers)}
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    return write_latents(run_dir / "latents", layers, y_train, y_eval, run_dir, 0.9)


def edit(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def refused(folder: Path) -> str:
    """read_manifest's DataError message, on one line."""
    with pytest.raises(DataError) as caught:
        read_manifest(folder)
    return " ".join(str(caught.value).split())


def probe_main(folder: Path, tmp_path: Path) -> str:
    """Run probe_main.py on ``folder``: it must fail with exit status 2 and no traceback. Its stderr, on one line."""
    done = subprocess.run([sys.executable, "probe_main.py", "--latents", str(folder), "-mp", "0", "--cache-dir",
                           str(tmp_path / "cache"), "--no-progress", "-q"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return " ".join(done.stderr.split())


def probe_in_process(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> str:
    """``probe_main.py`` as above, in this process (where the message's way to a real stderr is no subject: it spares
    each test a process start): exit status 2, no traceback; its stderr, on one line."""
    code, err = probe_job_in_process(capsys, "--latents", str(folder), "-mp", "0",
                                     "--cache-dir", str(tmp_path / "cache"), "--no-progress", "-q")
    assert code == 2, err
    assert "Traceback" not in err
    return " ".join(err.split())


def test_a_zip_archive_named_npy_is_refused_as_not_a_npy_array(tmp_path, capsys):
    """np.savez / torch.save write zip archives: np.load returned an NpzFile, and `.shape` was a traceback."""
    folder = latents(tmp_path)
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros((40, 3), np.float32))
    (folder / "train-features.0.npy").write_bytes(buffer.getvalue())
    err = probe_in_process(folder, tmp_path, capsys)
    assert "train-features.0.npy' listed in" in err and "is not a .npy array file" in err
    assert "it is a zip archive, as numpy.savez (.npz) and torch.save write" in err


def test_a_folder_in_place_of_a_layer_file_is_called_a_folder_not_missing(tmp_path, capsys):
    """A folder under a listed file's name was said not to exist ('the extraction is incomplete or the folder was
    moved'), which sent its owner looking for a file that is there, as a folder."""
    folder = latents(tmp_path)
    (folder / "eval-features.1.npy").unlink()
    (folder / "eval-features.1.npy").mkdir()
    err = probe_in_process(folder, tmp_path, capsys)
    assert "eval-features.1.npy' listed in" in err and "is a folder, not a .npy array file" in err, err
    assert "does not exist" not in err


def test_a_text_file_is_not_a_npy_file_rather_than_a_pickle(tmp_path):
    folder = latents(tmp_path)
    (folder / "eval-features.1.npy").write_text("a,b,c\n1,2,3\n")
    message = refused(folder)
    assert "eval-features.1.npy' listed in" in message and "is not a .npy array file" in message
    assert "begin with the .npy signature b'\\x93NUMPY'; it looks like a text file" in message
    assert "pickle" not in message
    other = folder / "passwd"  # a text file of another name that the manifest names
    other.write_text("root:x:0:0:root:/root:/bin/bash\n")
    edit(folder, lambda m: m["layers"][0].update(train="passwd"))
    message = refused(folder)
    assert f"'{other}' listed in" in message and "it looks like a text file" in message
    assert "pickle" not in message


def test_pickles_and_object_arrays_are_named_as_such(tmp_path):
    folder = latents(tmp_path)
    (folder / "train-features.0.npy").write_bytes(pickle.dumps(np.zeros((40, 3))))
    message = refused(folder)
    assert "is not a .npy array file" in message and "it looks like a Python pickle" in message
    np.save(folder / "train-features.0.npy", np.array([[1, "a", None]] * 40, dtype=object), allow_pickle=True)
    message = refused(folder)  # a real .npy file whose objects are stored pickled
    assert "train-features.0.npy' is not a readable .npy array (it holds pickled Python objects" in message
    assert "not a .npy array file" not in message


def test_a_nul_character_in_run_dir_is_refused_naming_the_field(tmp_path, capsys):
    """Path.resolve() raised "embedded null byte" later, as a traceback."""
    folder = latents(tmp_path)
    edit(folder, lambda m: m.update(run_dir=str(tmp_path / "run") + "\0x"))
    err = probe_in_process(folder, tmp_path, capsys)
    assert "is incomplete or invalid: run_dir is" in err and "which holds a NUL character" in err


@pytest.mark.parametrize("value", [True, 1.0, "1"])
def test_format_must_be_the_integer_1(tmp_path, value):
    folder = latents(tmp_path)
    edit(folder, lambda m: m.update(format=value))
    assert f"format is {json.dumps(value)}, this version reads format 1 (an integer)" in refused(folder)


@pytest.mark.parametrize("field, change", [
    ("layers[1].sha256.train", lambda m: m["layers"][1]["sha256"].update(train="z" * 64)),
    ("labels.sha256.eval", lambda m: m["labels"]["sha256"].update(eval="0" * 63 + " ")),
])
def test_a_sha256_that_is_not_64_hex_digits_is_refused_at_read_time(tmp_path, field, change):
    """It was blamed on the file ("changed after the extraction") once the files had been hashed."""
    folder = latents(tmp_path)
    edit(folder, change)
    message = refused(folder)
    assert f"{field} is" in message and "which is not a sha256: expected 64 hexadecimal digits" in message


def test_an_upper_case_sha256_is_still_read(tmp_path):
    folder = latents(tmp_path)
    edit(folder, lambda m: m["layers"][0]["sha256"].update(train=m["layers"][0]["sha256"]["train"].upper()))
    assert read_manifest(folder).layers[0].sha256["train"].islower()


@pytest.mark.parametrize("change, match", [
    (lambda m: m.pop("dtype"), "the top level has no 'dtype'"),
    (lambda m: m.update(dtype=5), "dtype is 5, expected a non-empty str"),
    (lambda m: m.update(dtype=""), 'dtype is "", expected a non-empty str'),
    (lambda m: m.update(dtype="int8"), 'dtype is "int8", but the layers\' training files hold "float32"'),
])
def test_the_manifest_dtype_must_name_the_training_files_dtypes(tmp_path, change, match):
    folder = latents(tmp_path)
    edit(folder, change)
    assert match in refused(folder)


def test_the_dtype_of_write_latents_lists_the_training_files_only(tmp_path):
    """write_latents joins the training arrays' dtypes; the evaluation files may differ (the fit casts them)."""
    folder = latents(tmp_path, eval_dtype=np.float16)
    assert json.loads((folder / "manifest.json").read_text())["dtype"] == "float32"
    assert len(read_manifest(folder).layers) == 2


def test_the_dtype_of_an_extraction_is_read(tmp_path):
    """The extraction writes every file in its configured dtype, and names that dtype (pixelwise: many files)."""
    from tests._extraction_models import build_model, loaders
    from phd_lab.extraction import extract_latents
    manifest = extract_latents(build_model(), loaders(), tmp_path, run_dir=tmp_path, downsampling="pixelwise",
                               dtype="float16", layers=["body.4", "head"], progress=False)
    assert manifest["dtype"] == "float16"
    assert len(read_manifest(tmp_path).layers) == len(manifest["layers"]) == 17


def test_layer_files_the_manifest_does_not_list_are_named_in_one_warning(tmp_path, caplog):
    folder = latents(tmp_path, n_layers=8)
    edit(folder, lambda m: m.update(layers=m["layers"][:1]))  # 7 pairs left on disk
    with caplog.at_level(logging.WARNING, logger="phd_lab.probes.manifest"):
        assert [layer.name for layer in read_manifest(folder).layers] == ["features.0"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "phd_lab.probes.manifest"]
    assert len(warnings) == 1, warnings
    assert (f"Latents folder {folder} holds 14 layer file(s) that its manifest.json does not list, which are not "
            f"probed: eval-features.1.npy, eval-features.2.npy, eval-features.3.npy, eval-features.4.npy, "
            f"eval-features.5.npy and 9 more.") == warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="phd_lab.probes.manifest"):
        read_manifest(latents(tmp_path / "whole"))
    assert not [r for r in caplog.records if r.name == "phd_lab.probes.manifest"]


def test_label_files_under_other_names_are_no_unlisted_layer_files(tmp_path, caplog):
    """A manifest may name its label files as it likes (``labels.train``); ``train-y.npy`` was warned about as a
    layer file that the manifest does not list."""
    folder = latents(tmp_path)
    for split in ("train", "eval"):
        (folder / f"{split}-labels.npy").rename(folder / f"{split}-y.npy")
    edit(folder, lambda m: m.update(labels={**m["labels"], "train": "train-y.npy", "eval": "eval-y.npy"}))
    with caplog.at_level(logging.WARNING, logger="phd_lab.probes.manifest"):
        manifest = read_manifest(folder)
    assert manifest.train_labels == folder / "train-y.npy" and len(manifest.layers) == 2
    assert not [r.getMessage() for r in caplog.records if r.name == "phd_lab.probes.manifest"]


def _run_folder_holds_only_its_latents(tmp_path: Path) -> None:
    """Nothing written: no probe.log, lock, cache or result beside the latents."""
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["latents"]
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("train, evaluation, match", [
    (np.zeros((40, 0), np.float32), np.zeros((20, 0), np.float32), "shape [40, 0] and dtype float32"),
    (np.ones((40, 3), np.longdouble), np.ones((20, 3), np.longdouble), f"dtype {np.dtype(np.longdouble)}"),
])
def test_latents_without_features_or_wider_than_float64_are_refused_before_anything_is_written(
        tmp_path, train, evaluation, match, capsys):
    """Both passed the header checks and failed in the fit (exit status 1) after probe.log, the lock and the
    cache had been created."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    folder = write_latents(run_dir / "latents", {"l.0": (train, evaluation)}, np.arange(40) % 2, np.arange(20) % 2,
                           run_dir, 0.9)
    err = probe_in_process(folder, tmp_path, capsys)
    assert "train-l.0.npy' must be a 2-d array of float16, float32 or float64 with at least one feature" in err
    assert match in err
    _run_folder_holds_only_its_latents(tmp_path)


@pytest.mark.parametrize("field, change", [
    ("layers[1].train", lambda m, outside: m["layers"][1].update(train="../../elsewhere/train.npy")),
    ("layers[1].eval", lambda m, outside: m["layers"][1].update(eval=str(outside / "eval.npy"))),
    ("labels.train", lambda m, outside: m["labels"].update(train="../../elsewhere/labels.npy")),
])
def test_files_outside_the_latents_folder_are_refused_naming_the_entry(tmp_path, field, change, capsys):
    """A manifest could name any file of the machine ("../../x.npy" or an absolute path), and it was probed."""
    folder = latents(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for name, moved in (("train", "train-features.1.npy"), ("eval", "eval-features.1.npy"),
                        ("labels", "train-labels.npy")):
        shutil.copy(folder / moved, outside / f"{name}.npy")  # valid files, their sha256 as listed
    edit(folder, lambda m: change(m, outside))
    err = probe_in_process(folder, tmp_path, capsys)
    assert f"{field} is" in err and "which is not inside the latents folder" in err
    _run_folder_holds_only_its_latents(tmp_path)


@pytest.mark.parametrize("field, change", [
    ("run_dir", lambda m: m.update(run_dir="\ud800")),
    ("layers[0].name", lambda m: m["layers"][0].update(name="a\ud800")),
])
def test_a_lone_surrogate_is_refused_naming_the_field(tmp_path, field, change):
    """The JSON string "\\ud800" is legal, but no UTF-8 text: it raised UnicodeEncodeError (a traceback, exit
    status 1)."""
    folder = latents(tmp_path)
    edit(folder, change)
    err = probe_main(folder, tmp_path)  # a process of its own: what reaches a real stderr is part of the subject
    assert f"{field} is" in err and "which is not valid Unicode text" in err
    _run_folder_holds_only_its_latents(tmp_path)


def test_a_run_folder_whose_name_holds_a_byte_that_is_no_utf8_is_probed(tmp_path):
    """A run folder below ``x\\xff`` (a byte a file system allows, no UTF-8) gets run_dir "...x\\udcff..." in its
    manifest: that is the name Python gives the folder, not a lone surrogate to refuse. The probe log wrote every
    record naming the folder as "--- Logging error ---" instead; it is written escaped."""
    import os
    odd = tmp_path / os.fsdecode(b"x\xff")
    folder = latents(odd)
    done = subprocess.run([sys.executable, "probe_main.py", "--latents", os.fsencode(folder), "-mp", "0",
                           "--solver", "lbfgs", "--no-progress"], cwd=ROOT, capture_output=True, timeout=120)
    stderr = done.stderr.decode("utf-8", "backslashreplace")
    assert done.returncode == 0 and "Logging error" not in stderr, stderr
    assert (odd / "run" / "probe_performances.csv").is_file()
    log_text = (odd / "run" / "probe.log").read_text(encoding="utf-8")
    assert f"{tmp_path}/x\\udcff/run/latents: probe results in" in log_text, log_text


@pytest.mark.parametrize("field, change", [
    ("layers[1].index", lambda m: m["layers"][1].update(index=10 ** 300)),
    ("layers[1].name", lambda m: m["layers"][1].update(name="x" * 300)),
])
def test_a_layer_whose_confusion_file_name_is_too_long_is_refused_before_any_fit(tmp_path, field, change, capsys):
    """The confusion matrix is written as probe_confusion/<index:03d>-<name>.npy: an index of 10**300 or a name of
    300 characters passed, every layer was fitted, and the job ended with exit status 1 ('File name too long')."""
    folder = latents(tmp_path)
    edit(folder, change)
    err = probe_in_process(folder, tmp_path, capsys)
    assert f"{field} gives the layer's confusion-matrix file name" in err and "at most 255 bytes" in err
    _run_folder_holds_only_its_latents(tmp_path)


def test_a_latents_set_folder_whose_result_names_would_be_too_long_is_refused(tmp_path, capsys):
    """A folder named as a set (latents_<size>x<size>_<method>) near the 255 bytes a name may take was probed as that
    set, and the job ended with an OSError traceback (exit 1) at its result files, probe_performances_<set>.csv."""
    folder = latents(tmp_path)
    long_set = folder.parent / f"latents_{'9' * 235}x9_nearest"
    folder.rename(long_set)
    err = probe_in_process(long_set, tmp_path, capsys)
    assert "whose result files (probe_performances_<set>.csv, probe_confusion_<set>/) would have names longer" in err
    assert not any(path.name.startswith("probe") for path in long_set.parent.iterdir())
    assert not (tmp_path / "cache").exists()


def test_negative_labels_are_refused_before_anything_is_written(tmp_path, capsys):
    """An extraction writes class indices 0, 1, ...: a label -1 (an 'ignore' marker, or damage) was fitted as a class
    of its own, and the probes' accuracies were computed over it without a word."""
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    y_train = np.arange(40) % 2
    y_train[3] = -1
    folder = write_latents(run_dir / "latents", {"l.0": (rng.standard_normal((40, 3)).astype(np.float32),
                                                         rng.standard_normal((20, 3)).astype(np.float32))},
                           y_train, np.arange(20) % 2, run_dir, 0.9)
    err = probe_in_process(folder, tmp_path, capsys)
    assert "train-labels.npy' hold the negative class -1; labels are class indices" in err
    _run_folder_holds_only_its_latents(tmp_path)
