"""Latent extraction: shapes, dtype, manifest hashes, eval mode, reuse, and restart after SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from phd_lab.errors import ConfigError, ExtractionError
from phd_lab.extraction import PAUSE_ENV, extract_latents
from phd_lab.latents_folder import MANIFEST
from phd_lab.pooling import pool_to
from tests._extraction_models import build_model, loaders

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_KEYS = {"format", "extraction_version", "run_dir", "model_test_accuracy", "downsampling", "dtype", "layers",
                 "labels", "model_sha256"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Layer outputs computed directly, in eval mode, without the extraction code."""
    model.eval()
    with torch.no_grad():
        first = model.body[0](images)
        second = model.body[4](model.body[3](model.body[2](model.body[1](first))))
        head = model.head(torch.flatten(model.pool(model.body[5](second)), 1))
    return {"body.0": first, "body.4": second, "head": head}


@pytest.fixture(scope="module")
def data():
    return loaders()


def test_shapes_dtype_hashes_and_values(tmp_path, data):
    model = build_model()
    manifest = extract_latents(model, data, tmp_path / "latents", run_dir=tmp_path, downsampling=2,
                               dtype="float16", test_accuracy=0.5, progress=False)
    folder = tmp_path / "latents"
    assert json.loads((folder / MANIFEST).read_text()) == manifest
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["format"] == 1 and manifest["dtype"] == "float16" and manifest["downsampling"] == 2
    assert manifest["run_dir"] == str(tmp_path.resolve()) and manifest["model_test_accuracy"] == 0.5
    # forward order (body before head) although head is defined first
    assert [(e["index"], e["name"]) for e in manifest["layers"]] == [(1, "body.0"), (2, "body.4"), (3, "head")]
    expected_shapes = {"body.0": [1437, 4 * 2 * 2], "body.4": [1437, 6 * 2 * 2], "head": [1437, 10]}
    train_images = data["train"].dataset.tensors[0]
    reference = reference_outputs(build_model(), train_images)
    for entry in manifest["layers"]:
        assert entry["shape"] == expected_shapes[entry["name"]]
        assert entry["train"] == f"train-{entry['name']}.npy" and entry["eval"] == f"eval-{entry['name']}.npy"
        for split in ("train", "eval"):
            assert sha(folder / entry[split]) == entry["sha256"][split]
        train = np.load(folder / entry["train"], allow_pickle=False)
        evaluation = np.load(folder / entry["eval"], allow_pickle=False)
        assert train.dtype == np.float16 and train.shape == tuple(entry["shape"])
        assert evaluation.shape == (360, entry["shape"][1])
        expected = reference[entry["name"]]
        if expected.dim() == 4:
            expected = F.adaptive_avg_pool2d(expected, 2)
        np.testing.assert_allclose(train, expected.flatten(1).numpy(), rtol=2e-3, atol=2e-3)
    for split, count in (("train", 1437), ("eval", 360)):
        labels = np.load(folder / manifest["labels"][split], allow_pickle=False)
        assert labels.dtype == np.int64 and labels.shape == (count,)
        assert sha(folder / manifest["labels"][split]) == manifest["labels"]["sha256"][split]
        dataset = data["train" if split == "train" else "eval"].dataset
        np.testing.assert_array_equal(labels, dataset.tensors[1].numpy())
    assert not list(folder.glob(".*"))  # no temp or scratch files left


def test_eval_mode_keeps_batchnorm_statistics_and_restores_mode(tmp_path, data):
    model = build_model()
    model.train()
    bn = model.body[1]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    manifest = extract_latents(model, data, tmp_path, run_dir=tmp_path, downsampling=None, layers=["body.0", "body.2"],
                               progress=False)
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key  # running stats and batch counter untouched
    assert model.training and bn.training
    # body.2 (the ReLU after BatchNorm) equals the eval-mode computation, full map kept
    images = data["eval"].dataset.tensors[0]
    with torch.no_grad():
        expected = F.relu(F.batch_norm(model.body[0](images), before["running_mean"], before["running_var"],
                                       before["weight"], before["bias"], training=False, eps=bn.eps))
    relu = next(e for e in manifest["layers"] if e["name"] == "body.2")
    assert relu["shape"] == [1437, 4 * 8 * 8]
    np.testing.assert_allclose(np.load(tmp_path / relu["eval"]), expected.flatten(1).numpy(), rtol=1e-5, atol=1e-5)


def test_pixelwise_writes_every_position_as_its_own_data_set(tmp_path, data, capsys):
    model = build_model()
    manifest = extract_latents(model, data, tmp_path, run_dir=tmp_path, downsampling="pixelwise",
                               layers=["body.4", "head"], progress=True)
    err = capsys.readouterr().err
    for split in ("train", "eval"):  # splitting the maps into files is no longer a silent phase
        assert f"{split}: one file per position" in err and "/16 " in err
    entries = manifest["layers"]
    assert len(entries) == 4 * 4 + 1 and manifest["downsampling"] == "pixelwise"
    reference = reference_outputs(build_model(), data["eval"].dataset.tensors[0])
    for entry in entries[:-1]:
        row, col = entry["position"]
        assert entry["index"] == 1 and entry["layer"] == "body.4" and entry["name"] == f"body.4@{row}_{col}"
        assert entry["eval"] == f"eval-body.4@{row}_{col}.npy" and entry["shape"] == [1437, 6]
        values = np.load(tmp_path / entry["eval"])
        np.testing.assert_allclose(values, reference["body.4"][:, :, row, col].numpy(), rtol=1e-5, atol=1e-5)
        assert sha(tmp_path / entry["train"]) == entry["sha256"]["train"]
    assert entries[-1]["name"] == "head" and entries[-1]["index"] == 2 and "position" not in entries[-1]
    assert not list(tmp_path.glob(".*"))
    # the probe job takes such a folder (the positions share their layer's index) and keeps the manifest's
    # order in its table whatever order two workers finish the positions in
    from phd_lab.probes.cli import probe_cli
    assert probe_cli(["--latents", str(tmp_path), "-mp", "2", "--solver", "lbfgs", "--no-progress", "-q"]) == 0
    table = pd.read_csv(tmp_path / "probe_performances.csv")
    assert table["layer"].tolist() == [entry["name"] for entry in entries]
    assert table["index"].tolist() == [1] * 16 + [2] and table["eval_acc"].between(0, 1).all()
    assert len(list((tmp_path / "probe_confusion").glob("*.npy"))) == 17


