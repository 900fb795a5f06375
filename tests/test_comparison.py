"""Comparisons: parent/child runs in a real MLflow store, the report, resume, failures."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from tiny import tiny

from dlkit import DlkitError, compare, report
from dlkit.cli import main
from dlkit.comparison.experiment_file import parse_experiment
from dlkit.data.dataset import load_dataset

TINY = tiny("tiny", gradient_norms=True, published={"relu": 0.95})


def children(client: MlflowClient, experiment: str, parent_id: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One real comparison, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("comparison")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = compare(
        parse_experiment(TINY),
        tracking_uri=uri,
        output_dir=folder / "reports",
        verbose=0,
        log=lambda line: None,
    )
    return result, uri, folder


def test_parent_with_one_child_per_variant_and_seed(finished):
    result, uri, _ = finished
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dlkit.role"] == "parent"
    assert client.get_experiment(parent.info.experiment_id).name == "tiny"
    runs = children(client, "tiny", result.parent_run_id)
    assert sorted((r.data.tags["dlkit.variant"], r.data.tags["dlkit.seed"]) for r in runs) == [
        ("relu", "0"),
        ("relu", "1"),
        ("sigmoid", "0"),
        ("sigmoid", "1"),
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.params["seed"] == r.data.tags["dlkit.seed"] for r in runs)
    assert all(r.data.params["variant"] == r.data.tags["dlkit.variant"] for r in runs)
    assert all(r.data.params["data.train_size"] == "300" for r in runs)  # identical splits
    assert len({r.data.tags["dlkit.config_hash"] for r in runs}) == 4


def test_table_matches_the_children_metrics(finished):
    result, uri, _ = finished
    client = MlflowClient(uri)
    runs = children(client, "tiny", result.parent_run_id)
    for variant in ("relu", "sigmoid"):
        mine = [r.data.metrics for r in runs if r.data.tags["dlkit.variant"] == variant]
        accuracies = [m["test_accuracy"] for m in mine]
        row = result.table.set_index("variant").loc[variant]
        # the fit the gap compares: measured after training, every unit on
        train = np.mean([m["train_accuracy"] for m in mine])
        assert row["train_accuracy"] == pytest.approx(train)
        assert row["gap"] == pytest.approx(train - np.mean(accuracies))
        assert row["test_accuracy_mean"] == pytest.approx(np.mean(accuracies))
        assert row["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
        assert row["finished"] == 2 and row["epochs_run"] == 2
        assert row["params"] == (64 + 1) * 16 + 17 * 16 + 17 * 10
    assert result.table["best"].sum() == 1
    # one column per quantity, and counts are whole numbers
    assert result.table.columns.is_unique and "test_accuracy" not in result.table
    for count in ("params", "planned", "finished", "failed"):
        assert pd.api.types.is_integer_dtype(result.table[count]), count
    assert len(result.histories["relu"]) == 2 and len(result.histories["relu"][0]["loss"]) == 2
    verdict = result.expectations[0]
    assert verdict.expectation == "relu > sigmoid"
    assert verdict.status in ("held", "contradicted", "inconclusive")
    assert verdict.low <= verdict.difference <= verdict.high and "95% interval" in verdict.detail
    text = result.format()
    assert "relu" in text and "±" in text and "Expectations (variants compared as given):" in text
    assert "published" in text and "0.9500" in text
    # two hidden layers and the output: norms at initialization (epoch 0) and after each epoch
    layers = result.gradients["sigmoid"][0]
    assert sorted(layers) == [1, 2, 3] and sorted(layers[1]) == [0, 1, 2]


def test_report_artifacts_in_mlflow_and_in_the_output_folder(finished):
    result, uri, folder = finished
    client = MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    expected = {
        "table.csv",
        "table.md",
        "runs.csv",
        "learning_curves.png",
        "test_accuracy.png",
        "gradient_norms.png",
    }
    assert names == {f"report/{name}" for name in expected}
    assert {a.path for a in client.list_artifacts(result.parent_run_id)} >= {"plan.json"}
    child = result.runs["run_id"].iloc[0]
    correct = np.load(client.download_artifacts(child, "test_correct.npy", str(folder)))
    assert correct.dtype == bool and len(correct) == 359  # one flag per digits test image
    assert correct.mean() == pytest.approx(result.runs["test_accuracy"].iloc[0], abs=1e-6)
    local = folder / "reports" / "tiny"
    saved = pd.read_csv(local / "table.csv")
    assert list(saved["variant"]) == ["relu", "sigmoid"]
    assert saved["test_accuracy_mean"].tolist() == pytest.approx(
        result.table["test_accuracy_mean"].tolist()
    )
    assert (local / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (local / "table.md").read_text()
    assert "| variant |" in markdown and "![learning_curves](learning_curves.png)" in markdown
    assert "Data: digits (300 train" in markdown and "2 seeds (0, 1), 2 epochs" in markdown
    assert list(saved.columns[:3]) == ["variant", "test_accuracy_mean", "test_accuracy_std"]
    assert saved["params"].dtype.kind == "i" and "test_accuracy" not in saved.columns


def test_report_rebuilds_from_mlflow_alone(finished, tmp_path):
    result, uri, _ = finished
    rebuilt = report("tiny", tracking_uri=uri, output_dir=tmp_path)
    assert rebuilt.parent_run_id == result.parent_run_id
    pd.testing.assert_frame_equal(rebuilt.table, result.table)
    cli = CliRunner().invoke(
        main, ["report", "tiny", "--tracking-uri", uri, "--output", str(tmp_path)]
    )
    assert cli.exit_code == 0, cli.output
    assert "relu" in cli.output and "Expectations (" in cli.output
    listed = cli.output.split("Report files written to")[1].split("MLflow:")[0]
    assert "learning_curves.png" in listed and ".plots-digest" not in listed
    missing = CliRunner().invoke(
        main, ["report", "nothing", "--tracking-uri", uri, "--output", str(tmp_path)]
    )
    assert missing.exit_code == 1 and "No MLflow experiment named 'nothing'" in missing.output
    assert not (tmp_path / "nothing").exists()  # no report folder for what is not there


def test_a_report_of_unchanged_runs_keeps_its_plots_and_redraws_them_when_runs_change(
    finished, tmp_path
):
    result, uri, _ = finished
    first = report("tiny", tracking_uri=uri, output_dir=tmp_path)
    plot = tmp_path / "tiny" / "learning_curves.png"
    plot.write_bytes(b"left as it was")  # what a redraw would replace
    report("tiny", tracking_uri=uri, output_dir=tmp_path)
    assert plot.read_bytes() == b"left as it was"
    first.runs.loc[0, "test_accuracy"] = 0.5  # the runs are no longer those drawn
    first.save(tmp_path / "tiny")
    assert plot.read_bytes().startswith(b"\x89PNG")


class InterruptOnce(keras.callbacks.Callback):
    """Plays a user's Ctrl-C during the first epoch of the n-th training."""

    def __init__(self, at_training: int):
        super().__init__()
        self.trainings = 0
        self.at = at_training

    def on_train_begin(self, logs=None):
        self.trainings += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.trainings == self.at:
            raise KeyboardInterrupt


