"""Models: every registered recipe builds, trains a short epoch, and saves."""

from __future__ import annotations

import inspect
import math

import keras
import numpy as np
import pytest

from dlkit import Recipe, get_recipe, list_recipes
from dlkit.nn.layers import Maxout
from dlkit.nn.models import build_model, compile_model, load_model, make_optimizer
from dlkit.nn.training import fit
from dlkit.recipes.fields import ACTIVATIONS, INITIALIZERS, LOSSES, OPTIMIZERS


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_builds_and_trains_one_short_epoch(name, digits):
    fields = {"epochs": 1, "batch_size": 100, "width": 32}
    preset = get_recipe(name)
    if preset.convolutional:  # Keras's MNIST convnet needs more than 8x8 pixels
        fields["conv_filters"] = (8,)
    if preset.match_recipe:  # sized to that convnet, which does not fit 8x8 images
        fields["match_recipe"] = ""
    recipe = get_recipe(name, **fields)
    result = fit(recipe, digits, seed=0, verbose=0)
    trainable = sum(int(np.prod(w.shape)) for w in result.model.trainable_weights)
    assert trainable == recipe.param_count(*digits.info.dims) == result.params
    assert math.isfinite(result.history["loss"][0])
    assert 0.0 <= result.test_accuracy <= 1.0


def test_presets_build_at_full_size_with_the_advertised_parameter_count():
    for name in ("deep-relu", "wide-relu", "deep-maxout", "softmax-regression"):
        recipe = get_recipe(name)
        model = build_model(recipe, (28, 28, 1), 10)
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        assert trainable == recipe.param_count(784, 10)
        assert model.output_shape == (None, 10)


def test_normalization_is_part_of_the_model():
    raw = np.full((2, 4), 255.0, dtype=np.float32)
    scaled = build_model(Recipe(depth=0, initializer="zeros"), (4,), 3, input_max=255.0)
    assert scaled.layers[0].name == "scale"
    standardized = build_model(
        Recipe(depth=0, normalization="standardize"),
        (4,),
        3,
        input_mean=np.full(4, 255.0),
        input_variance=np.ones(4),
    )
    np.testing.assert_allclose(standardized.layers[0](raw), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="input_mean"):
        build_model(Recipe(normalization="standardize"), (4,), 3)


def test_zeros_initializer_cannot_break_symmetry():
    model = build_model(Recipe(depth=2, width=8, initializer="zeros"), (4,), 3)
    kernel = model.get_layer("hidden_1").kernel.numpy()
    assert np.all(kernel == 0)


