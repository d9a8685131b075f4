"""Model families; the one-line builders registered by name live in ``registries/models.py``."""
