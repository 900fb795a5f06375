"""A comparison's runs summarized: one row per variant, and each variant's samples per seed.

Plain pandas over the children's params and metrics, as MLflow's search returns them.

A seed whose loss went NaN or infinite is an outcome of its recipe, not missing data:
it counts at chance (1 / classes) in every accuracy-scale metric (test, validation and
training accuracy; a gap of 0), since a model whose weights are NaN predicts no better
than a guess. Metrics with no value after a divergence (a loss, epochs, time) leave it
out. A run that failed for another reason, or was killed, stays missing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dlkit.comparison.expectations import METRICS, Sample

AT_CHANCE = ("test_accuracy", "best_val_accuracy", "train_accuracy", "final_accuracy")


def diverged(runs: pd.DataFrame) -> pd.Series:
    """Which runs ended because their loss went NaN or infinite."""
    return (runs["status"] == "FAILED") & runs["failure"].astype(str).str.startswith(
        "TrainingDiverged"
    )


def counted(runs: pd.DataFrame, chance: float) -> pd.DataFrame:
    """The runs whose outcome counts: the finished ones, and the diverged ones at `chance`
    in the accuracy-scale metrics (see the module's docstring)."""
    gone = diverged(runs)
    rows = runs[(runs["status"] == "FINISHED") | gone].copy()
    at_chance = gone.loc[rows.index]
    for metric in AT_CHANCE:
        if metric in rows:
            rows[metric] = rows[metric].astype(float).where(~at_chance, chance)
    return rows.assign(diverged=at_chance)


def samples_by_variant(
    runs: pd.DataFrame,
    table: pd.DataFrame,
    correct: dict[str, dict[int, np.ndarray]],
    chance: float,
) -> dict[str, Sample]:
    """Returns each variant's per-seed results, as the verdicts read them: a diverged seed
    counted at `chance`."""
    done = counted(runs, chance).assign(
        train_accuracy=_train_accuracy,
        gap=lambda r: _train_accuracy(r) - r["test_accuracy"],
    )
    samples = {}
    for variant in table["variant"]:
        rows = done[done["variant"] == variant]
        seeds = [int(seed) for seed in rows["seed"]]
        samples[variant] = Sample(
            values={metric: rows[metric].tolist() for metric in METRICS},
            # Per-example results only where every finished seed has them (older runs may
            # not, and a diverged one has none): else the test set's part is left out.
            correct=_each(correct.get(variant, {}), seeds),
            seeds=seeds,
            diverged=int(rows["diverged"].sum()),
            chance=chance,
        )
    return samples


def _each(by_seed: dict[int, np.ndarray], seeds: list[int]) -> list[np.ndarray]:
    return [by_seed[s] for s in seeds] if all(s in by_seed for s in seeds) else []


def _train_accuracy(runs: pd.DataFrame) -> pd.Series:
    # Measured after training without dropout; runs logged before dlkit measured
    # it have only the last epoch's running accuracy (dropout on).
    return runs["train_accuracy"].fillna(runs["final_accuracy"])


def summarize(runs: pd.DataFrame, chance: float) -> pd.DataFrame:
    """Aggregates child runs into one row per variant (mean and std over seeds), a diverged
    seed counted at `chance` in the accuracy-scale metrics."""
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        done = counted(group, chance)

        def mean(column: str, frame: pd.DataFrame = done) -> float:
            values = frame[column].dropna() if column in frame else []
            return float(np.mean(values)) if len(values) else math.nan

        def std(column: str, done: pd.DataFrame = done) -> float:
            values = done[column].dropna()
            return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan

        train_acc = float(np.mean(_train_accuracy(done))) if len(done) else math.nan
        rows.append(
            {
                "variant": variant,
                "recipe": group["recipe"].iloc[0],
                "planned": len(group),
                "finished": len(done),  # counted: finished, or diverged
                "failed": int((group["status"] != "FINISHED").sum()),
                "diverged": int(done["diverged"].sum()),
                "params": mean("params", group),
                "test_accuracy_mean": mean("test_accuracy"),
                "test_accuracy_std": std("test_accuracy"),
                "test_loss_mean": mean("test_loss"),
                "test_loss_std": std("test_loss"),
                "best_val_accuracy": mean("best_val_accuracy"),
                "train_accuracy": train_acc,
                "gap": train_acc - mean("test_accuracy"),
                "epochs_run": mean("epochs_run"),
                "stopped_epoch": mean("stopped_epoch"),
                "wall_time_s": mean("wall_time_s"),
                "samples_per_second": mean("samples_per_second"),
            }
        )
    table = pd.DataFrame(rows)
    # Counts are whole numbers (a variant with no finished run has no parameter count).
    table["params"] = table["params"].round().astype("Int64")
    scores = table["test_accuracy_mean"].fillna(-1.0)
    table["best"] = (scores == scores.max()) & (scores >= 0)
    return table