def test_interrupt_kills_child_and_parent_and_rerun_reuses_finished(tracking_uri):
    experiment = parse_experiment(TINY)
    with pytest.raises(KeyboardInterrupt):
        compare(
            experiment,
            tracking_uri=tracking_uri,
            output_dir=None,
            verbose=0,
            callbacks=[InterruptOnce(at_training=3)],
            log=lambda line: None,
        )
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`dlkit.role` = 'parent'")
    assert parent.info.status == "KILLED"
    statuses = sorted(r.info.status for r in children(client, "tiny", parent.info.run_id))
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]

    lines: list[str] = []
    result = compare(
        experiment, tracking_uri=tracking_uri, output_dir=None, verbose=0, log=lines.append
    )
    assert result.parent_run_id == parent.info.run_id
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert any("2 of 4 runs already finished" in line for line in lines)
    assert sum(": training" in line for line in lines) == 2
    assert (result.runs["status"] == "FINISHED").all()

    forced = compare(
        experiment,
        tracking_uri=tracking_uri,
        output_dir=None,
        verbose=0,
        force=True,
        log=lines.append,
    )
    assert forced.parent_run_id != parent.info.run_id
    assert len(children(client, "tiny", forced.parent_run_id)) == 4


def test_a_failing_variant_does_not_stop_the_others(tracking_uri):
    spec = {**TINY, "seeds": 1, "expect": [], "published": {}}
    spec["variants"] = [
        {
            "label": "diverges",
            "recipe": "deep-relu",
            "overrides": {
                "optimizer": "sgd",
                "learning_rate": 1e12,
                "normalization": "none",
                "initializer": "large_normal",
            },
        },
        {"label": "fine", "recipe": "deep-relu"},
    ]
    lines: list[str] = []
    result = compare(
        parse_experiment(spec),
        tracking_uri=tracking_uri,
        output_dir=None,
        verbose=0,
        log=lines.append,
    )
    statuses = dict(zip(result.runs["variant"], result.runs["status"]))
    assert statuses == {"diverges": "FAILED", "fine": "FINISHED"}
    assert "diverged" in result.runs.set_index("variant").loc["diverges", "failure"]
    assert "did not finish" in result.format() and "diverges seed 0: FAILED" in result.format()
    assert result.best == "fine"
    assert any("FAILED" in line for line in lines)


