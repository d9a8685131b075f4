"""Fit logistic-regression probes on extracted latents: ``python probe_main.py --config exp.json``."""

import sys

from phd_lab.probes.cli import probe_cli

if __name__ == "__main__":
    sys.exit(probe_cli())
