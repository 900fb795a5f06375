"""Worker processes on this machine (`workers` > 1 with the local executor): the same numbers as
one process, a killed worker's child trained again, a stopped comparison that leaves nothing
RUNNING and no worker behind; and the Ray instance a comparison starts, kept for all its stages.

Every test spawns real worker processes, each importing TensorFlow: they are slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tiny import tiny
from trials import accuracies, children, created, holding, kill_a_worker_mid_child, training

from dlkit import DlkitError, compare
from dlkit.comparison.experiment_file import parse_experiment

pytestmark = pytest.mark.integration

TINY = tiny("workers")
QUIET = {"output_dir": None, "log": lambda line: None}


def test_two_workers_give_the_numbers_of_one_process(tmp_path):
    experiment = parse_experiment(TINY)
    # Packed here and in the workers alike: a worker trains a whole pack (one per variant).
    here = compare(experiment, tracking_uri=f"sqlite:///{tmp_path}/here.db", **QUIET)
    store = f"sqlite:///{tmp_path}/workers.db"
    lines: list[str] = []
    pooled = compare(experiment, tracking_uri=store, workers=2, output_dir=None, log=lines.append)

    assert pooled.failed == 0 and len(pooled.runs) == 4
    assert accuracies(pooled) == accuracies(here)  # same seeds, same data, same numbers
    runs = children(store, "workers")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    assert all(r.data.tags["mlflow.parentRunId"] == pooled.parent_run_id for r in runs)
    assert all(r.outputs.model_outputs for r in runs)  # models logged from the workers
    pids: dict[str, set[str]] = {}  # variant: the processes its runs trained in
    for run in runs:
        pids.setdefault(run.data.tags["dlkit.variant"], set()).add(run.data.tags["dlkit.pid"])
    assert all(len(each) == 1 for each in pids.values())  # a variant's pack, in one worker
    assert str(os.getpid()) not in set.union(*pids.values())
    assert sum("test accuracy" in line for line in lines) == 4  # each child reported once
    assert [v.status for v in pooled.expectations] == [v.status for v in here.expectations]


def test_a_worker_killed_mid_child_is_replaced_and_its_child_trained_again(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result, victim = kill_a_worker_mid_child(store, TINY, workers=2)

    assert result.failed == 0 and len(result.runs) == 2  # the killed child was trained again
    assert victim.run_id not in set(result.runs["run_id"])
    assert not children(store, "workers", "RUNNING")  # the pool's other child: ended KILLED
    assert MlflowClient(store).get_run(victim.run_id).info.status == "KILLED"


def test_a_pack_retried_after_its_worker_died_continues_from_its_checkpoint(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result, victim = kill_a_worker_mid_child(store, TINY, workers=2, checkpointed=True)

    assert result.failed == 0 and len(result.runs) == 2
    resumed = [r for r in children(store, "workers", "FINISHED") if "dlkit.resumed_epoch" in
               r.data.tags]  # fmt: skip
    assert resumed, "the retried pack started again from epoch 0"
    assert all(int(r.data.tags["dlkit.resumed_epoch"]) > 0 for r in resumed)


def test_retries_count_per_child_the_deaths_of_its_worker_while_it_trained(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    three = {**TINY, "variants": [*TINY["variants"], {"label": "wide", "recipe": "wide-relu"}]}
    # Both workers' children in training: seen as soon as their runs open, one could
    # otherwise still be starting (importing TensorFlow), its child not yet in flight.
    result, victim = kill_a_worker_mid_child(store, three, in_flight=2, workers=2, retries=0)

    # The two children in flight when a worker died (the victim, and the pool's other one,
    # which went down with the pool) have no retry left: they stay as the runs they were,
    # KILLED. The third was only queued: it is not charged, and trains in the next pool.
    assert sorted(result.runs["status"]) == ["FINISHED", "KILLED", "KILLED"]
    assert victim.run_id in set(result.runs["run_id"])
    hash_of_victim = MlflowClient(store).get_run(victim.run_id).data.tags["dlkit.config_hash"]
    assert [r.info.run_id for r in children(store, "workers")
            if r.data.tags["dlkit.config_hash"] == hash_of_victim] == [victim.run_id]  # fmt: skip
    assert not children(store, "workers", "RUNNING")


def alive(pid: int) -> bool:
    """A process that runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_the_workers_and_their_children_end_killed(tmp_path):
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump({**TINY, "dataset": {"source": "digits"}}))
    store = created(f"sqlite:///{tmp_path}/mlflow.db")
    # Its children hold at their first epoch's end, whatever the CPU, until the SIGTERM
    with holding(tmp_path):
        process = subprocess.Popen(
            [sys.executable, "-m", "dlkit.cli", "compare", str(path), "--workers", "2"]
            + ["--tracking-uri", store, "--output", "reports"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        client = MlflowClient(store)
        try:
            running = training(store, "workers", 2, lambda: process.poll() is None)
        except AssertionError as error:
            process.kill()
            pytest.fail(f"{error}; the command printed:\n{process.communicate()[0]}")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)

    assert process.returncode == 143, output
    assert "Interrupted (SIGTERM)" in output and "Traceback" not in output
    for run in running:
        assert client.get_run(run.run_id).info.status == "KILLED"
    assert not children(store, "workers", "RUNNING")
    workers = {run.pid for run in running}
    deadline = time.monotonic() + 30  # a worker's exit is reaped a moment after its parent's
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)]


