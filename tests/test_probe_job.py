"""The probe job end to end in-process: outputs, cache by content, config mode and every input error."""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phd_lab.config_file import load_config_file
from phd_lab.errors import DataError, RunFailure
from phd_lab.file_hash import sha256_file
from phd_lab.grid import Grid
from phd_lab.probes.cache import ResultCache
from phd_lab.probes.cli import probe_cli
from phd_lab.probes.discovery import jobs_from_latents
from phd_lab.probes.job import build_tasks, run_jobs, validate_jobs
from phd_lab.probes.manifest import read_manifest, verify_hashes
from phd_lab.probes.probe_log import FINISHED
from phd_lab.probes.runner import run_probes, run_task
from phd_lab.probes.synthetic import write_latents
from phd_lab.rundir import RunDir
from tests.conftest import file_size_limit, small_disk
from tests.probe_latents import blob_layers, digits_layers, make_latents

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def cli(*argv: str) -> int:
    return probe_cli([*argv, "--no-progress", "-q"])


def test_outputs_have_documented_columns_plots_and_confusions(tmp_path):
    run_dir, latents = make_latents(tmp_path, accuracy=0.8)
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs", "--C", "0.5") == 0
    table = pd.read_csv(run_dir / "probe_performances.csv")
    # the header DESIGN.md and the README document (users' scripts read it), not the code's own constant
    assert list(table.columns) == ["index", "layer", "train_acc", "eval_acc", "relative_acc", "n_iter", "converged",
                                   "seconds", "solver"]
    assert table["index"].tolist() == [1, 2, 3]
    assert table["layer"].tolist() == ["features.0", "features.1", "features.2"]
    assert set(table["solver"]) == {"lbfgs"} and table["converged"].all()
    np.testing.assert_allclose(table["relative_acc"], table["eval_acc"] / 0.8)
    assert table["eval_acc"][0] > 0.7 and ((table["eval_acc"] > 0.1) & (table["eval_acc"] <= 1)).all()
    assert (run_dir / "probe_performances.png").read_bytes()[:8] == PNG
    recorded = json.loads((run_dir / "probe_settings.json").read_text())
    assert recorded["settings"] == {"solver": "lbfgs", "C": 0.5, "max_iter": 1000, "tol": 1e-4, "standardize": True,
                                    "train_samples": None}  # the solver's default filled in, the override kept
    assert set(recorded["library_versions"]) >= {"numpy", "scikit_learn", "scipy"}
    for index, layer in zip(table["index"], table["layer"]):
        matrix = np.load(run_dir / "probe_confusion" / f"{index:03d}-{layer}.npy", allow_pickle=False)
        assert matrix.shape == (10, 10)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
        assert (run_dir / "probe_confusion" / f"{index:03d}-{layer}.png").read_bytes()[:8] == PNG
    assert not list(run_dir.rglob("*.tmp"))


def test_missing_model_accuracy_gives_nan_relative_accuracy(tmp_path):
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=1), accuracy=None)
    assert cli("--latents", str(latents), "-mp", "0") == 0
    assert pd.read_csv(run_dir / "probe_performances.csv")["relative_acc"].isna().all()


def _fitted(latents: Path, cache: Path, **overrides) -> list[tuple[str, bool]]:
    jobs, _ = jobs_from_latents(latents, overrides)
    seen = []
    run_probes(build_tasks(jobs), ResultCache(cache), progress=False,
               on_record=lambda task, record, cached: seen.append((task.layer, cached)))
    return seen


def test_cache_hits_by_content_and_refits_a_changed_layer(tmp_path):
    layers, y_train, y_eval = digits_layers(n_layers=3, width=16)
    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    cache = tmp_path / "cache"
    assert _fitted(latents, cache) == [(name, False) for name in layers]
    assert len(list(cache.rglob("*.json"))) == 3
    assert sorted(_fitted(latents, cache)) == [(name, True) for name in layers]

    # re-extraction changed one layer's content: only that layer is refitted
    changed = dict(layers)
    changed["features.1"] = (layers["features.1"][0] * 2.0, layers["features.1"][1] * 2.0)
    write_latents(latents, changed, y_train, y_eval, run_dir, 0.9)
    assert sorted(_fitted(latents, cache)) == [("features.0", True), ("features.1", False), ("features.2", True)]
    # a different setting is a different key
    assert sorted(_fitted(latents, cache, C=0.5)) == [(name, False) for name in layers]
    # identical content under another folder and name is the same entry
    other_dir, other = make_latents(tmp_path, {"renamed": layers["features.0"]}, y_train, y_eval, name="other")
    assert _fitted(other, cache) == [("renamed", True)]


@pytest.mark.parametrize("setting, value", [("solver", "lbfgs"), ("C", 0.5), ("max_iter", 50), ("tol", 1e-3),
                                            ("standardize", True), ("train_samples", 200), ("seed", 1)])
def test_every_solver_setting_is_part_of_the_cache_key(tmp_path, setting, value):
    """Each setting that the fit reads (the saga defaults: C 1, max_iter 100, tol 1e-4, raw features, all samples,
    seed 0) changed alone is another probe, fitted once and then found in the cache: a setting missing from the
    key returned the record of the old setting, while probe_settings.json named the new one."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    cache = tmp_path / "cache"
    assert _fitted(latents, cache) == [("block0.conv", False)]
    assert _fitted(latents, cache, **{setting: value}) == [("block0.conv", False)]
    assert _fitted(latents, cache, **{setting: value}) == [("block0.conv", True)]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("split", ["train", "eval"])
def test_the_same_latents_with_other_labels_are_refitted_not_taken_from_the_cache(tmp_path, split):
    """The labels are half of a probe's input: latents kept as they were with another label file (a fixed label
    mapping, another subset's labels) are another probe. It is fitted anew, with the accuracy of a direct
    scikit-learn fit on the new labels, not the cached record of the old ones."""
    from sklearn.linear_model import LogisticRegression
    layers, y_train, y_eval = blob_layers(n_layers=1)
    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    cache = tmp_path / "cache"
    assert _fitted(latents, cache) == [("block0.conv", False)]
    relabelled = {"train": y_train, "eval": y_eval}
    relabelled[split] = np.random.default_rng(1).permutation(relabelled[split])  # same classes, other labels
    write_latents(latents, layers, relabelled["train"], relabelled["eval"], run_dir, 0.9)
    assert _fitted(latents, cache) == [("block0.conv", False)]

    [record] = run_jobs(jobs_from_latents(latents)[0], cache, progress=False)[0]
    x_train, x_eval = layers["block0.conv"]
    direct = LogisticRegression(solver="saga", max_iter=100, random_state=0).fit(x_train, relabelled["train"])
    assert record.eval_acc == direct.score(x_eval, relabelled["eval"]) < 0.6  # chance level: 3 classes
    assert record.train_acc == direct.score(x_train, relabelled["train"])


def test_the_seed_is_part_of_the_key_only_where_it_changes_the_result(tmp_path):
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    cache = tmp_path / "cache"
    assert {c for _, c in _fitted(latents, cache, solver="lbfgs", seed=0)} == {False}
    assert {c for _, c in _fitted(latents, cache, solver="lbfgs", seed=5)} == {True}  # starts from zeros
    assert {c for _, c in _fitted(latents, cache, solver="lbfgs", seed=5, train_samples=200)} == {False}
    assert {c for _, c in _fitted(latents, cache, solver="lbfgs", seed=6, train_samples=200)} == {False}
    assert {c for _, c in _fitted(latents, cache, seed=0)} == {False}  # saga shuffles with it
    assert {c for _, c in _fitted(latents, cache, seed=1)} == {False}


def test_a_worker_with_other_library_versions_refuses_to_fit(tmp_path):
    """The driver keys the cache with its versions; a (Dask) worker that differs must not fill it."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    (task,) = build_tasks(jobs_from_latents(latents)[0])
    assert run_task(task).layer == "block0.conv"
    elsewhere = replace(task, key={**task.key, "versions": {**task.key["versions"], "scikit_learn": "0.24.2"}})
    with pytest.raises(RunFailure, match="scikit_learn .* here, 0.24.2 in the job"):
        run_task(elsewhere)


def test_cached_record_keeps_its_seconds_and_gets_the_current_name(tmp_path):
    layers, y_train, y_eval = blob_layers(n_layers=2)
    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    cache = tmp_path / "cache"
    first = run_jobs(jobs_from_latents(latents)[0], cache, progress=False)[0]
    csv = (run_dir / "probe_performances.csv").read_bytes()
    second = run_jobs(jobs_from_latents(latents)[0], cache, progress=False)[0]
    assert first == second
    assert (run_dir / "probe_performances.csv").read_bytes() == csv


def test_a_layer_found_in_the_cache_under_another_name_and_index_is_written_under_its_own(tmp_path):
    """A run whose first layer holds what another run's second layer held takes that fit from the cache; its table
    and confusion files are those a fit with an empty cache writes (the seconds aside): its own layer name and
    index, not those of the run that filled the cache."""
    layers, y_train, y_eval = blob_layers(n_layers=2)
    make_latents(tmp_path, layers, y_train, y_eval, name="first")
    cache = tmp_path / "cache"
    run_jobs(jobs_from_latents(tmp_path / "first" / "latents")[0], cache, progress=False)
    tables = {}
    for name, cache_dir in (("second", cache), ("fresh", tmp_path / "empty cache")):
        run_dir, latents = make_latents(tmp_path, {"head": layers["block1.conv"]}, y_train, y_eval, name=name)
        run_jobs(jobs_from_latents(latents)[0], cache_dir, progress=False)
        tables[name] = pd.read_csv(run_dir / "probe_performances.csv").drop(columns="seconds")
        assert sorted(path.name for path in (run_dir / "probe_confusion").iterdir()) == ["001-head.npy",
                                                                                        "001-head.png"]
    assert len(list(cache.rglob("*.json"))) == 2  # the second run's layer was a hit
    assert tables["second"][["index", "layer"]].values.tolist() == [[1, "head"]]
    pd.testing.assert_frame_equal(tables["second"], tables["fresh"])


def test_unreadable_cache_entry_is_refitted(tmp_path):
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    cache = tmp_path / "cache"
    _fitted(latents, cache)
    entry = next(cache.rglob("*.json"))
    entry.write_text("{not json")
    assert _fitted(latents, cache) == [("block0.conv", False)]
    assert json.loads(entry.read_text())["record"]["layer"] == "block0.conv"


def test_an_unreadable_cache_entry_is_warned_of_once_per_job(tmp_path, caplog):
    """The job looks every layer up in the cache when it validates and again when it fits (another job may have
    stored it meanwhile): each damaged entry was said in two identical warnings."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    cache = tmp_path / "cache"
    run_jobs(jobs_from_latents(latents)[0], cache, progress=False)
    entry = next(cache.rglob("*.json"))
    entry.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="phd_lab.probes.cache"):
        run_jobs(jobs_from_latents(latents)[0], cache, progress=False)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignoring probe cache entry")]
    assert len(said) == 1 and str(entry) in said[0], said
    assert json.loads(entry.read_text())["record"]["layer"] == "block0.conv"


def test_a_probe_job_removes_the_cache_temp_files_a_killed_job_left_but_not_a_running_ones(tmp_path, caplog):
    """A job killed while it wrote a cache entry left its temp file (``<xx>/.<digest>.json.<random>.tmp``) behind
    for good. A job removes those that are 15 minutes old; another job sharing the cache may be writing one now."""
    import tempfile
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    cache = tmp_path / "cache"
    _fitted(latents, cache)
    [entry] = cache.rglob("*.json")
    temps = [Path(tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp")[1]) for _ in range(2)]
    killed, writing = temps
    old = time.time() - 16 * 60
    os.utime(killed, (old, old))
    with caplog.at_level(logging.INFO, logger="phd_lab.probes.cache"):
        run_jobs(jobs_from_latents(latents)[0], cache, progress=False)
    assert not killed.exists() and writing.exists()
    assert f"Removed {killed}, left half-written by a probe job that was killed" in caplog.text


def test_a_probe_job_removes_the_confusion_matrices_whose_entry_a_killed_job_never_wrote(tmp_path, caplog):
    """The matrix is written before its JSON entry: a job killed between the two left a matrix no entry names. A job
    removes those that are 15 minutes old (another job may be between its two writes now); an entry's own stays."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    cache = tmp_path / "cache"
    _fitted(latents, cache)
    [entry] = cache.rglob("*.json")
    [kept] = entry.parent.glob("*.npy")
    orphans = [entry.parent / f"{digest * 64}-{digest * 16}.npy" for digest in "ab"]
    for orphan in orphans:
        orphan.write_bytes(kept.read_bytes())
    old = time.time() - 16 * 60
    for path in (orphans[0], kept):
        os.utime(path, (old, old))
    with caplog.at_level(logging.INFO, logger="phd_lab.probes.cache"):
        run_jobs(jobs_from_latents(latents)[0], cache, progress=False)
    assert _fitted(latents, cache) == [("block0.conv", True)]  # the entry's own matrix is still read
    assert not orphans[0].exists() and orphans[1].exists() and kept.exists()
    assert f"Removed {orphans[0]}, a confusion matrix whose cache entry a killed probe job never wrote" in caplog.text


def test_the_job_says_how_many_latents_files_and_bytes_it_verifies_and_counts_them_in_a_bar(tmp_path, caplog,
                                                                                              capsys):
    """Hashing every latents file the fits read came with no word: 2.4 GB took 7 s of silence, and 300 GB would
    look like a 15-minute hang. An INFO line says how many files and GB are verified, and a progress bar counts
    the bytes hashed, unless the job's progress bars are off (--no-progress)."""
    from tqdm import tqdm
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    total = sum(path.stat().st_size for path in latents.glob("*.npy"))  # 2 layers of 2 splits, 2 label files
    with caplog.at_level(logging.INFO, logger="phd_lab.probes.job"):
        run_jobs(jobs_from_latents(latents)[0], tmp_path / "cache", progress=True)
    assert f"verifying 6 latents files ({total / 1e9:.2f} GB) against their manifests" in caplog.text
    bar = [line for line in capsys.readouterr().err.split("\r") if line.startswith("verifying sha256")][-1]
    assert f"{tqdm.format_sizeof(total)}/{tqdm.format_sizeof(total)}" in bar and "B/s" in bar
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="phd_lab.probes.job"):
        run_jobs(jobs_from_latents(latents)[0], tmp_path / "other", progress=False)
    assert "verifying 6 latents files" in caplog.text and "verifying sha256" not in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="phd_lab.probes.job"):  # every layer cached: nothing to hash
        run_jobs(jobs_from_latents(latents)[0], tmp_path / "other", progress=True)
    assert "verifying" not in caplog.text and "verifying sha256" not in capsys.readouterr().err


def test_a_cache_entry_keeps_its_confusion_matrix_as_a_npy_file_that_its_json_names(tmp_path):
    """A 1000-class matrix as nested lists took 32 MB per record and 13 MB of JSON per entry, and seconds to copy
    and write: the record holds it as one float64 array, and the cache stores it beside the JSON as ``.npy``, with
    its sha256 in the entry, the array equal to the layer's ``.npy`` in the run folder."""
    run_dir, latents = make_latents(tmp_path, *digits_layers(n_layers=1, width=16))
    cache = ResultCache(tmp_path / "cache")
    (task,) = build_tasks(jobs_from_latents(latents)[0])
    fitted = run_task(task)
    assert isinstance(fitted.confusion, np.ndarray) and fitted.confusion.dtype == np.float64
    assert fitted.confusion.shape == (10, 10)
    run_jobs(jobs_from_latents(latents)[0], cache.folder, progress=False)
    (entry,) = cache.folder.rglob("*.json")
    document = json.loads(entry.read_text())
    assert "confusion" not in document["record"] and set(document["confusion"]) == {"file", "sha256"}
    matrix_file = entry.parent / document["confusion"]["file"]
    assert sha256_file(matrix_file) == document["confusion"]["sha256"]
    written = run_dir / "probe_confusion" / f"{task.index:03d}-{task.layer}.npy"
    assert matrix_file.read_bytes() == written.read_bytes()
    stored = cache.get(task.key)
    np.testing.assert_array_equal(stored.confusion, fitted.confusion)
    assert stored.confusion.dtype == np.float64 and not stored.confusion.flags.writeable
    assert entry.stat().st_size < 2000


