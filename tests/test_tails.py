"""Tail detection on hand-made saturation sequences (thesis ch. 8.5 definition)."""

import random

import pytest

from phd_lab.analysis.tails import find_tails, qualifies, visible_since


def spans(saturations, **kwargs):
    return [(t.start, t.stop) for t in find_tails(saturations, **kwargs)]


def test_no_tail_in_an_even_network():
    assert spans([0.3, 0.35, 0.28, 0.32, 0.3, 0.29, 0.31]) == []


def test_no_tail_when_the_low_run_is_too_short():
    # two low layers are not a tail (min length 3), and with a neighbour their mean (0.23) is too high ...
    assert spans([0.4, 0.4, 0.4, 0.15, 0.15, 0.4, 0.4]) == []
    # ... unless the minimum length is lowered
    assert spans([0.4, 0.4, 0.4, 0.15, 0.15, 0.4, 0.4], min_length=2) == [(3, 4)]
    # (by the definition's letter, two layers at 2% do carry a 40% neighbour past the threshold)
    assert qualifies([0.4, 0.4, 0.4, 0.02, 0.02, 0.4, 0.4], 3, 5)


def test_one_tail_at_the_output_end():
    tails = find_tails([0.3, 0.32, 0.35, 0.3, 0.05, 0.04, 0.03], names=list("abcdefg"))
    assert [(t.start, t.stop, t.first_layer, t.last_layer) for t in tails] == [(4, 6, "e", "g")]
    tail = tails[0]
    assert tail.mean_saturation == pytest.approx(0.04)
    assert tail.rest_mean_saturation == pytest.approx(0.3175)
    assert tail.length == 3 and tail.ratio == pytest.approx(0.04 / 0.3175)
    assert tail.layers(list("abcdefg")) == ["e", "f", "g"]


def test_one_tail_at_the_input_end():
    assert spans([0.02, 0.03, 0.02, 0.4, 0.45, 0.5, 0.42]) == [(0, 2)]


def test_two_tails_at_both_ends():
    saturations = [0.05] * 3 + [0.6] * 6 + [0.05] * 3
    assert spans(saturations) == [(0, 2), (9, 11)]


def test_two_tails_in_the_middle_are_kept_apart_by_a_saturated_layer():
    saturations = [0.5, 0.5, 0.04, 0.04, 0.04, 0.5, 0.05, 0.05, 0.05, 0.5, 0.5]
    assert spans(saturations) == [(2, 4), (6, 8)]


def test_tail_before_a_highly_saturated_classifier():
    # as in the thesis' VGG figures: the tail ends before the 10-way output layer
    saturations = [0.26, 0.32, 0.35, 0.29, 0.33, 0.07, 0.05, 0.04, 0.035, 0.03, 0.9]
    assert spans(saturations) == [(5, 9)]


def test_a_tail_does_not_swallow_a_well_saturated_neighbour():
    # [0..3] qualifies by the letter of the definition (mean 0.19 vs rest 0.39), but layer 3 is at 60%
    saturations = [0.05] * 3 + [0.6] * 6 + [0.05] * 3
    assert qualifies(saturations, 0, 3)
    assert (0, 3) not in spans(saturations)
    # a moderately low neighbour (30% vs 50%) is not part of the tail either
    assert spans([0.5, 0.5, 0.5, 0.5, 0.3, 0.05, 0.05, 0.05]) == [(5, 7)]


def test_a_gradual_slope_of_low_layers_is_one_tail():
    assert spans([0.6] * 6 + [0.2, 0.15, 0.1, 0.05, 0.05, 0.05]) == [(6, 11)]


def test_exactly_at_the_threshold_counts_as_a_tail():
    # mean 0.2 is exactly 50% below the rest's 0.4: "at least 50% lower"
    assert spans([0.4, 0.4, 0.4, 0.2, 0.2, 0.2]) == [(3, 5)]
    assert spans([0.4, 0.4, 0.4, 0.2001, 0.2001, 0.2001]) == []


def test_windows_whose_ratios_differ_only_by_the_rounding_of_their_sums_tie():
    # (4, 6) and (4, 8) both have a mean 60 % below the rest's (0.2/3 against 1.0/6, 0.4/5 against 0.8/4):
    # the longer one wins, not the one whose sums happened to round lower (which left layers 7 and 8 out)
    assert spans([0.1, 0.0, 0.0, 0.7, 0.0, 0.1, 0.1, 0.1, 0.1]) == [(0, 2), (4, 8)]
    # (0, 2) and (1, 3) hold the same values in another order: the earlier one wins
    assert spans([0.6, 0.0, 0.1, 0.6, 0.8, 0.6, 0.5, 0.0, 0.5, 0.0, 0.6, 0.9]) == [(0, 2), (7, 9)]