def test_a_latents_link_into_a_purged_scratch_space_is_named_and_extracts_there_once_its_folder_is_back(tmp_path,
                                                                                                     data):
    """mkdir failed on a latents folder that is a link to a folder since deleted: 'File exists', naming neither the
    link nor where it leads. The step names both, with the commands that mend it, and makes nothing; with the
    folder made again, the latents are extracted into it."""
    scratch = tmp_path / "scratch" / "latents"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latents").symlink_to("../scratch/latents")  # relative, as `ln -s` is often used
    with pytest.raises(ConfigError) as refused:
        extract_latents(build_model(), data, tmp_path / "run" / "latents", run_dir=tmp_path / "run", progress=False)
    said = " ".join(str(refused.value).split())
    assert (f"it is a symbolic link to '../scratch/latents' ({scratch}), which does not exist (deleted, e.g. a "
            f"scratch space purged, or on a file system not mounted on this machine). Create the folder it points "
            f"to (mkdir -p {scratch}) to extract there, or remove the link (rm {tmp_path / 'run' / 'latents'})") in said
    assert not (tmp_path / "scratch").exists()
    scratch.mkdir(parents=True)
    manifest = extract_latents(build_model(), data, tmp_path / "run" / "latents", run_dir=tmp_path / "run",
                               progress=False)
    assert (scratch / MANIFEST).is_file() and len(manifest["layers"]) == 3


def test_complete_extraction_is_reused_and_changed_settings_redo_it(tmp_path, data):
    model = build_model()
    first = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    stamp = (tmp_path / MANIFEST).stat().st_mtime_ns
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.npy")}
    again = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    assert again == first and (tmp_path / MANIFEST).stat().st_mtime_ns == stamp
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.npy")} == files
    half = extract_latents(model, data, tmp_path, run_dir=tmp_path, dtype="float16", layers=["head"],
                           progress=False)
    assert [e["name"] for e in half["layers"]] == ["head"]
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["eval-head.npy", "eval-labels.npy",
                                                              "train-head.npy", "train-labels.npy"]
    # other weights (a run retrained in its folder on another device): the old latents are not reused
    with torch.no_grad():
        model.head.bias.add_(1.0)
    retrained = extract_latents(model, data, tmp_path, run_dir=tmp_path, dtype="float16", layers=["head"],
                                progress=False)
    assert retrained["model_sha256"] != half["model_sha256"]
    assert retrained["layers"][0]["sha256"] != half["layers"][0]["sha256"]


def test_latents_of_a_moved_run_folder_are_reused_and_name_its_new_place(tmp_path, data):
    """A rerun after the logs tree was moved extracted identical latents again (the manifest's absolute
    run_dir differed), which also marked the run's probe results stale."""
    model = build_model()
    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    first = extract_latents(model, data, old / "latents", run_dir=old, progress=False)
    old.parent.rename(tmp_path / "new")
    manifest = new / "latents" / MANIFEST
    stamp = manifest.stat().st_mtime_ns
    files = {p.name: p.stat().st_mtime_ns for p in (new / "latents").glob("*.npy")}
    again = extract_latents(model, data, new / "latents", run_dir=new, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (new / "latents").glob("*.npy")} == files  # nothing re-extracted
    assert again == {**first, "run_dir": str(new.resolve())}
    assert json.loads(manifest.read_text())["run_dir"] == str(new.resolve())
    assert manifest.stat().st_mtime_ns == stamp  # the same latents: probes fitted before stay current



def test_a_manifest_holding_nan_is_refused_naming_its_key_not_rewritten_with_a_traceback(tmp_path, data):
    """A hand-edited "model_test_accuracy": Infinity (Python's JSON reader takes it): the moved run folder's latents
    were reused, then rewriting their manifest to name the new place raised a ValueError (strict JSON)."""
    from phd_lab.errors import DataError
    model = build_model()
    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    extract_latents(model, data, old / "latents", run_dir=old, progress=False)
    manifest = old / "latents" / MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "model_test_accuracy": float("inf")}))
    old.parent.rename(tmp_path / "new")
    before = (new / "latents" / MANIFEST).read_bytes()
    with pytest.raises(DataError, match=r"manifest '.*new/run/latents/manifest.json' is invalid: its value at "
                                        r"model_test_accuracy is inf.*delete the manifest"):
        extract_latents(model, data, new / "latents", run_dir=new, progress=False)
    assert (new / "latents" / MANIFEST).read_bytes() == before


LATIN_1_MOVE = """import logging, sys
from pathlib import Path
from tests._extraction_models import build_model, loaders
from phd_lab.extraction import extract_latents
if sys.getfilesystemencoding() != 'iso8859-1':
    sys.exit(77)
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
top, model, data = Path(sys.argv[1]), build_model(), loaders()
extract_latents(model, data, top / 'old' / 'run' / 'latents', run_dir=top / 'old' / 'run', progress=False)
(top / 'old').rename(top / 'caf\\xe9')
extract_latents(model, data, top / 'caf\\xe9' / 'run' / 'latents', run_dir=top / 'caf\\xe9' / 'run', progress=False)
"""


