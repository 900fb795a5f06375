"""Benchmarks: dlkit's training path against plain Keras, measured in one run on one machine.

    dlkit bench                      # or: python -m dlkit.bench
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


def synthetic_mnist(n_train: int = 24_000, n_test: int = 4_000, seed: int = 0):
    """MNIST-shaped data that needs no download and can be learned: uint8 28x28 images whose
    labels come from a fixed random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    teacher = rng.normal(size=(784, 10))
    y = np.argmax((x.reshape(len(x), -1) / 255.0 - 0.5) @ teacher, axis=1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def load_bench_data(source: str):
    from dlkit.data import Dataset, DatasetInfo, load_dataset

    if source != "synthetic":
        return load_dataset(source, validation_split=0.0)
    x_train, y_train, x_test, y_test = synthetic_mnist()
    splits = {
        "train": (x_train.reshape(len(x_train), -1).astype(np.float32), y_train),
        "validation": (np.zeros((0, 784), np.float32), np.zeros(0, np.int64)),
        "test": (x_test.reshape(len(x_test), -1).astype(np.float32), y_test),
    }
    info = DatasetInfo("synthetic", "synthetic", (784,), 10, len(x_train), 0, len(x_test), 255.0)
    return Dataset(info, splits)


def plain_keras(recipe: Recipe, data, epochs: int, seed: int) -> dict[str, float]:
    """Trains the same network the way a user writes it: numpy arrays into `model.fit`."""
    import keras

    from dlkit.training import _EpochTimer

    keras.utils.set_random_seed(seed)
    x, y = data.arrays("train")
    x_test, y_test = data.arrays("test")
    layers = [keras.Input(shape=(784,))]
    layers += [keras.layers.Dense(recipe.width, activation="relu") for _ in range(recipe.depth)]
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    timer = _EpochTimer()
    onehot = np.eye(10, dtype=np.float32)
    model.fit(
        x / 255.0,
        onehot[y],
        batch_size=recipe.batch_size,
        epochs=epochs,
        verbose=0,
        callbacks=[timer],
    )
    _, accuracy = model.evaluate(x_test / 255.0, onehot[y_test], verbose=0)
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
    from dlkit.tracking import Tracker
    from dlkit.training import tracked_fit

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


def comparison_overhead(data_source: str, epochs: int) -> dict[str, float]:
    """Seconds a comparison spends per child run beyond the child's own `fit`."""
    from dlkit.comparison import compare
    from dlkit.experiments import parse_experiment

    spec = {
        "name": "bench-overhead",
        "dataset": {"source": data_source, "train_size": 1000},
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
    dataset: str = "synthetic", epochs: int = 4, repeats: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Runs every measurement and returns the figures (see the module docstring)."""
    import tensorflow as tf

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
    for recipe in (TARGET, get_recipe("deep-relu")):
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
    peak = matmul_peak()
    results["matmul_peak_gflops"] = peak / 1e9
    for recipe in (TARGET, get_recipe("deep-relu")):
        figures = results["throughput"][recipe.name]
        flops_per_sample = 6 * recipe.param_count(784, 10)
        figures["mfu_dlkit"] = flops_per_sample * figures["dlkit_samples_per_second"] / peak
        figures["mfu_plain"] = flops_per_sample * figures["plain_keras_samples_per_second"] / peak
    results["tracking"] = tracking_overhead(TARGET, data, epochs, seed)
    results["comparison"] = comparison_overhead("digits", epochs=2)
    results["cli"] = cli_startup()
    return results


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
            "measure": "matmul peak, float32 4096^2 (GFLOP/s)",
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


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dlkit.bench", description=__doc__)
    parser.add_argument(
        "--dataset",
        default="synthetic",
        help="'synthetic' (MNIST-shaped, no download) or any dlkit source",
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per path")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    results = run(args.dataset, args.epochs, args.repeats)
    print(format_results(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
