"""Grid expansion: size, stable order, indexing and unique run folders."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from phd_lab.config import META_KEY, validate_values
from phd_lab.grid import Grid
from phd_lab.rundir import RunDir

RAW = {
    "model": ["vgg11", "vgg13"],
    "model_args": {"width": [1.0, 0.5, 0.25], "batch_norm": True},
    "dataset": "Digits",
    "batch_size": [32, 64],
    "metrics": ["Accuracy", "Top5Accuracy"],
    "run_id": ["a", "b"],
}


def test_size_is_product_of_list_lengths():
    assert len(Grid(RAW)) == 2 * 3 * 2 * 2


def test_axes_sorted_and_last_axis_fastest():
    grid = Grid(RAW)
    assert [a.name for a in grid.axes] == ["batch_size", "model", "model_args.width", "run_id"]
    assert grid.varying(0) == {"batch_size": 32, "model": "vgg11", "model_args.width": 1.0, "run_id": "a"}
    assert grid.varying(1)["run_id"] == "b"
    assert grid.varying(2)["model_args.width"] == 0.5


def test_a_point_holds_its_own_values_and_none_of_the_axes_lists():
    """A point is a copy of the config with each axis' list replaced by one value: changing it changes neither
    the grid nor another point (the base is no longer copied with every list for each point)."""
    grid = Grid(RAW)
    point = grid.point(len(grid) - 1)
    assert point == {"model": "vgg13", "model_args": {"width": 0.25, "batch_norm": True}, "dataset": "Digits",
                     "batch_size": 64, "metrics": ["Accuracy", "Top5Accuracy"], "run_id": "b"}
    point["model_args"]["width"] = 9.0
    point["metrics"].append("x")
    assert grid.point(len(grid) - 1)["model_args"]["width"] == 0.25 and grid.point(0)["metrics"] == RAW["metrics"]
    with pytest.raises(IndexError, match="out of range"):
        grid.varying(len(grid))


def test_a_points_swept_list_or_mapping_is_its_own_copy():
    """An axis' value that is itself a list or a mapping (a metrics list, a post-processing step with options)
    is copied into each point: changing the point's value leaves the grid's axis, its table and later points."""
    raw = {"model": "m", "dataset": "d", "metrics": [["Accuracy"], ["Accuracy", "MCC"]],
           "post_processing": [[{"name": "extract", "splits": ["test"]}], []]}
    grid = Grid(raw)
    point = grid.point(0)
    assert point["metrics"] == ["Accuracy"] and point["post_processing"] == [{"name": "extract", "splits": ["test"]}]
    point["metrics"].append("Top5Accuracy")
    point["post_processing"][0]["splits"].append("train")
    assert grid.point(0)["metrics"] == ["Accuracy"]
    assert grid.point(0)["post_processing"] == [{"name": "extract", "splits": ["test"]}]
    assert grid.varying(0) == {"metrics": ["Accuracy"], "post_processing": [{"name": "extract", "splits": ["test"]}]}


def test_order_independent_of_key_order_in_file():
    keys = list(RAW)
    random.Random(3).shuffle(keys)
    shuffled = {k: RAW[k] for k in keys}
    assert [c.values for c in Grid(shuffled)] == [c.values for c in Grid(RAW)]


def test_indexing_matches_iteration_and_covers_cartesian_product():
    grid = Grid(RAW)
    assert list(grid) == [grid[i] for i in range(len(grid))]
    seen = {(c.batch_size, c.model, c.model_args["width"], c.run_id) for c in grid}
    expected = set(itertools.product([32, 64], ["vgg11", "vgg13"], [1.0, 0.5, 0.25], ["a", "b"]))
    assert seen == expected
    assert all(c.model_args["batch_norm"] is True for c in grid)


def test_list_typed_keys_are_not_swept_but_lists_of_lists_are():
    assert len(Grid({"model": "m", "dataset": "d", "metrics": ["Accuracy", "Top5Accuracy"]})) == 1
    grid = Grid({"model": "m", "dataset": "d", "metrics": [["Accuracy"], ["Accuracy", "Top5Accuracy"]]})
    assert len(grid) == 2 and grid[1].metrics == ["Accuracy", "Top5Accuracy"]


def test_every_grid_point_has_its_own_folder_and_the_same_one_every_time():
    grid = Grid(RAW)
    folders = [RunDir.for_run(c).root for c in grid]
    assert len(set(folders)) == len(grid)
    assert folders == [RunDir.for_run(c).root for c in Grid(json.loads(json.dumps(RAW)))]


def test_points_differing_only_in_an_unsummarised_value_still_differ():
    grid = Grid({"model": "m", "dataset": "d", "delta": [0.9, 0.99]})
    assert RunDir.for_run(grid[0]).root != RunDir.for_run(grid[1]).root


def test_out_of_range_index():
    with pytest.raises(IndexError, match=r"run index 4 is out of range: this grid has 4 run\(s\)"):
        Grid({"model": "m", "dataset": "d", "epoch": [1, 2], "seed": [1, 2]}).point(4)


def test_seed_is_derived_from_run_id_and_differs_between_repetitions():
    grid = Grid({"model": "m", "dataset": "d", "run_id": ["0", "1"]})
    assert grid[0].seed != grid[1].seed
    assert grid[0].seed == Grid({"model": "m", "dataset": "d", "run_id": "0"})[0].seed


def test_run_name_uses_critical_parameters():
    cfg = Grid({"model": "vgg11", "dataset": "Digits", "resolution": 32, "batch_size": 64, "epoch": 3})[0]
    assert cfg.name == "vgg11-Digits-r32-bs64-e3"


def test_validate_values_checks_every_swept_value():
    from phd_lab.errors import ConfigError
    with pytest.raises(ConfigError, match=r"'epoch' must be an integer ≥ 1; got 0"):
        validate_values({"model": "m", "dataset": "d", "epoch": [3, 0]}, "x.json")


def test_num_workers_off_its_default_is_part_of_the_run_identity(tmp_path):
    """Workers draw random augmentations from their own generators: another worker count gives
    other weights, so it must not resume or skip as the run of another count."""
    from phd_lab.experiment import Main
    from tests.conftest import write_config
    folders = {}
    for name, workers in (("default", None), ("zero", 0), ("two", 2), ("four", 4)):
        main = Main(progress=False)
        main.load(write_config(tmp_path, name=f"{name}.json", num_workers=workers))
        folders[name] = main.executors[0].rundir.root
    assert folders["default"] == folders["zero"]
    assert len({folders["zero"], folders["two"], folders["four"]}) == 3


@pytest.mark.parametrize("run_id", [".", "..", "...", "./..", "_.._", ".rep"])
def test_run_ids_with_leading_dots_stay_inside_their_dataset_folder_and_visible(tmp_path, run_id):
    from phd_lab.analysis.run_tables import discover_runs
    cfg = Grid({"model": "vgg11", "dataset": "Digits", "run_id": run_id, "logs_dir": str(tmp_path)})[0]
    root = RunDir.for_run(cfg).create().root
    cfg_file = root / "x_config.json"
    cfg_file.write_text('{"_meta": {}}')
    dataset_folder = tmp_path / "vgg11" / "Digits_32"
    assert root.parent.parent == dataset_folder and not root.parent.name.startswith(".")
    assert root.resolve().is_relative_to(dataset_folder.resolve())
    assert [run.root for run in discover_runs(tmp_path)] == [root]  # the report finds it


PINNED = {"model": "vgg11", "model_args": {"width": 0.25, "batch_norm": True}, "dataset": "Digits", "resolution": 32,
          "epoch": 3, "batch_size": 64, "optimizer": "adam", "optimizer_args": {"lr": 0.001},
          "metrics": ["Accuracy", "Top5Accuracy"]}


def test_run_identities_are_pinned_across_versions():
    """A logged config must find its run folder years later: these hashes may never change."""
    assert Grid(PINNED)[0].identity_hash() == Grid(dict(PINNED, tracking_fast=False, num_workers=0))[0].identity_hash()
    short = {"model": "vgg11", "dataset": "Digits"}
    # logged by 0.1, which named no linear_init (the model's own draw), also with model_args left out
    logged_01 = [Grid({**config, META_KEY: {"phd_lab": "0.1.0"}})[0] for config in (PINNED, short)]
    assert [config.identity_hash() for config in logged_01] == ["da7c9455", "dc554ae9"]
    assert all(config.model_args["linear_init"] is None for config in logged_01)
    assert Grid({**PINNED, META_KEY: {"phd_lab": "0.2.0"}})[0].model_args["linear_init"] == "torch_output"
    # since 0.2 a config that names none draws the Linear layers with torch's default: other results, other runs
    assert [Grid(PINNED)[0].identity_hash(), Grid(short)[0].identity_hash()] == ["13e429cc", "dbe4af7c"]
    null = Grid(dict(PINNED, model_args={**PINNED["model_args"], "linear_init": None}))[0]
    assert null.identity_hash() == "da7c9455"  # null, said or not, is hashed as 0.1 hashed a config without it
    # folders of 0.1 configs that said null (hashed with it) are still found
    assert "a95b8d71" in null.legacy_identity_hashes()


def test_a_result_affecting_key_added_later_moves_no_existing_run():
    """Adding a key with a default that keeps today's behaviour moved every run to a new folder (the identity
    held every non-technical key, at any value); now it joins a run's identity only off its default."""
    from phd_lab import config
    before = Grid(PINNED)[0]
    schema, by_name = config.SCHEMA, dict(config.SCHEMA_BY_NAME)
    try:
        later = config.Key("label_smoothing", "float", 0.0, "a key of a later version", minimum=0.0)
        config.SCHEMA, config.SCHEMA_BY_NAME[later.name] = schema + (later,), later
        assert Grid(PINNED)[0].identity_hash() == before.identity_hash()
        assert RunDir.for_run(Grid(PINNED)[0]).root == RunDir.for_run(before).root
        assert Grid(dict(PINNED, label_smoothing=0.1))[0].identity_hash() != before.identity_hash()
    finally:
        config.SCHEMA = schema
        config.SCHEMA_BY_NAME.clear()
        config.SCHEMA_BY_NAME.update(by_name)