def test_the_move_of_a_run_folder_is_logged_by_a_readable_name_under_a_latin_1_locale(tmp_path):
    """Under a Latin-1 locale the manifest names a folder 'café' by the escape of its byte 0xE9, which is how
    'The run folder moved to .../caf\\udce9' was logged."""
    locales = tmp_path / "locales"
    locales.mkdir()
    if subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(locales / "en_US.ISO-8859-1")],
                      capture_output=True, timeout=60).returncode not in (0, 1):  # 1: written, with warnings
        pytest.skip("localedef cannot make a Latin-1 locale here")
    env = {**os.environ, "LOCPATH": str(locales), "LC_ALL": "en_US.ISO-8859-1", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", LATIN_1_MOVE, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          timeout=240)
    if done.returncode == 77:
        pytest.skip("the Latin-1 locale made here is not Python's file-name encoding")
    assert done.returncode == 0, done.stderr.decode("latin-1")
    moved = [line for line in done.stderr.splitlines() if b"The run folder lies at" in line]
    assert len(moved) == 1 and b"/caf\xe9/run now" in moved[0], done.stderr.decode("latin-1")


def test_a_latents_file_changed_since_extraction_is_extracted_again(tmp_path, data):
    """Same shape and dtype, one value edited: reuse would leave a folder the probe job rejects
    (sha256 mismatch) and that no rerun could mend."""
    model = build_model()
    first = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    entry = first["layers"][0]
    edited = np.load(tmp_path / entry["train"])
    edited[0, 0] += 1.0
    np.save(tmp_path / entry["train"], edited)
    again = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    assert again == first
    assert sha(tmp_path / entry["train"]) == entry["sha256"]["train"]


def test_latents_of_another_number_of_samples_are_extracted_again(tmp_path, data):
    """The same model and settings on a test split that has since shrunk (a data folder replaced): the old files
    hold 360 rows, so reusing them would hand the probes labels and latents of samples no longer in the split."""
    model = build_model()
    first = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    fewer = TensorDataset(*(tensor[:300] for tensor in data["eval"].dataset.tensors))
    again = extract_latents(model, {"train": data["train"], "eval": DataLoader(fewer, batch_size=100)}, tmp_path,
                            run_dir=tmp_path, progress=False)
    assert again["labels"]["sha256"]["eval"] != first["labels"]["sha256"]["eval"]
    assert np.load(tmp_path / again["labels"]["eval"]).shape == (300,)
    assert all(np.load(tmp_path / entry["eval"]).shape[0] == 300 for entry in again["layers"])


def test_unknown_layer_is_named(tmp_path, data):
    with pytest.raises(ConfigError, match=r"'bdy.0' matches no module .* Did you mean 'body.0'"):
        extract_latents(build_model(), data, tmp_path, run_dir=tmp_path, layers=["bdy.0"], progress=False)
    assert not (tmp_path / MANIFEST).exists()


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from _extraction_models import build_model, loaders
from phd_lab.extraction import extract_latents
extract_latents(build_model(), loaders(), {folder!r}, run_dir={run!r}, downsampling=2, progress=False)
"""


@pytest.mark.parametrize("linked", [False, True], ids=["folder", "link-to-scratch"])
def test_restart_after_sigkill_mid_extraction(tmp_path, data, linked):
    """Also where the latents folder is the user's link to a scratch disk: its killed extraction's files were
    refused on the rerun as possibly the user's own (``refuse_foreign_link``), so that the run could not go on."""
    folder = tmp_path / "latents"
    if linked:
        (tmp_path / "scratch").mkdir()
        folder.symlink_to(tmp_path / "scratch")
    else:  # (in a linked folder without a manifest, such a file may be the user's: refused, tested elsewhere)
        folder.mkdir()
        (folder / "train-stale.npy").write_bytes(b"left by an older extraction")
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(folder), run=str(tmp_path))
    env = {**os.environ, PAUSE_ENV: "0.3", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not list(folder.glob(".eval-*.tmp")):  # the train split is done, eval in progress
            assert process.poll() is None, "the extraction ended before it could be killed"
            assert time.monotonic() < deadline, "the extraction did not reach the eval split"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (folder / MANIFEST).exists()
    assert (folder / "train-body.0.npy").exists() and list(folder.glob(".*.tmp"))  # half-written state

    resumed = extract_latents(build_model(), data, folder, run_dir=tmp_path, downsampling=2, progress=False)
    clean = extract_latents(build_model(), data, tmp_path / "clean", run_dir=tmp_path, downsampling=2,
                            progress=False)
    assert resumed == clean  # same files, same hashes
    assert not list(folder.glob(".*")) and not (folder / "train-stale.npy").exists()
    assert folder.is_symlink() == linked
    for entry in resumed["layers"]:
        assert sha(folder / entry["train"]) == entry["sha256"]["train"]


@pytest.mark.parametrize("height,width", [(32, 32), (8, 16), (4, 4), (2, 2), (1, 2), (7, 7), (12, 12), (6, 3)])
@pytest.mark.parametrize("size", [1, 2, 4, (2, 4), (4, 1)])
def test_pool_to_equals_adaptive_average_pooling(height, width, size):
    maps = torch.randn(3, 5, height, width, generator=torch.Generator().manual_seed(height * 100 + width))
    expected = F.adaptive_avg_pool2d(maps, size)
    pooled = pool_to(maps, size)
    assert pooled.shape == expected.shape
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)


def test_outputs_are_taken_before_a_following_in_place_relu(tmp_path):
    """Latents are the layer's own output even where the next module changes it in place."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(inplace=True), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4 * 4, 5), torch.nn.ReLU(inplace=True), torch.nn.Linear(5, 2))
    images = torch.randn(20, 1, 4, 4)
    dataset = torch.utils.data.TensorDataset(images, torch.arange(20) % 2)
    data = {split: torch.utils.data.DataLoader(dataset, batch_size=8) for split in ("train", "eval")}
    manifest = extract_latents(model, data, tmp_path, run_dir=tmp_path, downsampling=4, progress=False)
    with torch.no_grad():
        conv = model[0](images)
        hidden = model[3](torch.relu(conv).flatten(1))
    latents = {e["name"]: np.load(tmp_path / e["train"], allow_pickle=False) for e in manifest["layers"]}
    assert (latents["0"] < 0).any() and (latents["3"] < 0).any()  # not rectified afterwards
    np.testing.assert_allclose(latents["0"], conv.flatten(1).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(latents["3"], hidden.numpy(), rtol=1e-6, atol=1e-6)


def test_maps_smaller_than_the_downsampling_size_are_not_up_sampled(tmp_path):
    """Thesis §8.3.1: the sizes are maximum sizes; a 2×2 map at downsampling 4 used to be repeated to 4×4,
    duplicating every feature of exactly the tail layers (it changes SAGA's effective L2 strength)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, stride=2, padding=1),
                                torch.nn.Conv2d(3, 2, (1, 3), padding=(0, 1)), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 3 * 6, 2))
    images = torch.randn(12, 1, 6, 12)  # → 3×6 maps: height below 4, width above
    dataset = torch.utils.data.TensorDataset(images, torch.arange(12) % 2)
    data = {split: torch.utils.data.DataLoader(dataset, batch_size=5) for split in ("train", "eval")}
    manifest = extract_latents(model, data, tmp_path, run_dir=tmp_path, downsampling=4, progress=False)
    shapes = {e["name"]: e["shape"] for e in manifest["layers"]}
    assert shapes == {"0": [12, 3 * 3 * 4], "1": [12, 2 * 3 * 4], "3": [12, 2]}
    with torch.no_grad():
        first = F.adaptive_avg_pool2d(model[0](images), (3, 4))
    np.testing.assert_allclose(np.load(tmp_path / "train-0.npy", allow_pickle=False), first.flatten(1).numpy(),
                               rtol=1e-3, atol=1e-3)


