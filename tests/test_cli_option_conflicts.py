"""Options that the chosen action would ignore are refused (exit 2, the options named), as are -q and -v together:
each of these commands used to exit 0 having done something other than what its options asked. Paths through a
loop of symbolic links are named as such."""

from __future__ import annotations

import pytest

from phd_lab.cli import main_cli
from phd_lab.errors import EXIT_USAGE
from phd_lab.probes.cli import probe_cli
from phd_lab.report.cli import main_report
from tests.conftest import flat, main_in_process, write_config
from tests.probe_latents import make_latents

CONFLICTS = {
    # arguments: the fragments of the message
    ("--list-keys", "--config", "exp.json", "--index", "3"): ["--list-keys only prints a listing, so --index would "
                                                             "do nothing"],
    ("--list", "models", "--dry-run", "--run-id", "7"): ["--list only prints a listing, so --run-id, --dry-run"],
    ("--list", "models", "--list-keys"): ["--list and --list-keys each print one listing"],
    ("--list-keys", "--config", "exp.json"): ["--list-keys documents every config key, whatever the config"],
    ("--config", "exp.json", "--pattern", "vgg*"): ["--pattern filters the names of --list KIND",
                                                    "models, datasets, optimizers, metrics, steps"],
    ("--list", "models", "--markdown"): ["--markdown is the format of --list-keys"],
    ("--list-keys", "--device", "cpu", "--scheduler", "local:1"): ["so --device, --scheduler would do nothing"],
    ("--pattern", "vgg*"): ["--pattern filters the names of --list KIND"],  # not 'no --config'
    ("--config", "exp.json", "--markdown"): ["--markdown is the format of --list-keys"],
}


@pytest.mark.parametrize("argv", CONFLICTS, ids=" ".join)
def test_an_option_the_command_would_ignore_is_refused(argv, capsys):
    assert main_cli(list(argv)) == EXIT_USAGE
    captured = capsys.readouterr()
    message = " ".join(captured.err.split())
    assert all(fragment in message for fragment in CONFLICTS[argv]), message
    assert captured.out == "" and "Traceback" not in message


@pytest.mark.parametrize("command", [main_cli, probe_cli])
def test_quiet_and_verbose_together_are_refused(command, capsys):
    """-q -v logged as -q: the -v asked for was dropped without a word."""
    with pytest.raises(SystemExit) as stopped:
        command(["--config", "exp.json", "-q", "-v"])
    assert stopped.value.code == EXIT_USAGE
    assert "argument -v/--verbose: not allowed with argument -q/--quiet" in capsys.readouterr().err


def test_standardize_and_no_standardize_together_are_refused(tmp_path):
    """probe_main.py --standardize --no-standardize probed as the last one said: the other was dropped without a
    word, as -q was of -q -v."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    for order in (["--standardize", "--no-standardize"], ["--no-standardize", "--standardize"]):
        done = subprocess.run([sys.executable, str(ROOT / "probe_main.py"), "--latents", str(tmp_path), *order],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == EXIT_USAGE, done.stderr
        assert f"argument {order[1]}: not allowed with argument {order[0]}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


UNREACHABLE = {
    # the command, given the path: the message's subject
    "probe --latents": (lambda path: probe_cli(["--latents", str(path)]), "Latents folder"),
    "probe --cache-dir": (lambda path: probe_cli(["--latents", str(make_latents(path.parent)[1]), "-mp", "0",
                                                  "--cache-dir", str(path / "cache")]), "The probe cache folder"),
    "report LOGS_DIR": (lambda path: main_report([str(path)]), "LOGS_DIR"),
    "report --out": (lambda path: main_report([str(path.parent), "--out", str(path / "r.html")]), "--out"),
    "main.py --config": (lambda path: main_cli(["--config", str(path)]), "Config path"),
}
WHY = {"loop": "runs into a loop of symbolic links", "long": "path too long: one of its names is 300 bytes"}


@pytest.mark.parametrize("why", WHY)
@pytest.mark.parametrize("where", UNREACHABLE)
def test_a_path_the_system_refuses_is_named_with_the_reason(where, why, tmp_path, capsys):
    """A path through a loop of links (a -> b -> a) or with a name longer than 255 bytes: probe_main.py ended with
    a traceback (RuntimeError: Symlink loop from Path.resolve, OSError: File name too long), so did the report for a
    long LOGS_DIR or --out, and for a loop the report and main.py --config said 'a' does not exist."""
    path = tmp_path / ("n" * 300)
    if why == "loop":
        path = tmp_path / "a"
        path.symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(path)
    command, subject = UNREACHABLE[where]
    assert command(path) == EXIT_USAGE
    message = " ".join(capsys.readouterr().err.split())
    assert message.startswith(f"error: {subject}") and WHY[why] in message, message


PREFIXES = {
    # the command's parser, its arguments with an option given by a prefix of its name alone, what it refuses
    "main.py --run 3 (--run-id, not --index)": ("phd_lab.cli", ["--run", "3"], "--run 3. Did you mean '--run-id'?"),
    "main.py --conf exp.json": ("phd_lab.cli", ["--conf", "exp.json"], "--conf exp.json"),
    "probe_main.py -m 2 (-mp)": ("phd_lab.probes.cli", ["--latents", "x", "-m", "2"], "-m 2. Did you mean '-mp'?"),
    "report --no-r (--no-refresh)": ("phd_lab.report.cli", ["logs", "--no-r"], "--no-r"),
}


@pytest.mark.parametrize("case", PREFIXES)
def test_an_option_is_spelled_in_full(case, capsys):
    """argparse took any unambiguous prefix of an option: ``main.py --run 3``, meant to run grid point 3, trained
    the whole grid as repetition '3' (--run-id), and an option added later would make a script's prefix ambiguous."""
    import importlib
    module, argv, refused = PREFIXES[case]
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(module).build_parser().parse_args(argv)
    assert stopped.value.code == EXIT_USAGE
    assert f"error: unrecognized arguments: {refused}" in capsys.readouterr().err


