"""Keras callbacks of dlkit's own: per-layer gradient norms, for the vanishing-gradient lesson."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

GRAD_PREFIX = "grad_norm_"


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
        self.history: list[dict[str, float]] = []

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
        values = self.norms()
        self.history.append(values)
        if logs is not None:
            logs.update(values)
