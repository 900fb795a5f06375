"""Expectations: the outcome a lesson predicts, stated in an experiment file, checked by reports.

Grammar, one expectation per string (`metric:` defaults to `test_accuracy`,
compared on the mean over seeds):

    [metric:] LABEL > LABEL|NUMBER [by MARGIN]     e.g.  relu > sigmoid by 0.30
    [metric:] LABEL < LABEL|NUMBER [by MARGIN]     e.g.  epochs_run: early-stop < no-stop
    [metric:] LABEL ~ LABEL [within TOLERANCE]     e.g.  maxout ~ relu within 0.01

`gap` (final training accuracy minus test accuracy) is a metric too, for
the overfitting lessons.

Each verdict is three-way: **held**, **contradicted** or **inconclusive**,
decided by a 95% interval around the estimated difference (see `interval`).
It counts two sources of noise: how the mean moves from seed to seed
(Welch's unequal-variance interval), and, for test accuracy, the sampling
error of a finite test set, from the per-example correctness of the runs,
paired because every variant is scored on the same examples (McNemar's idea,
averaged over seeds). The two are added, which errs on the side of
"inconclusive".
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

from dlkit.errors import DlkitError, closest

METRICS = (
    "test_accuracy",
    "test_loss",
    "best_val_accuracy",
    "train_accuracy",
    "gap",
    "epochs_run",
    "wall_time_s",
    "samples_per_second",
)
_PATTERN = re.compile(
    r"^\s*(?:(?P<metric>[a-z_]+)\s*:\s*)?(?P<left>.+?)\s+(?P<op>[<>~])\s+(?P<right>.+?)"
    r"(?:\s+(?P<word>by|within)\s+(?P<margin>[0-9.eE+-]+))?\s*$"
)


@dataclasses.dataclass(frozen=True)
class Expectation:
    text: str
    metric: str
    left: str
    op: str
    right: str | float
    margin: float


CONFIDENCE = 0.95
STATUSES = ("held", "contradicted", "inconclusive", "unchecked")


@dataclasses.dataclass(frozen=True)
class Sample:
    """What one variant's finished runs give the verdicts.

    Attributes:
        values: For each metric, its value in each finished seed.
        correct: For each finished seed, which test examples it classified
            correctly (same order in every variant); empty when not logged.
        diverged: Every run of the variant diverged (NaN loss).
    """

    values: dict[str, list[float]]
    correct: list[np.ndarray] = dataclasses.field(default_factory=list)
    diverged: bool = False


@dataclasses.dataclass(frozen=True)
class Verdict:
    """An expectation's verdict on these runs, with the numbers behind it.

    Attributes:
        expectation: The expectation's text.
        status: `"held"`, `"contradicted"`, `"inconclusive"` or `"unchecked"`
            (a variant it names has no finished run).
        detail: The numbers, in words.
        difference: Estimated left minus right (or minus the threshold).
        low: Lower end of the 95% interval of the difference.
        high: Upper end of the 95% interval.
        seeds_needed: When inconclusive, about how many seeds per variant
            would likely decide it; `None` when more seeds would not (or no
            spread is known yet).
        p_better: For `a > b` (or `a < b`), the probability that a run of
            `a` beats one of `b`: the share of seed pairs where it does, a tie
            counting half (Bouthillier et al. 2021); NaN otherwise.
        p_low: Lower end of its 95% bootstrap interval (seeds resampled).
        p_high: Upper end of that interval.
    """

    expectation: str
    status: str
    detail: str
    difference: float = math.nan
    low: float = math.nan
    high: float = math.nan
    seeds_needed: int | None = None
    p_better: float = math.nan
    p_low: float = math.nan
    p_high: float = math.nan

    @property
    def held(self) -> bool | None:
        """True when held, False when contradicted, None otherwise."""
        return {"held": True, "contradicted": False}.get(self.status)


def parse_expectation(text: str, labels: Sequence[str]) -> Expectation:
    """Parses and checks an expectation against the experiment's variant labels."""
    match = _PATTERN.match(text)
    if not match:
        raise DlkitError(
            f"cannot read expectation {text!r}. Write e.g. 'relu > sigmoid by 0.3', "
            "'epochs_run: early-stop < plain' or 'maxout ~ relu within 0.01'."
        )
    metric = match["metric"] or "test_accuracy"
    if metric not in METRICS:
        raise DlkitError(
            f"unknown metric {metric!r} in {text!r}.{closest(metric, METRICS)} "
            f"Expected one of: {', '.join(METRICS)}."
        )
    op, word = match["op"], match["word"]
    if word and (word == "within") != (op == "~"):
        raise DlkitError(f"in {text!r}: use 'by' with > and <, 'within' with ~.")
    left = match["left"].strip()
    right: str | float = match["right"].strip()
    try:
        right = float(right)
    except ValueError:
        pass
    if isinstance(right, float) and not math.isfinite(right):
        raise DlkitError(f"in {text!r}: the threshold must be a finite number.")
    for label in (left, right):
        if isinstance(label, str) and label not in labels:
            raise DlkitError(
                f"{text!r} names {label!r}, which is not a variant.{closest(label, labels)} "
                f"Variants: {', '.join(labels)}."
            )
    try:
        margin = float(match["margin"]) if match["margin"] else 0.0
    except ValueError:
        raise DlkitError(f"in {text!r}: {match['margin']!r} is not a number.") from None
    if not (math.isfinite(margin) and margin >= 0):
        raise DlkitError(
            f"in {text!r}: the margin must be a finite number of at least 0. Received: {margin:g}"
        )
    return Expectation(text, metric, left, op, right, margin)


