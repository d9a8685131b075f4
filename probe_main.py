"""Fit logistic-regression probes on extracted latents (not yet available)."""

import sys

if __name__ == "__main__":
    sys.stderr.write("probe_main.py: the probe job is not yet available in this version of phd-lab.\n")
    sys.exit(2)
