"""Training throughput on one network: plain Keras, dlkit's own path and PyTorch, each on the
same data and seed, and the machine's matmul peak they are a share of.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dlkit.recipes.recipe import Recipe

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


# The dtype whose matmul peak a precision's model-FLOP utilization is measured against.
PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
