"""Experiment files: validation, grids, options, and every file shipped in experiments/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dlkit import DlkitError
from dlkit.comparison.experiment import config_hash
from dlkit.comparison.experiment_file import (
    expand_grid,
    experiment_from_recipes,
    load_experiment,
    parse_experiment,
    resolve_experiment,
)
from dlkit.comparison.options import Options

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))

GOOD = """\
# dlkit compare good.yaml
name: good
question: Does it work?
dataset: {source: digits, train_size: 300, validation_split: 0.2}
seeds: [3, 5]
overrides: {epochs: 2, width: 16}
variants:
  - {label: relu, recipe: deep-relu}
  - {label: sigmoid, recipe: deep-relu, overrides: {activation: sigmoid}}
  - softmax-regression
expect:
  - relu > sigmoid by 0.1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_a_good_file_resolves_presets_shared_and_own_overrides(tmp_path):
    experiment = load_experiment(write(tmp_path, GOOD))
    assert experiment.name == "good" and experiment.seeds == (3, 5)
    assert experiment.data.train_size == 300 and experiment.data.validation_split == 0.2
    recipes = experiment.recipes()
    assert list(recipes) == ["relu", "sigmoid", "softmax-regression"]
    assert recipes["sigmoid"].activation == "sigmoid" and recipes["sigmoid"].width == 16
    assert recipes["relu"].epochs == 2 and recipes["relu"].name == "deep-relu"


def test_command_line_options_beat_the_file(tmp_path):
    options = Options(dataset="mnist", epochs=7, seeds=2, overrides={"dropout": 0.1})
    experiment = load_experiment(write(tmp_path, GOOD)).with_options(options)
    assert experiment.data.source == "mnist" and experiment.seeds == (0, 1)
    assert experiment.data.train_size == 300  # what the options leave alone, the file keeps
    assert all(r.epochs == 7 and r.dropout == 0.1 for r in experiment.recipes().values())
    # an override that erases what sets two variants apart is refused, naming them
    with pytest.raises(DlkitError, match="'relu' and 'sigmoid' resolve to the same"):
        load_experiment(write(tmp_path, GOOD)).with_options(
            Options(overrides={"activation": "tanh"})
        )
    same = resolve_experiment(str(write(tmp_path, GOOD)), options)
    assert same.recipes() == experiment.recipes() and same.data == experiment.data


def test_options_are_one_object_with_checked_names():
    assert Options().replace(seeds=3).seeds == 3
    with pytest.raises(DlkitError, match="Unknown comparison option 'seed'. Did you mean 'seeds'"):
        Options().replace(seed=3)


def test_data_dir_and_download_travel_with_the_data_but_not_into_the_hash(tmp_path):
    experiment = load_experiment(write(tmp_path, GOOD))
    offline = experiment.with_options(Options(data_dir="/data", download=False))
    assert offline.data.data_dir == "/data" and offline.data.download is False
    recipe = experiment.recipes()["relu"]
    assert config_hash(recipe, offline.data, 0) == config_hash(recipe, experiment.data, 0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("- just\n- a list\n", "must be a mapping"),
        ("name: x\nvariants: [deep-relu]\nseed: 3\n", "seed: unknown key. Did you mean 'seeds'"),
        ("variants: [dep-relu]\n", "variants[0] (dep-relu): Unknown recipe 'dep-relu'"),
        (
            "variants:\n  - {recipe: deep-relu, overrides: {dropout: 1.5}}\n",
            "Received: dropout=1.5",
        ),
        ("variants:\n  - {recipe: deep-relu, overides: {}}\n", "variants[0].overides: unknown key"),
        ("variants:\n  - {label: a}\n", "variants[0]: missing `recipe`"),
        ("variants: [deep-relu, deep-relu]\n", "labels must be unique; repeated: deep-relu"),
        ("name: x\n", "has no variants"),
        (
            "variants: [deep-relu]\nseeds: 0\n",
            "seeds: the number of seeds must be from 1 to 10,000",
        ),
        ("variants: [deep-relu]\ndataset: {source: digits, train_size: -5}\n", "train_size"),
        ("variants: [deep-relu]\noverrides: {dropuot: 0.1}\n", "overrides: Unknown recipe field"),
        (
            "variants: [deep-relu]\nexpect: [deep-relu > nothing]\n",
            "'nothing', which is not a variant",
        ),
        ("variants: [deep-relu]\nexpect: ['speed: deep-relu > 0.5']\n", "unknown metric 'speed'"),
        ("variants: [deep-relu\n", "not valid YAML"),
        ("grid: {axes: {depth: [1, 2]}}\n", "grid.recipe"),
        ("grid: {recipe: deep-relu, axes: {depth: []}}\n", "grid.axes.depth: expected a non-empty"),
        ("variants: [deep-relu]\ninterval: bayes\n", "interval: expected one of t, betting"),
        ("variants: [deep-relu]\ninterval: betting\n", "Add `split: random` under dataset"),
    ],
)
def test_bad_files_fail_before_training_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(DlkitError) as error:
        load_experiment(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_missing_file():
    with pytest.raises(DlkitError, match="Cannot read experiment file"):
        load_experiment("no/such/file.yaml")


def test_grid_expands_to_the_cross_product_including_recipe_axes():
    variants = expand_grid({"axes": {"recipe": ["deep-relu", "deep-sigmoid"], "depth": [2, 4, 6]}})
    assert len(variants) == 6
    assert variants[0].label == "deep-relu,depth=2" and variants[0].recipe == "deep-relu"
    assert variants[-1].recipe == "deep-sigmoid" and variants[-1].overrides == {"depth": 6}
    experiment = parse_experiment(
        {
            "grid": {
                "recipe": "deep-relu",
                "axes": {"activation": ["relu", "tanh"], "dropout": [0, 0.5]},
            }
        }
    )
    assert [v.label for v in experiment.variants] == [
        "activation=relu,dropout=0",
        "activation=relu,dropout=0.5",
        "activation=tanh,dropout=0",
        "activation=tanh,dropout=0.5",
    ]
    assert experiment.recipes()["activation=tanh,dropout=0.5"].dropout == 0.5


def test_config_hash_changes_with_anything_that_changes_the_outcome(tmp_path):
    experiment = load_experiment(write(tmp_path, GOOD))
    recipe = experiment.recipes()["relu"]
    base = config_hash(recipe, experiment.data, 0)
    assert base == config_hash(recipe, experiment.data, 0)
    assert base != config_hash(recipe, experiment.data, 1)
    assert base != config_hash(recipe.replace(dropout=0.1), experiment.data, 0)
    assert base != config_hash(recipe.replace(max_norm=3.0), experiment.data, 0)
    smaller = experiment.with_options(Options(train_size=100)).data
    assert base != config_hash(recipe, smaller, 0)


def test_recipe_names_make_an_experiment():
    experiment = experiment_from_recipes(["deep-relu", "wide-relu"], seeds=3)
    assert experiment.name == "compare-deep-relu-vs-wide-relu" and experiment.seeds == (0, 1, 2)
    with pytest.raises(DlkitError, match="Unknown recipe"):
        experiment_from_recipes(["deep-relu", "nope"])


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_experiment_loads_and_starts_with_its_command(path):
    experiment = load_experiment(path)
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# dlkit compare ") and path.name in first_line
    assert experiment.question and experiment.expect
    assert experiment.recipes()


def test_the_readme_example_experiment_is_valid():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    experiment = parse_experiment(yaml.safe_load(block))
    assert len(experiment.variants) == 3 + 4
    assert experiment.recipes()["dropout-0.5"].dropout == 0.5