def test_compare_command_with_recipe_names(tracking_uri, tmp_path):
    cli = CliRunner().invoke(
        main,
        [
            "compare",
            "deep-relu",
            "softmax-regression",
            "--dataset",
            "digits",
            "--train-size",
            "200",
            "--epochs",
            "1",
            "--set",
            "width=8",
            "--seeds",
            "1",
            "--tracking-uri",
            tracking_uri,
            "--output",
            str(tmp_path / "out"),
        ],
    )
    assert cli.exit_code == 0, cli.output
    # Not a terminal: a line per run instead of a bar, and no Keras epoch lines without -v.
    assert "[2/2] softmax-regression seed 0: test accuracy" in cli.output
    assert "Epoch 1/1" not in cli.output
    assert (tmp_path / "out" / "compare-deep-relu-vs-softmax-regression" / "table.csv").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["compare", "deep-relu", "nope"], "Unknown recipe 'nope'"),
        (["compare", "missing.yaml"], "Cannot read experiment file"),
        (["compare", "deep-relu", "--set", "dropout=2"], "Received: dropout=2.0"),
        (["compare", "deep-relu", "-d", "./nowhere"], "does not exist"),
    ],
)
def test_compare_command_mistakes(args, message):
    cli = CliRunner().invoke(main, args)
    assert cli.exit_code == 1
    assert message in cli.output and "Traceback" not in cli.output


def test_compare_command_exits_non_zero_when_a_run_failed(tracking_uri, tmp_path):
    spec = {
        **TINY,
        "seeds": 1,
        "expect": [],
        "published": {},
        "gradient_norms": False,
        "variants": [
            {"label": "fine", "recipe": "softmax-regression"},
            {
                "label": "diverges",
                "recipe": "softmax-regression",
                "overrides": {
                    "optimizer": "sgd",
                    "learning_rate": 1e12,
                    "normalization": "none",
                    "initializer": "large_normal",
                },
            },
        ],
    }
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(spec))
    args = ["compare", str(path), "-q", "--tracking-uri", tracking_uri, "--output", "out"]
    cli = CliRunner().invoke(main, args)
    assert cli.exit_code == 1
    assert "1 of 2 runs of 'tiny' did not finish" in cli.output
    assert "diverges seed 0: FAILED - TrainingDiverged" in cli.output
    assert "Traceback" not in cli.output
    assert (tmp_path / "out" / "tiny" / "table.csv").exists()  # the report is still written


def test_replicate_reruns_on_the_next_slice_and_shows_both_verdicts(tracking_uri, tmp_path):
    spec = {**TINY, "seeds": 1, "gradient_norms": False, "published": {}}
    spec["dataset"] = {"source": "digits", "train_size": 300}
    result = compare(
        parse_experiment(spec),
        tracking_uri=tracking_uri,
        output_dir=tmp_path / "out",
        verbose=0,
        replicate=True,
        log=lambda line: None,
    )
    replica = result.replication
    assert replica.name == "tiny-replica" and replica.context["train_offset"] == 300
    client = MlflowClient(tracking_uri)
    for name, offset in (("tiny", "0"), ("tiny-replica", "300")):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        children = [r for r in runs if r.data.tags.get("dlkit.role") == "child"]
        assert len(children) == 2
        assert {r.data.params["data.train_offset"] for r in children} == {offset}
    text = result.format()
    assert "Verdicts on both slices:" in text and "from image 300" in text
    assert "| relu > sigmoid |" in result.markdown()
    # the second slice starts where the first ends: disjoint images of one pool
    pool = load_dataset("digits", train_size=600).arrays("train")[0]
    second = load_dataset("digits", train_size=300, train_offset=300).arrays("train")[0]
    np.testing.assert_array_equal(second, pool[300:])


