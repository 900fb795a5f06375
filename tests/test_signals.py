"""Signals and races against real dlkit processes: nothing lost or left RUNNING, no broken store.

Each trial starts `dlkit compare` as a real process, sends a signal at one
point of its life (while the store is being created, as the parent opens,
mid-child, during the report), then reruns the comparison, which must
complete, reuse every child that had finished, and leave no run RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from trials import read_store

from dlkit import compare, signals

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "signals",
    "dataset": {"source": "digits", "train_size": 300},
    "seeds": 2,
    "overrides": {"epochs": 6, "width": 32, "batch_size": 32},
    "variants": ["deep-relu", "softmax-regression"],
}
RUNS = 4


class Process:
    """A `dlkit compare` process whose output is read as it comes."""

    def __init__(self, folder: Path, experiment: Path, *, held: bool = True):
        self.lines: list[str] = []
        # A cache of its own, so that this process builds the store's tables itself.
        environment = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache")}
        if held:  # its trainings wait at their first epoch's end, for the signal
            (folder / "hold").touch()
            environment[signals.HOLD] = str(folder / "hold")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dlkit.cli", "compare", str(experiment)]
            + ["--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--output", "reports"],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_for(self, condition, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.popen.poll() is not None:
                seen = f"{len(SEEN)} polls of the store, the last: {SEEN[-5:]}\n"
                pytest.fail("dlkit ended before the signal:\n" + seen + "".join(self.lines))
            if time.monotonic() > deadline:
                self.popen.kill()
                pytest.fail("timed out waiting:\n" + "".join(self.lines))
            time.sleep(0.01)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self, timeout: float = 120.0) -> int:
        code = self.popen.wait(timeout=timeout)
        time.sleep(0.1)  # let the reader thread take the last lines
        return code


def setup(tmp_path: Path, *, epochs: int = 6) -> Path:
    path = tmp_path / "signals.yaml"
    overrides = {**EXPERIMENT["overrides"], "epochs": epochs}
    path.write_text(yaml.safe_dump({**EXPERIMENT, "overrides": overrides}))
    return path


def runs_by_status(folder: Path) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    found = client.get_experiment_by_name(EXPERIMENT["name"])
    statuses: dict[str, list] = {}
    for run in client.search_runs([found.experiment_id]) if found else []:
        statuses.setdefault(run.info.status, []).append(run)
    return statuses


def children_with_status(folder: Path, status: str) -> list:
    return [
        run
        for run in runs_by_status(folder).get(status, [])
        if run.data.tags.get("dlkit.role") == "child"
    ]


SEEN: list[str] = []  # what the polls of the store saw, for a failure's message
# Children RUNNING in the store whose results are not logged yet: in training.
_TRAINING = """
    SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid
    WHERE runs.status = 'RUNNING' AND tags.key = 'dlkit.role' AND tags.value = 'child'
    AND NOT EXISTS (SELECT 1 FROM latest_metrics AS m
                    WHERE m.run_uuid = runs.run_uuid AND m.key = 'test_accuracy')
