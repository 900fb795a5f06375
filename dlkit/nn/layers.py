"""Maxout: a dense layer whose units each output the max of k linear pieces."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dlkit")
class Maxout(keras.layers.Layer):
    """Dense layer with maxout units (Goodfellow et al., 2013).

    Each of the `units` outputs is the maximum of `pieces` affine functions of
    the input. ReLU is the special case of two pieces with one fixed at zero.

    Args:
        units: Number of output units.
        pieces: Affine pieces per unit. Defaults to `2`.
        kernel_initializer: Initializer for the kernel. Defaults to `"glorot_uniform"`.
        kernel_regularizer: Regularizer for the kernel. Defaults to `None`.

    Example:

    >>> layer = Maxout(4, pieces=3)
    >>> tuple(layer(ops.ones((2, 5))).shape)
    (2, 4)
    """

    def __init__(
        self,
        units: int,
        pieces: int = 2,
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if units < 1 or pieces < 2:
            raise ValueError(
                f"Maxout needs units >= 1 and pieces >= 2. Received: units={units}, pieces={pieces}"
            )
        self.units = units
        self.pieces = pieces
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)

    def build(self, input_shape):
        # One wide matmul for all pieces: (in, units * pieces), reshaped after.
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], self.units * self.pieces),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.units * self.pieces,), initializer="zeros"
        )

    def call(self, inputs):
        z = ops.matmul(inputs, self.kernel) + self.bias
        z = ops.reshape(z, (-1, self.units, self.pieces))
        return ops.max(z, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "pieces": self.pieces,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            }
        )
        return config
