"""Tuned comparisons: each variant at its own best setting, chosen on validation only."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from tiny import tiny

from dlkit import DlkitError, compare, report
from dlkit.cli import main
from dlkit.comparison.experiment_file import parse_experiment
from dlkit.comparison.loading import load_comparison
from dlkit.comparison.tuning import (
    SEED_BASE,
    Tune,
    choose,
    default_grid,
    extended,
    parse_tune,
    parse_tune_option,
    with_options,
)
from dlkit.recipes.recipe import get_recipe
from dlkit.tracking.tracker import Tracker

GRID = [0.00001, 0.0001, 0.01]  # on 300 digits and 2 epochs, 0.01 wins: the grid's edge
TUNED = tiny("tuned", tune={"learning_rate": GRID, "seeds": 1})


def grid(result, variant: str) -> list[float]:
    """A variant's learning rates as swept: the experiment's, and any past its edge."""
    added = (result.tuning["extended"].get(variant) or {}).get("learning_rate", [])
    return sorted([*result.tuning["grid"][variant]["learning_rate"], *added])


def test_tune_reads_a_mapping_a_list_or_a_field_name():
    assert parse_tune({"learning_rate": [0.1, 0.01], "seeds": 3}) == Tune(
        {"learning_rate": (0.01, 0.1)}, seeds=3
    )
    assert parse_tune(["learning_rate"]) == Tune({"learning_rate": None})
    assert parse_tune("dropout") == Tune({"dropout": None})
    assert parse_tune(None) is None and parse_tune(False) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"learning_rat": [0.1]}, "'learning_rat' cannot be tuned. Did you mean 'learning_rate'?"),
        ({"learning_rate": []}, "expected a non-empty list"),
        ({"learning_rate": [0.1, 0.1]}, "values repeat"),
        ({"learning_rate": ["fast"]}, "expected numbers"),
        ({"learning_rate": [-0.1]}, "learning_rate"),
        ({"dropout": [1.5]}, "dropout"),
        ({"learning_rate": None, "seeds": 0}, "tune.seeds: expected seeds per point"),
        ({"seeds": 2}, "name a field to tune"),
        (42, "expected a mapping"),
    ],
)
def test_a_bad_tune_names_what_is_wrong(raw, message):
    with pytest.raises(DlkitError, match="^tune") as error:
        parse_tune(raw)
    assert message in str(error.value)


def test_command_line_tune_replaces_the_files_and_no_tune_turns_it_off():
    file = Tune({"learning_rate": (0.1,)}, seeds=3)
    given = parse_tune_option(["learning_rate=0.01,0.001", "dropout"])
    assert given == {"learning_rate": (0.001, 0.01), "dropout": None}
    assert with_options(file, given, None) == Tune(given, seeds=3)  # the file's seeds stay
    assert with_options(file, None, 5) == Tune({"learning_rate": (0.1,)}, seeds=5)
    assert with_options(file, False, None) is None
    assert with_options(None, True, None) == Tune({"learning_rate": None})
    with pytest.raises(DlkitError, match="expected numbers separated by commas"):
        parse_tune_option(["learning_rate=fast"])
    with pytest.raises(DlkitError, match="tuned twice"):
        parse_tune_option(["learning_rate=0.1", "learning_rate=0.2"])


def test_default_learning_rates_follow_the_optimizer():
    adam = default_grid("learning_rate", get_recipe("deep-relu"))
    sgd = default_grid("learning_rate", get_recipe("deep-relu", optimizer="sgd"))
    assert len(adam) == len(sgd) == 6  # an equal budget, whatever the optimizer
    assert 0.001 in adam and max(sgd) > max(adam)


def test_choice_is_the_best_mean_and_a_failed_run_counts_zero():
    points = [{"learning_rate": v} for v in (0.001, 0.01, 0.1)]
    values = {"learning_rate": (0.001, 0.01, 0.1)}
    # 0.1 has the best seed but diverged on the other: its mean is 0.49
    choice = choose(points, [[0.80, 0.82], [0.90, 0.88], [0.98, None]], values)
    assert choice.point == {"learning_rate": 0.01}
    assert choice.score == pytest.approx(0.89) and choice.failed == 1
    assert choice.edges == () and choice.warning("relu", values) is None
    assert [row["val_accuracy"] for row in choice.scores] == pytest.approx([0.81, 0.89, 0.49])

    tie = choose(points, [[0.9], [0.9], [0.5]], values)
    assert tie.point == {"learning_rate": 0.001}  # ties go to the earlier point
    assert tie.edges == ()  # a plateau: the edge says nothing of what lies past it
    low = choose(points, [[0.95], [0.9], [0.5]], values)
    assert low.edges == ("learning_rate",)
    assert "0.001 is the smallest tried" in low.warning("relu", values)


def test_a_grid_is_extended_one_step_past_the_edge_its_best_sits_on():
    recipe = get_recipe("deep-relu")
    values = {"learning_rate": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)}
    points = [{"learning_rate": v} for v in values["learning_rate"]]
    top = choose(points, [[0.5], [0.6], [0.7], [0.8], [0.85], [0.9]], values)
    assert extended(recipe, values, top) == {"learning_rate": (*values["learning_rate"], 0.9)}
    bottom = choose(points, [[0.9], [0.6], [0.5], [0.5], [0.5], [0.5]], values)
    assert extended(recipe, values, bottom)["learning_rate"][0] == pytest.approx(0.00033)
    inside = choose(points, [[0.5], [0.9], [0.5], [0.5], [0.5], [0.5]], values)
    assert extended(recipe, values, inside) is None
    # on a linear grid, the same difference; never past what the recipe allows
    drops = {"dropout": (0.1, 0.3, 0.5)}
    high = choose([{"dropout": v} for v in drops["dropout"]], [[0.1], [0.2], [0.9]], drops)
    assert extended(recipe, drops, high) == {"dropout": (0.1, 0.3, 0.5, 0.7)}
    edge = {"dropout": (0.5, 0.7, 0.9)}
    last = choose([{"dropout": v} for v in edge["dropout"]], [[0.1], [0.2], [0.9]], edge)
    assert extended(recipe, edge, last) is None  # a dropout of 1.1 is refused


def test_a_choice_at_a_bound_the_field_cannot_pass_is_no_edge():
    points = [{"dropout": v} for v in (0.0, 0.2, 0.5)]
    choice = choose(points, [[0.9], [0.8], [0.7]], {"dropout": (0.0, 0.2, 0.5)})
    assert choice.point == {"dropout": 0.0} and choice.edges == ()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One real tuned comparison: 2 variants x 3 learning rates x 1 sweep seed, then 2 seeds."""
    folder = tmp_path_factory.mktemp("tuned")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    lines: list[str] = []
    result = compare(
        parse_experiment(TUNED),
        tracking_uri=uri,
        output_dir=folder / "reports",
        verbose=0,
        log=lines.append,
    )
    return result, uri, folder, lines