def evaluate(expectation: Expectation, samples: dict[str, Sample]) -> Verdict:
    """Checks an expectation against each variant's per-seed results.

    Args:
        expectation: From `parse_expectation`.
        samples: For each variant label, its `Sample`.

    Returns:
        A `Verdict`: held when the whole 95% interval of the difference lies
        on the expected side of the margin, contradicted when it lies wholly
        on the other side, inconclusive when it straddles it.
    """
    e = expectation
    diverged = [
        label
        for label in (e.left, e.right)
        if isinstance(label, str) and samples.get(label, Sample({})).diverged
    ]
    if diverged:
        return _with_divergence(e, diverged)
    left = samples.get(e.left, Sample({}))
    right = e.right if isinstance(e.right, float) else samples.get(e.right, Sample({}))
    name = e.right if isinstance(e.right, str) else "the threshold"
    a = _finite(left.values.get(e.metric, []))
    b = [e.right] if isinstance(right, float) else _finite(right.values.get(e.metric, []))
    if not a or not b:
        return Verdict(e.text, "unchecked", f"cannot check: no finished run for {e.left} or {name}")
    correct_b = [] if isinstance(right, float) else right.correct
    # The test set's sampling error needs the per-example results of both sides.
    paired = (
        e.metric == "test_accuracy"
        and bool(left.correct)
        and (isinstance(right, float) or bool(correct_b))
        and len({len(c) for c in [*left.correct, *correct_b]}) == 1
    )
    difference, low, high, parts = interval(
        a,
        None if isinstance(right, float) else b,
        threshold=right if isinstance(right, float) else None,
        correct_a=left.correct if paired else None,
        correct_b=correct_b if paired else None,
    )
    status, distance = _decide(e, difference, low, high)
    seeds = _seeds_needed(status, distance, parts, min(len(a), len(b)))
    right_text = f"{np.mean(b):.4g}"
    detail = (
        f"{e.metric}: {e.left} {np.mean(a):.4g} vs {name} {right_text}, difference "
        f"{difference:+.4g}, 95% interval [{low:+.4g}, {high:+.4g}] ({_need(e)})"
    )
    if not math.isfinite(low):
        detail += "; one seed and no per-example results: no interval, so no verdict"
    elif parts["seeds"] is None:
        detail += "; one seed: the interval covers only the test set's sampling error"
    p = (math.nan,) * 3
    if e.op != "~" and not isinstance(right, float) and len(a) > 1 and len(b) > 1:
        p = probability_better(a, b) if e.op == ">" else probability_better(b, a)
        word = "beats" if e.op == ">" else "is below"
        detail += (
            f"; P({e.left} {word} {e.right}) over seed pairs {p[0]:.2f} [{p[1]:.2f}, {p[2]:.2f}]"
        )
    if status == "inconclusive" and math.isfinite(low):
        detail += (
            f"; about {seeds} seeds per variant would likely decide it"
            if seeds
            else "; more seeds alone would not decide it"
            if parts["seeds"] is not None
            else "; run at least 3 seeds to see the spread"
        )
    return Verdict(e.text, status, detail, difference, low, high, seeds, *p)


