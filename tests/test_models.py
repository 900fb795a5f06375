"""Models: every registered recipe builds, trains a short epoch, and saves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlkit import Recipe, get_recipe, list_recipes
from dlkit.layers import Maxout
from dlkit.models import build_model, load_model
from dlkit.training import fit


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_builds_and_trains_one_short_epoch(name, digits):
    recipe = get_recipe(name, epochs=1, batch_size=100, width=32)
    result = fit(recipe, digits, seed=0, verbose=0)
    trainable = sum(int(np.prod(w.shape)) for w in result.model.trainable_weights)
    assert trainable == recipe.param_count(64, 10) == result.params
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


def test_maxout_takes_the_max_of_its_pieces_and_round_trips(tmp_path):
    layer = Maxout(2, pieces=3, kernel_initializer="ones")
    out = layer(np.array([[1.0, 2.0]], dtype=np.float32))
    # every piece is x1 + x2 = 3 with zero bias
    np.testing.assert_allclose(out, [[3.0, 3.0]])
    model = build_model(Recipe(depth=1, width=4, activation="maxout", maxout_pieces=3), (5,), 2)
    path = tmp_path / "maxout.keras"
    model.save(path)
    loaded = load_model(str(path))
    x = np.random.default_rng(0).random((3, 5)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert loaded.get_layer("hidden_1").get_config()["pieces"] == 3
