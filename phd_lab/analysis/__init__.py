"""Analyses computed from a model or from saved run tables (receptive fields, FLOPs, ...).

Pure computation: nothing here writes files or imports matplotlib.
"""