def test_a_cache_entry_whose_confusion_matrix_is_missing_or_damaged_is_refitted(tmp_path, caplog):
    """The matrix is written before the JSON entry, so an entry implies its matrix; one that went or was damaged
    afterwards makes the entry a miss, said in a warning, and the refit writes it again (the same fit gives the
    same matrix, under the same name: the entry's first record, its seconds too, is kept and handed on)."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    cache = tmp_path / "cache"
    assert _fitted(latents, cache) == [("block0.conv", False)]
    (matrix_file,) = cache.rglob("*.npy")
    original = matrix_file.read_bytes()
    for damage, said in ((lambda: matrix_file.unlink(), "cannot be read"),
                         (lambda: matrix_file.write_bytes(original[:-8] + np.float64(0.5).tobytes()), "damaged")):
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _fitted(latents, cache)
        assert "ignoring probe cache entry" in caplog.text and said in caplog.text
        assert matrix_file.read_bytes() == original  # refitted: nothing else writes it
        assert _fitted(latents, cache) == [("block0.conv", True)]


def test_a_damaged_cache_entry_replaced_by_a_refit_of_another_matrix_leaves_no_matrix_behind(tmp_path):
    """A refit whose matrix differs from the one the damaged entry named (another machine's fit on a shared cache)
    wrote its own matrix file beside the old one; the old one, named by no entry, stayed for good: the cleanup
    only removes matrices without a JSON entry of their name."""
    from phd_lab.probes.fit import ProbeRecord
    cache = ResultCache(tmp_path)
    key = {"layer": "conv"}
    first = ProbeRecord(1, "conv", "saga", 0.5, 0.5, 3, True, 1.0, 10, 10, 4, [0, 1], np.eye(2))
    cache.put(key, first)
    (old_matrix,) = tmp_path.rglob("*.npy")
    old_matrix.write_bytes(old_matrix.read_bytes()[:-8] + np.float64(0.5).tobytes())  # the entry is damaged
    refit = replace(first, confusion=np.array([[0.75, 0.25], [0.0, 1.0]]), seconds=2.0)
    assert cache.get(key) is None and cache.put(key, refit) is refit
    (new_matrix,) = tmp_path.rglob("*.npy")
    assert new_matrix != old_matrix and json.loads(cache.path(key).read_text())["confusion"]["file"] == new_matrix.name
    np.testing.assert_array_equal(ResultCache(tmp_path).get(key).confusion, refit.confusion)


def test_an_old_matrix_that_its_digests_entry_does_not_name_is_removed_by_the_cleanup(tmp_path):
    """A job killed after it lost the first-writer race of ``put`` on a shared cache left its matrix beside the
    winner's entry, which names another matrix: the cleanup only removed matrices without a JSON entry of their
    name, so it stayed for good. Such a matrix older than the cutoff goes; a fresh one (a job writing now), the
    named one and the matrices of an entry that cannot be parsed (refitted by ``put``, which removes them) stay."""
    from phd_lab.probes.fit import ProbeRecord
    cache, elsewhere = ResultCache(tmp_path / "cache"), ResultCache(tmp_path / "elsewhere")
    first = ProbeRecord(1, "conv", "saga", 0.5, 0.5, 3, True, 1.0, 10, 10, 4, [0, 1], np.eye(2))
    losers = [replace(first, confusion=np.array([[p, 1 - p], [0.0, 1.0]])) for p in (0.75, 0.5)]
    for key in ({"layer": "conv"}, {"layer": "damaged"}):
        cache.put(key, first)
        for loser in losers:  # the matrices the killed losers wrote before their entry lost the race
            elsewhere.put(key, loser)
            (matrix,) = elsewhere.folder.rglob("*.npy")
            shutil.copy(matrix, cache.path(key).parent)
            shutil.rmtree(elsewhere.folder)
    cache.path({"layer": "damaged"}).write_text("{not json")
    entry = cache.path({"layer": "conv"})
    named = entry.with_name(json.loads(entry.read_text())["confusion"]["file"])
    fresh = entry.with_name(f"{entry.stem}-{'0' * 16}.npy")
    fresh.write_bytes(named.read_bytes())
    long_ago = time.time() - 3600
    for matrix in tmp_path.rglob("*.npy"):
        if matrix != fresh:
            os.utime(matrix, (long_ago, long_ago))
    before = {path.name for path in tmp_path.rglob("*.npy")}
    assert len(before) == 7
    cache.remove_stale_temps()
    left = {path.name for path in tmp_path.rglob("*.npy")}
    assert left == {name for name in before if not name.startswith(entry.stem)} | {named.name, fresh.name}
    np.testing.assert_array_equal(cache.get({"layer": "conv"}).confusion, first.confusion)


@pytest.mark.parametrize("entry_kind", ["file disagrees with sha256", "symbolic link"])
def test_the_cleanup_removes_no_matrix_beside_an_entry_that_names_none_consistently(tmp_path, entry_kind):
    """The cleanup removes the other matrices of a digest only where its JSON entry is a plain file whose ``file``
    is the matrix its ``sha256`` names: an entry that is a link, or whose two fields disagree, names no matrix it
    could keep, so every old matrix of its digest stays (``put`` reads the same entry however damaged)."""
    from phd_lab.probes.fit import ProbeRecord
    cache, elsewhere = ResultCache(tmp_path / "cache"), ResultCache(tmp_path / "elsewhere")
    key = {"layer": "conv"}
    first = ProbeRecord(1, "conv", "saga", 0.5, 0.5, 3, True, 1.0, 10, 10, 4, [0, 1], np.eye(2))
    cache.put(key, first)
    elsewhere.put(key, replace(first, confusion=np.array([[0.75, 0.25], [0.0, 1.0]])))
    (loser,) = elsewhere.folder.rglob("*.npy")
    shutil.copy(loser, cache.path(key).parent)
    entry = cache.path(key)
    document = json.loads(entry.read_text())
    if entry_kind == "symbolic link":
        target = tmp_path / "entry.json"
        target.write_text(json.dumps(document))
        entry.unlink()
        entry.symlink_to(target)
    else:
        document["confusion"]["file"] = loser.name
        entry.write_text(json.dumps(document))
    long_ago = time.time() - 3600
    for matrix in cache.folder.rglob("*.npy"):
        os.utime(matrix, (long_ago, long_ago))
    before = sorted(path.name for path in cache.folder.rglob("*.npy"))
    assert len(before) == 2
    cache.remove_stale_temps()
    assert sorted(path.name for path in cache.folder.rglob("*.npy")) == before


def test_a_cache_entry_whose_record_has_a_field_of_another_type_is_refitted(tmp_path, capsys):
    """A cache entry on a shared folder whose record holds a value of another type (``"eval_acc": "high"``, a
    field gone or a count that is a string) was taken as it was: the probe job failed with a traceback (``TypeError:
    unsupported operand type(s) for /: 'str' and 'float'`` writing the run's table, and a logging error before it).
    Such an entry is a miss, said in a warning that names the field, and the layer is fitted again."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    cache = tmp_path / "cache"
    assert _fitted(latents, cache) == [("block0.conv", False)]
    (entry,) = cache.rglob("*.json")
    original = json.loads(entry.read_text())
    for field, value, said in (("eval_acc", "high", "its eval_acc is \"high\""), ("n_iter", 2.5, "its n_iter"),
                               ("converged", "yes", "its converged"), ("train_acc", 1.5, "its train_acc"),
                               ("classes", ["a"], "its classes"), ("seconds", None, "lacks ['seconds']")):
        document = json.loads(json.dumps(original))
        if value is None:
            del document["record"][field]
        else:
            document["record"][field] = value
        entry.write_text(json.dumps(document))
        capsys.readouterr()
        assert cli("--latents", str(latents), "-mp", "0", "--cache-dir", str(cache)) == 0
        err = capsys.readouterr().err
        assert "ignoring probe cache entry" in err and said in err and "Traceback" not in err, (field, err)
        assert json.loads(entry.read_text())["record"].get(field) not in ("high", 2.5, "yes", 1.5, ["a"], None)
        assert _fitted(latents, cache) == [("block0.conv", True)]


def test_a_cache_entry_whose_record_changed_to_other_valid_numbers_is_refitted(tmp_path, capsys):
    """The confusion matrix of an entry carried its sha256, its record none: an accuracy or count changed in the
    JSON (a digit flipped on a shared file system, 0.98 read as 0.99) was taken into the run's table as it was.
    The entry holds its record's sha256; a record that no longer matches is a miss, said in a warning, and the layer
    is fitted again. An entry written before (without that sha256) is still a hit."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    cache = tmp_path / "cache"
    assert _fitted(latents, cache) == [("block0.conv", False)]
    (entry,) = cache.rglob("*.json")
    original = json.loads(entry.read_text())
    assert set(original) == {"key", "record", "record_sha256", "confusion"}
    for field in ("eval_acc", "n_iter"):
        document = json.loads(json.dumps(original))
        document["record"][field] = document["record"][field] / 2 if field == "eval_acc" else 1
        entry.write_text(json.dumps(document))
        capsys.readouterr()
        assert cli("--latents", str(latents), "-mp", "0", "--cache-dir", str(cache)) == 0
        err = capsys.readouterr().err
        assert "ignoring probe cache entry" in err and "its record is damaged (its sha256 differs)" in err, err
        assert json.loads(entry.read_text())["record"][field] == original["record"][field]  # fitted again
    older = {k: v for k, v in original.items() if k != "record_sha256"}
    entry.write_text(json.dumps(older))
    assert _fitted(latents, cache) == [("block0.conv", True)]


def test_the_job_lets_a_runs_confusion_matrices_go_once_their_files_are_written(tmp_path):
    """The job kept every record whole to its end (and so did the runner): a grid of 1000-class runs held 32 MB
    a layer. Once a run's files are written its records keep no matrix, fitted or cached; the files hold them."""
    run_dir, latents = make_latents(tmp_path, *digits_layers(n_layers=2, width=16))
    for repeat in range(2):  # fitted, then every layer from the cache
        records = run_jobs(jobs_from_latents(latents)[0], tmp_path / "cache", progress=False)[0]
        assert [record.confusion for record in records] == [None, None]
        for record in records:
            matrix = np.load(run_dir / "probe_confusion" / f"{record.index:03d}-{record.layer}.npy")
            assert matrix.shape == (10, 10)
    tasks = build_tasks(jobs_from_latents(latents)[0])
    delivered = []
    kept = run_probes(tasks, ResultCache(tmp_path / "cache"), progress=False,
                      on_record=lambda task, record, cached: delivered.append(record))
    assert [record.confusion for record in kept] == [None, None]
    assert [record.confusion_matrix().shape for record in delivered] == [(10, 10), (10, 10)]
    assert run_probes(tasks, ResultCache(tmp_path / "cache"), progress=False)[0].confusion.shape == (10, 10)
    # the cache hits found while validating are checked and let go: the job reads each back when it writes its run
    stamps, hits = validate_jobs(jobs_from_latents(latents)[0], cache=ResultCache(tmp_path / "cache"), progress=False)
    assert len(hits) == 2 and all(record.confusion is None for record in hits.values())


def _put_in_turn(folder: str, seconds: float, barrier, results) -> None:
    """Put a record of ``seconds`` under 40 keys, each at the moment the other process puts its own."""
    from phd_lab.probes.fit import ProbeRecord
    cache = ResultCache(folder)
    record = ProbeRecord(1, "conv", "saga", 0.5, 0.5, 3, True, seconds, 10, 10, 4)
    kept = []
    for key in range(40):
        barrier.wait()
        kept.append(cache.put({"layer": key}, record).seconds)
    results.put((seconds, kept))


def test_of_two_jobs_putting_the_same_key_at_once_both_keep_the_first_stored_record(tmp_path):
    """"The first writer wins" read the entry, then wrote it: two jobs sharing a cache could both find it missing,
    and the one that wrote last replaced the record the other had already written into its run's table."""
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    writers = [context.Process(target=_put_in_turn, args=(str(tmp_path), seconds, barrier, results))
               for seconds in (1.0, 2.0)]
    for writer in writers:
        writer.start()
    kept = dict(results.get(timeout=120) for _ in writers)
    for writer in writers:
        writer.join(30)
    cache = ResultCache(tmp_path)
    stored = [cache.get({"layer": key}).seconds for key in range(40)]
    assert kept[1.0] == kept[2.0] == stored
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_cache_entry_stored_under_another_key_is_not_taken(tmp_path, caplog):
    """An entry is found by the digest of its key, and it holds the key itself: an entry whose key differs (a
    copied or damaged cache file) is a miss, not another probe's result."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    cache = ResultCache(tmp_path / "cache")
    first, second = build_tasks(jobs_from_latents(latents)[0])
    run_probes([first], cache, progress=False)
    cache.path(second.key).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(cache.path(first.key), cache.path(second.key))
    with caplog.at_level(logging.WARNING):
        assert cache.get(second.key) is None
    assert "its key does not match" in caplog.text and cache.get(first.key) is not None


def test_the_cache_key_holds_the_probe_algorithms_version_and_torchs_for_the_torch_solver():
    """A change of what a solver's record means (ALGORITHM_VERSIONS), or another torch for lbfgs-torch, must not
    hit the records of the old one, and only that solver's records are refitted (lbfgs-torch's converged changed in
    version 3: the saga and lbfgs records of version 2 stay valid); torch's version does not key the other solvers."""
    import torch

    from phd_lab.probes.cache import ALGORITHM_VERSIONS, library_versions
    for solver in ("saga", "lbfgs", "lbfgs-torch"):
        assert library_versions(solver)["probe_algorithm"] == str(ALGORITHM_VERSIONS[solver])
    assert library_versions("saga")["probe_algorithm"] == library_versions("lbfgs")["probe_algorithm"] == "2"
    assert library_versions("lbfgs-torch")["probe_algorithm"] == "3"
    assert "torch" not in library_versions("lbfgs")
    assert library_versions("lbfgs-torch")["torch"] == torch.__version__


def test_layers_are_fitted_largest_first_and_a_failed_runs_other_layers_not_at_all(tmp_path):
    """The largest layers start first (the longest fits should not be left for the end, with one core busy); a
    run whose latents turn out NaN fails alone, and its layers not yet fitted are skipped: no fit for nobody."""
    rng = np.random.default_rng(0)
    y_train, y_eval = rng.integers(0, 3, 200), rng.integers(0, 3, 100)
    widths = {"narrow": 4, "wide": 32, "middle": 12}
    layers = {name: (rng.normal(size=(200, d)).astype(np.float32), rng.normal(size=(100, d)).astype(np.float32))
              for name, d in widths.items()}
    _, healthy = make_latents(tmp_path, layers, y_train, y_eval, name="healthy")
    broken = {name: (train + 1.0, evaluation) for name, (train, evaluation) in layers.items()}  # other data
    broken["wide"] = (np.full((200, 32), np.nan, np.float32), layers["wide"][1])
    _, diverged = make_latents(tmp_path, broken, y_train, y_eval, name="diverged")
    jobs = jobs_from_latents(healthy, {"solver": "lbfgs"})[0] + jobs_from_latents(diverged, {"solver": "lbfgs"})[0]
    tasks = build_tasks(jobs)
    order: list[tuple[int, str]] = []
    cache = ResultCache(tmp_path / "cache")
    with pytest.raises(RunFailure, match="NaN"):
        run_probes(tasks, cache, progress=False, on_record=lambda task, record, cached: order.append((task.job,
                                                                                                       task.layer)))
    assert order == [(0, "wide"), (0, "middle"), (0, "narrow")]  # the diverged run's wide layer failed first
    assert [cache.get(task.key) is not None for task in tasks] == [True, True, True, False, False, False]


def test_parallel_workers_give_the_same_records_as_in_process(tmp_path):
    run_dir, latents = make_latents(tmp_path, *digits_layers(n_layers=3, width=16))
    serial = run_jobs(jobs_from_latents(latents)[0], tmp_path / "c0", workers=0, progress=False)[0]
    matrices = {path.name: path.read_bytes() for path in (run_dir / "probe_confusion").glob("*.npy")}
    parallel = run_jobs(jobs_from_latents(latents)[0], tmp_path / "c2", workers=2, progress=False)[0]
    strip = lambda records: [replace(r, seconds=0) for r in records]  # noqa: E731
    assert strip(serial) == strip(parallel)
    assert len(matrices) == 3  # the matrices came from the worker processes whole
    assert {path.name: path.read_bytes() for path in (run_dir / "probe_confusion").glob("*.npy")} == matrices


PROBE_LOG_ON_A_FULL_DISK = """
import logging, sys
from phd_lab.probes.probe_log import ProbeLogs

logging.getLogger().setLevel(logging.INFO)
with ProbeLogs([sys.argv[1]]) as logs:
    logs.write(logging.INFO, "a line longer than the file may grow " + "x" * 300)
    logs.write(logging.INFO, "a line after the file is full")
    raise ValueError("the error that ended the job")
"""


def test_a_probe_log_that_cannot_be_written_leaves_the_job_s_own_error(tmp_path):
    """A full disk (files may grow to 256 bytes): closing the probe log raised its flush's OSError in place of
    the error that ended the job."""
    from tests.conftest import ROOT, file_size_limit
    result = subprocess.run([sys.executable, "-c", PROBE_LOG_ON_A_FULL_DISK, str(tmp_path / "probe.log")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, preexec_fn=file_size_limit(256))
    assert result.returncode == 1
    assert result.stderr.rstrip().splitlines()[-1] == "ValueError: the error that ended the job", result.stderr
    assert "--- Logging error ---" not in result.stderr  # one per record after the disk filled up


WORKER_TASKS = """
import builtins, logging, logging.handlers, os, sys

log = logging.getLogger("worker_tasks")
log.addHandler(logging.handlers.MemoryHandler(100, target=logging.StreamHandler(sys.stdout)))
log.setLevel(logging.INFO)

class Canary:
    def __del__(self, write=os.write):
        write(1, b"torn down\\n")

def task():
    builtins.canary = Canary()  # freed in the interpreter's teardown, if there is one
    sys.stdout.write("written by the task\\n")  # buffered: stdout is a pipe
    log.info("logged by the task")  # held by the handler until it is flushed
"""

WORKER_POOL = """
import multiprocessing, os
from concurrent.futures import ProcessPoolExecutor
from phd_lab.worker_processes import init_worker
import worker_tasks

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                             initargs=(os.getpid(),)) as pool:
        pool.submit(worker_tasks.task).result()
        process = next(iter(pool._processes.values()))
    print("worker exit code", process.exitcode)
"""


def test_a_worker_ends_with_its_output_flushed_and_without_the_interpreters_teardown(tmp_path):
    """Tearing down a worker's scikit-learn and SciPy takes about half a second that the job waits for;
    the worker skips it, but what it wrote or logged must still arrive."""
    (tmp_path / "worker_tasks.py").write_text(WORKER_TASKS)
    (tmp_path / "pool.py").write_text(WORKER_POOL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, str(tmp_path / "pool.py")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["written by the task", "logged by the task", "worker exit code 0"]


# --- config mode -----------------------------------------------------------------------------------------------

def _config(tmp_path: Path, **extra) -> Path:
    config = {"model": "vgg11", "model_args": {"width": [0.25, 0.125]}, "dataset": "Digits", "epoch": 1,
              "logs_dir": str(tmp_path / "logs"), **extra}
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(config))
    return path


def _latents_for_run(config: Path, index: int, layers=None) -> RunDir:
    cfg = Grid(load_config_file(config))[index]
    rundir = RunDir.for_run(cfg).create()
    layers, y_train, y_eval = layers or blob_layers(n_layers=2)
    write_latents(rundir.latents(cfg.latents_dir), layers, y_train, y_eval, rundir.root, 0.95)
    return rundir


def test_config_mode_probes_runs_with_latents_using_config_keys_and_overrides(tmp_path, capsys):
    config = _config(tmp_path, probe_solver="lbfgs", probe_C=0.5)
    with_latents = _latents_for_run(config, 1)
    without = RunDir.for_run(Grid(load_config_file(config))[0])
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress"]) == 0
    assert "1 run(s) without latents (skipped): 0\n" in capsys.readouterr().err
    table = pd.read_csv(with_latents.probe_csv)
    assert set(table["solver"]) == {"lbfgs"} and len(table) == 2
    assert not without.probe_csv.exists()
    assert (tmp_path / "logs" / ".probe_cache").is_dir()
    cache = tmp_path / "own-cache"
    assert cli("--config", str(config), "-mp", "0", "--solver", "saga", "--cache-dir", str(cache)) == 0
    assert set(pd.read_csv(with_latents.probe_csv)["solver"]) == {"saga"}
    assert len(list(cache.rglob("*.json"))) == 2


def test_probe_standardize_key_and_the_options_that_override_it_reach_the_fits(tmp_path):
    config = _config(tmp_path, probe_solver="lbfgs", probe_standardize=False)
    rundir = _latents_for_run(config, 1)
    cache = tmp_path / "cache"
    runs = {}
    for option in ([], ["--standardize"], ["--no-standardize"]):
        assert cli("--config", str(config), "-mp", "0", "--cache-dir", str(cache), *option) == 0
        recorded = json.loads(rundir.probe_settings.read_text())["settings"]["standardize"]
        runs[recorded] = pd.read_csv(rundir.probe_csv)
    assert set(runs) == {False, True}
    assert len(list(cache.rglob("*.json"))) == 4  # two layers fitted twice: the setting is part of the cache key
    assert not runs[False]["n_iter"].equals(runs[True]["n_iter"])  # raw features take lbfgs another path


def test_probe_settings_do_not_move_the_run_and_cannot_be_swept_over_one_run(tmp_path, capsys):
    config = _config(tmp_path, model_args={"width": 0.25})
    rundir = _latents_for_run(config, 0)
    swept = _config(tmp_path, model_args={"width": 0.25}, probe_C=[0.5, 2.0])
    grid = Grid(load_config_file(swept))
    assert {RunDir.for_run(cfg).root for cfg in grid} == {rundir.root}  # probe keys are not part of the run
    _assert_usage_error(capsys, None, "--config", str(swept), "-mp", "0", match="are the same trained run")
    assert not rundir.probe_csv.exists()
    # a command-line option that sets the swept key makes the points one job (it was refused all the same)
    assert cli("--config", str(swept), "-mp", "0", "--C", "3") == 0
    assert json.loads(rundir.probe_settings.read_text())["settings"]["C"] == 3.0


def test_config_mode_with_latents_dir_and_run_id(tmp_path, capsys):
    scratch = tmp_path / "scratch"
    config = _config(tmp_path, latents_dir=str(scratch), run_id=["a", "b"])
    raw = load_config_file(config)
    raw["run_id"] = "b"
    cfg = Grid(raw)[1]
    rundir = RunDir.for_run(cfg).create()
    latents = rundir.latents(cfg.latents_dir)
    assert scratch in latents.parents
    # mirrored as documented: <latents_dir>/<model>/<dataset>_<resolution>/<run_id>/<variant>/latents
    assert latents.relative_to(scratch).parts == (cfg.model, f"{cfg.dataset}_{cfg.resolution}", "b",
                                                  rundir.root.name, "latents")
    layers, y_train, y_eval = blob_layers(n_layers=2)
    write_latents(latents, layers, y_train, y_eval, rundir.root, 0.95)
    assert cli("--config", str(config), "--run-id", "b", "-mp", "0") == 0
    assert len(pd.read_csv(rundir.probe_csv)) == 2
    _assert_usage_error(capsys, None, "--config", str(config), "--run-id", "a", match="No latents found")
    # a mirrored folder without its manifest cannot tell a running extraction from a dead one: it says both
    (latents / "manifest.json").unlink()
    _assert_usage_error(capsys, None, "--latents", str(latents), match="the extraction is unfinished, still "
                                                                        "running or killed")


def test_a_folder_no_extraction_wrote_to_is_not_called_an_unfinished_extraction(tmp_path, capsys):
    """--latents given a data folder or a logs folder (nothing an extraction writes, in no run folder) said "the
    extraction is unfinished ... rerun the training command with the 'extract' step", which cannot help."""
    data = tmp_path / "data" / "shapes"
    (data / "train").mkdir(parents=True)
    (data / "train" / "circle.png").write_bytes(b"\x89PNG")
    for folder in (data, tmp_path / "data"):
        _assert_usage_error(capsys, None, "--latents", str(folder), match=f"{str(folder)!r} is not a latents "
                            "folder: it holds no manifest.json and no latents files (train-<layer>.npy, "
                            "eval-<layer>.npy), and it lies in no run folder")
    # what a killed extraction leaves (a temp file, or finished .npy files) is still an unfinished extraction
    (data / ".train-features.0.npy.abcd1234.tmp").write_bytes(b"")
    _assert_usage_error(capsys, None, "--latents", str(data), match="the extraction is unfinished")


@pytest.mark.parametrize("mirrored", [False, True])
def test_a_copied_run_folder_without_its_config_never_gets_the_original_runs_results(tmp_path, capsys, mirrored):
    """A logs tree copied elsewhere whose run folder lost its logged config: its manifest still names the original
    run folder, whose last four path parts match, so it passed as a latents_dir mirror and the job replaced the
    original run's probe table, settings and log (exit 0, a warning only). A mirror is now one only where the
    named run's logged config names a latents_dir (a copied mirror of a latents_dir still probes its run)."""
    (tmp_path / "original").mkdir()
    scratch = tmp_path / "original" / "scratch"
    config = _config(tmp_path / "original", **({"latents_dir": str(scratch)} if mirrored else {}))
    cfg = Grid(load_config_file(config))[0]
    original = _latents_for_run(config, 0)
    (original.root / "run_config.json").write_text(json.dumps({"latents_dir": cfg.latents_dir}))
    latents = original.latents(cfg.latents_dir)
    assert cli("--latents", str(latents), "-mp", "0") == 0
    before = original.probe_csv.read_bytes()
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    copy = tmp_path / "copy" / latents.relative_to(tmp_path / "original")
    for logged in copy.parent.glob("*_config.json"):
        logged.unlink()
    code = cli("--latents", str(copy), "-mp", "0", "--solver", "lbfgs")
    err = " ".join(capsys.readouterr().err.split())
    if mirrored:  # a real mirror: the results go to the run folder the manifest names, as before
        assert code == 0, err
        assert set(pd.read_csv(original.probe_csv)["solver"]) == {"lbfgs"}
        return
    assert code == 2 and "Traceback" not in err, err
    assert (f"but the latents lie in {str(copy.parent)!r}, a copy of that run folder without its logged config"
            in err), err
    assert "'run_config.json' names no latents_dir" in err and "Nothing was written" in err
    assert original.probe_csv.read_bytes() == before


def test_latents_dir_given_to_the_extract_step_is_where_the_job_and_the_analysis_look(tmp_path):
    """The extract step's own latents_dir parameter placed latents that neither the probe job (--config) nor the
    analysis found: both read only the top-level key."""
    from phd_lab.analysis.run_tables import latents_manifest_path, load_run
    scratch = tmp_path / "step-latents"
    config = _config(tmp_path, model_args={"width": 0.25},
                     post_processing=[{"name": "extract", "latents_dir": str(scratch)}])
    cfg = Grid(load_config_file(config))[0]
    rundir = RunDir.for_run(cfg).create()
    latents = rundir.latents(str(scratch))  # where the step writes them (steps/extract.py)
    write_latents(latents, *blob_layers(n_layers=2), rundir.root, 0.95)
    (rundir.root / rundir.config.name).write_text(json.dumps(cfg.values))  # the run's logged config
    assert cli("--config", str(config), "-mp", "0", "--solver", "lbfgs") == 0
    assert len(pd.read_csv(rundir.probe_csv)) == 2
    assert latents_manifest_path(load_run(rundir)) == latents / "manifest.json"


def test_probe_job_imports_no_torch_and_no_registries(tmp_path):
    """Also in config mode while some runs of the grid have no latents yet (probing beside training)."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    config = _config(tmp_path)
    _latents_for_run(config, 1)
    code = ("import sys; from phd_lab.probes.cli import probe_cli; "
            f"rc = probe_cli(['--latents', {str(latents)!r}, '-mp', '0', '--no-progress', '-q']) or "
            f"probe_cli(['--config', {str(config)!r}, '-mp', '0', '--no-progress', '-q']); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'registries', 'torchvision')); "
            "assert rc == 0 and not bad, (rc, bad)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_probe_job_with_worker_processes_imports_no_scikit_learn_in_its_driver(tmp_path):
    """Importing scikit-learn takes 1.5-2.7 s, and the driver needs only its version for the cache key: the
    workers import it. The version is the one the fits report, as before, so earlier cache entries still hit."""
    import sklearn

    from phd_lab.environment import versions
    from phd_lab.probes.cache import library_versions
    assert library_versions("saga")["scikit_learn"] == versions()["scikit_learn"] == sklearn.__version__
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    code = ("import sys; from phd_lab.probes.cli import probe_cli; "
            f"rc = probe_cli(['--latents', {str(latents)!r}, '-mp', '1', '--no-progress', '-q', '--cache-dir', "
            f"{str(tmp_path / 'cache')!r}]); "
            "assert rc == 0 and 'sklearn' not in sys.modules, rc")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(latents.parent / "probe_performances.csv")) == 2


def test_in_process_fits_limit_every_thread_pool_to_one_thread(tmp_path):
    """Also the OpenMP/OpenBLAS copies that scikit-learn and SciPy load only when a fit first needs them."""
    code = ("import os, sys; from phd_lab.probes.runner import _single_threaded; "
            "from threadpoolctl import threadpool_info; "
            "assert not any(m.startswith(('sklearn', 'scipy')) for m in sys.modules), 'preloaded'; "
            "restore = _single_threaded('lbfgs'); "
            "from sklearn.linear_model import LogisticRegression; "
            "pools = [(p['filepath'], p['num_threads']) for p in threadpool_info()]; "
            "assert pools and all(n == 1 for _, n in pools), pools; "
            "restore(); "
            "assert os.cpu_count() == 1 or max(p['num_threads'] for p in threadpool_info()) > 1")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr


# --- errors: exit 2, a clear message, nothing written -----------------------------------------------------------

def _assert_usage_error(capsys, run_dir: Path | None, *argv: str, match: str) -> None:
    assert cli(*argv) == 2
    err = " ".join(capsys.readouterr().err.split())  # report_error wraps at 110 columns
    assert match in err, err
    assert "Traceback" not in err
    if run_dir is not None:
        assert not (run_dir / "probe_performances.csv").exists()
        assert not (run_dir / "probe_confusion").exists()
        assert not (run_dir / ".probe_cache").exists()
        assert not (run_dir / ".probe.lock").exists() and not (run_dir / "probe.log").exists()


def test_error_in_a_solver_option_is_named_before_the_latents_are_looked_up(tmp_path, capsys):
    """Was "No latents found" first, so a typo in an option surfaced only once the latents existed."""
    missing = str(tmp_path / "nope")
    _assert_usage_error(capsys, None, "--latents", missing, "--train-samples", "0",
                        match="command line --train-samples: the key 'probe_train_samples' must be an integer ≥ 1")
    _assert_usage_error(capsys, None, "--latents", missing, "--probe-device", "bogus",
                        match="--probe-device must be cpu, cuda or cuda:N; got 'bogus'")
    _assert_usage_error(capsys, None, "--config", str(_config(tmp_path)), "--C", "0",
                        match="command line --C: the key 'probe_C' must be a number ≥ 1e-30")


def test_error_no_latents(tmp_path, capsys):
    _assert_usage_error(capsys, None, "--latents", str(tmp_path / "nope"), match="No latents found")
    config = _config(tmp_path)
    _assert_usage_error(capsys, None, "--config", str(config), match="No latents found for any of the 2 run(s)")
    # a config without the extract step was told to train its runs 'with the extract step' by a command that
    # extracts nothing: the message says to add the step first
    _assert_usage_error(capsys, None, "--config", str(config),
                        match=f"The config's post_processing lists no 'extract' step: add \"extract\" to it, then "
                              f"run python main.py --config {config} (a trained run is not trained again")
    # --run-id names other runs than the config's: the message says so and its advice keeps the option
    _assert_usage_error(capsys, None, "--config", str(config), "--run-id", "rep 2",
                        match=f"the 2 run(s) of {str(config)!r} with --run-id 'rep 2' (looked for")
    config = _config(tmp_path, post_processing=["flops", {"name": "extract", "dtype": "float16"}])
    _assert_usage_error(capsys, None, "--config", str(config), "--run-id", "rep 2",
                        match=f"Train the runs with the 'extract' post-processing step first (python main.py "
                              f"--config {config} --run-id 'rep 2').")


def test_error_misspelt_registry_name_is_named_not_reported_as_missing_latents(tmp_path, capsys):
    """A misspelt name gives a run folder that cannot exist: when no run has latents, say which key is wrong."""
    config = _config(tmp_path, model="vgg111")
    _assert_usage_error(capsys, None, "--config", str(config),
                        match="(run 0): Unknown model 'vgg111' for key 'model'. Did you mean 'vgg11'")
    config = _config(tmp_path, metrics=["Accuracy", "Acuracy"])
    _assert_usage_error(capsys, None, "--config", str(config), match="Unknown metric 'Acuracy' for key 'metrics'")
    (tmp_path / "broken_models.py").write_text("import not_installed_on_this_probe_node\n")
    config = _config(tmp_path, registries={"models": "broken_models.py"})
    _assert_usage_error(capsys, None, "--config", str(config), match="No latents found for any of the 2 run(s)")


def test_a_grid_with_one_invalid_manifest_exits_2_and_writes_into_no_run(tmp_path, capsys):
    """DESIGN.md: exit 2 for invalid input data writes nothing, also into the grid's runs whose latents are valid
    (unlike an unfinished extraction, which the job leaves for later with exit 1)."""
    config = _config(tmp_path, probe_solver="lbfgs")
    valid, damaged = _latents_for_run(config, 0), _latents_for_run(config, 1)
    manifest = damaged.latents() / "manifest.json"
    content = json.loads(manifest.read_text())
    content["layers"][0]["shape"] = [5, 5]
    manifest.write_text(json.dumps(content))
    _assert_usage_error(capsys, valid.root, "--config", str(config), "-mp", "0",
                        match=f"Latents manifest {str(manifest)!r} is incomplete or invalid: layers[0].shape is [5, 5]")
    for run in (valid, damaged):
        assert not run.probe_csv.exists() and not (run.root / "probe.log").exists()
    assert not (tmp_path / "logs" / ".probe_cache").exists()


def _three_runs(tmp_path: Path) -> tuple[Path, list[RunDir]]:
    """A grid of three runs with valid latents (and probe_solver lbfgs)."""
    config = _config(tmp_path, model_args={"width": [0.25, 0.125, 0.5]}, probe_solver="lbfgs")
    return config, [_latents_for_run(config, index) for index in range(3)]


def test_a_grid_refused_for_one_runs_latents_names_that_run_and_the_command_that_extracts_them_again(
        tmp_path, capsys):
    """The error named the file only, and "python main.py --config ..." as its remedy: which grid run it was, and
    that no other run was probed, were left to the user. Now the run and its --index command are named."""
    config, runs = _three_runs(tmp_path)
    damaged = runs[1].latents() / "train-block1.conv.npy"
    damaged.write_bytes(damaged.read_bytes()[:200])  # cut short: its header promises more than it holds
    _assert_usage_error(capsys, runs[0].root, "--config", str(config), "-mp", "0",
                        match=f"error: run 1 (vgg11-Digits-r32-bs64-e1): Latents file {str(damaged)!r} is not a "
                              f"readable .npy array")
    _assert_usage_error(capsys, runs[2].root, "--config", str(config), "-mp", "0",
                        match=f"No run was probed and nothing was written: `python main.py --config {config} --index "
                              f"1` extracts its latents again from its checkpoint (nothing is retrained)")
    assert not (tmp_path / "logs" / ".probe_cache").exists()


def test_a_grid_job_names_every_run_whose_latents_are_invalid_not_only_the_first(tmp_path, capsys):
    """Each run with invalid latents was found only once the one before it was repaired (a probe job of hours
    refused again and again, the latents of all runs hashed each time). Headers, label lengths and layer sets of
    every run are read first, then every run's files are hashed, and the error names all runs found."""
    config, runs = _three_runs(tmp_path)
    np.save(runs[0].latents() / "eval-labels.npy", np.load(runs[0].latents() / "eval-labels.npy")[:-3])
    manifest = runs[2].latents() / "manifest.json"
    content = json.loads(manifest.read_text())
    del content["layers"][1]["eval"]
    manifest.write_text(json.dumps(content))
    _assert_usage_error(capsys, runs[1].root, "--config", str(config), "-mp", "0",
                        match="The latents of run 2 (vgg11-Digits-r32-bs64-e1) are invalid too. No run was probed and "
                              f"nothing was written: `python main.py --config {config}` (or one --index per run) "
                              f"extracts their latents again")
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress"]) == 2  # the other run's error is warned
    assert "run 2 (vgg11-Digits-r32-bs64-e1): The train and eval layer sets in" in capsys.readouterr().err
    for run in runs:  # now the files agree with their headers, but not with their sha256
        write_latents(run.latents(), *blob_layers(n_layers=2), run.root, 0.95)
    for run in runs[::2]:
        np.save(run.latents() / "eval-block0.conv.npy", np.load(run.latents() / "eval-block0.conv.npy")[::-1])
    _assert_usage_error(capsys, runs[1].root, "--config", str(config), "-mp", "0",
                        match=f"error: run 0 (vgg11-Digits-r32-bs64-e1): Latents file "
                              f"{str(runs[0].latents() / 'eval-block0.conv.npy')!r} has sha256")
    _assert_usage_error(capsys, runs[1].root, "--config", str(config), "-mp", "0",
                        match="The latents of run 2 (vgg11-Digits-r32-bs64-e1) are invalid too.")


def test_a_trained_run_whose_configured_extraction_has_not_run_is_named_with_its_command(tmp_path, capsys):
    """A trained run without latents was only counted among the runs "without latents (skipped)" (INFO, exit 0),
    as a run not trained yet is, though its config lists 'extract': the job ended 0 with that run not probed. Now
    it is warned of with the command that extracts its latents, and the job exits 1 once the others are probed; a
    run that a process is training now is still skipped quietly, as is one whose config lists no extract step."""
    from phd_lab.lock import RunLock
    config = _config(tmp_path, probe_solver="lbfgs", post_processing=["extract"])
    probed = _latents_for_run(config, 0)
    trained = RunDir.for_run(Grid(load_config_file(config))[1]).create()
    trained.checkpoint.write_bytes(b"a checkpoint")
    with RunLock(trained.lock):  # its training (or post-processing) is at work on it
        assert cli("--config", str(config), "-mp", "0") == 0
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress"]) == 1
    said = " ".join(capsys.readouterr().err.split())
    assert (f"run(s) 1 of {config}: trained (a checkpoint, and no process at work on the run) but without latents, "
            f"though the config's post_processing lists 'extract'") in said
    assert (f"Not every run of {config} was probed (run(s) 1: trained, latents not extracted (python main.py --config "
            f"{config} --index 1 extracts them)); the 1 probe table(s) listed above are written") in said
    assert probe_csv_written(probed) and not trained.probe_csv.exists()
    config = _config(tmp_path, probe_solver="lbfgs")  # the same runs, no extract step: nothing is missing
    assert cli("--config", str(config), "-mp", "0") == 0


def test_a_latents_link_into_a_purged_scratch_space_is_named_not_read_as_latents_never_extracted(tmp_path, capsys):
    """A run whose latents folder is a link into a scratch space since purged (or on a file system this node does
    not mount) was read as a run whose extraction never ran, with a command that then failed on the link ('File
    exists'); with --latents, as "not a folder". Both now say where the link leads and what to do; the grid job
    probes nothing (as for other runs whose latents cannot be read) and writes nothing."""
    config = _config(tmp_path, probe_solver="lbfgs", post_processing=["extract"])
    probed = _latents_for_run(config, 0)
    linked = RunDir.for_run(Grid(load_config_file(config))[1]).create()
    linked.checkpoint.write_bytes(b"a checkpoint")
    linked.latents().symlink_to(tmp_path / "scratch" / "purged")
    _assert_usage_error(capsys, probed.root, "--config", str(config), "-mp", "0",
                        match=f"error: run 1 (vgg11-Digits-r32-bs64-e1): Its latents folder {str(linked.latents())!r} "
                              f"cannot be read: it is a symbolic link to {str(tmp_path / 'scratch' / 'purged')!r}, "
                              f"which does not exist (deleted, e.g. a scratch space purged, or on a file system not "
                              f"mounted on this machine).")
    _assert_usage_error(capsys, linked.root, "--latents", str(linked.latents()), "-mp", "0",
                        match=f"No latents found at {str(linked.latents())!r}: it is a symbolic link to")
    assert not (tmp_path / "scratch").exists()


def probe_csv_written(run: RunDir) -> bool:
    return run.probe_csv.exists() and len(pd.read_csv(run.probe_csv)) == 2


def test_error_manifest_missing(tmp_path, capsys):
    run_dir, latents = make_latents(tmp_path)
    (latents / "manifest.json").unlink()
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), match="has no manifest.json: the extraction is "
                                                                        "unfinished")



