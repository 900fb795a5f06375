"""Which recipes train together in one pack: the fields a member may have of its own."""

from __future__ import annotations

import dataclasses

from dlkit.recipes.recipe import Recipe
from dlkit.recipes.train_options import TrainOptions

# Fields the members of one pack may differ in: each acts on the member's own
# weights or units element by element, draws its initial weights, or says when it stops.
# (A maxout member's kernels are wider, so maxout packs with maxout only: `pack_shape`.)
PER_MEMBER = (
    "name",
    "activation",
    "initializer",
    "learning_rate",
    "lr_decay",
    "lr_decay_epochs",
    "weight_decay",
    "dropout",
    "input_dropout",
    "max_norm",
    "epochs",
    "early_stopping",
    "monitor",
    "patience",
    "restore_best_weights",
)
PER_MEMBER_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Recipe) if f.name in PER_MEMBER
}


def pack_shape(recipe: Recipe) -> Recipe:
    """Returns what the members of a pack share: the recipe less its per-member fields."""
    shared = recipe.resolved().replace(**PER_MEMBER_DEFAULTS)
    if recipe.activation == "maxout":  # kernels `maxout_pieces` times as wide, then a max
        return shared.replace(activation="maxout")
    return shared


def trains_alone(recipe: Recipe, options: TrainOptions | None = None) -> bool:
    """Whether a training needs Keras's own `fit` rather than a pack: a recipe that is not
    `packable`, gradient norms (a Keras callback), or several devices."""
    options = options or TrainOptions()
    return not packable(recipe) or options.gradient_norms or not options.one_device


def packable(recipe: Recipe) -> bool:
    """Whether `recipe` trains in a pack.

    `mixed_float16` needs a loss scale that one step shares, so such a recipe
    trains alone, as Keras trains it; so does a convnet (the packed trainer
    stacks dense kernels only), and a registered model (any Keras model).
    """
    if recipe.model or recipe.convolutional:
        return False
    return recipe.resolved().precision != "mixed_float16"