def test_threshold_is_configurable():
    saturations = [0.4, 0.4, 0.4, 0.25, 0.25, 0.25]  # 37.5% lower
    assert spans(saturations) == []
    assert spans(saturations, threshold=0.3) == [(3, 5)]


def test_degenerate_sequences():
    assert spans([]) == []
    assert spans([0.1, 0.1]) == []
    assert spans([0.01, 0.01, 0.01]) == []  # the whole network: no rest to compare with
    assert spans([0.0] * 6) == []  # rest mean 0: nothing is lower
    assert spans([0.0, 0.0, 0.0, 0.3]) == [(0, 2)]


def test_invalid_input_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        find_tails([0.1, 0.2], threshold=1.0)
    with pytest.raises(ValueError, match="min_length"):
        find_tails([0.1, 0.2], min_length=0)
    with pytest.raises(ValueError, match="finite"):
        find_tails([0.1, float("nan"), 0.2])
    with pytest.raises(ValueError, match="names"):
        find_tails([0.1, 0.2], names=["a"])


def test_every_reported_tail_qualifies_and_tails_are_disjoint_on_random_sequences():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 18)
        saturations = [rng.choice([rng.uniform(0.0, 0.08), rng.uniform(0.2, 0.9)]) for _ in range(n)]
        threshold, min_length = rng.choice([0.5, 0.3, 0.7]), rng.choice([1, 2, 3, 4])
        tails = find_tails(saturations, threshold=threshold, min_length=min_length)
        covered = []
        for tail in tails:
            assert qualifies(saturations, tail.start, tail.stop, threshold=threshold, min_length=min_length)
            covered.extend(range(tail.start, tail.stop + 1))
        assert covered == sorted(set(covered))
        # no qualifying window is left entirely outside the reported tails
        free = [p for p in range(n) if p not in covered]
        for i in free:
            for j in range(i + min_length - 1, n):
                if all(p in free for p in range(i, j + 1)):
                    assert not qualifies(saturations, i, j, threshold=threshold, min_length=min_length)


def test_a_tail_is_visible_since_the_first_epoch_from_which_on_every_epoch_shows_it():
    """Appendix B: tails show early in training. The epoch counts only if no later epoch loses the tail."""
    from phd_lab.analysis.tails import visible_since

    flat, tailed, shifted = [0.6] * 8, [0.6] * 5 + [0.1] * 3, [0.6] * 4 + [0.1] * 3 + [0.6]
    last = find_tails(tailed)[-1]
    assert visible_since([(1, flat), (2, tailed), (3, tailed)], last) == 2
    assert visible_since([(1, tailed), (2, flat), (3, tailed), (4, tailed)], last) == 3  # lost at epoch 2
    assert visible_since([(1, shifted), (2, tailed)], last) == 1  # one layer earlier still overlaps it
    assert visible_since([(1, tailed), (2, flat)], last) is None  # the last epoch does not show it


@pytest.mark.parametrize("rest, low", [(0.5, 0.25), (0.7, 0.35), (0.9, 0.45)])
def test_a_tail_exactly_at_the_threshold_qualifies_despite_rounding(rest, low):
    """Exactly 50% lower is "at least 50% lower": 0.25 vs 0.5 is exact in binary, 0.35 vs 0.7 and 0.45 vs 0.9
    come out a rounding error above half the rest, which must not drop the tail."""
    saturations = [rest] * 3 + [low] * 3
    assert qualifies(saturations, 3, 5)
    assert spans(saturations) == [(3, 5)]


def test_of_two_cores_with_the_same_contrast_the_longer_one_is_chosen():
    """[0..2] and [0..3] both have mean(window) / mean(rest) = 1/2 exactly; the rule takes the longer window,
    whose fourth layer (0.25) would not be added by the extension step (it is above half the rest, 0.1875)."""
    saturations = [0.125, 0.25, 0.125, 0.25, 0.375, 0.375]
    assert qualifies(saturations, 0, 2) and qualifies(saturations, 0, 3)
    assert spans(saturations) == [(0, 3)]


def test_a_tail_one_layer_later_still_shows_the_last_epochs_tail():
    """An earlier epoch's tail that shares only the last layer of the final tail (starts at its stop) overlaps
    it, so the tail counts as visible since that epoch."""
    from phd_lab.analysis.tails import visible_since

    tailed, later = [0.6] * 2 + [0.1] * 3 + [0.6] * 5, [0.6] * 4 + [0.1] * 3 + [0.6] * 3
    last = find_tails(tailed)[-1]
    assert (last.start, last.stop) == (2, 4) and spans(later) == [(4, 6)]
    assert visible_since([(1, later), (2, tailed)], last) == 1