def test_a_run_folder_without_latents_given_to_latents_is_named_as_a_run_folder(tmp_path, capsys):
    """`--latents <run folder>` of a run trained without the extract step was said to be an extraction that is
    unfinished, still running or killed; it is a run folder, and the message says what makes its latents."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = run_dir / "vgg11-Digits-r16-bs128-e2_config.json"
    config.write_text(json.dumps({"model": "vgg11", "post_processing": []}))
    _assert_usage_error(capsys, run_dir, "--latents", str(run_dir),
                        match=f"{str(run_dir)!r} is a run folder, not a latents folder, and it has no latents folder")
    assert cli("--latents", str(run_dir)) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f'Add "extract" to the post_processing of {config}' in said and "unfinished" not in said, said
    (run_dir / "latents").mkdir()  # an extraction that did not write its manifest
    _assert_usage_error(capsys, run_dir, "--latents", str(run_dir),
                        match=f"its latents folder {str(run_dir / 'latents')!r} has no manifest.json yet")
    assert sorted(p.name for p in run_dir.iterdir()) == ["latents", config.name]


def test_a_run_folder_whose_latents_lie_under_its_latents_dir_names_them(tmp_path, capsys):
    """`--latents <run folder>` of a run whose extract step wrote under the config's latents_dir (a scratch
    folder) was told that its run extracted none and to add "extract" and rerun main.py, which it has and which
    would do nothing; the message names the latents folder there."""
    scratch = tmp_path / "scratch"
    _, latents = make_latents(scratch / "vgg11" / "Digits_16" / "0", name="v")
    run_dir = tmp_path / "logs" / "vgg11" / "Digits_16" / "0" / "v"
    run_dir.mkdir(parents=True)
    config = run_dir / "vgg11-Digits-r16-bs128-e2_config.json"
    config.write_text(json.dumps({"model": "vgg11", "latents_dir": str(scratch),
                                  "post_processing": [{"name": "extract"}]}))
    _assert_usage_error(capsys, run_dir, "--latents", str(run_dir),
                        match=f"its run extracted its latents into the latents_dir of {config}: pass "
                              f"{str(latents)!r} to --latents")

@pytest.mark.parametrize("mutate, match", [
    (lambda m: m.pop("labels"), "the top level has no 'labels'"),
    (lambda m: m["layers"][1]["sha256"].pop("eval"), "layers[1].sha256 has no 'eval'"),
    (lambda m: m.update(layers=[]), "layers is [], expected a non-empty list"),
    (lambda m: m.update(format=7), "format is 7"),
    (lambda m: m["layers"][0].update(shape=[5, 5]), "layers[0].shape is [5, 5]"),
    (lambda m: m["layers"][0].update(shape=1000), "layers[0].shape is 1000"),
    (lambda m: m["layers"][2].update(index=1), "layer indices repeat ([1, 1, 2])"),
    # accepted, it failed every rerun with exit 1: the cache refused the record's index as not >= 0
    (lambda m: m["layers"][0].update(index=-1), "layers[0].index is -1, expected an integer >= 0"),
])
def test_error_manifest_incomplete(tmp_path, capsys, mutate, match):
    run_dir, latents = make_latents(tmp_path)
    manifest = json.loads((latents / "manifest.json").read_text())
    mutate(manifest)
    (latents / "manifest.json").write_text(json.dumps(manifest))
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), match=match)


def test_error_run_folder_given_instead_of_its_latents(tmp_path, capsys):
    run_dir, latents = make_latents(tmp_path)
    _assert_usage_error(capsys, run_dir, "--latents", str(run_dir), match=f"but '{latents}' does: pass that latents "
                                                                          f"folder to --latents")


def test_error_listed_file_missing(tmp_path, capsys):
    run_dir, latents = make_latents(tmp_path)
    (latents / "eval-features.2.npy").unlink()
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), match="eval-features.2.npy' listed in")


@pytest.mark.parametrize("changed", ["train-features.1.npy", "eval-features.1.npy", "train-labels.npy",
                                     "eval-labels.npy"])
def test_error_sha256_mismatch(tmp_path, capsys, changed):
    """Every file the manifest lists is checked, the labels and the eval latents as well as the training latents:
    a fit on a file changed since the extraction would be cached under the sha256 of the file it replaced."""
    layers, y_train, y_eval = digits_layers()
    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    np.save(latents / changed, np.load(latents / changed)[::-1])  # the same values in another order
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), match=f"{changed}' has sha256")
    with pytest.raises(DataError, match=f"{changed}' has sha256"):  # the public check of a whole manifest too
        verify_hashes(read_manifest(latents))


def test_error_train_and_eval_layer_sets_differ(tmp_path, capsys):
    """A listed layer with a file of one split only (an unlisted stray file is no error: see the next test)."""
    run_dir, latents = make_latents(tmp_path)
    manifest = json.loads((latents / "manifest.json").read_text())
    del manifest["layers"][2]["eval"]
    (latents / "manifest.json").write_text(json.dumps(manifest))
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), match="layer 'features.2' has only a train file")


def test_a_stray_unlisted_file_without_its_eval_partner_is_warned_of_and_the_listed_layers_are_probed(
        tmp_path, capsys):
    """docs/probes.md: layer files the manifest does not list are not probed, with one warning. A stray
    train-extra.npy without an eval-extra.npy refused the whole folder (exit 2, "layer sets differ"). About 2 s."""
    from tests._extraction_models import build_model, loaders
    from phd_lab.extraction import extract_latents
    run_dir, latents = tmp_path / "run", tmp_path / "run" / "latents"
    manifest = extract_latents(build_model(), loaders(), latents, run_dir=run_dir, layers=["body.0", "head"],
                               test_accuracy=0.9, progress=False)
    shutil.copy(latents / "train-head.npy", latents / "train-extra.npy")
    capsys.readouterr()
    assert cli("--latents", str(latents), "--cache-dir", str(tmp_path / "cache"), "-mp", "0", "--solver", "lbfgs") == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "holds 1 layer file(s) that its manifest.json does not list, which are not probed: train-extra.npy" in said
    assert pd.read_csv(run_dir / "probe_performances.csv")["layer"].tolist() == [e["name"] for e in manifest["layers"]]


def test_error_label_file_of_wrong_length(tmp_path, capsys):
    layers, y_train, y_eval = digits_layers()
    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    np.save(latents / "eval-labels.npy", y_eval[:-5])
    manifest = json.loads((latents / "manifest.json").read_text())
    manifest["labels"]["sha256"]["eval"] = sha256_file(latents / "eval-labels.npy")
    (latents / "manifest.json").write_text(json.dumps(manifest))
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), match="has 295 labels, but the eval latents")


def test_error_run_folder_missing(tmp_path, capsys):
    run_dir, latents = make_latents(tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.move(str(latents), moved)
    shutil.rmtree(run_dir)
    _assert_usage_error(capsys, None, "--latents", str(moved), match="named by 'run_dir'")


def test_error_bad_usage_and_settings(tmp_path, capsys):
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    _assert_usage_error(capsys, run_dir, match="pass --config FILE")
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--run-id", "x", match="--run-id only applies")
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "-mp", "-1", match="-mp must be ≥ 0")
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--C", "-1",
                        match="'probe_C' must be a number ≥ 1e-30")
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--probe-device", "cuda",
                        match="only the lbfgs-torch solver runs on a GPU")
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--train-samples", "2",
                        match="at least one sample of each of the 3 classes")
    config = _config(tmp_path, probe_tol=0)
    _assert_usage_error(capsys, None, "--config", str(config), match="'probe_tol' must be a number > 0")


def test_error_cuda_requested_without_cuda(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--solver", "lbfgs-torch", "--probe-device",
                        "cuda", match="torch sees no CUDA device")
    # a local cluster fits on this machine too (a remote scheduler's workers have devices of their own)
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--solver", "lbfgs-torch", "--probe-device",
                        "cuda", "--scheduler", "local:1", match="torch sees no CUDA device")


@pytest.mark.parametrize("solver", ["saga", "lbfgs"])
def test_train_samples_of_at_least_every_sample_is_null_and_shares_its_cache_entries(tmp_path, solver):
    """--train-samples 5000 on 300 training samples draws no subsample, so it fits exactly as null (all samples),
    yet it was a cache key of its own (lbfgs' even kept the seed): a later job without the option fitted every layer
    again, and probe_settings.json recorded a subsample size that was never drawn."""
    from phd_lab.probes.fit import probe_arrays
    from phd_lab.probes.settings import ProbeSettings
    layers, y_train, y_eval = blob_layers(n_layers=2)
    (x_train, x_eval) = layers["block0.conv"]
    given, null = (probe_arrays(1, "block0.conv", x_train, y_train, x_eval, y_eval,
                                ProbeSettings(solver=solver, train_samples=samples)) for samples in (5000, None))
    assert (given.train_acc, given.eval_acc, given.n_iter) == (null.train_acc, null.eval_acc, null.n_iter)
    assert np.array_equal(given.confusion, null.confusion)  # the premise: the same fit, bit for bit

    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    cache = str(tmp_path / "cache")
    assert cli("--latents", str(latents), "--solver", solver, "--train-samples", "5000", "-mp", "0",
               "--cache-dir", cache) == 0
    first = (run_dir / "probe_performances.csv").read_text()
    assert json.loads((run_dir / "probe_settings.json").read_text())["settings"]["train_samples"] is None
    assert cli("--latents", str(latents), "--solver", solver, "-mp", "0", "--cache-dir", cache) == 0
    second_job = (run_dir / "probe.log").read_text().split("probe job started")[-1]
    assert second_job.count("(cached result ") == 2 and "(fitted)" not in second_job
    assert (run_dir / "probe_performances.csv").read_text() == first


def test_error_labels_that_cannot_be_probed(tmp_path, capsys):
    """Label problems surface before any fit, as usage errors, not as a failed fit (exit 1)."""
    layers, y_train, y_eval = blob_layers(n_layers=1)  # 300 train samples, 3 classes
    run_dir, latents = make_latents(tmp_path / "a", layers, y_train, y_eval)
    # 1 left out of 3 classes: scikit-learn's split cannot leave every class out, and it was refused
    assert cli("--latents", str(latents), "--train-samples", "299", "-mp", "0") == 0
    assert cli("--latents", str(latents), "--train-samples", "297", "-mp", "0") == 0  # 3 left out: its split
    assert "no subsample is drawn" not in capsys.readouterr().err
    assert cli("--latents", str(latents), "--train-samples", "5000", "-mp", "0") == 0  # was used silently
    assert "probe_train_samples 5000 is at least the 300 training samples" in " ".join(capsys.readouterr().err.split())

    single = y_train.copy()
    single[np.flatnonzero(single == 2)[1:]] = 1  # class 2 keeps one sample
    run_dir, latents = make_latents(tmp_path / "b", layers, single, y_eval)
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--train-samples", "100",
                        match="class(es) 2 have a single sample")

    run_dir, latents = make_latents(tmp_path / "c", layers, np.zeros_like(y_train), y_eval)
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), match="hold 1 class(es) in 300 samples")

    empty = {name: (train, eval_[:0]) for name, (train, eval_) in layers.items()}
    run_dir, latents = make_latents(tmp_path / "d", empty, y_train, y_eval[:0])
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), match="are empty; the probes are scored")


def test_error_cache_dir_that_cannot_be_a_folder(tmp_path, capsys):
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    in_the_way = tmp_path / "cache-file"
    in_the_way.write_text("not a folder")
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--cache-dir", str(in_the_way),
                        match="cannot be used (it is a file)")
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--cache-dir", str(in_the_way / "sub"),
                        match=f"cannot be used ({str(in_the_way)!r} on its path is a file)")
    # a link into a purged scratch space: mkdir said 'cannot be created (File exists)', naming no link
    (tmp_path / "linked").symlink_to(tmp_path / "purged")
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--cache-dir", str(tmp_path / "linked" / "c"),
                        match=f"cannot be used ({str(tmp_path / 'linked')!r} on its path is a symbolic link to "
                              f"{str(tmp_path / 'purged')!r}, which does not exist)")
    # checked before the run folder's lock is taken (_assert_usage_error: an exit 2 leaves no lock file behind)
    # an empty value (an unset shell variable) fell back to the default folder without a word
    _assert_usage_error(capsys, run_dir, "--latents", str(latents), "--cache-dir", "", match="--cache-dir is empty")


def test_a_cache_folder_a_full_disk_cannot_make_leaves_no_lock_file_in_the_runs(tmp_path, capsys):
    """A disk out of inodes (or of quota) passed the cache folder's check, which finds its parent writable, and
    its mkdir failed only once every run folder of the grid was locked: exit 2 left a .probe.lock in each."""
    config = _config(tmp_path, probe_solver="lbfgs")
    runs = [_latents_for_run(config, 0), _latents_for_run(config, 1)]
    with small_disk(tmp_path / "disk", "64k,nr_inodes=1") as disk:  # its root folder takes the only inode
        cache = disk / "cache"
        _assert_usage_error(capsys, runs[0].root, "--config", str(config), "-mp", "0", "--cache-dir", str(cache),
                            match=f"The probe cache folder {str(cache)!r} cannot be created (No space left on device)")
        assert not (runs[1].root / ".probe.lock").exists() and not cache.exists()


def test_a_job_takes_back_only_the_cache_folders_it_made(tmp_path):
    """The folders missing before the mkdir were taken as the job's own, so --cache-dir new/../cache (a script's
    path) named the user's empty cache folder as made by the job, and a job whose runs were all busy removed it
    (and left new behind); only what the job's mkdir made goes now."""
    (tmp_path / "cache").mkdir()
    cache = ResultCache(tmp_path / "new" / ".." / "cache")
    cache.check()
    cache.prepare()
    cache.remove_unused()
    assert (tmp_path / "cache").is_dir() and not (tmp_path / "new").exists()
    cache = ResultCache(tmp_path / "a" / "b")
    cache.prepare()
    cache.remove_unused()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache"]


