"""Reviewing runs as MLflow users expect: logged models, datasets, a parent that carries the
result, the UI's runs page, and a quiet terminal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from tiny import tiny

from dlkit import DlkitError, compare, load_model, train
from dlkit.cli import main
from dlkit.comparison.experiment_file import parse_experiment
from dlkit.comparison.progress import Progress
from dlkit.console import filtered_stderr
from dlkit.tracking.tracker import Tracker
from dlkit.tracking.ui import free_port

SMALL = {"epochs": 2, "width": 16, "depth": 2, "batch_size": 64, "verbose": 0}

TINY = tiny("review")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One real comparison whose best model is registered, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("review")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = compare(
        parse_experiment(TINY),
        tracking_uri=uri,
        output_dir=None,
        register_best="review-best",
        log=lambda line: None,
    )
    return result, uri


def test_a_run_logs_a_model_that_pyfunc_and_dlkit_load(digits, tracking_uri):
    result = train("deep-relu", digits, tracking_uri=tracking_uri, **SMALL)
    x, y = digits.arrays("test")
    expected = result.model(x[:50], training=False).numpy()

    uri = Tracker(tracking_uri).model_uri(result.run_id)
    assert uri is not None and uri.startswith("models:/m-")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        served = mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(None)
    inputs = served.metadata.signature.inputs.to_dict()
    assert list(inputs[0]["tensor-spec"]["shape"]) == [-1, 64]
    assert served.metadata.get_input_schema() is not None
    np.testing.assert_allclose(served.predict(x[:50]), expected, rtol=1e-5, atol=1e-6)

    for source in (result.run_id, uri):
        loaded = load_model(source, tracking_uri=tracking_uri)
        np.testing.assert_allclose(loaded(x[:50]).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_maxout_model_loads_through_pyfunc(digits, tracking_uri):
    result = train("deep-relu", digits, tracking_uri=tracking_uri, activation="maxout", **SMALL)
    uri = Tracker(tracking_uri).model_uri(result.run_id)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        served = mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(None)
    x = digits.arrays("test")[0][:20]
    np.testing.assert_allclose(
        served.predict(x), result.model(x, training=False).numpy(), rtol=1e-5, atol=1e-6
    )


def test_register_adds_a_version_per_training(digits, tracking_uri):
    first = train("deep-relu", digits, tracking_uri=tracking_uri, register="digits-net", **SMALL)
    second = train(
        "deep-relu", digits, tracking_uri=tracking_uri, register="digits-net", seed=1, **SMALL
    )
    assert (first.registered, second.registered) == ("models:/digits-net/1", "models:/digits-net/2")
    version = MlflowClient(tracking_uri).get_model_version("digits-net", "2")
    assert version.run_id == second.run_id
    x = digits.arrays("test")[0][:10]
    loaded = load_model("models:/digits-net/2", tracking_uri=tracking_uri)
    np.testing.assert_allclose(loaded(x).numpy(), second.model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_load_model_mistakes_are_clear(tracking_uri, tmp_path):
    Tracker(tracking_uri)  # the store exists, without such a run
    with pytest.raises(DlkitError, match="No run 'f00d'"):
        load_model("f00d", tracking_uri=tracking_uri)
    with pytest.raises(DlkitError, match="No model file"):
        load_model(str(tmp_path / "missing.keras"))
    with pytest.raises(DlkitError, match="Cannot load models:/nobody/1"):
        load_model("models:/nobody/1", tracking_uri=tracking_uri)


def test_runs_log_their_data_splits_as_dataset_inputs(tracking_uri):
    from dlkit.data.dataset import load_dataset

    first = load_dataset("digits", train_size=300)
    other = load_dataset("digits", train_size=300, train_offset=300)
    runs = [
        train("deep-relu", data, tracking_uri=tracking_uri, **SMALL).run_id
        for data in (first, first, other)
    ]
    client = MlflowClient(tracking_uri)

    def inputs(run_id: str) -> dict[str, tuple[str, str]]:
        found = client.get_run(run_id).inputs.dataset_inputs
        return {i.tags[0].value: (i.dataset.name, i.dataset.digest) for i in found}

    same, again, shifted = (inputs(run) for run in runs)
    assert set(same) == {"train", "validation", "test"}
    assert same == again and same["train"][0] == "digits"
    # Other training images: another train digest, the same test set.
    assert shifted["train"] != same["train"] and shifted["test"] == same["test"]


def test_parent_carries_the_result(compared):
    result, uri = compared
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    params = parent.data.params
    assert params["experiment"] == "review" and params["dataset"] == "digits"
    assert params["variants"] == "relu,sigmoid" and "seeds" not in params
    # seeds are added while verdicts are open: a tag and a metric say how many ran
    assert parent.data.tags["dlkit.seeds"] == "0,1" and parent.data.metrics["seeds"] == 2
    assert params["question"] == "Does ReLU beat sigmoid here?"
    metrics = parent.data.metrics
    best = result.table.set_index("variant").loc[result.best, "test_accuracy_mean"]
    assert metrics["best_test_accuracy"] == pytest.approx(best)
    assert metrics["runs_finished"] == 4 and metrics["runs_failed"] == 0
    statuses = [v.status for v in result.expectations]
    assert metrics["expectations_held"] == statuses.count("held")
    assert metrics["expectations_inconclusive"] == statuses.count("inconclusive")
    description = parent.data.tags["mlflow.note.content"]
    assert description.startswith("## review") and "| relu" in description
    assert "`relu > sigmoid`" in description and "![" not in description
    # The parent's inputs: the data every child trained on.
    contexts = {i.tags[0].value for i in parent.inputs.dataset_inputs}
    assert contexts == {"train", "validation", "test"}


def test_register_best_registers_the_best_variants_best_seed(compared):
    result, uri = compared
    assert result.registered == "models:/review-best/1"
    version = MlflowClient(uri).get_model_version("review-best", "1")
    runs = result.runs[(result.runs["variant"] == result.best)]
    best_seed = runs.sort_values("best_val_accuracy", ascending=False)["run_id"].iloc[0]
    assert version.run_id == best_seed == result.best_run()


def test_child_runs_are_named_by_variant_and_seed(compared):
    result, uri = compared
    client = MlflowClient(uri)
    names = {client.get_run(run_id).info.run_name for run_id in result.runs["run_id"]}
    assert names == {"relu/seed0", "relu/seed1", "sigmoid/seed0", "sigmoid/seed1"}


def test_compare_prints_the_experiments_runs_page(tracking_uri, tmp_path):
    cli = CliRunner().invoke(
        main,
        ["compare", "softmax-regression", "-d", "digits", "--train-size", "100", "-e", "1"]
        + ["--tracking-uri", tracking_uri, "--output", str(tmp_path / "out")],
    )
    assert cli.exit_code == 0, cli.output
    experiment = MlflowClient(tracking_uri).get_experiment_by_name("compare-softmax-regression")
    page = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
    assert f"open {page}?workflowType=machine_learning\n" in cli.output  # the training layout
    again = CliRunner().invoke(
        main,
        ["report", "compare-softmax-regression"]
        + ["--tracking-uri", tracking_uri, "--output", str(tmp_path / "out")],
    )
    assert again.exit_code == 0 and f"open {page}?workflowType=machine_learning\n" in again.output


def test_progress_prints_a_line_per_run_without_a_terminal():
    lines: list[str] = []
    with Progress(2, lines.append) as progress:
        progress.start("relu seed 0", 5)
        progress.epoch({"val_accuracy": 0.5}, step=1)
        progress.finish("test accuracy 0.9000")
        progress.start("relu seed 1", 5)
        progress.finish("FAILED - NaN loss", failed=True)
    # each run is counted once, as it ends
    assert lines[0] == "relu seed 0: training"
    assert lines[1] == "[1/2] relu seed 0: test accuracy 0.9000"
    assert lines[2].startswith("relu seed 1: training (about ")
    assert lines[3] == "[2/2] relu seed 1: FAILED - NaN loss"


def test_progress_bar_keeps_only_failures_as_lines(capsys):
    lines: list[str] = []
    with Progress(2, lines.append, bar=True) as progress:
        progress.start("relu seed 0", 5)
        progress.epoch({"val_accuracy": 0.5}, step=3)
        progress.finish("test accuracy 0.9000")
        progress.start("relu seed 1", 5)
        progress.finish("FAILED - NaN loss", failed=True)
    err = capsys.readouterr().err
    assert lines == []  # everything went to the bar on standard error
    assert "2/2 runs" in err and "[2/2] relu seed 1: FAILED - NaN loss" in err
    assert "test accuracy 0.9000" not in err


def test_native_noise_is_filtered_and_real_errors_kept(capfd):
    import re

    with filtered_stderr(re.compile(r"^I\d{4} ")):
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1.0 1 real.cc:1] something real went wrong\n")
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "something real went wrong" in err


@pytest.mark.integration  # a real process or server, or a benchmark
def test_a_comparison_in_a_terminal_command_shows_no_tensorflow_start_up_noise(tmp_path):
    experiment = tmp_path / "quiet.yaml"
    experiment.write_text(yaml.safe_dump(tiny("quiet", seeds=1, expect=[])))
    command = [sys.executable, "-m", "dlkit.cli", "compare", str(experiment), "-q"]
    command += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--output", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for noise in ("absl::InitializeLog", "oneDNN", "cuInit", "cuda drivers", "rebuild TensorFlow"):
        assert noise not in done.stderr + done.stdout
    assert re.search(r"^relu\s.*\b0\.\d{4}\b", done.stdout, re.M), done.stdout  # its accuracy


@pytest.mark.integration  # a real process or server, or a benchmark
def test_a_script_that_fits_shows_no_tensorflow_start_up_noise(tmp_path):
    script = (
        "import dlkit\n"
        "data = dlkit.load_dataset('digits', train_size=200)\n"
        "result = dlkit.fit(dlkit.get_recipe('deep-relu', width=8, depth=1, epochs=1), data)\n"
        "print('accuracy', result.test_accuracy)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    for noise in ("absl::InitializeLog", "oneDNN", "cuInit", "cuda drivers", "rebuild TensorFlow"):
        assert noise not in done.stderr + done.stdout, done.stderr
    assert "accuracy 0." in done.stdout


@pytest.mark.integration  # a real process or server, or a benchmark
def test_ui_serves_the_store_on_loopback_and_prints_the_runs_page(compared, tmp_path):
    result, uri = compared
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "dlkit.cli", "ui", "review", "--tracking-uri", uri]
        + ["--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        first = ui.stdout.readline() + ui.stdout.readline()
        experiment = MlflowClient(uri).get_experiment_by_name("review").experiment_id
        assert f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs" in first
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={result.parent_run_id}"
        deadline = time.monotonic() + 180  # a loaded 2-core machine starts it slowly
        while True:
            try:
                with urllib.request.urlopen(api, timeout=5) as answer:
                    assert result.parent_run_id in answer.read().decode()
                    break
            except OSError:
                if time.monotonic() > deadline or ui.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        ui.send_signal(signal.SIGTERM)  # to dlkit alone: it stops the server it started
        ui.wait(timeout=60)
    deadline = time.monotonic() + 30
    while True:  # nothing serves the store once dlkit ui has ended
        try:
            urllib.request.urlopen(api, timeout=5).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the MLflow server outlived dlkit ui"
        time.sleep(0.5)


def test_ui_mistakes_are_clear(tmp_path):
    missing = CliRunner().invoke(main, ["ui", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"])
    assert missing.exit_code == 1 and "No MLflow store at" in missing.output
    server = CliRunner().invoke(main, ["ui", "--tracking-uri", "http://127.0.0.1:9"])
    assert server.exit_code == 1 and "is an MLflow server already" in server.output
    assert not Path("mlflow.db").exists()


def test_the_report_wraps_at_a_narrow_terminals_width(monkeypatch):
    from dlkit.text import wrap

    text = "word " * 60
    assert max(map(len, wrap(text))) > 80  # not a terminal: 100 columns, as files keep
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    assert max(map(len, wrap(text))) <= 80
    monkeypatch.setenv("COLUMNS", "200")
    assert max(map(len, wrap(text))) <= 100  # never wider than the report's 100


def test_a_bar_stopped_by_ctrl_c_says_so_not_done(capsys):
    with pytest.raises(KeyboardInterrupt):
        with Progress(3, lambda line: None, bar=True) as progress:
            progress.start("relu seed 0", 5)
            progress.finish("test accuracy 0.9000")
            raise KeyboardInterrupt
    err = capsys.readouterr().err
    assert "1/3 runs" in err and "interrupted" in err and "done" not in err
