"""Plots drawn from saved tables; each function imports matplotlib lazily (Agg backend)."""