def test_a_folder_where_the_probe_table_goes_is_named_with_what_to_do(tmp_path, capsys):
    """A folder named probe_performances.csv failed the job with "Is a directory: '.../.probe_performances.csv.
    5xvq2ozy.tmp' -> '...'": a temp file's name and no way out. It names the folder and says to remove it."""
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    (run_dir / "probe_performances.csv").mkdir()
    assert cli("--latents", str(latents), "-mp", "0") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert (f"Probe results could not be written: '{run_dir / 'probe_performances.csv'}' is a folder, but phd-lab "
            f"writes a file of that name there") in err, err
    assert "Remove or rename that folder" in err and ".tmp" not in err and ".." not in err
    (run_dir / "probe_performances.csv").rmdir()
    assert cli("--latents", str(latents), "-mp", "0") == 0


@pytest.mark.parametrize("file, code, said", [(".probe.lock", 2, "The probe results of '{run}' cannot be written "
                                                                   "there: "), ("probe.log", 1, "")])
def test_a_folder_where_the_probe_lock_or_log_goes_is_named_with_what_to_do(tmp_path, capsys, file, code, said):
    """A folder at a run's .probe.lock was said as "[Errno 21] Is a directory: '...'", without what to do; one at
    its probe.log ended the job with an IsADirectoryError traceback."""
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    (run_dir / file).mkdir()
    assert cli("--latents", str(latents), "-mp", "0") == code
    err = " ".join(capsys.readouterr().err.split())
    assert (f"{said.format(run=run_dir)}'{run_dir / file}' is a folder, but phd-lab writes a file of that name "
            f"there") in err, err
    assert "Remove or rename that folder" in err and "Errno" not in err and ".." not in err and "Traceback" not in err
    (run_dir / file).rmdir()
    assert cli("--latents", str(latents), "-mp", "0") == 0


def test_a_result_that_cannot_be_written_fails_clearly_and_keeps_the_cache(tmp_path, capsys):
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    (run_dir / "probe_confusion").write_text("a file where the confusion folder goes")
    assert cli("--latents", str(latents), "-mp", "0") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "Probe results could not be written" in err and "Traceback" not in err
    # a run's files are written once its last layer is fitted: both fitted layers stay cached
    assert len(list((run_dir / ".probe_cache").rglob("*.json"))) == 2
    # the rerun takes both from the cache and fails to write them in the same words (it raised an OSError)
    assert cli("--latents", str(latents), "-mp", "0") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "Probe results could not be written" in err and "probe_confusion" in err


def test_a_disk_that_fills_up_while_the_results_are_written_names_the_file_and_the_rerun_completes(tmp_path):
    """Files may grow to 3000 bytes only (a full disk): the job said 'Probe results could not be written: [Errno 27]
    File too large.' and nothing of which file; a write that fails names no file, so the atomic write adds it. It
    said neither that a limit of the process was at fault nor what to do; now it says both."""
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    command = [sys.executable, str(ROOT / "probe_main.py"), "--latents", str(latents), "-mp", "0", "--no-progress"]
    full = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=file_size_limit(3000))
    said = " ".join(full.stderr.split())
    assert full.returncode == 1 and "Traceback" not in said, full.stderr
    assert f"Probe results could not be written: [Errno 27] File too large: '{run_dir}{os.sep}" in said, said
    # the cause in words: a limit of the process, not of the file ("File too large"), and what to do
    assert ("'; the file outgrew this process' file size limit (`ulimit -f`, or the batch job's): raise or lift it. "
            "The layers probed so far stay cached; rerun the same command") in said, said
    assert not [path for path in run_dir.rglob("*") if path.name.endswith(".tmp")]
    assert len(list((run_dir / ".probe_cache").rglob("*.json"))) == 2  # the fitted layers stay cached
    assert cli("--latents", str(latents), "-mp", "0") == 0  # the rerun, without the limit: in this process
    assert len(pd.read_csv(run_dir / "probe_performances.csv")) == 2



