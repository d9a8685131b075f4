"""The explained-variance thresholds (deltas) the project step evaluates by default, apart from the code that
evaluates them (``tracking.projection``, which imports torch and pandas): ``--list steps`` shows them as the step's
default without importing either."""

from __future__ import annotations

# δ ∈ {0.90, 0.91, …, 0.99} ∪ {0.992, …, 0.998} ∪ {0.999, 0.9991, …, 0.9999}: the values of §7.4's Tables 4
# and 5. §7.3's sweep is {0.90, …, 0.99} ∪ {0.991, …, 0.999}; pass it as the step's 'deltas' to repeat it.
# The unprojected model is always evaluated as the reference.
THESIS_DELTAS: tuple[float, ...] = (
    tuple(round(0.90 + i / 100, 4) for i in range(10))
    + tuple(round(0.99 + i / 500, 4) for i in range(1, 5))
    + tuple(round(0.999 + i / 10000, 4) for i in range(10))
)
