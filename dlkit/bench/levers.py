"""What each speed lever buys: a training with one lever turned off at a time, and a step's profile.

The levers are dlkit's own choices on its training path (bfloat16, XLA, steps per call, the
fused Adam update, no per-batch metrics); each is measured against all of them on, in one run.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from typing import Any

from dlkit.bench.throughput import TARGET, load_bench_data
from dlkit.recipes.recipe import Recipe

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


def plus_minus(figures: dict[str, float], key: str) -> str:
    std = figures.get(f"{key}_std", math.nan)
    return f"{figures[key]:.4f}" + (f" ± {std:.4f}" if math.isfinite(std) else "")
