"""Claims: each member of a comparison finishes once, however many processes run it.

Real `dlkit compare` processes on one fresh sqlite store, started together; one is
SIGKILLed while the other waits on members it holds.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tiny import tiny
from trials import read_store, training

from dlkit.tracking import liveness
from dlkit.tracking import tracker as tracker_module
from dlkit.tracking.claims import contested, rival, undecided
from dlkit.tracking.tracker import RunRecord, Tracker, process_alive

HOST = os.uname().nodename


def record(
    run_id: str, status: str, start: int, pid: int = os.getpid(), key: str = "h", params=None
):
    tags = {"dlkit.config_hash": key, "dlkit.pid": str(pid), "dlkit.host": HOST}
    return RunRecord(run_id, status, start, tags, params or {}, {})


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_member_is_held_by_a_finished_run_or_an_earlier_live_claim():
    mine = record("b", "RUNNING", 2)
    assert rival(mine, [mine], running=True) is None
    assert rival(mine, [record("a", "RUNNING", 1)], running=True).run_id == "a"
    assert rival(mine, [record("c", "RUNNING", 3)], running=True) is None  # opened after mine
    assert undecided(mine, [record("c", "RUNNING", 3)])[0].run_id == "c"  # ... not decided yet
    # opened after mine but kept, params logged: it checked before mine was in the store
    kept = record("c", "RUNNING", 3, params={"epochs": "2"})
    assert rival(mine, [kept], running=True).run_id == "c" and not undecided(mine, [kept])
    assert not undecided(mine, [record("c", "RUNNING", 3, pid=dead_pid())])
    assert rival(mine, [record("a", "RUNNING", 1, pid=dead_pid())], running=True) is None
    assert rival(mine, [record("a", "RUNNING", 1, key="other")], running=True) is None
    assert rival(mine, [record("c", "FINISHED", 3)], running=False).run_id == "c"
    # before finishing, only a finished run stands in its way: an earlier claim still
    # training would withdraw when it ends, and one that dies would leave the member untrained
    assert rival(mine, [record("a", "RUNNING", 1)], running=False) is None
    assert rival(mine, [record("a", "FAILED", 1)], running=True) is None


def test_two_processes_opening_a_parent_at_once_meet_under_the_first(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    first, second = Tracker(store, "race"), Tracker(store, "race")
    one, joined_one = first.claim_parent("race", {"dlkit.role": "parent"})
    two, joined_two = second.claim_parent("race", {"dlkit.role": "parent"})
    assert (one, joined_one) == (one, False) and (two, joined_two) == (one, True)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("race").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [one]


def test_a_claim_committed_after_the_others_check_with_an_earlier_start_time_withdraws(
    tmp_path,
):
    # MLflow's client reads a run's start_time before the store commits it: a claim whose
    # create waited on the store's lock can land, "opened first", after the other's check.
    store = f"sqlite:///{tmp_path}/mlflow.db"
    first, late = Tracker(store, "race"), Tracker(store, "race")
    parent, _ = first.claim_parent("race", {"dlkit.role": "parent"})
    tags = {"dlkit.role": "child", "dlkit.config_hash": "h"}
    started = int(time.time() * 1000) - 50  # the late process read its clock first
    with first.runs(["m"], tags=[tags], parent_id=parent) as (kept,):
        assert contested(first, parent, {kept: "h"}, running=True) == {}  # nothing else there yet
        tags = {**tags, "mlflow.parentRunId": parent, "dlkit.comparison": parent}
        tags["dlkit.host"] = HOST
        claim = late.client.create_run(
            late.experiment_id, start_time=started, tags={**tags, "dlkit.pid": str(os.getpid())}
        ).info.run_id
        # The first process has not decided yet (no params): the late one waits for it.
        threading.Timer(0.3, first.log_params, (kept, {"epochs": "2"})).start()
        began = time.monotonic()
        lost = contested(late, parent, {claim: "h"}, running=True)
        assert time.monotonic() - began >= 0.25
        assert lost[claim].rival.run_id == kept  # kept by the process that checked first
        client = MlflowClient(store)
        assert [
            r.info.run_id
            for r in client.search_runs([first.experiment_id], "tags.`dlkit.role` = 'child'")
        ] == [kept]


def test_an_earlier_claim_keeps_its_member_once_a_later_claim_withdraws(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    first, second = Tracker(store, "race"), Tracker(store, "race")
    parent, _ = first.claim_parent("race", {"dlkit.role": "parent"})
    tags = [{"dlkit.role": "child", "dlkit.config_hash": "h"}]
    with first.runs(["m"], tags=tags, parent_id=parent) as (earlier,):
        with second.runs(["m"], tags=tags, parent_id=parent) as (later,):
            threading.Timer(0.3, second.withdraw, (later,)).start()  # it saw the earlier one
            assert contested(first, parent, {earlier: "h"}, running=True) == {}


EXPERIMENT = tiny(
    "claims",
    seeds=3,
    dataset={"source": "digits", "train_size": 600},
    overrides={"epochs": 40, "width": 32, "depth": 2, "batch_size": 32},
)


def start(folder: Path, *options: str) -> subprocess.Popen:
    path = folder / "claims.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT))
    return subprocess.Popen(
        [sys.executable, "-m", "dlkit.cli", "compare", str(path), *options]
        + ["--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--output", "reports"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished_once(store: str) -> collections.Counter:
    """FINISHED runs per member (role and config hash); and nothing left RUNNING."""
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("claims").experiment_id
    runs = client.search_runs([experiment], "tags.`dlkit.role` != 'parent'")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    return collections.Counter(
        (r.data.tags["dlkit.role"], r.data.tags["dlkit.config_hash"])
        for r in runs
        if r.info.status == "FINISHED"
    )


@pytest.mark.integration
@pytest.mark.parametrize("pack", ["0", "1"])
def test_two_processes_on_one_comparison_train_each_member_once(tmp_path, pack):
    processes = [start(tmp_path, "--pack", pack) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]

    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
        assert "Traceback" not in output
        assert output.count(" 3/3 ") == 2, output  # a whole report: both variants, 3 seeds
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    counts = finished_once(store)
    assert len(counts) == 6 and set(counts.values()) == {1}, counts
    assert any("another process" in output for output in outputs), outputs


def stop_outside_a_write(process: subprocess.Popen, store_path: Path) -> None:
    """SIGSTOPs `process` at a moment it holds no lock on the store, so that the other
    process's writes go on while it is frozen. Not even a read's: SQLite commits a write
    only once every reader is done, so a reader frozen mid-query blocks every writer."""
    while True:
        os.kill(process.pid, signal.SIGSTOP)
        try:
            with contextlib.closing(sqlite3.connect(store_path, timeout=0)) as db:
                db.execute("BEGIN EXCLUSIVE")  # refused while anyone holds any lock
                db.rollback()
            return
        except sqlite3.OperationalError:  # caught inside a query: let it finish it
            os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.05)


# The process's children RUNNING in the store: what it holds.
_HELD = """
    SELECT runs.run_uuid FROM runs
    JOIN tags AS pid ON pid.run_uuid = runs.run_uuid AND pid.key = 'dlkit.pid'
    JOIN tags AS role ON role.run_uuid = runs.run_uuid AND role.key = 'dlkit.role'
    WHERE runs.status = 'RUNNING' AND role.value = 'child' AND pid.value = ?
