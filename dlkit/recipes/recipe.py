"""Recipes: validated, flat descriptions of a fully connected network and how to train it.

This module is pure Python on purpose: listing, validating and counting the
parameters of recipes never imports TensorFlow, so `dlkit recipes` starts fast.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dlkit.errors import DlkitError, closest
from dlkit.recipes.builders import ARCHITECTURE, get_builder, list_builders
from dlkit.recipes.fields import (
    BYTES_PER_PARAM,
    CHOICES,
    MAX_DEPTH,
    RANGES,
    TYPE_NAMES,
    check_choice,
    check_range,
    count_dense,
    is_type,
    parse_text,
    physical_memory,
)
from dlkit.recipes.precision import resolve_precision


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A fully connected classifier and the way it is trained.

    Every field is a plain value, so a recipe logs to MLflow as params
    (`dataclasses.asdict`) and overrides go through `dataclasses.replace`
    (or `Recipe.replace`, which also accepts the strings the CLI passes).

    Args:
        name: Label used in logs and reports. Defaults to `"custom"`.
        depth: Number of hidden layers; 0 is softmax regression. Defaults to `3`.
        width: Units per hidden layer. Defaults to `500`.
        widths: Explicit hidden-layer sizes; when non-empty they replace `depth`
            and `width`. Defaults to `()`.
        match_depth: When > 0, the `depth` hidden layers are resized so the
            network has the parameter count of a `match_depth`-layer net of
            `width` units on the same data: the fair "deep vs. wide"
            comparison. Defaults to `0` (use `width` as given).
        match_recipe: When set, the `depth` hidden layers are resized so the
            network has the parameter count of this registered recipe on the
            same data (e.g. a fully connected net the size of `"cnn-relu"`).
            Defaults to `""`.
        conv_filters: Filters of each convolution block, in order; each block
            is a `kernel_size` convolution (no padding) with the recipe's
            activation, then `pool_size` max pooling. Non-empty makes the
            network a convnet over the data's image shape, whose blocks feed
            the `depth` hidden layers (0: straight to the softmax). Defaults
            to `()` (fully connected).
        kernel_size: Side of the square convolution kernels. Defaults to `3`.
        pool_size: Side of the max-pooling window after each convolution;
            1 is no pooling. Defaults to `2`.
        activation: Hidden activation, one of `ACTIVATIONS`. Defaults to `"relu"`.
        maxout_pieces: Linear pieces per unit when `activation="maxout"`.
            Defaults to `2`.
        input_dropout: Dropout rate on the input vector. Defaults to `0.0`.
        dropout: Dropout rate after each hidden layer. Defaults to `0.0`.
        weight_decay: L2 penalty on every kernel. Defaults to `0.0`.
        max_norm: Largest L2 norm allowed for the weights into any unit (the
            max-norm constraint dropout nets train with, Srivastava et al.
            2014); weights are rescaled after each update. Defaults to `0.0`
            (no constraint).
        initializer: Kernel initializer, one of `INITIALIZERS`.
            Defaults to `"glorot_uniform"`.
        loss: `"crossentropy"` or `"mse"`, both on the softmax output against
            one-hot targets. Defaults to `"crossentropy"`.
        optimizer: One of `OPTIMIZERS`. Defaults to `"adam"`.
        learning_rate: Initial learning rate. Defaults to `0.001`.
        momentum: Momentum for `"momentum"` and `"nesterov"`. Defaults to `0.9`.
        lr_decay: Factor the learning rate is multiplied by every
            `lr_decay_epochs` epochs. Defaults to `0.5`.
        lr_decay_epochs: Decay period in epochs; 0 keeps the rate constant.
            Defaults to `0`.
        batch_size: Examples per gradient step; a value at least the training
            set size is full-batch gradient descent. Defaults to `128`.
        epochs: Maximum number of epochs. Defaults to `20`.
        early_stopping: Stop when `monitor` stops improving. Defaults to `False`.
        monitor: Quantity early stopping watches, one of `MONITORS`.
            Defaults to `"val_loss"`.
        patience: Epochs without improvement before stopping. Defaults to `3`.
        restore_best_weights: Roll back to the best epoch when stopping.
            Defaults to `True`.
        normalization: Input preprocessing built into the model: `"none"`
            (raw values), `"scale"` (divide by the data's maximum value, e.g.
            255) or `"standardize"` (per-feature mean 0, variance 1 from the
            training split). Defaults to `"scale"`.
        precision: Number format of the hidden layers' arithmetic:
            `"float32"`, `"mixed_bfloat16"`, `"mixed_float16"` (with loss
            scaling) or `"auto"` (bfloat16 where the hardware has it, see
            `dlkit.recipes.precision.resolve_precision`). Weights, the softmax output
            and the loss stay float32. Defaults to `"float32"`.
        model: The name of a registered Keras model builder (`dlkit.register_model`) that
            defines the architecture instead of the fields above; the recipe still says
            how it trains. Only the architecture fields the builder declares it uses may
            be set. Defaults to `""` (the fully connected net or convnet the fields describe).

    Example:

    >>> recipe = Recipe(depth=3, width=500, activation="relu", dropout=0.2)
    >>> recipe.param_count(input_dim=784, num_classes=10)
    898510
    """

    name: str = "custom"
    depth: int = 3
    width: int = 500
    widths: tuple[int, ...] = ()
    match_depth: int = 0
    match_recipe: str = ""
    conv_filters: tuple[int, ...] = ()
    kernel_size: int = 3
    pool_size: int = 2
    activation: str = "relu"
    maxout_pieces: int = 2
    input_dropout: float = 0.0
    dropout: float = 0.0
    weight_decay: float = 0.0
    max_norm: float = 0.0
    initializer: str = "glorot_uniform"
    loss: str = "crossentropy"
    optimizer: str = "adam"
    learning_rate: float = 0.001
    momentum: float = 0.9
    lr_decay: float = 0.5
    lr_decay_epochs: int = 0
    batch_size: int = 128
    epochs: int = 20
    early_stopping: bool = False
    monitor: str = "val_loss"
    patience: int = 3
    restore_best_weights: bool = True
    normalization: str = "scale"
    precision: str = "float32"
    model: str = ""

    def __post_init__(self) -> None:
        self._coerce_types()
        for name, choices in CHOICES:
            check_choice(name, getattr(self, name), choices)
        for name, bounds in RANGES:
            check_range(name, getattr(self, name), **bounds)
        self._check_widths()
        self._check_conv()
        self._check_sizing()
        if self.model:
            self._check_model()

    def _check_model(self) -> None:
        """A registered model's recipe sets only the architecture fields its builder reads."""
        builder = get_builder(self.model)
        for field in ARCHITECTURE:
            if field not in builder.uses and getattr(self, field) != _DEFAULTS[field]:
                reads = ", ".join(builder.uses) or "none of them"
                raise DlkitError(
                    f"Recipe field `{field}` is set ({field}={getattr(self, field)!r}), but "
                    f"the model {self.model!r} does not use it: of the architecture fields "
                    f"its builder reads {reads}. Leave `{field}` out, or declare it: "
                    f"@dlkit.register_model({self.model!r}, uses=[..., {field!r}])."
                )

    def _coerce_types(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = _FIELD_TYPES[field.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, field.name, float(value))
            elif expected is tuple and isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
            elif not is_type(value, expected):
                raise DlkitError(
                    f"Recipe field `{field.name}` must be {TYPE_NAMES[expected]}. "
                    f"Received: {field.name}={value!r}"
                )

    def _check_widths(self) -> None:
        if len(self.widths) > MAX_DEPTH:
            raise DlkitError(
                f"Recipe field `widths` lists {len(self.widths)} layers; at most {MAX_DEPTH}."
            )
        for units in self.widths:
            if not isinstance(units, int) or isinstance(units, bool) or units < 1:
                raise DlkitError(
                    "Recipe field `widths` must hold positive whole numbers of units. "
                    f"Received: widths={self.widths!r}"
                )

    def _check_sizing(self) -> None:
        """`widths`, `match_depth` and `match_recipe` each set the hidden widths: one at most."""
        if sum(map(bool, (self.widths, self.match_depth, self.match_recipe))) > 1:
            raise DlkitError(
                "Recipe fields `widths`, `match_depth` and `match_recipe` cannot be combined: "
                "each sets the hidden widths. Received: "
                f"widths={self.widths!r}, match_depth={self.match_depth}, "
                f"match_recipe={self.match_recipe!r}"
            )
        for name in ("match_recipe", "match_depth"):
            if getattr(self, name) and self.depth == 0:
                raise DlkitError(
                    f"Recipe field `{name}` needs at least one hidden layer to resize. "
                    f"Received: depth=0, {name}={getattr(self, name)!r}"
                )

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate in `epoch` (0-based), after its step decay (Keras's
        `LearningRateScheduler` and a pack both read it here)."""
        if not self.lr_decay_epochs:
            return self.learning_rate
        return self.learning_rate * self.lr_decay ** (epoch // self.lr_decay_epochs)

    def replace(self, **overrides: Any) -> Recipe:
        """Returns a copy with `overrides` applied; string values are parsed by field type.

        Unknown field names raise `DlkitError` naming the closest fields.
        """
        return dataclasses.replace(self, **coerce_overrides(overrides))

    def resolved(self) -> Recipe:
        """Returns this recipe as it runs on this machine: `precision="auto"` replaced by what
        it means here (see `resolve_precision`), or itself when nothing is left to resolve.

        Resolved once where a training enters dlkit (a comparison's plan, `fit`, `build_model`),
        so that what is hashed, logged and trained is one value.
        """
        precision = resolve_precision(self.precision)
        return (
            self if precision == self.precision else dataclasses.replace(self, precision=precision)
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns the recipe as plain values (what MLflow logs as params)."""
        return dataclasses.asdict(self)

    def applicable(self) -> dict[str, Any]:
        """Returns the fields that take effect in this recipe (what a run logs as params).

        A softmax regression has no activation or width, momentum belongs to
        the momentum optimizers, patience to early stopping, and so on, so a
        run's params say what was trained. `to_dict()` keeps every field.
        """
        unused = self._unused_architecture()
        if self.optimizer not in ("momentum", "nesterov"):
            unused.add("momentum")
        if not self.lr_decay_epochs:
            unused.add("lr_decay")
        if not self.early_stopping:
            unused |= {"monitor", "patience", "restore_best_weights"}
        return {key: value for key, value in self.to_dict().items() if key not in unused}

    def _unused_architecture(self) -> set[str]:
        if self.model:  # its builder reads the fields it declared, and no other
            return set(ARCHITECTURE) - set(get_builder(self.model).uses)
        unused = {"model"}
        if self.widths:
            unused |= {"depth", "width", "match_depth", "match_recipe"}
        else:
            unused.add("widths")
            unused |= {f for f in ("match_depth", "match_recipe") if not getattr(self, f)}
        if not (self.widths or self.depth):
            unused |= {"width", "maxout_pieces"}
            if not self.convolutional:  # a softmax regression
                unused |= {"activation", "dropout"}
        if not self.convolutional:
            unused |= {"conv_filters", "kernel_size", "pool_size"}
        if self.activation != "maxout":
            unused.add("maxout_pieces")
        return unused

    def _check_conv(self) -> None:
        for filters in self.conv_filters:
            if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
                raise DlkitError(
                    "Recipe field `conv_filters` must hold positive whole numbers of filters. "
                    f"Received: conv_filters={self.conv_filters!r}"
                )
        if self.conv_filters and self.activation == "maxout":
            raise DlkitError(
                "Recipe field `activation` maxout is for fully connected layers; a convnet "
                "(conv_filters) takes relu, sigmoid, tanh or another elementwise activation."
            )

    @property
    def convolutional(self) -> bool:
        """Whether the network starts with convolution blocks (`conv_filters`)."""
        return bool(self.conv_filters)

    def feature_shapes(self, image_shape: Sequence[int] | None) -> list[tuple[int, int, int]]:
        """Returns the shape after each convolution block, on images of `image_shape`.

        Raises:
            DlkitError: for data without an image shape, a kernel larger than
                what reaches it, or pooling that leaves less than one pixel.
        """
        if image_shape is None:
            raise DlkitError(
                f"Recipe {self.name!r} is a convnet (conv_filters), and this data has no image "
                "shape: its examples are flat vectors. Use image data (digits, MNIST, a TFDS "
                "image set, or an .npz file whose x arrays are N x height x width)."
            )
        height, width = int(image_shape[0]), int(image_shape[1])
        channels = int(image_shape[2]) if len(image_shape) > 2 else 1
        shapes = []
        for i, filters in enumerate(self.conv_filters, start=1):
            if self.kernel_size > min(height, width):
                raise DlkitError(
                    f"Recipe {self.name!r}: convolution block {i} gets {height}x{width} "
                    f"pixels, smaller than its kernel_size={self.kernel_size}. Use a smaller "
                    "kernel_size or pool_size, or fewer conv_filters."
                )
            height, width = height - self.kernel_size + 1, width - self.kernel_size + 1
            if self.pool_size > min(height, width):
                raise DlkitError(
                    f"Recipe {self.name!r}: pooling after convolution block {i} gets "
                    f"{height}x{width} pixels, less than its pool_size={self.pool_size}: it "
                    "would leave less than one pixel. Use a smaller pool_size or kernel_size, "
                    "or fewer conv_filters."
                )
            height, width, channels = height // self.pool_size, width // self.pool_size, filters
            shapes.append((height, width, channels))
        return shapes

    def _head(self, input_dim: int, image_shape: Sequence[int] | None) -> tuple[int, int]:
        """The convolution blocks' parameters, and the size of what they hand the dense
        layers (the input itself for a fully connected net)."""
        if not self.convolutional:
            return 0, input_dim
        channels = int(image_shape[2]) if image_shape and len(image_shape) > 2 else 1
        params = 0
        for shape in self.feature_shapes(image_shape):
            params += (self.kernel_size**2 * channels + 1) * shape[2]
            channels = shape[2]
        return params, math.prod(shape)

    def hidden_layers(
        self, input_dim: int, num_classes: int, image_shape: Sequence[int] | None = None
    ) -> tuple[int, ...]:
        """Returns the hidden-layer widths for data of this input and output size (none for a
        registered model, whose builder defines its layers)."""
        if self.model:
            return ()
        if self.widths:
            return self.widths
        if not (self.match_depth or self.match_recipe):
            return (self.width,) * self.depth
        conv, flat = self._head(input_dim, image_shape)
        if self.match_recipe:
            target = get_recipe(self.match_recipe).param_count(input_dim, num_classes, image_shape)
        else:
            target = conv + count_dense(
                flat, num_classes, (self.width,) * self.match_depth, self._pieces
            )

        def params(units: int) -> int:
            return conv + count_dense(flat, num_classes, (units,) * self.depth, self._pieces)

        # The count grows with the width, so bisect for the last width at or
        # under the target, then keep whichever neighbour lands closer.
        low, high = 1, 1
        while params(high) < target:
            high *= 2
        while low < high:
            mid = (low + high + 1) // 2
            if params(mid) <= target:
                low = mid
            else:
                high = mid - 1
        best = min((low, low + 1), key=lambda units: abs(params(units) - target))
        return (best,) * self.depth

    def param_count(
        self, input_dim: int, num_classes: int, image_shape: Sequence[int] | None = None
    ) -> int:
        """Returns the number of trainable parameters for this input and output size (and
        image shape, for a convnet). A registered model's are counted by building it,
        which needs TensorFlow: `dlkit.nn.models.count_params` counts either kind."""
        if self.model:
            raise DlkitError(
                f"Recipe {self.name!r} is the registered model {self.model!r}: its parameters "
                "are counted by building it (dlkit.nn.models.count_params), and a match_recipe "
                "must be a preset."
            )
        conv, flat = self._head(input_dim, image_shape)
        hidden = self.hidden_layers(input_dim, num_classes, image_shape)
        return conv + count_dense(flat, num_classes, hidden, self._pieces)

    def check_size(
        self, input_dim: int, num_classes: int, image_shape: Sequence[int] | None = None
    ) -> None:
        """Raises `DlkitError` when this network does not fit the data (a convnet on flat
        data, a kernel larger than the image) or this machine's memory.

        The memory estimate is `BYTES_PER_PARAM` bytes per parameter, against the
        physical memory, before anything is allocated. A registered model is the user's own
        and is not estimated.
        """
        if self.model:
            return
        params = self.param_count(input_dim, num_classes, image_shape)
        needed = params * BYTES_PER_PARAM
        memory = physical_memory()
        if memory and needed > memory:
            raise DlkitError(
                f"Recipe {self.name!r} has {params:,} parameters on {input_dim} inputs: training "
                f"it needs about {needed / 2**30:,.1f} GiB, more than this machine's "
                f"{memory / 2**30:,.1f} GiB. Use a smaller depth or width."
            )

    @property
    def _pieces(self) -> int:
        return self.maxout_pieces if self.activation == "maxout" else 1


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Recipe)}


