"""``python -m phd_lab train ...`` (same as main.py)."""

import sys

from phd_lab.cli import main_cli


def main(argv: list[str]) -> int:
    if argv and argv[0] == "train":
        return main_cli(argv[1:])
    sys.stderr.write("usage: python -m phd_lab train [main.py options]\n")
    return 2



def entry_point() -> None:
    """Console script ``phd-lab``."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
