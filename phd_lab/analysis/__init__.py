"""Analyses of saved run tables: receptive fields, FLOPs, tails, per-run summaries."""
