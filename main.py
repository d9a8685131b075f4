"""Train and analyse every run of a JSON config grid: ``python main.py --config exp.json``."""

import os
import sys

# this checkout first, as Python puts a script's folder unless PYTHONSAFEPATH, -P or -I leave it out: then
# an installed phd-lab (another checkout's, another version) ran instead, or none was found
_CHECKOUT = os.path.dirname(os.path.realpath(__file__))
if _CHECKOUT not in sys.path[:1]:
    sys.path.insert(0, _CHECKOUT)


def _interrupted() -> int:
    """Exit status 130, said in a line, for a Ctrl-C before the command handles it itself: while its modules are
    imported or its options read (it ended the command with a KeyboardInterrupt traceback)."""
    try:
        os.write(2, b"interrupted\n")
    except OSError:  # stderr closed
        pass
    return 130


if __name__ == "__main__":
    try:
        from phd_lab.cli import main_cli
        code = main_cli()
    except KeyboardInterrupt:
        code = _interrupted()
    sys.exit(code)
