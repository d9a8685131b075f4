"""What a researcher reading only ``--help`` learns: the usage of ``python -m phd_lab`` and each command's help
name every option the command takes, fit an 80-column terminal, and a mistyped command says what was wrong."""

from __future__ import annotations

import os
import subprocess
import sys

from phd_lab.__main__ import USAGE, main as phd_lab_main
from phd_lab.errors import EXIT_USAGE
from phd_lab.report.cli import build_parser as report_parser


def test_a_mistyped_command_is_named_with_the_closest_one(capsys):
    """``python -m phd_lab trian`` printed the usage alone (exit 2), which did not say what was wrong."""
    assert phd_lab_main(["trian", "--config", "exp.json"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(USAGE) and err.endswith("error: unknown command 'trian'. Did you mean 'train'?\n")
    assert phd_lab_main([]) == EXIT_USAGE
    assert capsys.readouterr().err.endswith("error: name a command: train, probe, report.\n")


def test_the_usage_names_every_report_option_in_80_columns():
    """The usage's report line was 88 characters wide and lacked --no-progress and -q."""
    assert max(len(line) for line in USAGE.splitlines()) <= 80
    options = {action.option_strings[0] for action in report_parser()._actions if action.option_strings}
    assert {option for option in options - {"-h"} if option not in USAGE} == set()


def test_every_help_names_the_exit_status_of_a_stop():
    """The report's --help listed 0, 2 and 1 alone, though a Ctrl-C or SIGTERM ends it with 130 or 143 (guarded) as
    it ends main.py and probe_main.py, whose help say so."""
    from phd_lab.cli import build_parser as main_parser
    from phd_lab.probes.cli import build_parser as probe_parser
    for parser in (main_parser(), probe_parser(), report_parser()):
        assert parser.epilog.endswith("130 Ctrl-C, 143 SIGTERM."), parser.prog


def test_a_command_of_python_m_phd_lab_is_named_as_typed(monkeypatch, capsys):
    """``python -m phd_lab train -h`` (and ``phd-lab train``) showed 'usage: main.py' and its errors said 'main.py:
    error:', a file a pip install does not have; ``phd-lab report`` said 'python -m phd_lab report'."""
    import sys

    import pytest
    for launcher, argv0 in (("python -m phd_lab", "/venv/lib/phd_lab/__main__.py"), ("phd-lab", "/venv/bin/phd-lab")):
        monkeypatch.setattr(sys, "argv", [argv0])
        for command in ("train", "probe", "report"):
            with pytest.raises(SystemExit):
                phd_lab_main([command, "logs", "--bogus"] if command == "report" else [command, "--bogus"])
            assert f"\n{launcher} {command}: error: unrecognized arguments" in capsys.readouterr().err


def test_the_help_of_config_says_where_its_format_is_described():
    """main.py --help said 'JSON config file' and nothing of what it holds or where that is described."""
    import re

    from phd_lab.cli import build_parser as main_parser
    from tests.conftest import ROOT
    help_text = " ".join(main_parser().format_help().split())
    assert "each list in it a grid axis" in help_text and "its keys: --list-keys" in help_text
    section = re.search(r"README: '([^']+)'", help_text).group(1)
    assert f"\n## {section}\n" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_command_takes_quiet_and_verbose(capsys):
    """The report took -q alone: 'report logs -v' was refused as an unknown argument, though README says -q/-v log
    less or more, the report as well; -q -v is refused in it as in the others."""
    import pytest
    assert report_parser().parse_args(["logs", "-v"]).verbose
    with pytest.raises(SystemExit):
        report_parser().parse_args(["logs", "-q", "-v"])
    assert "argument -v/--verbose: not allowed with argument -q/--quiet" in capsys.readouterr().err


def test_help_on_a_full_stdout_is_named_in_a_warning(monkeypatch, capsys, caplog):
    """``main.py --help > /dev/full`` exited 0 without a word (argparse swallowed the write's error), though README
    says a command's output lost on a full stdout is named in a warning on stderr."""
    import contextlib
    import sys

    import pytest

    from phd_lab.cli import main_cli
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        with pytest.raises(SystemExit) as stopped:
            main_cli(["--help"])
        monkeypatch.undo()
        with contextlib.suppress(OSError):  # the help left in the stream's buffer
            full.close()
    assert stopped.value.code == 0
    assert "stdout could not be written" in capsys.readouterr().err + caplog.text


def test_an_option_before_the_command_is_named_as_misplaced(capsys):
    """``python -m phd_lab -q report logs`` said "unknown command '-q'", as if -q were a mistyped command, not a
    report option typed before the command it belongs to."""
    assert phd_lab_main(["-q", "report", "logs"]) == EXIT_USAGE
    assert capsys.readouterr().err.endswith("error: '-q' comes before the command 'report'; a command's options go "
                                            "after it (python -m phd_lab report -q ...).\n")
    # no command anywhere: it was "unknown command '-q'", as if -q were a mistyped command
    assert phd_lab_main(["-q"]) == EXIT_USAGE
    assert capsys.readouterr().err.endswith("error: '-q' is an option, not a command: name a command first (train, "
                                            "probe, report), then its options (python -m phd_lab COMMAND -q ...).\n")


def test_no_script_reads_its_docstring_as_text_which_python_OO_drops():
    """``python -OO`` sets every ``__doc__`` to None, and the benchmarks whose argparse description was
    ``__doc__.splitlines()[0]`` ended ``--help`` (and every run) with an AttributeError; the three that import
    nothing heavy are run so, and no Python file of the project calls a method on ``__doc__`` any more."""
    import ast

    from tests.conftest import ROOT
    files = [ROOT / "main.py", ROOT / "probe_main.py"]
    files += [path for folder in ("phd_lab", "registries", "benchmarks") for path in (ROOT / folder).rglob("*.py")]
    uses = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in files
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "__doc__"]
    assert not uses, f"methods called on __doc__, which is None under python -OO: {', '.join(uses)}"
    for script in ("grid_scaling.py", "soak.py", "soak_probes.py"):
        done = subprocess.run([sys.executable, "-OO", str(ROOT / "benchmarks" / script), "--help"], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("usage: "), (script, done.stderr[-500:])


def test_main_py_and_probe_main_py_run_their_own_checkout_under_pythonsafepath(tmp_path):
    """PYTHONSAFEPATH=1 (or ``python -P``/``-I``) leaves the script's folder off the module path, so main.py and
    probe_main.py imported whichever phd_lab the path held first: another checkout's or version's (here one that
    exits at once), or none at all (ModuleNotFoundError). They run the phd_lab beside them now, as without it."""
    from tests.conftest import ROOT
    other = tmp_path / "elsewhere" / "phd_lab"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("raise SystemExit('another phd_lab')\n")
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": str(other.parent)}
    for script in ("main.py", "probe_main.py"):
        done = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith(f"usage: {script}"), (script, done.stderr[-800:])


def test_every_option_of_every_command_is_documented():
    """`--help` named options that neither README.md nor docs/ mentioned (probe_main.py's and the report's
    `--processes`, the long `--quiet` and `--verbose`): a user reading the docs could not know them."""
    from pathlib import Path

    from phd_lab.cli import build_parser as main_parser
    from phd_lab.probes.cli import build_parser as probe_parser

    root = Path(__file__).resolve().parents[1]
    docs = (root / "README.md").read_text() + "".join(p.read_text() for p in (root / "docs").glob("*.md"))
    for parser in (main_parser(), probe_parser(), report_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in docs or f"{option} " in docs, f"{parser.prog} {option}"


def test_the_probe_help_says_where_latents_takes_its_settings():
    """probe_main.py --help said 'Solver options default to the config's probe_* keys' alone; a --latents job takes
    the run's logged config's keys (test_probe_job), which the help and docs/probes.md say."""
    from phd_lab.probes.cli import build_parser as probe_parser
    from tests.conftest import ROOT
    epilog = " ".join(probe_parser().epilog.split())
    assert "with --latents, to those of the run's logged config" in epilog
    docs = " ".join((ROOT / "docs" / "probes.md").read_text(encoding="utf-8").split())
    assert "With `--latents`, each defaults to the key of the run's logged config" in docs


def test_the_probe_help_gives_every_solvers_standardisation_default():
    """--standardize's help said 'default: off for saga, on for lbfgs' and left lbfgs-torch out, which
    standardises too (docs/probes.md's table: on for lbfgs/lbfgs-torch)."""
    from phd_lab.probes.cli import build_parser as probe_parser
    from phd_lab.probes.settings import DEFAULT_STANDARDIZE
    [action] = [a for a in probe_parser()._actions if "--standardize" in a.option_strings]
    said = " ".join(action.help.split())
    on = [solver for solver, standardised in DEFAULT_STANDARDIZE.items() if standardised]
    off = [solver for solver, standardised in DEFAULT_STANDARDIZE.items() if not standardised]
    assert f"off for {' and '.join(off)}, on for {' and '.join(on)}" in said, said
    from phd_lab.config import SCHEMA_BY_NAME  # the config key's doc (--list-keys, the README's table) too
    assert f"{' and '.join(on)} on)" in SCHEMA_BY_NAME["probe_standardize"].doc
