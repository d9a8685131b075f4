"""Plots drawn from saved tables only (matplotlib is imported lazily inside the functions)."""