"""


def training_a_child(folder: Path) -> bool:
    """Whether the store holds a child in training: RUNNING, its results not logged yet."""
    rows = read_store(f"sqlite:///{folder / 'mlflow.db'}", _TRAINING, seen=SEEN)
    return bool(rows and rows[0][0] > 0)


def rerun_completes_with_nothing_lost(folder: Path, experiment: Path) -> None:
    before = runs_by_status(folder) if (folder / "mlflow.db").exists() else {}
    finished_before = {
        run.data.tags.get("dlkit.config_hash")
        for run in before.get("FINISHED", [])
        if run.data.tags.get("dlkit.role") == "child"
    }
    lines: list[str] = []
    result = compare(
        experiment,
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        output_dir=folder / "reports",
        verbose=0,
        log=lines.append,
    )
    assert (result.runs["status"] == "FINISHED").all() and len(result.runs) == RUNS
    resumed = [line for line in lines if "runs already finished" in line]
    reused = int(resumed[0].split("; ")[1].split(" of ")[0]) if resumed else 0
    assert reused == len(finished_before), (
        lines,
        {status: [r.info.run_name for r in runs] for status, runs in before.items()},
    )
    after = runs_by_status(folder)
    assert "RUNNING" not in after, [r.info.run_name for r in after["RUNNING"]]
    assert set(after) <= {"FINISHED", "KILLED"}


POINTS = {
    # the store's tables are being built (in the template every new store copies)
    "store creation": lambda p, folder: any(folder.glob("cache/dlkit/.mlflow-*.tmp")),
    "parent created": lambda p, folder: p.saw("Comparison 'signals'"),
    # a child is training (the store is polled only once it surely exists)
    "mid-child": lambda p, folder: p.saw(": training") and training_a_child(folder),
    "report": lambda p, folder: p.saw("[4/4] softmax-regression seed 1: test accuracy"),
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", list(POINTS))
def test_a_signal_at_any_point_loses_nothing_and_leaves_nothing_running(tmp_path, point, signum):
    experiment = setup(tmp_path)
    # Held, a child is still training when the signal comes, however fast the CPU; the
    # report comes only after every training
    process = Process(tmp_path, experiment, held=point != "report")
    process.wait_for(lambda: POINTS[point](process, tmp_path))
    process.popen.send_signal(signum)
    code = process.finish()
    output = "".join(process.lines)
    assert "Traceback" not in output, output
    if point == "report" and code == 0:
        pass  # the report was done before the signal landed: nothing to interrupt
    else:
        assert code == 128 + signum, output
        assert "Interrupted" in output and "run the same command again" in output
    if (tmp_path / "mlflow.db").exists():
        statuses = runs_by_status(tmp_path)
        assert "FAILED" not in statuses  # an interrupt is never a failure
    rerun_completes_with_nothing_lost(tmp_path, experiment)


def test_sigkill_mid_child_leaves_a_run_the_rerun_marks_killed(tmp_path):
    experiment = setup(tmp_path)
    process = Process(tmp_path, experiment)
    process.wait_for(lambda: POINTS["mid-child"](process, tmp_path))
    process.popen.kill()
    assert process.finish() == -signal.SIGKILL
    running = runs_by_status(tmp_path)["RUNNING"]  # the parent and the training pack's members
    left = {r.info.run_id for r in running if r.data.tags.get("dlkit.role") == "child"}
    assert left and len(running) == len(left) + 1
    rerun_completes_with_nothing_lost(tmp_path, experiment)
    killed = {
        r.info.run_id
        for r in runs_by_status(tmp_path)["KILLED"]
        if "its process ended" in r.data.tags.get("dlkit.failure", "")
    }
    assert killed == left


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    experiment = setup(tmp_path)
    process = Process(tmp_path, experiment)
    process.wait_for(lambda: POINTS["mid-child"](process, tmp_path))
    process.popen.send_signal(signal.SIGINT)
    # Two signals sent back to back reach Python as one: the second is sent once the first
    # has landed (the child ended KILLED), as a user's second Ctrl-C finds dlkit winding down.
    deadline = time.monotonic() + 60
    while process.popen.poll() is None and not children_with_status(tmp_path, "KILLED"):
        assert time.monotonic() < deadline, "".join(process.lines)
        time.sleep(0.01)
    if process.popen.poll() is None:  # still ending the parent run
        process.popen.send_signal(signal.SIGINT)
    # 130 from dlkit, or death by SIGINT itself once Python's shutdown has reset the
    # handlers: a shell shows both as 130.
    assert process.finish(timeout=30) in (130, -signal.SIGINT)
    assert "Traceback" not in "".join(process.lines)
    rerun_completes_with_nothing_lost(tmp_path, experiment)


def test_two_processes_starting_on_one_fresh_store_both_succeed(tmp_path):
    start = time.time() + 6  # all import MLflow first, then create the store together
    code = (
        "import sys, time\n"
        "from dlkit.tracking.tracker import Tracker\n"
        "time.sleep(max(0, float(sys.argv[1]) - time.time()))\n"
        "Tracker(sys.argv[2], sys.argv[3])\n"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(start), uri, name],
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},  # tables built too
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("same", "same", "other")
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    client = MlflowClient(uri)
    assert {e.name for e in client.search_experiments()} >= {"same", "other"}
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_a_single_training_interrupted_ends_killed_and_says_a_rerun_starts_over(tmp_path):
    # `dlkit train` is a pack of one: a Ctrl-C mid-training ends its run KILLED with the
    # curves it had, and the message does not promise a resume that `train` has not got.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "hold").touch()  # it waits at its first epoch's end, for the signal
    popen = subprocess.Popen(
        [sys.executable, "-m", "dlkit.cli", "train", "deep-relu", "-d", "digits"]
        + ["--epochs", "5", "--tracking-uri", store],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # each epoch's line as it comes
        env={**os.environ, "PYTHONUNBUFFERED": "1", signals.HOLD: str(tmp_path / "hold")},
    )
    lines = []
    for line in popen.stdout:
        lines.append(line)
        if line.startswith("Epoch 1/"):
            break
    popen.send_signal(signal.SIGINT)
    output = "".join(lines) + popen.stdout.read()
    assert popen.wait(timeout=120) == 130, output
    assert "Traceback" not in output, output
    assert "Interrupted (Ctrl-C)" in output and "ends KILLED" in output, output
    assert "continue where it stopped" not in output
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("dlkit").experiment_id])
    assert run.info.status == "KILLED"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 1  # its curve: held at 1
