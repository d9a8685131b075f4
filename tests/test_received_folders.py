"""Run folders received from someone else (a colleague's tarball, a downloaded logs folder): rerunning, probing and
reporting them must not write outside them, whatever files, links and names they carry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from phd_lab.cli import main_cli
from phd_lab.probes.cli import probe_cli
from tests.conftest import run_folders, run_name, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run, trained for an epoch, with its latents: the folder a colleague sends."""
    root = tmp_path_factory.mktemp("sender")
    config = write_config(root, epoch=1, resolution=8,
                          post_processing=[{"name": "extract", "layers": ["features.0", "classifier.6"]}])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(root / "logs")
    return folder


@pytest.fixture
def received(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run's logs tree, as unpacked from a tarball (links kept as links); its run folder."""
    logs = trained.parents[3]
    shutil.copytree(logs, tmp_path / "logs", symlinks=True)
    return tmp_path / "logs" / trained.relative_to(logs)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the received folder that a planted link names."""
    path = tmp_path / "thesis.tex"
    path.write_text("three years of work\n")
    return path


def plant_link(path: Path, target: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(target)


@pytest.mark.parametrize("which", [".lock", "log"])
def test_a_linked_lock_or_log_file_of_a_received_run_is_refused_not_followed(received, victim, capsys, which):
    # the lock was opened through the link and truncated (the victim emptied); the log appended to the victim
    name = run_name(received)
    link = received / (which if which == ".lock" else f"{name}.log")
    plant_link(link, victim)
    capsys.readouterr()
    code = main_cli(["--config", str(received / f"{name}_config.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert victim.read_text() == "three years of work\n"
    assert link.is_symlink() and "is a symbolic link" in err and str(victim) in err and "Traceback" not in err


@pytest.mark.parametrize("which", [".probe.lock", "probe.log"])
def test_a_linked_probe_lock_or_log_of_a_received_run_is_refused_before_the_probe_job_writes(received, victim,
                                                                                             capsys, which):
    plant_link(received / which, victim)
    before = sorted(p.name for p in received.iterdir())
    capsys.readouterr()
    code = probe_cli(["--latents", str(received / "latents"), "--solver", "lbfgs"])
    err = capsys.readouterr().err
    assert code == 2
    assert victim.read_text() == "three years of work\n"
    assert sorted(p.name for p in received.iterdir()) == before  # no probe results, cache or log
    assert "is a symbolic link" in err and "Traceback" not in err


def huge_npy(element_count: int = 10**15, descr: str = "<f8") -> bytes:
    """A .npy file whose header declares ``element_count`` float64 values (petabytes) and that holds 64 bytes; with
    ``descr`` "|V0" values of no bytes each, which pass a check of the bytes but allocate petabytes once converted."""
    import io

    import numpy as np
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": (element_count,)})
    return header.getvalue() + bytes(64)


@pytest.fixture
def probed(received: Path) -> Path:
    """The received run, probed (its results and probe cache inside it, as the sender's job left them)."""
    assert probe_cli(["--latents", str(received / "latents"), "--solver", "lbfgs", "-mp", "0", "--no-progress"]) == 0
    return received


@pytest.mark.parametrize("descr", ["<f8", "|V0", "|S0"])
def test_a_confusion_matrix_whose_header_declares_petabytes_is_rewritten_not_a_traceback(probed, capsys, descr):
    # numpy allocates what the header declares before reading: MemoryError, a traceback and exit 1
    [matrix] = sorted((probed / "probe_confusion").glob("001-*.npy"))
    matrix.write_bytes(huge_npy(descr=descr))
    capsys.readouterr()
    code = probe_cli(["--latents", str(probed / "latents"), "--solver", "lbfgs", "-mp", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err
    assert len(matrix.read_bytes()) < 10_000  # written again from the cached result


@pytest.mark.parametrize("descr", ["<f8", "|V0", "|S0"])
def test_a_probe_cache_entry_whose_matrix_header_declares_petabytes_is_refitted_not_a_traceback(probed, capsys, descr):
    import hashlib
    import json
    entries = sorted((probed / ".probe_cache").glob("[0-9a-f][0-9a-f]/*.json"))
    assert entries
    for entry_path in entries:  # matrices with a sha256 that matches, as a crafted cache holds them
        entry = json.loads(entry_path.read_text())
        (entry_path.parent / entry["confusion"]["file"]).unlink()
        data = huge_npy(descr=descr)
        entry["confusion"]["sha256"] = hashlib.sha256(data).hexdigest()
        entry["confusion"]["file"] = f"{entry_path.stem}-{entry['confusion']['sha256'][:16]}.npy"
        (entry_path.parent / entry["confusion"]["file"]).write_bytes(data)
        entry_path.write_text(json.dumps(entry))
    capsys.readouterr()
    code = probe_cli(["--latents", str(probed / "latents"), "--solver", "lbfgs", "-mp", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err


def test_the_registry_code_a_config_imports_is_named_before_it_runs(tmp_path, capsys):
    # a received config naming a .py file beside it (or any module by a dotted name) ran it without a word
    registry = tmp_path / "my_models.py"
    registry.write_text("from pathlib import Path\n"
                        f"Path({str(tmp_path / 'ran')!r}).write_text('imported')\n"
                        "from torch import nn\n\n\n"
                        "def tiny_cnn(*, num_classes: int, in_channels: int = 3):\n"
                        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1),\n"
                        "                         nn.Flatten(), nn.Linear(4, num_classes))\n")
    config = write_config(tmp_path, model="tiny_cnn", model_args={}, registries={"models": "my_models.py"})
    plain = write_config(tmp_path, name="plain.json")
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "ran").is_file()
    assert f"Importing the models registry module {str(registry)!r}" in err and "its code runs" in err
    assert main_cli(["--config", str(plain), "--dry-run"]) == 0
    assert "registry module" not in capsys.readouterr().err  # phd-lab's own registries go unsaid


def test_a_linked_confusion_matrix_folder_is_refused_before_the_probe_job_removes_files_in_it(received, tmp_path,
                                                                                              capsys):
    # the job removed every .npy and .png in it that it had not written: the figures of the folder the link named
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "fig1.png").write_bytes(b"a figure")
    plant_link(received / "probe_confusion", figures)
    capsys.readouterr()
    code = probe_cli(["--latents", str(received / "latents"), "--solver", "lbfgs", "-mp", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "is a symbolic link" in err and "Traceback" not in err
    assert [p.name for p in figures.iterdir()] == ["fig1.png"]
    assert not (received / "probe_performances.csv").exists()


def test_a_latents_manifest_naming_another_run_folder_of_yours_is_refused(trained, received, tmp_path, capsys):
    # the results went into (and the confusion matrices of) whichever run folder the received manifest named
    import json
    logs = trained.parents[3]
    shutil.copytree(logs, tmp_path / "mine")
    mine = tmp_path / "mine" / trained.relative_to(logs)  # a run of the receiver's own, probed
    assert probe_cli(["--latents", str(mine / "latents"), "--solver", "lbfgs", "-mp", "0", "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in mine.glob("probe_*") if p.is_file()}
    latents = tmp_path / "download" / "latents"  # a latents folder received on its own
    shutil.copytree(received / "latents", latents)
    manifest = json.loads((latents / "manifest.json").read_text())
    manifest["run_dir"] = str(mine)
    (latents / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    code = probe_cli(["--latents", str(latents), "--solver", "lbfgs", "-mp", "0", "--no-progress", "--C", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "not that run's" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in mine.glob("probe_*") if p.is_file()} == before


def deep_json(depth: int = 100_000) -> str:
    """Valid JSON nested deeper than Python's parser recurses (it raises RecursionError, no ValueError)."""
    return '{"format": 1, "x": ' + "[" * depth + "]" * depth + "}"


def test_a_latents_manifest_nested_too_deep_is_a_usage_error_not_a_traceback(received, capsys):
    (received / "latents" / "manifest.json").write_text(deep_json())
    capsys.readouterr()
    code = probe_cli(["--latents", str(received / "latents"), "--solver", "lbfgs", "-mp", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "too deep" in err and "Traceback" not in err


def test_post_processing_stamps_nested_too_deep_are_recomputed_not_a_failed_run(received, capsys):
    (received / ".steps.json").write_text(deep_json())
    capsys.readouterr()
    code = main_cli(["--config", str(received / f"{run_name(received)}_config.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0 and "RecursionError" not in err
    assert "too deep" in err  # the warning that the steps compute their results again says why


def test_a_linked_folder_in_a_shared_probe_cache_has_nothing_removed_where_it_points(tmp_path, caplog):
    """A cache on a shared file system (a lab's scratch folder) is written by others: a folder 'ab' planted there as
    a link to the user's results had every old '*-*.npy' without a '<name>.json' beside it (taken for a confusion
    matrix a killed job left) and every old hidden '.*.tmp' in it deleted by the user's next probe job."""
    import os
    import time

    from phd_lab.atomic import STALE_AFTER_SECONDS
    from phd_lab.probes.cache import ResultCache
    results = tmp_path / "results"
    results.mkdir()
    kept = [results / "run-2024.npy", results / ".notes.draft.tmp"]
    cache = tmp_path / "cache"
    (cache / "cd").mkdir(parents=True)
    left = cache / "cd" / f"cd{'0' * 62}-0123456789abcdef.npy"  # a killed job's matrix in a folder of the cache
    long_ago = time.time() - STALE_AFTER_SECONDS - 60
    for path in (*kept, left):
        path.write_text("data")
        os.utime(path, (long_ago, long_ago))
    (cache / "ab").symlink_to(results)
    ResultCache(cache).remove_stale_temps()
    assert all(path.read_text() == "data" for path in kept)
    assert not left.exists()
    assert "is a symbolic link" in caplog.text


@pytest.mark.parametrize("leftover", [".woof.extracting", ".woof.tar.partial"])
def test_a_link_in_a_shared_data_dir_at_a_download_folder_is_removed_not_followed(tmp_path, leftover):
    """A data_dir shared with others: a link planted at the name of the extraction's (or download's) temp folder
    had the archive extracted into the folder it names, overwriting the files there, and that folder's woof/ moved
    into data_dir (rmtree leaves a link alone). Only the link goes now."""
    import tarfile

    from phd_lab.datasets.download import download_and_extract
    from tests.test_datasets import _http_server
    source = tmp_path / "source" / "woof"
    source.mkdir(parents=True)
    (source / "notes.txt").write_text("from the archive")
    mine = tmp_path / "home" / "woof"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("three years of work")
    root, served = tmp_path / "data", tmp_path / "served"
    root.mkdir()
    served.mkdir()
    with tarfile.open(served / "woof.tar", "w") as archive:
        archive.add(source, arcname="woof")
    (root / leftover).symlink_to(mine.parent)
    with _http_server(served) as address:
        target = download_and_extract(f"{address}/woof.tar", root, "woof")
    assert (target / "notes.txt").read_text() == "from the archive"
    assert (mine / "notes.txt").read_text() == "three years of work"
    assert not (root / leftover).exists() and not (root / leftover).is_symlink()


def test_a_folder_or_link_named_like_a_killed_writers_temp_file_is_not_followed_nor_a_traceback(tmp_path):
    """A run folder received from someone else with a folder named like a temp file (.<name>.log.abcd1234.tmp)
    ended the rerun, the probe job and the report with IsADirectoryError; it stays now. A link of such a name is
    removed itself, what it names is left alone."""
    import os
    import time

    from phd_lab import atomic
    victim = tmp_path / "outside"
    victim.mkdir()
    (victim / "data.txt").write_text("three years of work")
    run = tmp_path / "run"
    run.mkdir()
    folder, link = run / ".run.log.abcd1234.tmp", run / ".analysis.json.abcd1234.tmp"
    folder.mkdir()
    link.symlink_to(victim)
    long_ago = time.time() - atomic.STALE_AFTER_SECONDS - 60
    os.utime(folder, (long_ago, long_ago))
    os.utime(link, (long_ago, long_ago), follow_symlinks=False)
    assert atomic.remove_stale_temps(run, owned_prefix="run") == [link]
    assert folder.is_dir() and (victim / "data.txt").read_text() == "three years of work"



def test_a_probe_cache_folder_linked_to_a_folder_of_yours_loses_none_of_its_files(tmp_path):
    """A cache folder that is a link to a folder of the user's (a received run folder's .probe_cache, as --latents
    uses, or a mistyped --cache-dir) is followed, as for a scratch disk; its cleanup removed every old '*-*.npy'
    without a '<name>.json' beside it and every old '.*.tmp' in its two-hex-digit folders (hash-sharded data).
    Only files of the cache's own names go."""
    import os
    import time

    from phd_lab.probes.cache import ResultCache
    shard = tmp_path / "store" / "ab"
    shard.mkdir(parents=True)
    digest = "ab" + "0" * 62
    mine = [shard / "run-2024.npy", shard / ".notes.draft.tmp", shard / f"{digest}-my-own.npy"]
    theirs = [shard / f"{digest}-0123456789abcdef.npy", shard / f".{digest}.json.abcd1234.tmp"]
    long_ago = time.time() - 3600
    for path in mine + theirs:
        path.write_bytes(b"data")
        os.utime(path, (long_ago, long_ago))
    (tmp_path / "cache").symlink_to(tmp_path / "store")
    ResultCache(tmp_path / "cache").remove_stale_temps()
    assert sorted(p.name for p in shard.iterdir()) == sorted(p.name for p in mine)


def test_a_received_latents_folder_naming_a_folder_of_yours_has_no_hidden_temp_file_of_it_removed(tmp_path):
    """A latents folder received on its own sends the probe results to the folder its manifest's run_dir names
    (documented); the job also removed every hidden '.*.tmp' there 15 minutes old, as in a run folder, where
    other phd-lab writers leave them. A folder without a logged config loses only the job's own temp files."""
    import os
    import time

    from phd_lab.probes.synthetic import write_latents
    from tests.probe_latents import blob_layers
    home = tmp_path / "home"
    home.mkdir()
    draft, killed = home / ".thesis.tex.tmp", home / ".probe_performances.csv.abcd1234.tmp"
    for path in (draft, killed):
        path.write_text("draft")
    long_ago = time.time() - 3600
    os.utime(draft, (long_ago, long_ago))
    layers, y_train, y_eval = blob_layers(n_layers=1, n=60)
    latents = write_latents(tmp_path / "received" / "latents", layers, y_train, y_eval, home, 0.9)
    assert probe_cli(["--latents", str(latents), "--solver", "lbfgs", "-mp", "0", "--no-progress", "-q",
                      "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (home / "probe_performances.csv").is_file()
    assert draft.read_text() == "draft" and not killed.exists()


def test_a_latents_link_to_a_folder_of_yours_is_refused_before_the_extract_step_clears_it(tmp_path):
    """A run folder received from someone else whose 'latents' was a link to a folder of the user's: the rerun's
    extract step removed its train-*.npy, eval-*.npy and hidden .*.tmp files (and an unrelated manifest.json) as a
    killed extraction's. Such a folder is refused, nothing removed; a link to an empty folder is followed."""
    from phd_lab.errors import ConfigError
    from phd_lab.extraction import extract_latents
    from tests._extraction_models import build_model, loaders_of
    mine = tmp_path / "data"
    mine.mkdir()
    files = {"train-images.npy": "images", ".session.tmp": "draft", "manifest.json": '{"name": "my web app"}'}
    for name, text in files.items():
        (mine / name).write_text(text)
    run = tmp_path / "run"
    run.mkdir()
    (run / "latents").symlink_to(mine)
    model, data = build_model(), loaders_of(40, 8, 20)
    with pytest.raises(ConfigError, match="is a symbolic link") as refused:
        extract_latents(model, data, run / "latents", run_dir=run, progress=False, layers=["head"])
    assert {path.name: path.read_text() for path in mine.iterdir()} == files
    assert "train-images.npy" in str(refused.value) and "Nothing was removed" in str(refused.value)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (run / "latents").unlink()
    (run / "latents").symlink_to(scratch)
    extract_latents(model, data, run / "latents", run_dir=run, progress=False, layers=["head"])
    assert (scratch / "manifest.json").is_file() and (scratch / "train-head.npy").is_file()


@pytest.mark.parametrize("name", [".imagenette2.download.lock", "imagenette2.tgz"])
def test_a_folder_where_a_download_writes_is_named_with_what_to_do(tmp_path, capsys, name):
    """A folder at a dataset's download lock (``.imagenette2.download.lock``) was said as a failed download, its
    message in parentheses, with the advice to place the dataset by hand or download it on a machine with internet
    access; a folder at its archive path (``imagenette2.tgz/``) was taken for a missing archive, whose download
    then failed. The folder is named with what to do now (remove or rename it), exit 2, and left as it was."""
    config = write_config(tmp_path, dataset="Imagenette", dataset_args={"download": True}, epoch=1, cpu_threads=1,
                          track_saturation=False)
    in_the_way = tmp_path / "data" / name
    in_the_way.mkdir(parents=True)
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"'{in_the_way}' is a folder, but phd-lab writes a file of that name there" in err, err
    assert "Remove or rename that folder" in err and "Traceback" not in err
    assert "could not be downloaded" not in err and "internet access" not in err, err
    assert in_the_way.is_dir() and not list((tmp_path / "data").glob(".*.partial"))


def test_a_link_at_a_download_lock_in_a_shared_data_dir_is_refused_not_followed(tmp_path):
    """A link planted at a download's lock file in a data_dir shared with others: the download opened it to lock,
    which made an empty file of the name the link gave, in a folder of the user's."""
    from phd_lab.datasets.download import download_and_extract
    from phd_lab.errors import DataError
    root = tmp_path / "data"
    root.mkdir()
    made = tmp_path / "home" / ".hushlogin"
    made.parent.mkdir()
    (root / ".woof.download.lock").symlink_to(made)
    with pytest.raises(DataError, match="is a symbolic link"):
        download_and_extract("http://127.0.0.1:9/woof.tar", root, "woof")
    assert not made.exists()


def test_a_linked_folder_of_yours_keeping_another_run_s_extraction_marker_is_refused_not_cleared(tmp_path):
    """A folder once the scratch target of a killed extraction keeps its hidden marker after `rm *` (the shell's *
    skips dot files); files of the user's own put there later were removed by the extract step of any run linked
    to it, as a killed extraction's. The marker clears a folder only for the run that marked it."""
    import json

    from phd_lab.errors import ConfigError
    from phd_lab.extraction import extract_latents
    from phd_lab.latents_folder import IN_PROGRESS
    from tests._extraction_models import build_model, loaders_of
    mine = tmp_path / "scratch"
    mine.mkdir()
    (mine / IN_PROGRESS).write_text(json.dumps({"run_dir": str(tmp_path / "an-old-run")}))
    (mine / "train-images.npy").write_text("images")
    run = tmp_path / "run"
    run.mkdir()
    (run / "latents").symlink_to(mine)
    model, data = build_model(), loaders_of(40, 8, 20)
    with pytest.raises(ConfigError, match="is a symbolic link") as refused:
        extract_latents(model, data, run / "latents", run_dir=run, progress=False, layers=["head"])
    assert (mine / "train-images.npy").read_text() == "images" and "Nothing was removed" in str(refused.value)
    (mine / IN_PROGRESS).write_text(json.dumps({"run_dir": str(run)}))  # this run's own killed extraction
    extract_latents(model, data, run / "latents", run_dir=run, progress=False, layers=["head"])
    assert not (mine / "train-images.npy").exists() and (mine / "train-head.npy").is_file()
    assert not (mine / IN_PROGRESS).exists()
