"""Turns a `Recipe` into a `keras.Sequential`, with its optimizer, loss and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import numpy as np

from dlkit.nn.layers import Maxout
from dlkit.nn.optimizers import fused_adam
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
) -> keras.Model:
    """Builds the network a recipe describes, ready for `compile_model`.

    The input normalization is the model's first layer, so a saved model takes
    raw inputs, and every variant of a comparison reads the very same data. A
    registered model (`recipe.model`) is its builder's, inside the same input
    normalization (see `build_registered`).

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
        An uncompiled `keras.Sequential` named after the recipe (a Functional model around a
        registered builder's).

    Example:

    >>> model = build_model(Recipe(depth=2, width=32), (784,), 10)
    >>> model.output_shape
    (None, 10)
    """
    # The hidden layers compute in the recipe's precision (weights stay float32);
    # the input scaling, the softmax output and so the loss stay float32.
    recipe = recipe.resolved()  # what `auto` means on this machine, once
    policy = recipe.precision
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if recipe.model:
        normalize = _input_layers(recipe, input_max, input_mean, input_variance)
        return build_registered(recipe, shape, num_classes, normalize, image_shape)
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


def build_registered(
    recipe: Recipe,
    shape: tuple[int, ...],
    num_classes: int,
    normalize: list[keras.layers.Layer],
    image_shape: Sequence[int] | None,
) -> keras.Model:
    """A registered builder's model, made to read what a preset reads and answer as one does.

    The builder gets each example's shape (the image's, `(height, width, channels)`, where the
    data has one) and builds under the recipe's precision policy. Around its model go the
    recipe's input normalization (and the reshape from the flat examples dlkit feeds), and,
    when its outputs are logits, a float32 softmax: whether they are is read off the model
    itself, from a forward pass on a few random examples. The recipe's weight decay becomes
    an L2 penalty on every kernel the model has.

    Raises:
        DlkitError: The builder returned no `keras.Model`, or one whose output is not one
            score per class, or one with a custom class Keras cannot save and load.
    """
    from dlkit.errors import DlkitError
    from dlkit.recipes.builders import get_builder

    builder = get_builder(recipe.model)
    example = tuple(int(d) for d in image_shape) if image_shape else shape
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(recipe.resolved().precision)
    try:
        inner = builder.function(recipe, example, num_classes)
    finally:
        keras.config.set_dtype_policy(previous)
    if not isinstance(inner, keras.Model):
        raise DlkitError(
            f"The builder of model {recipe.model!r} ({builder.origin}) returned "
            f"{type(inner).__name__}, not a keras.Model."
        )
    check_savable(inner, recipe.model)
    inputs = keras.Input(shape=shape, name="inputs")
    x = inputs
    for layer in normalize:
        x = layer(x)
    if image_shape:
        x = keras.layers.Reshape(example, name="image")(x)
    outputs = inner(x)
    if tuple(outputs.shape[1:]) != (num_classes,):
        raise DlkitError(
            f"The model {recipe.model!r} outputs shape {tuple(outputs.shape)}; a classifier "
            f"of this data outputs one score per class: (None, {num_classes})."
        )
    probabilities = _outputs_probabilities(inner, example)
    finish = keras.layers.Activation("linear" if probabilities else "softmax", dtype="float32")
    model = keras.Model(inputs, finish(outputs), name=recipe.name.replace("-", "_"))
    if recipe.weight_decay:
        for layer in inner._flatten_layers(include_self=False):
            kernel = getattr(layer, "kernel", None)
            if isinstance(kernel, keras.Variable) and kernel.trainable:
                kernel.regularizer = keras.regularizers.L2(recipe.weight_decay)
    return model


def _outputs_probabilities(model: keras.Model, example: tuple[int, ...]) -> bool:
    """Whether `model` ends in a softmax: on random inputs, every row it outputs is
    non-negative and sums to 1 (logits almost never do)."""
    inputs = np.random.default_rng(0).normal(size=(4, *example)).astype("float32")
    rows = np.asarray(keras.ops.convert_to_numpy(model(inputs, training=False)), "float64")
    return bool((rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def check_savable(model: keras.Model, name: str) -> None:
    """Raises `DlkitError` when `model` holds a class of its own (a layer, or the model's
    class) that Keras cannot find again when loading: one not registered with
    `keras.saving.register_keras_serializable`."""
    from dlkit.errors import DlkitError

    for registered, cls in custom_classes(model).items():
        if keras.saving.get_registered_object(registered) is not cls:
            raise DlkitError(
                f"The model {name!r} holds {cls.__module__}.{cls.__qualname__}, which Keras "
                "cannot load back from a saved model: register it, "
                "@keras.saving.register_keras_serializable(package=...) above its class, "
                "with a get_config() returning its constructor's arguments."
            )


def custom_classes(model: keras.Model) -> dict[str, type]:
    """The classes of `model`'s layers (and its own) that are not Keras's, by registered
    name: what a loader needs imported (see `check_savable`)."""
    found = {}
    for layer in model._flatten_layers(include_self=True):
        cls = type(layer)
        if not cls.__module__.startswith("keras."):
            found[keras.saving.get_registered_name(cls)] = cls
    return found


def count_params(
    recipe: Recipe, input_dim: int, num_classes: int, image_shape: Sequence[int] | None = None
) -> int:
    """The trainable parameters of a recipe's network on this data: a preset's counted from its
    fields, a registered model's by building it."""
    if not recipe.model:
        return recipe.param_count(input_dim, num_classes, image_shape)
    model = build_model(
        recipe.replace(normalization="none"), (input_dim,), num_classes, image_shape=image_shape
    )
    return trainable_count(model)


def trainable_count(model: keras.Model) -> int:
    """The trainable parameters a built model holds."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


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


def build_for(recipe: Recipe, data: Dataset) -> keras.Model:
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
    if recipe.resolved().precision == "mixed_float16":
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
