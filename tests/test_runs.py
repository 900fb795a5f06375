"""Runs: a child run as a function over a picklable spec, in this process and in another."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest
from mlflow.tracking import MlflowClient

from dlkit import Recipe, keys
from dlkit.data.dataset import DataSpec
from dlkit.execution.children import ChildResult, ChildSpec, run_child
from dlkit.recipes.train_options import TrainOptions
from dlkit.tracking.tracker import Tracker

DATA = DataSpec(source="digits", train_size=200)
RECIPE = Recipe(name="tiny", depth=1, width=16, epochs=2, batch_size=50)


def spec_for(tracking_uri: str, recipe: Recipe = RECIPE, **fields) -> ChildSpec:
    tracker = Tracker(tracking_uri, "children")
    parent = tracker.client.create_run(tracker.experiment_id, run_name="parent").info.run_id
    return ChildSpec.of(
        recipe,
        DATA,
        TrainOptions(seed=3, verbose=0),
        tracker,
        run_name="tiny/seed3",
        parent_id=parent,
        tags={"dlkit.variant": "tiny"},
        params={"variant": "tiny"},
        **fields,
    )


def test_a_spec_is_plain_data_and_survives_pickling(tracking_uri):
    spec = spec_for(tracking_uri)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.recipe["width"] == 16 and spec.data["source"] == "digits"
    assert spec.tracking_uri.startswith("sqlite:////")  # absolute: any worker finds it


@pytest.mark.integration  # a real process or server, or a benchmark
def test_a_child_in_another_process_logs_the_same_run_as_one_here(tracking_uri):
    spec = spec_for(tracking_uri)
    here = run_child(spec)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        there = pool.submit(run_child, spec).result(timeout=300)
    assert isinstance(there, ChildResult)
    assert here.status == there.status == "FINISHED" and here.run_id != there.run_id
    assert there.test_accuracy == here.test_accuracy  # same seed, same data, same numbers
    client = MlflowClient(tracking_uri)
    for result in (here, there):
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == spec.parent_id
        assert run.data.tags["dlkit.variant"] == "tiny" and run.data.params["seed"] == "3"
        assert run.data.metrics["test_accuracy"] == pytest.approx(result.test_accuracy)


def test_a_failing_child_comes_back_failed_with_its_run_ended(tracking_uri):
    diverges = RECIPE.replace(
        optimizer="sgd", learning_rate=1e12, normalization="none", initializer="large_normal"
    )
    result = run_child(spec_for(tracking_uri, diverges))
    assert result.status == "FAILED" and result.test_accuracy is None
    assert result.failure.startswith("TrainingDiverged")
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.info.status == "FAILED" and "diverged" in run.data.tags[keys.FAILURE]