# ---------------------------------------------------------------------------------------------------------------
# The window scan before it ran on numpy arrays, kept as the reference the vectorised one must equal to the bit.
class _ReferenceSums:
    def __init__(self, values):
        self.prefix = [0.0]
        for value in values:
            self.prefix.append(self.prefix[-1] + value)
        self.n = len(values)
        self.total = self.prefix[-1]

    def means(self, start, stop):
        inside = self.prefix[stop + 1] - self.prefix[start]
        length = stop - start + 1
        return inside / length, (self.total - inside) / (self.n - length)


def _reference_qualifies(sums, start, stop, threshold, min_length):
    length = stop - start + 1
    if length < min_length or length >= sums.n or start < 0 or stop >= sums.n:
        return False
    inside, rest = sums.means(start, stop)
    return rest > 0 and inside <= (1.0 - threshold) * rest * (1.0 + 1e-12)


def _reference_extend(values, sums, taken, start, stop, threshold, min_length):
    while True:
        options = []
        for position, grown in ((start - 1, (start - 1, stop)), (stop + 1, (start, stop + 1))):
            if not 0 <= position < len(values) or taken[position]:
                continue
            if not _reference_qualifies(sums, grown[0], grown[1], threshold, min_length):
                continue
            rest = sums.means(*grown)[1]
            if values[position] <= (1.0 - threshold) * rest * (1.0 + 1e-12):
                options.append((values[position], position, grown))
        if not options:
            return start, stop
        start, stop = min(options)[2]


def reference_find_tails(saturations, threshold=0.5, min_length=3):
    """(start, stop, mean of the tail, mean of the rest) of every tail, as the pure-Python scan found them."""
    values = [float(v) for v in saturations]
    sums = _ReferenceSums(values)
    n = len(values)
    taken = [False] * n
    chosen = []
    while True:
        keys = []
        for start in range(n):
            if taken[start]:
                continue
            for stop in range(start + min_length - 1, n):
                if taken[stop]:
                    break
                if not _reference_qualifies(sums, start, stop, threshold, min_length):
                    continue
                inside, rest = sums.means(start, stop)
                keys.append((inside / rest, -(stop - start + 1), start, stop))
        if not keys:
            break
        smallest = min(keys)[0]  # ratios within the rounding margin tie: the longest, then the first wins
        _, start, stop = min((length, start, stop) for ratio, length, start, stop in keys
                             if ratio <= smallest * (1.0 + 1e-12))
        start, stop = _reference_extend(values, sums, taken, start, stop, threshold, min_length)
        chosen.append((start, stop))
        for position in range(start, stop + 1):
            taken[position] = True
    chosen.sort()
    merged = True
    while merged:
        merged = False
        for k in range(len(chosen) - 1):
            (a, b), (c, d) = chosen[k], chosen[k + 1]
            if b + 1 == c and _reference_qualifies(sums, a, d, threshold, min_length):
                chosen[k:k + 2] = [(a, d)]
                merged = True
                break
    return [(start, stop, *sums.means(start, stop)) for start, stop in chosen]


def reference_visible_since(history, tail, threshold=0.5, min_length=3):
    since = None
    for epoch, saturations in history:
        shown = any(start <= tail.stop and tail.start <= stop
                    for start, stop, _, _ in reference_find_tails(saturations, threshold, min_length))
        since = (epoch if since is None else since) if shown else None
    return since


def _random_saturations(rng: random.Random, n: int) -> list[float]:
    """Sequences of the kinds the scan must agree on: continuous values, few levels (ties of ratio and length),
    whole numbers, zeros, thesis-like tails, tiny values near underflow and huge ones whose sums overflow."""
    kind = rng.randrange(7)
    if kind == 0:
        return [rng.random() for _ in range(n)]
    if kind == 1:
        levels = [0.0, 0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 1.0]
        return [rng.choice(levels[:rng.randrange(2, len(levels) + 1)]) for _ in range(n)]
    if kind == 2:
        return [float(rng.randrange(4)) for _ in range(n)]
    if kind == 3:
        return [0.0 if rng.random() < 0.6 else rng.random() for _ in range(n)]
    if kind == 4:  # one or two low runs in a well-saturated network
        values = [rng.uniform(0.25, 0.4) for _ in range(n)]
        for _ in range(rng.randrange(1, 3)):
            start = rng.randrange(n) if n else 0
            for position in range(start, min(n, start + rng.randrange(1, 8))):
                values[position] = rng.uniform(0.0, 0.08)
        return values
    if kind == 5:
        return [rng.choice([0.0, 5e-324, 1e-310, 1e-300, 0.3]) for _ in range(n)]
    return [rng.choice([0.0, 1.0, 1e307, 1.7e308]) for _ in range(n)]


