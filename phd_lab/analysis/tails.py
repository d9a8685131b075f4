"""Tail patterns: runs of consecutive layers with much lower saturation than the rest of the network.

The thesis (ch. 8.5) defines a tail as "a subsequence of at least 3 consecutive layers ... with an
average saturation that is at least 50% lower relative to the average saturation of the rest of
the network". A window ``[i, j]`` of the saturation sequence (forward order) therefore *qualifies*
when

    j - i + 1 >= min_length,  the rest (all other layers) is not empty and has a mean > 0,
    mean(s[i..j]) <= (1 - threshold) * mean(s[rest]).

Many overlapping windows qualify for one visible tail, and the largest qualifying window tends to
swallow a well-saturated neighbour (three layers at 5% can carry a fourth at 60% past the
threshold). ``find_tails`` therefore chooses tails as follows, and every tail it returns qualifies:

1. Core: among the qualifying windows that share no layer with an already chosen tail, take the
   one with the smallest ratio ``mean(window) / mean(rest)`` (the most pronounced contrast); ties (ratios
   within the 1e-12 rounding margin: mirror images, equal contrasts of different lengths) go to the longer
   window, then to the earlier one. A layer above the rest's mean always raises that
   ratio, so a core never reaches into well-saturated layers (but may leave out a low neighbour).
2. Extension: grow the core one neighbour at a time (the lower-saturated side first, left on a
   tie) while the neighbour is free, is itself at least ``threshold`` below the mean of the rest of
   the grown window (``s <= (1 - threshold) * mean(rest)``), and the grown window still qualifies.
3. Repeat 1-2 until no free window qualifies; finally merge tails that touch (the last layer of
   one directly precedes the first of the other) whenever the merged window still qualifies.

"The rest" is always every layer outside the window, other tails included, as in the definition.
A window exactly at the threshold qualifies (comparisons allow a 1e-12 relative rounding margin).
Results are returned in forward order. The functions are pure (no I/O) and take plain sequences.

Step 1 tests every window (O(n²)), and the report's ``visible_since`` finds the tails of every epoch: the windows
are tested once per sequence as numpy array arithmetic on the same prefix sums, operation for operation as the
scan one window at a time in Python did (IEEE results are identical), so the tails are the same to the bit
(121 layers × 200 epochs: 0.09 s of CPU instead of 0.86 s per run, rebuilt with every report).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_LENGTH = 3
_RTOL = 1e-12
_BLOCK = 1 << 18  # windows tested at once by _qualifying_windows: arrays of a few MB whatever the number of layers


@dataclass(frozen=True)
class Tail:
    """One tail: positions are 0-based indices into the saturation sequence, ``stop`` inclusive."""

    start: int
    stop: int
    first_layer: str
    last_layer: str
    mean_saturation: float
    rest_mean_saturation: float

    @property
    def length(self) -> int:
        return self.stop - self.start + 1

    @property
    def ratio(self) -> float:
        """mean(tail) / mean(rest); a tail has ratio <= 1 - threshold."""
        return self.mean_saturation / self.rest_mean_saturation

    def layers(self, names: Sequence[str]) -> list[str]:
        return list(names[self.start:self.stop + 1])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "length": self.length, "ratio": self.ratio}


class _Sums:
    """Prefix sums for O(1) window means."""

    def __init__(self, values: Sequence[float]) -> None:
        self.prefix = [0.0]
        for value in values:
            self.prefix.append(self.prefix[-1] + value)
        self.n = len(values)
        self.total = self.prefix[-1]

    def means(self, start: int, stop: int) -> tuple[float, float]:
        """(mean of window, mean of rest); the rest must not be empty."""
        inside = self.prefix[stop + 1] - self.prefix[start]
        length = stop - start + 1
        return inside / length, (self.total - inside) / (self.n - length)


def _check(saturations: Sequence[float], names: Sequence[str] | None, threshold: float,
           min_length: int) -> list[str]:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1); got {threshold!r}")
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 1:
        raise ValueError(f"min_length must be an integer >= 1; got {min_length!r}")
    for position, value in enumerate(saturations):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"saturation {position} is {value!r}; saturations must be finite and >= 0")
    if names is None:
        return [str(i) for i in range(len(saturations))]
    if len(names) != len(saturations):
        raise ValueError(f"{len(names)} layer names for {len(saturations)} saturation values")
    return list(names)


def qualifies(saturations: Sequence[float], start: int, stop: int, *, threshold: float = DEFAULT_THRESHOLD,
              min_length: int = DEFAULT_MIN_LENGTH) -> bool:
    """Whether ``saturations[start..stop]`` (inclusive) is a tail by the thesis' definition."""
    _check(saturations, None, threshold, min_length)
    return _qualifies(_Sums(saturations), start, stop, threshold, min_length)


def _qualifies(sums: _Sums, start: int, stop: int, threshold: float, min_length: int) -> bool:
    length = stop - start + 1
    if length < min_length or length >= sums.n or start < 0 or stop >= sums.n:
        return False
    inside, rest = sums.means(start, stop)
    # _RTOL absorbs prefix-sum rounding, so a window exactly at the threshold qualifies ("at least").
    return rest > 0 and inside <= (1.0 - threshold) * rest * (1.0 + _RTOL)


