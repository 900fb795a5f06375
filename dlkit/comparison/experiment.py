"""Experiment files: what to compare, validated before anything trains.

An experiment names a question, a dataset, the variants (a recipe plus
overrides, or a grid of axes expanded to their cross product), the seeds and
the overrides every variant shares. Pure Python: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dlkit.comparison.options import MAX_SEED, MAX_SEEDS, Options
from dlkit.comparison.tuning import Tune, parse_tune
from dlkit.comparison.tuning import with_options as tune_with_options
from dlkit.data.dataset import DEFAULT_SOURCE, DEFAULT_VALIDATION_SPLIT, SPLITS, DataSpec
from dlkit.errors import DlkitError, closest
from dlkit.recipes.recipe import Recipe, coerce_overrides, get_recipe

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
    "imports",
)
DATASET_KEYS = ("source", "train_size", "train_offset", "validation_split", "split")
VARIANT_KEYS = ("label", "recipe", "overrides")
GRID_KEYS = ("recipe", "axes")
MAX_NAME = 100
MAX_GRID = 100_000  # variants a grid may expand to, whatever --yes says
MAX_FILE_BYTES = 1_000_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a registered recipe plus overrides, under a label."""

    label: str
    recipe: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A validated comparison.

    Args:
        name: Names the MLflow experiment and the report folder.
        question: The one-line question the comparison answers.
        data: The `DataSpec` shared by all variants.
        variants: The arms, in report order.
        seeds: The seeds every variant is trained with.
        overrides: Recipe fields set on every variant (a variant's own win).
        expect: Expectations the report checks (see `dlkit.comparison.expectations`).
        gradient_norms: Log per-layer gradient norms and plot them against
            the layer index. Defaults to `False`.
        published: Published test accuracy per variant label, shown beside
            the measured one in the report.
        tune: What to tune for each variant before its seeds train (see
            `dlkit.comparison.tuning`); `None` trains each as given.
        max_seeds: Add seeds, a pack's worth at a time, while an expectation is
            undecided, up to this many per variant (see
            `dlkit.comparison.sequential`); `None` trains `seeds` only.
        equivalence: A `>` or `<` on an accuracy-scale metric whose interval lies
            inside ±this is decided "equivalent". Defaults to `0.01`.
        imports: Modules imported before the variants resolve, for the models they
            register (`dlkit.register_model`), as the file names them. Defaults to `()`.
        path: The file it was read from, if any.
    """

    name: str
    question: str
    data: DataSpec
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...] = (0,)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    expect: tuple[str, ...] = ()
    gradient_norms: bool = False
    published: dict[str, float] = dataclasses.field(default_factory=dict)
    tune: Tune | None = None
    max_seeds: int | None = None
    equivalence: float = 0.01
    imports: tuple[str, ...] = ()
    path: str | None = None

    def recipes(self) -> dict[str, Recipe]:
        """Returns each variant's resolved recipe: preset, then shared, then own overrides."""
        resolved = {}
        for i, variant in enumerate(self.variants):
            where = f"variants[{i}] ({variant.label})"
            try:
                fields = {**self.overrides, **variant.overrides}
                resolved[variant.label] = get_recipe(variant.recipe, **fields)
            except DlkitError as error:
                raise DlkitError(f"{self._where()}{where}: {error}") from None
        seen: dict[str, str] = {}
        for label, recipe in resolved.items():
            key = json.dumps(recipe.replace(name="").to_dict(), sort_keys=True, default=list)
            if key in seen:
                raise DlkitError(
                    f"{self._where()}variants {seen[key]!r} and {label!r} resolve to the same "
                    "configuration, so one would only repeat the other. Make them differ (the "
                    "shared overrides may have erased what set them apart)."
                )
            seen[key] = label
        return resolved

    def with_options(self, options: Options) -> Experiment:
        """Returns a copy with a comparison's options applied; they beat the file."""
        changes = {
            "source": options.dataset,
            "train_size": options.train_size,
            "train_offset": options.train_offset,
            "validation_split": options.validation_split,
            "data_dir": options.data_dir,
            "split": options.split,
        }
        data = dataclasses.replace(
            self.data,
            **{key: value for key, value in changes.items() if value is not None},
            download=options.download,
        )
        forced = dict(options.overrides)
        if options.epochs is not None:
            forced["epochs"] = options.epochs
        variants = self.variants
        if forced:
            forced = coerce_overrides(forced)
            variants = tuple(
                dataclasses.replace(v, overrides={**v.overrides, **forced}) for v in self.variants
            )
        experiment = dataclasses.replace(
            self,
            data=data,
            variants=variants,
            seeds=self.seeds if options.seeds is None else _seeds(options.seeds, "seeds"),
            overrides={**self.overrides, **forced},
            gradient_norms=(
                self.gradient_norms if options.gradient_norms is None else options.gradient_norms
            ),
            tune=tune_with_options(self.tune, options.tune, options.tune_seeds),
            max_seeds=_max_seeds(
                self.max_seeds if options.max_seeds is None else options.max_seeds, "--max-seeds"
            ),
            equivalence=_equivalence(
                self.equivalence if options.equivalence is None else options.equivalence,
                "--equivalence",
            ),
        )
        if experiment.max_seeds is not None and experiment.max_seeds < len(experiment.seeds):
            raise DlkitError(
                f"max_seeds ({experiment.max_seeds}) is below the {len(experiment.seeds)} seeds "
                "the comparison starts with. Raise max_seeds or give fewer seeds."
            )
        experiment.recipes()  # validate the result before anything trains
        return experiment

    def _where(self) -> str:
        return f"{self.path}: " if self.path else ""


def config_hash(recipe: Recipe, data: DataSpec, seed: int, *, devices: int | str = 1) -> str:
    """Returns a short hash of everything that determines one training's outcome.

    Training on several devices sums gradients in another order, so it counts too.
    """
    from dlkit import __version__

    fields = {k: v for k, v in recipe.to_dict().items() if k != "name"}
    if fields["precision"] == "float32":
        # Runs from before the precision field existed were float32: keep their hashes.
        del fields["precision"]
    if not fields["max_norm"]:  # nor before max_norm
        del fields["max_norm"]
    if not fields["conv_filters"] and not fields["match_recipe"]:  # nor before convnets
        for key in ("conv_filters", "kernel_size", "pool_size", "match_recipe"):
            del fields[key]
    if fields.pop("model"):  # a registered model is its builder: its name and source
        from dlkit.recipes.builders import get_builder

        fields["model"] = get_builder(recipe.model).identity
    payload = {
        "recipe": fields,
        "data": data.identity(),
        "seed": seed,
        "dlkit": __version__,
    }
    if str(devices) != "1":  # single-device runs keep the hashes they always had
        payload["devices"] = str(devices)
    text = json.dumps(payload, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    name = check_name(_string(raw.get("name", default_name), "name"), "name")
    question = _string(raw["question"], "question") if "question" in raw else ""
    data = _data_spec(raw.get("dataset", {}))
    seeds = _seeds(raw.get("seeds", 1), "seeds")
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
        max_seeds=_max_seeds(raw.get("max_seeds"), "max_seeds"),
        equivalence=_equivalence(raw.get("equivalence", 0.01), "equivalence"),
        imports=imports,
        path=path,
    )
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


def _max_seeds(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_SEEDS:
        raise DlkitError(
            f"{where}: expected a whole number of seeds from 2 to {MAX_SEEDS:,}. "
            f"Received: {value!r}"
        )
    return value


def _equivalence(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise DlkitError(
            f"{where}: expected a margin above 0 and below 1 (0.01 is one point of accuracy). "
            f"Received: {value!r}"
        )
    return float(value)


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
        seeds=_seeds(seeds, "seeds"),
    )
    experiment.recipes()  # two labels of one configuration are one mistake
    return experiment


def check_name(name: str, where: str = "name") -> str:
    """Returns an experiment name that is safe as a folder name, or raises `DlkitError`.

    Names start with a letter or digit and hold letters, digits, `-`, `_`
    and `.`, at most 100 characters: the report folder never leaves
    `--output`, and no two names share one folder.
    """
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise DlkitError(
            f"{where}: {name[:120]!r} cannot name an experiment. Use letters, digits, '-', '_' "
            f"and '.', starting with a letter or digit, at most {MAX_NAME} characters "
            "(e.g. why-deep)."
        )
    return name


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
            Variant(label=label, recipe=_string(recipe, "grid.recipe"), overrides=overrides)
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


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DlkitError(f"{where}: expected a non-empty string. Received: {value!r}")
    return value


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise DlkitError(f"{where}: expected a count or a list of seeds. Received: {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= MAX_SEEDS:
            raise DlkitError(
                f"{where}: the number of seeds must be from 1 to {MAX_SEEDS:,}. Received: {value}"
            )
        return tuple(range(value))
    if not (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    ):
        raise DlkitError(
            f"{where}: expected a count or a list of whole-number seeds. Received: {value!r}"
        )
    if len(value) > MAX_SEEDS:
        raise DlkitError(f"{where}: at most {MAX_SEEDS:,} seeds. Received {len(value):,}.")
    outside = [s for s in value if not 0 <= s <= MAX_SEED]
    if outside:
        raise DlkitError(
            f"{where}: seeds must be from 0 to {MAX_SEED} (2^32 - 1). Received: {outside[0]}"
        )
    if len(set(value)) != len(value):
        raise DlkitError(f"{where}: seeds repeat. Received: {list(value)}")
    return tuple(value)


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
    recipe = _string(item["recipe"], f"{where}.recipe")
    label = _string(item.get("label", recipe), f"{where}.label")
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
    source = _string(raw.get("source", DEFAULT_SOURCE), "dataset.source")
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
