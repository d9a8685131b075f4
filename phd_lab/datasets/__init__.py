"""Dataset builders; the registered factories live in ``registries/datasets.py``."""