def test_latents_of_an_older_extraction_version_are_extracted_again(tmp_path, data):
    """A manifest without extraction_version (before small maps stopped being up-sampled) is not reused."""
    model = build_model()
    first = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    old = {k: v for k, v in first.items() if k != "extraction_version"}
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    again = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    assert again == first and json.loads((tmp_path / MANIFEST).read_text())["extraction_version"] >= 2


def test_default_layers_leave_out_shared_and_never_called_layers(tmp_path, data, caplog):
    """The default (every Conv2d and Linear) failed the step on models with a shared module (the built-in
    resnet18_cbam runs its channel MLP twice) or an attention block (out_proj is never called)."""
    class SharedAndAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.shared = nn.Conv2d(4, 4, 1)
            self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 10)

        def forward(self, x):
            x = self.conv(x)
            x = self.shared(x) + self.shared(torch.relu(x))
            tokens = x.flatten(2).transpose(1, 2)
            return self.head(self.attention(tokens, tokens, tokens)[0].mean(1))

    torch.manual_seed(0)
    caplog.set_level("INFO", logger="phd_lab.extraction")
    manifest = extract_latents(SharedAndAttention(), data, tmp_path, run_dir=tmp_path, progress=False)
    assert [entry["name"] for entry in manifest["layers"]] == ["conv", "head"]
    assert "shared run more than once" in caplog.text and "attention.out_proj are never called" in caplog.text
    with pytest.raises(ExtractionError, match="layer 'shared' runs more than once"):
        extract_latents(SharedAndAttention(), data, tmp_path / "named", run_dir=tmp_path, layers=["shared"],
                        progress=False)
    # a wildcard leaves them out as the default does (it failed the run, naming a layer the user never named)
    manifest = extract_latents(SharedAndAttention(), data, tmp_path / "wildcard", run_dir=tmp_path,
                               layers=["s*", "conv", "attention.*"], progress=False)
    assert [entry["name"] for entry in manifest["layers"]] == ["conv"]  # shared: twice; attention.out_proj: never
    with pytest.raises(ExtractionError, match=r"no layer that \['s\*'\] match runs exactly once"):
        extract_latents(SharedAndAttention(), data, tmp_path / "none", run_dir=tmp_path, layers=["s*"],
                        progress=False)


def test_a_layer_named_labels_is_refused_before_its_files_replace_the_label_files(tmp_path, data):
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 2, 3))
    model.add_module("flat", nn.Flatten())
    model.add_module("labels", nn.LazyLinear(10))
    with pytest.raises(ConfigError, match="has a layer named 'labels'"):
        extract_latents(model, data, tmp_path / "latents", run_dir=tmp_path, progress=False)
    assert not (tmp_path / "latents").exists()
    manifest = extract_latents(model, data, tmp_path / "latents", run_dir=tmp_path, layers=["conv"], progress=False)
    assert [entry["name"] for entry in manifest["layers"]] == ["conv"]


def test_overlapping_layer_patterns_extract_each_layer_once(tmp_path, data):
    """A layer named by two patterns (a wildcard and its exact name) is one layer: hooked twice it would fail as
    a layer that "runs more than once"."""
    manifest = extract_latents(build_model(), data, tmp_path, run_dir=tmp_path, layers=["body.*", "body.0", "head"],
                               downsampling=1, progress=False)
    assert [e["name"] for e in manifest["layers"]] == [f"body.{i}" for i in range(6)] + ["head"]


def test_a_named_layer_the_forward_pass_never_calls_is_refused(tmp_path, data):
    model = build_model()
    model.add_module("unused", nn.Linear(6, 3))
    with pytest.raises(ExtractionError, match=r"the layers \['unused'\] are not used in the forward pass"):
        extract_latents(model, data, tmp_path / "latents", run_dir=tmp_path, layers=["head", "unused"],
                        progress=False)
    assert not (tmp_path / "latents").exists()


def test_an_empty_split_is_refused_and_leaves_no_folder(tmp_path, data):
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ExtractionError, match="the eval split is empty"):
        extract_latents(build_model(), {"train": data["train"], "eval": DataLoader(empty, batch_size=10)},
                        tmp_path / "latents", run_dir=tmp_path, layers=["head"], progress=False)
    assert not (tmp_path / "latents").exists()


@pytest.mark.parametrize("settings, message", [
    ({"downsampling": 0}, "downsampling must be an integer ≥ 1, null or 'pixelwise'; got 0"),
    ({"downsampling": True}, "downsampling must be an integer ≥ 1, null or 'pixelwise'; got True"),
    ({"dtype": "float64"}, r"dtype must be one of \['float32', 'float16'\]; got 'float64'"),
    ({"method": "bilinear"}, r"the method must be one of \['adaptive_avg', 'nearest'\]; got 'bilinear'"),
])
def test_settings_extraction_cannot_use_are_refused_before_anything_is_written(tmp_path, data, settings, message):
    with pytest.raises(ConfigError, match=message):
        extract_latents(build_model(), data, tmp_path / "latents", run_dir=tmp_path, progress=False, **settings)
    assert not (tmp_path / "latents").exists()


