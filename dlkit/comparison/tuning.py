"""Tuning: each variant at its own best setting, chosen on validation with an equal budget.

A sweep trains every variant at every point of one grid (the same points,
seeds and epochs for all), scores each point by its mean validation accuracy
over the sweep's seeds, and keeps each variant's best point. The comparison's
own seeds then train at that point, and only those runs make the table and the
verdicts: the test split is never read to choose. Pure Python: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from dlkit.errors import DlkitError, closest
from dlkit.recipes.recipe import Recipe

# Fields a sweep may tune, with the grid each takes when its values are left out.
# Learning rates by optimizer: six points a factor of about 3 apart around the
# step sizes each is known to train well at.
_LEARNING_RATES = {
    "adaptive": (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1),  # adam, nadam, rmsprop
    "sgd": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),  # plain gradient descent, adagrad, adadelta
    "momentum": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
}
_OPTIMIZER_FAMILY = {
    "adam": "adaptive",
    "nadam": "adaptive",
    "rmsprop": "adaptive",
    "sgd": "sgd",
    "adagrad": "sgd",
    "adadelta": "sgd",
    "momentum": "momentum",
    "nesterov": "momentum",
}
_DEFAULT_GRIDS = {
    "weight_decay": (0.0, 1e-5, 1e-4, 1e-3),
    "dropout": (0.0, 0.1, 0.2, 0.3, 0.5),
    "input_dropout": (0.0, 0.1, 0.2),
    "momentum": (0.5, 0.9, 0.95, 0.99),
}
TUNABLE = ("learning_rate", *_DEFAULT_GRIDS)
TUNE_KEYS = (*TUNABLE, "seeds")
DEFAULT_SEEDS = 2
SEED_BASE = 1000  # sweep seeds are 1000, 1001...: apart from the seeds that measure the choice
MAX_POINTS = 1000
SCORE = "kept_val_accuracy"  # what the sweep's runs are chosen by (see TrainResult)
# A bound a field cannot go past: a best value there is not a sign the grid is too narrow.
_FLOOR = {"weight_decay": 0.0, "dropout": 0.0, "input_dropout": 0.0}
MAX_EXTENSIONS = 3  # steps a variant's grid is extended past an edge its best value sits on


@dataclasses.dataclass(frozen=True)
class Tune:
    """What a comparison tunes, and with how many seeds.

    Args:
        grid: Each tuned field and its values; `None` takes the field's
            default grid (for the learning rate, the variant's optimizer's).
        seeds: Seeds per point of the sweep. Defaults to `2`.
    """

    grid: dict[str, tuple[float, ...] | None]
    seeds: int = DEFAULT_SEEDS

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(SEED_BASE, SEED_BASE + self.seeds))

    def values(self, recipe: Recipe) -> dict[str, tuple[float, ...]]:
        """Each tuned field's values for `recipe`, defaults filled in."""
        return {field: values or default_grid(field, recipe) for field, values in self.grid.items()}

    def points(
        self, recipe: Recipe, values: Mapping[str, Sequence[float]] | None = None
    ) -> list[dict[str, float]]:
        """Every setting the sweep trains `recipe` at: the product of the fields' values
        (`values`, when its grid was extended)."""
        values = values or self.values(recipe)
        return [dict(zip(values, point)) for point in itertools.product(*values.values())]

    def describe(self) -> str:
        """`learning_rate (6 values), 2 seeds`, for log lines and the report."""
        fields = ", ".join(
            f"{field} ({len(values)} values)" if values else f"{field} (default grid)"
            for field, values in self.grid.items()
        )
        return f"{fields}, {self.seeds} seed{'s' if self.seeds > 1 else ''} per point"


def default_grid(field: str, recipe: Recipe) -> tuple[float, ...]:
    """The values a field is tuned over when the experiment does not list them."""
    if field == "learning_rate":
        return _LEARNING_RATES[_OPTIMIZER_FAMILY[recipe.optimizer]]
    return _DEFAULT_GRIDS[field]


