"""Tracking: a training logged to a real MLflow store in a temp folder."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dlkit import DlkitError, Recipe, get_recipe, keys, load_model, signals, train
from dlkit.nn.results import TrainingDiverged
from dlkit.tracking.stores import create_sqlite_store
from dlkit.tracking.tracker import Tracker

RECIPE = Recipe(
    name="small-es",
    depth=2,
    width=32,
    epochs=40,
    batch_size=64,
    early_stopping=True,
    patience=1,
    learning_rate=0.01,
)


def test_training_is_one_run_with_params_metrics_facts_and_artifacts(
    digits, tracking_uri, tmp_path
):
    result = train(RECIPE, digits, seed=3, tracking_uri=tracking_uri, experiment="t", verbose=0)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["depth"] == "2" and params["dropout"] == "0.0"
    assert params["early_stopping"] == "true" and params["seed"] == "3"
    assert params["data.name"] == "digits" and params["data.train_size"] == "400"
    assert set(params) >= set(RECIPE.applicable())
    # 65*32 + 33*32 + 33*10 weights and biases
    assert params["hidden_widths"] == "32,32" and params["param_count"] == "3466"
    assert "momentum" not in params  # Adam has none: params say what was trained

    metrics = run.data.metrics
    assert metrics["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert metrics["epochs_run"] == result.epochs_run < 40
    assert metrics["stopped_epoch"] == result.stopped_epoch
    assert metrics["best_epoch"] == result.best_epoch
    assert metrics["params"] == RECIPE.param_count(64, 10)
    history = client.get_metric_history(result.run_id, "val_loss")
    assert [m.step for m in history] == list(range(1, result.epochs_run + 1))
    assert [m.value for m in history] == pytest.approx(result.history["val_loss"])

    tags = run.data.tags
    assert tags["dlkit.recipe"] == "small-es" and tags["dlkit.dataset"] == "digits"
    assert tags["dlkit.device"] in ("CPU", "GPU") and tags["dlkit.version"]

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert artifacts == {"recipe.json", "test_correct.npy"}  # the model is a logged model
    local = Path(client.download_artifacts(result.run_id, "", str(tmp_path / "dl")))
    assert json.loads((local / "recipe.json").read_text()) == json.loads(
        json.dumps(RECIPE.to_dict())
    )
    model = load_model(result.run_id, tracking_uri=tracking_uri)  # its MLflow logged model
    x_test, y_test = digits.arrays("test")
    accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test))
    assert accuracy == pytest.approx(result.test_accuracy, abs=1e-6)


def test_artifacts_live_beside_the_sqlite_store(digits, tracking_uri, tmp_path):
    result = train(RECIPE.replace(epochs=1), digits, tracking_uri=tracking_uri, verbose=0)
    assert (tmp_path / "mlruns" / "dlkit" / result.run_id / "artifacts" / "recipe.json").exists()


def test_diverged_training_ends_its_run_failed_with_the_reason(digits, tracking_uri):
    bad = RECIPE.replace(
        optimizer="sgd",
        learning_rate=1e12,
        normalization="none",
        initializer="large_normal",
        early_stopping=False,
    )
    with pytest.raises(TrainingDiverged):
        train(bad, digits, tracking_uri=tracking_uri, experiment="nan", verbose=0)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags[keys.FAILURE]


def test_interrupted_run_ends_killed(tracking_uri):
    tracker = Tracker(tracking_uri, "ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        with tracker.run("x") as run_id:
            raise KeyboardInterrupt
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags[keys.FAILURE]


def test_default_store_is_sqlite_mlflow_db_in_the_working_directory(tmp_path):
    tracker = Tracker(experiment="default")
    assert tracker.tracking_uri == "sqlite:///mlflow.db"
    assert (tmp_path / "mlflow.db").exists()


def test_gradient_norms_are_logged_per_layer_and_vanish_in_deep_sigmoid_nets(digits, tracking_uri):
    deep_sigmoid = Recipe(depth=6, width=32, activation="sigmoid", epochs=1, optimizer="sgd")
    result = train(deep_sigmoid, digits, tracking_uri=tracking_uri, verbose=0, gradient_norms=True)
    client = MlflowClient(tracking_uri)
    norms = {}
    for layer in range(1, 8):  # six hidden layers and the output layer
        history = sorted(
            client.get_metric_history(result.run_id, f"grad_norm_{layer}"), key=lambda m: m.step
        )
        assert [m.step for m in history] == [0, 1]
        norms[layer] = history[0].value
    assert norms[1] < norms[7] / 100  # near the input, gradients are tiny


def interrupt_and_swallow() -> None:
    """Sends this process a Ctrl-C and swallows it, as a garbage-collection callback would."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # never elapses: the handler raises in here, as the signal lands
    except KeyboardInterrupt:
        pass


