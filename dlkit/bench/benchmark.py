"""Benchmarks: dlkit's training path against plain Keras, measured in one run on one machine.

    dlkit bench
    dlkit bench --json bench.json --dataset path/to/mnist

Every figure is a ratio or a share measured in the same run, so a noisy,
shared machine moves both sides alike.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from dlkit.bench.levers import format_levers, levers, plus_minus, step_profile
from dlkit.bench.overhead import cli_startup, comparison_overhead, tracking_overhead
from dlkit.bench.throughput import (
    PEAK_DTYPE,
    TARGET,
    dlkit_path,
    load_bench_data,
    matmul_peak,
    plain_keras,
    torch_reference,
)
from dlkit.recipes.recipe import Recipe, get_recipe


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["samples_per_second"])[len(runs) // 2]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _machine() -> dict[str, Any]:
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__,
    }


def _throughput(
    recipe: Recipe, data: Any, epochs: int, repeats: int, precision: str
) -> dict[str, Any]:
    """Times plain Keras, dlkit and (when installed) PyTorch on `recipe`, alternating."""
    # Alternate the paths, so that load from elsewhere on a shared machine falls
    # on all alike; repeat i of each uses seed i.
    plain_runs, our_runs, torch_runs = [], [], []
    for seed in range(repeats):
        plain_runs.append(plain_keras(recipe, data, epochs, seed))
        our_runs.append(dlkit_path(recipe, data, epochs, seed))
        torch_runs.append(torch_reference(recipe, data, epochs, seed, bf16=precision != "float32"))
    plain_accuracy = _mean_std([r["test_accuracy"] for r in plain_runs])
    our_accuracy = _mean_std([r["test_accuracy"] for r in our_runs])
    # Each repeat's two runs ran back to back, so their ratio cancels the load
    # of that moment; the median of those ratios is the speed-up.
    ratios = [
        o["samples_per_second"] / p["samples_per_second"] for o, p in zip(our_runs, plain_runs)
    ]
    figures = {
        "plain_keras_samples_per_second": _median_run(plain_runs)["samples_per_second"],
        "dlkit_samples_per_second": _median_run(our_runs)["samples_per_second"],
        "speedup": statistics.median(ratios),
        "speedup_per_repeat": ratios,
        "plain_test_accuracy": plain_accuracy[0],
        "plain_test_accuracy_std": plain_accuracy[1],
        "dlkit_test_accuracy": our_accuracy[0],
        "dlkit_test_accuracy_std": our_accuracy[1],
    }
    if all(torch_runs):  # PyTorch eager, when it is installed: a reference line
        reference = _mean_std([r["test_accuracy"] for r in torch_runs])
        figures["torch_samples_per_second"] = _median_run(torch_runs)["samples_per_second"]
        figures["speedup_over_torch"] = statistics.median(
            o["samples_per_second"] / t["samples_per_second"] for o, t in zip(our_runs, torch_runs)
        )
        figures["torch_test_accuracy"] = reference[0]
        figures["torch_test_accuracy_std"] = reference[1]
    return figures


def run(
    dataset: str = "synthetic",
    *,
    epochs: int = 4,
    repeats: int = 5,
    precision: str = "auto",
    recipes: tuple[Recipe, ...] | None = None,
    with_levers: bool = False,
    peak_size: int = 4096,
    peak_seconds: float = 3.0,
    overhead_train_size: int = 1000,
    tracking_seconds: float = 20.0,
) -> dict[str, Any]:
    """Runs every measurement and returns the figures (see the module docstring).

    The two training paths alternate, repeat `i` of each with seed `i`: the
    median throughput is reported with every repeat's ratio, and test
    accuracy as the mean ± std over the seeds.

    Args:
        dataset: Any dataset source. Defaults to `"synthetic"` (MNIST-shaped).
        epochs: Epochs per timed training; the first is warm-up. Defaults to `4`.
        repeats: Alternating runs (and seeds) of each path. Defaults to `5`.
        precision: dlkit's precision (`auto` resolves on this machine); plain
            Keras stays float32. Defaults to `"auto"`.
        recipes: The networks timed. Defaults to `TARGET` and `deep-relu`.
        with_levers: Also time every per-step lever alone and together
            (`levers`) and profile one training step (`step_profile`) on
            the first recipe. Defaults to `False`.
        peak_size: Side of the square matmuls that measure the peaks. Defaults to `4096`.
        peak_seconds: How long each peak is measured. Defaults to `3.0`.
        overhead_train_size: Training examples of the comparison-overhead
            run on digits. Defaults to `1000`.
        tracking_seconds: About how long the tracked training that measures
            MLflow's cost lasts (its epochs follow from the first recipe's
            measured speed; never fewer than `epochs`). Defaults to `20.0`,
            the length the tracking target is set for.

    Returns:
        A dict of figures, as `format_results` prints and `save` writes them.
    """
    from dlkit.recipes.precision import resolve_precision

    resolved = resolve_precision(precision)
    recipes = tuple(
        r.replace(precision=resolved) for r in recipes or (TARGET, get_recipe("deep-relu"))
    )
    data = load_bench_data(dataset)
    results: dict[str, Any] = {
        "machine": _machine(),
        "dataset": data.info.name,
        "epochs": epochs,
        "repeats": repeats,
        "precision": resolved,
        "throughput": {
            recipe.name: _throughput(recipe, data, epochs, repeats, resolved) for recipe in recipes
        },
    }
    peaks = {
        dtype: matmul_peak(peak_size, peak_seconds, dtype)
        for dtype in sorted({"float32", PEAK_DTYPE[resolved]})
    }
    results["matmul_peak_gflops"] = {dtype: peak / 1e9 for dtype, peak in peaks.items()}
    input_dim, classes = int(np.prod(data.info.input_shape)), data.info.num_classes
    for recipe in recipes:
        figures = results["throughput"][recipe.name]
        flops_per_sample = 6 * recipe.param_count(input_dim, classes)
        figures["mfu_dlkit"] = (
            flops_per_sample * figures["dlkit_samples_per_second"] / peaks[PEAK_DTYPE[resolved]]
        )
        figures["mfu_plain"] = (
            flops_per_sample * figures["plain_keras_samples_per_second"] / peaks["float32"]
        )
    if with_levers:
        results["levers"] = levers(recipes[0].replace(precision="float32"), data, epochs=epochs)
        results["step_profile"] = step_profile(recipes[0].replace(precision="float32"), data)
    # MLflow's cost is mostly per run, so its share depends on the training's length:
    # measured on a training of about `tracking_seconds`, as the target is set.
    epoch_seconds = (
        data.info.train_size / results["throughput"][recipes[0].name]["dlkit_samples_per_second"]
    )
    tracking_epochs = max(epochs, math.ceil(tracking_seconds / epoch_seconds))
    results["tracking"] = tracking_overhead(recipes[0], data, tracking_epochs, 0)
    results["comparison"] = comparison_overhead("digits", 2, overhead_train_size)
    results["cli"] = cli_startup()
    return results


def save(results: dict[str, Any], path: str | Path) -> None:
    """Writes the figures as JSON."""
    Path(path).write_text(json.dumps(results, indent=2) + "\n")


def _row(measure: str, precision: str, value: str, target: str = "") -> dict[str, str]:
    return {"measure": measure, "precision": precision, "value": value, "target": target}


def _throughput_rows(name: str, t: dict[str, Any], ours: str) -> list[dict[str, str]]:
    target = name == TARGET.name
    repeats = ", ".join(f"{r:.2f}" for r in t.get("speedup_per_repeat", []))
    rows = [
        _row(
            f"{name}: plain Keras fit (samples/s)",
            "float32",
            f"{t['plain_keras_samples_per_second']:,.0f}",
        ),
        _row(
            f"{name}: dlkit train path (samples/s)", ours, f"{t['dlkit_samples_per_second']:,.0f}"
        ),
        _row(
            f"{name}: speed-up over plain Keras (median; each repeat)",
            "",
            f"{t['speedup']:.2f}x ({repeats})",
            ">= 2.5x" if target else "",
        ),
    ]
    if "torch_samples_per_second" in t:
        rows.append(
            _row(
                f"{name}: PyTorch eager reference (samples/s; dlkit / torch)",
                "bfloat16 autocast" if ours != "float32" else "float32",
                f"{t['torch_samples_per_second']:,.0f}; {t['speedup_over_torch']:.2f}x",
            )
        )
    return rows + [
        _row(
            f"{name}: model-FLOP utilization (dlkit / plain)",
            "",
            f"{t['mfu_dlkit']:.0%} / {t['mfu_plain']:.0%}",
        ),
        _row(
            f"{name}: test accuracy, mean ± std over seeds (dlkit / plain)",
            "",
            f"{plus_minus(t, 'dlkit_test_accuracy')} / {plus_minus(t, 'plain_test_accuracy')}",
            "within 0.5 points" if target else "",
        ),
    ]


def _overhead_rows(results: dict[str, Any], ours: str) -> list[dict[str, str]]:
    tracking, comparison, cli = results["tracking"], results["comparison"], results["cli"]
    seconds = tracking.get("training_seconds", math.nan)
    return [
        _row(
            f"MLflow tracking cost (% of a {seconds:.1f}-s training)",
            ours,
            f"{tracking['overhead_percent']:.1f}%",
            "<= 2%",
        ),
        _row(
            "MLflow tracking, first run in a process (s)",
            ours,
            f"{tracking.get('first_run_tracking_seconds', math.nan):.2f}",
        ),
        _row(
            "comparison overhead per child run (s)",
            "float32",
            f"{comparison['overhead_per_child_seconds']:.2f}",
        ),
        _row("`dlkit --help` wall time (s)", "", f"{cli['help_seconds']:.2f}", "<= 1.0"),
        _row("`dlkit recipes` wall time (s)", "", f"{cli['recipes_seconds']:.2f}", "<= 1.5"),
    ]


def format_results(results: dict[str, Any]) -> str:
    """Returns the figures as a plain-text table, with precision and targets beside them."""
    from dlkit.text import text_table

    ours = results.get("precision", "float32")
    rows = [r for name, t in results["throughput"].items() for r in _throughput_rows(name, t, ours)]
    rows += [
        _row(f"matmul peak, {dtype} (GFLOP/s)", dtype, f"{gflops:.1f}")
        for dtype, gflops in results["matmul_peak_gflops"].items()
    ]
    rows += _overhead_rows(results, ours)
    machine = results["machine"]
    repeats = results.get("repeats", 1)
    header = (
        f"dlkit benchmark: {results['dataset']} data, {results['epochs']} epochs x {repeats} "
        f"alternating repeats (seeds 0..{repeats - 1}), TensorFlow {machine['tensorflow']}, "
        f"{machine['processor']}, {machine['gpus']} GPU(s); model-FLOP utilization is "
        "measured against the matmul peak of each path's precision"
    )
    text = header + "\n\n" + text_table(rows)
    if "levers" in results:
        text += "\n\n" + format_levers(results["levers"], results.get("step_profile"))
    return text