def test_a_nested_mapping_names_one_folder_whatever_its_key_order(tmp_path):
    """The hash sorted nested keys but the readable part did not: {"kernel": 3, "act": "relu"} and the same
    mapping in the other order were one run in two folders. New folders are named in sorted order, and a
    folder an older version named in another order is found by its hash."""
    def point(block: dict) -> object:
        return Grid({"model": "vgg11", "dataset": "Digits", "logs_dir": str(tmp_path),
                     "model_args": {"block": block}})[0]
    one, other = point({"kernel": 3, "act": "relu"}), point({"act": "relu", "kernel": 3})
    assert RunDir.for_run(one).root == RunDir.for_run(other).root
    assert "block_act_relu_kernel_3" in RunDir.for_run(one).root.name
    older = RunDir.for_run(one).root.with_name(f"bs128-e10-sgd-s1960566561-block_kernel_3_act_relu-"
                                               f"{one.identity_hash()}")
    older.mkdir(parents=True)  # as named before (written order)
    assert RunDir.for_run(one).root == RunDir.for_run(other).root == older


def test_download_is_no_part_of_a_run_and_folders_named_with_it_are_found(tmp_path):
    """``download: true`` once, then left out on an offline node, gave the same run a second folder and
    trained it again from scratch. Folders that older versions named with ``download`` are still found."""
    base = dict(PINNED, logs_dir=str(tmp_path), _meta={"phd_lab": "0.1.0"})  # logged by 0.1, hashes of 0.1
    variants = [Grid(dict(base, dataset_args=args))[0] for args in ({"download": True}, {}, {"download": False})]
    assert {cfg.identity_hash() for cfg in variants} == {"da7c9455"}
    assert len({RunDir.for_run(cfg).root for cfg in variants}) == 1
    assert "download" not in RunDir.for_run(variants[0]).root.name
    # folders an older version named while the config said download: true or false (its hashes, pinned)
    assert variants[1].legacy_identity_hashes()[:2] == ["7391b0b3", "ed577492"]
    for old_hash in ("7391b0b3", "ed577492"):
        old = RunDir.for_run(variants[1]).root.parent / f"bs64-e3-adam-batch_normtrue-downloadx-{old_hash}"
        old.mkdir(parents=True)
        assert {RunDir.for_run(cfg).root for cfg in variants} == {old}
        old.rmdir()


