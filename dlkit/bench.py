"""Benchmarks: dlkit's training path against plain Keras, measured in one run on one machine.

    dlkit bench
    dlkit bench --json bench.json --dataset ../shared/data/mnist

Every figure is a ratio or a share measured in the same run, so a noisy,
shared machine moves both sides alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlkit.recipes import Recipe, get_recipe

# The network of the speed target: 784-500-500-10 ReLU, Adam, batch 128.
TARGET = Recipe(name="mlp-500x2", depth=2, width=500, activation="relu", batch_size=128)


def load_bench_data(source: str):
    """Loads `source` with every training example in the training split (no validation)."""
    from dlkit.data import load_dataset

    return load_dataset(source, validation_split=0.0)


def plain_keras(recipe: Recipe, data, epochs: int, seed: int) -> dict[str, float]:
    """Trains the same network the way a user writes it: numpy arrays into `model.fit`."""
    import keras

    from dlkit.callbacks import EpochTimer

    keras.utils.set_random_seed(seed)
    info = data.info
    x, y = data.arrays("train")
    x_test, y_test = data.arrays("test")
    layers = [keras.Input(shape=info.input_shape)]
    layers += [
        keras.layers.Dense(units, activation=recipe.activation)
        for units in recipe.hidden_layers(int(np.prod(info.input_shape)), info.num_classes)
    ]
    model = keras.Sequential([*layers, keras.layers.Dense(info.num_classes, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    onehot = np.eye(info.num_classes, dtype=np.float32)
    model.fit(
        x / info.input_max,
        onehot[y],
        batch_size=recipe.batch_size,
        epochs=epochs,
        verbose=0,
        callbacks=[timer],
    )
    _, accuracy = model.evaluate(x_test / info.input_max, onehot[y_test], verbose=0)
    return {"samples_per_second": timer.samples_per_second(len(x)), "test_accuracy": accuracy}


def dlkit_path(recipe: Recipe, data, epochs: int, seed: int) -> dict[str, float]:
    from dlkit.training import fit

    result = fit(recipe.replace(epochs=epochs), data, seed=seed, verbose=0)
    return {
        "samples_per_second": result.samples_per_second,
        "test_accuracy": result.test_accuracy,
        "wall_time": result.wall_time,
    }


def matmul_peak(n: int = 4096, seconds: float = 3.0) -> float:
    """Float32 matmul throughput (FLOP/s) of TensorFlow on this machine."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    matmul = tf.function(tf.linalg.matmul)
    matmul(a, b).numpy()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        c = matmul(a, b)
        reps += 1
    c.numpy()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def tracking_overhead(recipe: Recipe, data, epochs: int, seed: int) -> dict[str, float]:
    """Time spent in MLflow calls during a tracked training, as a share of its training time."""
    from dlkit.runs import tracked_fit
    from dlkit.tracking import Tracker

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

    with tempfile.TemporaryDirectory(prefix="dlkit-bench-") as tmp:
        tracker = TimedTracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        start = time.perf_counter()
        _, result = tracked_fit(
            tracker, recipe.replace(epochs=epochs), data, seed=seed, run_name="bench", verbose=0
        )
        total = time.perf_counter() - start
    return {
        "tracking_seconds": TimedTracker.seconds,
        "training_seconds": result.wall_time,
        "total_seconds": total,
        "overhead_percent": 100 * TimedTracker.seconds / result.wall_time,
    }


