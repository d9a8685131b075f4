"""``python -m phd_lab train ...`` (main.py), ``probe ...`` (probe_main.py) and ``report LOGS_DIR ...``.

Only the standard library and the Ctrl-C guard (phd_lab.entry) are imported here: each command's modules load under
that guard, so that a Ctrl-C while they load ends the command in a line instead of a traceback."""

import sys
from pathlib import Path

from phd_lab.entry import run_command

COMMANDS = ("train", "probe", "report")
USAGE = ("usage: python -m phd_lab train [main.py options]\n"
         "       python -m phd_lab probe [probe_main.py options]\n"
         "       python -m phd_lab report LOGS_DIR [--out FILE] [--no-refresh]\n"
         "                                [--alpha A] [-mp N] [--no-progress] [-q|-v]\n"
         "Each command's options: python -m phd_lab COMMAND --help (phd-lab COMMAND --help\n"
         "once installed).\n")


def main(argv: list[str]) -> int:
    """Run the command ``argv[0]`` names with the rest of ``argv``; its exit status."""
    if argv and argv[0] == "train":
        return run_command("phd_lab.cli", "main_cli", argv[1:], prog=command_name("train"))
    if argv and argv[0] == "probe":
        return run_command("phd_lab.probes.cli", "probe_cli", argv[1:], prog=command_name("probe"))
    if argv and argv[0] == "report":
        return run_command("phd_lab.report.cli", "main_report", argv[1:], prog=command_name("report"))
    return usage_or_error(argv)


def usage_or_error(argv: list[str]) -> int:
    """The usage on stdout for ``-h``/``--help``, else on stderr with the error line: exit status 0 or 2."""
    from phd_lab.console import write_stderr, write_stdout
    from phd_lab.errors import EXIT_OK, EXIT_USAGE
    if argv and argv[0] in ("-h", "--help"):
        write_stdout(USAGE)
        return EXIT_OK
    write_stderr(USAGE + unknown_command(argv))
    return EXIT_USAGE


def command_name(command: str) -> str:
    """The command as its usage and errors name it, as it was typed: ``phd-lab train`` (the console script) or
    ``python -m phd_lab train``; their help and errors said ``main.py``, a file a pip install does not have."""
    launcher = "phd-lab" if Path(sys.argv[0]).name == "phd-lab" else "python -m phd_lab"
    return f"{launcher} {command}"


def unknown_command(argv: list[str]) -> str:
    """The error line under the usage: a mistyped command (``trian``) was answered with the usage alone, which
    did not say what was wrong with the command line; an option before the command (``-q report``), or without one
    (``-q``), was called an unknown command."""
    if not argv:
        return f"error: name a command: {', '.join(COMMANDS)}.\n"
    command = next((arg for arg in argv if arg in COMMANDS), None)
    if argv[0].startswith("-") and command is not None:  # 'python -m phd_lab -q report logs': the option first
        return (f"error: {argv[0]!r} comes before the command {command!r}; a command's options go after it "
                f"({command_name(command)} {argv[0]} ...).\n")
    if argv[0].startswith("-"):  # 'python -m phd_lab -q': no mistyped command, an option without one
        return (f"error: {argv[0]!r} is an option, not a command: name a command first ({', '.join(COMMANDS)}), "
                f"then its options ({command_name('COMMAND')} {argv[0]} ...).\n")
    from phd_lab.registry import did_you_mean
    hint = did_you_mean(argv[0], list(COMMANDS), n=1) or f" The commands are {', '.join(COMMANDS)}."
    return f"error: unknown command {argv[0]!r}.{hint}\n"


def entry_point() -> None:
    """Console script ``phd-lab``."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
