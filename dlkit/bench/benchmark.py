"""Benchmarks: dlkit's training path against plain Keras, measured in one run on one machine.

    dlkit bench
    dlkit bench --json bench.json --dataset ../shared/data/mnist

Every figure is a ratio or a share measured in the same run, so a noisy,
shared machine moves both sides alike.
"""

from __future__ import annotations

import json
import math
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

from dlkit.recipes.recipe import Recipe, get_recipe

# The network of the speed target: 784-500-500-10 ReLU, Adam, batch 128.
TARGET = Recipe(name="mlp-500x2", depth=2, width=500, activation="relu", batch_size=128)


def load_bench_data(source: str):
    """Loads `source` with every training example in the training split (no validation)."""
    from dlkit.data.dataset import load_dataset

    return load_dataset(source, validation_split=0.0)


def plain_keras(recipe: Recipe, data, epochs: int, seed: int) -> dict[str, float]:
    """Trains the same network the way a user writes it: numpy arrays into `model.fit`."""
    import keras

    from dlkit.nn.callbacks import EpochTimer

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


def torch_reference(
    recipe: Recipe, data, epochs: int, seed: int, *, bf16: bool = False
) -> dict[str, float] | None:
    """The same network trained in PyTorch eager (Adam, batch size, epochs), when torch is here.

    Not a dependency: a reference line for what this machine does without
    TensorFlow's per-step costs. `bf16` trains under CPU bfloat16 autocast. It
    runs in a fresh process (`dlkit.bench.torch_reference`): PyTorch and TensorFlow
    in one process can crash each other's native libraries. Returns `None`
    when torch is not importable.
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    info = data.info
    x, y = data.arrays("train")
    x_test, y_test = data.arrays("test")
    spec = {
        "hidden": recipe.hidden_layers(int(np.prod(info.input_shape)), info.num_classes),
        "classes": info.num_classes,
        "learning_rate": recipe.learning_rate,
        "batch_size": recipe.batch_size,
        "epochs": epochs,
        "seed": seed,
        "bf16": bf16,
    }
    with tempfile.TemporaryDirectory(prefix="dlkit-torch-") as tmp:
        arrays = Path(tmp) / "data.npz"
        flat = [a.reshape(len(a), -1) / info.input_max for a in (x, x_test)]
        np.savez(arrays, x=flat[0].astype(np.float32), y=y, x_test=flat[1], y_test=y_test)
        done = subprocess.run(
            [sys.executable, "-m", "dlkit.bench.torch_reference", str(arrays), json.dumps(spec)],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def dlkit_path(recipe: Recipe, data, epochs: int, seed: int) -> dict[str, float]:
    from dlkit.nn.training import fit

    result = fit(recipe.replace(epochs=epochs), data, seed=seed, verbose=0)
    return {
        "samples_per_second": result.samples_per_second,
        "test_accuracy": result.test_accuracy,
        "wall_time": result.wall_time,
    }


# The per-step levers `levers` measures, each against the plain baseline
# (float32, no XLA, one step per call, Keras's Adam, the accuracy metric every batch).
LEVERS = ("bf16", "xla", "steps_per_execution", "fused_adam", "no_batch_metrics")


def lever_run(recipe: Recipe, data, epochs: int, on: frozenset[str], seed: int = 0) -> float:
    """Samples/s of one training with the levers in `on` (after the first, tracing, epoch)."""
    import keras

    from dlkit.nn.callbacks import EpochTimer
    from dlkit.nn.models import build_model, make_loss
    from dlkit.nn.optimizers import fused_adam

    recipe = recipe.replace(precision="mixed_bfloat16" if "bf16" in on else "float32")
    keras.utils.set_random_seed(seed)
    info = data.info
    model = build_model(recipe, info.input_shape, info.num_classes, input_max=info.input_max)
    adam = fused_adam if "fused_adam" in on else keras.optimizers.Adam
    model.compile(
        optimizer=adam(recipe.learning_rate),
        loss=make_loss(recipe),
        metrics=[] if "no_batch_metrics" in on else ["accuracy"],
        steps_per_execution=128 if "steps_per_execution" in on else 1,
        jit_compile="xla" in on,
    )
    timer = EpochTimer()
    model.fit(
        data.pipeline("train", recipe.batch_size, seed=seed),
        epochs=epochs,
        verbose=0,
        shuffle=False,  # the pipeline reshuffles every epoch
        callbacks=[timer],
    )
    return timer.samples_per_second(info.train_size)


def levers(
    recipe: Recipe | None = None, data=None, *, epochs: int = 3, repeats: int = 3
) -> dict[str, Any]:
    """Every lever alone, all together and all but one, timed in alternating rounds.

    Each round times every configuration once, in the same order; a
    configuration's speed-up is the median over rounds of its samples/s over
    the baseline's in the same round.
    """
    recipe = recipe or TARGET
    data = data if data is not None else load_bench_data("synthetic")
    configs = {"baseline": frozenset()}
    configs.update({lever: frozenset({lever}) for lever in LEVERS})
    configs["all"] = frozenset(LEVERS)
    configs.update({f"all but {lever}": frozenset(LEVERS) - {lever} for lever in LEVERS})
    rounds = []
    for seed in range(repeats):
        rounds.append(
            {name: lever_run(recipe, data, epochs, on, seed) for name, on in configs.items()}
        )
    return {
        name: {
            "levers": sorted(on),
            "samples_per_second": statistics.median(r[name] for r in rounds),
            "speedup": statistics.median(r[name] / r["baseline"] for r in rounds),
            "speedup_per_round": [r[name] / r["baseline"] for r in rounds],
        }
        for name, on in configs.items()
    }


def step_profile(
    recipe: Recipe | None = None, data=None, *, steps: int = 50, logdir: str | None = None
):
    """Where one training step's time goes, by TensorFlow operation type, from its profiler.

    Traces `steps` steps of dlkit's training step (one step per call, so each
    step's host-side dispatch shows) with `tf.profiler` and returns the
    operation types' self-time, largest first, as shares of the total.
    """
    import glob
    import json as json_module

    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    from dlkit.nn.models import build_model, compile_model

    recipe = recipe or TARGET
    data = data if data is not None else load_bench_data("synthetic")
    info = data.info
    model = build_model(recipe, info.input_shape, info.num_classes, input_max=info.input_max)
    compile_model(model, recipe, steps_per_execution=1)
    batches = data.pipeline("train", recipe.batch_size, seed=0)
    model.fit(batches.take(20), epochs=1, verbose=0, shuffle=False)  # traced before the profile
    with tempfile.TemporaryDirectory(prefix="dlkit-profile-") as tmp:
        folder = logdir or tmp
        tf.profiler.experimental.start(folder)
        start = time.perf_counter()
        model.fit(batches.take(steps), epochs=1, verbose=0, shuffle=False)
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        path = sorted(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True))[-1]
        raw, _ = plugin.xspace_to_tools_data([path], "framework_op_stats", {})
    table = json_module.loads(raw)
    table = table[0] if isinstance(table, list) else table
    columns = [c["id"] for c in table["cols"]]
    by_type: dict[str, float] = {}
    for row in table["rows"]:
        cells = dict(zip(columns, (c.get("v") if c else None for c in row["c"])))
        if cells.get("type") in (None, "IDLE"):
            continue
        by_type[cells["type"]] = by_type.get(cells["type"], 0.0) + float(cells["total_self_time"])
    total = sum(by_type.values())
    return {
        "steps": steps,
        "wall_ms_per_step": 1000 * wall / steps,
        "op_ms_per_step": total / 1000 / steps,
        "by_type": {
            name: {"ms_per_step": us / 1000 / steps, "share": us / total}
            for name, us in sorted(by_type.items(), key=lambda item: -item[1])
        },
    }


def matmul_peak(n: int = 4096, seconds: float = 3.0, dtype: str = "float32") -> float:
    """Matmul throughput (FLOP/s) of TensorFlow on this machine in `dtype`."""
    import tensorflow as tf

    a, b = (tf.cast(tf.random.normal((n, n)), dtype) for _ in range(2))
    matmul = tf.function(tf.linalg.matmul)
    matmul(a, b).numpy()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        c = matmul(a, b)
        reps += 1
    c.numpy()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def tracking_overhead(recipe: Recipe, data, epochs: int, seed: int) -> dict[str, float]:
    """Time spent in MLflow calls during a tracked training, as a share of its training time.

    Measured on a second run in the process (as every child but the first of a
    comparison); the first run's tracking seconds are returned beside it.
    """
    from dlkit.execution.runs import tracked_fit
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
        tracked_fit(
            tracker, recipe.replace(epochs=1), data, seed=seed, run_name="warm-up", verbose=0
        )
        first_run = TimedTracker.seconds
        TimedTracker.seconds = 0.0
        start = time.perf_counter()
        _, result = tracked_fit(
            tracker, recipe.replace(epochs=epochs), data, seed=seed, run_name="bench", verbose=0
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
    from dlkit.comparison.experiment import parse_experiment

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


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


# The dtype whose matmul peak a precision's model-FLOP utilization is measured against.
PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


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
            f"{_pm(t, 'dlkit_test_accuracy')} / {_pm(t, 'plain_test_accuracy')}",
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


def format_levers(figures: dict[str, Any], profile: dict[str, Any] | None = None) -> str:
    """Returns the lever table (and the step profile's largest operation types) as text."""
    from dlkit.text import text_table

    rows = [
        {
            "configuration": name,
            "samples/s": f"{f['samples_per_second']:,.0f}",
            "vs baseline (median; each round)": f"{f['speedup']:.2f}x ("
            + ", ".join(f"{r:.2f}" for r in f["speedup_per_round"])
            + ")",
        }
        for name, f in figures.items()
    ]
    text = (
        "Per-step levers on the first network (baseline: float32, no XLA, one step per call, "
        "Keras's Adam, accuracy every batch):\n\n" + text_table(rows)
    )
    if profile:
        top = [
            {
                "operation type": name,
                "ms per step": f"{f['ms_per_step']:.3f}",
                "share": f"{f['share']:.0%}",
            }
            for name, f in list(profile["by_type"].items())[:12]
        ]
        text += (
            f"\n\nOne training step under TensorFlow's profiler (dlkit's float32 step, one "
            f"step per call, {profile['steps']} steps, {profile['wall_ms_per_step']:.1f} ms "
            "each), self-time by operation type:\n\n" + text_table(top)
        )
    return text


def _pm(figures: dict[str, float], key: str) -> str:
    std = figures.get(f"{key}_std", math.nan)
    return f"{figures[key]:.4f}" + (f" ± {std:.4f}" if math.isfinite(std) else "")