def test_pixelwise_positions_of_a_non_square_map_and_their_reuse(tmp_path):
    """Rows and columns of a 2×3 map are not swapped, and a complete pixelwise extraction (its manifest lists
    positions, named after their layer) is reused like any other."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 2 * 3, 2))
    images = torch.randn(10, 1, 2, 3)
    dataset = TensorDataset(images, torch.arange(10) % 2)
    split = {name: DataLoader(dataset, batch_size=4) for name in ("train", "eval")}
    manifest = extract_latents(model, split, tmp_path, run_dir=tmp_path, downsampling="pixelwise", progress=False)
    positions = [e["position"] for e in manifest["layers"] if e.get("layer") == "0"]
    assert positions == [[row, col] for row in range(2) for col in range(3)]
    with torch.no_grad():
        maps = model[0](images)
    for entry in manifest["layers"][:-1]:
        row, col = entry["position"]
        np.testing.assert_allclose(np.load(tmp_path / entry["train"]), maps[:, :, row, col].numpy(), rtol=1e-6)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert extract_latents(model, split, tmp_path, run_dir=tmp_path, downsampling="pixelwise",
                           progress=False) == manifest
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps


def test_pixelwise_scratch_files_are_split_in_chunks(tmp_path):
    """Scratch rows beyond the 32 MiB copied at once (here 4 samples per chunk, 9 samples) reach every
    position file whole, the last partial chunk included."""
    from phd_lab.extraction import _CHUNK_BYTES, _split_positions
    samples, width, channels = 9, 2, 2**21  # one sample's row: 2 × 2**21 float16 = 8 MiB
    assert 1 < _CHUNK_BYTES // (width * channels * 2) < samples
    scratch = np.empty((samples, 1, width, channels), dtype=np.float16)
    for sample in range(samples):
        scratch[sample] = sample + np.arange(width, dtype=np.float16)[:, None] / 4
    path = tmp_path / ".scratch-train-x.npy"
    np.save(path, scratch)
    del scratch
    files = _split_positions(path, "train", "x", (1, width), "float16")
    assert sorted(files) == ["x@0_0", "x@0_1"]
    for col in range(width):
        written = np.load(tmp_path / files[f"x@0_{col}"]["file"], mmap_mode="r")
        assert written.shape == (samples, channels)
        np.testing.assert_array_equal(written[:, :1], (np.arange(samples) + col / 4)[:, None].astype(np.float16))
        np.testing.assert_array_equal(written[:, -1], np.arange(samples) + col / 4)
        assert files[f"x@0_{col}"]["sha256"] == sha(tmp_path / files[f"x@0_{col}"]["file"])


def test_other_layers_alone_are_extracted_again(tmp_path, data):
    model = build_model()
    extract_latents(model, data, tmp_path, run_dir=tmp_path, layers=["head"], progress=False)
    manifest = extract_latents(model, data, tmp_path, run_dir=tmp_path, layers=["body.0", "head"], progress=False)
    assert [e["name"] for e in manifest["layers"]] == ["body.0", "head"]
    assert json.loads((tmp_path / MANIFEST).read_text()) == manifest


def test_an_edited_label_file_is_extracted_again(tmp_path, data):
    """Labels of the same count and dtype but another value fail the probe job's sha256 check as latents do."""
    model = build_model()
    first = extract_latents(model, data, tmp_path, run_dir=tmp_path, layers=["head"], progress=False)
    labels = np.load(tmp_path / "eval-labels.npy")
    np.save(tmp_path / "eval-labels.npy", (labels + 1) % 10)
    assert extract_latents(model, data, tmp_path, run_dir=tmp_path, layers=["head"], progress=False) == first
    assert sha(tmp_path / "eval-labels.npy") == first["labels"]["sha256"]["eval"]


@pytest.mark.parametrize("text", ["[]", "null", "{\"format\": 1", "\"latents\""])
def test_a_manifest_that_is_no_json_object_is_a_half_written_extraction(tmp_path, data, text):
    (tmp_path / MANIFEST).write_text(text)
    (tmp_path / "train-head.npy").write_bytes(b"left over")
    manifest = extract_latents(build_model(), data, tmp_path, run_dir=tmp_path, layers=["head"], progress=False)
    assert json.loads((tmp_path / MANIFEST).read_text()) == manifest
    assert sha(tmp_path / "train-head.npy") == manifest["layers"][0]["sha256"]["train"]


def test_a_pixelwise_scratch_file_left_by_a_killed_extraction_is_cleared(tmp_path, data):
    (tmp_path / ".scratch-train-body.4.npy").write_bytes(b"a killed pixelwise extraction's (N, H, W, C) maps")
    extract_latents(build_model(), data, tmp_path, run_dir=tmp_path, layers=["head"], progress=False)
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("accuracy", [float("nan"), float("inf")])
def test_a_test_accuracy_that_is_no_number_is_written_as_null(tmp_path, data, accuracy):
    """A model trained to reconstruct its input has no accuracy (NaN): the manifest must stay strict JSON."""
    extract_latents(build_model(), data, tmp_path, run_dir=tmp_path, layers=["head"], test_accuracy=accuracy,
                    progress=False)

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is no JSON")
    assert json.loads((tmp_path / MANIFEST).read_text(), parse_constant=refuse)["model_test_accuracy"] is None


def test_layers_that_run_in_another_order_on_the_test_split_are_refused(tmp_path):
    """The manifest pairs each layer's train and eval files: a forward pass whose order depends on the data must
    not pair one layer's training latents with another's test latents."""
    class Swapping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(x)) if x[0, 0] > 0 else self.a(self.b(x))

    positive = TensorDataset(torch.rand(8, 4) + 0.1, torch.arange(8) % 2)
    negative = TensorDataset(-torch.rand(8, 4) - 0.1, torch.arange(8) % 2)
    split = {"train": DataLoader(positive, batch_size=4), "eval": DataLoader(negative, batch_size=4)}
    with pytest.raises(ExtractionError, match="the layers ran in a different order on the test split"):
        extract_latents(Swapping(), split, tmp_path / "latents", run_dir=tmp_path, progress=False)
    assert not (tmp_path / "latents").exists()


def test_a_failed_extraction_over_a_complete_one_leaves_no_manifest_of_the_files_it_removed(tmp_path, data):
    latents = tmp_path / "latents"
    extract_latents(build_model(), data, latents, run_dir=tmp_path, layers=["head"], progress=False)
    with pytest.raises(RuntimeError, match="channels"):
        extract_latents(nn.Sequential(nn.Conv2d(5, 2, 3)), data, latents, run_dir=tmp_path, layers=["0"],
                        progress=False)
    assert not latents.exists()


