"""Grid expansion on seeded random configs: size, order, uniqueness and folders against itertools.product."""

from __future__ import annotations

import itertools
import json
import math
import random

from phd_lab.grid import Grid
from phd_lab.rundir import RunDir

CHOICES = {  # (path, distinct values to draw from)
    ("batch_size",): [16, 32, 64, 128],
    ("epoch",): [1, 2, 3, 5],
    ("delta",): [0.9, 0.99, 0.999],
    ("run_id",): ["a", "b", "c", "d"],
    ("model",): ["vgg11", "vgg13", "resnet18"],
    ("model_args", "width"): [0.25, 0.5, 1.0],
    ("model_args", "depth"): [2, 3, 4],
    ("optimizer_args", "lr"): [0.1, 0.01, 0.001],
}


def random_config(rng: random.Random) -> tuple[dict, dict[str, list]]:
    """A raw config with 0–4 axes of 1–3 distinct values and fixed values elsewhere, and its axes by name."""
    raw: dict = {"model": "vgg11", "dataset": "Digits", "model_args": {"batch_norm": True}, "optimizer_args": {}}
    axes = {}
    for path in rng.sample(sorted(CHOICES), rng.randint(0, 4)):
        values = rng.sample(CHOICES[path], rng.randint(1, 3))
        target = raw if len(path) == 1 else raw[path[0]]
        target[path[-1]] = values
        axes[".".join(path)] = values
    keys = list(raw)
    rng.shuffle(keys)  # the order of keys in the file must not matter
    return {key: raw[key] for key in keys}, axes


def test_random_grids_are_the_cartesian_product_of_their_axes_in_name_order_each_point_once_in_its_own_folder():
    rng = random.Random(0)
    for case in range(25):
        raw, axes = random_config(rng)
        grid = Grid(raw)
        names = sorted(axes)
        assert len(grid) == math.prod(len(axes[name]) for name in names), (case, raw)
        expected = [dict(zip(names, values)) for values in itertools.product(*(axes[name] for name in names))]
        assert [grid.varying(i) for i in range(len(grid))] == expected, (case, raw)
        points = list(grid)
        assert points == [grid[i] for i in range(len(grid))]
        folders = [RunDir.for_run(point).root for point in points]
        assert len(set(folders)) == len(points), (case, raw)
        reordered = Grid(json.loads(json.dumps(dict(reversed(list(raw.items()))))))
        assert [RunDir.for_run(point).root for point in reordered] == folders
