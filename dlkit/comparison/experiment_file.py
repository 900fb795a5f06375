"""Experiment files: YAML read strictly, every key checked, into an `Experiment`.

`resolve_experiment` turns what a user names (a file, recipe names, a grid) into one; a
mistake in a file (an unknown key, a duplicate, a wrong type, a grid too large) is one
`DlkitError` naming the key and where it is, raised before anything trains.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dlkit.comparison.experiment import (
    MAX_NAME,
    Experiment,
    Variant,
    check_equivalence,
    check_error_rate,
    check_interval,
    check_max_seeds,
    check_name,
    check_seeds,
    check_string,
)
from dlkit.comparison.options import Options
from dlkit.comparison.tuning import parse_tune
from dlkit.data.dataset import DEFAULT_SOURCE, DEFAULT_VALIDATION_SPLIT, SPLITS, DataSpec
from dlkit.errors import DlkitError, closest
from dlkit.recipes.recipe import coerce_overrides, get_recipe

TOP_KEYS = (
    "name",
    "question",
    "dataset",
    "seeds",
    "overrides",
    "variants",
    "grid",
    "expect",
    "gradient_norms",
    "published",
    "tune",
    "max_seeds",
    "equivalence",
    "error_rate",
    "interval",
    "imports",
)
DATASET_KEYS = ("source", "train_size", "train_offset", "validation_split", "split")
VARIANT_KEYS = ("label", "recipe", "overrides")
GRID_KEYS = ("recipe", "axes")
MAX_GRID = 100_000  # variants a grid may expand to, whatever --yes says
MAX_FILE_BYTES = 1_000_000


def load_experiment(path: str | Path) -> Experiment:
    """Reads and validates an experiment file.

    Raises:
        DlkitError: naming the file and the offending key.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DlkitError(
                f"{path}: {path.stat().st_size:,} bytes; an experiment file is at most "
                f"{MAX_FILE_BYTES:,}. Is this the right file?"
            )
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DlkitError(f"Cannot read experiment file {str(path)!r}: {reason}.") from None
    except UnicodeDecodeError as error:
        raise DlkitError(
            f"{path}: not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}). "
            "Save the experiment file as UTF-8."
        ) from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader, stricter)
    except yaml.YAMLError as error:
        raise DlkitError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
    try:
        return parse_experiment(raw, default_name=path.stem, path=str(path))
    except DlkitError as error:
        message = str(error)
        prefix = f"{path}: "
        raise DlkitError(message if message.startswith(prefix) else prefix + message) from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing repeated keys (YAML keeps the last) and aliases.

    Aliases (`*name`) are refused because a few kilobytes of nested aliases
    expand to billions of nodes; experiment files have no need of them.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in experiment files", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_experiment(
    raw: Any, *, default_name: str = "experiment", path: str | None = None
) -> Experiment:
    """Validates a parsed experiment mapping (the content of a YAML file)."""
    if not isinstance(raw, dict):
        raise DlkitError("an experiment file must be a mapping of keys such as name, variants.")
    _check_keys(raw, TOP_KEYS, "")
    imports = _imports(raw.get("imports", []), path)
    name = check_name(check_string(raw.get("name", default_name), "name"), "name")
    question = check_string(raw["question"], "question") if "question" in raw else ""
    data = _data_spec(raw.get("dataset", {}))
    seeds = check_seeds(raw.get("seeds", 1), "seeds")
    overrides = _overrides(raw.get("overrides", {}), "overrides")

    variants = _variants(raw)
    labels = [v.label for v in variants]
    expect = _expect(raw.get("expect", []))
    gradient_norms = raw.get("gradient_norms", False)
    if not isinstance(gradient_norms, bool):
        raise DlkitError(f"gradient_norms: expected true or false. Received: {gradient_norms!r}")
    published = _published(raw.get("published", {}), labels)
    experiment = Experiment(
        name=name,
        question=question,
        data=data,
        variants=tuple(variants),
        seeds=seeds,
        overrides=overrides,
        expect=tuple(expect),
        gradient_norms=gradient_norms,
        published=published,
        tune=parse_tune(raw.get("tune")),
        max_seeds=check_max_seeds(raw.get("max_seeds"), "max_seeds"),
        equivalence=check_equivalence(raw.get("equivalence", 0.01), "equivalence"),
        error_rate=check_error_rate(raw.get("error_rate", "per_comparison"), "error_rate"),
        interval=check_interval(raw.get("interval", "t"), "interval"),
        imports=imports,
        path=path,
    )
    experiment.check_betting_split()
    experiment.recipes()
    from dlkit.comparison.expectations import parse_expectation

    for i, text in enumerate(experiment.expect):
        try:
            parse_expectation(text, labels)
        except DlkitError as error:
            raise DlkitError(f"expect[{i}]: {error}") from None
    return experiment


