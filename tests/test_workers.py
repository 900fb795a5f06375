"""Worker processes on this machine (`workers` > 1 with the local executor): the same numbers as
one process, a killed worker's child trained again, a stopped comparison that leaves nothing
RUNNING and no worker behind.

Every test spawns real worker processes, each importing TensorFlow: they are slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tiny import tiny

from dlkit import compare
from dlkit.experiments import parse_experiment

pytestmark = pytest.mark.integration

TINY = tiny("workers")
QUIET = {"output_dir": None, "log": lambda line: None}


def accuracies(result) -> dict[tuple[str, int], float]:
    return {(row.variant, row.seed): row.test_accuracy for row in result.runs.itertuples()}


def children(store: str, name: str, status: str | None = None) -> list:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    query = "tags.`dlkit.role` = 'child'"
    if status:
        query += f" and attributes.status = '{status}'"
    return client.search_runs([experiment.experiment_id], query)


def test_two_workers_give_the_numbers_of_one_process(tmp_path):
    experiment = parse_experiment(TINY)
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
    assert len({r.data.tags["dlkit.pid"] for r in runs} - {str(os.getpid())}) == 2
    assert sum("test accuracy" in line for line in lines) == 4  # each child reported once
    assert [v.status for v in pooled.expectations] == [v.status for v in here.expectations]


def test_a_worker_killed_mid_child_is_replaced_and_its_child_trained_again(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    slow = {**TINY, "dataset": {"source": "digits"}, "seeds": 1}
    slow["overrides"] = {**TINY["overrides"], "epochs": 60, "batch_size": 32}
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = compare(
                parse_experiment(slow), tracking_uri=store, workers=2, **QUIET
            )
        except BaseException as error:  # surfaced by the assertions below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    client = MlflowClient(store)
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.2)
        # Wait until one is training (its first epoch logged), then kill its worker.
        for run in children(store, "workers", "RUNNING"):
            if client.get_metric_history(run.info.run_id, "loss"):
                victim = run
                break
    assert victim is not None, "no child was seen training"
    os.kill(int(victim.data.tags["dlkit.pid"]), signal.SIGKILL)
    thread.join(timeout=600)

    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.failed == 0 and len(result.runs) == 2  # the killed child was trained again
    assert victim.info.run_id not in set(result.runs["run_id"])
    assert not children(store, "workers", "RUNNING")  # the pool's other child: ended KILLED
    assert client.get_run(victim.info.run_id).info.status == "KILLED"


def alive(pid: int) -> bool:
    """A process that runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_the_workers_and_their_children_end_killed(tmp_path):
    slow = {**TINY, "dataset": {"source": "digits"}}
    slow["overrides"] = {**TINY["overrides"], "epochs": 200, "batch_size": 32}
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump(slow))
    store = f"sqlite:///{tmp_path}/mlflow.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "dlkit.cli", "compare", str(path), "--workers", "2"]
        + ["--tracking-uri", store, "--output", "reports"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = MlflowClient(store)
    training: list = []
    deadline = time.monotonic() + 180
    while len(training) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        running = children(store, "workers", "RUNNING")
        training = [r for r in running if client.get_metric_history(r.info.run_id, "loss")]
    assert len(training) == 2, "two children were not seen training at once"
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)

    assert process.returncode == 143, output
    assert "Interrupted (SIGTERM)" in output and "Traceback" not in output
    for run in training:
        assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert not children(store, "workers", "RUNNING")
    workers = {int(run.data.tags["dlkit.pid"]) for run in training}
    time.sleep(1)
    assert not [pid for pid in workers if alive(pid)]
