"""Recipes: validation, the registry's three verbs, overrides and parameter matching.

None of these tests needs TensorFlow.
"""

from __future__ import annotations

import dataclasses

import pytest

from dlkit import DlkitError, Recipe, get_recipe, list_recipes, register_recipe
from dlkit.recipes.listing import describe
from dlkit.recipes.recipe import parse_assignments


def test_defaults_are_valid_and_flat():
    recipe = Recipe()
    assert all(isinstance(v, (str, int, float, bool, tuple)) for v in recipe.to_dict().values())


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("dropout", 1.5, "dropout=1.5"),
        ("input_dropout", -0.1, "input_dropout=-0.1"),
        ("depth", -1, "depth=-1"),
        ("width", 0, "width=0"),
        ("learning_rate", 0.0, "learning_rate=0.0"),
        ("batch_size", 0, "batch_size=0"),
        ("maxout_pieces", 1, "maxout_pieces=1"),
        ("activation", "relu6", "Expected one of"),
        ("optimizer", "adamw", "Expected one of"),
        ("loss", "hinge", "Expected one of"),
        ("epochs", "5", "must be a whole number"),
        ("early_stopping", 1, "must be true or false"),
        ("learning_rate", float("nan"), "must be a number"),
    ],
)
def test_invalid_values_fail_on_construction_naming_the_value(field, value, fragment):
    with pytest.raises(DlkitError) as error:
        Recipe(**{field: value})
    assert fragment in str(error.value)
    assert field in str(error.value)


def test_unknown_choice_suggests_the_closest():
    with pytest.raises(DlkitError, match="Did you mean 'sigmoid'"):
        Recipe(activation="sigmoud")


def test_registry_lists_gets_and_registers():
    names = list_recipes()
    for axis in ("deep-relu", "wide-relu", "deep-sigmoid", "wide-sigmoid", "softmax-regression"):
        assert axis in names
    assert "deep-relu-dropout-early-stop" in names
    assert get_recipe("deep-relu").name == "deep-relu"

    @register_recipe
    def tiny_test_net() -> Recipe:
        return Recipe(depth=1, width=7)

    assert "tiny-test-net" in list_recipes()
    assert get_recipe("tiny-test-net").width == 7


def test_registering_a_taken_name_raises_unless_replacing():
    with pytest.raises(DlkitError, match="'deep-relu' is already registered.*replace=True"):
        register_recipe(lambda: Recipe(depth=9), name="deep-relu")
    assert get_recipe("deep-relu").depth == 3
    register_recipe(lambda: Recipe(depth=9), name="deep-relu", replace=True)
    assert get_recipe("deep-relu").depth == 9


def test_the_registry_fixture_undid_the_previous_tests_registrations():
    # Runs after the two tests above: neither registration leaked.
    assert "tiny-test-net" not in list_recipes()
    assert get_recipe("deep-relu").depth == 3


def test_field_types_come_from_the_dataclass_annotations():
    from dlkit.recipes.recipe import _FIELD_TYPES

    fields = dataclasses.fields(Recipe)
    assert list(_FIELD_TYPES) == [f.name for f in fields]
    assert _FIELD_TYPES["widths"] is tuple and _FIELD_TYPES["dropout"] is float
    assert _FIELD_TYPES["early_stopping"] is bool and _FIELD_TYPES["depth"] is int


def test_name_is_an_overridable_field():
    assert get_recipe("deep-relu", name="mine").name == "mine"
    assert parse_assignments(["name=mine"]) == {"name": "mine"}


def test_unknown_recipe_names_closest_valid_names():
    with pytest.raises(DlkitError, match="Did you mean 'deep-relu'"):
        get_recipe("dep-relu")


def test_overrides_win_and_are_parsed_from_strings():
    recipe = get_recipe("deep-relu", dropout="0.3", early_stopping="true", widths="64,32")
    assert recipe.dropout == 0.3 and recipe.early_stopping is True
    assert recipe.hidden_layers(784, 10) == (64, 32)
    assert dataclasses.replace(recipe, epochs=2).epochs == 2


def test_unknown_override_field_names_the_closest():
    with pytest.raises(DlkitError, match="Did you mean 'dropout'"):
        get_recipe("deep-relu", dropuot=0.5)


def test_parse_assignments():
    assert parse_assignments(["dropout=0.5", "depth = 4", "activation=tanh"]) == {
        "dropout": 0.5,
        "depth": 4,
        "activation": "tanh",
    }
    with pytest.raises(DlkitError, match="field=value"):
        parse_assignments(["dropout"])
    with pytest.raises(DlkitError, match="must be a number"):
        parse_assignments(["dropout=lots"])


@pytest.mark.parametrize("input_dim, classes", [(784, 10), (64, 10), (3072, 10), (256, 2)])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "maxout"])
def test_wide_presets_match_deep_parameter_count_within_one_percent(input_dim, classes, activation):
    deep = get_recipe("deep-relu", activation=activation)
    wide = get_recipe("wide-relu", activation=activation)
    assert len(wide.hidden_layers(input_dim, classes)) == 1
    deep_params = deep.param_count(input_dim, classes)
    wide_params = wide.param_count(input_dim, classes)
    assert abs(wide_params - deep_params) / deep_params < 0.01


@pytest.mark.parametrize("width", [64, 256, 1000])
def test_matching_follows_the_budget_width(width):
    deep = get_recipe("deep-relu", width=width)
    wide = get_recipe("wide-relu", width=width)
    assert abs(wide.param_count(784, 10) / deep.param_count(784, 10) - 1) < 0.01


def test_param_count_by_hand():
    # 784*500+500 + 2*(500*500+500) + 500*10+10
    assert get_recipe("deep-relu").param_count(784, 10) == 898_510
    assert get_recipe("softmax-regression").param_count(784, 10) == 785 * 10
    assert Recipe(depth=1, width=5, activation="maxout", maxout_pieces=3).param_count(4, 2) == (
        5 * 5 * 3 + 6 * 2
    )


def test_describe_shows_layers_regularization_and_params():
    row = describe(get_recipe("deep-relu-dropout-early-stop"), 784, 10)
    assert row["layers"] == "784-500-500-500-10"
    assert "dropout" in row["regularization"] and "early stop" in row["regularization"]
    assert row["params"] == "898,510"