def test_an_error_raised_while_interrupted_ends_the_run_killed_not_failed(tracking_uri):
    tracker = Tracker(tracking_uri, "converted")
    with signals.handled():
        with pytest.raises(KeyboardInterrupt):
            with tracker.run("x") as run_id:
                interrupt_and_swallow()
                # what TensorFlow once made of a Ctrl-C inside its own code
                raise ValueError("Failed to convert elements of (None,) to Tensor")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED" and "Ctrl-C" in run.data.tags[keys.FAILURE]


def test_a_pool_error_made_of_an_interrupt_is_not_shown_and_a_real_one_is(tracking_uri, caplog):
    # A signal landing in SQLAlchemy's clean-up of a connection: it logs the swallowed
    # interrupt with a traceback, which dlkit, reporting the interrupt itself, drops.
    Tracker(tracking_uri, "pool")
    pool = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
    with signals.handled():
        interrupt_and_swallow()
        pool.error("Exception during reset or similar")
    pool.error("a real pool error")
    assert [r.getMessage() for r in caplog.records if r.name == pool.name] == ["a real pool error"]


def test_a_second_sigterm_to_a_patient_worker_lets_its_run_end_killed(tracking_uri):
    # A pool worker: its parent stops it, and the pool may send SIGTERM twice.
    tracker = Tracker(tracking_uri, "patient")
    with signals.handled(signal.SIGTERM, patient=True):
        with pytest.raises(signals.Interrupted):
            with tracker.run("x") as run_id:
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(1)  # never elapses: the handler raises in here, as the signal lands
                finally:
                    os.kill(os.getpid(), signal.SIGTERM)  # again, while the run is ending
                    time.sleep(0.1)
    assert tracker.client.get_run(run_id).info.status == "KILLED"


def test_runs_left_running_by_a_dead_process_are_closed_and_live_ones_kept(tracking_uri):
    tracker = Tracker(tracking_uri, "orphans")
    parent = tracker.client.create_run(tracker.experiment_id).info.run_id
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    tags = {"mlflow.parentRunId": parent, keys.HOST: socket.gethostname()}
    orphan = tracker.client.create_run(tracker.experiment_id, tags={**tags, keys.PID: dead})
    alive = tracker.client.create_run(
        tracker.experiment_id, tags={**tags, keys.PID: str(os.getpid())}
    )
    assert tracker.close_orphans(parent) == 1
    assert tracker.client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert tracker.client.get_run(alive.info.run_id).info.status == "RUNNING"


def test_a_half_created_store_says_how_to_fix_it(tracking_uri, tmp_path):
    import sqlite3

    create_sqlite_store(tracking_uri)  # a whole store, not yet opened by this process
    # Some tables and not others: what an interrupted first run under older versions left.
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("DROP TABLE model_version_tags")
        db.execute("DELETE FROM alembic_version")
    with pytest.raises(DlkitError, match="left half-created.*move it aside"):
        Tracker(tracking_uri, "x")


