"""Adam as one fused TensorFlow kernel per variable, for the per-step cost of small nets.

Keras 3's Adam updates each variable with about ten separate operations (two moment
updates, the bias-corrected step, the assignment): on 784-500-500-10 at batch 128,
TensorFlow's profiler puts those at about half of a training step's operation time
on CPU (`dlkit.bench.levers.step_profile`). TensorFlow's `ResourceApplyAdam` kernel does the
same arithmetic in one operation.
"""

from __future__ import annotations

import types

import keras
import tensorflow as tf


def fused_adam(learning_rate: float = 0.001, **kwargs) -> keras.optimizers.Adam:
    """Returns a `keras.optimizers.Adam` that updates each variable with the fused kernel.

    The same update as Keras's Adam (bias-corrected step size, epsilon added to
    the root of the second moment), equal to float rounding. It stays a plain
    `Adam`, so a saved model loads anywhere, without dlkit. For the
    TensorFlow backend; without amsgrad.

    Example:

    >>> model.compile(optimizer=fused_adam(1e-3), loss="categorical_crossentropy")
    """
    optimizer = keras.optimizers.Adam(learning_rate, **kwargs)
    if optimizer.amsgrad:
        raise ValueError("fused_adam does not implement amsgrad; use keras.optimizers.Adam.")
    # Keras has no public hook for a built-in optimizer's update rule: the method is replaced
    # on this one instance, so the saved model still names a plain Adam.
    optimizer.update_step = types.MethodType(_fused_update_step, optimizer)
    return optimizer


# What the fused update reads of Keras's Adam: private names, so a Keras that renames them
# gets its own update instead (tests/test_models.py fails first, naming which is gone).
KERAS_NAMES = ("_momentums", "_velocities", "_get_variable_index")


def _fused_update_step(self: keras.optimizers.Adam, gradient, variable, learning_rate) -> None:
    if not all(hasattr(self, name) for name in KERAS_NAMES):  # checked as the step is traced
        return keras.optimizers.Adam.update_step(self, gradient, variable, learning_rate)
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    index = self._get_variable_index(variable)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle,
        m=self._momentums[index].handle,
        v=self._velocities[index].handle,
        beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
        beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
        lr=tf.cast(learning_rate, dtype),
        beta1=tf.cast(self.beta_1, dtype),
        beta2=tf.cast(self.beta_2, dtype),
        epsilon=tf.cast(self.epsilon, dtype),
        grad=tf.cast(gradient, dtype),
        use_locking=False,
    )
