"""Convnets: recipes with convolution blocks, sized from the data's image shape."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import dlkit
from dlkit import DlkitError, compare, get_recipe
from dlkit.comparison.experiment import config_hash
from dlkit.comparison.experiment_file import parse_experiment
from dlkit.data.dataset import DataSpec, load_dataset
from dlkit.nn.models import build_for
from dlkit.recipes.packing import packable
from dlkit.recipes.recipe import Recipe, register_recipe, unregister_recipe

MNIST = (784, 10, (28, 28, 1))
SMALL_CNN = {"conv_filters": [8], "epochs": 3}  # fits digits' 8x8 images


def test_the_keras_mnist_convnet_preset_has_its_published_size():
    cnn = get_recipe("cnn-relu")
    assert cnn.param_count(*MNIST) == 34_826  # Keras's examples/mnist_convnet.py
    assert cnn.feature_shapes(MNIST[2]) == [(13, 13, 32), (5, 5, 64)]
    assert not packable(cnn)  # a convnet trains alone, with Keras's fit
    # a fully connected net sized to it, on the same data: an equal budget by construction
    mlp = get_recipe("mlp-like-cnn")
    assert abs(mlp.param_count(*MNIST) - 34_826) <= 785  # within one hidden unit


@pytest.mark.parametrize(
    ("fields", "image", "message"),
    [
        ({"conv_filters": (8,), "kernel_size": 9}, (8, 8, 1), "smaller than its kernel_size=9"),
        ({"conv_filters": (8, 8)}, (8, 8, 1), "less than one pixel"),
        ({"conv_filters": (8,)}, None, "no image shape"),
    ],
)
def test_a_convnet_that_does_not_fit_the_data_is_named_with_how_to_fix_it(fields, image, message):
    with pytest.raises(DlkitError, match=message):
        Recipe(**fields).check_size(64, 10, image)


def test_a_convnet_field_out_of_range_is_refused():
    with pytest.raises(DlkitError, match="conv_filters"):
        Recipe(conv_filters=(8, 0))
    with pytest.raises(DlkitError, match="kernel_size"):
        Recipe(conv_filters=(8,), kernel_size=0)
    with pytest.raises(DlkitError, match="maxout is for fully connected layers"):
        Recipe(conv_filters=(8,), activation="maxout")


def test_fully_connected_runs_keep_their_params_and_hashes():
    recipe = get_recipe("deep-relu")
    assert not {"conv_filters", "kernel_size", "pool_size", "match_recipe"} & set(
        recipe.applicable()
    )
    data = DataSpec(source="digits")
    # the hash a fully connected recipe had before convnets existed: computed without them
    assert config_hash(recipe, data, 0) == config_hash(recipe.replace(pool_size=3), data, 0)
    assert config_hash(recipe, data, 0) != config_hash(recipe.replace(conv_filters=(8,)), data, 0)


def test_images_keep_their_shape_and_a_convnet_builds_from_it():
    data = load_dataset("digits", train_size=200)
    assert data.info.image_shape == (8, 8, 1) and data.info.input_shape == (64,)
    recipe = get_recipe("cnn-relu", **SMALL_CNN)
    model = build_for(recipe, data)
    assert model.count_params() == recipe.param_count(*data.info.dims)
    assert [layer.name for layer in model.layers][:3] == ["scale", "image", "conv_1"]
    x = data.arrays("test")[0][:5]
    assert model(x).shape == (5, 10)  # flat examples in, as every dlkit model takes them


def test_flat_data_is_refused_for_a_convnet(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "flat.npz"
    np.savez(
        path,
        x_train=rng.random((100, 20)),
        y_train=np.arange(100) % 2,
        x_test=rng.random((20, 20)),
        y_test=np.arange(20) % 2,
    )
    data = load_dataset(str(path))
    assert data.info.image_shape is None
    with pytest.raises(DlkitError, match="no image shape"):
        get_recipe("cnn-relu", **SMALL_CNN).check_size(*data.info.dims)


@pytest.fixture
def tiny_cnn():
    """A convnet that fits digits' 8x8 images, registered for the test only."""
    register_recipe(lambda: Recipe(conv_filters=(8,), depth=0, dropout=0.5), name="tiny-cnn")
    yield "tiny-cnn"
    unregister_recipe("tiny-cnn")


def test_a_convnet_against_an_equal_budget_mlp_in_a_comparison(tmp_path, tiny_cnn):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = parse_experiment(
        {
            "name": "cnn",
            "dataset": {"source": "digits", "train_size": 600},
            "seeds": 2,
            "overrides": {"epochs": 8, "batch_size": 32, "learning_rate": 0.01},
            "variants": [
                {"label": "cnn", "recipe": tiny_cnn},
                {
                    "label": "mlp",
                    "recipe": "deep-relu",
                    "overrides": {"depth": 1, "match_recipe": tiny_cnn, "dropout": 0.5},
                },
            ],
            "expect": ["cnn > mlp"],
        }
    )
    result = compare(
        experiment, tracking_uri=store, output_dir=None, verbose=0, log=lambda line: None
    )
    assert result.failed == 0
    assert (result.runs["test_accuracy"] > 0.7).all()  # both learn
    params = result.table.set_index("variant")["params"]
    assert params["cnn"] == Recipe(conv_filters=(8,), depth=0).param_count(64, 10, (8, 8, 1))
    assert abs(params["mlp"] - params["cnn"]) <= 64 + 1 + 10  # within one hidden unit
    client = MlflowClient(store)
    for run_id in result.runs["run_id"]:
        run = client.get_run(run_id)
        assert run.outputs.model_outputs  # logged models, as for every recipe
        if run.data.tags["dlkit.variant"] == "cnn":
            assert run.data.params["conv_filters"] == "8"
            assert "8" in run.data.params["data.image_shape"]
            model = dlkit.load_model(run_id, tracking_uri=store)  # from the logged model
            x = load_dataset("digits").arrays("test")[0][:3]
            assert model.predict(x, verbose=0).shape == (3, 10)


def test_gradient_norms_cover_a_convnets_convolutions(tmp_path):
    data = load_dataset("digits", train_size=200)
    recipe = get_recipe("cnn-relu", conv_filters=(4, 4), pool_size=1, depth=1, width=8, epochs=2)
    result = dlkit.train(
        recipe, data, tracking_uri=f"sqlite:///{tmp_path}/m.db", verbose=0, gradient_norms=True
    )
    metrics = MlflowClient(f"sqlite:///{tmp_path}/m.db").get_run(result.run_id).data.metrics
    # conv_1, conv_2, hidden_1 and the output layer, nearest the input first
    assert sorted(k for k in metrics if k.startswith("grad_norm_")) == [
        f"grad_norm_{i}" for i in range(1, 5)
    ]
