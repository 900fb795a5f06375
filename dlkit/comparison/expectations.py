"""Expectations: the outcome a lesson predicts, stated in an experiment file, checked by reports.

Grammar, one expectation per string (`metric:` defaults to `test_accuracy`,
compared on the mean over seeds):

    [metric:] LABEL > LABEL|NUMBER [by MARGIN]     e.g.  relu > sigmoid by 0.30
    [metric:] LABEL < LABEL|NUMBER [by MARGIN]     e.g.  epochs_run: early-stop < no-stop
    [metric:] LABEL ~ LABEL [within TOLERANCE]     e.g.  maxout ~ relu within 0.01

`gap` (final training accuracy minus test accuracy) is a metric too, for
the overfitting lessons.

Each verdict is three-way: **held**, **contradicted** or **inconclusive**,
decided by a 95% interval around the estimated difference (see
`dlkit.comparison.intervals`).
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
from collections.abc import Callable, Sequence

import numpy as np

from dlkit.comparison.intervals import CONFIDENCE, interval, probability_better
from dlkit.comparison.sequential import (
    ALPHA,
    Look,
    betting_interval,
    running_interval,
)
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


STATUSES = ("held", "contradicted", "equivalent", "inconclusive", "unchecked")
# Metrics on the accuracy scale, where an equivalence margin such as 0.01 means one point.
ACCURACY_SCALE = ("test_accuracy", "best_val_accuracy", "train_accuracy", "gap")


@dataclasses.dataclass(frozen=True)
class Sample:
    """What one variant's finished runs give the verdicts.

    Attributes:
        values: For each metric, its value in each finished seed.
        correct: For each finished seed, which test examples it classified
            correctly (same order in every variant); empty when not logged.
        diverged: How many of its seeds diverged (NaN loss): they are among `values`,
            at `chance` in the accuracy-scale metrics.
        seeds: The seed of each counted run, in the order of `values` and
            `correct`. Defaults to `None`: 0, 1, 2, ...
        chance: The accuracy a diverged seed counts at (1 / classes).
    """

    values: dict[str, list[float]]
    correct: list[np.ndarray] = dataclasses.field(default_factory=list)
    diverged: int = 0
    seeds: list[int] | None = None
    chance: float = 0.0

    @property
    def every_seed_diverged(self) -> bool:
        counted = self.seeds if self.seeds is not None else self.values.get("test_accuracy", [])
        return self.diverged > 0 and self.diverged >= len(counted)

    def by_seed(self, metric: str) -> dict[int, float]:
        """A metric's finite values keyed by seed."""
        values = self.values.get(metric, [])
        seeds = self.seeds if self.seeds is not None else range(len(values))
        return {
            int(s): float(v) for s, v in zip(seeds, values) if v is not None and math.isfinite(v)
        }

    def correct_at(self, seeds: Sequence[int]) -> list[np.ndarray]:
        """The per-example results of these seeds (those that have them)."""
        own = self.seeds if self.seeds is not None else range(len(self.correct))
        by_seed = dict(zip(own, self.correct))
        return [by_seed[s] for s in seeds if s in by_seed]


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
        seeds: Seeds (pairs, when paired) behind the final interval.
        looks: Looks that computed an interval (see `dlkit.comparison.sequential`).
        decided_at: The 1-based look that decided it, or `None`.
        margin: For an undecided `>` or `<`: the smallest δ with the interval
            inside ±δ ("no difference beyond ±δ"); NaN otherwise.
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
    seeds: int = 0
    looks: int = 0
    decided_at: int | None = None
    margin: float = math.nan

    @property
    def decided(self) -> bool:
        """Held, contradicted or equivalent: more seeds are not needed."""
        return self.status in ("held", "contradicted", "equivalent")

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