def _extend(values: list[float], sums: _Sums, taken: list[bool], start: int, stop: int, threshold: float,
            min_length: int) -> tuple[int, int]:
    """Grow a core by neighbours that are themselves ``threshold`` below the rest (step 2 of the rule)."""
    while True:
        options = []
        for position, grown in ((start - 1, (start - 1, stop)), (stop + 1, (start, stop + 1))):
            if not 0 <= position < len(values) or taken[position]:
                continue
            if not _qualifies(sums, grown[0], grown[1], threshold, min_length):
                continue
            rest = sums.means(*grown)[1]
            if values[position] <= (1.0 - threshold) * rest * (1.0 + _RTOL):
                options.append((values[position], position, grown))
        if not options:
            return start, stop
        start, stop = min(options)[2]


def find_tails(saturations: Sequence[float], names: Sequence[str] | None = None, *,
               threshold: float = DEFAULT_THRESHOLD, min_length: int = DEFAULT_MIN_LENGTH) -> list[Tail]:
    """All tails of a saturation sequence in forward order, chosen as the module docstring says.

    ``saturations`` are per-layer values in [0, 1] in forward order; ``names`` the layer names
    (default: the positions as strings). ``threshold`` = 0.5 means "at least 50% lower".
    """
    names = _check(saturations, names, threshold, min_length)
    values = [float(v) for v in saturations]
    sums = _Sums(values)
    n = len(values)
    taken = [False] * n
    chosen: list[tuple[int, int]] = []
    windows = _qualifying_windows(np.array(sums.prefix, dtype=np.float64), threshold, min_length)
    while True:
        best = _best_core(windows, taken, min_length)
        if best is None:
            break
        start, stop = best
        start, stop = _extend(values, sums, taken, start, stop, threshold, min_length)
        chosen.append((start, stop))
        for position in range(start, stop + 1):
            taken[position] = True
    chosen.sort()
    merged = True
    while merged:
        merged = False
        for k in range(len(chosen) - 1):
            (a, b), (c, d) = chosen[k], chosen[k + 1]
            if b + 1 == c and _qualifies(sums, a, d, threshold, min_length):
                chosen[k:k + 2] = [(a, d)]
                merged = True
                break
    tails = []
    for start, stop in chosen:
        inside, rest = sums.means(start, stop)
        tails.append(Tail(start, stop, names[start], names[stop], inside, rest))
    return tails


def _qualifying_windows(prefix: np.ndarray, threshold: float,
                        min_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every window that qualifies, as (starts, stops, ratios) ordered by start, then stop; ``prefix`` holds
    ``_Sums.prefix``. Each window's means, test and ratio are the float64 operations of ``_Sums.means`` and
    ``_qualifies`` in the same order, so they are the same to the bit; which windows are free changes from one
    chosen tail to the next, which do not."""
    n = len(prefix) - 1
    stops = np.arange(n)
    found = []
    rows = max(1, _BLOCK // max(n, 1))
    for first in range(0, n, rows):
        start = np.arange(first, min(n, first + rows))[:, None]
        length = stops[None, :] - start + 1
        with np.errstate(all="ignore"):  # windows ending before they start, sums that overflowed: never qualify
            inside_sum = prefix[None, 1:] - prefix[start]
            inside = inside_sum / length
            rest = (prefix[-1] - inside_sum) / (n - length)
            ok = ((length >= min_length) & (length < n) & (rest > 0)
                  & (inside <= (1.0 - threshold) * rest * (1.0 + _RTOL)))
        row, column = np.nonzero(ok)
        found.append((row + first, column, inside[row, column] / rest[row, column]))
    if not found:  # no layers
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    return tuple(np.concatenate([part[k] for part in found]) for k in range(3))  # type: ignore[return-value]


def _best_core(windows: tuple[np.ndarray, np.ndarray, np.ndarray], taken: list[bool],
               min_length: int) -> tuple[int, int] | None:
    """Step 1: the free qualifying window of the smallest ratio, of those within the rounding margin (``_RTOL``)
    of it the longest, of those the first, or None (a qualifying ratio is always finite). A window is free as
    the scan one start at a time had it: its start is free and no stop from ``start + min_length - 1`` up to
    its own is taken."""
    starts, stops, ratios = windows
    is_taken = np.array(taken, dtype=bool)
    blocked = np.flatnonzero(is_taken)
    # the first taken position at or after each start's first stop (n if none): stops must lie before it
    limit = np.append(blocked, len(taken))[np.searchsorted(blocked, starts + min_length - 1)]
    free = np.flatnonzero(~is_taken[starts] & (stops < limit))
    if not len(free):
        return None
    smallest = ratios[free].min()
    # a tie within the rounding margin: two windows of the same values in another order (mirror images) have
    # equal ratios whose prefix-sum rounding differs, which alone must not decide between them
    ties = free[ratios[free] <= smallest * (1.0 + _RTOL)]
    lengths = stops[ties] - starts[ties]
    best = ties[np.flatnonzero(lengths == lengths.max())[0]]  # the longest; of those the first start
    return int(starts[best]), int(stops[best])


def visible_since(history: Sequence[tuple[int, Sequence[float]]], tail: Tail, *,
                  threshold: float = DEFAULT_THRESHOLD, min_length: int = DEFAULT_MIN_LENGTH) -> int | None:
    """The first epoch from which on every epoch shows ``tail`` (the last epoch's): a tail there shares a layer
    with it. ``history`` holds (epoch, saturations of the same layers in the same order), epochs ascending; the
    thesis observes that tails show early in training (appendix B). None if the last epoch does not show it."""
    since = None
    for epoch, saturations in reversed(history):  # from the last epoch back to the first that does not show it
        if not any(other.start <= tail.stop and tail.start <= other.stop
                   for other in find_tails(saturations, threshold=threshold, min_length=min_length)):
            break
        since = epoch
    return since
