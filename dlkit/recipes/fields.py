"""The values a recipe's fields may take: their choices and ranges, and text read by type.

Pure data and checks, without the `Recipe` itself, so that a listing, the command line's
options and the recipe's own validation read one table.
"""

from __future__ import annotations

import math
import os
from typing import Any

from dlkit.errors import DlkitError, closest

ACTIVATIONS = (
    "sigmoid",
    "relu",
    "tanh",
    "leaky_relu",
    "elu",
    "selu",
    "softplus",
    "linear",
    "maxout",
)
INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_normal",
    "random_normal",  # stddev 0.05, Keras's default for RandomNormal
    "large_normal",  # stddev 1.0: the "large random" of the initialization lesson
    "zeros",
)
LOSSES = ("crossentropy", "mse")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "nadam")
NORMALIZATIONS = ("none", "scale", "standardize")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
MAX_DEPTH = 1000  # hidden layers; far past where any lesson needs them


# What each choice field accepts, and each number field's range, checked in this order.
CHOICES = (
    ("activation", ACTIVATIONS),
    ("initializer", INITIALIZERS),
    ("loss", LOSSES),
    ("optimizer", OPTIMIZERS),
    ("normalization", NORMALIZATIONS),
    ("monitor", MONITORS),
    ("precision", PRECISIONS),
)
RANGES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("depth", {"low": 0, "high": MAX_DEPTH}),
    ("width", {"low": 1}),
    ("match_depth", {"low": 0, "high": MAX_DEPTH}),
    ("maxout_pieces", {"low": 2}),
    ("kernel_size", {"low": 1}),
    ("pool_size", {"low": 1}),
    ("input_dropout", {"low": 0.0, "high": 1.0, "high_open": True}),
    ("dropout", {"low": 0.0, "high": 1.0, "high_open": True}),
    ("weight_decay", {"low": 0.0}),
    ("max_norm", {"low": 0.0}),
    ("learning_rate", {"low": 0.0, "low_open": True}),
    ("momentum", {"low": 0.0, "high": 1.0, "high_open": True}),
    ("lr_decay", {"low": 0.0, "high": 1.0, "low_open": True}),
    ("lr_decay_epochs", {"low": 0}),
    ("batch_size", {"low": 1}),
    ("epochs", {"low": 1}),
    ("patience", {"low": 0}),
)


# Bytes of memory per parameter while training: float32 weights, gradients
# and up to two optimizer slots (Adam), with room for Keras's copies.
BYTES_PER_PARAM = 24


def physical_memory() -> int | None:
    """Returns this machine's physical memory in bytes, or `None` where it cannot tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): do not guess
        return None


def count_dense(input_dim: int, num_classes: int, hidden: tuple[int, ...], pieces: int) -> int:
    total, fan_in = 0, input_dim
    for units in hidden:
        total += (fan_in + 1) * units * pieces
        fan_in = units
    return total + (fan_in + 1) * num_classes


TYPE_NAMES = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    tuple: "a list of whole numbers",
}


def is_type(value: Any, expected: type) -> bool:
    if expected in (int, float) and isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, float) and math.isfinite(value)
    return isinstance(value, expected)


def check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DlkitError(
            f"Unknown {field} {value!r}.{closest(value, choices)} "
            f"Expected one of: {', '.join(choices)}."
        )


def check_range(
    field: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        right = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        expected = " and ".join(part for part in (left, right) if part)
        raise DlkitError(
            f"Recipe field `{field}` is out of range: expected a value {expected}. "
            f"Received: {field}={value!r}"
        )


def parse_text(field: str, text: str, expected: type) -> Any:
    """Reads a field's value of type `expected` from text (`"0.5"`, `"true"`, `"512,256"`)."""
    try:
        if expected is str:
            return text
        if expected is bool:
            lowered = text.lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
            raise ValueError(text)
        if expected is int:
            return int(text)
        if expected is float:
            return float(text)
        parts = text.replace("x", ",").replace(" ", ",").split(",")
        return tuple(int(part) for part in parts)
    except ValueError:
        raise DlkitError(
            f"Recipe field `{field}` must be {TYPE_NAMES[expected]}. Received: {field}={text!r}"
        ) from None