def test_error_malformed_scheduler_before_any_file_is_hashed(tmp_path, capsys):
    """A bogus --scheduler used to be found only after every latents file was hashed (with bars)."""
    run_dir, latents = make_latents(tmp_path)
    assert probe_cli(["--latents", str(latents), "--scheduler", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "'bogus' is neither a scheduler address" in " ".join(err.split())
    assert "%|" not in err and "Traceback" not in err  # no progress bar drawn before the error
    assert not (run_dir / ".probe_cache").exists() and not (run_dir / "probe_performances.csv").exists()


def test_an_empty_scheduler_is_refused_before_the_latents_are_looked_at(tmp_path, capsys):
    """`--scheduler "$UNSET"` passed the up-front check (an empty value is false) and was found only once the jobs
    were made: a folder without latents was named instead, and the command failed again once it was fixed."""
    assert probe_cli(["--latents", str(tmp_path / "no_such_folder"), "--scheduler", ""]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: --scheduler '' is neither a scheduler address") and "Traceback" not in err, err


def test_a_latents_file_rewritten_in_place_after_verification_is_not_fitted(tmp_path):
    """np.save onto an existing path keeps its inode, and the same shape keeps its size: the modification time
    is what tells the rewritten file from the verified one."""
    from phd_lab.probes.job import validate_jobs
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    jobs, _ = jobs_from_latents(latents)
    (task,) = build_tasks(jobs, validate_jobs(jobs)[0])
    path = Path(task.train)
    inode, size, mtime = os.stat(path).st_ino, os.path.getsize(path), os.stat(path).st_mtime_ns
    np.save(path, np.load(path) * 0.5)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # a second later, whatever the clock's granularity
    assert (os.stat(path).st_ino, os.path.getsize(path)) == (inode, size)
    with pytest.raises(RunFailure, match="changed after the probe job verified its sha256"):
        run_probes([task], ResultCache(tmp_path / "cache"), progress=False)


def test_a_latents_file_replaced_after_verification_is_neither_fitted_nor_cached(tmp_path):
    """A re-extraction between the job's sha256 check and a layer's fit used to be fitted and cached under
    the verified files' key, so the wrong result came back from the cache for good."""
    from phd_lab.probes.job import validate_jobs
    _, latents = make_latents(tmp_path)
    jobs, _ = jobs_from_latents(latents)
    tasks = build_tasks(jobs, validate_jobs(jobs)[0])
    assert all(len(task.stamps) == 4 for task in tasks)
    replaced = Path(tasks[0].train)
    np.save(tmp_path / "new.npy", np.load(replaced) * 0.5)
    os.replace(tmp_path / "new.npy", replaced)  # what an extraction does
    cache = ResultCache(tmp_path / "cache")
    with pytest.raises(RunFailure, match="changed after the probe job verified its sha256"):
        run_probes(tasks[:1], cache, progress=False)
    assert cache.get(tasks[0].key) is None
    run_probes(tasks[1:], cache, progress=False)  # the other layers are untouched and fit
    assert all(cache.get(task.key) is not None for task in tasks[1:])


def test_a_latents_file_replaced_while_its_layer_is_fitted_is_not_returned(tmp_path):
    """The check after the fit: a re-extraction that replaces a file while scikit-learn fits the layer (on the
    old file's memory map, or on the new content if it came before loading) leaves it unknown which content was
    fitted, so the layer's record is not returned (and so never cached)."""
    import threading
    from phd_lab.probes.job import validate_jobs
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2400, 128)).astype(np.float32), rng.integers(0, 5, 2400)  # saga runs every epoch
    _, latents = make_latents(tmp_path, {"block0.conv": (x[:2000], x[2000:])}, y[:2000], y[2000:])
    jobs, _ = jobs_from_latents(latents)
    (task,) = build_tasks(jobs, validate_jobs(jobs)[0])
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_record_or_error(task)), daemon=True)
    worker.start()
    deadline = time.monotonic() + 120
    while worker.is_alive() and not _in_sklearn_fit(worker) and time.monotonic() < deadline:
        time.sleep(0.0005)
    assert worker.is_alive(), f"the fit ended before it could be caught inside scikit-learn: {outcome}"
    replaced = Path(task.train)
    np.save(tmp_path / "new.npy", np.load(replaced) * 0.5)
    os.replace(tmp_path / "new.npy", replaced)  # what an extraction does
    worker.join(120)
    (result,) = outcome
    assert isinstance(result, RunFailure) and "changed after the probe job verified its sha256" in str(result)


def _record_or_error(task) -> object:
    try:
        return run_task(task)
    except RunFailure as error:
        return error


def _in_sklearn_fit(thread) -> bool:
    """Whether ``thread`` is inside scikit-learn's ``fit`` now (after the task's first stamp check and loading)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "fit" and "sklearn" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def test_latents_of_a_copied_or_moved_run_folder_write_beside_themselves(tmp_path, capsys):
    """The manifest's absolute run_dir sent a copy's results into the original run folder, and a moved
    run folder could not be probed at all."""
    run_dir, _ = make_latents(tmp_path / "old")
    (run_dir / "run_config.json").write_text("{}")
    copy = tmp_path / "copy" / "run"
    shutil.copytree(run_dir, copy)
    assert cli("--latents", str(copy / "latents"), "-mp", "0") == 0  # where results go: no worker processes
    assert (copy / "probe_performances.csv").is_file() and not (run_dir / "probe_performances.csv").exists()
    moved = tmp_path / "moved" / "run"
    shutil.move(str(run_dir), str(moved))
    assert cli("--latents", str(moved / "latents"), "-mp", "0") == 0
    assert (moved / "probe_performances.csv").is_file()


def test_a_relative_run_dir_is_relative_to_the_manifests_folder_not_the_current_one(tmp_path, monkeypatch):
    """A relative run_dir was taken relative to the shell's current folder: the results went into an unrelated
    folder of that name, with exit status 0."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    latents = write_latents(tmp_path / "store" / "latents", *blob_layers(n_layers=1), run_dir, 0.9)
    manifest = json.loads((latents / "manifest.json").read_text())
    manifest["run_dir"] = "../../run"
    (latents / "manifest.json").write_text(json.dumps(manifest))
    decoy = tmp_path / "shell" / "run"  # what ../../run names from the shell's folder
    decoy.mkdir(parents=True)
    (tmp_path / "shell" / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "shell" / "a" / "b")
    assert cli("--latents", str(latents), "-mp", "0", "--cache-dir", str(tmp_path / "cache")) == 0
    assert (run_dir / "probe_performances.csv").is_file()
    assert not any(decoy.iterdir())


def test_write_latents_records_the_run_folder_as_an_absolute_path(tmp_path, monkeypatch):
    """It stored run_dir as given: a relative one named another folder once read from elsewhere."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    latents = write_latents("run/latents", *blob_layers(n_layers=1), "run", 0.9)
    assert json.loads((latents / "manifest.json").read_text())["run_dir"] == str((tmp_path / "run").resolve())


def test_a_probe_job_removes_its_own_temp_files_at_once_and_other_writers_old_ones(tmp_path):
    """Only the holder of a run's .probe.lock writes its probe results, so the temp file of one that a killed probe
    job left is a leftover at once (the rerun exited 0 and kept '.probe_performances.csv.<random>.tmp' for 15
    minutes); analysis.* is also written by a run or a report working now, so only old temp files of those go."""
    import time

    from phd_lab import atomic
    run_dir, latents = make_latents(tmp_path)
    (run_dir / "probe_confusion").mkdir()
    old = run_dir / ".analysis.json.k1.tmp"
    own = [run_dir / ".probe_performances.csv.k2.tmp", run_dir / ".probe_settings.json.k3.tmp",
           run_dir / "probe_confusion" / ".001-x.png.k4.tmp"]
    fresh = run_dir / ".analysis.png.k5.tmp"  # a report's file of the moment
    long_ago = time.time() - atomic.STALE_AFTER_SECONDS - 60
    for path in (old, *own, fresh):
        path.write_text("partial")
    os.utime(old, (long_ago, long_ago))
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs") == 0
    assert not old.exists() and not any(path.exists() for path in own) and fresh.exists()


def test_a_latents_job_fits_with_the_probe_keys_of_the_runs_logged_config(tmp_path, capsys):
    """--latents read no config: a run whose config set probe_solver lbfgs and probe_C 0.5 was refitted with saga
    at C 1, its results replaced. It now takes the run's logged probe_* keys, then the command line's options, as
    --config with that logged config does."""
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    config = write_config(tmp_path, epoch=1, cpu_threads=1, post_processing=["extract"], probe_solver="lbfgs",
                          probe_C=0.5)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    run = RunDir.for_run(Grid(load_config_file(config))[0])
    latents, cache = run.latents(), tmp_path / "cache"
    capsys.readouterr()
    assert probe_cli(["--latents", str(latents), "-mp", "0", "--no-progress", "--cache-dir", str(cache)]) == 0
    assert f"Probe settings: the run's logged config {run.config}, then" in capsys.readouterr().err
    settings = json.loads(run.probe_settings.read_text())["settings"]
    assert (settings["solver"], settings["C"]) == ("lbfgs", 0.5)
    by_latents = pd.read_csv(run.probe_csv)
    assert cli("--config", str(run.config), "-mp", "0", "--cache-dir", str(cache)) == 0  # the same fits, cached
    pd.testing.assert_frame_equal(pd.read_csv(run.probe_csv), by_latents)
    assert cli("--latents", str(latents), "-mp", "0", "--C", "2") == 0  # an option still wins over the logged key
    settings = json.loads(run.probe_settings.read_text())["settings"]
    assert (settings["solver"], settings["C"]) == ("lbfgs", 2.0)


def test_a_latents_jobs_probe_device_is_checked_with_the_solver_of_the_runs_logged_config(tmp_path, capsys):
    """--latents checked the command line's options against the defaults before the run's logged config was read:
    --probe-device cuda on a run whose logged config sets probe_solver lbfgs-torch was refused as a GPU device for
    'saga', a solver the job would not have used."""
    import torch

    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    config = write_config(tmp_path, epoch=1, cpu_threads=1, post_processing=["extract"], probe_solver="lbfgs-torch")
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    latents = RunDir.for_run(Grid(load_config_file(config))[0]).latents()
    capsys.readouterr()
    code = probe_cli(["--latents", str(latents), "-mp", "0", "--no-progress", "--probe-device", "cuda",
                      "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert "'saga' solver" not in err
    if torch.cuda.is_available():
        assert code == 0
    else:  # refused for the machine, as --config with that logged config does
        assert code == 2 and "probe_device is 'cuda', but" in err and "on this machine" in err


def test_the_probe_job_refreshes_the_analysis_of_the_runs_it_probed(tmp_path):
    """analysis.json read the probes as missing until the next report, though the probe job had run."""
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    config = write_config(tmp_path, epoch=1, cpu_threads=1, post_processing=["extract", "analysis"])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    run = RunDir.for_run(Grid(load_config_file(config))[0])
    before = json.loads(run.analysis_json.read_text())
    assert before["probes"]["status"] != "complete" and "probe_performances.csv" in before["missing"]
    assert cli("--config", str(config), "-mp", "0", "--solver", "lbfgs") == 0
    after = json.loads(run.analysis_json.read_text())
    assert after["probes"]["status"] == "complete" and after["probes"]["layers_probed"] == len(
        pd.read_csv(run.probe_csv))
    assert after["missing"] == [name for name in before["missing"] if name != "probe_performances.csv"]
    assert after["problems"] == before["problems"] == []
    # everything else the analysis read from the run's files is still there (the refresh once read a run
    # folder without its file prefix: no metrics, no config, and wrote that over the good analysis)
    for key in ("accuracy", "saturation", "tails", "computational"):
        assert after[key] == before[key], key
    assert {**after["run"], "status": None} == {**before["run"], "status": None}  # the status: no longer running
    assert after["run"]["status"]["label"] == "finished"
    assert after["run"]["name"] == run.name and after["accuracy"]["test"] is not None and after["saturation"]


def test_probes_that_finish_while_the_training_command_writes_the_analysis_are_read_again(tmp_path):
    """A probe job that finished while main.py held the run folder left the analysis to it, but main.py had
    read the tables already: analysis.json said the probes were pending beside a probe_performances.csv."""
    import subprocess
    import sys
    from phd_lab.steps.analysis import PAUSE_ENV
    from tests.conftest import ROOT, wait_for, write_config
    config = write_config(tmp_path, epoch=1, cpu_threads=1, post_processing=["extract", "analysis"])
    run = RunDir.for_run(Grid(load_config_file(config))[0])
    probed = tmp_path / "probed"  # main.py holds the run folder after its analysis until this file exists
    process = subprocess.Popen([sys.executable, "main.py", "--config", str(config), "--no-progress", "-q"],
                               cwd=ROOT, env={**os.environ, PAUSE_ENV: str(probed)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(run.analysis_json.exists, process)  # the analysis is written, the run folder still held
        assert json.loads(run.analysis_json.read_text())["probes"]["status"] != "complete"
        assert cli("--config", str(config), "-mp", "0", "--solver", "lbfgs") == 0
        assert process.poll() is None  # the probes finished while main.py held the folder
    finally:
        probed.touch()  # main.py goes on (also where the test failed: it does not wait its 120 s for nothing)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert json.loads(run.analysis_json.read_text())["probes"]["status"] == "complete"


def test_the_log_of_a_run_probed_by_a_grid_job_that_exits_1_for_another_run_says_only_its_own_probes_finished(
        tmp_path):
    """A grid job that probed run 0 and exited 1 for run 1 (its extraction died) ended run 0's probe.log with
    "probe job finished": read years later, without the batch console, that says the job succeeded."""
    config = _config(tmp_path, probe_solver="lbfgs")
    done = _latents_for_run(config, 0)
    dead = _latents_for_run(config, 1)
    (dead.latents() / "manifest.json").unlink()
    assert cli("--config", str(config), "-mp", "0") == 1
    log_text = done.probe_log.read_text()
    assert "probe job finished" not in log_text
    assert log_text.rstrip().splitlines()[-1].endswith(
        "this run's probes finished (the probe job's console and exit status report on its other runs)")


def test_runs_whose_latents_are_being_extracted_are_skipped_not_fatal(tmp_path, capsys):
    """Probing beside a training grid: a run mid-extraction (no manifest yet, its folder held by a live
    process) made the whole job exit 2 with 'rerun the training command'; now it waits for a later job."""
    from tests.test_recovery import lock_held_elsewhere
    config = _config(tmp_path, probe_solver="lbfgs")
    done = _latents_for_run(config, 0)
    busy = _latents_for_run(config, 1)
    (busy.latents() / "manifest.json").unlink()  # as during extraction: the manifest comes last
    with lock_held_elsewhere(busy.lock) as pid:
        assert cli("--config", str(config), "-mp", "0") == 0
        warning = " ".join(capsys.readouterr().err.split())  # warnings show even with -q
        assert "its latents are being extracted" in warning and f"PID {pid}" in warning
        assert done.probe_csv.exists() and not busy.probe_csv.exists()
        assert cli("--latents", str(busy.latents()), "-mp", "0") == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "is being extracted right now" in err and f"PID {pid}" in err
    # the extraction died with its process: now the folder is an unfinished extraction, as before
    assert cli("--latents", str(busy.latents()), "-mp", "0") == 2
    assert "the extraction is unfinished" in " ".join(capsys.readouterr().err.split())
    # held from another node of a shared file system: that process cannot be checked, so it counts as extracting
    busy.lock.write_text("PID 4242 on host another-node\n")
    assert cli("--config", str(config), "-mp", "0") == 0
    warning = " ".join(capsys.readouterr().err.split())
    assert "its latents are being extracted" in warning and "another-node" in warning


def test_a_grid_job_probes_the_other_runs_when_one_extraction_died_or_one_run_is_busy(tmp_path, capsys):
    """One killed extraction (latents without manifest, no live owner) or one run another probe job holds
    stopped the whole grid with exit 2; now the other runs are probed and the job exits 1 naming the rest."""
    from phd_lab.lock import RunLock
    from phd_lab.lock import PROBE_LOCK
    config = _config(tmp_path, probe_solver="lbfgs")
    done = _latents_for_run(config, 0)
    dead = _latents_for_run(config, 1)
    (dead.latents() / "manifest.json").unlink()  # its process was killed before the manifest (written last)
    assert cli("--config", str(config), "-mp", "0") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "the extraction did not finish" in err and f"--config {config} --index 1` finishes it" in err
    assert f"Not every run of {config} was probed (run(s) 1: extraction unfinished)" in err
    assert done.probe_csv.exists() and not dead.probe_csv.exists()
    dead = _latents_for_run(config, 1)  # extracted again: both runs have latents
    done.probe_csv.unlink()
    with RunLock(done.root / PROBE_LOCK):  # this process stands for another probe job on run 0
        assert cli("--config", str(config), "-mp", "0") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "run 0 (" in err and "another probe job is writing their results" in err and f"PID {os.getpid()}" in err
    assert dead.probe_csv.exists() and not done.probe_csv.exists()
    with RunLock(done.root / PROBE_LOCK), RunLock(dead.root / PROBE_LOCK):  # every run busy: nothing was written
        assert cli("--config", str(config), "-mp", "0") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "no probe table was written. Rerun this command" in err and "listed above" not in err, err
    assert cli("--config", str(config), "-mp", "0") == 0  # released: the whole grid is probed
    assert done.probe_csv.exists()
    # with no other run to probe, an unfinished extraction is still the error it was
    for run in (done, dead):
        (run.latents() / "manifest.json").unlink()
    assert cli("--config", str(config), "-mp", "0") == 2
    assert "did not finish" in " ".join(capsys.readouterr().err.split())


def test_two_probe_jobs_on_one_run_cannot_mix_their_results(tmp_path, capsys):
    """Two jobs with different settings on one run both exited 0, leaving one's CSV beside the other's
    confusion matrices; the second is now refused until the first has finished."""
    from phd_lab.lock import RunLock
    from phd_lab.lock import PROBE_LOCK
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    with RunLock(run_dir / PROBE_LOCK):  # this process stands for the first job: flock is per open file
        assert cli("--latents", str(latents), "-mp", "0", "--C", "0.3") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Two probe jobs must not write the same run's results" in err and f"PID {os.getpid()}" in err
    assert not (run_dir / "probe_performances.csv").exists() and not (run_dir / "probe_confusion").exists()
    assert cli("--latents", str(latents), "-mp", "0", "--C", "0.3") == 0  # released: the next job runs


def test_fits_in_threads_of_one_process_take_turns_and_keep_their_own_convergence(tmp_path):
    """A Dask worker with several threads fits several layers in one process; the warning filters that tell
    convergence and the thread limits are process-wide, so a saga fit that stops short beside an lbfgs fit
    that converges swapped their flags. Fits in threads take turns and equal fits made one by one."""
    import threading
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=3))
    saga = build_tasks(jobs_from_latents(latents, {"solver": "saga", "max_iter": 3})[0])
    lbfgs = build_tasks(jobs_from_latents(latents, {"solver": "lbfgs"})[0])

    def outcome(record) -> tuple:
        return record.layer, record.solver, record.converged, record.n_iter, record.eval_acc

    alone = [outcome(run_task(task)) for task in saga + lbfgs]
    assert [converged for _, _, converged, _, _ in alone] == [False] * 3 + [True] * 3
    together: dict[int, tuple] = {}

    def fit(tasks: list, offset: int) -> None:
        for position, task in enumerate(tasks):
            together[offset + position] = outcome(run_task(task))

    workers = [threading.Thread(target=fit, args=(saga, 0)), threading.Thread(target=fit, args=(lbfgs, 3))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [together[position] for position in range(6)] == alone


def _confusion_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "probe_confusion").glob("*.npy"))}


def test_diverged_latents_fail_their_run_only_and_leave_its_earlier_results_whole(tmp_path, capsys):
    """NaN latents (a diverged run) used to end the whole job with scikit-learn's eight-line NaN advice, so the
    healthy runs of a grid never got their results; and confusion files were replaced layer by layer, so a job
    stopped part-way left a mix of two probes' results."""
    layers, y_train, y_eval = blob_layers(n_layers=3)
    healthy_run, healthy = make_latents(tmp_path, layers, y_train, y_eval, name="healthy")
    diverged_run, diverged = make_latents(tmp_path, layers, y_train, y_eval, name="diverged")
    assert cli("--latents", str(diverged), "-mp", "0", "--solver", "lbfgs") == 0
    earlier_csv = (diverged_run / "probe_performances.csv").read_bytes()
    earlier_confusions = _confusion_files(diverged_run)
    assert len(earlier_confusions) == 3

    broken = dict(layers)
    train, eval_ = layers["block2.conv"]
    train = train.copy()
    train[5, 1], train[7, 0] = np.nan, np.inf  # the last layer of a run that diverged in its last epoch
    broken["block2.conv"] = (train, eval_)
    write_latents(diverged, broken, y_train, y_eval, diverged_run, 0.9)  # a re-extraction: new files and hashes
    capsys.readouterr()

    jobs = jobs_from_latents(diverged)[0] + jobs_from_latents(healthy)[0]
    with pytest.raises(RunFailure) as failure:
        run_jobs(jobs, tmp_path / "cache", workers=0, progress=False)  # saga now: every layer is refitted
    message = " ".join(str(failure.value).split())
    assert f"Latents file {str(diverged / 'train-block2.conv.npy')!r}" in message
    assert "hold 2 NaN or infinite value(s) of 2400" in message and "The run diverged" in message
    assert "1 run(s) could not be probed" in message and "the other 1 run(s) are written" in message
    healthy_table = pd.read_csv(healthy_run / "probe_performances.csv")
    assert healthy_table["layer"].tolist() == ["block0.conv", "block1.conv", "block2.conv"]
    assert set(healthy_table["solver"]) == {"saga"}
    # the failed run keeps its earlier (lbfgs) results whole: no saga confusion matrix replaced an lbfgs one
    assert (diverged_run / "probe_performances.csv").read_bytes() == earlier_csv
    assert _confusion_files(diverged_run) == earlier_confusions

    # on the command line: exit 1, one paragraph, no traceback, with worker processes as well
    assert cli("--latents", str(diverged), "-mp", "2") == 1
    err = capsys.readouterr().err
    assert "The run diverged" in " ".join(err.split()) and "Traceback" not in err
    assert (diverged_run / "probe_performances.csv").read_bytes() == earlier_csv


