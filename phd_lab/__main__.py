"""``python -m phd_lab train ...`` (main.py), ``probe ...`` (probe_main.py) and ``report LOGS_DIR ...``."""

import sys

from phd_lab.cli import main_cli
from phd_lab.console import write_stderr, write_stdout
from phd_lab.errors import EXIT_OK, EXIT_USAGE

USAGE = ("usage: python -m phd_lab train [main.py options]\n"
         "       python -m phd_lab probe [probe_main.py options]\n"
         "       python -m phd_lab report LOGS_DIR [--out FILE] [--no-refresh] [--alpha A] [-mp N]\n")


def main(argv: list[str]) -> int:
    """Run the command ``argv[0]`` names with the rest of ``argv``; its exit status."""
    if argv and argv[0] == "train":
        return main_cli(argv[1:])
    if argv and argv[0] == "probe":
        from phd_lab.probes.cli import probe_cli
        return probe_cli(argv[1:])
    if argv and argv[0] == "report":
        from phd_lab.report.cli import main_report
        return main_report(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        write_stdout(USAGE)
        return EXIT_OK
    write_stderr(USAGE)
    return EXIT_USAGE


def entry_point() -> None:
    """Console script ``phd-lab``."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