def test_a_data_parallel_model_is_extracted_as_its_own_module(tmp_path, data):
    """The wrapper of a run trained on several GPUs adds no 'module.' to the layer names, and the latents are
    those of the model itself (reused as they are)."""
    model = build_model()
    wrapped = extract_latents(nn.DataParallel(model), data, tmp_path, run_dir=tmp_path, downsampling=1,
                              progress=False)
    assert [e["name"] for e in wrapped["layers"]] == ["body.0", "body.4", "head"]
    stamp = (tmp_path / MANIFEST).stat().st_mtime_ns
    assert extract_latents(model, data, tmp_path, run_dir=tmp_path, downsampling=1, progress=False) == wrapped
    assert (tmp_path / MANIFEST).stat().st_mtime_ns == stamp


def test_latents_look_whole_only_while_every_listed_file_has_its_rows_shape_and_dtype(tmp_path, data):
    """What --dry-run reads off the headers: a file replaced by a valid .npy of other rows, features or dtype (or
    label files that are no int64 vector) is no finished extraction, as the real run would find."""
    from phd_lab.latents_folder import latents_look_whole
    extract_latents(build_model(), data, tmp_path, run_dir=tmp_path, layers=["body.0", "head"], downsampling=2,
                    progress=False)
    assert latents_look_whole(tmp_path)
    for name in ("eval-body.0.npy", "train-labels.npy"):
        original = np.load(tmp_path / name)
        replacements = ([original[:, :-1], original[:-1], original.astype(np.float16)] if original.ndim == 2
                        else [original.astype(np.int32), original[:, None], original[:-1]])
        for replaced in replacements:
            np.save(tmp_path / name, replaced)
            assert not latents_look_whole(tmp_path), (name, replaced.shape, replaced.dtype)
        np.save(tmp_path / name, original)
        assert latents_look_whole(tmp_path)


def test_an_empty_latents_file_is_extracted_again_and_a_folder_in_its_place_named(tmp_path, data):
    """A latents .npy left empty (a full disk, a copy cut short): np.load's EOFError was caught nowhere, so
    `main.py --dry-run` ended with a traceback and the rerun's extract step failed the run (exit 1) instead of
    extracting again. A folder in a latents file's place failed it with a bare IsADirectoryError."""
    from phd_lab.errors import FolderInTheWay
    from phd_lab.latents_folder import latents_look_whole
    model = build_model()
    options = {"run_dir": tmp_path, "layers": ["body.0", "head"], "downsampling": 2, "progress": False}
    manifest = extract_latents(model, data, tmp_path, **options)
    (tmp_path / "eval-body.0.npy").write_bytes(b"")
    assert not latents_look_whole(tmp_path)
    assert extract_latents(model, data, tmp_path, **options) == manifest
    assert latents_look_whole(tmp_path)
    (tmp_path / "train-head.npy").unlink()
    (tmp_path / "train-head.npy").mkdir()
    with pytest.raises(FolderInTheWay, match="train-head.npy' is a folder, but phd-lab writes a file"):
        extract_latents(model, data, tmp_path, **options)


def test_space_error_names_the_bytes_needed_and_free_and_the_ways_out():
    """The check's boundary and message, as numbers: latents that fit (also exactly) pass; more than the free
    bytes is an error naming both amounts, the folder and the keys that shrink the latents (float16 only where
    the latents are float32)."""
    from phd_lab.extraction import space_error
    assert space_error(0, 0, "/data/latents") is None
    assert space_error(5 * 10**12, 5 * 10**12, "/data/latents") is None
    message = space_error(2_300_000_000_123, 499_999_999_999, "/data/latents")
    assert "need at least 2.3 TB (2,300,000,000,123 bytes) more in /data/latents" in message
    assert "its disk has 500.0 GB (499,999,999,999 bytes) free" in message
    for way_out in ("'latents_dir'", "'downsampling'", "'layers'", "'dtype' \"float16\""):
        assert way_out in message
    assert "float16" not in space_error(1001, 1000, "x", "float16")
    assert "1.0 kB (1,001 bytes) more in x, but its disk has 1.0 kB (1,000 bytes) free" in space_error(1001, 1000, "x")


class _Huge(torch.utils.data.Dataset):
    """10¹² samples, of which only the first ``readable`` may be read: latents no disk holds. A read beyond them
    fails the test, as an extraction that did not stop after its first batch would fill the disk."""

    def __init__(self, readable: int) -> None:
        self.images, self.labels = loaders()["train"].dataset.tensors
        self.readable = readable

    def __len__(self) -> int:
        return 10**12

    def __getitem__(self, index: int):
        assert index < self.readable, f"sample {index} read: the extraction went on past its first batch"
        return self.images[index], self.labels[index]


@pytest.mark.parametrize("downsampling, row_bytes, scratch_bytes", [
    (4, (4 * 16 + 6 * 16 + 10) * 4 + 8, 0),  # body.0 4×4×4, body.4 6×4×4, head 10 (float32), a label (int64)
    ("pixelwise", (4 * 64 + 6 * 16 + 10) * 4 + 8, 4 * 64 * 4),  # and body.0's scratch file while it is split
])
def test_latents_larger_than_the_free_disk_space_stop_after_the_first_batch(tmp_path, downsampling, row_bytes,
                                                                           scratch_bytes):
    """A real extraction whose data sets have 10¹² samples each needs petabytes: it stops after its first batch
    (it reads no further sample) with an ExtractionError naming the exact bytes of both splits and the free
    space of the real disk (shutil.disk_usage), and leaves no latents folder."""
    data = _Huge(readable=100)
    huge = {"train": DataLoader(data, batch_size=100), "eval": DataLoader(data, batch_size=100)}
    with pytest.raises(ExtractionError, match="free space on that disk") as raised:
        extract_latents(build_model(), huge, tmp_path / "latents", run_dir=tmp_path, downsampling=downsampling,
                        progress=False)
    needed = row_bytes * 2 * 10**12 + scratch_bytes * 10**12
    message = str(raised.value)
    assert f"need at least {needed / 1e15:.1f} PB ({needed:,} bytes) more in {tmp_path / 'latents'}" in message
    assert " bytes) free;" in message
    assert not (tmp_path / "latents").exists()


