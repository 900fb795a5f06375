"""Models of our own for the lessons, registered with `dlkit.register_model`.

An experiment file that names this module (`imports: [models]`) can use them as variants,
as `recipe: mlp-bn`; each recipe still says how the model trains. `dlkit recipes --import
experiments/models.py` lists them.
"""

import keras

import dlkit


def _mlp(recipe: dlkit.Recipe, input_shape, num_classes: int, *, batch_norm: bool):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    for i in range(1, recipe.depth + 1):
        # With batch normalization, the layer's bias is BatchNormalization's beta.
        x = keras.layers.Dense(recipe.width, use_bias=not batch_norm, name=f"dense_{i}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
        x = keras.layers.Activation(recipe.activation, name=f"{recipe.activation}_{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))


@dlkit.register_model("mlp", uses=["depth", "width", "activation"])
def mlp(recipe: dlkit.Recipe, input_shape, num_classes: int) -> keras.Model:
    """`depth` fully connected layers of `width` units: the net of `mlp-bn` without its
    batch normalization, so that the two differ in that alone."""
    return _mlp(recipe, input_shape, num_classes, batch_norm=False)


@dlkit.register_model("mlp-bn", uses=["depth", "width", "activation"])
def mlp_bn(recipe: dlkit.Recipe, input_shape, num_classes: int) -> keras.Model:
    """`mlp` with BatchNormalization between each layer's weights and its activation
    (Ioffe & Szegedy 2015): every unit's input normalized over the batch."""
    return _mlp(recipe, input_shape, num_classes, batch_norm=True)