def test_grids_that_would_train_one_network_twice_are_warned_of(tmp_path, capsys):
    """Repetitions under one fixed seed are bit-identical, and 1 and 1.0 name two folders for one run: both
    trained the same network more than once without a word."""
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    config = write_config(tmp_path, seed=7, run_id=["0", "1"], model_args={"width": [0.0625, 1, 1.0]})
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert """'seed' is 7 for every run_id ["0", "1"], so these repetitions train the same network""" in err
    config = write_config(tmp_path, name="accents.json", seed=7, run_id=["é", "ü"])  # named as written
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    assert """'seed' is 7 for every run_id ["é", "ü"]""" in " ".join(capsys.readouterr().err.split())
    assert "runs 2 and 4 differ only in how numbers are written (such as 1 and 1.0, or true and 1)" in err
    assert "factory's default" not in err  # 1 and 1.0 both write vgg11's width: no default written out
    config = write_config(tmp_path, name="ams.json", optimizer_args={"amsgrad": [True, 1]})  # two folders, one run
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    assert "runs 0 and 1 differ only in how numbers are written" in " ".join(capsys.readouterr().err.split())
    config = write_config(tmp_path, name="fine.json", seed=None, run_id=["0", "1"], model_args={"width": [1, 2]})
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "same network" not in err and "how numbers are written" not in err


def test_a_grid_lists_each_parent_folder_once_and_still_finds_renamed_folders(tmp_path, monkeypatch):
    """Each new point of a grid looked for its folder by globbing the parent once per digest (short, long,
    legacy): a parent of n variant folders was read about 3n times, so checking 4,000 points of which 2,000 were
    trained took 30 s of CPU. The grid's points now share one listing of the parent, and a folder named
    otherwise (by an older version) is still found by its digest."""
    import os

    from phd_lab.experiment import Main
    from tests.conftest import write_config
    path = write_config(tmp_path, optimizer_args={"lr": [0.001 * (i + 1) for i in range(8)]})
    main = Main(progress=False, missing_data="warn")
    expected = [executor.rundir.root for executor in (main.load(path) and main.executors)]
    parent = expected[0].parent
    renamed = parent / f"written-by-an-older-version-{expected[3].name.rsplit('-', 1)[1]}"
    renamed.mkdir(parents=True)
    for index in range(20):  # other runs' folders in the same parent
        (parent / f"bs64-e1-adam-other{index}-{index:08x}").mkdir()
    reads: list[str] = []
    for name in ("scandir", "listdir"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda folder=".", _real=real: reads.append(str(folder)) or _real(folder))
    main = Main(progress=False, missing_data="warn")
    main.load(path)
    monkeypatch.undo()
    assert reads.count(str(parent)) == 2  # the folders' lookup, and the look for runs of phd-lab 0.1
    assert [executor.rundir.root for executor in main.executors] == [*expected[:3], renamed, *expected[4:]]


