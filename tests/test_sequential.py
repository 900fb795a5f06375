"""Sequential verdicts: seeds added until decided keep the error rate, measured by simulation.

Each simulated comparison is what `dlkit compare --split random --max-seeds 30`
does: 3 seeds, then 3 more per look while the verdict is open, each seed its own
random split (its own test sample), variants paired on it. The verdicts come from
`evaluate`, the rule the reports use.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlkit.comparison.expectations import Sample, evaluate, parse_expectation
from dlkit.comparison.sequential import ALPHA, Look, running_interval, spent

TEST_SIZE = 359  # the quickstart's random split of digits
SEED_SPREAD = 0.005  # the spread of a variant's test accuracy over seeds, beyond test sampling
BUDGET, FIRST, STEP = 30, 3, 3
EQUIVALENCE = 0.01


def simulate(difference: float, comparisons: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs `comparisons` until-decided comparisons of `a > b` whose true accuracies differ
    by `difference`; returns each one's status and seeds used."""
    rng = np.random.default_rng(seed)
    expectation = parse_expectation("a > b", ["a", "b"])
    statuses, used = [], []
    for _ in range(comparisons):
        truth = rng.uniform(0.90, 0.98)
        p_a = truth + difference / 2 + rng.normal(0, SEED_SPREAD, BUDGET)
        p_b = truth - difference / 2 + rng.normal(0, SEED_SPREAD, BUDGET)
        a = rng.binomial(TEST_SIZE, np.clip(p_a, 0, 1)) / TEST_SIZE
        b = rng.binomial(TEST_SIZE, np.clip(p_b, 0, 1)) / TEST_SIZE
        looks, n = [], FIRST
        while True:
            looks.append(Look(tuple(range(n)), BUDGET))
            samples = {
                "a": Sample({"test_accuracy": list(a[:n])}, seeds=list(range(n))),
                "b": Sample({"test_accuracy": list(b[:n])}, seeds=list(range(n))),
            }
            verdict = evaluate(
                expectation,
                samples,
                looks=looks,
                paired=True,
                equivalence=EQUIVALENCE,
                odds=False,
            )
            if verdict.decided or n >= BUDGET:
                break
            n = min(n + STEP, BUDGET)
        statuses.append(verdict.status)
        used.append(n)
    return np.array(statuses), np.array(used)


def one_seed_spread() -> float:
    """The standard deviation of one variant's test accuracy over seeds, as simulated."""
    p = 0.94
    return math.sqrt(SEED_SPREAD**2 + p * (1 - p) / TEST_SIZE)


@pytest.fixture(scope="module")
def identical():
    return simulate(0.0, 2000, seed=1)


def test_identical_variants_are_rarely_called_different(identical):
    statuses, used = identical
    false = np.isin(statuses, ["held", "contradicted"]).mean()
    print(
        f"\nA/A, 2000 comparisons: false decisions {false:.3f} at alpha {ALPHA}; "
        f"equivalent within ±{EQUIVALENCE} {np.mean(statuses == 'equivalent'):.3f}; "
        f"mean seeds {used.mean():.1f}"
    )
    assert false <= ALPHA
    # "no difference beyond ±0.01" is an answer too, and a third or so reach it in 30 seeds
    assert np.mean(statuses == "equivalent") > 0.2


def test_a_difference_of_one_seed_spread_is_found_and_seeds_stop_once_decided():
    statuses, used = simulate(one_seed_spread(), 1000, seed=2)
    power = np.mean(statuses == "held")
    print(
        f"\ndifference of one seed spread ({one_seed_spread():.4f}), 1000 comparisons: "
        f"held {power:.3f}, contradicted {np.mean(statuses == 'contradicted'):.3f}, "
        f"mean seeds {used.mean():.1f}"
    )
    assert np.mean(statuses == "contradicted") == 0
    assert power >= 0.5
    assert used.mean() < BUDGET  # it stops when decided, not at the budget


def test_a_budget_raised_later_spends_only_what_is_left():
    looks = [(3, 10, 0.0, 1.0, 2.0), (6, 10, 0.0, 1.0, 5.0), (9, 30, 0.0, 1.0, 8.0)]
    run = running_interval(looks, lambda low, high: False)
    # The third look, under the larger budget, would have spent alpha * 0.3^2 = 0.0045 by
    # now, less than the 0.018 already spent: it computes no interval, spends nothing.
    assert run.looks == 2 and run.level == pytest.approx(spent(0.6))
    assert spent(1.0) == ALPHA and spent(0.5) == pytest.approx(ALPHA / 4)


def test_the_running_interval_never_widens_and_one_look_is_the_ordinary_interval():
    rng = np.random.default_rng(3)
    d = rng.normal(0.01, 0.02, 12)
    looks = [
        (n, 12, d[:n].mean(), d[:n].std(ddof=1) / math.sqrt(n), n - 1.0) for n in (3, 6, 9, 12)
    ]
    widths = [
        running_interval(looks[:k], lambda low, high: False) for k in range(1, len(looks) + 1)
    ]
    spans = [w.high - w.low for w in widths if w.looks]
    assert all(later <= earlier for earlier, later in zip(spans, spans[1:]))
    from scipy import stats

    single = running_interval([(12, 12, *looks[-1][2:])], lambda low, high: False)
    reference = stats.ttest_1samp(d, 0).confidence_interval(0.95)
    assert (single.low, single.high) == pytest.approx((reference.low, reference.high))
