"""What the store costs per run as a comparison grows: tiny nets, 100 runs and then 1,000.

Each size is one `dlkit compare` of two tiny variants (a ReLU and a sigmoid net of 8 units, one
epoch on 100 digits) with half as many seeds as runs, from a new parent (`force`), on a sqlite
store in a temporary folder or on a store given by its URI (a team's `mlflow server`). The
store's share is every call dlkit makes through its MLflow client, counted and timed
(`dlkit.tracking.calls.spent`). Linear bookkeeping keeps the seconds per run flat as the runs
grow; a comparison that re-read all its runs at every step would see them grow with the runs.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any

SIZES = (100, 1000)


def comparison(runs: int) -> dict[str, Any]:
    """The comparison of `runs` tiny runs, as an experiment file's mapping."""
    return {
        "name": f"store-{runs}-{uuid.uuid4().hex[:8]}",
        "question": "What does the store cost per run?",
        "dataset": {"source": "digits", "train_size": 100},
        "seeds": max(runs // 2, 1),
        "overrides": {"epochs": 1, "width": 8, "depth": 1, "batch_size": 100},
        "variants": [
            {"label": "relu", "recipe": "deep-relu"},
            {"label": "sigmoid", "recipe": "deep-sigmoid"},
        ],
        "expect": ["relu > sigmoid"],
    }


def store_overhead(
    stores: Sequence[str] = (), sizes: Sequence[int] = SIZES
) -> list[dict[str, Any]]:
    """Runs a comparison of each size on each store (a temporary sqlite store first, then each
    URI of `stores`); returns a row per run with its wall time and its store calls."""
    from dlkit.comparison.compare import compare
    from dlkit.comparison.experiment_file import parse_experiment
    from dlkit.tracking.calls import spent

    rows = []
    with tempfile.TemporaryDirectory(prefix="dlkit-bench-store-") as tmp:
        for store in ["sqlite", *stores]:
            for runs in sizes:
                uri = f"sqlite:///{tmp}/mlflow-{runs}.db" if store == "sqlite" else store
                before = spent()
                start = time.perf_counter()
                result = compare(
                    parse_experiment(comparison(runs)),
                    tracking_uri=uri,
                    output_dir=None,
                    force=True,
                    yes=True,  # 1,000 runs is the plan
                    log=lambda line: None,
                    progress=False,
                )
                wall = time.perf_counter() - start
                after = spent()
                calls, seconds = after[0] - before[0], after[1] - before[1]
                finished = int((result.runs["status"] == "FINISHED").sum())
                rows.append({
                    "store": store.split("://")[0] if store != "sqlite" else "sqlite",
                    "runs": finished,
                    "wall_s": wall,
                    "store_s": seconds,
                    "store_share": seconds / wall,
                    "store_s_per_run": seconds / finished,
                    "calls_per_run": calls / finished,
                })  # fmt: skip
    return rows


def format_store(rows: list[dict[str, Any]]) -> str:
    """The rows as a table, with each store's growth in seconds per run from its smallest size."""
    lines = [
        "Store cost per run (a comparison of tiny nets; store: every MLflow call dlkit makes)",
        "",
        f"{'store':<8} {'runs':>6} {'wall s':>8} {'store s':>8} {'share':>6} {'s/run':>7} "
        f"{'calls/run':>9} {'growth':>7}",
    ]
    first: dict[str, float] = {}
    for row in rows:
        base = first.setdefault(row["store"], row["store_s_per_run"])
        lines.append(
            f"{row['store']:<8} {row['runs']:>6,} {row['wall_s']:>8.1f} {row['store_s']:>8.1f} "
            f"{row['store_share']:>6.0%} {row['store_s_per_run']:>7.3f} "
            f"{row['calls_per_run']:>9.1f} {row['store_s_per_run'] / base:>6.2f}x"
        )
    return "\n".join(lines)