def parse_tune(raw: Any, where: str = "tune") -> Tune | None:
    """Reads `tune:` from an experiment file: a mapping of fields to values (or `null` for
    the default grid) with an optional `seeds`, or a list of field names."""
    if raw is None or raw is False:
        return None
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, list):
        raw = {field: None for field in raw}
    if not isinstance(raw, dict) or not raw:
        raise DlkitError(
            f"{where}: expected a mapping such as {{learning_rate: [0.001, 0.01, 0.1], seeds: 2}}"
            " or a list of fields such as [learning_rate]."
        )
    fields = {str(k): v for k, v in raw.items()}
    seeds = fields.pop("seeds", DEFAULT_SEEDS)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 100:
        raise DlkitError(f"{where}.seeds: expected seeds per point, 1 to 100. Received: {seeds!r}")
    if not fields:
        raise DlkitError(f"{where}: name a field to tune, e.g. learning_rate.")
    grid = {
        field: _values(field, None if values is None else list(values), f"{where}.{field}")
        for field, values in fields.items()
    }
    size = math.prod(len(v) for v in grid.values() if v)
    if size > MAX_POINTS:
        raise DlkitError(f"{where}: {size:,} points; a sweep may have at most {MAX_POINTS:,}.")
    return Tune(grid=grid, seeds=seeds)


def parse_tune_option(assignments: Sequence[str]) -> dict[str, tuple[float, ...] | None]:
    """Reads `--tune learning_rate=0.001,0.01,0.1` (or `--tune learning_rate`, its default
    grid), once per field."""
    grid: dict[str, tuple[float, ...] | None] = {}
    for text in assignments:
        field, _, values = text.partition("=")
        field = field.strip()
        where = f"--tune {text}"
        if field in grid:
            raise DlkitError(f"{where}: {field} is tuned twice. Give each field once.")
        if not values.strip():
            grid[field] = _values(field, None, where)
            continue
        try:
            numbers = [float(v) for v in values.split(",")]
        except ValueError:
            raise DlkitError(
                f"{where}: expected numbers separated by commas, e.g. "
                "--tune learning_rate=0.001,0.01,0.1"
            ) from None
        grid[field] = _values(field, numbers, where)
    return grid


def _values(field: str, values: Any, where: str) -> tuple[float, ...] | None:
    if field not in TUNABLE:
        raise DlkitError(
            f"{where}: {field!r} cannot be tuned.{closest(field, TUNE_KEYS)} "
            f"Tunable: {', '.join(TUNABLE)}."
        )
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or not values:
        raise DlkitError(f"{where}: expected a non-empty list of values, or null for defaults.")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise DlkitError(f"{where}: expected numbers. Received: {list(values)!r}")
    numbers = tuple(float(v) for v in values)
    if len(set(numbers)) != len(numbers):
        raise DlkitError(f"{where}: values repeat. Received: {list(values)!r}")
    try:
        for value in numbers:
            Recipe(**{field: value})  # the recipe's own range check, with its message
    except DlkitError as error:
        raise DlkitError(f"{where}: {error}") from None
    return tuple(sorted(numbers))


def with_options(tune: Tune | None, grid: Mapping[str, Any] | bool | None, seeds: int | None):
    """The sweep a comparison runs: the file's, replaced by `--tune` fields (`True`: the
    learning rate on its default grid), off with `--no-tune` (`False`), its seeds set by
    `--tune-seeds`."""
    if grid is False:
        return None
    if grid is True and tune is None:
        grid = {"learning_rate": None}
    if isinstance(grid, Mapping) and grid:
        kept = tune.seeds if tune else DEFAULT_SEEDS
        tune = parse_tune({k: list(v) if v is not None else None for k, v in grid.items()}, "tune")
        tune = dataclasses.replace(tune, seeds=kept)
    if tune is not None and seeds is not None:
        tune = parse_tune({**tune.grid, "seeds": seeds}, "tune_seeds")
    return tune


def extended(
    recipe: Recipe, values: Mapping[str, Sequence[float]], choice: Choice
) -> dict[str, tuple[float, ...]] | None:
    """The grid one step wider past each edge the choice sits on, at the grid's own spacing
    there (the ratio of its last two values when they are all positive, else their
    difference), or `None` when no field can go further (a value the recipe refuses).

    Args:
        recipe: The variant's recipe, which checks each new value.
        values: Each field's grid so far, ascending.
        choice: The variant's choice on that grid.
    """
    wider = {field: tuple(grid) for field, grid in values.items()}
    for field in choice.edges:
        grid = sorted(values[field])
        step = _step(grid if choice.point[field] == grid[-1] else grid[::-1])
        try:
            recipe.replace(**{field: step})
        except DlkitError:  # past what the field allows (a dropout of 1, say)
            continue
        wider[field] = tuple(sorted({*grid, step}))
    return wider if wider != {f: tuple(v) for f, v in values.items()} else None


