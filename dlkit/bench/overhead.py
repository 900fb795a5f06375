"""What tracking and the command line cost beside training: the same training with and without
MLflow, a small comparison's time outside its trainings, and the CLI's start-up.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dlkit.recipes.recipe import Recipe


def tracking_overhead(recipe: Recipe, data, epochs: int, seed: int) -> dict[str, float]:
    """Time spent in MLflow calls during a tracked training, as a share of its training time.

    Measured on a second run in the process (as every child but the first of a
    comparison); the first run's tracking seconds are returned beside it.
    """
    from dlkit.execution.runs import tracked_fit
    from dlkit.recipes.train_options import TrainOptions
    from dlkit.tracking.tracker import Tracker

    class TimedTracker(Tracker):
        seconds = 0.0

        def _timed(self, name: str, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return getattr(super(), name)(*args, **kwargs)
            finally:
                TimedTracker.seconds += time.perf_counter() - start

        def log_params(self, *a, **k):
            return self._timed("log_params", *a, **k)

        def log_metrics(self, *a, **k):
            return self._timed("log_metrics", *a, **k)

        def log_result(self, *a, **k):
            return self._timed("log_result", *a, **k)

        def log_dataset(self, *a, **k):
            return self._timed("log_dataset", *a, **k)

    with tempfile.TemporaryDirectory(prefix="dlkit-bench-") as tmp:
        tracker = TimedTracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        # A first tracked run pays one-time costs (MLflow's model code loading, Keras's
        # saving code): a comparison pays them once, not per child. Timed apart.
        options = TrainOptions(seed=seed, verbose=0)
        tracked_fit(tracker, recipe.replace(epochs=1), data, options, run_name="warm-up")
        first_run = TimedTracker.seconds
        TimedTracker.seconds = 0.0
        start = time.perf_counter()
        _, result = tracked_fit(
            tracker, recipe.replace(epochs=epochs), data, options, run_name="bench"
        )
        total = time.perf_counter() - start
    return {
        "epochs": epochs,
        "tracking_seconds": TimedTracker.seconds,
        "first_run_tracking_seconds": first_run,
        "training_seconds": result.wall_time,
        "total_seconds": total,
        "overhead_percent": 100 * TimedTracker.seconds / result.wall_time,
    }


def comparison_overhead(data_source: str, epochs: int, train_size: int = 1000) -> dict[str, float]:
    """Seconds a comparison spends per child run beyond the child's own `fit`."""
    from dlkit.comparison.compare import compare
    from dlkit.comparison.experiment_file import parse_experiment

    spec = {
        "name": "bench-overhead",
        "dataset": {"source": data_source, "train_size": train_size},
        "seeds": 2,
        "overrides": {"epochs": epochs, "width": 64},
        "variants": ["deep-relu", "wide-relu"],
    }
    with tempfile.TemporaryDirectory(prefix="dlkit-bench-") as tmp:
        start = time.perf_counter()
        result = compare(
            parse_experiment(spec),
            tracking_uri=f"sqlite:///{tmp}/mlflow.db",
            output_dir=Path(tmp) / "reports",
            verbose=0,
            log=lambda line: None,
        )
        total = time.perf_counter() - start
    fit_seconds = float(result.runs["wall_time_s"].sum())
    children = len(result.runs)
    return {
        "children": children,
        "total_seconds": total,
        "fit_seconds": fit_seconds,
        "overhead_per_child_seconds": (total - fit_seconds) / children,
    }


def cli_startup(repeats: int = 3) -> dict[str, float]:
    """Median wall time of `dlkit --help` and `dlkit recipes` in fresh processes."""
    script = Path(sys.executable).with_name("dlkit")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dlkit.cli"]
    timings = {}
    for name, args in (("help", ["--help"]), ("recipes", ["recipes"])):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([*command, *args], check=True, capture_output=True)
            runs.append(time.perf_counter() - start)
        timings[f"{name}_seconds"] = statistics.median(runs)
    return timings
