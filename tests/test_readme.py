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


def _doc(name: str) -> str:
    """A documentation file with its line breaks as spaces, so that a list wrapped over lines reads as one."""
    return " ".join((ROOT / name).read_text().split())


def test_the_documented_csv_columns_are_those_the_code_writes():
    """The README listed 9 of the 13 columns of receptive_field.csv; a column added to a table must show up in the
    docs, which name each table's header in the order the file has it."""
    from phd_lab.analysis.receptive_field import COLUMNS as RF_COLUMNS
    from phd_lab.probes.outputs import CSV_COLUMNS as PROBE_COLUMNS
    from phd_lab.tracking.projection import PROJECTION_COLUMNS

    readme, probes = _doc("README.md"), _doc("docs/probes.md")
    assert f"columns `{', '.join(RF_COLUMNS)}`" in readme
    assert f"columns `{', '.join(PROJECTION_COLUMNS)}`" in readme
    assert f"`probe_performances.csv` (`{', '.join(PROBE_COLUMNS)}`)" in readme
    assert f"`probe_performances.csv`: `{', '.join(PROBE_COLUMNS)}`" in probes


def _options(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_option_the_command_lines_of_the_docs_show_exists():
    """Each `python main.py ...`, `python probe_main.py ...` and `python -m phd_lab report ...` line of the docs'
    code blocks is a command a reader copies: an option it shows that its parser lacks is refused with exit 2."""
    import re

    from phd_lab.cli import build_parser as train_parser
    from phd_lab.probes.cli import build_parser as probe_parser
    from phd_lab.report.cli import build_parser as report_parser

    parsers = {"main.py": _options(train_parser()), "probe_main.py": _options(probe_parser()),
               "-m phd_lab report": _options(report_parser())}
    shown = 0
    for name in ("README.md", "docs/probes.md", "docs/analysis.md"):
        for line in (ROOT / name).read_text().splitlines():
            command = re.match(r"python (main\.py|probe_main\.py|-m phd_lab report)\b(.*)", line.strip())
            if command is None:
                continue
            words = command.group(2).split("#")[0]
            for option in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", words):
                shown += 1
                assert option in parsers[command.group(1)], f"{name}: {line.strip()!r} shows no option {option}"
    assert shown > 20


def test_the_probe_options_table_names_existing_options_and_the_schema_defaults():
    """docs/probes.md's table: option, config key, default; the key table of the README is generated, this one is
    written by hand."""
    import re

    from phd_lab.config import SCHEMA_BY_NAME
    from phd_lab.probes.cli import build_parser

    options = _options(build_parser())
    rows = re.findall(r"^\| `(--[^`]+)` \| `(probe_\w+)` \| ([^|]+) \|", (ROOT / "docs" / "probes.md").read_text(),
                      re.MULTILINE)
    assert len(rows) == 8
    for option, key, default in rows:
        names = ["--standardize", "--no-standardize"] if option == "--[no-]standardize" else [option]
        assert set(names) <= options, option
        expected = SCHEMA_BY_NAME[key].default
        shown = default.strip().strip("`")
        assert (shown == "null" and expected is None) or (shown not in ("null",) and (
            shown == str(expected) or float(shown) == expected)), (key, shown, expected)


def test_the_layers_saturation_tracking_warns_of_are_those_the_readme_names():
    """'Layers it warns about' named only the other convolutions after the run's warning had come to name GRU and
    plain RNN layers too (untracked_layers): every kind it names is in that paragraph."""
    import torch

    from phd_lab.tracking.tracker import untracked_layers
    model = torch.nn.ModuleDict({"gru": torch.nn.GRU(4, 3), "rnn": torch.nn.RNN(4, 3), "lstm": torch.nn.LSTM(4, 3),
                                 "c1": torch.nn.Conv1d(1, 2, 3), "c3": torch.nn.Conv3d(1, 2, 3),
                                 "ct": torch.nn.ConvTranspose2d(1, 2, 3)})
    readme = _doc("README.md")
    paragraph = readme[readme.index("### Layers it warns about"):readme.index("### How it is computed")]
    paragraph = paragraph[paragraph.index("- Other convolutions"):paragraph.index("- A module the forward pass")]
    kinds = {kind for _, kind in untracked_layers(model)}
    assert kinds == {"GRU", "RNN", "Conv1d", "Conv3d", "ConvTranspose2d"}
    for kind in kinds:
        assert kind.removesuffix("2d") in paragraph, kind
