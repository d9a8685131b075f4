"""Tail patterns on seeded random and constructed saturation profiles, against a plain re-reading of the rule.

``naive_tails`` follows the steps of ``phd_lab.analysis.tails``' docstring one window at a time in Python
(thesis §8.5: at least 3 consecutive layers whose mean saturation is at least 50 % below the rest's mean); the
module's vectorised search must choose the same tails. Planted profiles (low runs between well-saturated
layers) must give exactly the planted runs; scaling by a power of two and mirroring the network must not
change the tails (mirrored: mirrored tails).
"""

from __future__ import annotations

import random

from phd_lab.analysis.tails import find_tails


def qualifies(values: list[float], start: int, stop: int, threshold: float, min_length: int) -> bool:
    """The thesis' definition with the module's 1e-12 rounding margin."""
    length, n = stop - start + 1, len(values)
    if length < min_length or length >= n:
        return False
    inside = sum(values[start:stop + 1]) / length
    rest = (sum(values) - sum(values[start:stop + 1])) / (n - length)
    return rest > 0 and inside <= (1 - threshold) * rest * (1 + 1e-12)


def ratio(values: list[float], start: int, stop: int) -> float:
    length, inside = stop - start + 1, sum(values[start:stop + 1])
    return (inside / length) / ((sum(values) - inside) / (len(values) - length))


def naive_tails(values: list[float], threshold: float = 0.5, min_length: int = 3) -> list[tuple[int, int]]:
    """Steps 1–3 of the module docstring, one candidate window at a time."""
    n, taken, chosen = len(values), [False] * len(values), []
    while True:
        free = [(ratio(values, i, j), -(j - i), i, j) for i in range(n) for j in range(i, n)
                if qualifies(values, i, j, threshold, min_length) and not any(taken[i:j + 1])]
        if not free:
            break
        smallest = min(free)[0]  # ratios within the rounding margin are ties: the longer, then the earlier wins
        _, _, start, stop = min((smallest, length, i, j) for r, length, i, j in free if r <= smallest * (1 + 1e-12))
        while True:
            options = []
            for position, (a, b) in ((start - 1, (start - 1, stop)), (stop + 1, (start, stop + 1))):
                if 0 <= position < n and not taken[position] and qualifies(values, a, b, threshold, min_length):
                    rest = (sum(values) - sum(values[a:b + 1])) / (n - (b - a + 1))
                    if values[position] <= (1 - threshold) * rest * (1 + 1e-12):
                        options.append((values[position], position, (a, b)))
            if not options:
                break
            start, stop = min(options)[2]
        chosen.append((start, stop))
        taken[start:stop + 1] = [True] * (stop - start + 1)
    chosen.sort()
    merged = True
    while merged:
        merged = False
        for k in range(len(chosen) - 1):
            (a, b), (c, d) = chosen[k], chosen[k + 1]
            if b + 1 == c and qualifies(values, a, d, threshold, min_length):
                chosen[k:k + 2] = [(a, d)]
                merged = True
                break
    return chosen


def spans(values: list[float], **options) -> list[tuple[int, int]]:
    return [(tail.start, tail.stop) for tail in find_tails(values, **options)]


def test_random_profiles_give_the_naive_rules_tails_which_qualify_and_leave_no_free_qualifying_window():
    rng = random.Random(0)
    for case in range(300):
        n = rng.randint(0, 12)
        shape = rng.choice(["uniform", "bimodal", "few values", "tenths"])
        if shape == "uniform":
            values = [rng.random() for _ in range(n)]
        elif shape == "bimodal":
            values = [rng.choice([rng.uniform(0, 0.1), rng.uniform(0.4, 1)]) for _ in range(n)]
        elif shape == "few values":  # ties between windows: the tie-breaking rules decide
            values = [rng.choice([0.0, 0.125, 0.25, 0.5, 1.0]) for _ in range(n)]
        else:  # saturations k/d: ties that only the rounding of the sums tells apart
            values = [rng.randint(0, 10) / 10 for _ in range(n)]
        threshold, min_length = rng.choice([(0.5, 3), (0.5, 3), (0.3, 2), (0.7, 1)])
        found = spans(values, threshold=threshold, min_length=min_length)
        assert found == naive_tails(values, threshold, min_length), (case, values, threshold, min_length)
        taken = [any(a <= p <= b for a, b in found) for p in range(n)]
        assert all(qualifies(values, a, b, threshold, min_length) for a, b in found)
        assert all(b < c for (_, b), (c, _) in zip(found, found[1:]))
        assert not any(qualifies(values, i, j, threshold, min_length) and not any(taken[i:j + 1])
                       for i in range(n) for j in range(i, n)), (case, values)


def test_planted_low_runs_between_saturated_layers_are_exactly_the_tails():
    rng = random.Random(1)
    for case in range(60):
        values, planted = [rng.uniform(0.6, 0.95) for _ in range(rng.randint(1, 3))], []
        for _ in range(rng.randint(0, 3)):
            length = rng.randint(3, 5)
            planted.append((len(values), len(values) + length - 1))
            values += [rng.uniform(0, 0.05) for _ in range(length)]
            values += [rng.uniform(0.6, 0.95) for _ in range(rng.randint(length, length + 3))]
        if rng.random() < 0.5:  # a tail at the output end as well (thesis Fig. 49)
            planted.append((len(values), len(values) + 2))
            values += [rng.uniform(0, 0.05) for _ in range(3)]
        assert spans(values) == planted, (case, values)


def test_scaling_by_a_power_of_two_changes_no_tail_and_mirroring_mirrors_them():
    rng = random.Random(2)
    for case in range(100):
        n = rng.randint(3, 12)
        values = [rng.random() ** 2 for _ in range(n)]  # continuous: no ties for the order of the rules to break
        found = spans(values)
        factor = 2.0 ** rng.randint(-4, 4)
        assert spans([v * factor for v in values]) == found, (case, values)
        assert spans(values[::-1]) == sorted((n - 1 - b, n - 1 - a) for a, b in found), (case, values)