def test_an_empty_or_pickled_npy_file_is_a_clear_error(tmp_path, capsys):
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    (latents / "train-labels.npy").write_bytes(b"")
    assert cli("--latents", str(latents), "-mp", "0") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "train-labels.npy' is not a readable .npy array (the file is empty)" in err  # numpy 1.24: "pickled"
    assert "Traceback" not in err
    (latents / "train-labels.npy").write_bytes(pickle.dumps([1, 2, 3]))  # a pickle, not an .npy file
    assert cli("--latents", str(latents), "-mp", "0") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds pickled Python objects, which are never loaded" in err and "allow_pickle" not in err
    assert not (run_dir / ".probe.lock").exists() and not (run_dir / ".probe_cache").exists()


def test_a_failed_check_writes_nothing_into_the_run_folder(tmp_path, capsys):
    """The sha256 check used to run after the run folder's probe lock (a file) had been created."""
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    with open(latents / "eval-block1.conv.npy", "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        handle.write(b"\x01")
    before = sorted(p.name for p in run_dir.iterdir())
    assert cli("--latents", str(latents), "-mp", "0") == 2
    assert "has sha256" in " ".join(capsys.readouterr().err.split())
    assert sorted(p.name for p in run_dir.iterdir()) == before


@pytest.mark.parametrize("accuracy", [-1, 1.5, float("nan")])
def test_a_manifest_model_accuracy_outside_0_1_is_refused(tmp_path, capsys, accuracy):
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    manifest = json.loads((latents / "manifest.json").read_text())
    manifest["model_test_accuracy"] = accuracy
    (latents / "manifest.json").write_text(json.dumps(manifest))
    assert cli("--latents", str(latents), "-mp", "0") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "model_test_accuracy must be an accuracy between 0 and 1 or null" in err
    assert not (run_dir / "probe_performances.csv").exists()


def test_a_manifest_holding_nan_is_refused_before_any_layer_is_fitted(tmp_path, capsys):
    """Python's JSON reader takes NaN; a hand-edited manifest's "downsampling": NaN was copied into
    probe_settings.json, which atomic.write_json now refuses (f6f584d): the job fitted every layer, wrote
    probe_performances.csv, then ended with a ValueError traceback (exit 1) and no probe_settings.json."""
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    manifest = json.loads((latents / "manifest.json").read_text())
    manifest["downsampling"] = float("nan")
    (latents / "manifest.json").write_text(json.dumps(manifest))
    assert cli("--latents", str(latents), "-mp", "0") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "its value at downsampling is nan, which strict JSON has no number for" in err and "Traceback" not in err
    assert not (run_dir / "probe_performances.csv").exists()


def test_a_probe_seed_beyond_32_bits_is_refused_up_front(tmp_path, capsys):
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    assert cli("--latents", str(latents), "-mp", "0", "--seed", str(2**32)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "probe_seed" in err and "4294967295" in err and "(command line) (command line)" not in err


def test_log_lines_are_printed_above_the_progress_bar_not_into_it(tmp_path, capsys):
    """Redirected to a file (a SLURM log), a bar used to run into the next log line: `probes: 0%|… ]2026-… INFO`."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=3))
    assert probe_cli(["--latents", str(latents), "-mp", "0", "--solver", "lbfgs"]) == 0
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    logged = [line for line in lines if " INFO " in line]
    assert any("probing 3 layer(s)" in line for line in logged) and any("probes:" in line for line in lines)
    assert all(line.startswith("20") and "%|" not in line for line in logged), logged
    assert probe_cli(["--latents", str(latents), "-mp", "0", "--solver", "lbfgs", "-q"]) == 0
    assert " INFO " not in capsys.readouterr().err  # -q still hides them


def test_confusions_of_layers_no_longer_extracted_are_removed(tmp_path):
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=3))
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs") == 0
    confusions = run_dir / "probe_confusion"
    assert sorted(path.name for path in confusions.iterdir()) == [
        f"{i + 1:03d}-block{i}.conv{suffix}" for i in range(3) for suffix in (".npy", ".png")]
    shutil.rmtree(latents)  # extracted again, with one layer fewer
    make_latents(tmp_path, *blob_layers(n_layers=2))
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs") == 0
    assert sorted(path.name for path in confusions.iterdir()) == [
        f"{i + 1:03d}-block{i}.conv{suffix}" for i in range(2) for suffix in (".npy", ".png")]
    assert pd.read_csv(run_dir / "probe_performances.csv")["layer"].tolist() == ["block0.conv", "block1.conv"]


def _spawned_workers(parent: int) -> list[int]:
    """PIDs of the multiprocessing workers ``parent`` spawned (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def test_sigterm_to_the_job_alone_stops_its_workers_at_once(tmp_path):
    """A batch system's SIGTERM reaches the job's process only. The workers went on fitting, and leaving the
    pool waited for their fits (minutes for a saga layer) before the job could exit."""
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=1))
    process = subprocess.Popen([sys.executable, str(ROOT / "probe_main.py"), "--latents", str(latents), "-mp", "1",
                                "--max-iter", "1000000", "--tol", "1e-12", "--no-progress", "-q"],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (workers := _spawned_workers(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert workers, "the job must have started a worker"
        time.sleep(2)  # the worker is inside its (very long) fit
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM and "terminated (SIGTERM)" in err
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, workers)), "no worker may go on fitting"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped; no init may be reaping them here


def test_each_probed_run_keeps_a_probe_log_of_its_own_layers_and_failures(tmp_path, capsys, caplog):
    """The probe job used to write no log: a failure's traceback and what was fitted or taken from the cache
    lived only in the console of a batch job (DESIGN: a failure names where its log is)."""
    layers, y_train, y_eval = blob_layers(n_layers=2)
    healthy_run, healthy = make_latents(tmp_path, layers, y_train, y_eval, name="healthy")
    broken = dict(layers)
    train = layers["block1.conv"][0].copy()
    train[3, 2] = np.nan
    broken["block1.conv"] = (train, layers["block1.conv"][1])
    diverged_run, diverged = make_latents(tmp_path, broken, y_train, y_eval, name="diverged")
    jobs = jobs_from_latents(healthy)[0] + jobs_from_latents(diverged)[0]
    caplog.set_level(logging.INFO)  # as the command line sets it
    with pytest.raises(RunFailure) as failure:
        run_jobs(jobs, tmp_path / "cache", workers=0, progress=False)
    message = " ".join(str(failure.value).split())
    assert message.endswith(f"Details (and any traceback) are in {diverged_run / 'probe.log'}.")  # the failed run's

    healthy_log = (healthy_run / "probe.log").read_text()
    assert "probe job started" in healthy_log and "probe results in" in healthy_log
    assert healthy_log.count("(fitted)") == 2 and "NaN" not in healthy_log
    assert "layer block0.conv (index 1): eval acc 1.0000, train acc 1.0000, 100 iterations" in healthy_log
    assert f"probe job failed on another run: {diverged_run / 'probe.log'}" in healthy_log
    diverged_log = (diverged_run / "probe.log").read_text()
    assert "probe results in" not in diverged_log and "Traceback" not in diverged_log  # bad data, not a bug
    assert diverged_log.count("hold 1 NaN or infinite value(s)") == 2  # when found, and the job's failure

    # the rerun of the healthy run appends; its layers come from the cache, named with their key
    capsys.readouterr()
    assert cli("--latents", str(healthy), "-mp", "0", "--cache-dir", str(tmp_path / "cache")) == 0
    healthy_log = (healthy_run / "probe.log").read_text()
    assert healthy_log.count("probe job started") == 2 and healthy_log.rstrip().endswith(FINISHED)
    assert healthy_log.count("(cached result ") == 2
    assert "(cached result" not in capsys.readouterr().err  # per-layer lines go to the file, not the console


def test_a_failing_worker_leaves_its_traceback_in_the_probe_log_and_one_paragraph_on_the_console(tmp_path):
    """A broken installation, an empty ``threadpoolctl.py`` ahead of the library on the workers' path (which the
    driver, importing no scikit-learn, never loads): every check passes, then the worker's task fails with an
    ImportError. The console gets one paragraph naming the log; the log has the worker process' own traceback."""
    layers, y_train, y_eval = blob_layers(n_layers=2)
    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "threadpoolctl.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken), str(ROOT)])}
    result = subprocess.run([sys.executable, "-m", "phd_lab", "probe", "--latents", str(latents), "-mp", "2",
                             "--solver", "lbfgs", "--no-progress", "-q"], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=120)
    err = result.stderr
    assert result.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 6
    assert f"Details (and any traceback) are in {run_dir / 'probe.log'}." in " ".join(err.split())
    log_text = (run_dir / "probe.log").read_text()
    assert "probe job failed" in log_text and "Traceback (most recent call last)" in log_text
    assert f"cannot import name 'threadpool_limits' from 'threadpoolctl' ({broken / 'threadpoolctl.py'})" in log_text
    assert "in _single_threaded" in log_text and "in run_task" in log_text  # the worker process' own frames


def test_results_of_other_settings_say_that_they_replace_the_run_s_earlier_ones(tmp_path, capsys):
    """A run folder holds one set of probe results: a second job with another solver replaced them silently."""
    run_dir, latents = make_latents(tmp_path, accuracy=0.8)
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs") == 0
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs") == 0  # the same settings: nothing said
    assert "replace" not in capsys.readouterr().err
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs", "--C", "0.5") == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "these results replace the run's earlier probe results, fitted with other settings (C: 1.0 -> 0.5)" in said
    assert json.loads((run_dir / "probe_settings.json").read_text())["settings"]["C"] == 0.5


def test_index_ranges_keep_hundreds_of_skipped_runs_on_one_short_line():
    from phd_lab.probes.discovery import index_ranges
    assert index_ranges([0, 1, 2, 3, 7, 9, 10, 11, 12]) == "0-3, 7, 9-12"
    assert index_ranges(list(range(499))) == "0-498" and index_ranges([5]) == "5" and index_ranges([]) == ""


def test_big_endian_latents_give_the_same_probes_as_native_ones(tmp_path):
    """A latents folder written on (or for) a big-endian machine (">f4" files) passes validation; torch
    took native byte order only, so lbfgs-torch failed after every check had passed."""
    import pandas as pd
    layers, y_train, y_eval = blob_layers(n_layers=2)
    big = {name: (train.astype(">f4"), eval_.astype(">f4")) for name, (train, eval_) in layers.items()}
    tables = []
    for name, arrays in (("native", layers), ("big", big)):
        run_dir, latents = make_latents(tmp_path / name, arrays, y_train, y_eval)
        assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs-torch") == 0
        tables.append(pd.read_csv(run_dir / "probe_performances.csv").drop(columns="seconds"))
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_eval_classes_the_train_split_lacks_are_warned_of(tmp_path, capsys):
    """Eval samples of a class absent from training cap every probe's accuracy: usually a label mapping that
    differs between the splits, so the job says so instead of quietly reporting low accuracies."""
    layers, y_train, y_eval = blob_layers(n_layers=1)
    y_eval = y_eval.copy()
    y_eval[:6] = 7  # a class the train labels do not have
    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    assert cli("--latents", str(latents), "-mp", "0") == 0
    text = " ".join(capsys.readouterr().err.split())  # warnings show even with -q
    assert "hold class(es) 7 that the train labels lack (6 of" in text and "Do both splits use the same" in text


def test_layers_found_in_the_cache_are_not_read_or_hashed_again(tmp_path, capsys):
    """A probe job repeated as a grid grows re-read and hashed every run's latents before it looked at the cache:
    terabytes for a no-op job over a few hundred full-width runs. Only the files of layers to fit are verified."""
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    cache = tmp_path / "cache"
    assert cli("--latents", str(latents), "-mp", "0", "--cache-dir", str(cache)) == 0
    first = (run_dir / "probe_performances.csv").read_bytes()

    def corrupt(name: str) -> None:
        with open(latents / name, "r+b") as handle:
            handle.seek(-1, os.SEEK_END)
            handle.write(b"\x07")

    corrupt("eval-block0.conv.npy")  # both layers cached: nothing is read, the results stand for the manifest's files
    assert cli("--latents", str(latents), "-mp", "0", "--cache-dir", str(cache)) == 0
    assert (run_dir / "probe_performances.csv").read_bytes() == first
    jobs, _ = jobs_from_latents(latents)
    tasks = {task.layer: task for task in build_tasks(jobs)}
    ResultCache(cache).path(tasks["block1.conv"].key).unlink()  # block1 must be fitted again: its files are checked
    corrupt("train-block1.conv.npy")
    assert cli("--latents", str(latents), "-mp", "0", "--cache-dir", str(cache)) == 2
    assert "train-block1.conv.npy' has sha256" in " ".join(capsys.readouterr().err.split())
    assert cli("--latents", str(latents), "-mp", "0", "--cache-dir", str(tmp_path / "empty")) == 2
    assert "eval-block0.conv.npy' has sha256" in " ".join(capsys.readouterr().err.split())


def test_a_run_whose_layers_all_come_from_the_cache_keeps_its_files_when_they_are_in_place(tmp_path):
    """Repeating a probe job redrew and rewrote every finished run's plots, tables and analysis (about a second
    per run: minutes for a grid of hundreds). Files in place are left as they are; a missing or changed one is
    written again, with the same bytes as before."""
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    argv = ("--latents", str(latents), "-mp", "0", "--cache-dir", str(tmp_path / "cache"))
    assert cli(*argv) == 0
    files = sorted(path for path in run_dir.rglob("*")
                   if path.is_file() and "latents" not in path.parts and path.name not in ("probe.log", ".probe.lock"))
    assert {path.suffix for path in files} >= {".csv", ".json", ".png", ".npy"}
    contents = {path: path.read_bytes() for path in files}
    identity = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files}
    assert cli(*argv) == 0
    assert "probe results already in place" in (run_dir / "probe.log").read_text()
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files} == identity
    plot = next(path for path in files if path.suffix == ".png" and path.parent.name == "probe_confusion")
    plot.unlink()
    (run_dir / "probe_performances.csv").write_text("index,layer\n")
    assert cli(*argv) == 0
    assert {path: path.read_bytes() for path in files} == contents  # written again, byte for byte
    stale = [run_dir / "probe_confusion" / f"009-old.conv{suffix}" for suffix in (".npy", ".png")]
    for path in stale:  # a layer an earlier extraction had: not this probe's result
        path.write_bytes(b"")
    assert cli(*argv) == 0
    assert not any(path.exists() for path in stale)


