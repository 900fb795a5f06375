"""Pack checkpoints: an interrupted pack continues where it was saved, as if never stopped."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from dlkit import DlkitError, Recipe, signals
from dlkit.execution.checkpoints import AFTER, FOLDER, PackCheckpoint
from dlkit.nn.pack_training import train_pack
from dlkit.tracking.tracker import Tracker

# Members that each need their own state restored: momentum slots, dropout masks drawn from
# the step, early stopping with best weights, a member that stops before the others.
RECIPES = [
    Recipe(name="a", depth=2, width=16, epochs=6, batch_size=64, learning_rate=0.05,
           optimizer="momentum", dropout=0.2),
    Recipe(name="b", depth=2, width=16, epochs=6, batch_size=64, learning_rate=0.01,
           optimizer="momentum", early_stopping=True, patience=1, restore_best_weights=True),
    Recipe(name="c", depth=2, width=16, epochs=3, batch_size=64, learning_rate=0.003,
           optimizer="momentum"),
]  # fmt: skip
SEEDS = [0, 1, 2]
HASHES = ["hash-a", "hash-b", "hash-c"]


@pytest.fixture
def parent(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "checkpoints")
    with tracker.run("parent") as parent_id:
        yield tracker, parent_id


def interrupted_at(epoch: int):
    """An `on_epoch` that sends this process a real SIGINT as `epoch` ends."""

    def on_epoch(k: int, logs: dict, at: int) -> None:
        if k == 0 and at == epoch:
            os.kill(os.getpid(), signal.SIGINT)

    return on_epoch


def test_an_interrupted_pack_resumes_to_the_uninterrupted_result(digits, parent):
    tracker, parent_id = parent
    plain, _, _ = train_pack(RECIPES, SEEDS, digits)

    first = PackCheckpoint(tracker, parent_id, HASHES)
    with signals.handled(), pytest.raises(signals.Interrupted):
        train_pack(RECIPES, SEEDS, digits, on_epoch=interrupted_at(2), checkpoint=first)
    assert first.saved_epoch == 2  # saved at the epoch the interrupt arrived in
    assert "saved at epoch 2 of 6 and resumes on rerun" in first.kept(6)

    again = PackCheckpoint(tracker, parent_id, HASHES)
    replayed: list[tuple[int, int]] = []
    resumed, _, seconds = train_pack(
        RECIPES,
        SEEDS,
        digits,
        checkpoint=again,
        on_epoch=lambda k, logs, e: replayed.append((k, e)),
    )
    assert again.loaded_from == first.key
    # every member's curve is whole in its new run: the restored epochs are replayed first
    assert [e for k, e in replayed if k == 2] == [1, 2, 3]
    for mine, theirs in zip(resumed, plain, strict=True):
        assert mine.history.keys() == theirs.history.keys()
        for key, values in theirs.history.items():
            assert mine.history[key] == pytest.approx(values, abs=1e-6), key
        assert mine.test == pytest.approx(theirs.test, abs=1e-6)
        assert mine.stopped_epoch == theirs.stopped_epoch
        for x, y in zip(mine.model.get_weights(), theirs.model.get_weights(), strict=True):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    again.remove()
    assert tracker.list_artifacts(parent_id, FOLDER) == []


def test_a_pack_of_some_of_the_saved_members_resumes_them(digits, parent):
    # A rerun packs only the members that had not finished: their rows of the saved pack.
    tracker, parent_id = parent
    plain, _, _ = train_pack(RECIPES[:2], SEEDS[:2], digits)
    first = PackCheckpoint(tracker, parent_id, HASHES)
    with signals.handled(), pytest.raises(signals.Interrupted):
        train_pack(RECIPES, SEEDS, digits, on_epoch=interrupted_at(2), checkpoint=first)
    later = PackCheckpoint(tracker, parent_id, list(reversed(HASHES[:2])))
    resumed, _, _ = train_pack(RECIPES[1::-1], SEEDS[1::-1], digits, checkpoint=later)
    assert later.loaded_from == first.key
    for mine, theirs in zip(resumed, reversed(plain), strict=True):
        assert mine.test == pytest.approx(theirs.test, abs=1e-6)


def test_members_done_before_an_interrupt_end_finished_and_the_rest_killed(digits, parent):
    from mlflow.tracking import MlflowClient

    from dlkit.execution.pack_runs import MemberRun, tracked_pack

    tracker, parent_id = parent
    plain, _, _ = train_pack(RECIPES, SEEDS, digits)
    tags = [{"dlkit.role": "child", "dlkit.config_hash": h} for h in HASHES]
    with signals.handled(), pytest.raises(signals.Interrupted):
        members = [MemberRun(*m) for m in zip(RECIPES, SEEDS, ["a", "b", "c"], tags)]
        tracked_pack(
            tracker, members, digits, parent_id=parent_id, on_epoch=interrupted_at(4),
            checkpoints=True,
        )  # fmt: skip
    client = MlflowClient(tracker.tracking_uri)
    runs = {r.info.run_name: r for r in tracker.client.search_runs([tracker.experiment_id])}
    # c's 3 epochs were done at the interrupt in epoch 4: its run is whole, and FINISHED
    assert runs["c"].info.status == "FINISHED"
    assert runs["c"].data.metrics["test_accuracy"] == pytest.approx(plain[2].test["accuracy"])
    assert len(client.get_metric_history(runs["c"].info.run_id, "loss")) == 3
    assert runs["a"].info.status == "KILLED"
    last = len(plain[1].history["loss"])  # b's last epoch: early stopping may end it first
    assert runs["b"].info.status == ("FINISHED" if last <= 4 else "KILLED")


def test_saves_stay_within_their_share_of_the_training_time(parent, monkeypatch):
    tracker, parent_id = parent
    checkpoint = PackCheckpoint(tracker, parent_id, HASHES)
    # the first save, once the pack has trained a while, measures what one costs
    assert not checkpoint.due(0.5) and checkpoint.due(2.0)
    checkpoint._saving, checkpoint._saves = 1.0, 1
    assert not checkpoint.due(30.0) and checkpoint.due(40.0)  # two saves: 2 s, 5% of 40 s
    monkeypatch.setenv(AFTER, "0")  # the first save at the first epoch
    assert PackCheckpoint(tracker, parent_id, HASHES).due(0.0)
    monkeypatch.setenv(AFTER, "soon")
    with pytest.raises(DlkitError, match="DLKIT_CHECKPOINT_AFTER must be a number of seconds"):
        PackCheckpoint(tracker, parent_id, HASHES)


def test_a_held_pack_waits_at_its_epochs_end_until_let_go_and_a_signal_ends_the_hold(
    digits, parent, tmp_path, monkeypatch
):
    import threading

    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(signals.HOLD, str(hold))
    events: list[str] = []

    def let_go() -> None:
        events.append("let go")
        hold.unlink()

    def on_epoch(k: int, logs: dict, at: int) -> None:
        if k == 0:
            events.append(f"epoch {at}")
            if at == 1:
                threading.Timer(0.3, let_go).start()

    train_pack(RECIPES[2:], SEEDS[2:], digits, on_epoch=on_epoch)
    assert events == ["epoch 1", "let go", "epoch 2", "epoch 3"]

    # a signal ends the hold, and the epoch it held at is saved (none was due)
    hold.touch()
    checkpoint = PackCheckpoint(tracker := parent[0], parent[1], HASHES[2:])
    monkeypatch.setenv(AFTER, "1000")

    def signal_once_held(k: int, logs: dict, at: int) -> None:
        if k == 0 and at == 1:
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()

    with signals.handled(), pytest.raises(signals.Interrupted):
        train_pack(RECIPES[2:], SEEDS[2:], digits, on_epoch=signal_once_held,
                   checkpoint=checkpoint)  # fmt: skip
    assert checkpoint.saved_epoch == 1 and tracker.list_artifacts(parent[1], FOLDER)


PACKED = {
    "name": "resumed",
    "dataset": {"source": "digits"},
    "seeds": 2,
    "overrides": {"epochs": 60, "width": 32, "batch_size": 64, "learning_rate": 0.003},
    "variants": ["deep-relu", "deep-sigmoid"],  # one shape: one pack of 4
}


@pytest.mark.integration
def test_sigint_mid_pack_then_a_rerun_ends_as_an_uninterrupted_comparison(tmp_path):
    sigint_mid_pack_then_a_rerun(tmp_path, f"sqlite:///{tmp_path / 'interrupted.db'}")


def sigint_mid_pack_then_a_rerun(tmp_path, store: str) -> None:
    """A real `dlkit compare` process on `store`, a real SIGINT while its pack trains, a real
    rerun in another process: its results equal an uninterrupted comparison's."""
    import subprocess
    import sys
    import time

    import yaml
    from mlflow.tracking import MlflowClient

    file = tmp_path / "resumed.yaml"
    file.write_text(yaml.safe_dump(PACKED))
    plain = f"sqlite:///{tmp_path / 'plain.db'}"

    def command(uri: str) -> list[str]:
        return [sys.executable, "-m", "dlkit.cli", "compare", str(file), "--tracking-uri", uri,
                "--output", str(tmp_path / "reports")]  # fmt: skip

    def accuracies(uri: str) -> dict[str, float]:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("resumed").experiment_id
        runs = client.search_runs(
            [experiment], "tags.`dlkit.role` = 'child' and attributes.status = 'FINISHED'"
        )  # the interrupted attempt's runs stay, KILLED
        found = {r.data.tags["dlkit.config_hash"]: r.data.metrics["test_accuracy"] for r in runs}
        assert len(found) == len(runs) == 4  # each member finished once
        return found

    subprocess.run(command(plain), check=True, capture_output=True, timeout=600)
    # Its pack saves its first epoch and holds there: the SIGINT finds it mid-pack, however
    # fast the CPU
    hold = tmp_path / "hold"
    hold.touch()
    held = {**os.environ, AFTER: "0", signals.HOLD: str(hold)}
    process = subprocess.Popen(command(store), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=held)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(f"**/{FOLDER}/*.json")):  # its pack saved a first epoch
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    assert "in training was saved at epoch " in output and "resumes on rerun" in output, output
    saved = int(output.split("saved at epoch ")[1].split()[0])
    assert saved == 1, output  # where it held

    again = subprocess.run(command(store), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("resumed").experiment_id
    finished = client.search_runs([experiment], "attributes.status = 'FINISHED'")
    assert {
        r.data.tags.get("dlkit.resumed_epoch")
        for r in finished
        if r.data.tags.get("dlkit.role") == "child"
    } == {str(saved)}  # each says where it continued from
    resumed, reference = accuracies(store), accuracies(plain)
    assert resumed.keys() == reference.keys()
    for config, accuracy in reference.items():
        assert resumed[config] == pytest.approx(accuracy, abs=1e-6)
    parent = Tracker(store, "resumed").latest_parent()
    assert not MlflowClient(store).list_artifacts(parent, FOLDER)  # removed once logged
