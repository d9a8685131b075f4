"""Train and analyse every run of a JSON config grid: ``python main.py --config exp.json``."""

import sys

from phd_lab.cli import main_cli

if __name__ == "__main__":
    sys.exit(main_cli())
