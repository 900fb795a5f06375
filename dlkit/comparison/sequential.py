"""Sequential verdicts: intervals that stay valid when seeds are added until a verdict decides.

A comparison that adds seeds while an expectation is undecided, and stops once
it decides, looks at its data many times. An ordinary 95% interval at every
look would decide a false claim far more often than 5% of the time (optional
stopping). dlkit uses repeated confidence intervals instead (Jennison &
Turnbull 1989), the error rate allotted to the looks by the power shape
`alpha * t**3` (Kim & DeMets 1987), where `t` is the share of the seed budget
used so far:

- at each look, the interval is an ordinary t interval at the level not yet
  spent, `alpha * t_k**3 - alpha * t_(k-1)**3`;
- the verdict reads the intersection of every look's interval so far. By the
  union bound it holds the true difference at every look at once with
  probability at least `1 - alpha`, whatever the looks, whenever one stops;
- a budget raised after the fact (a rerun with a larger `max_seeds`) keeps
  that guarantee: the looks already made keep what they spent, and what is
  left is allotted over the seeds the new budget adds, by the same shape, so
  every later look computes an interval and no seed trains for nothing.

The union bound ignores how correlated the looks are, so the rule is
conservative: its measured false-decision rate (tests/test_sequential.py,
docs/comparisons.md) is well under `alpha`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

ALPHA = 0.05
# alpha * t**3: little spent at a handful of seeds, most near the budget. Calibrated by
# simulation (tests/test_sequential.py): of the power shapes 1 to 4, 3 is the least that finds
# a gap of one seed spread at least 87% of the time; a steeper one finds a little more, but
# decides later, so it costs more seeds.
SPENDING_POWER = 3.0


@dataclasses.dataclass(frozen=True)
class Look:
    """One look at a comparison's results: the seeds trained so far and the budget then.

    Attributes:
        seeds: The seeds every variant had been planned with at this look.
        budget: The most seeds per variant the comparison could then reach.
    """

    seeds: tuple[int, ...]
    budget: int

    @classmethod
    def of(cls, raw: dict) -> Look:
        return cls(tuple(int(s) for s in raw["seeds"]), int(raw["budget"]))


def spent(used: float, alpha: float = ALPHA) -> float:
    """The error rate spent once a share `used` (0 to 1) of the seed budget is used."""
    return alpha * min(max(used, 0.0), 1.0) ** SPENDING_POWER


@dataclasses.dataclass(frozen=True)
class Running:
    """What the looks at one expectation found.

    Attributes:
        low: Lower end of the running interval (the intersection of the looks').
        high: Upper end.
        looks: How many looks computed an interval.
        level: The error rate spent on those looks together.
        decided_at: The 1-based look at which the interval first decided, or `None`.
    """

    low: float
    high: float
    looks: int
    level: float
    decided_at: int | None


def running_interval(
    intervals: Sequence[tuple[int, int, float, float, float]],
    decides: Callable[[float, float], bool],
    alpha: float = ALPHA,
) -> Running:
    """Intersects the looks' intervals, each at the level its look may spend.

    Args:
        intervals: Per look, `(n, budget, center, scale, df)`: the pairs (or seeds)
            it saw, the seed budget then, and the t interval's center, standard error and
            degrees of freedom (`df` infinite for a normal quantile). A look with no
            interval (one seed) has a NaN scale and spends nothing.
        decides: Tells whether an interval `(low, high)` decides; the looks stop there.
        alpha: The error rate for all looks together. Defaults to `0.05`.

    Returns:
        The running interval, how many looks it took, and the level spent.
    """
    low, high, used, looks = -math.inf, math.inf, 0.0, 0
    start, kept, last, before = 0, 0.0, None, 0  # where the current budget's schedule began
    for k, (n, budget, center, scale, df) in enumerate(intervals, 1):
        if last is not None and budget != last:  # a raised budget: what is left, from here
            start, kept = before, used
        last, before = budget, n
        share = (n - start) / (budget - start) if budget > start else 1.0
        level = kept + spent(share, alpha - kept) - used if n else 0.0
        if not (level > 0 and math.isfinite(scale)):
            continue
        used += level
        looks += 1
        half = quantile(1 - level / 2, df) * scale
        low, high = max(low, center - half), min(high, center + half)
        if decides(low, high):
            return Running(low, high, looks, used, k)
    if not looks:
        return Running(math.nan, math.nan, 0, 0.0, None)
    return Running(low, high, looks, used, None)


def quantile(p: float, df: float) -> float:
    """Student's t quantile (normal when `df` is infinite); scipy.special's, since importing
    scipy.stats costs a second or more."""
    from scipy.special import ndtri, stdtrit

    return float(stdtrit(df, p)) if math.isfinite(df) else float(ndtri(p))


BETTING_C = 0.75  # the largest bet, as a share of what a wager at `m` may lose (the paper's c)
_GRID = 4001  # candidate means on [0, 1]: a resolution of 0.0005 of the bound


def betting_interval(
    differences: Sequence[float],
    looks_at: Sequence[int],
    decides: Callable[[float, float], bool],
    alpha: float = ALPHA,
    bound: float = 1.0,
) -> Running:
    """A confidence sequence for the mean of differences bounded in [-`bound`, `bound`], by
    betting (Waudby-Smith & Ramdas 2023, the hedged capital process with predictable
    plug-in bets). Valid under any looks and any distribution of the differences on that
    range: no normality, so a rare collapse cannot hide in the tails.

    Each candidate mean `m` is bet against, one difference at a time, up and down; the
    sequence keeps the candidates whose capital has not reached `1 / alpha` (Ville's
    inequality), intersected over every difference seen.

    Args:
        differences: The per-seed differences, in the order the seeds were added.
        looks_at: How many of them each look had seen.
        decides: As for `running_interval`; the looks stop where it first holds.
        alpha: The error rate over all looks. Defaults to `0.05`.
        bound: The differences' range. Defaults to `1.0` (accuracies).
    """
    import numpy as np

    y = (np.clip(np.asarray(differences, dtype=float), -bound, bound) + bound) / (2 * bound)
    m = np.linspace(0.0, 1.0, _GRID)[1:-1]
    up, down = np.zeros_like(m), np.zeros_like(m)  # log capital of each side's bets
    inside = np.ones_like(m, dtype=bool)
    total, squares, mean, variance = 0.0, 0.0, 0.5, 0.25  # the plug-in's prior
    seen, looks, low, high = 0, 0, math.nan, math.nan
    for k, n in enumerate(looks_at, 1):
        for t in range(seen + 1, min(n, len(y)) + 1):
            bet = math.sqrt(2 * math.log(2 / alpha) / (variance * t * math.log(t + 1)))
            up += np.log1p(np.minimum(bet, BETTING_C / m) * (y[t - 1] - m))
            down += np.log1p(-np.minimum(bet, BETTING_C / (1 - m)) * (y[t - 1] - m))
            inside &= np.logaddexp(up, down) - math.log(2) < math.log(1 / alpha)
            total += y[t - 1]
            mean = (0.5 + total) / (t + 1)
            squares += (y[t - 1] - mean) ** 2
            variance = (0.25 + squares) / (t + 1)
            seen = t
        if not seen:
            continue
        looks += 1
        kept = m[inside] if inside.any() else np.array([float(np.mean(y[:seen]))])
        low, high = (float(kept.min()) * 2 - 1) * bound, (float(kept.max()) * 2 - 1) * bound
        if decides(low, high):
            return Running(low, high, looks, alpha, k)
    return Running(low, high, looks, alpha if looks else 0.0, None)
