"""Scale-out: comparisons on a real local Ray instance, a real MLflow server, a killed worker.

Ray and the MLflow server are processes these tests start on 127.0.0.1 and stop.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from tiny import tiny
from trials import accuracies, kill_a_worker_mid_child

from dlkit import DlkitError, compare, signals
from dlkit.comparison.experiment_file import parse_experiment
from dlkit.execution.checkpoints import AFTER
from dlkit.tracking.ui import serve

ray = pytest.importorskip("ray", reason="pip install 'ray>=2.9'")

pytestmark = pytest.mark.integration

TINY = tiny("scaling")


@pytest.fixture(scope="module", autouse=True)
def local_ray(tmp_path_factory):
    """One local Ray instance, 2 CPUs, for the module: the executor joins it. Its workers run
    at normal priority, as the pool's do: Ray starts them at nice 15, and beside a CPU-bound
    process on each core (issue 23's trials) a retried child then starved past every bound.
    Its workers hold their trainings while the module's hold file exists (`trials.holding`),
    and a pack saves its first epoch."""
    niceness = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    held = {signals.HOLD: str(tmp_path_factory.mktemp("ray") / "hold"), AFTER: "0"}
    os.environ.update(held)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    for key in held:
        del os.environ[key]
    if niceness is None:
        del os.environ["RAY_worker_niceness"]
    else:
        os.environ["RAY_worker_niceness"] = niceness


def test_ray_children_match_local_ones_and_two_workers_lose_nothing(tmp_path):
    experiment = parse_experiment(TINY)
    quiet = {"output_dir": None, "log": lambda line: None}
    # Packed here and on Ray alike: a Ray task trains a whole pack.
    local = compare(experiment, tracking_uri=f"sqlite:///{tmp_path}/local.db", **quiet)
    store = f"sqlite:///{tmp_path}/ray.db"
    on_ray = compare(experiment, tracking_uri=store, executor="ray", workers=2, **quiet)

    assert on_ray.failed == 0 and len(on_ray.runs) == 4
    assert accuracies(on_ray) == accuracies(local)  # the same numbers, wherever they ran
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("scaling").experiment_id
    children = client.search_runs([experiment_id], "tags.`dlkit.role` = 'child'")
    assert sorted(r.info.status for r in children) == ["FINISHED"] * 4
    assert all(r.outputs.model_outputs for r in children)  # models logged from the workers
    assert [v.status for v in on_ray.expectations] == [v.status for v in local.expectations]


def test_rerun_on_ray_skips_what_finished(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = parse_experiment(TINY)
    first = compare(experiment, tracking_uri=store, output_dir=None, log=lambda line: None)
    lines: list[str] = []
    again = compare(
        experiment, tracking_uri=store, output_dir=None, executor="ray", log=lines.append
    )
    assert again.parent_run_id == first.parent_run_id
    assert any("4 of 4 runs already finished" in line for line in lines)
    assert accuracies(again) == accuracies(first)


def test_a_worker_killed_mid_child_is_retried(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result, victim = kill_a_worker_mid_child(store, TINY, executor="ray")

    assert result.failed == 0  # the killed child was trained again
    assert MlflowClient(store).get_run(victim.run_id).info.status == "KILLED"
    assert victim.run_id not in set(result.runs["run_id"])


def test_a_ray_task_retried_after_its_worker_died_continues_from_its_checkpoint(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result, victim = kill_a_worker_mid_child(store, TINY, executor="ray", checkpointed=True)

    assert result.failed == 0
    finished = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name(TINY["name"]).experiment_id],
        "attributes.status = 'FINISHED' and tags.`dlkit.role` = 'child'",
    )
    assert any(int(r.data.tags.get("dlkit.resumed_epoch", 0)) > 0 for r in finished)


def test_ray_comparison_logs_to_an_mlflow_server(tmp_path):
    backend = f"sqlite:///{tmp_path}/server.db"
    with serve(backend, artifacts=str(tmp_path / "mlartifacts")) as address:
        result = compare(
            parse_experiment(TINY),
            tracking_uri=address,
            output_dir=None,
            executor="ray",
            workers=2,
            log=lambda line: None,
        )
        client = MlflowClient(address)
        parent = client.get_run(result.parent_run_id)
        assert parent.data.metrics["runs_finished"] == 4
        child = client.get_run(result.runs["run_id"].iloc[0])
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"recipe.json"}
    # Everything went through the server into its own stores.
    assert (tmp_path / "mlartifacts").is_dir() and (tmp_path / "server.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_a_remote_cluster_with_a_local_store_is_refused(tracking_uri):
    with pytest.raises(DlkitError, match="cannot write to the local store"):
        compare(
            parse_experiment(TINY),
            tracking_uri=tracking_uri,
            executor="ray",
            ray_address="ray-head.cluster.example:10001",
            log=lambda line: None,
        )
    experiment = MlflowClient(tracking_uri).get_experiment_by_name("scaling")
    assert experiment is None or not MlflowClient(tracking_uri).search_runs(
        [experiment.experiment_id]
    )


def test_one_training_on_two_logical_cpu_devices(tracking_uri):
    command = [sys.executable, "-m", "dlkit.cli", "train", "deep-relu", "-d", "digits"]
    command += ["--train-size", "300", "-e", "5", "--set", "width=16", "--set", "depth=2"]
    command += ["--set", "learning_rate=0.03", "--devices", "2", "--tracking-uri", tracking_uri]
    command += ["-q"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "on 2 CPUs" in done.stdout
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dlkit").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["replicas"] == "2"
    # It learned: one device reaches 0.73-0.76 here (seeds 0-2); chance is 0.1.
    assert run.data.metrics["test_accuracy"] > 0.6


def test_devices_after_tensorflow_started_is_a_clear_error(digits):
    import tensorflow as tf

    from dlkit import fit, get_recipe

    tf.constant(1.0)  # the runtime has started, with one CPU device
    with pytest.raises(DlkitError, match="Train in a fresh process"):
        fit(get_recipe("deep-relu", epochs=1, width=8, depth=1), digits, devices=3, verbose=0)