def test_runs_with_identical_latents_share_the_first_fit_and_a_repeat_leaves_their_files_alone(tmp_path):
    """Two runs of one job with the same latents have the same cache keys. Both were fitted and the second fit
    overwrote the first's entry, so a repeated (or resumed) job rewrote the first run's table with the second
    fit's seconds. The first record stored is kept, and both runs get it."""
    layers, y_train, y_eval = blob_layers(n_layers=2)
    runs = [make_latents(tmp_path, layers, y_train, y_eval, name=name) for name in ("A", "B")]
    cache = tmp_path / "cache"

    def probe() -> None:
        run_jobs([jobs_from_latents(latents)[0][0] for _, latents in runs], cache, progress=False)

    probe()
    tables = [(run / "probe_performances.csv").read_bytes() for run, _ in runs]
    assert tables[0] == tables[1]  # one record per layer, its seconds included
    stored = sorted(json.loads(entry.read_text())["record"]["seconds"] for entry in cache.rglob("*.json"))
    with open(runs[0][0] / "probe_performances.csv", newline="") as table:  # python's float() round-trips exactly:
        seconds = [float(row["seconds"]) for row in csv.DictReader(table)]  # pandas 2.0's parser missed a last digit
    assert sorted(seconds) == stored
    files = sorted(path for run, _ in runs for path in run.rglob("*")
                   if path.is_file() and "latents" not in path.parts and path.name not in ("probe.log", ".probe.lock"))
    identity = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files}
    probe()
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files} == identity
    assert all("already in place" in (run / "probe.log").read_text() for run, _ in runs)


def test_a_write_cut_short_is_completed_by_the_next_job_although_every_layer_is_cached(tmp_path):
    """The settings file, which names the table's sha256, is written last. When it came first, a job stopped after
    the table (here: a file size limit makes the 40 KB accuracy plot fail, as a full disk would) left the earlier
    solver's plot, and the next job, finding the table and settings current, kept that stale plot for good."""
    import resource
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    argv = ["--latents", str(latents), "-mp", "0", "--cache-dir", str(tmp_path / "cache"), "--no-progress", "-q"]
    assert cli(*argv[:-2], "--solver", "saga", "--max-iter", "3") == 0
    saga_plot = (run_dir / "probe_performances.png").read_bytes()
    assert len(saga_plot) > 30_000

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    cut = subprocess.run([sys.executable, "probe_main.py", *argv, "--solver", "lbfgs"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert cut.returncode == 1 and "could not be written" in " ".join(cut.stderr.split())
    assert (run_dir / "probe_performances.png").read_bytes() == saga_plot
    assert cli(*argv[:-2], "--solver", "lbfgs") == 0  # every layer from the cache
    assert (run_dir / "probe_performances.png").read_bytes() != saga_plot
    assert json.loads((run_dir / "probe_settings.json").read_text())["settings"]["solver"] == "lbfgs"
    assert "already in place" not in (run_dir / "probe.log").read_text()


def test_runs_with_several_latents_sets_are_in_place_on_a_repeat(tmp_path):
    """A run with a pixelwise set beside its default set counted as never in place (the by-set plot, which
    leaves pixelwise sets out, was required), so a repeat redrew every position's confusion plot."""
    layers, y_train, y_eval = blob_layers(n_layers=2)
    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    pixelwise = write_latents(run_dir / "latents_pixelwise", {"block0.conv@(0,0)": layers["block0.conv"],
                                                               "block0.conv@(0,1)": layers["block0.conv"]},
                              y_train, y_eval, run_dir, 0.9, downsampling="pixelwise")
    for folder in (latents, pixelwise):
        assert cli("--latents", str(folder), "-mp", "0", "--cache-dir", str(tmp_path / "cache")) == 0
    files = sorted(path for path in run_dir.rglob("*") if path.is_file() and not path.parent.name.startswith("latents")
                   and path.name not in ("probe.log", ".probe.lock"))
    assert any(path.parent.name == "probe_confusion_pixelwise" for path in files)
    identity = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files}
    for folder in (latents, pixelwise):
        assert cli("--latents", str(folder), "-mp", "0", "--cache-dir", str(tmp_path / "cache")) == 0
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files} == identity
    assert (run_dir / "probe.log").read_text().count("already in place") == 2


def test_an_unusable_cache_folder_is_one_error_without_a_warning_per_layer(tmp_path, capsys):
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=3))
    (tmp_path / "a_file").write_text("")
    assert cli("--latents", str(latents), "-mp", "0", "--cache-dir", str(tmp_path / "a_file" / "cache")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot be used" in err and "ignoring" not in err


def test_workers_that_fit_count_the_largest_layers_copies_held_at_once():
    from phd_lab.environment import available_memory
    from phd_lab.probes.memory import workers_that_fit
    assert workers_that_fit([10, 10, 10, 10], 4, 25) == 2
    assert workers_that_fit([30, 5, 5], 3, 35) == 2  # the largest first, as the job starts them
    assert workers_that_fit([5, 30, 5], 2, 20) == 1  # not the two small ones: the large one runs among the first
    assert workers_that_fit([100], 4, 1) == 1  # one layer larger than the budget still runs, alone
    assert workers_that_fit([0, 0, 0], 3, 1) == 3  # fits on the memory map hold no copies
    assert workers_that_fit([10, 10], 4, None) == 4  # memory unknown: as asked
    memory = available_memory()
    assert memory is not None and 0 < memory < 1 << 50  # Linux: MemAvailable, or a cgroup's limit


def test_a_job_starts_fewer_workers_where_the_layers_copies_would_not_fit_in_memory(tmp_path, capsys):
    """-mp defaults to the number of cores, and the largest layers start first: lbfgs (which standardises a copy
    of its layer) on a grid of wide layers used to start them all at once until the kernel killed a worker. (The
    jobs run in this process, their -mp 2 workers in real processes.)"""
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=3))
    base = ["--latents", str(latents), "--no-progress", "-mp", "2"]
    capsys.readouterr()
    code = probe_cli([*base, "--solver", "lbfgs", "--max-memory", "0.00001", "--cache-dir", str(tmp_path / "a")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 0, err
    assert "-mp 2: only 1 worker process(es) are started" in err and "given with --max-memory" in err
    assert "a larger --max-memory starts more" in err  # not "pass --max-memory", which was passed
    # each layer alone is larger than the budget: it runs alone, and that is said (it was not)
    assert "The largest layer to fit takes 0.00 GB in memory, more than the 0.00 GB given with --max-memory" in err
    one_at_a_time = pd.read_csv(run_dir / "probe_performances.csv").drop(columns="seconds")
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs", "--cache-dir", str(tmp_path / "c")) == 0
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "probe_performances.csv").drop(columns="seconds"),
                                  one_at_a_time)
    assert len(one_at_a_time) == 3
    capsys.readouterr()
    code = probe_cli([*base, "--solver", "saga", "--max-memory", "0.00001", "--cache-dir", str(tmp_path / "b")])
    assert code == 0  # no copies: no warning (stderr is wrapped: normalised first)
    assert "worker process(es) are started" not in " ".join(capsys.readouterr().err.split())


def test_layers_taken_from_the_cache_do_not_count_against_the_memory(tmp_path, caplog):
    """Only the layers still to fit hold copies: a repeated job whose layers are cached must not warn that it
    starts fewer workers, however little memory is given."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=3))
    settings = {"solver": "lbfgs"}
    run_jobs(jobs_from_latents(latents, settings)[0], tmp_path / "cache", workers=0, progress=False)
    with caplog.at_level(logging.WARNING):
        run_jobs(jobs_from_latents(latents, settings)[0], tmp_path / "cache", workers=2, progress=False, memory=1)
    assert "worker process(es) are started" not in caplog.text
    with caplog.at_level(logging.WARNING):  # the same job on an empty cache: all three would copy their layer
        run_jobs(jobs_from_latents(latents, settings)[0], tmp_path / "other", workers=2, progress=False, memory=1)
    assert "-mp 2: only 1 worker process(es) are started" in caplog.text


def test_max_memory_must_be_positive(tmp_path, capsys):
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    assert cli("--latents", str(latents), "--max-memory", "0") == 2
    assert "--max-memory must be a positive, finite number of GB; got 0.0" in " ".join(capsys.readouterr().err.split())
    for value in ("inf", "nan", "-1"):
        assert cli("--latents", str(latents), f"--max-memory={value}") == 2
        err = capsys.readouterr().err
        assert "--max-memory must be a positive, finite number" in " ".join(err.split()) and "Traceback" not in err


def test_max_memory_where_it_cannot_apply_is_said_not_ignored(tmp_path, capsys):
    """--max-memory limits how many -mp workers fit at once: with one worker, in-process fits or a Dask scheduler
    it changes nothing, and the user is told so instead of trusting a cap that is not there. (The jobs run in this
    process: the warning is the job's own, and four probe_main.py starts only added their imports.)"""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    base = ["--latents", str(latents), "--no-progress", "--max-memory", "5"]
    for extra, reason in ((["-mp", "1"], "-mp 1 fits one layer at a time"),
                          (["-mp", "0"], "-mp 0 fits one layer at a time"),
                          (["--scheduler", "local:1"], "--scheduler hands the layers to Dask workers")):
        capsys.readouterr()
        code = probe_cli([*base, *extra, "--cache-dir", str(tmp_path / extra[-1].replace(":", ""))])
        err = " ".join(capsys.readouterr().err.split())
        assert code == 0, err
        assert "--max-memory has no effect here" in err and reason in err
    code = probe_cli([*base, "-mp", "2", "--cache-dir", str(tmp_path / "two")])
    assert code == 0 and "no effect" not in " ".join(capsys.readouterr().err.split())


def test_the_copies_counted_are_those_the_fits_make(tmp_path):
    """saga on raw float32 reads the memory map; standardising copies train and eval; a subsample copies its
    rows; lbfgs-torch on a GPU fills its tensors from the map, block by block."""
    from phd_lab.probes.memory import copy_bytes
    from phd_lab.probes.settings import ProbeSettings
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1, n=400))
    (job,), _ = jobs_from_latents(latents)
    ((task,), (layer,)) = build_tasks([job]), job.manifest.layers
    train, evaluation = os.path.getsize(task.train), os.path.getsize(task.eval)
    assert layer.dtypes == {"train": "float32", "eval": "float32"}

    def counted(float16: bool = False, **settings) -> int:
        files = replace(layer, dtypes={"train": "float16", "eval": "float16"}) if float16 else layer
        return copy_bytes(replace(task, settings=ProbeSettings(**settings).resolved()), files)

    assert counted(solver="saga") == 0
    assert counted(solver="saga", standardize=True) == train + evaluation
    assert counted(solver="saga", float16=True) == 2 * (train + evaluation)
    assert counted(solver="saga", train_samples=100) == train // 4
    assert counted(solver="saga", train_samples=400) == 0  # all rows: no subsample is drawn
    assert counted(solver="lbfgs") == train + evaluation  # standardises by default
    assert counted(solver="lbfgs-torch") == train + evaluation
    assert counted(solver="lbfgs-torch", device="cuda") == 0
    assert counted(solver="lbfgs-torch", device="cuda", train_samples=200) == train // 2


def test_a_float16_eval_file_beside_float32_training_files_is_counted_by_its_own_dtype(tmp_path):
    """The manifest's ``dtype`` names the training files' dtypes only: the evaluation file's own header decides
    whether saga widens it into a float32 copy."""
    from phd_lab.probes.memory import copy_bytes
    (x_train, x_eval), = blob_layers(n_layers=1, n=400)[0].values()
    layers = {"block0.conv": (x_train, x_eval.astype(np.float16))}
    _, latents = make_latents(tmp_path, layers, *blob_layers(n_layers=1, n=400)[1:])
    (job,), _ = jobs_from_latents(latents)
    ((task,), (layer,)) = build_tasks([job]), job.manifest.layers
    assert job.manifest.raw["dtype"] == "float32"
    assert layer.dtypes == {"train": "float32", "eval": "float16"}
    assert copy_bytes(task, layer) == 2 * os.path.getsize(task.eval)  # saga reads the float32 training map


def test_memory_cgroups_on_the_way_to_the_root_limit_what_is_available(tmp_path):
    """A batch job's limit sits in its own cgroup (v2: <root>/<path>/memory.max; v1: the memory controller's
    memory.limit_in_bytes) or a parent's; file cache it could drop (inactive_file) is not counted as used."""
    from phd_lab.environment import _cgroup_headrooms
    job = tmp_path / "v2" / "slurm" / "job_7"
    job.mkdir(parents=True)
    (job / "memory.max").write_text("16000000000\n")
    (job / "memory.current").write_text("15500000000\n")
    (job / "memory.stat").write_text("anon 3000000000\ninactive_file 12000000000\n")
    (tmp_path / "v2" / "slurm" / "memory.max").write_text("max\n")
    (tmp_path / "v2" / "memory.max").write_text("20000000000\n")
    (tmp_path / "v2" / "memory.current").write_text("19000000000\n")
    (tmp_path / "v2" / "memory.stat").write_text("inactive_file 0\n")
    membership = tmp_path / "cgroup"
    membership.write_text("0::/slurm/job_7\n")
    assert sorted(_cgroup_headrooms(tmp_path / "v2", membership)) == [1_000_000_000, 12_500_000_000]
    v1 = tmp_path / "v1" / "memory" / "user" / "job"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("8000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("2000000000\n")
    (v1 / "memory.stat").write_text("total_inactive_file 500000000\n")
    v1_root = tmp_path / "v1" / "memory"
    (v1_root / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # how v1 writes "unlimited"
    (v1_root / "memory.usage_in_bytes").write_text("30000000000\n")
    (v1_root / "memory.stat").write_text("total_inactive_file 0\n")
    membership.write_text("12:cpu,cpuacct:/user/job\n11:memory:/user/job\n")
    assert _cgroup_headrooms(tmp_path / "v1", membership) == [6_500_000_000]
    (v1 / "memory.usage_in_bytes").write_text("9000000000\n")  # over its limit for a moment: no headroom, not < 0
    assert _cgroup_headrooms(tmp_path / "v1", membership) == [0]
    membership.write_text("0::/\n")
    assert _cgroup_headrooms(tmp_path / "none", membership) == []


def test_memory_cgroups_are_read_in_their_own_encoding_whatever_the_locale(tmp_path):
    """The cgroup files were read in the locale's encoding: probe_main.py -mp 2 under -X warn_default_encoding
    printed two EncodingWarnings from environment.py, and a cgroup whose name is not UTF-8 (a byte the kernel keeps
    as it is) ended the job with a UnicodeDecodeError. /proc/self/cgroup's paths keep their bytes; the limits are
    ASCII."""
    job = tmp_path / "v2" / os.fsdecode(b"job_\xe9")
    job.mkdir(parents=True)
    (job / "memory.max").write_bytes(b"4000\n")
    (job / "memory.current").write_bytes(b"1000\n")
    (job / "memory.stat").write_bytes(b"inactive_file 500\n")
    membership = tmp_path / "cgroup"
    membership.write_bytes(b"0::/job_\xe9\n")
    code = ("import sys; from pathlib import Path; from phd_lab.environment import _cgroup_headrooms; "
            "print(_cgroup_headrooms(Path(sys.argv[1]), Path(sys.argv[2])))")
    done = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-W", "error::EncodingWarning", "-c", code,
                           str(tmp_path / "v2"), str(membership)], capture_output=True, text=True, encoding="utf-8",
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stdout, done.stderr) == (0, "[3500]\n", "")


def test_a_memory_cgroup_named_in_utf_8_is_found_under_a_locale_without_utf_8(tmp_path):
    """/proc/self/cgroup was read as UTF-8 whatever the locale: under LC_ALL=C with Python's UTF-8 mode off, a
    cgroup named '数据' became text this process cannot name a file with (under a Latin-1 locale, another folder's
    name), so the memory check of probe_main.py -mp 2 missed the cgroup's limit and started workers for the
    machine's memory."""
    job = tmp_path / "v2" / os.fsdecode("job_数据".encode())
    job.mkdir(parents=True)
    (job / "memory.max").write_bytes(b"4000\n")
    (job / "memory.current").write_bytes(b"1000\n")
    (job / "memory.stat").write_bytes(b"inactive_file 500\n")
    membership = tmp_path / "cgroup"
    membership.write_bytes("0::/job_数据\n".encode())
    code = ("import sys; from pathlib import Path; from phd_lab.environment import _cgroup_headrooms; "
            "print(_cgroup_headrooms(Path(sys.argv[1]), Path(sys.argv[2])))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "v2"), str(membership)], capture_output=True,
                          text=True, encoding="utf-8", cwd=ROOT, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[3500]\n", "")


def test_the_memory_available_is_the_tightest_of_the_kernels_and_every_cgroups(tmp_path):
    """MemAvailable of the machine, or less where a cgroup on the way to the root has less headroom."""
    from phd_lab.environment import available_memory
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n")
    job = tmp_path / "v2" / "job"
    job.mkdir(parents=True)
    (job / "memory.max").write_text("8000000000\n")
    (job / "memory.current").write_text("1000000000\n")
    (job / "memory.stat").write_text("inactive_file 0\n")
    membership = tmp_path / "cgroup"
    membership.write_text("0::/job\n")
    assert available_memory(meminfo, tmp_path / "v2", membership) == 7_000_000_000  # the job's limit
    (job / "memory.max").write_text("80000000000\n")
    assert available_memory(meminfo, tmp_path / "v2", membership) == 20_000_000 * 1024  # the machine's
    assert available_memory(tmp_path / "missing", tmp_path / "none", tmp_path / "missing") is None


def test_a_diverged_run_is_named_as_such_not_sent_back_to_the_training_command(tmp_path, capsys):
    """A diverged run has no latents: the job said "Train the runs with the 'extract' step first (python main.py
    ...)", a command that only reports the divergence again, and in a grid it was one unexplained skipped index."""
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    grid = write_config(tmp_path, optimizer="sgd", optimizer_args={"lr": [1e6, 0.01]}, epoch=1,
                        track_saturation=False, post_processing=["extract"])
    assert main_cli(["--config", str(grid), "--no-progress", "-q"]) == 1  # run 0 diverges
    capsys.readouterr()
    assert probe_cli(["--config", str(grid), "--no-progress", "-mp", "0"]) == 0  # run 1 is probed
    said = " ".join(capsys.readouterr().err.split())
    assert "run 0 (vgg11-Digits-r16-bs128-e1) diverged in training (diverged.json), so it has no latents" in said
    alone = write_config(tmp_path, "alone.json", optimizer="sgd", optimizer_args={"lr": 1e6}, epoch=1,
                         track_saturation=False, post_processing=["extract"])
    assert probe_cli(["--config", str(alone), "--no-progress", "-mp", "0"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "Run(s) 0 of" in said and "diverged in training (their folders hold diverged.json)" in said
    assert "Train the runs with the 'extract' post-processing step first" not in said


def test_a_cache_entry_of_format_1_is_taken_not_refitted(tmp_path):
    """Before the confusion matrix moved into a .npy file (CACHE_FORMAT 2), an entry held it inline in its JSON under
    a key of format 1. A probe job after the upgrade found none of them ('0 found in the cache') and refitted every
    layer of every run; such an entry is now taken, the same record with the same matrix."""
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    folder = tmp_path / "cache"
    cache = ResultCache(folder)
    (task,) = build_tasks(jobs_from_latents(latents)[0])
    fitted = run_task(task)
    old_key = {**task.key, "format": 1}  # the entry as phd-lab wrote it before 2026-12-02
    old_entry = cache.path(old_key)
    old_entry.parent.mkdir(parents=True)
    old_entry.write_text(json.dumps({"key": old_key, "record": {**fitted.to_json(),
                                                                "confusion": fitted.confusion.tolist()}}))
    assert _fitted(latents, folder) == [("block0.conv", True)]
    stored = cache.get(task.key)
    assert stored == fitted and stored.seconds == fitted.seconds
    old_entry.write_text(json.dumps({"key": old_key, "record": {**fitted.to_json(), "confusion": [[1.0]]}}))
    assert cache.get(task.key) is None, "an entry whose matrix does not fit its classes is a miss"


@pytest.mark.parametrize("option, value, solver, fragment", [
    ("--max-iter", str(2**31), "saga", "'probe_max_iter' must be an integer ≥ 1 and ≤ 2147483647"),  # saga's C int
    ("--C", "1e-31", "lbfgs-torch", "'probe_C' must be a number ≥ 1e-30"),  # 1/C overflowed the float32 penalty
])
def test_solver_numbers_beyond_what_the_solvers_hold_are_refused_before_any_fit(tmp_path, capsys, option, value,
                                                                               solver, fragment):
    """They used to pass the checks and fail each layer's fit (OverflowError, exit 1) after probe.log was opened."""
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=1, n=60))
    before = sorted(run_dir.rglob("*"))
    assert cli("--latents", str(latents), "-mp", "0", "--solver", solver, option, value) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert fragment in err and "Traceback" not in err
    assert sorted(run_dir.rglob("*")) == before  # no probe.log, no cache, no lock


def test_the_probe_key_bounds_hold_for_a_config_file_too(tmp_path, capsys):
    from tests.conftest import write_config
    config = write_config(tmp_path, probe_max_iter=2**31)
    assert probe_cli(["--config", str(config), "-mp", "0"]) == 2
    assert "'probe_max_iter' must be an integer ≥ 1 and ≤ 2147483647" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "logs").exists()


