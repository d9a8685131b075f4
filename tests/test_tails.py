"""Tail detection on hand-made saturation sequences (thesis ch. 8.5 definition)."""

import random

import pytest

from phd_lab.analysis.tails import find_tails, qualifies


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
