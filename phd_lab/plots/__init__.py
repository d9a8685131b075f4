"""Plots drawn from saved tables; matplotlib is imported lazily inside each function."""
