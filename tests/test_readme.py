"""The README documents every config key (generated from the schema, so it cannot drift)."""

from phd_lab.cli import main_cli
from phd_lab.config import schema_markdown
from tests.conftest import ROOT


def test_readme_key_table_matches_schema():
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index("<!-- keys:start -->"), readme.index("<!-- keys:end -->")
    block = readme[start + len("<!-- keys:start -->"):end].strip()
    assert block == schema_markdown(), "regenerate with: make readme-keys"


def test_the_command_that_make_readme_keys_runs_prints_that_table(capsys):
    assert main_cli(["--list-keys", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == schema_markdown()


def test_readme_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[2:6] == ["```", "make quickstart", "make test", "```"]


def test_the_code_map_names_every_module_and_only_modules_that_exist():
    """docs/code-map.md tells a maintainer where each part lives; a module added or moved must show up there."""
    import re
    named = set(re.findall(r"^\| `([^`]+\.py)` \|", (ROOT / "docs" / "code-map.md").read_text(), re.MULTILINE))
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "phd_lab").rglob("*.py")}
    assert modules - named == set(), "modules missing from docs/code-map.md"
    assert {name for name in named if not (ROOT / name).is_file()} == set(), "docs/code-map.md names no such file"


def test_the_readme_does_not_call_the_csv_mean_the_s_mu_of_the_analysis():
    """README called the metrics CSV's ``train_saturation_mean`` "s_μ", while the report's s_μ (``analysis.json`` →
    ``saturation.mean``) leaves side branches out: for resnet18_cifar on digits 84.6 % against 91.5 %."""
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "(s_μ over the layers with a value" not in text
    assert "`test_saturation_mean` (the mean over every tracked layer with a value, side branches included" in text
