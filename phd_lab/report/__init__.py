"""The HTML report of a grid: ``python -m phd_lab report LOGS_DIR [--out FILE]``."""
