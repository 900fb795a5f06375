"""Experiments: what to compare (a question, data, variants, seeds), and each child's hash.

An experiment names a question, a dataset, the variants (a recipe plus
overrides, or a grid of axes expanded to their cross product), the seeds and
the overrides every variant shares. Pure Python: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

from dlkit.comparison.options import MAX_SEED, MAX_SEEDS, Options
from dlkit.comparison.tuning import Tune
from dlkit.comparison.tuning import with_options as tune_with_options
from dlkit.data.dataset import DataSpec
from dlkit.errors import DlkitError
from dlkit.recipes.recipe import Recipe, coerce_overrides, get_recipe

MAX_NAME = 100
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
        error_rate: `"per_comparison"`: the 5% is the chance that any of the
            expectations is decided wrongly, split evenly among them; or
            `"per_expectation"`: each has its own 5%. Defaults to `"per_comparison"`.
        interval: How a verdict's interval is built: `"t"`, repeated t intervals that
            assume roughly normal per-seed differences; or `"betting"`, a confidence
            sequence that assumes nothing but their range, and costs many more seeds
            (needs `split: random`). Defaults to `"t"`.
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
    error_rate: str = "per_comparison"
    interval: str = "t"
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
            seeds=self.seeds if options.seeds is None else check_seeds(options.seeds, "seeds"),
            overrides={**self.overrides, **forced},
            gradient_norms=(
                self.gradient_norms if options.gradient_norms is None else options.gradient_norms
            ),
            tune=tune_with_options(self.tune, options.tune, options.tune_seeds),
            max_seeds=check_max_seeds(
                self.max_seeds if options.max_seeds is None else options.max_seeds, "--max-seeds"
            ),
            equivalence=check_equivalence(
                self.equivalence if options.equivalence is None else options.equivalence,
                "--equivalence",
            ),
            error_rate=check_error_rate(
                self.error_rate if options.error_rate is None else options.error_rate,
                "--error-rate",
            ),
            interval=check_interval(
                self.interval if options.interval is None else options.interval, "--interval"
            ),
        )
        experiment.check_betting_split()
        if experiment.max_seeds is not None and experiment.max_seeds < len(experiment.seeds):
            raise DlkitError(
                f"max_seeds ({experiment.max_seeds}) is below the {len(experiment.seeds)} seeds "
                "the comparison starts with. Raise max_seeds or give fewer seeds."
            )
        experiment.recipes()  # validate the result before anything trains
        return experiment

    def check_betting_split(self) -> None:
        """Betting needs each seed's difference to be an independent draw: its own split."""
        if self.interval == "betting" and self.data.split != "random":
            raise DlkitError(
                f"{self._where()}interval: betting bets on each seed's difference as an "
                "independent draw, which needs each seed to draw its own split. Add "
                "`split: random` under dataset (or --split random), or use interval: t."
            )

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


def check_max_seeds(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_SEEDS:
        raise DlkitError(
            f"{where}: expected a whole number of seeds from 2 to {MAX_SEEDS:,}. "
            f"Received: {value!r}"
        )
    return value


def check_equivalence(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise DlkitError(
            f"{where}: expected a margin above 0 and below 1 (0.01 is one point of accuracy). "
            f"Received: {value!r}"
        )
    return float(value)


ERROR_RATES = ("per_comparison", "per_expectation")


INTERVALS = ("t", "betting")


def check_error_rate(value: Any, where: str) -> str:
    return _one_of(
        value, ERROR_RATES, where, "per_comparison: at most 5% chance that any expectation is "
        "decided wrongly"
    )  # fmt: skip


def check_interval(value: Any, where: str) -> str:
    return _one_of(
        value, INTERVALS, where, "t: repeated t intervals; betting: a distribution-free "
        "confidence sequence"
    )  # fmt: skip


def _one_of(value: Any, choices: tuple[str, ...], where: str, meaning: str) -> str:
    """`value`, one of `choices`, or a `DlkitError` naming them and what they mean."""
    if value not in choices:
        raise DlkitError(
            f"{where}: expected one of {', '.join(choices)} ({meaning}). Received: {value!r}"
        )
    return str(value)


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


def check_string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DlkitError(f"{where}: expected a non-empty string. Received: {value!r}")
    return value


def check_seeds(value: Any, where: str) -> tuple[int, ...]:
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