def _imports(value: Any, path: str | None) -> tuple[str, ...]:
    """Imports the modules an experiment file names (`imports: [models]`), each looked for
    first in the file's own folder; they register the models its variants use."""
    from dlkit.recipes.builders import import_modules

    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DlkitError(
            f"imports: expected a list of module names or .py files, e.g. [models]. "
            f"Received: {value!r}"
        )
    try:
        import_modules(names, folder=Path(path).parent if path else None)
    except DlkitError as error:
        raise DlkitError(f"imports: {error}") from None
    return tuple(names)


def _variants(raw: dict[str, Any]) -> list[Variant]:
    """The `variants:` list and the `grid:` expansion, with unique labels."""
    variants = [
        _variant(item, f"variants[{i}]") for i, item in enumerate(raw.get("variants") or [])
    ]
    if "variants" in raw and not isinstance(raw["variants"], list):
        raise DlkitError("variants: expected a list of {label, recipe, overrides} entries.")
    if "grid" in raw:
        variants += expand_grid(raw["grid"])
    if not variants:
        raise DlkitError("the experiment has no variants: give `variants:` or `grid:`.")
    labels = [v.label for v in variants]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise DlkitError(f"variants: labels must be unique; repeated: {', '.join(duplicates)}.")
    return variants


def _expect(expect: Any) -> list[str]:
    if isinstance(expect, str):
        expect = [expect]
    if not isinstance(expect, list) or not all(isinstance(e, str) for e in expect):
        raise DlkitError("expect: expected a list of expectations such as 'a > b'.")
    return expect


def _published(published: Any, labels: list[str]) -> dict[str, float]:
    """`published:`: a test accuracy in [0, 1] per variant label."""
    if not isinstance(published, dict):
        raise DlkitError("published: expected a mapping of variant labels to test accuracies.")
    for label, value in published.items():
        if label not in labels:
            raise DlkitError(
                f"published.{label}: not a variant.{closest(str(label), labels)} "
                f"Variants: {', '.join(labels)}."
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise DlkitError(
                f"published.{label}: expected a test accuracy in [0, 1]. Received: {value!r}"
            )
    return {str(k): float(v) for k, v in published.items()}


def experiment_from_recipes(
    names: Sequence[str] | Mapping[str, str],
    *,
    dataset: str = DEFAULT_SOURCE,
    seeds: int | Sequence[int] = 1,
) -> Experiment:
    """Returns an experiment comparing registered recipes as they are: `names`, or a mapping
    of each variant's label to its recipe."""
    labelled = dict(names) if isinstance(names, Mapping) else {name: name for name in names}
    repeated = sorted({name for name in labelled.values() if list(names).count(name) > 1})
    if not isinstance(names, Mapping) and repeated:
        raise DlkitError(
            f"Recipe {', '.join(map(repr, repeated))} is named twice: the same configuration "
            "would be trained twice and read as extra seeds. Name each recipe once (use "
            "--seeds for more seeds)."
        )
    for recipe in labelled.values():
        get_recipe(recipe)
    labels = list(labelled)
    name = "compare-" + "-vs-".join(labels)
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}-{digest}"
    experiment = Experiment(
        name=name,
        question=f"How do {', '.join(labels)} compare?",
        data=DataSpec(source=dataset),
        variants=tuple(Variant(label=label, recipe=r) for label, r in labelled.items()),
        seeds=check_seeds(seeds, "seeds"),
    )
    experiment.recipes()  # two labels of one configuration are one mistake
    return experiment


def expand_grid(grid: Any) -> list[Variant]:
    """Expands `{recipe, axes: {field: [values]}}` into one variant per combination.

    `recipe` may itself be an axis (a list of recipe names). Labels read
    `field=value,field=value` in axis order, with a recipe axis as the bare
    recipe name (`deep-relu,width=64`), so they stay short in the MLflow UI.
    """
    if not isinstance(grid, dict):
        raise DlkitError("grid: expected a mapping with `recipe` and `axes`.")
    _check_keys(grid, GRID_KEYS, "grid.")
    axes = grid.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise DlkitError("grid.axes: expected a mapping of recipe fields to lists of values.")
    base = grid.get("recipe")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise DlkitError(f"grid.axes.{key}: expected a non-empty list of values.")
    if "recipe" not in axes and not isinstance(base, str):
        raise DlkitError("grid.recipe: name the recipe the axes modify (or make `recipe` an axis).")
    size = math.prod(len(values) for values in axes.values())
    if size > MAX_GRID:
        raise DlkitError(
            f"grid.axes: {size:,} combinations; a grid may have at most {MAX_GRID:,}. "
            "Split it into several experiments."
        )
    variants = []
    for combination in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combination))
        recipe = chosen.pop("recipe", base)
        label = ",".join(
            _label_value(value) if key == "recipe" else f"{key}={_label_value(value)}"
            for key, value in zip(axes, combination)
        )
        overrides = _overrides(chosen, "grid.axes")
        variants.append(
            Variant(label=label, recipe=check_string(recipe, "grid.recipe"), overrides=overrides)
        )
    return variants


