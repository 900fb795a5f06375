"""Expectations: the outcome a lesson predicts, stated in an experiment file, checked by reports.

Grammar, one expectation per string (`metric:` defaults to `test_accuracy`,
compared on the mean over seeds):

    [metric:] LABEL > LABEL|NUMBER [by MARGIN]     e.g.  relu > sigmoid by 0.30
    [metric:] LABEL < LABEL|NUMBER [by MARGIN]     e.g.  epochs_run: early-stop < no-stop
    [metric:] LABEL ~ LABEL [within TOLERANCE]     e.g.  maxout ~ relu within 0.01

`gap` (final training accuracy minus test accuracy) is a metric too, for
the overfitting lessons.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

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


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether an expectation held on this run, with the numbers behind it."""

    expectation: str
    held: bool | None  # None: a variant it names has no finished run
    detail: str


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


def evaluate(expectation: Expectation, values: dict[str, dict[str, float]]) -> Verdict:
    """Checks an expectation against per-variant mean metrics.

    Args:
        expectation: From `parse_expectation`.
        values: For each variant label, its mean metrics (`metric -> value`);
        `diverged` true marks a variant whose every run diverged (NaN loss).
    """
    e = expectation
    diverged = [
        label
        for label in (e.left, e.right)
        if isinstance(label, str) and values.get(label, {}).get("diverged")
    ]
    if diverged:
        return _with_divergence(e, diverged)
    left = values.get(e.left, {}).get(e.metric, math.nan)
    right = (
        e.right if isinstance(e.right, float) else values.get(e.right, {}).get(e.metric, math.nan)
    )
    name = e.right if isinstance(e.right, str) else "the threshold"
    if not (math.isfinite(left) and math.isfinite(right)):
        return Verdict(e.text, None, f"cannot check: no finished run for {e.left} or {name}")
    difference = left - right
    if e.op == ">":
        held = difference > e.margin if e.margin else difference > 0
        need = f"needs > {e.margin:g}" if e.margin else "needs > 0"
    elif e.op == "<":
        held = -difference > e.margin if e.margin else difference < 0
        need = f"needs < -{e.margin:g}" if e.margin else "needs < 0"
    else:
        held = abs(difference) <= e.margin
        need = f"needs |difference| <= {e.margin:g}"
    detail = (
        f"{e.metric}: {e.left} {left:.4g} vs {name} {right:.4g}, "
        f"difference {difference:+.4g} ({need})"
    )
    return Verdict(e.text, held, detail)


def _with_divergence(e: Expectation, diverged: list[str]) -> Verdict:
    detail = f"{' and '.join(diverged)} diverged (NaN loss) in every seed"
    if (
        e.metric not in ("test_accuracy", "best_val_accuracy", "train_accuracy")
        or len(diverged) == 2
    ):
        return Verdict(e.text, None, f"cannot check: {detail}")
    if e.op == "~":
        return Verdict(e.text, False, f"{detail}, so it is not comparable")
    worse = e.right if e.op == ">" else e.left
    return Verdict(e.text, diverged == [worse], f"{detail}: it did not learn at all")
