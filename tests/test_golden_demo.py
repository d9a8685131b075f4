"""Golden values of the README demo's start: the model's initial draw and the loader's shuffled order.

Runs of one config and seed are bit-identical on one machine and thread count, and tests/test_runs.py checks that
by training twice under one commit. What no such check sees is a commit that moves every run alike: a random draw
added before the model is built, layers built in another order, another shuffle. Old runs then stop being
reproducible by their config, which README's demo numbers and every logged run rely on. These values were taken
at a1c65ea (30 Nov) and still hold at 9cd575b; the trained weights depend on the CPU's float sums as well, so
only the draws are pinned, rounded well above the last bits a vectorised normal draw may differ in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phd_lab.executor import TrainTestExecutor
from phd_lab.grid import Grid
from phd_lab.registry import Registries
from phd_lab.seeding import seed_everything

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo_tail.json"

# (sum, sum of squares) of the initial tensors, rounded to 1e-3
INITIAL = {"features.0.weight": (-3.506, 2.137), "features.40.weight": (-10.406, 511.380),
           "classifier.6.weight": (-0.656, 3.181), "classifier.6.bias": (0.002, 0.018)}
# the first 16 labels of the first batch in the first two epochs
FIRST_LABELS = ([1, 0, 4, 0, 5, 7, 1, 3, 7, 7, 2, 0, 3, 1, 5, 7], [1, 9, 1, 0, 6, 0, 9, 6, 5, 5, 8, 3, 4, 9, 6, 6])


def _demo_start(tmp_path: Path):
    """The demo's 32 px model and data, seeded and built in the order TrainTestExecutor._run builds them."""
    values = json.loads(DEMO.read_text())
    values.update(resolution=32, logs_dir=str(tmp_path / "logs"), post_processing=[])
    cfg = Grid(values, "demo")[0]
    executor = TrainTestExecutor(cfg, Registries(cfg.registries), progress=False)
    seed_everything(cfg.seed)
    bundle = executor.build_data()
    seed_everything(cfg.seed)
    return executor.build_model(bundle), bundle


def test_the_demo_starts_from_the_draws_of_its_first_runs(tmp_path):
    """A change here makes every logged run train other weights from its own config: say so in the commit and the
    README (old runs' results change), or find the draw that moved."""
    model, bundle = _demo_start(tmp_path)
    state = model.state_dict()
    drawn = {name: (round(float(state[name].double().sum()), 3), round(float(state[name].double().square().sum()), 3))
             for name in INITIAL}
    assert drawn == {name: pytest.approx(pinned, abs=2e-3) for name, pinned in INITIAL.items()}, drawn
    labels = tuple(next(iter(bundle.train))[1][:16].tolist() for _ in range(2))
    assert labels == FIRST_LABELS