def evaluate(
    expectation: Expectation,
    samples: dict[str, Sample],
    *,
    looks: Sequence[Look] | None = None,
    paired: bool = False,
    equivalence: float | None = None,
    odds: bool = True,
    alpha: float = ALPHA,
    interval: str = "t",
) -> Verdict:
    """Checks an expectation against each variant's per-seed results.

    Args:
        expectation: From `parse_expectation`.
        samples: For each variant label, its `Sample`.
        looks: The looks a comparison that adds seeds made (see
            `dlkit.comparison.sequential`). Defaults to `None`: one look at
            every seed, an ordinary 95% interval.
        paired: Every seed drew its own data split, shared by the variants:
            the interval is a paired t interval on the per-seed differences,
            which carry the split, initialization, order and test-sampling
            variation together. Otherwise (one fixed test set) it is Welch's
            over the seeds plus the test set's sampling error. Defaults to `False`.
        equivalence: For `>` and `<` on an accuracy-scale metric: an interval
            inside ±`equivalence` decides "equivalent". Defaults to `None`.
        odds: Estimate P(a run of one beats one of the other) by bootstrap, for
            the detail. Defaults to `True`.
        alpha: The error rate of this expectation, over all its looks (a comparison
            of several splits its own among them). Defaults to `0.05`.
        interval: `"t"`: repeated t intervals (`dlkit.comparison.sequential`);
            `"betting"`: a confidence sequence by betting, for paired differences of an
            accuracy-scale metric (others keep the t interval, and say so). Defaults to `"t"`.

    Returns:
        A `Verdict`: held when the whole interval of the difference lies on the
        expected side of the margin, contradicted when it lies wholly on the
        other side, equivalent when it lies inside ±`equivalence`, inconclusive
        otherwise.
    """
    e = expectation
    sides = _sides(e, samples)
    if isinstance(sides, Verdict):
        return sides
    left, right, name = sides
    a = left.by_seed(e.metric)
    b = {} if isinstance(right, float) else right.by_seed(e.metric)
    if e.metric not in ACCURACY_SCALE or e.op == "~":
        equivalence = None
    seeds = sorted(set(a) | set(b))
    looks = list(looks) if looks else [Look(tuple(seeds), 0)]
    betting = interval == "betting" and paired and e.metric in ACCURACY_SCALE
    run, at, (n, difference, _, _, parts) = _looked(
        e, left, right, looks, paired, equivalence, alpha, betting=betting
    )
    if run.decided_at:  # what decided it: that look's seeds, difference and interval
        seeds = [s for s in seeds if s in at.seeds]
    low, high = run.low, run.high
    status, distance = _decide(e, difference, low, high)
    if status == "inconclusive" and _equivalent(low, high, equivalence):
        status = "equivalent"
    seeds_needed = None if looks[-1].budget else _seeds_needed(status, distance, parts, n)
    # The means shown are over the seeds the difference is: under pairing, both sides'.
    a_values = [a[s] for s in seeds if s in a and (not paired or not b or s in b)]
    b_values = [b[s] for s in seeds if s in b and (not paired or s in a)] if b else [e.right]
    mean, diff = _number(e.metric), _number(e.metric, signed=True)
    detail = (
        f"{e.metric}: {e.left} {mean(np.mean(a_values))} vs {name} {mean(np.mean(b_values))}, "
        f"difference {diff(difference)}, {_percent(run.level)} "
        f"{'betting interval' if betting else 'interval'} "
        f"[{diff(low)}, {diff(high)}] ({_need(e)})"
    )
    detail += _divergences(e, [(e.left, left), (name, right)]) + _no_interval(low, n, paired, parts)
    if interval == "betting" and not betting:
        detail += "; betting needs paired seeds of a bounded metric: a t interval instead"
    p = (math.nan,) * 3
    two_sided = isinstance(right, Sample) and min(map(len, (a_values, b_values))) > 1
    if odds and e.op != "~" and two_sided:
        p, text = _odds(e, a_values, b_values, paired=paired, open_=status == "inconclusive")
        detail += text
    margin = math.nan
    if status == "inconclusive" and e.op != "~" and math.isfinite(low):
        margin = max(abs(low), abs(high))
        if low <= 0 <= high:
            detail += f"; no difference beyond ±{mean(margin)}"
    if status == "inconclusive" and math.isfinite(low) and not looks[-1].budget:
        detail += _more_seeds(seeds_needed, known_spread=paired or parts["seeds"] is not None)
    return Verdict(
        e.text, status, detail, difference, low, high, seeds_needed, *p,
        seeds=n, looks=run.looks, decided_at=run.decided_at, margin=margin,
    )  # fmt: skip


