"""The paired statistics of the benchmark scripts: a verdict only from an interval that is one."""

from __future__ import annotations

from benchmarks.paired_stats import MIN_ROUNDS, interval_label, median_interval, paired_verdict


def test_too_few_rounds_give_a_range_and_no_verdict():
    """One round "met" the ≤ 1.10 target under the label "95 % interval": a single point."""
    median, low, high = median_interval([1.097])
    assert (median, low, high) == (1.097, 1.097, 1.097)
    assert paired_verdict(low, high, 1.10, at_most=True, n=1) == "undecided"
    assert interval_label(1) == "range of 1, too few rounds for a 95 % interval"


def test_enough_rounds_give_the_order_statistics_interval_and_a_verdict():
    values = [1.01, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07, 1.08, 1.09]  # n = 9: k = 2 (binomial tail 0.0195)
    median, low, high = median_interval(values)
    assert (median, low, high) == (1.05, 1.02, 1.08)
    assert interval_label(len(values)) == "95 % interval" and len(values) >= MIN_ROUNDS
    assert paired_verdict(low, high, 1.10, at_most=True, n=len(values)) == "met"
    assert paired_verdict(low, high, 1.00, at_most=True, n=len(values)) == "missed"
    assert paired_verdict(low, high, 1.05, at_most=True, n=len(values)) == "undecided"