def test_a_new_store_is_a_copy_of_one_template_pointed_at_its_own_folder(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        Tracker(f"sqlite:///{folder / 'mlflow.db'}", "x")
    templates = list((Path(os.environ["XDG_CACHE_HOME"]) / "dlkit").glob("mlflow-*.db"))
    assert len(templates) == 1
    for folder in (first, second):
        default = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").get_experiment("0")
        assert default.artifact_location == (folder / "mlruns").as_uri()
    assert not list(tmp_path.glob("*/.mlflow.db.*.tmp"))


def test_params_leave_out_what_does_not_apply_and_give_the_resolved_network(digits, tracking_uri):
    softmax = get_recipe("softmax-regression", epochs=1)
    wide = get_recipe("wide-relu", epochs=1, width=16)
    client = MlflowClient(tracking_uri)
    for recipe in (softmax, wide):
        result = train(recipe, digits, tracking_uri=tracking_uri, verbose=0)
        params = client.get_run(result.run_id).data.params
        assert params["param_count"] == str(recipe.param_count(64, 10))
        if recipe is softmax:
            assert params["hidden_widths"] == "none"
            assert not {"activation", "width", "dropout", "maxout_pieces"} & set(params)
        else:
            assert params["hidden_widths"] == str(wide.hidden_layers(64, 10)[0])
            assert params["activation"] == "relu" and params["match_depth"] == "3"


def test_epoch_metrics_are_written_in_batches_each_stamped_with_its_epoch(tracking_uri):
    tracker = Tracker(tracking_uri, "epochs")
    with tracker.run("x") as run_id:
        sink = tracker.epoch_metrics(run_id, every=3600)
        sink({"loss": 1.0, "accuracy": 0.5}, step=1)
        time.sleep(0.02)
        sink({"loss": 0.5, "accuracy": 0.75}, step=2)
        assert tracker.client.get_metric_history(run_id, "loss") == []  # not yet due
        sink.flush()
        now = tracker.epoch_metrics(run_id, every=0)  # due at every epoch
        now({"loss": 0.25}, step=3)
        assert len(tracker.client.get_metric_history(run_id, "loss")) == 3
    history = tracker.client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert history[0].timestamp < history[1].timestamp  # the epoch's time, not the write's


def test_a_packs_sinks_write_in_rounds_spaced_by_what_a_round_takes(tracking_uri):
    tracker = Tracker(tracking_uri, "epochs")

    def losses(run_id):
        return [m.value for m in tracker.client.get_metric_history(run_id, "loss")]

    with tracker.runs(["a", "b"], tags=[{}, {}]) as (a, b):
        sink_a, sink_b = tracker.pack_metrics([a, b], every=0)
        sink_a({"loss": 1.0}, step=1)  # due: a round writes what every sink holds
        assert losses(a) == [1.0] and losses(b) == []
        sink_a.rounds.took = 3600.0  # as if that round took an hour: the next waits 20
        sink_b({"loss": 2.0}, step=1)
        sink_a({"loss": 0.5}, step=2)
        assert losses(a) == [1.0] and losses(b) == []
        sink_a.rounds.took = 0.0
        sink_b({"loss": 1.5}, step=2)  # one round writes both members' epochs
        assert losses(a) == [1.0, 0.5] and losses(b) == [2.0, 1.5]


def test_a_withdrawn_run_takes_the_model_it_logged_with_it(tracking_uri, digits):
    from dlkit.nn.models import build_for

    tracker = Tracker(tracking_uri, "withdrawn")
    model = build_for(Recipe(depth=1, width=4), digits)
    with tracker.runs(["kept", "withdrawn"], tags=[{}, {}]) as (kept, gone):
        for run_id in (kept, gone):
            tracker.log_model(run_id, model, digits.arrays("test")[0][:2], name="net")
        tracker.withdraw(gone)
    client = tracker.client
    models = client.search_logged_models([tracker.experiment_id])
    assert [m.source_run_id for m in models] == [kept]  # none left without its run
    assert client.get_run(gone).info.lifecycle_stage == "deleted"


def test_the_write_that_ends_a_run_carries_the_curves_not_yet_written(tracking_uri):
    tracker = Tracker(tracking_uri, "epochs")
    with tracker.run("x") as run_id:
        sink = tracker.epoch_metrics(run_id, every=3600)
        for epoch in range(1, 1201):  # more than MLflow takes in one write
            sink({"loss": 1.0 / epoch}, step=epoch)
        tracker.log_batch(
            run_id, params={"replicas": 1}, metrics={"test_accuracy": 0.9}, curves=sink
        )
        assert sink.take() == []  # nothing is written twice
    history = tracker.client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 1201))
    run = tracker.client.get_run(run_id)
    assert run.data.metrics["test_accuracy"] == 0.9 and run.data.params["replicas"] == "1"


