"""Intervals of one look: a difference of means with its seed and test-set parts, and the odds.

`interval` is the fixed-split look: Welch's interval over the seeds plus the test
set's sampling error from per-example results; `probability_better` is P(a run of
one beats one of the other), by bootstrap over seeds (Jeffreys' interval when seeds pair).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dlkit.comparison.sequential import quantile

CONFIDENCE = 0.95


def probability_better(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, paired: bool = False
) -> tuple[float, float, float]:
    """Returns P(a run of `a` beats one of `b`) and its 95% interval.

    The estimate is the share of (a, b) seed pairs where `a` is higher, a tie
    counting half. The interval resamples each side's seeds with replacement,
    from a fixed generator, so a report rebuilt from the same runs says the same.
    With `paired` (each seed its own split, `a[i]` and `b[i]` on the same one) a
    run is compared only with the other's on its split: the seeds are independent
    trials, and the interval is Jeffreys' for a binomial share, which a bootstrap
    of six wins in six would give as [1.00, 1.00].
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        from scipy.special import betaincinv

        wins = (a > b) + 0.5 * (a == b)
        k, n = float(wins.sum()), len(wins)
        low = 0.0 if k == 0 else float(betaincinv(k + 0.5, n - k + 0.5, (1 - CONFIDENCE) / 2))
        high = 1.0 if k == n else float(betaincinv(k + 0.5, n - k + 0.5, (1 + CONFIDENCE) / 2))
        return k / n, low, high

    def share(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # x: [..., n], y: [..., m] -> the share over all n x m pairs, per leading index
        diff = x[..., :, None] - y[..., None, :]
        return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(-2, -1))

    rng = np.random.default_rng(0)
    boot = share(
        a[rng.integers(0, len(a), (resamples, len(a)))],
        b[rng.integers(0, len(b), (resamples, len(b)))],
    )
    low, high = np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(share(a, b)), float(low), float(high)


def interval(
    a: Sequence[float],
    b: Sequence[float] | None,
    *,
    threshold: float | None = None,
    correct_a: Sequence[np.ndarray] | None = None,
    correct_b: Sequence[np.ndarray] | None = None,
) -> tuple[float, float, float, dict[str, float | None]]:
    """Returns the difference of means, its 95% interval, and the variance parts behind it.

    Args:
        a: The left variant's value in each seed.
        b: The right variant's value in each seed, or `None` against `threshold`.
        threshold: The fixed number compared against when `b` is `None`.
        correct_a: Per seed, the left variant's per-example test correctness.
        correct_b: The same for the right variant (paired example by example).

    Returns:
        `(difference, low, high, parts)` where `parts` holds the variance of
        the difference from seeds (`"seeds"`, Welch; `None` with one seed on a
        side that has one) and from the test set (`"test"`; `None` without
        per-example results), and the degrees of freedom (`"df"`).
    """
    a = np.asarray(a, dtype=float)
    b_values = np.asarray(b, dtype=float) if b is not None else None
    difference = float(a.mean() - (b_values.mean() if b_values is not None else threshold))
    sides = [a] if b_values is None else [a, b_values]
    seeds_var, df = None, math.inf
    if all(len(side) > 1 for side in sides):
        terms = [side.var(ddof=1) / len(side) for side in sides]
        seeds_var = float(sum(terms))
        denominator = sum(t**2 / (len(side) - 1) for t, side in zip(terms, sides))
        df = seeds_var**2 / denominator if denominator > 0 else math.inf
    test_var = None
    if correct_a:
        per_example = np.mean([np.asarray(c, dtype=float) for c in correct_a], axis=0)
        if correct_b:
            per_example = per_example - np.mean(
                [np.asarray(c, dtype=float) for c in correct_b], axis=0
            )
        test_var = float(per_example.var(ddof=1) / len(per_example))
    parts = {"seeds": seeds_var, "test": test_var, "df": df}
    if seeds_var is None and test_var is None:
        return difference, math.nan, math.nan, parts
    total = (seeds_var or 0.0) + (test_var or 0.0)
    half = quantile(0.5 + CONFIDENCE / 2, df) * math.sqrt(total)
    return difference, difference - half, difference + half, parts
