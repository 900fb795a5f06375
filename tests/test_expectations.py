"""Verdicts: held, contradicted or inconclusive, on synthetic numbers whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dlkit import DlkitError
from dlkit.comparison.expectations import Sample, evaluate, parse_expectation
from dlkit.comparison.intervals import interval


def verdict(text: str, **samples: Sample):
    return evaluate(parse_expectation(text, list(samples)), samples)


def seeds(*accuracies: float, **metrics: list[float]) -> Sample:
    return Sample(values={"test_accuracy": list(accuracies), **metrics})


CLEAR = {"a": seeds(0.90, 0.91, 0.905), "b": seeds(0.80, 0.81, 0.805)}
NOISY = {"a": seeds(0.90, 0.80, 0.85), "b": seeds(0.86, 0.84, 0.83)}


@pytest.mark.parametrize(
    "text, status",
    [
        ("a > b", "held"),  # a clear win
        ("b > a", "contradicted"),  # a clear loss
        ("b < a", "held"),
        ("a > b by 0.05", "held"),
        ("a > b by 0.2", "contradicted"),  # wins, but clearly by less than claimed
        ("a ~ b within 0.01", "contradicted"),
        ("a ~ b within 0.5", "held"),
        ("a > 0.5", "held"),
        ("a > 0.95", "contradicted"),
    ],
)
def test_clear_differences_are_decided(text, status):
    result = verdict(text, **CLEAR)
    assert result.status == status, result.detail
    assert result.low <= result.difference <= result.high
    assert "95% interval" in result.detail


def test_a_difference_inside_the_noise_is_inconclusive_and_says_how_many_seeds_would_decide():
    result = verdict("a > b", **NOISY)
    assert result.status == "inconclusive" and result.held is None
    assert result.low < 0 < result.high
    assert result.seeds_needed is not None and result.seeds_needed > 3
    assert f"about {result.seeds_needed} seeds per variant" in result.detail


def test_the_seed_interval_is_welchs():
    a, b = [0.90, 0.80, 0.85, 0.87], [0.86, 0.84, 0.83]
    difference, low, high, parts = interval(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((reference.low, reference.high))
    assert parts["test"] is None and difference == pytest.approx(np.mean(a) - np.mean(b))


def correctness(rate: float, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < rate


def test_one_seed_is_judged_on_the_test_sets_sampling_error_alone():
    n = 10_000
    a = correctness(0.95, n, 1)
    b = a & correctness(0.93, n, 2)  # b gets right only what a gets right, and fewer
    win = verdict(
        "a > b",
        a=Sample({"test_accuracy": [a.mean()]}, [a]),
        b=Sample({"test_accuracy": [b.mean()]}, [b]),
    )
    assert win.status == "held" and "one seed" in win.detail
    # paired: the interval's width comes from the examples the two disagree on
    disagree = np.mean(a != b)
    half = (win.high - win.low) / 2
    assert half == pytest.approx(
        1.96 * math.sqrt(disagree - win.difference**2) / math.sqrt(n), 0.01
    )

    close = correctness(0.9, 1000, 3)
    flip = close.copy()
    flip[:2] = ~flip[:2]
    tie = verdict(
        "a > b",
        a=Sample({"test_accuracy": [close.mean()]}, [close]),
        b=Sample({"test_accuracy": [flip.mean()]}, [flip]),
    )
    assert tie.status == "inconclusive" and "run at least 3 seeds" in tie.detail


def test_one_seed_without_per_example_results_gives_no_verdict():
    result = verdict("a > b", a=seeds(0.9), b=seeds(0.8))
    assert result.status == "inconclusive" and "no interval" in result.detail


def test_more_seeds_cannot_beat_the_test_sets_own_noise():
    n = 200
    a, b = correctness(0.9, n, 4), correctness(0.9, n, 5)
    noisy_test = verdict(
        "a > b",
        a=Sample({"test_accuracy": [0.90, 0.91]}, [a, a]),
        b=Sample({"test_accuracy": [0.895, 0.905]}, [b, b]),
    )
    assert noisy_test.status == "inconclusive"
    assert noisy_test.seeds_needed is None and "more seeds alone" in noisy_test.detail


def test_a_strict_claim_is_contradicted_when_both_sides_are_exactly_equal():
    # both nets fit every training image: "dropout lowers the training fit" is false,
    # with no noise at all, not undecided
    full = seeds(0.9, 0.91, train_accuracy=[1.0, 1.0])
    result = verdict("train_accuracy: a < b", a=full, b=full)
    assert (result.status, result.low, result.high) == ("contradicted", 0.0, 0.0)
    assert verdict("train_accuracy: a > b", a=full, b=full).status == "contradicted"
    assert verdict("train_accuracy: a ~ b within 0.01", a=full, b=full).status == "held"


def test_other_metrics_use_the_seed_spread():
    early = seeds(0.9, 0.9, 0.9, epochs_run=[5, 6, 5])
    late = seeds(0.9, 0.9, 0.9, epochs_run=[9, 9, 10])
    assert verdict("epochs_run: a < b", a=early, b=late).status == "held"


@pytest.mark.parametrize(
    "text, status",
    [
        ("a > b", "held"),
        ("b > a", "contradicted"),
        ("b < a", "held"),
        ("a ~ b within 0.5", "contradicted"),
        ("test_loss: a < b", "unchecked"),
    ],
)
def test_a_variant_that_diverged_in_every_seed_did_not_learn(text, status):
    a = Sample({"test_accuracy": [0.9], "test_loss": [0.3]})
    result = verdict(text, a=a, b=Sample({}, diverged=True))
    assert result.status == status and "diverged" in result.detail


def test_a_variant_without_results_leaves_the_expectation_unchecked():
    result = verdict("a > b", a=seeds(0.9, 0.91), b=Sample({}))
    assert result.status == "unchecked" and result.held is None


def test_margins_and_thresholds_must_be_finite_and_not_negative():
    for text in ("a > b by -0.1", "a > nan", "a ~ b within inf"):
        with pytest.raises(DlkitError):
            parse_expectation(text, ["a", "b"])


def test_probability_of_outperforming_counts_seed_pairs_with_a_bootstrap_interval():
    from dlkit.comparison.intervals import probability_better

    assert probability_better([3.0, 4.0], [1.0, 2.0]) == (1.0, 1.0, 1.0)
    p, low, high = probability_better([0.9, 0.91, 0.92], [0.8, 0.85, 0.95])
    assert p == pytest.approx(6 / 9) and 0 <= low <= p <= high <= 1
    assert probability_better([1.0, 2.0], [2.0, 1.0])[0] == 0.5  # a tie counts half
    # seeded: a report rebuilt from the same runs says the same
    assert probability_better([0.9, 0.8, 0.7], [0.85, 0.75]) == probability_better(
        [0.9, 0.8, 0.7], [0.85, 0.75]
    )


def test_a_verdict_between_variants_reports_the_probability_of_outperforming():
    samples = {
        "a": Sample({"test_accuracy": [0.9, 0.92, 0.91]}),
        "b": Sample({"test_accuracy": [0.8, 0.82, 0.81]}),
    }
    verdict = evaluate(parse_expectation("a > b", ["a", "b"]), samples)
    assert (
        verdict.p_better == 1.0
        and "P(a beats b) over seed pairs 1.00 [1.00, 1.00]" in verdict.detail
    )
    below = evaluate(parse_expectation("b < a", ["a", "b"]), samples)
    assert below.p_better == 1.0 and "P(b is below a)" in below.detail
    alike = evaluate(parse_expectation("a ~ b within 0.5", ["a", "b"]), samples)
    assert math.isnan(alike.p_better) and "P(" not in alike.detail
