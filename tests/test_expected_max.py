"""Dodge et al.'s expected maximum over n trials: hand-computed values (ties, n beyond the trials), the
variance, and a brute-force enumeration of every draw."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from greendistil.report.expected_max import curves_cross, expected_max, max_weights


def test_hand_computed_values() -> None:
    curve = expected_max([3.0, 1.0, 2.0])
    # n=1: the mean; n=2: (1/9)*1 + (3/9)*2 + (5/9)*3 = 22/9; n=3: (1/27)*1 + (7/27)*2 + (19/27)*3 = 72/27
    assert curve.mean == pytest.approx([2.0, 22 / 9, 72 / 27])
    assert curve.std[0] == pytest.approx(np.sqrt(2 / 3))  # the population standard deviation of 1, 2, 3


def test_tied_scores_share_the_probability_of_their_value() -> None:
    # From {1, 1, 2}, two draws: the max is 2 unless both draws are a 1: P = 1 - (2/3)^2 = 5/9
    assert expected_max([1.0, 2.0, 1.0], max_n=2).mean[1] == pytest.approx(5 / 9 * 2 + 4 / 9 * 1)


def test_more_draws_than_trials() -> None:
    curve = expected_max([1.0, 2.0], max_n=3)
    assert curve.mean[2] == pytest.approx(7 / 8 * 2 + 1 / 8 * 1)  # P(max = 2) = 1 - (1/2)^3
    assert curve.std[0] == pytest.approx(0.5) and curve.std[2] == pytest.approx(np.sqrt(7 / 64))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_against_every_draw_enumerated(n: int) -> None:
    scores = [0.61, 0.70, 0.70, 0.55]
    maxima = np.array([max(draw) for draw in itertools.product(scores, repeat=n)])
    curve = expected_max(scores, max_n=4)
    assert curve.mean[n - 1] == pytest.approx(maxima.mean()) and curve.std[n - 1] == pytest.approx(maxima.std())


def test_weights_are_probabilities_and_bad_input_is_refused() -> None:
    assert max_weights(7, 5).sum() == pytest.approx(1.0) and (max_weights(7, 5) >= 0).all()
    with pytest.raises(ValueError, match="NaN"):
        expected_max([0.5, float("nan")])
    with pytest.raises(ValueError, match="no scores"):
        expected_max([])


def test_curves_cross_only_when_their_order_changes() -> None:
    assert curves_cross(np.array([0.5, 0.6, 0.7]), np.array([0.55, 0.6, 0.65]))
    assert not curves_cross(np.array([0.5, 0.6]), np.array([0.4, 0.6]))  # touching is not crossing
    assert not curves_cross(np.array([0.5]), np.array([0.5]))
