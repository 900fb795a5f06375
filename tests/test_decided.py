"""Decided verdicts: random splits paired by seed, and seeds added until each verdict decides."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from tiny import tiny

import dlkit
from dlkit.cli import main
from dlkit.comparison.compare import report
from dlkit.comparison.experiment import config_hash
from dlkit.comparison.experiment_file import parse_experiment
from dlkit.comparison.loading import load_comparison
from dlkit.data.dataset import DataSpec
from dlkit.errors import DlkitError
from dlkit.recipes.recipe import get_recipe
from dlkit.tracking.tracker import Tracker


def test_each_seed_draws_its_own_stratified_split_of_the_same_sizes():
    fixed = DataSpec("digits").load()
    one, two = (
        DataSpec("digits", split="random").load(1),
        DataSpec("digits", split="random").load(2),
    )
    for split in ("train", "validation", "test"):
        sizes = {len(d.arrays(split)[1]) for d in (fixed, one, two)}
        assert len(sizes) == 1, split  # the sizes the fixed split has, every seed
    assert one.digest("test") != two.digest("test")
    assert one.digest("test") == DataSpec("digits", split="random").load(1).digest("test")
    # every example once: a partition of all 1,797
    pooled = np.concatenate([one.arrays(s)[0] for s in ("train", "validation", "test")])
    assert len(np.unique(pooled, axis=0)) == len(pooled) == 1797
    # stratified: each class's share of the test set within one example of the whole's
    counts = np.bincount(one.arrays("test")[1], minlength=10)
    assert counts.max() - counts.min() <= 2
    assert DataSpec("digits").load(5).digest("test") == fixed.digest("test")  # fixed: seed-free


def test_the_split_is_part_of_a_runs_identity_and_fixed_keeps_old_hashes():
    recipe = get_recipe("deep-relu")
    assert config_hash(recipe, DataSpec("digits"), 0) != config_hash(
        recipe, DataSpec("digits", split="random"), 0
    )
    assert "split" not in DataSpec("digits").identity()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"dataset": {"source": "digits", "split": "shuffled"}}, "dataset.split"),
        ({"max_seeds": 1}, "max_seeds: expected a whole number of seeds from 2"),
        ({"equivalence": 0}, "equivalence: expected a margin above 0"),
        ({"dataset": {"source": "digits", "split": "random", "train_offset": 10}}, "train_offset"),
    ],
)
def test_bad_split_and_budget_settings_name_what_is_wrong(raw, message):
    with pytest.raises(DlkitError, match=message):
        parse_experiment({**tiny("bad"), **raw})


@pytest.fixture(scope="module")
def decided(tmp_path_factory):
    """A tiny comparison, random splits, 2 seeds then 2 more per look, up to 6."""
    folder = tmp_path_factory.mktemp("decided")
    uri = f"sqlite:///{folder}/mlflow.db"
    path = folder / "decided.yaml"
    spec = tiny("decided", seeds=2, max_seeds=6, expect=["relu ~ sigmoid within 0.0001"])
    spec["dataset"]["split"] = "random"
    path.write_text(yaml.safe_dump(spec))
    lines: list[str] = []
    result = dlkit.compare(path, tracking_uri=uri, output_dir=folder / "reports", log=lines.append)
    return result, uri, path, folder, lines


def test_seeds_are_added_until_the_budget_when_the_verdict_stays_open(decided):
    result, uri, _, _, lines = decided
    [verdict] = result.expectations
    # 0.0001 is far inside what 6 seeds of a 2-epoch net can show: it cannot be held
    assert verdict.status in ("inconclusive", "contradicted")
    # at 2 seeds the looks spend too little to decide anything: a second look always comes
    assert any("adding 2 seeds to relu, sigmoid (look 2, budget 6)" in line for line in lines)
    plan = json.loads(Tracker(uri, "decided", create=False).read_artifact(
        result.parent_run_id, "plan.json"))  # fmt: skip
    looks = plan["sequential"]["looks"]
    assert [look["seeds"] for look in looks][:2] == [[0, 1], [0, 1, 2, 3]]
    assert sorted(result.runs["seed"].unique()) == list(range(2 * len(looks)))
    assert verdict.decided or len(looks) == 3  # open: it went on to the budget
    assert plan["context"]["split"] == "random"
    text = result.format()
    assert "paired on their random splits" in text
    assert "Each interval's level is what its looks spent of that" in " ".join(text.split())
    assert all(len(line) <= 100 for line in text.split("Expectations")[1].splitlines())


def test_a_rebuilt_report_reaches_the_same_verdict(decided, tmp_path):
    result, uri, *_ = decided
    again = report("decided", tracking_uri=uri, output_dir=None)
    verdicts = [(v.status, v.low, v.high) for v in result.expectations]
    assert [(v.status, v.low, v.high) for v in again.expectations] == verdicts
    # what the looks between rounds read (no curves) decides as the whole report does
    light = load_comparison(Tracker(uri, "decided", create=False), verdicts_only=True)
    assert [(v.status, v.low, v.high) for v in light.expectations] == verdicts
    assert not any(light.histories.values())


def test_a_rerun_with_a_larger_budget_continues_with_the_looks_kept(decided):
    result, uri, path, folder, _ = decided
    lines: list[str] = []
    tracker = Tracker(uri, "decided", create=False)
    before = json.loads(tracker.read_artifact(result.parent_run_id, "plan.json"))
    more = dlkit.compare(path, tracking_uri=uri, output_dir=None, max_seeds=8, log=lines.append)
    runs = len(result.runs)
    assert any(f"{runs} of {runs} runs already finished" in line for line in lines), lines
    looks = json.loads(tracker.read_artifact(more.parent_run_id, "plan.json"))["sequential"]
    kept = before["sequential"]["looks"]
    assert looks["looks"][: len(kept)] == kept  # what they spent stays spent
    if not result.expectations[0].decided:  # still open: seeds go on under the new budget
        assert looks["looks"][-1]["budget"] == 8
        assert sorted(more.runs["seed"].unique()) == list(range(8))


def test_the_command_line_takes_split_max_seeds_and_equivalence(tmp_path):
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(tiny("cli", seeds=2, expect=["relu > sigmoid"])))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["compare", str(path), "--tracking-uri", uri, "--output", str(tmp_path / "r")]
    out = CliRunner().invoke(
        main, [*args, "--split", "random", "--max-seeds", "4", "--equivalence", "0.5"]
    )
    assert out.exit_code == 0, out.output
    # within ±0.5 at once: ReLU vs sigmoid differ by far less on 300 digits at 2 epochs
    assert "[EQUIVALENT] relu > sigmoid" in out.output or "[HELD]" in out.output
    bad = CliRunner().invoke(main, [*args, "--max-seeds", "1"])
    assert bad.exit_code == 2 and "--max-seeds" in bad.output


def test_a_random_split_a_class_cannot_fill_says_so_before_training():
    import numpy as np

    from dlkit.data.splits import random_index

    with pytest.raises(DlkitError, match="Cannot draw a stratified random split .* split: fixed"):
        random_index(np.array([0] * 50 + [1]), 30, 5, 16, 0)


def test_a_variant_that_fell_behind_gets_the_seeds_the_others_have_first():
    from types import SimpleNamespace

    from dlkit.comparison.expectations import parse_expectation
    from dlkit.comparison.seeds import Seeds

    seeds = Seeds({"a": [0, 1, 2, 3, 4, 5], "b": [0, 1, 2], "c": [0, 1, 2]}, 8, 0.01, 3, [])
    open_ = SimpleNamespace(status="inconclusive", futile=False)
    comparison = SimpleNamespace(
        expectations=[open_], parsed=[parse_expectation("b > a", ["a", "b", "c"])]
    )
    lines: list[str] = []
    assert seeds.more(comparison, lines.append)
    # b pairs with a's seeds 3-5 before any new one; a takes 2 new seeds, to its budget of 8
    assert seeds.by_variant == {"a": [0, 1, 2, 3, 4, 5, 6, 7], "b": [0, 1, 2, 3, 4, 5],
                                "c": [0, 1, 2]}  # fmt: skip
    assert "adding 2 seeds to a and 3 seeds to b" in lines[0]
    seeds.by_variant["b"] += [6, 7]
    assert not seeds.more(comparison, lines.append)  # both at the budget
    assert seeds.stopped == "the budget of 8 seeds is reached"