def _step(grid: Sequence[float]) -> float:
    """The next value past `grid[-1]`, at the grid's spacing there: the same difference on
    an evenly spaced grid (0.1, 0.3, 0.5: 0.7) or one through 0, else the same ratio
    (0.01, 0.03, 0.1: 0.33, at two significant digits)."""
    last, before = grid[-1], grid[-2]
    even = len(grid) > 2 and math.isclose(last - before, before - grid[-3], rel_tol=1e-6)
    if even or not last * before > 0:
        return round(2 * last - before, 12)
    return float(f"{last * last / before:.2g}")


def point_label(point: Mapping[str, float]) -> str:
    """`learning_rate=0.003`: how a point reads in logs, tags and the report."""
    return ",".join(f"{field}={value:g}" for field, value in point.items())


def short_label(point: Mapping[str, float]) -> str:
    """`lr=0.003`: a point in the few characters the MLflow UI shows of a run's name."""
    return ",".join(f"{_SHORT.get(field, field)}={value:g}" for field, value in point.items())


_SHORT = {
    "learning_rate": "lr",
    "weight_decay": "wd",
    "dropout": "drop",
    "input_dropout": "in_drop",
}


@dataclasses.dataclass(frozen=True)
class Choice:
    """A variant's sweep outcome.

    Attributes:
        point: The chosen setting.
        score: Its mean validation accuracy over the sweep's seeds.
        scores: Every point's label, values and mean validation accuracy (runs
            that failed count 0), in grid order.
        edges: Fields whose chosen value is at the end of their grid.
        failed: Sweep runs that did not finish.
    """

    point: dict[str, float]
    score: float
    scores: list[dict[str, Any]]
    edges: tuple[str, ...] = ()
    failed: int = 0

    def warning(self, variant: str, values: Mapping[str, Sequence[float]]) -> str | None:
        """One line telling to widen the grid when the choice sits on its edge, else `None`."""
        if not self.edges:
            return None
        sides = [
            f"{field} {self.point[field]:g} is the "
            f"{'smallest' if self.point[field] == min(values[field]) else 'largest'} tried"
            for field in self.edges
        ]
        return (
            f"Warning: {variant}: the best {' and '.join(sides)}, so a better setting may lie "
            "beyond the grid. Widen it (--tune learning_rate=... or tune: in the file)."
        )


def choose(
    points: Sequence[Mapping[str, float]],
    scores: Sequence[Sequence[float | None]],
    values: Mapping[str, Sequence[float]],
) -> Choice:
    """Picks the point with the best mean validation accuracy over its seeds.

    Args:
        points: The sweep's points, in grid order.
        scores: For each point, each seed's validation accuracy; `None` for a run that
            failed (a diverged learning rate), which counts as 0.
        values: Each field's grid, to tell a choice on its edge.

    Ties go to the earlier point in grid order (the smaller value).
    """
    rows = []
    for point, seeds in zip(points, scores):
        counted = [0.0 if s is None or not math.isfinite(s) else float(s) for s in seeds]
        mean = sum(counted) / len(counted) if counted else math.nan
        rows.append({"setting": point_label(point), **point, "val_accuracy": mean})
    best = max(range(len(rows)), key=lambda i: (_finite(rows[i]["val_accuracy"]), -i))
    point = dict(points[best])
    edges = tuple(
        field
        for field, value in point.items()
        if len(values[field]) > 1
        and value in (min(values[field]), max(values[field]))
        and value != _FLOOR.get(field)
        and _above_neighbour(field, point, points, rows, rows[best]["val_accuracy"], values)
    )
    failed = sum(s is None or not math.isfinite(s) for seeds in scores for s in seeds)
    return Choice(point, rows[best]["val_accuracy"], rows, edges, failed)


def _above_neighbour(field, point, points, rows, score, values) -> bool:
    """Whether the choice beats the point next to it along `field` (the others the same):
    on a plateau (ties go to the earlier point) the edge says nothing of what lies past it."""
    grid = sorted(values[field])
    inner = grid[1] if point[field] == grid[0] else grid[-2]
    for other, row in zip(points, rows):
        if {**point, field: inner} == dict(other):
            return score > _finite(row["val_accuracy"])
    return True


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf
