"""Your own Keras model as a variant: registered, compared, tuned, logged and resumed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import dlkit
from dlkit import DlkitError
from dlkit.recipes import builders
from dlkit.tracking.tracker import Tracker

# A Functional model: batch normalization and a residual connection, outputs logits.
FUNCTIONAL = """
import keras
import dlkit


@dlkit.register_model("bn-res", uses=["width"])
def bn_res(recipe, input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(recipe.width, activation="relu")(x)
    y = keras.layers.BatchNormalization()(keras.layers.Dense(recipe.width)(h))
    y = keras.layers.Activation("relu")(keras.layers.Add()([h, y]))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(y))
"""

# A subclassed model and a custom layer, both registered for saving; outputs probabilities.
SUBCLASSED = """
import keras
import dlkit


@keras.saving.register_keras_serializable(package="{package}")
class Scale(keras.layers.Layer):
    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {{**super().get_config(), "factor": self.factor}}


@keras.saving.register_keras_serializable(package="{package}")
class TwoLayer(keras.Model):
    def __init__(self, width, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.width, self.num_classes = width, num_classes
        self.flatten = keras.layers.Flatten()
        self.scale = Scale(0.5)
        self.hidden = keras.layers.Dense(width, activation="relu")
        self.out = keras.layers.Dense(num_classes, activation="softmax")

    def call(self, x):
        return self.out(self.hidden(self.scale(self.flatten(x))))

    def get_config(self):
        return {{**super().get_config(), "width": self.width, "num_classes": self.num_classes}}


@dlkit.register_model("two-layer", uses=["width"])
def two_layer(recipe, input_shape, num_classes):
    return TwoLayer(recipe.width, num_classes)
"""

# A custom layer that Keras cannot load back: not registered.
UNREGISTERED = """
import keras
import dlkit


class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2 * x


@dlkit.register_model("doubler")
def doubler(recipe, input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = Doubler()(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
"""


def module(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture(autouse=True)
def _forget_modules(tmp_path):
    """The modules a test wrote and imported leave with it, as from a process that ended."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name, loaded in list(sys.modules.items()):
        if str(tmp_path) in str(getattr(loaded, "__file__", None) or ""):
            del sys.modules[name]


def experiment(tmp_path: Path, name: str, **changes) -> Path:
    raw = {
        "name": name,
        "imports": ["own_functional"],
        "dataset": {"source": "digits", "train_size": 300},
        "seeds": 2,
        "overrides": {"epochs": 2, "width": 16, "batch_size": 64},
        "variants": [
            {"label": "bn-res", "recipe": "bn-res"},
            {"label": "deep-relu", "recipe": "deep-relu", "overrides": {"depth": 2}},
        ],
        "expect": ["bn-res > deep-relu"],
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_functional_model_from_a_module_beside_the_file_compares_tuned(tmp_path):
    import mlflow

    module(tmp_path, "own_functional", FUNCTIONAL)
    file = experiment(tmp_path, "own", tune={"learning_rate": [0.003, 0.03], "seeds": 1})
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = dlkit.compare(str(file), tracking_uri=store, output_dir=None, log=lambda line: None)

    assert result.failed == 0 and len(result.runs) == 4
    table = result.table.set_index("variant")
    assert table.loc["bn-res", "tuned"].startswith("learning_rate=")  # tuned like a preset
    # its parameters are its own network's: 64*16+16 + 2*16 (BN's gamma, beta) + 16*16+16 + 170
    assert table.loc["bn-res", "params"] == 1040 + 32 + 272 + 170
    runs = result.runs[result.runs["variant"] == "bn-res"]
    run = mlflow.MlflowClient(store).get_run(runs["run_id"].iloc[0])
    assert run.data.params["model"] == "bn-res" and "depth" not in run.data.params
    uri = Tracker(store).model_uri(run.info.run_id)
    x = np.random.default_rng(0).uniform(0, 16, size=(3, 64)).astype("float32")
    predicted = np.asarray(mlflow.pyfunc.load_model(uri).predict(x))
    assert predicted.shape == (3, 10)  # the softmax dlkit put on its logits
    np.testing.assert_allclose(predicted.sum(axis=1), 1.0, rtol=1e-5)


def test_editing_the_builder_retrains_and_leaving_it_alone_resumes(tmp_path):
    path = module(tmp_path, "own_functional", FUNCTIONAL)
    file = experiment(tmp_path, "identity", seeds=1, overrides={"epochs": 1, "width": 8})
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def trained() -> tuple[int, str]:
        lines: list[str] = []
        result = dlkit.compare(str(file), tracking_uri=store, output_dir=None, log=lines.append)
        return sum("test accuracy" in line for line in lines), result.parent_run_id

    count, first = trained()
    assert count == 2
    del sys.modules["own_functional"]  # a new process: the module is imported again
    assert trained() == (0, first)  # nothing changed: both runs resume
    path.write_text(path.read_text().replace('activation="relu")(x)', 'activation="tanh")(x)'))
    del sys.modules["own_functional"]
    # An edited builder is another comparison: a parent of its own, the first left as it was.
    count, second = trained()
    assert count == 2 and second != first
    del sys.modules["own_functional"]
    assert trained() == (0, second)  # and it resumes while the builder stays as it is


def test_a_subclassed_model_with_a_custom_layer_trains_logs_and_loads(tmp_path, digits):
    module(tmp_path, "own_subclassed", SUBCLASSED.format(package="own_subclassed"))
    builders.import_modules(["own_subclassed"], folder=tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = dlkit.get_recipe("two-layer", width=16, epochs=5, learning_rate=0.03)
    result = dlkit.train(recipe, digits, seed=0, tracking_uri=store, verbose=0)
    assert result.history["accuracy"][-1] > 0.5  # it learns: chance is 0.1

    loaded = dlkit.load_model(result.run_id, tracking_uri=store)
    x = digits.x_test[:5] if hasattr(digits, "x_test") else np.ones((5, 64), "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0))
    # it outputs probabilities already: dlkit adds no second softmax
    assert loaded.layers[-1].get_config()["activation"] == "linear"


@pytest.mark.integration
def test_a_custom_layer_model_predicts_through_pyfunc_in_a_fresh_process(tmp_path, digits):
    module(tmp_path, "own_fresh", SUBCLASSED.format(package="own_fresh"))
    builders.import_modules(["own_fresh"], folder=tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = dlkit.train(dlkit.get_recipe("two-layer", width=8, epochs=1), digits, seed=0,
                         tracking_uri=store, verbose=0)  # fmt: skip
    uri = Tracker(store).model_uri(result.run_id)
    elsewhere = tmp_path / "elsewhere"  # where the module is not: it comes with the model
    elsewhere.mkdir()
    script = (
        f"import mlflow, numpy as np; mlflow.set_tracking_uri({store!r}); "
        f"print(mlflow.pyfunc.load_model({uri!r}).predict(np.ones((2, 64), 'float32')).shape)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "(2, 10)" in done.stdout


def test_an_unregistered_custom_layer_is_a_clear_error_before_training(tmp_path, digits):
    module(tmp_path, "own_unregistered", UNREGISTERED)
    builders.import_modules(["own_unregistered"], folder=tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(DlkitError, match="Doubler, which Keras cannot load back") as error:
        dlkit.train(dlkit.get_recipe("doubler"), digits, seed=0, tracking_uri=store, verbose=0)
    assert "register_keras_serializable" in str(error.value)


def test_a_field_the_builder_does_not_use_is_an_error_not_ignored(tmp_path):
    module(tmp_path, "own_functional", FUNCTIONAL)
    builders.import_modules(["own_functional"], folder=tmp_path)
    assert dlkit.get_recipe("bn-res", width=32, learning_rate=0.01).width == 32
    with pytest.raises(DlkitError, match="`dropout` is set .* does not use it"):
        dlkit.get_recipe("bn-res", dropout=0.5)
    with pytest.raises(DlkitError, match="Unknown model 'bn-rse'.*bn-res.*imports"):
        dlkit.Recipe(model="bn-rse")
    with pytest.raises(DlkitError, match="not an architecture field"):
        dlkit.register_model("x", uses=["learning_rate"])


def test_an_experiment_file_names_a_module_that_is_not_there(tmp_path):
    file = experiment(tmp_path, "missing")
    with pytest.raises(DlkitError, match="imports: No module 'own_functional' to import"):
        dlkit.load_experiment(file)


def test_compare_takes_builder_functions_with_labels(tmp_path):
    import keras

    def tiny_mlp(recipe, input_shape, num_classes):
        inputs = keras.Input(input_shape)
        x = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(inputs))
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x))

    result = dlkit.compare(
        {"mine": tiny_mlp, "baseline": "softmax-regression"},
        dataset="digits",
        train_size=200,
        seeds=1,
        epochs=1,
        tune=False,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        output_dir=None,
        log=lambda line: None,
    )
    assert result.failed == 0
    assert set(result.table["variant"]) == {"mine", "baseline"}
    assert builders.get_builder("tiny-mlp").function is tiny_mlp


def test_recipes_lists_registered_models_with_where_they_come_from(tmp_path):
    from dlkit.cli import main

    path = module(tmp_path, "own_functional", FUNCTIONAL)
    listed = CliRunner().invoke(main, ["recipes", "--import", str(path)])
    assert listed.exit_code == 0, listed.output
    line = next(row for row in listed.output.splitlines() if row.startswith("bn-res"))
    assert "model: own_functional (own_functional.py)" in line
    missing = CliRunner().invoke(main, ["recipes", "--import", "no_such_module"])
    assert missing.exit_code == 2 and "No module 'no_such_module' to import" in missing.output
    assert "Traceback" not in missing.output


def test_installed_packages_expose_models_through_entry_points(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    module(site, "own_plugin", FUNCTIONAL.replace('"bn-res"', '"plugin-res"'))
    info = site / "own_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: own-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[dlkit.models]\nplugin = own_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(builders, "_ENTRY_POINTS_LOADED", False)
    assert "plugin-res" in dlkit.list_recipes()
    assert builders.get_builder("plugin-res").origin.startswith("own_plugin")


@pytest.mark.integration
@pytest.mark.parametrize("executor", ["workers", "ray"])
def test_registered_models_train_in_worker_processes_and_on_ray(tmp_path, executor):
    """The module a file imports reaches every worker: the same runs as in one process."""
    module(tmp_path, "own_functional", FUNCTIONAL)
    file = experiment(tmp_path, f"elsewhere-{executor}", overrides={"epochs": 1, "width": 8})
    command = [sys.executable, "-m", "dlkit.cli", "compare", str(file), "--output", "reports"]
    command += ["--workers", "2"] if executor == "workers" else ["--executor", "ray"]
    other = tmp_path / "other"  # run from another folder: the file's imports resolve by it
    other.mkdir()
    done = subprocess.run(command, cwd=other, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout.count("bn-res seed") >= 2  # both of its seeds trained and reported


def test_the_identity_covers_the_helpers_and_layers_of_the_builders_module(tmp_path):
    source = """
import keras
import dlkit


def helper(width):
    return keras.layers.Dense(width, activation="relu")


@dlkit.register_model("helped", uses=["width"])
def helped(recipe, input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = helper(recipe.width)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
"""
    path = module(tmp_path, "own_helped", source)
    builders.import_modules([str(path)])
    before = builders.get_builder("helped").identity
    path.write_text(source.replace('activation="relu"', 'activation="tanh"'))
    del sys.modules["own_helped"]
    builders.import_modules([str(path)])
    after = builders.get_builder("helped").identity
    assert before != after and before.split("@")[0] == after.split("@")[0] == "own_helped.helped"


def test_a_builder_registered_again_is_not_served_from_the_traced_models(digits):
    """A notebook cell run again with an edited builder: the next training builds the new
    one, though the model traced from the old one fits the same shapes."""
    import keras

    from dlkit.nn.training import fit

    def make(activation):
        def same(recipe, input_shape, num_classes):
            inputs = keras.Input(input_shape)
            x = keras.layers.Flatten()(inputs)
            x = keras.layers.Dense(8, activation=activation, name="hidden")(x)
            return keras.Model(inputs, keras.layers.Dense(num_classes)(x))

        return same

    dlkit.register_model("same")(make("relu"))
    recipe = dlkit.get_recipe("same", epochs=1)
    fit(recipe, digits, seed=0, verbose=0, reuse=True)
    dlkit.register_model("same")(make("tanh"))  # the same name, module and qualname
    again = fit(recipe, digits, seed=1, verbose=0, reuse=True)
    fresh = fit(recipe, digits, seed=1, verbose=0)  # built from the tanh builder, not kept
    assert again.history["loss"] == pytest.approx(fresh.history["loss"], rel=1e-5)


def test_a_builder_whose_model_depends_on_the_seed_trains_each_seed_as_built(digits):
    """One more layer on some draws: neither the traced model of another seed nor a copy of
    another shape may stand in for what the builder built (issue 47's crash)."""
    import keras
    import numpy as np

    from dlkit.nn.training import fit

    @dlkit.register_model("drawn")
    def drawn(recipe, input_shape, num_classes):
        inputs = keras.Input(input_shape)
        x = keras.layers.Flatten()(inputs)
        for _ in range(1 + int(np.random.randint(2))):  # seeded by each training's seed
            x = keras.layers.Dense(16, activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x))

    recipe = dlkit.get_recipe("drawn", epochs=1)
    for seed in range(4):
        reused = fit(recipe, digits, seed=seed, verbose=0, reuse=True)
        alone = fit(recipe, digits, seed=seed, verbose=0)
        assert [w.shape for w in reused.model.get_weights()] == [
            w.shape for w in alone.model.get_weights()
        ]
        assert reused.history["loss"] == pytest.approx(alone.history["loss"], rel=1e-5)
