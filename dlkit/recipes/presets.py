"""The named recipes: each states only what differs from the `Recipe` defaults.

The main grid crosses the design card's axes: deep vs. wide, sigmoid vs. ReLU,
dropout or not, early stopping or not. "wide" is one hidden layer sized to the
parameter count of the three-layer "deep" net on whatever data it is built
for, so deep vs. wide is always compared at an equal parameter budget.
"""

from __future__ import annotations

import itertools

from dlkit.recipes.recipe import Recipe, register_recipe

DEEP = {"depth": 3, "width": 500}
WIDE = {"depth": 1, "width": 500, "match_depth": 3}
DROPOUT = {"input_dropout": 0.2, "dropout": 0.5}  # Srivastava et al. 2014's rates
EARLY_STOP = {"early_stopping": True, "monitor": "val_loss", "patience": 3}


@register_recipe
def softmax_regression() -> Recipe:
    """No hidden layer: the baseline every network must beat."""
    return Recipe(depth=0)


def _register_grid() -> None:
    shapes = {"deep": DEEP, "wide": WIDE}
    activations = ("sigmoid", "relu")
    extras = {"": {}, "-dropout": DROPOUT}
    stops = {"": {}, "-early-stop": EARLY_STOP}
    for (shape, fields), activation, (extra, reg), (stop, es) in itertools.product(
        shapes.items(), activations, extras.items(), stops.items()
    ):
        recipe = Recipe(activation=activation, **fields, **reg, **es)
        register_recipe(lambda recipe=recipe: recipe, name=f"{shape}-{activation}{extra}{stop}")


_register_grid()


@register_recipe
def deep_maxout() -> Recipe:
    """Three maxout layers of 500 units, two pieces each (ReLU is a special case)."""
    return Recipe(activation="maxout", maxout_pieces=2, **DEEP)


@register_recipe
def keras_mnist_mlp() -> Recipe:
    """Keras's examples/mnist_mlp.py: 512-512 ReLU, dropout 0.2, RMSprop (98.40% on MNIST)."""
    return Recipe(depth=2, width=512, dropout=0.2, optimizer="rmsprop", learning_rate=0.001)


@register_recipe
def classic_sigmoid() -> Recipe:
    """The course's Keras demo: 3 x 500 sigmoid, SGD lr 0.1, batch 100, 20 epochs."""
    return Recipe(activation="sigmoid", optimizer="sgd", learning_rate=0.1, batch_size=100, **DEEP)


@register_recipe
def classic_relu() -> Recipe:
    """The course's Keras demo with ReLU hidden units (95.64% published)."""
    return Recipe(activation="relu", optimizer="sgd", learning_rate=0.1, batch_size=100, **DEEP)


CNN = {"conv_filters": (32, 64), "kernel_size": 3, "pool_size": 2, "depth": 0, "dropout": 0.5}


@register_recipe
def cnn_relu() -> Recipe:
    """Keras's MNIST convnet: two 3x3 convolutions of 32 and 64 filters, each with 2x2 max
    pooling, dropout 0.5, then the softmax; Adam, batch 128 (34,826 parameters on MNIST)."""
    return Recipe(activation="relu", epochs=15, **CNN)


@register_recipe
def cnn_sigmoid() -> Recipe:
    """Keras's MNIST convnet with sigmoid units."""
    return Recipe(activation="sigmoid", epochs=15, **CNN)


@register_recipe
def mlp_like_cnn() -> Recipe:
    """One ReLU hidden layer sized to cnn-relu's parameter count on the data: the fully
    connected net a convnet is compared with at an equal budget."""
    return Recipe(depth=1, match_recipe="cnn-relu", dropout=0.5, epochs=15)