def sweep_runs(uri: str, parent_id: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tuned")
    return client.search_runs(
        [experiment.experiment_id],
        f"tags.`dlkit.comparison` = '{parent_id}' and tags.`dlkit.role` = 'tuning'",
    )


def test_sweeps_are_grouped_under_one_tuning_run_per_variant(tuned):
    result, uri, _, _ = tuned
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tuned").experiment_id

    def under(run_id: str) -> list:
        return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")

    direct = under(result.parent_run_id)
    groups = {
        r.data.tags["dlkit.variant"]: r for r in direct if r.data.tags["dlkit.role"] == "sweep"
    }
    # the parent lists the measured runs and one tuning run per variant, nothing else
    assert sorted(r.data.tags["dlkit.role"] for r in direct) == ["child"] * 4 + ["sweep"] * 2
    for variant, group in groups.items():
        assert group.info.status == "FINISHED" and group.info.run_name == f"{variant}/tuning"
        nested = under(group.info.run_id)
        swept = grid(result, variant)
        assert len(nested) == len(swept)
        assert {r.data.tags["dlkit.variant"] for r in nested} == {variant}
        # short enough to read where the UI cuts names: the point and the seed
        assert {r.info.run_name for r in nested} == {f"lr={lr:g}/s{SEED_BASE}" for lr in swept}
        assert group.data.params["grid.learning_rate"] == "1e-05,0.0001,0.01"
        added = [lr for lr in swept if lr not in GRID]
        assert group.data.params.get("extended.learning_rate") == (
            ",".join(f"{lr:g}" for lr in added) if added else None
        )
        chosen = result.tuning["variants"][variant]
        assert float(group.data.params["chosen.learning_rate"]) == chosen["point"]["learning_rate"]
        assert group.data.metrics["val_accuracy"] == pytest.approx(chosen["score"])
        for row in chosen["scores"]:  # the validation accuracy at every point
            name = "val_accuracy/" + row["setting"].replace("=", "_")
            assert group.data.metrics[name] == pytest.approx(row["val_accuracy"])


def test_each_variant_trains_at_the_point_with_the_best_validation_accuracy(tuned):
    result, uri, _, _ = tuned
    sweep = sweep_runs(uri, result.parent_run_id)
    assert len(sweep) == len(grid(result, "relu")) + len(grid(result, "sigmoid"))
    assert {r.data.params["seed"] for r in sweep} == {str(SEED_BASE)}  # not a measuring seed
    assert all(r.info.status == "FINISHED" and not r.outputs.model_outputs for r in sweep)
    client = MlflowClient(uri)
    # a sweep run is params and metrics: its data is the parent's, its model is not kept
    assert not any(client.list_artifacts(r.info.run_id) or r.inputs.dataset_inputs for r in sweep)
    for variant in ("relu", "sigmoid"):
        mine = [r for r in sweep if r.data.tags["dlkit.variant"] == variant]
        # chosen by the sweep's validation accuracy as the store holds it, never by test
        best = max(mine, key=lambda r: r.data.metrics["kept_val_accuracy"])
        chosen = float(best.data.params["learning_rate"])
        assert result.tuning["variants"][variant]["point"] == {"learning_rate": chosen}
        assert result.table.set_index("variant").loc[variant, "tuned"] == (
            f"learning_rate={chosen:g}"
        )
        for run_id in result.runs[result.runs["variant"] == variant]["run_id"]:
            run = client.get_run(run_id)
            assert float(run.data.params["learning_rate"]) == chosen
            assert run.data.tags["dlkit.role"] == "child" and run.outputs.model_outputs
    assert sorted(result.runs["seed"]) == [0, 0, 1, 1]  # the table holds the measuring runs


def test_a_choice_on_the_grids_edge_is_flagged_and_the_report_says_tuned(tuned):
    result, _, folder, lines = tuned
    assert any(line.startswith("Tuning learning_rate (3 values), 1 seed") for line in lines)
    assert not any("1000" in line for line in lines)  # no line per sweep run
    # 0.01 won at the grid's edge: one step past it (1, at the grid's own ratio) was tried,
    # and lost, so no warning is left
    assert grid(result, "relu") == [*GRID, 1.0]
    text = " ".join(line.strip() for line in lines)  # wrapped lines, read as one
    assert "grid extended past its edge: learning_rate to 1)" in text
    assert result.tuning["extended"]["relu"] == {"learning_rate": [1.0]}
    assert "largest tried" not in " ".join(lines)
    assert max(map(len, lines)) <= 100
    # each variant's choice, in the file's order, whichever sweep ended first
    chosen = [line.split(":")[0].strip() for line in lines if "(validation accuracy" in line]
    assert chosen == ["relu", "sigmoid"]
    assert "variants compared tuned: each at its best of 3 learning_rate" in result.format()
    assert "grids extended past an edge: relu to learning_rate 1" in result.format()
    saved = folder / "reports" / "tuned"
    assert (saved / "tuning.png").stat().st_size > 10_000
    assert "![tuning](tuning.png)" in (saved / "table.md").read_text()
    scores = result.tuning["variants"]["relu"]["scores"]
    assert [row["learning_rate"] for row in scores] == grid(result, "relu")
    assert all(0 <= row["val_accuracy"] <= 1 for row in scores)


def test_a_rerun_resumes_the_sweep_and_the_runs_and_report_rebuilds_it(tuned):
    result, uri, folder, _ = tuned
    lines: list[str] = []
    again = compare(
        parse_experiment(TUNED), tracking_uri=uri, output_dir=None, verbose=0, log=lines.append
    )
    assert again.parent_run_id == result.parent_run_id
    assert any("6 already finished" in line for line in lines)
    assert any("4 of 4 runs already finished" in line for line in lines)
    assert not any("training" in line for line in lines)
    assert again.tuning == result.tuning
    rebuilt = report("tuned", tracking_uri=uri, output_dir=None)
    assert rebuilt.tuning == result.tuning
    assert list(rebuilt.table["tuned"]) == list(result.table["tuned"])
    swept = len(grid(result, "relu")) + len(grid(result, "sigmoid"))
    assert len(sweep_runs(uri, result.parent_run_id)) == swept  # none trained twice


def test_no_tune_compares_as_given(tmp_path):
    lines: list[str] = []
    result = compare(
        parse_experiment(TUNED),
        tune=False,
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        output_dir=None,
        log=lines.append,
    )
    assert result.tuning is None and "tuned" not in result.table
    assert "variants compared as given" in result.format()
    # and says what an untuned verdict rests on
    assert "can change when each is tuned (--tune)" in " ".join(result.format().split())
    assert not any(line.startswith("Tuning") for line in lines)
    assert not sweep_runs(f"sqlite:///{tmp_path}/mlflow.db", result.parent_run_id)


def test_tuning_without_a_validation_split_is_refused(tmp_path):
    experiment = dict(TUNED, dataset={"source": "digits", "validation_split": 0})
    with pytest.raises(DlkitError, match="tunes on the validation split"):
        compare(parse_experiment(experiment), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert not (tmp_path / "m.db").exists()  # refused before the store is opened


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("learning_rate=fast", "expected numbers separated by commas"),
        ("batch_size=32,64", "'batch_size' cannot be tuned"),
    ],
)
def test_a_bad_tune_option_is_one_clear_line(tmp_path, option, message):
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(TUNED))
    outcome = CliRunner().invoke(main, ["compare", str(path), "--tune", option])
    assert outcome.exit_code != 0
    assert message in outcome.output and "Traceback" not in outcome.output