@pytest.fixture
def signal_in_next_query():
    """Sends this process a signal from inside the next SQL statement any store runs."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    armed: list[int] = []

    def send(*args):
        if armed:
            os.kill(os.getpid(), armed.pop())

    event.listen(Engine, "before_cursor_execute", send)
    yield armed.append
    event.remove(Engine, "before_cursor_execute", send)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_a_store_call_lands_after_it_and_the_run_ends_killed(
    tracking_uri, signal_in_next_query, caplog, signum
):
    tracker = Tracker(tracking_uri, "deferred")
    with signals.handled(), pytest.raises(signals.Interrupted) as raised:
        with tracker.run("x") as run_id:
            signal_in_next_query(signum)
            tracker.log_metrics(run_id, {"loss": 0.5}, step=1)  # the signal lands in here
            pytest.fail("the signal was not raised when the store call returned")
    assert raised.value.signum == signum
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.data.metrics == {"loss": 0.5}  # the interrupted call's write is whole
    assert run.info.status == "KILLED"
    assert run.data.tags[keys.FAILURE].startswith("interrupted")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_ctrl_c_inside_a_store_call_outside_the_cli_lands_after_it(
    tracking_uri, signal_in_next_query
):
    # A user's own script or notebook: Python's default Ctrl-C handler is in place. (Not
    # always in a test process: a shell starts background jobs with SIGINT ignored.)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        tracker = Tracker(tracking_uri, "deferred")
        with pytest.raises(KeyboardInterrupt):
            with tracker.run("x") as run_id:
                signal_in_next_query(signal.SIGINT)
                tracker.set_tags(run_id, {"note": "whole"})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.data.tags["note"] == "whole" and run.info.status == "KILLED"
    assert signals.received() is None


@pytest.mark.integration
def test_ending_a_run_rides_out_a_store_another_process_holds_locked(tracking_uri, tmp_path, capfd):
    # MLflow's SQLite sessions wait 20 s for a lock; the lock here is held for 24.
    tracker, hasty = Tracker(tracking_uri, "busy"), Tracker(tracking_uri, "busy")
    hasty.busy_patience = 0  # gives up after MLflow's own wait
    patient_run = tracker.client.create_run(tracker.experiment_id).info.run_id
    hasty_run = tracker.client.create_run(tracker.experiment_id).info.run_id
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
            "time.sleep(24); db.execute('COMMIT')\n",
            str(tmp_path / "mlflow.db"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    import threading

    hasty_end = threading.Thread(
        target=hasty._end_quietly, args=(hasty_run, "KILLED", "interrupted (Ctrl-C)")
    )
    hasty_end.start()
    tracker._end(patient_run, "FINISHED")  # fails once after 20 s, then waits its turn
    hasty_end.join()
    assert holder.wait(timeout=30) == 0
    client = MlflowClient(tracking_uri)
    assert client.get_run(patient_run).info.status == "FINISHED"
    assert client.get_run(hasty_run).info.status == "RUNNING"  # the next run marks it
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "stayed locked by another process" in lines[0], lines
    assert hasty_run in lines[0]


def test_two_processes_logging_a_shared_parents_params_at_once_both_succeed(tracking_uri):
    # Both read the parent's params before either commits; the second's insert then meets
    # the first's rows, and the store refuses it (as a real race did, under load).
    first, second = Tracker(tracking_uri, "shared"), Tracker(tracking_uri, "shared")
    run_id = first.client.create_run(first.experiment_id).info.run_id
    plan = {"experiment": "shared", "seeds": 3}
    write = first.client.log_batch
    refused = []

    def raced(*args, **kwargs):
        if not refused:
            refused.append(True)
            second.log_new_params(run_id, plan)  # lands first
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: params.key")
        return write(*args, **kwargs)

    first.client.log_batch = raced
    first.log_new_params(run_id, {**plan, "variants": 2})
    assert refused
    assert MlflowClient(tracking_uri).get_run(run_id).data.params == {
        "experiment": "shared",
        "seeds": "3",
        "variants": "2",
    }


def test_a_signal_while_a_run_is_created_ends_that_run_killed(tracking_uri, monkeypatch):
    # The signal is held by the store call that creates the run; raised when the call
    # returned but before the run was on the clean-up's list, it left the run RUNNING.
    tracker = Tracker(tracking_uri, "opening")
    real = tracker.client._client.create_run

    def create_run(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # lands inside the call: held until it returns
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client._client, "create_run", create_run)
    with signals.handled(), pytest.raises(KeyboardInterrupt):
        with tracker.runs(["a", "b"], tags=[{}, {}]):
            pytest.fail("the block never starts: the first run's opening was interrupted")
    (run,) = tracker.client.search_runs([tracker.experiment_id])
    assert run.info.run_name == "a" and run.info.status == "KILLED"
