"""Grid expansion: size, stable order, indexing and unique run folders."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from phd_lab.config import validate_values
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
