"""The thesis configs validate, and configs/thesis/README.md states each one's true number of runs.

Every config is checked the way a user would check it (``main.py --config FILE --dry-run``), in-process;
the run count it prints must be the README row's, and so must the size of the config's grid.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from phd_lab.cli import main_cli
from phd_lab.config_file import load_config_file
from phd_lab.grid import Grid
from tests.conftest import ROOT

THESIS = ROOT / "configs" / "thesis"
CONFIGS = sorted(THESIS.glob("*.json"))
_CONFIG_CELL = re.compile(r"^`([\w.-]+\.json)`$")


def readme_runs() -> dict[str, int]:
    """Config file name → the "runs" cell of its row in the README table."""
    lines = (THESIS / "README.md").read_text(encoding="utf-8").splitlines()
    header_index = next(i for i, line in enumerate(lines) if line.startswith("| section | config |"))
    header = [cell.strip() for cell in lines[header_index].strip("|").split("|")]
    config_col, runs_col = header.index("config"), header.index("runs")
    rows: dict[str, int] = {}
    for line in lines[header_index + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = _CONFIG_CELL.match(cells[config_col])
        assert match, f"README row without a `config.json` cell: {line}"
        assert match.group(1) not in rows, f"{match.group(1)} has two README rows"
        rows[match.group(1)] = int(cells[runs_col])
    return rows


def test_there_are_thesis_configs_and_each_has_exactly_one_readme_row():
    assert len(CONFIGS) >= 20
    assert sorted(readme_runs()) == [path.name for path in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_readme_runs_equal_the_grid_size(path: Path):
    assert len(Grid(load_config_file(path), str(path))) == readme_runs()[path.name]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_dry_run_validates_and_prints_the_readme_run_count(path: Path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the configs' relative logs_dir must not be created by a dry run
    assert main_cli(["--config", str(path), "--dry-run", "--no-progress"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    match = re.match(r"(\d+) run\(s\) in ", first_line)
    assert match, first_line
    assert int(match.group(1)) == readme_runs()[path.name]
    assert list(tmp_path.iterdir()) == []


def test_pixelwise_config_trains_the_three_models_of_appendix_g():
    """Appendix G compiles the pixelwise-probe heatmaps of §9.3 for three models: VGG16 (Fig. 86), ResNet18
    (Fig. 87) and the Cifar10-optimised ResNet18 (Fig. 88: its stem a 3×3 stride-1 convolution, no max-pool).
    Each must be a run of ``09_3_pixelwise_probes.json``; the registry models are built to tell the stems apart."""
    from torch import nn

    from registries import models

    def described(point: dict) -> tuple[str, int]:
        model = getattr(models, point["model"])(num_classes=10, **point.get("model_args", {}))
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        family = "vgg16" if point["model"].startswith("vgg16") else "resnet18"
        return family, first.stride[0]

    grid = Grid(load_config_file(THESIS / "09_3_pixelwise_probes.json"), "09_3_pixelwise_probes.json")
    runs = sorted(described(grid.point(index)) for index in range(len(grid)))
    assert all(grid.point(index)["downsampling"] == "pixelwise" for index in range(len(grid)))
    assert runs == [("resnet18", 1), ("resnet18", 2), ("vgg16", 1)]