def test_maxout_takes_the_max_of_each_units_own_pieces_and_round_trips(tmp_path):
    layer = Maxout(2, pieces=3)
    layer.build((None, 2))
    # Columns 0-2 are unit 0's pieces, 3-5 unit 1's. On x = (1, 2) the pieces
    # give unit 0: 1, 2, 3 and unit 1: 3, 5 (from its bias), -1. The max is
    # (3, 5); a mean would give (2, 2.33), pieces grouped the wrong way round other values.
    layer.kernel.assign([[1.0, 0.0, -1.0, 3.0, 0.0, 1.0], [0.0, 1.0, 2.0, 0.0, 0.0, -1.0]])
    layer.bias.assign([0.0, 0.0, 0.0, 0.0, 5.0, 0.0])
    out = layer(np.array([[1.0, 2.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[3.0, 5.0]])
    model = build_model(Recipe(depth=1, width=4, activation="maxout", maxout_pieces=3), (5,), 2)
    path = tmp_path / "maxout.keras"
    model.save(path)
    loaded = load_model(str(path))
    x = np.random.default_rng(0).random((3, 5)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert loaded.get_layer("hidden_1").get_config()["pieces"] == 3


X = np.random.default_rng(0).random((16, 6)).astype(np.float32)
Y = np.eye(3, dtype=np.float32)[np.arange(16) % 3]


def one_step(recipe: Recipe) -> tuple[keras.Model, list[np.ndarray], float]:
    """Builds and compiles `recipe` on 6 inputs and 3 classes, and takes one training step."""
    model = compile_model(build_model(recipe, (6,), 3, input_max=1.0), recipe)
    model.run_eagerly = True  # one step: tracing a graph would cost more than the step
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = float(model.train_on_batch(X, Y)[0])
    return model, before, loss


def changed(model: keras.Model, before: list[np.ndarray]) -> list[bool]:
    return [not np.array_equal(w.numpy(), b) for w, b in zip(model.trainable_weights, before)]


SMALL = Recipe(depth=2, width=5, batch_size=16)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_builds_as_named_and_takes_a_step(optimizer):
    recipe = SMALL.replace(optimizer=optimizer, learning_rate=0.01, momentum=0.5)
    made = make_optimizer(recipe)
    expected = {"sgd": "SGD", "momentum": "SGD", "nesterov": "SGD"}.get(optimizer, optimizer)
    assert type(made).__name__.lower() == expected.lower()
    assert float(made.learning_rate) == pytest.approx(0.01)
    if optimizer in ("sgd", "momentum", "nesterov"):
        assert made.momentum == (0.0 if optimizer == "sgd" else 0.5)
        assert made.nesterov == (optimizer == "nesterov")
    model, before, loss = one_step(recipe)
    assert math.isfinite(loss) and all(changed(model, before))


@pytest.mark.parametrize("initializer", INITIALIZERS)
def test_every_initializer_draws_as_named_and_takes_a_step(initializer):
    recipe = Recipe(depth=1, width=400, initializer=initializer)
    kernel = build_model(recipe, (6,), 3).get_layer("hidden_1").kernel.numpy()
    std = float(kernel.std())
    expected_std = {"zeros": 0.0, "random_normal": 0.05, "large_normal": 1.0}
    if initializer in expected_std:
        assert std == pytest.approx(expected_std[initializer], rel=0.1, abs=1e-9)
    else:  # the Glorot / He / LeCun family: scaled to the fan, far below 1
        assert 0.01 < std < 0.7
    model, before, loss = one_step(SMALL.replace(initializer=initializer))
    assert math.isfinite(loss) and any(changed(model, before))


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_is_the_one_named_on_the_softmax_output(loss):
    recipe = SMALL.replace(loss=loss)
    model = compile_model(build_model(recipe, (6,), 3, input_max=1.0), recipe)
    model.run_eagerly = True
    p = model.predict(X, verbose=0)
    by_hand = {
        "mse": np.mean((p - Y) ** 2),
        "crossentropy": np.mean(-np.sum(Y * np.log(p), axis=1)),
    }[loss]
    assert float(model.evaluate(X, Y, verbose=0)[0]) == pytest.approx(by_hand, rel=1e-5)
    model, before, value = one_step(recipe)
    assert math.isfinite(value) and all(changed(model, before))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_builds_and_takes_a_step(activation):
    recipe = SMALL.replace(activation=activation)
    model, before, loss = one_step(recipe)
    hidden = model.get_layer("hidden_1")
    if activation == "maxout":
        assert isinstance(hidden, Maxout)
    else:
        assert hidden.activation.__name__ == activation
    assert math.isfinite(loss) and all(changed(model, before))


@pytest.mark.parametrize("activation", ["relu", "maxout"])
def test_max_norm_caps_the_weights_into_every_unit_after_each_step(activation):
    recipe = Recipe(
        depth=1, width=4, activation=activation, optimizer="sgd", learning_rate=5.0, max_norm=0.5
    )
    model, before, _ = one_step(recipe)
    assert any(changed(model, before))
    kernels = [w.numpy() for w in model.trainable_weights if w.name == "kernel"]
    assert len(kernels) == 2  # the hidden layer's and the output's
    for kernel in kernels:  # one column per unit (or maxout piece): the weights into it
        assert np.linalg.norm(kernel, axis=0).max() <= 0.5 + 1e-5
    free = one_step(recipe.replace(max_norm=0.0))[0]
    assert max(np.linalg.norm(w.numpy(), axis=0).max() for w in free.trainable_weights) > 0.5


def test_adam_is_fused_but_updates_as_keras_adam_and_saves_as_plain_adam(tmp_path):
    recipe, plain, fused = plain_and_fused_adam()
    assert "ResourceApplyAdam" in inspect.getsource(fused.optimizer.update_step)
    for model in (plain, fused):
        for _ in range(3):
            model.train_on_batch(X, Y)
    for a, b in zip(plain.trainable_weights, fused.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert not np.array_equal(plain.trainable_weights[0].numpy(), before_weights(recipe))
    path = tmp_path / "fused.keras"
    fused.save(path)
    loaded = keras.models.load_model(path)  # a plain Keras Adam: no dlkit class needed
    assert type(loaded.optimizer) is keras.optimizers.Adam


def test_the_fused_adam_reads_names_keras_s_adam_still_has():
    # The fused update reads Keras's private optimizer state: this fails, by name, on a Keras
    # that renamed it (the update then falls back to Keras's own, see the next test).
    from dlkit.nn.optimizers import KERAS_NAMES

    adam = keras.optimizers.Adam(0.01)
    adam.build([keras.Variable(np.zeros((2, 2), "float32"))])
    assert [name for name in KERAS_NAMES if not hasattr(adam, name)] == []
    parameters = list(inspect.signature(keras.optimizers.Adam.update_step).parameters)
    assert parameters == ["self", "gradient", "variable", "learning_rate"]


def test_without_those_names_the_fused_adam_updates_as_keras_s_own(monkeypatch):
    import tensorflow as tf

    from dlkit.nn import optimizers

    fused_calls = []
    kernel = tf.raw_ops.ResourceApplyAdam
    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam", lambda **k: fused_calls.append(k))
    monkeypatch.setattr(optimizers, "KERAS_NAMES", ("_a_name_keras_does_not_have",))
    _, plain, fused = plain_and_fused_adam()
    for model in (plain, fused):
        model.train_on_batch(X, Y)
    assert fused_calls == [] and kernel is not tf.raw_ops.ResourceApplyAdam  # Keras's own update
    for a, b in zip(plain.trainable_weights, fused.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def plain_and_fused_adam() -> tuple[Recipe, keras.Model, keras.Model]:
    """One model twice from one seed: compiled with Keras's Adam, and as dlkit compiles it."""
    recipe = SMALL.replace(optimizer="adam", learning_rate=0.01)
    keras.utils.set_random_seed(0)
    plain = build_model(recipe, (6,), 3, input_max=1.0)
    keras.utils.set_random_seed(0)
    fused = build_model(recipe, (6,), 3, input_max=1.0)
    plain.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    compile_model(fused, recipe)
    return recipe, plain, fused


def before_weights(recipe: Recipe) -> np.ndarray:
    keras.utils.set_random_seed(0)
    return build_model(recipe, (6,), 3, input_max=1.0).trainable_weights[0].numpy()
