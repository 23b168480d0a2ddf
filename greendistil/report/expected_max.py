"""Expected validation performance against budget (Dodge et al., EMNLP 2019, "Show Your Work").

Given N trials' dev scores, the best score a researcher would expect from n trials drawn from the same
search (with replacement) is E[max of n] = sum_i v(i) * ((i/N)^n - ((i-1)/N)^n), v(1) <= ... <= v(N) the
sorted scores: the weight of v(i) is the probability that the largest of n draws is the i-th order
statistic. The same weights on v(i)^2 give E[max^2], hence the variance. Tied scores need no special
case: their weights add up to the probability of drawing that value as the maximum.

The curve is drawn against the number of trials n and, for a cost axis, against n times the mean cost of
one trial (the expected cost of n trials drawn at random).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_TRIALS = 5  # fewer trials than this: the curve is not drawn (the estimate is mostly the sample's noise)


@dataclass(frozen=True, kw_only=True)
class ExpectedMax:
    """E[max of n trials] and its standard deviation, for n = 1..len(n_trials)."""

    n_trials: np.ndarray  # (K,) int
    mean: np.ndarray  # (K,)
    std: np.ndarray  # (K,)


def max_weights(num_trials: int, n: int) -> np.ndarray:
    """(N,) probabilities that the largest of `n` draws (with replacement) from N sorted trials is trial i."""
    if num_trials < 1 or n < 1:
        raise ValueError(f"max_weights: need at least one trial and one draw (got N={num_trials}, n={n})")
    ranks = np.arange(1, num_trials + 1, dtype=np.float64)
    return (ranks / num_trials) ** n - ((ranks - 1) / num_trials) ** n


def expected_max(scores: Sequence[float], max_n: int | None = None) -> ExpectedMax:
    """E[max of n] and its standard deviation for n = 1..`max_n` (default: the number of scores; n may exceed
    it: draws are with replacement). NaN scores are refused: a failed trial has no score to draw."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        raise ValueError("expected_max: no scores")
    if np.isnan(values).any():
        raise ValueError("expected_max: a score is NaN; leave out the trials without a score")
    ns = np.arange(1, (max_n or values.size) + 1)
    weights = np.stack([max_weights(values.size, int(n)) for n in ns])  # (K, N)
    mean = weights @ values
    variance = weights @ values ** 2 - mean ** 2
    # E[max^2] - E[max]^2 cancels: rounding leaves ~1e-16 (either sign) where every score is the same
    variance[variance < 1e-12 * np.maximum(1.0, mean ** 2)] = 0.0
    return ExpectedMax(n_trials=ns, mean=mean, std=np.sqrt(variance))


def curves_cross(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two curves sampled at the same points change order (one is above, then below the other)."""
    difference = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    signs = np.sign(difference[difference != 0])
    return bool(signs.size and (signs != signs[0]).any())