def comparison_overhead(data_source: str, epochs: int, train_size: int = 1000) -> dict[str, float]:
    """Seconds a comparison spends per child run beyond the child's own `fit`."""
    from dlkit.comparison import compare
    from dlkit.experiments import parse_experiment

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


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["samples_per_second"])[len(runs) // 2]


def run(
    dataset: str = "synthetic",
    *,
    epochs: int = 4,
    repeats: int = 3,
    seed: int = 0,
    recipes: tuple[Recipe, ...] | None = None,
    peak_size: int = 4096,
    peak_seconds: float = 3.0,
    overhead_train_size: int = 1000,
) -> dict[str, Any]:
    """Runs every measurement and returns the figures (see the module docstring).

    Args:
        dataset: Any dataset source. Defaults to `"synthetic"` (MNIST-shaped).
        epochs: Epochs per timed training; the first is warm-up. Defaults to `4`.
        repeats: Alternating runs of each path. Defaults to `3`.
        seed: Training seed. Defaults to `0`.
        recipes: The networks timed. Defaults to `TARGET` and `deep-relu`.
        peak_size: Side of the square matmul that measures the peak. Defaults to `4096`.
        peak_seconds: How long the peak is measured. Defaults to `3.0`.
        overhead_train_size: Training examples of the comparison-overhead
            run on digits. Defaults to `1000`.

    Returns:
        A dict of figures, as `format_results` prints and `save` writes them.
    """
    import tensorflow as tf

    recipes = recipes or (TARGET, get_recipe("deep-relu"))
    data = load_bench_data(dataset)
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "tensorflow": tf.__version__,
        },
        "dataset": data.info.name,
        "epochs": epochs,
        "repeats": repeats,
        "throughput": {},
    }
    for recipe in recipes:
        # Alternate the two paths and keep each one's median, so that load from
        # elsewhere on a shared machine falls on both alike.
        plain_runs, our_runs = [], []
        for _ in range(repeats):
            plain_runs.append(plain_keras(recipe, data, epochs, seed))
            our_runs.append(dlkit_path(recipe, data, epochs, seed))
        plain = _median_run(plain_runs)
        ours = _median_run(our_runs)
        results["throughput"][recipe.name] = {
            "plain_keras_samples_per_second": plain["samples_per_second"],
            "dlkit_samples_per_second": ours["samples_per_second"],
            "speedup": ours["samples_per_second"] / plain["samples_per_second"],
            "speedup_per_repeat": [
                o["samples_per_second"] / p["samples_per_second"]
                for o, p in zip(our_runs, plain_runs)
            ],
            "plain_test_accuracy": plain["test_accuracy"],
            "dlkit_test_accuracy": ours["test_accuracy"],
        }
    peak = matmul_peak(peak_size, peak_seconds)
    results["matmul_peak_gflops"] = peak / 1e9
    input_dim, classes = int(np.prod(data.info.input_shape)), data.info.num_classes
    for recipe in recipes:
        figures = results["throughput"][recipe.name]
        flops_per_sample = 6 * recipe.param_count(input_dim, classes)
        figures["mfu_dlkit"] = flops_per_sample * figures["dlkit_samples_per_second"] / peak
        figures["mfu_plain"] = flops_per_sample * figures["plain_keras_samples_per_second"] / peak
    results["tracking"] = tracking_overhead(recipes[0], data, epochs, seed)
    results["comparison"] = comparison_overhead("digits", 2, overhead_train_size)
    results["cli"] = cli_startup()
    return results


def save(results: dict[str, Any], path: str | Path) -> None:
    """Writes the figures as JSON."""
    Path(path).write_text(json.dumps(results, indent=2) + "\n")


def format_results(results: dict[str, Any]) -> str:
    """Returns the figures as a plain-text table, with the targets beside them."""
    from dlkit.text import text_table

    rows = []
    for name, t in results["throughput"].items():
        rows += [
            {
                "measure": f"{name}: plain Keras fit (samples/s)",
                "value": f"{t['plain_keras_samples_per_second']:,.0f}",
                "target": "",
            },
            {
                "measure": f"{name}: dlkit train path (samples/s)",
                "value": f"{t['dlkit_samples_per_second']:,.0f}",
                "target": "",
            },
            {
                "measure": f"{name}: speed-up over plain Keras (median; each repeat)",
                "value": f"{t['speedup']:.2f}x ("
                + ", ".join(f"{r:.2f}" for r in t.get("speedup_per_repeat", []))
                + ")",
                "target": ">= 1.8x" if name == TARGET.name else "",
            },
            {
                "measure": f"{name}: model-FLOP utilization (dlkit / plain)",
                "value": f"{t['mfu_dlkit']:.0%} / {t['mfu_plain']:.0%}",
                "target": ">= 40%" if name == TARGET.name else "",
            },
            {
                "measure": f"{name}: test accuracy (dlkit / plain)",
                "value": f"{t['dlkit_test_accuracy']:.4f} / {t['plain_test_accuracy']:.4f}",
                "target": "same within noise",
            },
        ]
    tracking, comparison, cli = results["tracking"], results["comparison"], results["cli"]
    rows += [
        {
            "measure": "matmul peak, float32 (GFLOP/s)",
            "value": f"{results['matmul_peak_gflops']:.1f}",
            "target": "",
        },
        {
            "measure": "MLflow tracking cost (% of training time)",
            "value": f"{tracking['overhead_percent']:.1f}%",
            "target": "<= 3%",
        },
        {
            "measure": "comparison overhead per child run (s)",
            "value": f"{comparison['overhead_per_child_seconds']:.2f}",
            "target": "",
        },
        {
            "measure": "`dlkit --help` wall time (s)",
            "value": f"{cli['help_seconds']:.2f}",
            "target": "<= 1.0",
        },
        {
            "measure": "`dlkit recipes` wall time (s)",
            "value": f"{cli['recipes_seconds']:.2f}",
            "target": "<= 1.5",
        },
    ]
    machine = results["machine"]
    header = (
        f"dlkit benchmark: {results['dataset']} data, {results['epochs']} epochs x "
        f"{results.get('repeats', 1)} alternating repeats, "
        f"TensorFlow {machine['tensorflow']}, {machine['processor']}, "
        f"{machine['gpus']} GPU(s)"
    )
    return header + "\n\n" + text_table(rows)
