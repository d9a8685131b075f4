"""Fit logistic-regression probes on extracted latents: ``python probe_main.py --config exp.json``."""

import os
import sys

# this checkout first, as Python puts a script's folder unless PYTHONSAFEPATH, -P or -I leave it out: then
# an installed phd-lab (another checkout's, another version) ran instead, or none was found
_CHECKOUT = os.path.dirname(os.path.realpath(__file__))
if _CHECKOUT not in sys.path[:1]:
    sys.path.insert(0, _CHECKOUT)

if __name__ == "__main__":
    from phd_lab.entry import run_command
    sys.exit(run_command("phd_lab.probes.cli", "probe_cli"))
