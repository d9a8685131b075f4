"""Plotting: functions that draw already-computed tables; matplotlib is imported lazily."""