def test_an_unknown_option_is_answered_with_the_closest_ones(capsys):
    """'unrecognized arguments: --confg x' named no option the command has."""
    from phd_lab.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--confg", "exp.json", "--dry-run"])
    assert "unrecognized arguments: --confg exp.json. Did you mean '--config'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--confg=exp.json", "--indx", "3"])
    assert ("For '--confg' did you mean '--config'? For '--indx' did you mean '--index'?"
            in " ".join(capsys.readouterr().err.split()))
    assert build_parser().parse_args(["--run-id", "3", "--config=exp.json"]).run_id == "3"  # full names still do
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--bogus"])
    assert capsys.readouterr().err.endswith("unrecognized arguments: --bogus.\n")  # no '--verbose' named


def test_an_option_after_the_separator_is_not_offered_as_its_own_correction(capsys):
    """``main.py -- --config x`` (after '--' nothing is an option) answered "Did you mean '--config'?", the very
    option typed, as if it had been misspelled."""
    from phd_lab.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--", "--config", "exp.json"])
    assert capsys.readouterr().err.endswith("unrecognized arguments: -- --config exp.json.\n")



def test_a_malformed_scheduler_is_refused_also_where_every_point_is_finished(tmp_path, capsys, single_thread):
    """main.py checked --scheduler only where it started the cluster: on a grid whose every point was finished, a
    misspelt `local:x` (or an empty value from an unset variable) exited 0, and the same script failed later."""
    config = write_config(tmp_path, epoch=1, track_saturation=False)
    assert main_in_process(capsys, "--config", str(config), "--no-progress", "-q")[0] == 0
    log_file = next((tmp_path / "logs").rglob("*.log"))
    before = log_file.read_bytes()
    for spec in ["local:x", "local:0", "nonsense", ""]:
        code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "--scheduler", spec)
        assert code == EXIT_USAGE, err
        message = flat(err)
        assert message.startswith(f"error: --scheduler {spec!r}") and "Traceback" not in message, message
        assert "local:N" in message and "Run 0" not in message, message  # told before the grid is looked at
    assert log_file.read_bytes() == before


@pytest.mark.parametrize("listing", [["--list", "steps"], ["--list-keys"]], ids=" ".join)
def test_index_0_beside_a_listing_is_refused_as_any_other_index(listing):
    """`--index 0` equals False, which the check of ignored options took for an option not given: the listing was
    printed with exit 0, while `--index 1` was refused."""
    from tests.conftest import run_main
    done = run_main(*listing, "--index", "0", timeout=120)
    assert done.returncode == EXIT_USAGE, done.stdout
    assert f"{listing[0]} only prints a listing, so --index would do nothing" in flat(done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr
