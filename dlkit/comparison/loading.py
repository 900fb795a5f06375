"""A comparison read back from MLflow alone: its plan, its children, their curves.

`load_comparison` rebuilds the `Comparison` that `dlkit compare` printed from the parent run's
plan and the runs that count under it, so a report needs nothing but the store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from dlkit import keys
from dlkit.comparison.reports import Comparison
from dlkit.errors import DlkitError
from dlkit.keys import CORRECT_ARTIFACT, GRAD_PREFIX

if TYPE_CHECKING:
    from dlkit.tracking.tracker import RunRecord, Tracker


PLAN_ARTIFACT = "plan.json"
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
RUN_METRICS = (
    "test_accuracy",
    "test_loss",
    "best_val_accuracy",
    "train_accuracy",
    "final_accuracy",
    "epochs_run",
    "stopped_epoch",
    "wall_time_s",
    "samples_per_second",
    "params",
)


def load_comparison(
    tracker: Tracker,
    parent_run_id: str | None = None,
    *,
    verdicts_only: bool = False,
    plan: dict[str, Any] | None = None,
    runs: Sequence[RunRecord] | None = None,
) -> Comparison:
    """Rebuilds a comparison from MLflow alone: the parent's plan, its children's metrics.

    Args:
        tracker: A `dlkit.tracking.tracker.Tracker` on the comparison's MLflow experiment.
        parent_run_id: The parent run. Defaults to the experiment's latest.
        verdicts_only: Read only what the verdicts need (a comparison adding seeds looks
            after every round): no learning curves or gradient norms, and no per-example
            results under a random split, whose verdicts do not use them. Defaults to `False`.
        plan: The parent's plan, when the caller has it (it just logged it). Defaults to
            `None`: read it from the parent.
        runs: The comparison's runs, when the caller has read them (see
            `dlkit.tracking.members.members`). Defaults to `None`: read them.
    """
    parent_run_id = parent_run_id or tracker.latest_parent()
    if parent_run_id is None:
        raise DlkitError(
            f"MLflow experiment {tracker.experiment!r} at {tracker.tracking_uri} has no "
            "comparison yet. Run `dlkit compare` first, or check --tracking-uri."
        )
    text = json.dumps(plan) if plan else tracker.read_artifact(parent_run_id, PLAN_ARTIFACT)
    if text is None:
        raise DlkitError(
            f"Run {parent_run_id} has no {PLAN_ARTIFACT}: it is not a dlkit comparison, or "
            "it stopped while tuning, before its plan was set. Rerun `dlkit compare`."
        )
    plan = json.loads(text)

    from dlkit.tracking.members import members

    # The run that counts for each planned config (a tuning sweep's runs are read from the plan).
    by_hash = {
        m.config_hash: m.run for m in members(tracker, parent_run_id, "child", runs=runs).values()
    }
    rows, histories, gradients, correct = [], {}, {}, {}
    paired = (plan.get("context") or {}).get("split") == "random"
    for entry in plan["runs"]:
        child = by_hash.get(entry["config_hash"])
        row = _row(entry, child)
        histories.setdefault(entry["variant"], [])
        gradients.setdefault(entry["variant"], [])
        correct.setdefault(entry["variant"], {})
        if child and child.status == "FINISHED" and verdicts_only:
            if not paired:
                outcomes = tracker.read_array(child.run_id, CORRECT_ARTIFACT)
                if outcomes is not None:
                    correct[entry["variant"]][int(entry["seed"])] = outcomes
        elif child and child.status == "FINISHED":
            history = _history(tracker, child.run_id)
            histories[entry["variant"]].append(history)
            if history.get("accuracy"):  # the last epoch's training accuracy
                row["final_accuracy"] = history["accuracy"][-1]
            outcomes = tracker.read_array(child.run_id, CORRECT_ARTIFACT)
            if outcomes is not None:  # runs logged before dlkit kept them have none
                correct[entry["variant"]][int(entry["seed"])] = outcomes
            if plan.get("gradient_norms"):
                gradients[entry["variant"]].append(_gradients(tracker, child))
        rows.append(row)
    return Comparison(
        plan,
        parent_run_id,
        pd.DataFrame(rows),
        histories,
        gradients=gradients if plan.get("gradient_norms") else None,
        correct={variant: runs for variant, runs in correct.items() if runs},
    )


def _row(entry: dict[str, Any], child: RunRecord | None) -> dict[str, Any]:
    """A planned run's row of the runs table: its run's status, failure and metrics."""
    row = {
        "variant": entry["variant"],
        "recipe": entry["recipe"],
        "seed": entry["seed"],
        "config_hash": entry["config_hash"],
        "run_id": child.run_id if child else None,
        "status": child.status if child else "NOT RUN",
        "failure": child.tags.get(keys.FAILURE, "") if child else "not run yet",
    }
    for metric in RUN_METRICS:
        row[metric] = child.metrics.get(metric, math.nan) if child else math.nan
    return row


def _history(tracker: Tracker, run_id: str) -> dict[str, list[float]]:
    history = {}
    for key in HISTORY_KEYS:
        points = tracker.metric_history(run_id, key)
        if points:
            history[key] = [points[step] for step in sorted(points)]
    return history


def _gradients(tracker: Tracker, run: RunRecord) -> dict[int, dict[int, float]]:
    layers = {}
    for key in run.metrics:
        if key.startswith(GRAD_PREFIX):
            layers[int(key.removeprefix(GRAD_PREFIX))] = tracker.metric_history(run.run_id, key)
    return dict(sorted(layers.items()))
