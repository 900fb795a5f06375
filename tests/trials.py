"""Helpers of the scale-out trials (Ray, worker processes): watching children train, killing
one's worker."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from mlflow.tracking import MlflowClient

from dlkit import compare
from dlkit.comparison.experiment import parse_experiment


def accuracies(result) -> dict[tuple[str, int], float]:
    return {(row.variant, row.seed): row.test_accuracy for row in result.runs.itertuples()}


def children(store: str, name: str, status: str | None = None) -> list:
    """The child runs of experiment `name`, those in `status` if given."""
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    query = "tags.`dlkit.role` = 'child'"
    if status:
        query += f" and attributes.status = '{status}'"
    return client.search_runs([experiment.experiment_id], query)


def created(store: str) -> str:
    """Creates the store's tables now, so that watching it while a comparison starts does not
    race the comparison to create them."""
    MlflowClient(store).search_experiments()
    return store


def training(
    store: str, name: str, count: int, going: Callable[[], bool], timeout: float = 180
) -> list:
    """Waits, while `going()`, until `count` children are training (an epoch logged)."""
    client = MlflowClient(store)
    found: list = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline and going():
        time.sleep(0.2)
        running = children(store, name, "RUNNING")
        found = [r for r in running if client.get_metric_history(r.info.run_id, "loss")]
    return found


def kill_a_worker_mid_child(
    store: str, experiment: dict[str, Any], **options: Any
) -> tuple[Any, Any]:
    """Runs a comparison of one slow seed per variant and SIGKILLs the worker of a child
    that is training. Returns the comparison and the killed child's run as it was."""
    slow = {**experiment, "dataset": {"source": "digits"}, "seeds": 1}
    slow["overrides"] = {**experiment["overrides"], "epochs": 60, "batch_size": 32}
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = compare(
                parse_experiment(slow),
                tracking_uri=store,
                output_dir=None,
                log=lambda line: None,
                **options,
            )
        except BaseException as error:  # surfaced below
            outcome["error"] = error

    created(store)
    thread = threading.Thread(target=run)
    thread.start()
    found = training(store, experiment["name"], 1, thread.is_alive)
    assert found, "no child was seen training"
    os.kill(int(found[0].data.tags["dlkit.pid"]), signal.SIGKILL)
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    return outcome["result"], found[0]