def probability_better(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 2000
) -> tuple[float, float, float]:
    """Returns P(a run of `a` beats one of `b`) and its 95% bootstrap interval.

    The estimate is the share of (a, b) seed pairs where `a` is higher, a tie
    counting half. The interval resamples each side's seeds with replacement,
    from a fixed generator, so a report rebuilt from the same runs says the same.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)

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
    half = _quantile(df) * math.sqrt(total)
    return difference, difference - half, difference + half, parts


def _quantile(df: float) -> float:
    # Student's t quantile; scipy.special's, since importing scipy.stats costs a second or more.
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.5 + CONFIDENCE / 2)) if math.isfinite(df) else 1.959963984540054


def _decide(e: Expectation, difference: float, low: float, high: float) -> tuple[str, float]:
    """Returns the status and how far the estimate lies from the boundary that decides it."""
    if not math.isfinite(low):
        return "inconclusive", math.nan
    if e.op == ">":
        boundary = e.margin
        # A strict claim is false at its boundary: an interval that ends there
        # (two variants both at 100% training accuracy, say) contradicts it.
        status = "held" if low > boundary else "contradicted" if high <= boundary else None
    elif e.op == "<":
        boundary = -e.margin
        status = "held" if high < boundary else "contradicted" if low >= boundary else None
    else:
        boundary = e.margin
        if -e.margin <= low and high <= e.margin:
            status = "held"
        elif low > e.margin or high < -e.margin:
            status = "contradicted"
        else:
            status = None
        return status or "inconclusive", abs(abs(difference) - boundary)
    return status or "inconclusive", abs(difference - boundary)


def _seeds_needed(status: str, distance: float, parts: dict, seeds: int) -> int | None:
    # The seed part shrinks as 1/n; the test set's part does not. Find the n
    # at which the interval's half-width would fall inside the distance.
    if status != "inconclusive" or parts["seeds"] is None or not math.isfinite(distance):
        return None
    room = (distance / 1.96) ** 2 - (parts["test"] or 0.0)
    if room <= 0 or parts["seeds"] <= 0:
        return None
    needed = math.ceil(seeds * parts["seeds"] / room)
    return max(needed, seeds + 1)


def _need(e: Expectation) -> str:
    if e.op == ">":
        return f"held when it lies above {e.margin:g}"
    if e.op == "<":
        return f"held when it lies below {-e.margin:g}"
    return f"held when it lies within ±{e.margin:g}"


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _with_divergence(e: Expectation, diverged: list[str]) -> Verdict:
    detail = f"{' and '.join(diverged)} diverged (NaN loss) in every seed"
    if (
        e.metric not in ("test_accuracy", "best_val_accuracy", "train_accuracy")
        or len(diverged) == 2
    ):
        return Verdict(e.text, "unchecked", f"cannot check: {detail}")
    if e.op == "~":
        return Verdict(e.text, "contradicted", f"{detail}, so it is not comparable")
    worse = e.right if e.op == ">" else e.left
    held = diverged == [worse]
    return Verdict(e.text, "held" if held else "contradicted", f"{detail}: it did not learn at all")
