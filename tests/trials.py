"""Helpers of the scale-out trials (Ray, worker processes): watching children train, killing
one's worker."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from mlflow.tracking import MlflowClient

from dlkit import compare, signals
from dlkit.comparison.experiment_file import parse_experiment
from dlkit.execution.checkpoints import AFTER


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


class Training(NamedTuple):
    """A child seen training: its run and the process that trains it."""

    run_id: str
    pid: int


# Children RUNNING in the store, opened by the process that trains them, their results not
# logged yet: in training. Not "an epoch's loss logged": a member's curves reach the store
# every 2 s and in the write that ends its run, so a member that trains in under 2 s never
# shows one while it runs (CI on a quiet machine, 2026-11-30).
_TRAINING = """
    SELECT runs.run_uuid, pid.value FROM runs
    JOIN tags AS role ON role.run_uuid = runs.run_uuid AND role.key = 'dlkit.role'
    JOIN tags AS pid ON pid.run_uuid = runs.run_uuid AND pid.key = 'dlkit.pid'
    JOIN experiments ON experiments.experiment_id = runs.experiment_id
    WHERE runs.status = 'RUNNING' AND role.value = 'child' AND experiments.name = ?
    AND NOT EXISTS (SELECT 1 FROM latest_metrics AS m
                    WHERE m.run_uuid = runs.run_uuid AND m.key = 'test_accuracy')
"""


@contextlib.contextmanager
def holding(folder: Path, *, checkpoint_first: bool = False) -> Iterator[Path]:
    """Every training started in the block, in this process or in one it starts, waits at
    each epoch's end (after its checkpoint, saved at the first epoch if `checkpoint_first`)
    while the yielded file exists: a test kills or interrupts it there, however fast the CPU
    trains, then deletes the file to let the rest go on. A file `DLKIT_HOLD` names already
    is the one used: Ray's workers read the environment Ray started with."""
    hold = Path(os.environ.get(signals.HOLD) or folder / "hold")
    hold.touch()
    wanted = {signals.HOLD: str(hold), **({AFTER: "0"} if checkpoint_first else {})}
    before = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield hold
    finally:
        hold.unlink(missing_ok=True)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_store(store: str, query: str, *args: Any, seen: list[str]) -> list[tuple] | None:
    """Rows of `query` on a sqlite store, or None when the store is busy (or its tables are
    not there yet); `seen` gathers what each read found, for a failure's message.

    Read with sqlite3, read-only and without waiting on a lock (a busy store is asked
    again at the next poll): a poll through MLflow's client once blocked for the whole of
    a short training, and so never saw it.
    """
    path = store.removeprefix("sqlite:///")
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05)
        ) as db:
            rows = db.execute(query, args).fetchall()
    except sqlite3.OperationalError as error:
        seen.append(str(error))
        return None
    seen.append(f"{len(rows)} rows")
    return rows


def training(
    store: str, name: str, count: int, going: Callable[[], bool], timeout: float = 180
) -> list[Training]:
    """Waits, while `going()`, until `count` children of experiment `name` are training
    (see `_TRAINING`). Fails with what the polls saw if they never were."""
    found: list[Training] = []
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline and going():
        time.sleep(0.2)
        rows = read_store(store, _TRAINING, name, seen=seen)
        found = [Training(run_id, int(pid)) for run_id, pid in rows or []]
    assert len(found) >= count, (
        f"{len(found)} of {count} children seen training; "
        f"{len(seen)} polls of the store, the last: {seen[-5:]}"
    )
    return found


def kill_a_worker_mid_child(
    store: str,
    experiment: dict[str, Any],
    *,
    in_flight: int = 1,
    checkpointed: bool = False,
    **options: Any,
) -> tuple[Any, Any]:
    """Runs a comparison of one seed per variant, its trainings held at their epochs' ends,
    and once `in_flight` children are training (and, if `checkpointed`, a pack has saved a
    checkpoint), SIGKILLs the worker of one and lets the rest go on. Returns the comparison
    and the killed child's run as it was."""
    slow = {**experiment, "dataset": {"source": "digits"}, "seeds": 1}
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
    folder = Path(store.removeprefix("sqlite:///")).parent
    with holding(folder, checkpoint_first=checkpointed) as hold:
        thread = threading.Thread(target=run)
        thread.start()
        try:
            found = training(store, experiment["name"], in_flight, thread.is_alive)
        except AssertionError as missed:  # the comparison ended first: say how
            hold.unlink()
            thread.join(timeout=600)
            raise AssertionError(f"{missed}; the comparison ended with {outcome}") from None
        if checkpointed:  # each pack in training saves its first epoch, then holds
            deadline = time.monotonic() + 180
            saved = lambda: len(list(folder.glob("**/checkpoints/*.json")))  # noqa: E731
            while saved() < len(found) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert saved() >= len(found), f"{saved()} of {len(found)} packs saved a checkpoint"
        os.kill(found[0].pid, signal.SIGKILL)
        hold.unlink()
        thread.join(timeout=600)
    assert not thread.is_alive(), "the comparison did not end within 600 s of the kill"
    assert "error" not in outcome, outcome.get("error")
    return outcome["result"], found[0]