def test_the_vectorised_scan_finds_the_tails_the_pure_python_scan_found_to_the_bit():
    """Thousands of random sequences (ties, zeros, underflow, overflowing sums), thresholds and minimum lengths:
    every tail's span and both means are the reference's, compared by repr (bit for bit)."""
    rng = random.Random(20240611)
    for trial in range(4000):
        n = rng.randrange(0, 45)
        values = _random_saturations(rng, n)
        threshold = rng.choice([0.5, 0.25, 0.75, 0.9, rng.uniform(0.01, 0.99)])
        min_length = rng.choice([1, 2, 3, 3, 3, 4, 6])
        found = [(t.start, t.stop, t.mean_saturation, t.rest_mean_saturation)
                 for t in find_tails(values, threshold=threshold, min_length=min_length)]
        assert repr(found) == repr(reference_find_tails(values, threshold, min_length)), (trial, values, threshold,
                                                                                        min_length)


def test_visible_since_equals_the_epoch_by_epoch_reference():
    """Random histories in which the last tail shows from the start, from some epoch on, with gaps, or not at the
    end: the first epoch of the last unbroken run that shows it is the reference's."""
    rng = random.Random(7)
    for trial in range(300):
        n, epochs = rng.randrange(5, 30), rng.randrange(1, 25)
        history = [(epoch, _random_saturations(rng, n) if rng.random() < 0.5 else
                    [0.3] * (n - 4) + [rng.choice([0.01, 0.3])] * 4) for epoch in range(1, epochs + 1)]
        tails = find_tails(history[-1][1])
        probe = tails[-1] if tails else find_tails([0.3] * (n - 4) + [0.01] * 4)[-1]
        assert visible_since(history, probe) == reference_visible_since(history, probe), (trial, history)


def test_the_window_scan_checks_windows_in_bulk_not_one_python_call_each(monkeypatch):
    """121 layers (DenseNet121) with a tail: the Python-level window test runs only for the extension and merge
    steps, a few calls per layer, where checking every window one by one took thousands (O(n²) per tail)."""
    import phd_lab.analysis.tails as tails
    calls = []
    original = tails._qualifies
    monkeypatch.setattr(tails, "_qualifies", lambda *args: calls.append(args) or original(*args))
    rng = random.Random(0)
    values = [rng.uniform(0.25, 0.4) for _ in range(84)] + [rng.uniform(0.02, 0.08) for _ in range(37)]
    assert [(t.start, t.stop) for t in find_tails(values)] == [(s, e) for s, e, _, _ in reference_find_tails(values)]
    assert len(calls) <= 2 * len(values)


def test_visible_since_looks_back_only_until_an_epoch_that_does_not_show_the_tail(monkeypatch):
    """The epochs before the last one without the tail cannot change the answer: 200 epochs whose tail shows in the
    last 5 find tails in 6 of them, not in all 200."""
    import phd_lab.analysis.tails as tails
    seen = []
    original = tails.find_tails
    monkeypatch.setattr(tails, "find_tails", lambda values, **kwargs: seen.append(1) or original(values, **kwargs))
    even, tailed = [0.3] * 20, [0.3] * 16 + [0.02] * 4
    history = [(epoch, tailed if epoch > 195 else even) for epoch in range(1, 201)]
    tail = original(tailed)[-1]
    assert tails.visible_since(history, tail) == 196 == reference_visible_since(history, tail)
    assert len(seen) == 6



def test_the_rounding_margin_is_no_wider_than_rounding():
    """Only a rounding error makes two contrasts equal or a window reach the threshold. [0..2] and [0..3] have the
    same contrast, 0.3/1.2 and 0.5/2 (the longer one wins, and the extension would not add layer 3 to the shorter
    one); a layer 3 1e-9 higher (far more than the sums' rounding) makes the longer one the weaker contrast. A
    window 1e-9 short of "50% lower" is no tail, and a neighbour 1e-9 short of it is not added to a core."""
    eps = 1e-9
    assert spans([0.1, 0.1, 0.1, 0.2, 0.5, 0.5], threshold=0.7) == [(0, 3)]
    assert spans([0.1, 0.1, 0.1, 0.2 + eps, 0.5, 0.5], threshold=0.7) == [(0, 2)]
    short = [0.4, 0.4, 0.4, 0.2 + eps, 0.2 + eps, 0.2 + eps]
    assert spans(short) == [] and not qualifies(short, 3, 5)
    assert spans([0.1, 0.1, 0.1, 0.5, 1.0, 1.0]) == [(0, 3)]  # core [0..2], layer 3 exactly half the rest
    assert spans([0.1, 0.1, 0.1, 0.5 + eps, 1.0, 1.0]) == [(0, 2)]