def test_more_workers_than_cores_is_a_clear_error_before_anything_runs(tracking_uri):
    with pytest.raises(DlkitError, match="needs a core of its own"):
        compare(parse_experiment(TINY), tracking_uri=tracking_uri, workers=4096, **QUIET)
    assert not children(tracking_uri, "workers")


def test_a_worker_that_cannot_load_tensorflow_is_reported_as_that(tmp_path, monkeypatch):
    # Spawned workers start from this process's sys.path, where a module that fails to
    # import now shadows TensorFlow (this process has its TensorFlow loaded already).
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tensorflow.py").write_text("raise ImportError('this TensorFlow is broken')\n")
    monkeypatch.syspath_prepend(str(broken))
    store = f"sqlite:///{tmp_path}/mlflow.db"
    lines: list[str] = []
    result = compare(
        parse_experiment(TINY),
        tracking_uri=store,
        workers=2,
        retries=3,
        output_dir=None,
        log=lines.append,
    )
    assert result.failed == 4
    failed = [line for line in lines if "FAILED" in line]
    assert len(failed) == 4, lines
    (failure,) = {line.split("FAILED - ")[1] for line in failed}
    assert "worker process could not start (ImportError: this TensorFlow is broken)" in failure
    assert "import tensorflow" in failure  # how to check the installation


def test_a_comparison_starts_its_ray_once_for_all_its_stages_and_ends_it(tmp_path):
    import ray

    assert not ray.is_initialized()
    # Tuning, then seeds added until decided: stages that each send their packs to Ray.
    tuned = tiny("ray-stages", tune={"learning_rate": [0.01, 0.1], "seeds": 1}, max_seeds=4)
    store = f"sqlite:///{tmp_path}/ray.db"
    result = compare(parse_experiment(tuned), tracking_uri=store, executor="ray", **QUIET)
    assert result.failed == 0 and not ray.is_initialized()  # ended with the comparison
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ray-stages").experiment_id
    runs = [
        r for r in client.search_runs([experiment]) if r.data.tags.get("dlkit.role") != "parent"
    ]
    stages = {r.data.tags["dlkit.role"] for r in runs}
    assert {"tuning", "child"} <= stages, stages
    # One worker trained every stage's packs: Ray and its worker's TensorFlow were started once.
    trained = {r.data.tags["dlkit.pid"] for r in runs if "dlkit.config_hash" in r.data.tags}
    assert len(trained) == 1 and str(os.getpid()) not in trained