def _label_value(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_keys(raw: dict, allowed: Sequence[str], prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            raise DlkitError(
                f"{prefix}{key}: unknown key.{closest(str(key), allowed)} "
                f"Expected: {', '.join(allowed)}."
            )


def _overrides(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DlkitError(f"{where}: expected a mapping of recipe fields to values.")
    try:
        return coerce_overrides(
            {str(k): (tuple(v) if isinstance(v, list) else v) for k, v in value.items()}
        )
    except DlkitError as error:
        raise DlkitError(f"{where}: {error}") from None


def _variant(item: Any, where: str) -> Variant:
    if isinstance(item, str):
        return Variant(label=item, recipe=item)
    if not isinstance(item, dict):
        raise DlkitError(
            f"{where}: expected a recipe name or a mapping with label, recipe, overrides."
        )
    _check_keys(item, VARIANT_KEYS, f"{where}.")
    if "recipe" not in item:
        raise DlkitError(f"{where}: missing `recipe` (a registered recipe name).")
    recipe = check_string(item["recipe"], f"{where}.recipe")
    label = check_string(item.get("label", recipe), f"{where}.label")
    return Variant(
        label=label,
        recipe=recipe,
        overrides=_overrides(item.get("overrides", {}), f"{where}.overrides"),
    )


def _data_spec(raw: Any) -> DataSpec:
    if isinstance(raw, str):
        return DataSpec(source=raw)
    if not isinstance(raw, dict):
        raise DlkitError(
            "dataset: expected a source name, or a mapping with source, train_size and "
            "validation_split."
        )
    _check_keys(raw, DATASET_KEYS, "dataset.")
    source = check_string(raw.get("source", DEFAULT_SOURCE), "dataset.source")
    train_size = raw.get("train_size")
    if train_size is not None and (
        not isinstance(train_size, int) or isinstance(train_size, bool) or train_size < 1
    ):
        raise DlkitError(
            f"dataset.train_size: expected a positive whole number. Received: {train_size!r}"
        )
    offset = raw.get("train_offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise DlkitError(
            f"dataset.train_offset: expected a whole number of at least 0. Received: {offset!r}"
        )
    split = raw.get("validation_split", DEFAULT_VALIDATION_SPLIT)
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1:
        raise DlkitError(
            f"dataset.validation_split: expected a number in [0, 1). Received: {split!r}"
        )
    mode = raw.get("split", "fixed")
    if mode not in SPLITS:
        raise DlkitError(f"dataset.split: expected one of {', '.join(SPLITS)}. Received: {mode!r}")
    return DataSpec(
        source=source,
        train_size=train_size,
        train_offset=offset,
        validation_split=float(split),
        split=mode,
    )


def resolve_experiment(
    target: Experiment | str | Path | Sequence[Any] | Mapping[str, Any],
    options: Options | None = None,
) -> Experiment:
    """Returns the validated experiment that a file, recipe names or `Experiment` describe.

    Args:
        target: An experiment file, recipe names, or an `Experiment`. Recipe names may be
            model builder functions too (see `dlkit.register_model`), and a mapping gives
            each variant's label: `{"bn": bn_mlp, "baseline": "deep-relu"}`.
        options: The comparison's `Options`; they beat the file. Defaults to `Options()`.
    """
    if isinstance(target, Experiment):
        experiment = target
    elif isinstance(target, (str, Path)) and is_experiment_file(str(target)):
        experiment = load_experiment(target)
    elif isinstance(target, Mapping):
        experiment = experiment_from_recipes({str(k): _recipe_name(v) for k, v in target.items()})
    else:
        names = [target] if isinstance(target, (str, Path)) or callable(target) else list(target)
        experiment = experiment_from_recipes([_recipe_name(n) for n in names])
    return experiment.with_options(options or Options())


def _recipe_name(item: Any) -> str:
    """A variant given in Python: a recipe's name, or a model builder function (registered
    under its own name, `bn_mlp` as `bn-mlp`, unless it already is under another)."""
    if not callable(item):
        return str(item)
    from dlkit.recipes.builders import list_builders, register_model

    for builder in list_builders():
        if builder.function is item:
            return builder.name
    name = item.__name__.replace("_", "-")
    register_model(name)(item)
    return name


def is_experiment_file(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or Path(target).is_file()