def test_processes_far_above_the_cores_are_warned_about(tmp_path, capsys):
    """-mp 99999 was taken without a word: a job with that many layers to fit starts a worker process for each,
    all sharing the machine's few cores (and its memory, a login node's too). Said only where that many start: a
    rerun whose layers all come from the cache starts none, and was warned all the same."""
    from phd_lab.environment import available_cores
    cores = available_cores()
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2 * cores + 1, n=40))
    assert cli("--latents", str(latents), "-mp", "99999", "--solver", "lbfgs") == 0  # a worker for each layer
    said = " ".join(capsys.readouterr().err.split())
    assert f"-mp 99999 is more than twice the {cores} core(s)" in said and f"so {2 * cores + 1} of them" in said
    for processes in (2 * cores, 99999):
        assert cli("--latents", str(latents), "-mp", str(processes), "--solver", "lbfgs") == 0  # from the cache
        said = " ".join(capsys.readouterr().err.split())
        assert "more than twice" not in said, said


def test_latents_an_older_phd_lab_extracted_for_a_trained_run_are_not_probed_as_current(tmp_path, capsys):
    """A trained run's latents extracted before extraction version 2 (small feature maps up-sampled to
    'downsampling') were probed as they were, by --config and --latents, and their results read as this version's;
    such a run is now left for the training command to extract again: alone exit 2, beside probed runs exit 1."""
    config = _config(tmp_path, probe_solver="lbfgs")
    old = _latents_for_run(config, 0)  # the pre-version-2 manifest: these keys, no extraction_version
    manifest_path = old.latents() / "manifest.json"
    assert "extraction_version" not in json.loads(manifest_path.read_text())
    old.checkpoint.write_bytes(b"checkpoint")  # trained: the extract step's latents, not own ones
    _assert_usage_error(capsys, old.root, "--config", str(config), "-mp", "0",
                        match="were extracted by an older phd-lab (their manifest has no extraction_version")
    _assert_usage_error(capsys, old.root, "--latents", str(old.latents()), "-mp", "0",
                        match="were extracted by an older phd-lab")
    current = _latents_for_run(config, 1)  # own latents without a checkpoint are probed as before
    assert cli("--config", str(config), "-mp", "0") == 1
    said = " ".join(capsys.readouterr().err.split())
    assert "run(s) 0: latents of an older extraction" in said
    assert "were extracted by an older phd-lab" in said and f"--config {config} --index 0 extracts them again" in said
    assert current.probe_csv.is_file() and not old.probe_csv.exists()
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "extraction_version": 2}))
    assert cli("--config", str(config), "-mp", "0") == 0 and old.probe_csv.is_file()


def _skip_where_the_thread_stack_is_mapped() -> None:
    """Skip the test where a thread with the stack size set now (1 TiB) starts: a system that commits any address
    space (vm.overcommit_memory 1) maps it, so no thread is refused there."""
    import threading
    try:
        threading.Thread(target=int).start()
    except RuntimeError:
        return
    pytest.skip("this system maps a 1 TiB thread stack")


@pytest.mark.filterwarnings("ignore::tqdm.TqdmMonitorWarning")
def test_a_thread_the_system_refuses_is_said_as_such_without_a_traceback(tmp_path, capsys):
    """A node's limit of processes per user (ulimit -u, threads count) or of address space ended the job's file
    check with 'RuntimeError: can't start new thread' and a traceback. A stack no thread can map is refused the
    same real way: the job says which limits to raise, exit 1, and the rerun fits the layers."""
    import threading

    from tqdm import tqdm
    run_dir, latents = make_latents(tmp_path)
    previous, monitor = threading.stack_size(1 << 40), tqdm.monitor_interval
    try:
        _skip_where_the_thread_stack_is_mapped()
        assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs") == 1
    finally:
        threading.stack_size(previous)
        tqdm.monitor_interval = monitor  # tqdm turns its monitor thread off for good when it cannot start
    err = capsys.readouterr().err
    assert "error: The system refused this command a new thread (can't start new thread)" in err
    assert "ulimit -u" in err and "Traceback" not in err and not (run_dir / "probe_performances.csv").exists()
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs") == 0


def test_an_open_file_the_system_refuses_is_said_as_such_without_a_traceback(tmp_path, capsys):
    """A node's limit of open files (ulimit -n) reached while the job read its labels ended it with 'OSError:
    [Errno 24] Too many open files' and a traceback; it names ulimit -n now, exit 1, and the rerun fits."""
    import resource
    run_dir, latents = make_latents(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")), hard))
    try:
        assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs") == 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    err = capsys.readouterr().err
    assert "error:" in err and "Too many open files" in err and "Traceback" not in err
    assert "ulimit -n" in err
    assert not (run_dir / "probe_performances.csv").exists()
    assert cli("--latents", str(latents), "-mp", "0", "--solver", "lbfgs") == 0


def test_a_layer_whose_files_the_system_refuses_to_open_names_the_limit_not_the_layer(tmp_path):
    """Where the open-file limit was reached while a layer's probe opened its files (not the job its labels; which
    of the two depends on the descriptors the process holds, e.g. under pytest-xdist), the layer's failure said
    only 'OSError: [Errno 24] Too many open files', as if that layer were to blame; it names ulimit -n now."""
    import resource
    from phd_lab.probes.runner import _failure
    _, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    (task,) = build_tasks(jobs_from_latents(latents)[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")), hard))
    try:
        with pytest.raises(OSError) as refused:
            run_task(task)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    said = " ".join(str(_failure(task, refused.value)).split())
    assert said.startswith("The probe of layer 'block0.conv' (index 1,") and "Too many open files" in said
    assert f"ulimit -n {soft}" in said and "Raise the limit" in said, said


def test_a_worker_that_cannot_start_its_threads_is_not_only_said_killed_or_crashed(tmp_path, capsys):
    """Workers that could not start their threads (a node's ulimit -u, which counts threads; here a stack limit no
    thread can map, which spawned workers inherit) died at their imports, and the job said only that a worker was
    killed (the out-of-memory killer) or crashed; it names the limits now, exit 1."""
    import resource
    import threading
    run_dir, latents = make_latents(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    previous = threading.stack_size(1 << 40)  # what a thread of a worker under that stack limit asks for
    try:
        _skip_where_the_thread_stack_is_mapped()
    finally:
        threading.stack_size(previous)
    if hard != resource.RLIM_INFINITY and hard < 1 << 40:
        pytest.skip("the hard stack limit is below 1 TiB")
    resource.setrlimit(resource.RLIMIT_STACK, (1 << 40, hard))
    try:
        assert cli("--latents", str(latents), "-mp", "2", "--solver", "lbfgs") == 1
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))
    err = " ".join(capsys.readouterr().err.split())
    assert "could not start its threads" in err and "ulimit -u" in err and "ulimit -s 1073741824" in err
    assert not (run_dir / "probe_performances.csv").exists()


def test_the_job_sums_up_the_layers_that_did_not_converge_once(tmp_path):
    """Each layer's line said 'not converged' (saga's 100 epochs, the thesis' setting, stop nearly every layer
    there) and nothing summed them up or said whether that was the setting meant."""
    from phd_lab.probes.fit import ProbeRecord
    from phd_lab.probes.job import convergence_summary
    from phd_lab.probes.settings import ProbeSettings
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    run_jobs(jobs_from_latents(latents, {"solver": "saga", "max_iter": 1})[0], tmp_path / "cache", progress=False)
    said = " ".join((run_dir / "probe.log").read_text().split())
    assert ("2 of 2 layer(s) did not converge within max_iter 1 (saga); raise --max-iter (probe_max_iter) for fits "
            "that converge.") in said, said
    record = ProbeRecord(0, "conv", "saga", 0.5, 0.5, 100, False, 1.0, 10, 10, 4)
    assert convergence_summary(ProbeSettings(), [record, replace(record, converged=True)]).startswith(
        "1 of 2 layer(s) did not converge within max_iter 100 (saga): saga's 100 epochs are the thesis' setting")
    assert convergence_summary(ProbeSettings(), [replace(record, converged=True)]) is None


def test_the_summary_does_not_advise_more_iterations_for_lbfgs_torch_fits_that_stalled_before_max_iter(tmp_path):
    """A raw lbfgs-torch fit of Digits x 1e8 stalls in float32 after a few iterations, far from the optimum; the
    job said to raise --max-iter, which changes nothing there, as its float32 stall stops it just the same."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    run_dir, latents = make_latents(tmp_path, {"pixels": ((x[:1400] * 1e8).astype(np.float32),
                                                          (x[1400:] * 1e8).astype(np.float32))}, y[:1400], y[1400:])
    run_jobs(jobs_from_latents(latents, {"solver": "lbfgs-torch", "standardize": False})[0], tmp_path / "cache",
             progress=False)
    said = " ".join((run_dir / "probe.log").read_text().split())
    assert ("1 of 1 layer(s) did not converge (lbfgs-torch), 1 of them stalled before max_iter 1000 with a gradient "
            "entry above tol 0.0001") in said, said
    assert "raise --max-iter" not in said


def test_latents_below_a_folder_the_locale_cannot_decode_are_probed(tmp_path):
    """A manifest written under a UTF-8 locale names its run folder '.../数据/run' as text; read under LC_ALL=C
    (Python's UTF-8 mode off), the job could not name that folder ('ascii' codec can't encode, a traceback, exit
    1)."""
    run_dir, latents = make_latents(tmp_path / "数据", *blob_layers(n_layers=1))
    assert json.loads((latents / "manifest.json").read_text(encoding="utf-8"))["run_dir"] == str(run_dir)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, str(ROOT / "probe_main.py"), "--latents", str(latents), "-mp", "0",
                           "--solver", "lbfgs", "--no-progress", "-q"], cwd=ROOT, env=env, capture_output=True,
                          timeout=240)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert (run_dir / "probe_performances.csv").is_file()


def test_latents_written_under_a_latin_1_locale_are_probed_in_it(tmp_path):
    """Under a Latin-1 locale the manifest named a run folder 'café' (the byte 0xE9 on disk) by that locale's text,
    and the probe job, which reads a manifest's paths as UTF-8, looked for another folder, in that locale too
    ('The run folder ... does not exist', exit 2). The manifest holds the folder's bytes as UTF-8 text now."""
    locales = tmp_path / "locales"
    locales.mkdir()
    if shutil.which("localedef") is None or subprocess.run(
            ["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(locales / "en_US.ISO-8859-1")],
            capture_output=True, timeout=60).returncode not in (0, 1):  # 1: written, with warnings
        pytest.skip("localedef cannot make a Latin-1 locale here")
    env = {**os.environ, "LOCPATH": str(locales), "LC_ALL": "en_US.ISO-8859-1", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": str(ROOT)}
    script = ("import sys\nfrom pathlib import Path\nfrom tests.probe_latents import blob_layers, make_latents\n"
              "from phd_lab.probes.cli import probe_cli\n"
              "if sys.getfilesystemencoding() != 'iso8859-1':\n    sys.exit(77)\n"
              "run, latents = make_latents(Path(sys.argv[1]) / 'caf\\xe9', *blob_layers(n_layers=1))\n"
              "sys.exit(probe_cli(['--latents', str(latents), '-mp', '0', '--solver', 'lbfgs', '--no-progress',\n"
              "                    '-q']))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          timeout=240)
    if done.returncode == 77:
        pytest.skip("the Latin-1 locale made here is not Python's file-name encoding")
    assert done.returncode == 0, done.stderr.decode("latin-1")
    assert (tmp_path / os.fsdecode(b"caf\xe9") / "run" / "probe_performances.csv").is_file()  # the folder's byte


def test_the_commands_named_for_a_grid_job_with_a_run_id_keep_that_run_id(tmp_path, capsys):
    """With --run-id (one repetition of a config whose run_id list repeats every point) the warnings of an unfinished
    and of an older extraction, the job's closing note and the error of a grid with only such runs named `python
    main.py --config FILE --index N` without it: grid point N of the whole list, another run (here another
    repetition), or the whole list of repetitions trained. Every command named now carries --run-id."""
    config = _config(tmp_path, model_args={"width": [0.25, 0.125, 0.5]}, run_id=["a", "b"], probe_solver="lbfgs")
    only_b = tmp_path / "b.json"
    only_b.write_text(json.dumps({**json.loads(config.read_text()), "run_id": "b"}))
    probed, dead, old = (_latents_for_run(only_b, index) for index in range(3))
    assert "/b/" in str(probed.root)
    (dead.latents() / "manifest.json").unlink()  # an extraction killed before its manifest (written last)
    old.checkpoint.write_bytes(b"checkpoint")  # a trained run whose latents have no extraction_version
    assert cli("--config", str(config), "--run-id", "b", "-mp", "0") == 1
    said = " ".join(capsys.readouterr().err.split())
    command = f"python main.py --config {config} --run-id b"
    assert f"`{command} --index 1` finishes it" in said, said
    assert f"{command} --index 2 extracts them again" in said, said
    assert f"run(s) 2: latents of an older extraction, to be extracted again by {command})" in said, said
    assert f"--config {config} --index" not in said and probed.probe_csv.is_file()
    for run in (probed, dead):  # the older extraction alone is left: the job is refused
        shutil.rmtree(run.latents())
    _assert_usage_error(capsys, None, "--config", str(config), "--run-id", "b", "-mp", "0",
                        match=f"Run {command} first: it extracts them again")


def test_a_run_stopped_before_its_last_epoch_is_not_called_trained(tmp_path, capsys):
    """A run killed in epoch 2 of 3 (a checkpoint of epoch 1, no process at work on it) whose config lists 'extract'
    was warned of as "trained ... but without latents" with a command that "extracts them (a trained run is not
    trained again)": that command trains it on for the epochs left first. Its training is now named as stopped, with
    the command that resumes it and then extracts the latents (exit 1 as before); a run trained to its end is still
    named as trained."""
    config = _config(tmp_path, probe_solver="lbfgs", post_processing=["extract"], epoch=3,
                     model_args={"width": [0.25, 0.125, 0.5]})
    probed = _latents_for_run(config, 0)
    grid = Grid(load_config_file(config))
    stopped, trained = (RunDir.for_run(grid[index]).create() for index in (1, 2))
    for run, epochs in ((stopped, 1), (trained, 3)):
        run.checkpoint.write_bytes(b"a checkpoint")
        run.metrics_csv.write_text("epoch,train_loss,test_loss\n" + "".join(f"{e},0.5,0.6\n" for e in
                                                                             range(1, epochs + 1)))
    assert cli("--config", str(config), "-mp", "0") == 1
    said = " ".join(capsys.readouterr().err.split())
    assert (f"run 1 of {config} (training: stopped 1/3 epochs; no process at work on it): it stopped before its last "
            f"epoch") in said, said
    assert f"`python main.py --config {config} --index 1` resumes the training from its checkpoint" in said, said
    assert f"run(s) 2 of {config}: trained (a checkpoint" in said and "run(s) 1 of" not in said, said
    assert (f"run(s) 2: trained, latents not extracted (python main.py --config {config} --index 2 extracts them); "
            f"run(s) 1: training stopped before its last epoch, no latents (python main.py --config {config} --index 1 "
            f"resumes it)") in said, said
    assert probe_csv_written(probed)


def test_what_a_probe_job_removes_from_probe_confusion_is_what_the_docs_say(tmp_path):
    """README said the job removes 'the files' in probe_confusion* it did not write, docs/probes.md only the
    matrices of layers the latents no longer hold: it removes every .npy and .png file there that is not its own
    (a figure of one's own too), and leaves other files and hidden ones."""
    from phd_lab.probes.outputs import remove_other_confusions
    names = ["001-a.npy", "001-a.png", "002-gone.npy", "002-gone.png", "summary.png", "notes.txt", ".hidden.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    remove_other_confusions(tmp_path, [tmp_path / "001-a.npy", tmp_path / "001-a.png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.png", "001-a.npy", "001-a.png", "notes.txt"]
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    probes = " ".join((Path(__file__).parents[1] / "docs" / "probes.md").read_text().split())
    assert "(the probe job removes the `.npy` and `.png` files in them it did not write)" in readme
    assert "every `.npy` and `.png` file there that is not one of this job's" in probes
    assert "other files, and hidden ones, stay" in probes
