"""Paired ratios with a distribution-free interval: the verdict of a speed target on a noisy machine.

Each round times the two conditions next to each other (in alternating order), so the ratio of a round
cancels the machine's slow drift; the median of the rounds' ratios comes with the 95 % interval of binomial
order statistics, and a target counts as met or missed only when the whole interval lies on one side of it.
"""

from __future__ import annotations

import math
import statistics


MIN_ROUNDS = 6  # the fewest values for which a 95 % interval of the median exists (binomial order statistics)


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Median of ``values`` and a distribution-free interval for it: the order statistics
    x(k), x(n+1-k) with the largest k whose binomial(n, ½) tail stays within (1 − confidence)/2.
    With fewer than 6 values no such interval exists and it spans all values (``interval_label`` says so,
    and ``paired_verdict`` decides nothing from it)."""
    ordered, n = sorted(values), len(values)
    tail, k = 0.0, 0
    while k < n // 2:
        tail += math.comb(n, k) / 2 ** n  # P(fewer than k + 1 values lie below the true median)
        if tail > (1 - confidence) / 2:
            break
        k += 1
    k = max(k, 1)
    return statistics.median(ordered), ordered[k - 1], ordered[n - k]


def interval_label(n: int) -> str:
    """What the interval of ``n`` values is: a 95 % interval, or only their range (too few rounds for one)."""
    return "95 % interval" if n >= MIN_ROUNDS else f"range of {n}, too few rounds for a 95 % interval"


def paired_verdict(low: float, high: float, target: float, at_most: bool, n: int = MIN_ROUNDS) -> str:
    """'met', 'missed' or 'undecided': whether the whole interval lies on one side of the target; undecided
    with fewer than MIN_ROUNDS values, whose range is no 95 % interval (one round "met" a target before)."""
    if n < MIN_ROUNDS:
        return "undecided"
    if (high <= target) if at_most else (low >= target):
        return "met"
    if (low > target) if at_most else (high < target):
        return "missed"
    return "undecided"
