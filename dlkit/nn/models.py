"""Turns a `Recipe` into a `keras.Sequential`, with its optimizer, loss and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import numpy as np

from dlkit.nn.layers import Maxout
from dlkit.nn.optimizers import fused_adam
from dlkit.recipes.precision import resolve_precision
from dlkit.recipes.recipe import Recipe

if TYPE_CHECKING:
    from dlkit.data.dataset import Dataset


def build_model(
    recipe: Recipe,
    input_shape: int | Sequence[int],
    num_classes: int,
    *,
    input_max: float = 255.0,
    input_mean: np.ndarray | None = None,
    input_variance: np.ndarray | None = None,
    image_shape: Sequence[int] | None = None,
) -> keras.Sequential:
    """Builds the network a recipe describes, ready for `compile_model`.

    The input normalization is the model's first layer, so a saved model takes
    raw inputs, and every variant of a comparison reads the very same data.

    Args:
        recipe: The recipe to build.
        input_shape: Shape of one example; anything not flat is flattened first.
        num_classes: Size of the softmax output.
        input_max: Largest raw input value, used by `normalization="scale"`.
            Defaults to `255.0`.
        input_mean: Per-feature training mean, needed by `"standardize"`.
        input_variance: Per-feature training variance, needed by `"standardize"`.
        image_shape: (height, width, channels) of each example, which a convnet
            reshapes its (flat) input to. Defaults to `None`.

    Returns:
        An uncompiled `keras.Sequential` named after the recipe.

    Example:

    >>> model = build_model(Recipe(depth=2, width=32), (784,), 10)
    >>> model.output_shape
    (None, 10)
    """
    # The hidden layers compute in the recipe's precision (weights stay float32);
    # the input scaling, the softmax output and so the loss stay float32.
    policy = resolve_precision(recipe.precision)
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    layers: list[keras.layers.Layer] = [keras.Input(shape=shape)]
    if len(shape) > 1:
        layers.append(keras.layers.Flatten())
    layers += _input_layers(recipe, input_max, input_mean, input_variance)
    if recipe.input_dropout:
        layers.append(
            keras.layers.Dropout(recipe.input_dropout, name="input_dropout", dtype=policy)
        )
    weights = {  # every layer's kernel: its initializer, penalty and constraint
        "kernel_initializer": lambda: _initializer(recipe.initializer),
        "kernel_regularizer": lambda: _regularizer(recipe.weight_decay),
        "kernel_constraint": lambda: _constraint(recipe.max_norm),
    }
    if recipe.convolutional:
        layers += _conv_blocks(recipe, image_shape, weights, policy)
    input_dim = int(np.prod(shape))
    for i, units in enumerate(recipe.hidden_layers(input_dim, num_classes, image_shape), 1):
        kernel = {key: make() for key, make in weights.items()}
        own = {"name": f"hidden_{i}", "dtype": policy}
        if recipe.activation == "maxout":
            hidden = Maxout(units, pieces=recipe.maxout_pieces, **kernel, **own)
        else:
            hidden = keras.layers.Dense(units, activation=recipe.activation, **kernel, **own)
        layers.append(hidden)
        if recipe.dropout:
            layers.append(keras.layers.Dropout(recipe.dropout, name=f"dropout_{i}", dtype=policy))
    kernel = {key: make() for key, make in weights.items()}
    layers.append(
        keras.layers.Dense(
            num_classes, activation="softmax", **kernel, name="output", dtype="float32"
        )
    )
    return keras.Sequential(layers, name=recipe.name.replace("-", "_"))


def _conv_blocks(
    recipe: Recipe, image_shape: Sequence[int] | None, weights: dict, policy: str
) -> list[keras.layers.Layer]:
    """A convnet's blocks: the flat input back to its image, each block's convolution and
    pooling, then flat again for the dense layers (dropout after, as Keras's MNIST convnet)."""
    recipe.feature_shapes(image_shape)  # a clear error for data or sizes that do not fit
    height, width, *channels = image_shape
    layers = [keras.layers.Reshape((height, width, channels[0] if channels else 1), name="image")]
    for i, filters in enumerate(recipe.conv_filters, start=1):
        kernel = {key: make() for key, make in weights.items() if key != "kernel_constraint"}
        layers.append(
            keras.layers.Conv2D(
                filters,
                recipe.kernel_size,
                activation=recipe.activation,
                kernel_constraint=_constraint(recipe.max_norm, axis=(0, 1, 2)),
                **kernel,
                name=f"conv_{i}",
                dtype=policy,
            )
        )
        if recipe.pool_size > 1:
            layers.append(
                keras.layers.MaxPooling2D(recipe.pool_size, name=f"pool_{i}", dtype=policy)
            )
    layers.append(keras.layers.Flatten(name="features"))
    if recipe.dropout:
        layers.append(keras.layers.Dropout(recipe.dropout, name="dropout_features", dtype=policy))
    return layers


def _input_layers(
    recipe: Recipe,
    input_max: float,
    input_mean: np.ndarray | None,
    input_variance: np.ndarray | None,
) -> list[keras.layers.Layer]:
    """The input normalization the recipe names, as the model's own first layers."""
    if recipe.normalization == "scale":
        return [keras.layers.Rescaling(1.0 / input_max, name="scale")]
    if recipe.normalization != "standardize":
        return []
    if input_mean is None or input_variance is None:
        raise ValueError(
            "normalization='standardize' needs the training split's per-feature "
            "input_mean and input_variance (load_dataset computes them)."
        )
    return [
        keras.layers.Normalization(
            mean=np.reshape(input_mean, (-1,)),
            variance=np.reshape(input_variance, (-1,)),
            name="standardize",
        )
    ]


def build_for(recipe: Recipe, data: Dataset) -> keras.Sequential:
    """Builds the network a recipe describes for `data`: its input shape, classes and scaling."""
    info = data.info
    return build_model(
        recipe,
        info.input_shape,
        info.num_classes,
        input_max=info.input_max,
        input_mean=data.input_mean,
        input_variance=data.input_variance,
        image_shape=info.image_shape,
    )


def compile_model(
    model: keras.Model,
    recipe: Recipe,
    *,
    steps_per_execution: int = 1,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """Compiles `model` with the recipe's optimizer, loss and an accuracy metric.

    Args:
        model: A model from `build_model`.
        recipe: The recipe it was built from.
        steps_per_execution: Training steps run per call into TensorFlow; more
            steps cut Python overhead without changing the updates. Defaults to `1`.
        jit_compile: Whether to compile with XLA. Defaults to `"auto"`.

    Returns:
        The same model, compiled.
    """
    optimizer = make_optimizer(recipe)
    if resolve_precision(recipe.precision) == "mixed_float16":
        # float16 gradients underflow without it; bfloat16 has float32's range
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=make_loss(recipe),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


def make_optimizer(recipe: Recipe, *, fused: bool = True) -> keras.optimizers.Optimizer:
    """Returns the Keras optimizer a recipe names, at its initial learning rate.

    Args:
        recipe: The recipe.
        fused: Adam as one fused kernel per variable (`fused_adam`), which takes
            one learning rate; `False` gives Keras's own Adam, whose update
            broadcasts a learning rate per packed member. Defaults to `True`.
    """
    lr = recipe.learning_rate
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(lr)
    if recipe.optimizer == "momentum":
        return keras.optimizers.SGD(lr, momentum=recipe.momentum)
    if recipe.optimizer == "nesterov":
        return keras.optimizers.SGD(lr, momentum=recipe.momentum, nesterov=True)
    if recipe.optimizer == "adam" and fused:
        # Keras's Adam, updating each variable in one fused kernel: the same update,
        # a fraction of the per-step cost (see dlkit.nn.optimizers).
        return fused_adam(lr)
    optimizers = {
        "adagrad": keras.optimizers.Adagrad,
        "rmsprop": keras.optimizers.RMSprop,
        "adadelta": keras.optimizers.Adadelta,
        "nadam": keras.optimizers.Nadam,
        "adam": keras.optimizers.Adam,
    }
    return optimizers[recipe.optimizer](lr)


def make_loss(recipe: Recipe) -> keras.losses.Loss:
    """Returns the loss on the softmax output against one-hot targets."""
    if recipe.loss == "mse":
        return keras.losses.MeanSquaredError()
    return keras.losses.CategoricalCrossentropy()


def _initializer(name: str) -> keras.initializers.Initializer:
    # A fresh instance per layer: Keras warns that reusing one instance gives
    # every layer the same draw.
    if name == "large_normal":
        return keras.initializers.RandomNormal(stddev=1.0)
    if name == "random_normal":
        return keras.initializers.RandomNormal(stddev=0.05)
    return keras.initializers.get(name)


def _regularizer(weight_decay: float) -> keras.regularizers.Regularizer | None:
    return keras.regularizers.L2(weight_decay) if weight_decay else None


def _constraint(max_norm: float, axis: int | tuple = 0) -> keras.constraints.Constraint | None:
    # axis=0: the weights into each unit (each maxout piece) are one vector; a convolution's
    # filter is one vector over its kernel's rows, columns and input channels.
    return keras.constraints.MaxNorm(max_norm, axis=axis) if max_norm else None


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` file saved by dlkit (maxout layers included)."""
    return keras.models.load_model(path)