def _field_types() -> dict[str, type]:
    # The dataclass annotations are the one field list; `tuple[int, ...]` reads as tuple.
    hints = typing.get_type_hints(Recipe)
    return {
        field.name: typing.get_origin(hints[field.name]) or hints[field.name]
        for field in dataclasses.fields(Recipe)
    }


_FIELD_TYPES = _field_types()
FIELDS = tuple(_FIELD_TYPES)


def coerce_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Checks override names and parses string values by field type.

    Strings come from the command line and YAML-less sources (`"0.5"`,
    `"true"`, `"512,256"`); values of the right type pass through unchanged.
    """
    parsed = {}
    for key, value in overrides.items():
        if key not in _FIELD_TYPES:
            raise DlkitError(
                f"Unknown recipe field {key!r}.{closest(key, FIELDS)} "
                f"Valid fields: {', '.join(FIELDS)}."
            )
        parsed[key] = parse_text(key, value, _FIELD_TYPES[key]) if isinstance(value, str) else value
    return parsed


def parse_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """Parses `field=value` strings (the CLI's `--set`) into typed overrides."""
    overrides: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DlkitError(
                f"Overrides are written field=value (e.g. dropout=0.5). Received: {item!r}"
            )
        overrides[key.strip()] = value.strip()
    return coerce_overrides(overrides)


# The registry: three verbs, keyed by name. Presets themselves live in
# dlkit/recipes/presets.py as small functions that state only what differs; the
# package's __init__ imports that module, so they are registered before any
# lookup without this module importing it back.
_REGISTRY: dict[str, Callable[[], Recipe]] = {}


def register_recipe(
    fn: Callable[[], Recipe] | None = None, *, name: str | None = None, replace: bool = False
) -> Callable[..., Any]:
    """Registers a function returning a `Recipe` under `name`.

    Args:
        fn: A function with no arguments that returns a `Recipe`.
        name: Registry key. Defaults to the function's name with `_` as `-`.
        replace: Allow replacing a recipe already registered under `name`.
            Defaults to `False`: a second registration of a name is a mistake
            (two presets silently shadowing each other) and raises `DlkitError`.

    Returns:
        The function, unchanged, so this works as a decorator.

    Example:

    >>> @register_recipe
    ... def tiny_relu():
    ...     return Recipe(depth=2, width=32)
    >>> get_recipe("tiny-relu").width
    32
    """

    def decorate(function: Callable[[], Recipe]) -> Callable[[], Recipe]:
        key = name or function.__name__.replace("_", "-")
        if key in _REGISTRY and not replace:
            raise DlkitError(
                f"A recipe named {key!r} is already registered. Choose another name, or "
                "pass replace=True to register_recipe to replace it on purpose."
            )
        _REGISTRY[key] = function
        return function

    return decorate(fn) if fn is not None else decorate


def unregister_recipe(name: str) -> None:
    """Removes the recipe `name` from the registry (for tests and interactive sessions)."""
    if name not in _REGISTRY:
        raise DlkitError(f"Unknown recipe {name!r}.{closest(name, _REGISTRY)}")
    del _REGISTRY[name]


def get_recipe(name: str, /, **overrides: Any) -> Recipe:
    """Returns the preset `name` with `overrides` applied (the user's values win).

    Args:
        name: A registered recipe name, see `list_recipes()`.
        **overrides: Recipe fields to change; strings are parsed by field type.
            `name=...` renames the result.

    Returns:
        A validated `Recipe` whose `name` is `name`, unless overridden.

    Example:

    >>> get_recipe("deep-relu", dropout=0.2).dropout
    0.2
    """
    if name in _REGISTRY:
        return dataclasses.replace(_REGISTRY[name](), name=name).replace(**overrides)
    models = {builder.name for builder in list_builders()}  # installed packages' included
    if name in models:
        return Recipe(name=name, model=name).replace(**overrides)
    raise DlkitError(
        f"Unknown recipe {name!r}.{closest(name, [*_REGISTRY, *models])} "
        "Run `dlkit recipes` to list them all (with --import MODULE for your own models)."
    )


def list_recipes() -> list[str]:
    """Returns the registered recipe names, in registration order, then the registered
    models' (`dlkit.register_model`; those of installed packages' entry points included)."""
    return [*_REGISTRY, *(b.name for b in list_builders() if b.name not in _REGISTRY)]