def _no_interval(low: float, n: int, paired: bool, parts: dict) -> str:
    """Why there is no interval, or what a one-seed interval covers; else nothing."""
    if not math.isfinite(low) and n > 1:
        return "; every seed gave the same difference: no spread, so no interval yet"
    if not math.isfinite(low):
        return "; one seed and no per-example results: no interval, so no verdict"
    if not paired and parts["seeds"] is None:
        return "; one seed: the interval covers only the test set's sampling error"
    return ""


def _number(metric: str, *, signed: bool = False) -> Callable[[float], str]:
    """How a metric's values read: accuracies (and differences of them) to 4 decimals,
    other metrics (a loss) to 4 significant digits."""
    spec = ("+" if signed else "") + (".4f" if metric in ACCURACY_SCALE else ".4g")
    return lambda value: format(value, spec)


def _looked(e, left, right, looks: list[Look], paired, equivalence, alpha: float, *, betting=False):
    """The running interval over the looks, and the look it stopped at (the deciding one,
    or the last) with its `_look`.

    A look whose differences are all the same has no spread to build an interval on, and
    spends nothing: three equal differences are not certainty. Two variants equal in
    every seed (both at 100% training accuracy) are the one exception, an interval of
    width 0 at 0.
    """
    computed = [_look(e, left, right, list(look.seeds), paired) for look in looks]
    intervals = [
        (n, look.budget or n, center, se if se > 0 or center == 0 else math.nan, df)
        for look, (n, center, se, df, _) in zip(looks, computed)
    ]
    decides = lambda low, high: _settles(e, low, high, equivalence)  # noqa: E731
    if betting:  # the seeds' differences one at a time, in the order they were added
        a = left.by_seed(e.metric)
        b = {} if isinstance(right, float) else right.by_seed(e.metric)
        both = lambda s: s in a and (isinstance(right, float) or s in b)  # noqa: E731
        looks_at = [sum(map(both, look.seeds)) for look in looks]
        differences = [
            a[s] - (right if isinstance(right, float) else b[s]) for s in looks[-1].seeds if both(s)
        ]
        bound = 2.0 if e.metric == "gap" else 1.0  # a gap is in [-1, 1], so its difference too
        run = betting_interval(differences, looks_at, decides, alpha, bound)
    else:
        run = running_interval(intervals, decides, alpha)
    k = (run.decided_at or len(looks)) - 1
    return run, looks[k], computed[k]


def _sides(e: Expectation, samples: dict[str, Sample]) -> tuple | Verdict:
    """The two sides' samples (or the threshold) and the right side's name; or the verdict
    when one side diverged or has no finished run."""
    diverged = [
        label
        for label in (e.left, e.right)
        if isinstance(label, str) and samples.get(label, Sample({})).every_seed_diverged
    ]
    if diverged:
        return _with_divergence(e, diverged)
    left = samples.get(e.left, Sample({}))
    right = e.right if isinstance(e.right, float) else samples.get(e.right, Sample({}))
    name = e.right if isinstance(e.right, str) else "the threshold"
    if not left.by_seed(e.metric) or (isinstance(right, Sample) and not right.by_seed(e.metric)):
        return Verdict(e.text, "unchecked", f"cannot check: no finished run for {e.left} or {name}")
    return left, right, name


def _odds(
    e: Expectation, a: list[float], b: list[float], *, paired: bool, open_: bool
) -> tuple[tuple[float, float, float], str]:
    """P(a run of one side beats one of the other), in the expectation's direction, and its
    words; where every seed pair agrees but the verdict is open on a fixed test set, why.
    Under random splits `a` and `b` are in seed order, and a seed's runs are compared on
    their own split."""
    above, below = (a, b) if e.op == ">" else (b, a)
    p = probability_better(above, below, paired=paired)
    word = "beats" if e.op == ">" else "is below"
    pairs = "seeds (each on its split)" if paired else "seed pairs"
    text = f"; P({e.left} {word} {e.right}) over {pairs} {p[0]:.2f} [{p[1]:.2f}, {p[2]:.2f}]"
    if open_ and not paired and p[0] in (0.0, 1.0):
        text += (
            " (the seed pairs agree, but on one fixed test set; the interval also counts "
            "how much another test sample could move the difference)"
        )
    return p, text


def _more_seeds(needed: int | None, *, known_spread: bool) -> str:
    if needed:
        return f"; about {needed} seeds per variant would likely decide it"
    if known_spread:
        return "; more seeds alone would not decide it"
    return "; run at least 3 seeds to see the spread"


def _look(
    e: Expectation, left: Sample, right: Sample | float, seeds: list[int], paired: bool
) -> tuple[int, float, float, float, dict]:
    """One look's interval on these seeds: `(n, center, standard error, df, parts)`."""
    a = left.by_seed(e.metric)
    threshold = right if isinstance(right, float) else None
    b = {} if threshold is not None else right.by_seed(e.metric)
    if paired:
        if threshold is not None:
            d = np.array([a[s] - threshold for s in seeds if s in a])
        else:
            d = np.array([a[s] - b[s] for s in seeds if s in a and s in b])
        n = len(d)
        center = float(d.mean()) if n else math.nan
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return n, center, se, n - 1.0 if n > 1 else math.nan, {"seeds": se**2, "test": None}
    a_values = [a[s] for s in seeds if s in a]
    b_values = None if threshold is not None else [b[s] for s in seeds if s in b]
    correct_a = left.correct_at([s for s in seeds if s in a])
    correct_b = [] if threshold is not None else right.correct_at([s for s in seeds if s in b])
    # The test set's sampling error needs the per-example results of both sides.
    usable = (
        e.metric == "test_accuracy"
        and len(correct_a) == len(a_values)
        and (threshold is not None or len(correct_b) == len(b_values))
        and len({len(c) for c in [*correct_a, *correct_b]}) == 1
    )
    if not a_values or (b_values is not None and not b_values):
        return 0, math.nan, math.nan, math.nan, {"seeds": None, "test": None, "df": math.inf}
    difference, _, _, parts = interval(
        a_values,
        b_values,
        threshold=threshold,
        correct_a=correct_a if usable else None,
        correct_b=correct_b if usable else None,
    )
    if parts["seeds"] is None and parts["test"] is None:
        se = math.nan
    else:
        se = math.sqrt((parts["seeds"] or 0.0) + (parts["test"] or 0.0))
    n = min(len(a_values), len(b_values)) if b_values is not None else len(a_values)
    return n, difference, se, parts["df"], parts


def _settles(e: Expectation, low: float, high: float, equivalence: float | None) -> bool:
    return _decide(e, (low + high) / 2, low, high)[0] != "inconclusive" or _equivalent(
        low, high, equivalence
    )


def _equivalent(low: float, high: float, equivalence: float | None) -> bool:
    return equivalence is not None and -equivalence <= low and high <= equivalence


def _percent(level: float) -> str:
    """`95%` for one look at 0.05; the level actually spent when the looks spent less."""
    confidence = 100 * (1 - level) if level > 0 else 100 * CONFIDENCE
    return f"{confidence:.4g}%"


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
        return f"held when it lies below {-e.margin if e.margin else 0.0:g}"  # not "-0"
    return f"held when it lies within ±{e.margin:g}"


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _divergences(e: Expectation, sides: list[tuple[str, Sample | float]]) -> str:
    """What the seeds that diverged count as, in the detail's words."""
    notes = ""
    for name, sample in sides:
        if not isinstance(sample, Sample) or not sample.diverged:
            continue
        total = len(sample.seeds if sample.seeds is not None else sample.values[e.metric])
        if e.metric == "gap":
            how = "counted at a gap of 0"
        elif e.metric in ACCURACY_SCALE:
            how = f"counted at {sample.chance:.2f}"
        else:
            how = f"left out: no {e.metric} after a divergence"
        notes += f"; {name} diverged on {sample.diverged} of {total} seeds ({how})"
    return notes


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