"""


def freeze_holding_a_member(process: subprocess.Popen, store: str, store_path: Path) -> str:
    """Freezes `process` (SIGSTOP) while it trains a member; returns that member's run.

    A child seen training may have finished by the time the signal lands (a loaded machine),
    so the run is read from the store once the process is frozen, and it is let go and
    frozen again until it holds one.
    """
    seen: list[str] = []
    for _ in range(20):
        training(store, "claims", 1, lambda: process.poll() is None)
        stop_outside_a_write(process, store_path)
        rows = read_store(store, _HELD, str(process.pid), seen=seen)
        if rows:
            return rows[0][0]
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError(f"never froze it while it held a member: {seen[-5:]}")


@pytest.mark.integration
def test_a_member_held_by_a_process_that_dies_is_trained_by_the_one_waiting(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = start(tmp_path, "--pack", "1")
    second = None
    try:
        held = freeze_holding_a_member(first, store, tmp_path / "mlflow.db")
        second = start(tmp_path, "--pack", "1")
        output = ""
        while "waiting" not in output:  # it trained every other member, then waits
            line = second.stdout.readline()
            assert line, f"the second process ended without waiting:\n{output}"
            output += line
        os.kill(first.pid, signal.SIGKILL)
        rest, _ = second.communicate(timeout=600)
        output += rest
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
        first.wait()

    assert second.returncode == 0, output
    assert "Traceback" not in output
    assert MlflowClient(store).get_run(held).info.status == "KILLED"
    counts = finished_once(store)
    assert len(counts) == 6 and set(counts.values()) == {1}, counts


@pytest.mark.integration
def test_four_processes_and_six_signals_then_reruns_finish_each_member_once(tmp_path):
    four_processes_and_six_signals(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")


def four_processes_and_six_signals(tmp_path: Path, store: str) -> None:
    """Four `dlkit compare` processes on one fresh store, two of them on one experiment;
    six signals at random moments (seeded); then every command rerun to the end: each
    member FINISHED exactly once, nothing left RUNNING, no traceback."""
    import random

    rng = random.Random(0)
    files = {}
    for name in ("claims", "other", "third"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**EXPERIMENT, "name": name}))
        files[name] = path

    def launch(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "dlkit.cli", "compare", str(files[name])]
            + ["--tracking-uri", store, "--output", "reports"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    names = ["claims", "claims", "other", "third"]
    processes = [launch(name) for name in names]
    for _ in range(6):
        time.sleep(rng.uniform(1.0, 6.0))
        running = [p for p in processes if p.poll() is None]
        if running:
            rng.choice(running).send_signal(rng.choice([signal.SIGINT, signal.SIGTERM]))
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode in (0, 130, 143), output
        assert "Traceback" not in output, output
    reruns = [launch(name) for name in dict.fromkeys(names)]  # every command, to the end
    for process in reruns:
        output = process.communicate(timeout=600)[0]
        assert process.returncode == 0 and "Traceback" not in output, output

    client = MlflowClient(store)
    for name in dict.fromkeys(names):
        experiment = client.get_experiment_by_name(name).experiment_id
        runs = client.search_runs([experiment], "tags.`dlkit.role` != 'parent'")
        assert not [r for r in runs if r.info.status == "RUNNING"], name
        done = collections.Counter(
            r.data.tags["dlkit.config_hash"] for r in runs if r.info.status == "FINISHED"
        )
        assert len(done) == 6 and set(done.values()) == {1}, (name, done)


def test_a_claim_of_another_machine_lives_as_long_as_its_heartbeat():
    now = 1_000_000.0
    other = {"dlkit.host": "another-machine", "dlkit.pid": "12"}
    fresh = {**other, "dlkit.heartbeat": f"{now - 30:.3f}"}
    stale = {**other, "dlkit.heartbeat": f"{now - liveness.HEARTBEAT_STALE - 1:.3f}"}
    assert process_alive(fresh, now=now)
    assert not process_alive(stale, now=now)
    assert process_alive(other, now=now)  # an older dlkit's run: nothing here can tell
    # on this machine the pid decides, whatever the heartbeat says
    assert not process_alive({"dlkit.host": HOST, "dlkit.pid": str(dead_pid()), **fresh})


def test_a_process_renews_the_heartbeat_of_the_runs_it_holds_until_they_end(tmp_path, monkeypatch):
    monkeypatch.setattr(tracker_module, "HEARTBEAT_EVERY", 0.2)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracker, client = Tracker(store, "beats"), MlflowClient(store)

    def beat(run_id: str) -> float:
        return float(client.get_run(run_id).data.tags["dlkit.heartbeat"])

    with tracker.run("held") as run_id:
        first = beat(run_id)
        deadline = time.monotonic() + 30
        while beat(run_id) == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert beat(run_id) > first
    ended = beat(run_id)
    time.sleep(0.7)  # three beats
    assert beat(run_id) == ended  # no longer held: no longer renewed
    assert not tracker._held


def test_a_sweep_run_is_no_rival_of_a_child_of_the_same_configuration():
    child = record("b", "RUNNING", 2)
    child.tags["dlkit.role"] = "child"
    sweep = record("a", "FINISHED", 1)
    sweep.tags["dlkit.role"] = "tuning"
    assert rival(child, [sweep], running=True) is None
    assert rival(sweep, [child], running=True) is None
