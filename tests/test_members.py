"""Members: one answer to "which run counts", whoever asks (resume, the sweep, the report)."""

from __future__ import annotations

import yaml
from mlflow.tracking import MlflowClient
from tiny import tiny

import dlkit
from dlkit import keys
from dlkit.comparison.loading import load_comparison
from dlkit.comparison.sweep import _sweep_scores
from dlkit.tracking.claims import holders
from dlkit.tracking.members import finished, members
from dlkit.tracking.tracker import Tracker


def _duplicate(client: MlflowClient, run, start_time: int, metrics: dict[str, float]) -> str:
    """A second FINISHED run of `run`'s member, started at `start_time` (ms)."""
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") or
            k == "mlflow.parentRunId"}  # fmt: skip
    copy = client.create_run(run.info.experiment_id, start_time=start_time, tags=tags)
    for key, value in metrics.items():
        client.log_metric(copy.info.run_id, key, value)
    client.set_terminated(copy.info.run_id, "FINISHED")
    return copy.info.run_id


def test_resume_the_sweep_the_claims_and_the_report_name_the_same_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = tmp_path / "dup.yaml"
    spec = tiny("dup", seeds=1, tune={"learning_rate": [0.01, 0.1], "seeds": 1})
    path.write_text(yaml.safe_dump(spec))
    dlkit.compare(path, tracking_uri=uri, output_dir=None, log=lambda line: None)
    client = MlflowClient(uri)
    tracker = Tracker(uri, "dup", create=False)
    parent = tracker.latest_parent()
    runs = client.search_runs(
        [client.get_experiment_by_name("dup").experiment_id],
        f"tags.`dlkit.comparison` = '{parent}'",  # the sweep's runs sit under tuning runs
    )
    child = next(r for r in runs if r.data.tags[keys.ROLE] == "child")
    sweep = next(r for r in runs if r.data.tags[keys.ROLE] == "tuning")
    first = min(r.info.start_time for r in runs) - 1000
    # Older duplicates: the store lists them last, and a later run is never the one that counts.
    old_child = _duplicate(client, child, first, {**child.data.metrics, "test_accuracy": 0.123})
    old_sweep = _duplicate(client, sweep, first, sweep.data.metrics)
    config = child.data.tags[keys.CONFIG_HASH]
    swept = sweep.data.tags[keys.CONFIG_HASH]

    held = members(tracker, parent)
    assert held[("child", config)].run.run_id == old_child
    assert held[("child", config)].runs == 2
    assert finished(tracker, parent)[config] == old_child  # what resume skips on
    assert finished(tracker, parent, "tuning")[swept] == old_sweep
    assert _sweep_scores(tracker, parent)[swept] == sweep.data.metrics["kept_val_accuracy"]
    assert holders(tracker, parent)[("child", config)] == "FINISHED"
    report = load_comparison(tracker, parent).runs.set_index("config_hash")
    assert report.loc[config, "run_id"] == old_child
    assert report.loc[config, "test_accuracy"] == 0.123

    # Resumed, nothing retrains, and the report still names the same run.
    lines: list[str] = []
    again = dlkit.compare(path, tracking_uri=uri, output_dir=None, log=lines.append)
    assert any("2 of 2 runs already finished" in line for line in lines), lines
    assert again.runs.set_index("config_hash").loc[config, "run_id"] == old_child


def test_a_finished_run_beats_a_failed_one_and_a_newer_failure_the_older(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "states")
    client = tracker.client
    experiment = client.get_experiment_by_name("states").experiment_id
    parent = client.create_run(experiment, tags={keys.ROLE: "parent"}).info.run_id

    def run(status: str, start: int, config: str = "h") -> str:
        tags = {"mlflow.parentRunId": parent, keys.ROLE: "child", keys.CONFIG_HASH: config}
        made = client.create_run(experiment, start_time=start, tags=tags).info.run_id
        client.set_terminated(made, status)
        return made

    run("KILLED", 1)
    failed_old, failed_new = run("FAILED", 2), run("FAILED", 3)
    assert members(tracker, parent)[("child", "h")].run.run_id == failed_new
    assert holders(tracker, parent) == {("child", "h"): "FAILED"}
    done = run("FINISHED", 4)
    assert members(tracker, parent)[("child", "h")].run.run_id == done
    assert members(tracker, parent)[("child", "h")].runs == 4
    assert failed_old != done
    killed = run("KILLED", 5, "k")
    assert members(tracker, parent)[("child", "k")].state == "KILLED"
    assert ("child", "k") not in holders(tracker, parent) and killed
