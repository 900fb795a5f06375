"""Keras callbacks of dlkit's own: validation, per-epoch logging, per-layer gradient norms."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from dlkit import signals
from dlkit.keys import GRAD_PREFIX

SCORE_CHUNK = 8192  # examples per call when scoring a split


def score(model: keras.Model, x, y) -> dict[str, float]:
    """Returns what `model.evaluate(x, y)` returns: its compiled loss and metrics on `(x, y)`.

    The model's own `test_step` (loss with any weight penalty, metrics
    weighted by examples), traced once per model without AutoGraph (as Keras
    traces its own steps) and called once per `SCORE_CHUNK` examples on
    tensors already in memory. Keras's `evaluate` opens a dataset iterator
    and runs its callback machinery on every call, about 40 ms: more than a
    whole epoch of a small net on small data.

    Args:
        model: A compiled model.
        x: Inputs, a tensor.
        y: One-hot targets, a tensor.
    """
    step = getattr(model, "_dlkit_test_step", None)
    if step is None:
        signature = [tuple(tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in (x, y))]
        step = tf.function(model.test_step, input_signature=signature, autograph=False)
        model._dlkit_test_step = step
    model.reset_metrics()
    for start in range(0, int(x.shape[0]), SCORE_CHUNK):
        step((x[start : start + SCORE_CHUNK], y[start : start + SCORE_CHUNK]))
    return {name: float(value) for name, value in model.get_metrics_result().items()}


class Validation(keras.callbacks.Callback):
    """Scores a held-out split after every epoch into the epoch's logs, as `val_<metric>`.

    The values `fit(validation_data=...)` logs, computed by `score` instead
    of a Keras `evaluate` per epoch. Put it before every callback that reads
    them (early stopping, loggers).

    Args:
        x: Inputs of the split, a tensor.
        y: One-hot targets of the split, a tensor.
    """

    def __init__(self, x, y):
        super().__init__()
        self.x = x
        self.y = y

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update({f"val_{name}": v for name, v in score(self.model, self.x, self.y).items()})


class GradientNorms(keras.callbacks.Callback):
    """Measures the gradient norm of every layer's kernel on a fixed batch.

    Before training (epoch 0) and after every epoch, the gradient of the
    training loss with respect to each Dense/Maxout kernel is computed on the
    same `batch` examples, and its L2 norm is put in the epoch's logs as
    `grad_norm_1` (nearest the input) ... `grad_norm_<L>` (the output layer).
    Logged by dlkit's MLflow callback like any other metric, so MLflow holds
    one curve per layer; `initial` keeps the epoch-0 values.

    Args:
        x: Inputs of the fixed batch.
        y: One-hot targets of the fixed batch.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        super().__init__()
        self.x = tf.constant(x, tf.float32)
        self.y = tf.constant(y, tf.float32)
        self.initial: dict[str, float] = {}

    def norms(self) -> dict[str, float]:
        kernels = [layer.kernel for layer in self.model.layers if hasattr(layer, "kernel")]
        with tf.GradientTape() as tape:
            predictions = self.model(self.x, training=False)
            loss = self.model.loss(self.y, predictions)
        gradients = tape.gradient(loss, kernels)
        return {
            f"{GRAD_PREFIX}{i}": float(tf.norm(g)) if g is not None else 0.0
            for i, g in enumerate(gradients, start=1)
        }

    def on_train_begin(self, logs=None):
        self.initial = self.norms()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.norms())


class EpochLogger(keras.callbacks.Callback):
    """Hands each epoch's Keras logs to `log(metrics, step)`, step = epoch number (1-based).

    The sink is the tracking side's (e.g. `functools.partial(tracker.log_metrics,
    run_id)`), so Keras meets MLflow through this one callback and neither
    module imports the other.

    Args:
        log: Called once per epoch with the epoch's metrics and its number.
    """

    def __init__(self, log: Callable[..., None]):
        super().__init__()
        self.log = log

    def on_epoch_end(self, epoch, logs=None):
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        if metrics:
            self.log(metrics, step=epoch + 1)


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch's training steps (validation excluded)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(getattr(self, "_last", time.perf_counter()) - self._start)

    def samples_per_second(self, samples_per_epoch: int) -> float:
        timed = self.seconds[1:] or self.seconds  # the first epoch includes tracing
        return samples_per_epoch * len(timed) / max(sum(timed), 1e-9)


class StopOnSignal(keras.callbacks.Callback):
    """Raises the interrupt at the next step if a signal's own exception was lost.

    Python drops an exception raised inside a garbage-collection callback, and
    a signal can land in one; `dlkit.signals` still remembers it.
    """

    def on_train_batch_end(self, batch, logs=None):
        signals.check()

    def on_epoch_end(self, epoch, logs=None):
        signals.hold()
        signals.check()
