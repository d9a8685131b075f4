"""docs/registries.md against the registry modules: every name, argument and default the tables show is the
factory's own, so the page a user configures from cannot drift from the code."""
import inspect
import re

import pytest

import registries.datasets
import registries.metrics
import registries.models
import registries.optimizers
from phd_lab.datasets.torchvision_sets import SOURCES
from phd_lab.registry import Registry
from tests.conftest import ROOT

# Keywords the framework passes itself; the tables list only what a config's *_args may set.
FRAMEWORK_KEYWORDS = {
    "models": {"num_classes", "in_channels"},
    "datasets": {"batch_size", "resolution", "data_dir", "seed", "num_workers"},
    "optimizers": {"model", "epochs"},
}
MODULES = {"models": registries.models, "datasets": registries.datasets, "optimizers": registries.optimizers,
           "metrics": registries.metrics}


def _table_rows(section: str) -> dict[str, list[str]]:
    """``name -> cells`` of the table under ``## <section>``, without the prefix rows (``tv:``, ``folder:``)."""
    text = (ROOT / "docs" / "registries.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([^`]+)`", cells[0]) if line.startswith("|") else None
        if match and ":" not in match.group(1):
            rows[match.group(1)] = cells
    return rows


def _documented_arguments(cell: str) -> dict[str, str | None]:
    """``name -> default text`` (None where the table shows no default) of a cell like ```lr`=0.1, `eps`=1e-08``."""
    return {name: default or None for name, default in re.findall(r"`([A-Za-z_0-9]+)`(?:=([^,]+))?", cell)}


def _settable(kind: str, factory) -> dict[str, inspect.Parameter]:
    return {name: parameter for name, parameter in inspect.signature(factory).parameters.items()
            if name not in FRAMEWORK_KEYWORDS[kind]}


def _refused_only(kind: str, name: str) -> set[str]:
    """Arguments a factory takes only to refuse them with a clear error, which its row rightly leaves out: the
    fixed-size sets refuse ``crop`` (they always use the padded crop at their native size)."""
    source = SOURCES.get(name) if kind == "datasets" else None
    return {"crop"} if source is not None and source.native is not None else set()


@pytest.mark.parametrize("kind,section", [("models", "Models"), ("datasets", "Datasets"),
                                          ("optimizers", "Optimizers"), ("metrics", "Metrics")])
def test_each_table_names_every_registered_factory_and_only_those(kind, section):
    registry = Registry.from_module(kind, MODULES[kind])
    assert sorted(_table_rows(section)) == sorted(registry.names())


@pytest.mark.parametrize("kind,section", [("models", "Models"), ("datasets", "Datasets"),
                                          ("optimizers", "Optimizers")])
def test_each_row_lists_exactly_the_arguments_its_factory_takes(kind, section):
    wrong = {}
    for name, cells in _table_rows(section).items():
        documented = set(_documented_arguments(cells[-1]))
        settable = set(_settable(kind, getattr(MODULES[kind], name))) - _refused_only(kind, name)
        if documented != settable:
            wrong[name] = {"missing": sorted(settable - documented), "not taken": sorted(documented - settable)}
    assert not wrong


def test_the_optimizer_defaults_shown_are_the_factories_defaults():
    for name, cells in _table_rows("Optimizers").items():
        shown = _documented_arguments(cells[-1])
        factory = getattr(registries.optimizers, name)
        actual = {key: repr(parameter.default) for key, parameter in _settable("optimizers", factory).items()}
        assert shown == actual, name


def test_a_class_without_a_docstring_of_its_own_is_listed_without_torch_s(tmp_path, capsys):
    """``--list models`` of a registry module with a helper block showed "KBlock  Base class for all neural network
    modules." (nn.Module's docstring, which ``inspect.getdoc`` inherits) as if it described a model."""
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\n\n"
        "class KBlock(nn.Module):\n"
        "    def __init__(self, channels):\n"
        "        super().__init__()\n\n\n"
        "class Documented(nn.Module):\n"
        "    \"\"\"A model of its own.\n\n    More lines.\"\"\"\n\n\n"
        "def net(*, num_classes, in_channels=3):\n"
        "    \"\"\"The factory.\"\"\"\n"
        "    return nn.Linear(in_channels, num_classes)\n")
    config = write_config(tmp_path, registries={"models": str(tmp_path / "my_models.py")}, model="net")
    capsys.readouterr()
    code = main_cli(["--config", str(config), "--list", "models"])
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in capsys.readouterr().out.splitlines()
              if line.strip()}
    assert code == 0
    assert listed["net"] == "The factory." and listed["Documented"] == "A model of its own."
    assert listed["KBlock"] == "" and "Base class" not in " ".join(listed.values())


def test_listing_one_kind_loads_only_that_kinds_registry_of_the_config(tmp_path, capsys):
    """--config with a models registry file of a syntax error failed --list datasets too (exit 2 naming the models
    file), though that listing needs only the datasets registry; --list models still names the broken file."""
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    (tmp_path / "my_models.py").write_text("def net(*, num_classes, in_channels=3)\n    return None\n")
    config = write_config(tmp_path, registries={"models": str(tmp_path / "my_models.py")}, model="net")
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--list", "datasets"]) == 0
    assert "Digits" in capsys.readouterr().out.split()
    assert main_cli(["--config", str(config), "--list", "models"]) == 2
    assert "my_models.py" in capsys.readouterr().err