class _ToChannelsLast(torch.nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def test_a_linear_on_a_channels_last_map_keeps_its_features_and_pools_height_and_width(tmp_path):
    """ConvNeXt's Linear layers output (B, H, W, C): their latents are its C features per pooled position (as the
    saturation tracker and PCA layers read them), not W and C averaged as if they were height and width."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), _ToChannelsLast(), torch.nn.Linear(4, 6),
                                torch.nn.Flatten(), torch.nn.Linear(6 * 8 * 8, 2))
    images = torch.randn(10, 1, 8, 8)
    dataset = torch.utils.data.TensorDataset(images, torch.arange(10) % 2)
    data = {split: torch.utils.data.DataLoader(dataset, batch_size=4) for split in ("train", "eval")}
    with torch.no_grad():
        hidden = model[2](model[1](model[0](images)))  # (10, 8, 8, 6)
    manifest = extract_latents(model, data, tmp_path / "pooled", run_dir=tmp_path, downsampling=2, progress=False)
    assert {e["name"]: e["shape"] for e in manifest["layers"]}["2"] == [10, 6 * 2 * 2]
    expected = F.adaptive_avg_pool2d(hidden.permute(0, 3, 1, 2), 2).flatten(1)
    np.testing.assert_allclose(np.load(tmp_path / "pooled" / "train-2.npy"), expected.numpy(), rtol=1e-5, atol=1e-6)
    manifest = extract_latents(model, data, tmp_path / "pixels", run_dir=tmp_path, downsampling="pixelwise",
                               layers=["2"], progress=False)
    assert len(manifest["layers"]) == 8 * 8 and all(e["shape"] == [10, 6] for e in manifest["layers"])
    np.testing.assert_allclose(np.load(tmp_path / "pixels" / "train-2@3_5.npy"), hidden[:, 3, 5].numpy(), rtol=1e-6)


def test_latents_of_the_previous_extraction_version_are_reused_where_it_extracted_the_same(tmp_path, data, caplog):
    """Version 3 changed only how a Linear's 4-D (channels-last) output is pooled, yet every run extracted before
    it (a VGG, a ResNet) was extracted again after the upgrade, and its probe results were then called stale. Such
    latents are reused; a model with a channels-last Linear still has its latents made anew."""
    model = build_model()
    first = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    older = {**first, "extraction_version": 2}  # as phd-lab wrote it before 2026-12-02
    (tmp_path / MANIFEST).write_text(json.dumps(older))
    times = {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("*.npy")}
    with caplog.at_level("INFO", logger="phd_lab.extraction"):
        again = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    assert again == older and "reusing them" in caplog.text
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("*.npy")} == times

    torch.manual_seed(0)
    channels_last = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), _ToChannelsLast(), torch.nn.Linear(4, 6),
                                        torch.nn.Flatten(), torch.nn.Linear(6 * 8 * 8, 2))
    dataset = torch.utils.data.TensorDataset(torch.randn(10, 1, 8, 8), torch.arange(10) % 2)
    small = {split: torch.utils.data.DataLoader(dataset, batch_size=4) for split in ("train", "eval")}
    folder = tmp_path / "channels_last"
    manifest = extract_latents(channels_last, small, folder, run_dir=tmp_path, downsampling=2, progress=False)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "extraction_version": 2}))
    again = extract_latents(channels_last, small, folder, run_dir=tmp_path, downsampling=2, progress=False)
    assert again["extraction_version"] == 3


def test_an_extraction_version_of_3_0_is_current_to_the_extraction_and_the_probe_job_alike(tmp_path, data):
    """``"extraction_version": 3.0`` was reused by the extraction (3.0 == 3) but called older by the probe job and
    the report (not an int), which then asked for the latents to be extracted again; both read it as 3."""
    from phd_lab.latents_sets import extracted_by_older_version
    model = build_model()
    first = extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False)
    edited = {**first, "extraction_version": 3.0}
    (tmp_path / MANIFEST).write_text(json.dumps(edited))
    (tmp_path / "run.pt").write_bytes(b"")  # a trained run's folder: older latents of it would be called so
    assert extract_latents(model, data, tmp_path, run_dir=tmp_path, progress=False) == edited  # reused
    assert not extracted_by_older_version(edited, tmp_path)
    assert extracted_by_older_version({**first, "extraction_version": 1.0}, tmp_path)


def test_the_extract_steps_layers_say_that_a_wildcard_picks_modules_of_any_type():
    """'features.*' of vgg11 picks 29 modules (its ReLUs, BatchNorms and pools beside the 8 convolutions), which
    the step's documentation ('module names or wildcards'; by default Conv2d and Linear) did not say."""
    from collections import Counter

    from phd_lab.extraction import select_layers
    from phd_lab.registry import Registries
    from phd_lab.steps.extract import ExtractStep
    model = Registries().models.get("vgg11")(num_classes=10)
    modules = dict(model.named_modules())
    picked = Counter(type(modules[name]).__name__ for name in select_layers(model, ["features.*"]))
    assert picked == {"Conv2d": 8, "BatchNorm2d": 8, "ReLU": 8, "MaxPool2d": 5}
    [layers] = [key for key in ExtractStep.params if key.name == "layers"]
    said = " ".join(layers.doc.split())
    assert "8 Conv2d, 8 BatchNorm2d, 8 ReLU and 5 MaxPool2d (29 latents sets)" in said, said
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "also extracts its BatchNorm2d, ReLU and MaxPool2d outputs: 29 sets" in readme


def test_float16_latents_of_activations_beyond_its_range_are_refused(tmp_path):
    """A layer output above float16's 65504 became inf in float16 latents without a word (the step exited 0) and
    the probe job then refused the layer as a diverged run's; the extraction now refuses it, naming the layer and
    dtype float32, and removes what it had written (the overflow comes in the train split's last batch)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    images = torch.rand(20, 1, 4, 4)
    images[-1] *= 1e6
    dataset = TensorDataset(images, torch.arange(20) % 2)
    data = {split: DataLoader(dataset, batch_size=8) for split in ("train", "eval")}
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    with pytest.raises(ExtractionError, match=r"layer '0' outputs finite values up to .* beyond float16's largest "
                                              r"value 65504.*'dtype' to \"float32\""):
        extract_latents(model, data, tmp_path / "latents", run_dir=tmp_path, dtype="float16", progress=False)
    assert not (tmp_path / "latents").exists()
    manifest = extract_latents(model, data, tmp_path / "latents", run_dir=tmp_path, progress=False)
    assert all(np.isfinite(np.load(tmp_path / "latents" / e["train"])).all() for e in manifest["layers"])


def test_a_run_folder_named_by_another_locale_is_not_taken_for_a_moved_one(tmp_path, data, caplog):
    """A manifest written under LC_ALL=C with Python's UTF-8 mode off names a run folder below '数据' by the escapes
    of its bytes; a rerun under a UTF-8 locale (or the other way round) took the same folder for a moved one: it
    logged 'The run folder moved' and rewrote the manifest, each locale in turn, though the probe job named both
    alike."""
    import logging

    from phd_lab import atomic
    model = build_model()
    run = tmp_path / "数据" / "run"
    extract_latents(model, data, run / "latents", run_dir=run, progress=False)
    manifest = run / "latents" / MANIFEST
    written = json.loads(manifest.read_text(encoding="utf-8"))
    as_c_names_it = os.fsencode(written["run_dir"]).decode("ascii", "surrogateescape")
    atomic.write_json(manifest, {**written, "run_dir": as_c_names_it})
    text = manifest.read_text(encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="phd_lab"):
        again = extract_latents(model, data, run / "latents", run_dir=run, progress=False)
    assert "moved" not in caplog.text and manifest.read_text(encoding="utf-8") == text
    assert again["run_dir"] == as_c_names_it


def test_latents_a_file_size_limit_refuses_are_said_with_the_cause_and_what_to_do(tmp_path, data):
    """Files may grow to 2,000 bytes only (``ulimit -f``): the step said 'writing the latents to <folder> failed
    ([Errno 27] File too large ...); its partial files were removed.', not that a limit of the process was at
    fault nor what to do, as the console line of a run stopped so says (errors.storage_refusal)."""
    import resource

    from tests.conftest import file_size_limit
    model = build_model()
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    file_size_limit(2000)()
    try:
        with pytest.raises(ExtractionError) as raised:
            extract_latents(model, data, tmp_path / "latents", run_dir=tmp_path, downsampling=None, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    said = str(raised.value)
    assert "File too large" in said and said.endswith(
        "its partial files were removed; the file outgrew this process' file size limit (`ulimit -f`, or the batch "
        "job's): raise or lift it, then run the same command again."), said
    assert not (tmp_path / "latents").exists()


def test_a_run_folder_moved_after_its_extraction_into_a_linked_folder_was_killed_is_told_what_to_remove(tmp_path,
                                                                                                        data):
    """The killed extraction's marker names the run folder's old place, so the moved run's rerun was refused as if
    the files were someone else's ('Nothing was removed'), naming neither that place nor how to clear them. The
    refusal names the run folder the marker holds and the rm that clears the files, which lets the rerun go on."""
    from phd_lab.latents_folder import IN_PROGRESS, mark_in_progress
    (tmp_path / "scratch").mkdir()
    old_run, new_run = tmp_path / "run", tmp_path / "moved" / "run"
    old_run.mkdir()
    (old_run / "latents").symlink_to(tmp_path / "scratch")
    done = extract_latents(build_model(), data, old_run / "latents", run_dir=old_run, downsampling=2, progress=False)
    # what a SIGKILL after the last file and before the manifest leaves (test_restart_after_sigkill_mid_extraction)
    (tmp_path / "scratch" / MANIFEST).unlink()
    mark_in_progress(tmp_path / "scratch", done["run_dir"])
    new_run.parent.mkdir()
    old_run.rename(new_run)  # the link goes with the run folder
    with pytest.raises(ConfigError) as refused:
        extract_latents(build_model(), data, new_run / "latents", run_dir=new_run, downsampling=2, progress=False)
    message = " ".join(str(refused.value).split())
    assert "Nothing was removed" in message and f"the run folder '{old_run.resolve()}'" in message, message
    assert f"this run's '{new_run.resolve()}'" in message
    command = message.split(" (cd ", 1)[1].split(") and rerun", 1)[0]
    assert command.endswith(f"rm -f -- train-*.npy eval-*.npy .*.tmp .scratch-* {IN_PROGRESS}")
    subprocess.run(["bash", "-c", "cd " + command], check=True)
    assert sorted(path.name for path in (tmp_path / "scratch").iterdir()) == []
    again = extract_latents(build_model(), data, new_run / "latents", run_dir=new_run, downsampling=2,
                            progress=False)
    assert again["run_dir"] == str(new_run.resolve()) and again["layers"] == done["layers"]


class _RowsLSTM(nn.Module):
    """A convolution, then an LSTM over the rows of its feature map, then a linear head on the last step."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.lstm = nn.LSTM(4, 6, batch_first=batch_first)
        self.head = nn.Linear(6, 10)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.conv(x).mean(3).transpose(1, 2)  # (batch, height, channels)
        return rows if self.lstm.batch_first else rows.transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.lstm(self.rows(x))
        return self.head(sequence[:, -1] if self.lstm.batch_first else sequence[-1])


@pytest.mark.parametrize("batch_first", [True, False])
def test_an_lstm_is_extracted_by_its_output_sequence(tmp_path, data, batch_first):
    """An nn.LSTM returns (sequence, (h, c)): the step stopped after training with "the output of layer 'lstm' is a
    tuple, not a tensor". It extracts the output sequence, as the saturation tracker tracks it, one row per sample
    (every time step's outputs) whichever axis the LSTM takes its batch on."""
    torch.manual_seed(0)
    model = _RowsLSTM(batch_first).eval()
    manifest = extract_latents(model, data, tmp_path, run_dir=tmp_path, layers=["lstm"], downsampling=None,
                               progress=False)
    images = data["train"].dataset.tensors[0]
    assert [(entry["name"], entry["shape"]) for entry in manifest["layers"]] == [("lstm", [len(images), 8 * 6])]
    with torch.no_grad():
        sequence, _ = model.lstm(model.rows(images))
    expected = (sequence if batch_first else sequence.transpose(0, 1)).flatten(1)
    np.testing.assert_allclose(np.load(tmp_path / "train-lstm.npy"), expected.numpy(), rtol=1e-5, atol=1e-6)