def test_replicate_needs_a_slice_that_fits(tracking_uri):
    whole = {**TINY, "dataset": {"source": "digits"}}
    with pytest.raises(DlkitError, match="no second slice"):
        compare(parse_experiment(whole), tracking_uri=tracking_uri, replicate=True, output_dir=None)
    big = {**TINY, "dataset": {"source": "digits", "train_size": 1000}}
    with pytest.raises(DlkitError, match="train_offset=1000"):
        compare(parse_experiment(big), tracking_uri=tracking_uri, replicate=True, output_dir=None)


def test_in_a_notebook_a_comparison_displays_as_its_report(finished):
    result, _, _ = finished
    page = result._repr_html_()
    assert page.count("<tr>") == 1 + 2  # the header and one row per variant
    assert "relu" in page and "sigmoid" in page and "±" in page
    assert "Expectations (variants compared as given)" in page
    assert "<code>relu &gt; sigmoid</code>" in page  # escaped, as HTML must be
    # the report's every figure: curves, test accuracy, and (logged here) gradient norms
    assert page.count('src="data:image/png;base64,') == 3 and 'alt="gradient_norms"' in page


def test_the_terminal_report_fits_in_100_columns_and_wide_shows_every_column(finished):
    result = finished[0]
    narrow, wide = result.format(), result.format(wide=True)
    assert max(map(len, narrow.splitlines())) <= 100
    assert "test loss" not in narrow and "samples/s" not in narrow and "gap" in narrow
    assert "test loss" in wide and "samples/s" in wide and "params" in wide
    assert "| test loss |" in result.markdown()  # table.md keeps every column


def test_a_comparison_shows_its_report_at_a_python_prompt(finished):
    result = finished[0]
    assert repr(result) == result.format() and "Expectations" in repr(result)


def test_a_seed_that_diverged_counts_at_chance_and_the_verdict_names_it(tracking_uri):
    import dlkit

    @dlkit.register_model("flaky")
    def flaky(recipe, input_shape, num_classes):
        inputs = keras.Input(input_shape)
        x = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
        logits = keras.layers.Dense(num_classes)(x)
        if np.random.random() < 0.5:  # seeded by each run's seed: a NaN loss at once
            logits = keras.layers.Rescaling(float("nan"))(logits)
        return keras.Model(inputs, logits)

    spec = tiny("diverging", seeds=6, variants=["flaky", "deep-relu"], expect=["flaky > deep-relu"])
    spec["dataset"] = {**spec["dataset"], "split": "random"}
    spec["overrides"] = {"epochs": 2, "batch_size": 64}  # its builder reads no width or depth
    result = compare(parse_experiment(spec), tracking_uri=tracking_uri, output_dir=None, verbose=0)

    runs = result.runs.set_index("variant").loc["flaky"]
    gone = runs[runs["failure"].str.startswith("TrainingDiverged")]
    assert 0 < len(gone) < 6 and (runs["status"] != "FINISHED").sum() == len(gone)
    row = result.table.set_index("variant").loc["flaky"]
    assert row["diverged"] == len(gone) and row["finished"] == 6
    finished = runs[runs["status"] == "FINISHED"]["test_accuracy"]
    honest = (finished.sum() + 0.1 * len(gone)) / 6  # digits: 10 classes
    assert row["test_accuracy_mean"] == pytest.approx(honest)
    [verdict] = result.expectations
    assert f"flaky diverged on {len(gone)} of 6 seeds (counted at 0.10)" in verdict.detail
    assert verdict.status != "held" and verdict.seeds == 6
    assert f"6/6, {len(gone)} diverged" in result.format()
    assert "at most 5% chance that any of them is wrong" in result.format()


@pytest.mark.integration
def test_the_betting_interval_from_a_file_decides_and_the_report_keeps_it(tracking_uri):
    spec = tiny(
        "betting",
        dataset={"source": "digits", "train_size": 300, "split": "random"},
        interval="betting",
        overrides={"epochs": 5, "width": 16, "batch_size": 32, "learning_rate": 0.03},
        variants=[
            {"label": "linear", "recipe": "softmax-regression"},
            # Eight sigmoid layers stay near chance here: a gap betting decides in a few seeds.
            {"label": "sigmoid", "recipe": "deep-sigmoid", "overrides": {"depth": 8}},
        ],
        expect=["linear > sigmoid"],
        seeds=3,
        max_seeds=12,
    )
    result = compare(parse_experiment(spec), tracking_uri=tracking_uri, output_dir=None)
    [verdict] = result.expectations
    assert verdict.status == "held" and "betting interval" in verdict.detail
    assert result.sequential["interval"] == "betting"
    again = report("betting", tracking_uri=tracking_uri, output_dir=None)
    assert again.expectations[0].detail == verdict.detail
