"""Packs in comparisons: which children train together, and each still one MLflow run."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from tiny import tiny

from dlkit import DlkitError, compare, load_model, train
from dlkit.cli import main
from dlkit.comparison.experiment_file import parse_experiment
from dlkit.execution.children import ChildSpec
from dlkit.execution.packs import MAX_PACK, auto_size, units
from dlkit.recipes.recipe import Recipe
from dlkit.recipes.train_options import TrainOptions

# The tiny comparison's variants differ in their inputs' normalization: two packs of two seeds.
PACKED = tiny("packed")


def spec(recipe: Recipe, seed: int = 0, **options) -> ChildSpec:
    return ChildSpec(
        recipe=recipe.to_dict(),
        data={},
        options=TrainOptions(seed=seed, **options),
        tracking_uri="sqlite:///x.db",
        experiment="x",
        run_name=f"{recipe.name}/{seed}",
        parent_id="parent",
    )


def test_children_of_one_shape_pack_together_in_plan_order():
    relu = Recipe(name="relu", depth=2, width=16)
    dropped = relu.replace(name="dropped", dropout=0.5, learning_rate=0.01)  # per member
    sigmoid = relu.replace(name="sigmoid", activation="sigmoid", initializer="he_normal")  # too
    maxout = relu.replace(name="maxout", activation="maxout")  # wider kernels: another shape
    batch = relu.replace(name="batch", batch_size=64)  # another shape
    specs = [spec(relu, 0), spec(maxout, 0), spec(dropped, 1), spec(sigmoid, 1)]
    specs += [spec(batch, 0), spec(relu, 1)]
    found = units(specs, 0, 64, 10)
    assert [[s.run_name for s in u.specs] for u in found] == [
        ["relu/0", "dropped/1", "sigmoid/1", "relu/1"],
        ["maxout/0"],
        ["batch/0"],
    ]
    assert all(u.packed for u in found)
    capped = units(specs, 2, 64, 10)
    assert [len(u.specs) for u in capped] == [2, 2, 1, 1]


def test_children_that_need_keras_fit_train_alone():
    relu = Recipe(name="relu", depth=2, width=16)
    specs = [
        spec(relu, 0, gradient_norms=True),  # a Keras callback
        spec(relu.replace(precision="mixed_float16"), 1),  # a loss scale of its own
        spec(relu, 2, devices=2),
        spec(relu, 3),
    ]
    found = units(specs, 0, 64, 10)
    assert [u.packed for u in found] == [False, False, False, True]
    assert not any(u.packed for u in units(specs, 1, 64, 10))  # --pack 1: the old way


def test_a_pack_holds_what_memory_allows():
    assert auto_size(Recipe(depth=2, width=16), 64, 10) == MAX_PACK
    huge = Recipe(depth=2, width=20_000)  # about 1.2 GB of training state per member
    assert 1 <= auto_size(huge, 784, 10) < MAX_PACK
    # Two worker processes each train a pack at once: each gets half the share.
    assert auto_size(huge, 784, 10, at_once=2) == max(1, auto_size(huge, 784, 10) // 2)


@pytest.mark.integration  # two whole comparisons, packed and alone
def test_packed_members_are_each_one_run_as_alone(tmp_path):
    experiment = parse_experiment(PACKED)
    runs = {}
    for size in (0, 1):
        uri = f"sqlite:///{tmp_path / f'pack{size}.db'}"
        lines: list[str] = []
        result = compare(
            experiment, tracking_uri=uri, output_dir=None, verbose=0, pack=size, log=lines.append
        )
        client = MlflowClient(uri)
        runs[size] = {
            (r["variant"], r["seed"]): client.get_run(r["run_id"])
            for _, r in result.runs.iterrows()
        }
        trained = [line for line in lines if ": training" in line]
        assert len(trained) == (2 if size == 0 else 4), lines
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) == 4
    for key, packed in runs[0].items():
        alone = runs[1][key]
        assert packed.info.status == alone.info.status == "FINISHED"
        assert packed.data.params == alone.data.params
        assert packed.data.metrics.keys() == alone.data.metrics.keys()
        for metric in ("test_accuracy", "best_val_accuracy"):
            assert packed.data.metrics[metric] == pytest.approx(
                alone.data.metrics[metric], abs=0.01
            )
        assert packed.outputs.model_outputs  # a logged model, as alone
        # Whole curves, as alone: the end's write carries the epochs not yet written.
        epochs = int(packed.data.metrics["epochs_run"])
        for metric in ("loss", "val_accuracy"):
            history = MlflowClient(f"sqlite:///{tmp_path / 'pack0.db'}").get_metric_history(
                packed.info.run_id, metric
            )
            assert sorted(m.step for m in history) == list(range(1, epochs + 1))


def test_a_diverging_member_fails_alone_and_its_pack_trains_on(tracking_uri):
    spec_file = {**PACKED, "seeds": 1, "expect": []}
    spec_file["variants"] = [
        {
            "label": "diverges",
            "recipe": "deep-relu",
            "overrides": {"optimizer": "sgd", "learning_rate": 1e12},
        },
        {"label": "fine", "recipe": "deep-relu", "overrides": {"optimizer": "sgd"}},
    ]
    lines: list[str] = []
    result = compare(
        parse_experiment(spec_file),
        tracking_uri=tracking_uri,
        output_dir=None,
        verbose=0,
        log=lines.append,
    )
    assert sum(": training" in line for line in lines) == 1  # one shape: one pack
    statuses = dict(zip(result.runs["variant"], result.runs["status"]))
    assert statuses == {"diverges": "FAILED", "fine": "FINISHED"}
    assert "diverged" in result.runs.set_index("variant").loc["diverges", "failure"]
    failed = result.runs.set_index("variant").loc["diverges", "run_id"]
    assert MlflowClient(tracking_uri).get_metric_history(failed, "loss")  # it keeps its curve


def test_resume_skips_the_finished_members_of_a_pack(tracking_uri):
    experiment = parse_experiment(PACKED)
    compare(experiment, tracking_uri=tracking_uri, output_dir=None, verbose=0, log=print)
    more = parse_experiment({**PACKED, "seeds": 3})
    lines: list[str] = []
    result = compare(more, tracking_uri=tracking_uri, output_dir=None, verbose=0, log=lines.append)
    assert any("4 of 6 runs already finished" in line for line in lines)
    trained = [line for line in lines if ": training" in line]
    assert [line.split(" (")[0] for line in trained] == [
        "relu seed 2: training",
        "sigmoid seed 2: training",
    ]
    assert (result.runs["status"] == "FINISHED").all() and len(result.runs) == 6


def test_the_pack_option_on_the_command_line(tracking_uri, tmp_path):
    args = ["compare", "deep-relu", "-d", "digits", "--train-size", "300", "--seeds", "2"]
    args += ["--epochs", "1", "--set", "width=16", "--tracking-uri", tracking_uri]
    cli = CliRunner().invoke(main, [*args, "--pack", "1", "--output", str(tmp_path)])
    assert cli.exit_code == 0, cli.output
    assert cli.output.count(": training") == 2
    bad = CliRunner().invoke(main, [*args, "--pack", "-1"])
    assert bad.exit_code == 2 and "--pack" in bad.output


def test_train_with_seeds_logs_one_run_per_seed(tracking_uri, digits):
    results = train(
        "deep-relu", digits, seeds=[0, 1], tracking_uri=tracking_uri, epochs=2, width=16, verbose=0
    )
    assert [r.seed for r in results] == [0, 1]
    assert results[0].run_id != results[1].run_id
    client = MlflowClient(tracking_uri)
    for result in results:
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED" and run.data.params["seed"] == str(result.seed)
        assert run.data.metrics["test_accuracy"] == pytest.approx(result.test_accuracy)
    loaded = load_model(results[1].run_id, tracking_uri=tracking_uri)
    x = digits.arrays("test")[0][:5]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), results[1].model.predict(x, verbose=0))


def test_a_model_a_caller_holds_is_never_trained_again_behind_its_back(tracking_uri, digits):
    first = train("deep-relu", digits, tracking_uri=tracking_uri, epochs=1, width=16, verbose=0)
    held = [w.copy() for w in first.model.get_weights()]
    second = train("deep-relu", digits, tracking_uri=tracking_uri, epochs=1, width=16, verbose=0)
    assert second.model is not first.model
    for before, after in zip(held, first.model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    "option", [{"pack": -1}, {"pack": 1.5}, {"workers": 0}, {"retries": -1}, {"cpus_per_run": 0}]
)
def test_out_of_range_options_from_python_are_refused_before_anything_runs(option, tracking_uri):
    name, value = next(iter(option.items()))
    with pytest.raises(DlkitError, match=f"{name}.*Received: .*{value!r}"):
        compare(["deep-relu"], dataset="digits", tracking_uri=tracking_uri, **option)
    assert not MlflowClient(tracking_uri).search_experiments(filter_string="name != 'Default'")
