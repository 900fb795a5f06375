"""A recipe as a listing shows it: its layers, activation, regularization and training.

`dlkit recipes` reads these rows; counting parameters here stays pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dlkit.errors import DlkitError
from dlkit.recipes.builders import get_builder
from dlkit.recipes.recipe import Recipe


def describe(
    recipe: Recipe, input_dim: int, num_classes: int, image_shape: Sequence[int] | None = None
) -> dict[str, str]:
    """Returns `recipe` as a line of a listing such as `dlkit recipes`, a column each."""
    if recipe.model:
        return _describe_model(recipe)
    if image_shape is None and (recipe.convolutional or recipe.match_recipe):
        side = math.isqrt(input_dim)  # a listing's --input-dim: a square, one channel
        image_shape = (side, side, 1) if side * side == input_dim else None
    try:
        hidden = recipe.hidden_layers(input_dim, num_classes, image_shape)
        params = f"{recipe.param_count(input_dim, num_classes, image_shape):,}"
    except DlkitError:  # a convnet that does not fit this input
        hidden, params = (recipe.width,) * recipe.depth, "-"
    conv = [f"conv{f}" for f in recipe.conv_filters]
    layers = "-".join(str(n) for n in (input_dim, *conv, *hidden, num_classes))
    activation = recipe.activation if hidden or conv else "-"
    if recipe.activation == "maxout" and hidden:
        activation = f"maxout(k={recipe.maxout_pieces})"
    regularization = []
    if recipe.input_dropout or recipe.dropout:
        regularization.append(f"dropout {recipe.input_dropout:g}/{recipe.dropout:g}")
    if recipe.weight_decay:
        regularization.append(f"L2 {recipe.weight_decay:g}")
    if recipe.early_stopping:
        regularization.append(f"early stop ({recipe.monitor}, patience {recipe.patience})")
    return {
        "name": recipe.name,
        "layers": layers,
        "activation": activation,
        "regularization": ", ".join(regularization) or "-",
        "training": f"{recipe.optimizer} lr {recipe.learning_rate:g}, {recipe.loss}, "
        f"batch {recipe.batch_size}, {recipe.epochs} epochs",
        "params": params,
    }


def _describe_model(recipe: Recipe) -> dict[str, str]:
    """A registered model in a listing: where its builder is, and how it trains (its
    parameters need TensorFlow to count, which a listing does not load)."""
    builder = get_builder(recipe.model)
    return {
        "name": recipe.name,
        "layers": f"model: {builder.origin}",
        "activation": recipe.activation if "activation" in builder.uses else "-",
        "regularization": f"L2 {recipe.weight_decay:g}" if recipe.weight_decay else "-",
        "training": f"{recipe.optimizer} lr {recipe.learning_rate:g}, {recipe.loss}, "
        f"batch {recipe.batch_size}, {recipe.epochs} epochs",
        "params": "-",
    }