def test_under_index_the_error_of_another_grid_point_says_it_is_not_the_one_chosen(tmp_path, capsys):
    """Every point is checked before any runs, so '--index 1' was refused with '... (run 0): optimizer_args
    ['nonsense'] are not accepted', which read as if the run asked for were wrong."""
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    config = write_config(tmp_path, optimizer_args=[{"lr": 0.01, "nonsense": 1}, {"lr": 0.01}])
    assert main_cli(["--config", str(config), "--index", "1", "-q"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert (f"{config} (run 0): optimizer_args ['nonsense'] are not accepted by 'adam'" in said and
            "(Run 0 is not the one --index 1 runs, but every run of the grid is checked before any of them starts: "
            "fix it too.)" in said), said
    assert main_cli(["--config", str(config), "--index", "0", "-q"]) == 2  # the chosen point: said as before
    said = " ".join(capsys.readouterr().err.split())
    assert "(run 0): optimizer_args ['nonsense']" in said and "is not the one" not in said, said
    assert not (tmp_path / "logs").exists()


def test_points_differing_only_in_non_ascii_characters_keep_their_own_folders(tmp_path):
    """Folder and file names keep ASCII only (``safe_name``: 'Würzburg' and 'Wärzburg' both read 'W_rzburg',
    Japanese text '_'), so the readable parts of such points are one name; the identity hash behind each
    variant keeps their folders apart, on disk too, each point finding its own again."""
    raw = {"model": "m", "dataset": ["Würzburg", "Wärzburg"], "run_id": ["東京", "大阪"], "seed": 1,
           "model_args": {"city": ["東京", "大阪"]}, "logs_dir": str(tmp_path)}
    grid = Grid(raw)
    assert len({RunDir.for_run(c).root.parent for c in grid}) == 1  # the readable parts collide
    roots = [RunDir.for_run(c).create().root for c in grid]
    assert len(set(roots)) == len(grid) == 8
    assert [RunDir.for_run(c).root for c in Grid(raw)] == roots


def test_a_folder_shared_by_a_sweep_of_a_nested_key_names_that_key(tmp_path, capsys):
    """A sweep of dataset_args.download (no part of a run's folder) was refused as differing "only in
    ['dataset_args'], which do not change a run's results", although dataset_args.normalization does."""
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    config = write_config(tmp_path, dataset="MNIST", data_dir=str(tmp_path / "data"),
                          dataset_args={"download": [True, False]})
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "runs 0 and 1 would share the folder" in err, err
    assert "they differ only in ['dataset_args.download'], which do not change a run's results" in err, err


def test_a_very_long_unknown_model_name_is_refused_as_unknown(tmp_path, capsys):
    """A 5,000-character model name was refused as too long a folder name ("shorten 'model'"); shortened, it was
    then refused as unknown: the first error sent the user on a detour."""
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    config = write_config(tmp_path, model="v" * 5000)
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Unknown model" in err and "bytes long" not in err, err[:300]


@pytest.mark.parametrize("sweep", [{"model_args": [{}, {"width": 1.0}]},
                                   {"optimizer_args": [{}, {"lr": 0.0001}]}])
def test_a_default_written_out_in_one_run_is_warned_of(tmp_path, capsys, sweep):
    """vgg11's width and adam's lr written at their defaults in one point of a grid and left out in another gave two
    folders for one run, trained twice without a word (1 and 1.0 were warned of, a repeated linear_init refused)."""
    import inspect

    from phd_lab.cli import main_cli
    from phd_lab.registry import Registries
    from tests.conftest import write_config
    factories = Registries({})
    assert inspect.signature(factories.models.get("vgg11")).parameters["width"].default == 1.0
    assert inspect.signature(factories.optimizers.get("adam")).parameters["lr"].default == 0.0001
    config = write_config(tmp_path, **sweep)
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert ("runs 0 and 1 differ only in factory arguments that one of them writes at the factory's default, which "
            "gives them two folders: the same run would be trained twice") in err, err
    capsys.readouterr()
    config = write_config(tmp_path, name="other.json", model_args=[{"width": 0.5}, {"width": 1.0}])
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    assert "factory's default" not in capsys.readouterr().err