def test_sweep_size_counts_toward_the_large_comparison_guard(tmp_path):
    big = dict(TUNED, seeds=2, tune={"learning_rate": GRID, "seeds": 100})
    with pytest.raises(DlkitError, match="600 of them tuning"):
        compare(parse_experiment(big), tracking_uri=f"sqlite:///{tmp_path}/m.db")


def test_a_seed_of_the_comparison_that_is_also_a_sweep_seed_still_trains_its_child(tmp_path):
    # One point and sweep seed 1000: the child of seed 1000 is the very configuration a sweep
    # run trained, and must still train (it logs the model the report reads), not be taken
    # for a member another process holds.
    experiment = tiny("tuned", seeds=[SEED_BASE], tune={"learning_rate": [0.01], "seeds": 1})
    result = compare(
        parse_experiment(experiment),
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        output_dir=None,
        log=lambda line: None,
    )
    assert list(result.runs["status"]) == ["FINISHED", "FINISHED"]
    assert len(sweep_runs(f"sqlite:///{tmp_path}/mlflow.db", result.parent_run_id)) == 2


def test_tuned_and_untuned_runs_keep_parents_and_report_folders_of_their_own(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tiny("kinds", seeds=1, tune={"learning_rate": [0.01, 0.1], "seeds": 1})
    spec["overrides"]["epochs"] = 1
    experiment, out = parse_experiment(spec), tmp_path / "reports"
    quiet = {"tracking_uri": uri, "output_dir": out, "verbose": 0, "log": lambda line: None}
    tuned = compare(experiment, **quiet)
    assert (out / "kinds" / "tuning.png").is_file()
    untuned = compare(experiment, tune=False, **quiet)
    assert untuned.parent_run_id != tuned.parent_run_id  # not resumed under the tuned parent
    assert not (out / "kinds" / "tuning.png").exists()  # the tuned run's plot is not kept
    lines: list[str] = []
    again = compare(experiment, **{**quiet, "log": lines.append})
    assert again.parent_run_id == tuned.parent_run_id  # a tuned rerun resumes the tuned one
    assert any("already finished" in line for line in lines), lines
    # two parents, two consistent reports, each of its own kind
    tracker = Tracker(uri, "kinds", create=False)
    assert load_comparison(tracker, tuned.parent_run_id).tuning is not None
    assert load_comparison(tracker, untuned.parent_run_id).tuning is None
    # another grid, other data or another setting of the variants means other results: a
    # parent of their own, said so, and the earlier comparison's runs untouched
    for changed in (
        {**spec, "tune": {"learning_rate": [0.01, 0.3], "seeds": 1}},
        {**spec, "dataset": {**spec["dataset"], "train_size": 250}},
        {**spec, "overrides": {**spec["overrides"], "epochs": 2}},
    ):
        lines.clear()
        other = compare(parse_experiment(changed), **{**quiet, "log": lines.append})
        assert other.parent_run_id not in (tuned.parent_run_id, untuned.parent_run_id)
        assert any(line.startswith("A new parent run: ") for line in lines), lines
        assert not any("Resuming parent run" in line for line in lines)


def test_a_best_still_on_the_edge_after_three_steps_is_warned_about(tmp_path):
    # In 2 epochs, rates this small all undertrain: the largest tried wins, so the grid grows
    # by its ratio (2) three times and then stops, with the warning to widen it by hand.
    spec = tiny("edge", tune={"learning_rate": [1e-3, 2e-3], "seeds": 1}, variants=["deep-relu"])
    spec["expect"] = []
    lines: list[str] = []
    result = compare(
        parse_experiment(spec),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        output_dir=None,
        verbose=0,
        log=lines.append,
    )
    assert result.tuning["extended"]["deep-relu"] == {"learning_rate": [4e-3, 8e-3, 1.6e-2]}
    assert result.tuning["variants"]["deep-relu"]["point"] == {"learning_rate": 1.6e-2}
    text = " ".join(line.strip() for line in lines)
    assert "learning_rate 0.016 is the largest tried" in text
