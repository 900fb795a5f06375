"""A comparison's tuning sweep as it runs: every variant at every point of one grid.

In MLflow, each variant's sweep is one tuning run under the comparison's parent, and
the sweep's runs are nested under it. The parent then lists the measured runs and one
tuning run per variant; a tuning run logs what its sweep found: the validation accuracy
at each point (`val_accuracy/<point>`), the chosen setting (`chosen.<field>`) and a
table of the points in its description.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from dlkit import keys
from dlkit.comparison.experiment import config_hash
from dlkit.comparison.running import Run, child_spec
from dlkit.comparison.tuning import SCORE, Choice, Tune, choose, point_label, short_label
from dlkit.execution.children import ChildSpec
from dlkit.recipes.recipe import Recipe
from dlkit.text import plural, wrap
from dlkit.tracking.members import members
from dlkit.tracking.tracker import Tracker, process_alive

SWEEP = "sweep"  # the role of a variant's tuning run, which holds its sweep's runs


def tuned(
    run: Run, recipes: dict[str, Recipe], parent_id: str, done: dict[str, str]
) -> tuple[dict[str, Recipe], dict[str, Any]]:
    """Sweeps every variant over the experiment's grid and returns each recipe at its best
    point, chosen on validation, with the sweep's record for the plan and the report.

    Args:
        run: The comparison as it runs.
        recipes: Each variant's recipe, by label.
        parent_id: The comparison's parent run.
        done: The sweep runs already finished, by config hash (skipped).
    """
    tune, tracker = run.experiment.tune, run.tracker
    sweep = _sweep(run, recipes)
    total = sum(map(len, sweep.values()))
    left = {label: sum(e["config_hash"] not in done for e in sweep[label]) for label in sweep}
    text = (
        f"Tuning {tune.describe()}: {plural(total, 'run')} "
        f"({total - sum(left.values())} already finished), chosen on validation accuracy."
    )
    for line in wrap(text, subsequent="  "):
        run.log(line)
    choices: dict[str, Choice] = {}
    shown: list[str] = []  # the variants whose choice is shown, in the file's order
    with _tuning_runs(tracker, parent_id, list(recipes)) as holders:

        def settle(label: str) -> list[str]:
            """Chooses a variant's point once its sweep is whole; returns the lines to show:
            the choices not shown yet that follow, in the file's order, those shown."""
            scores = _sweep_scores(tracker, parent_id)
            choices[label] = _choose(tune, recipes[label], sweep[label], scores)
            _log_choice(tracker, holders[label], choices[label], tune.values(recipes[label]))
            lines = []
            for next_label in list(recipes)[len(shown) :]:
                if next_label not in choices:
                    break
                shown.append(next_label)
                values = tune.values(recipes[next_label])
                lines += _choice_lines(next_label, choices[next_label], tune.seeds, values)
            return lines

        for label in [label for label, count in left.items() if not count]:
            for line in settle(label):
                run.log(line)

        def ended(spec: ChildSpec) -> list[str]:
            label = spec.tags[keys.VARIANT]
            left[label] -= 1
            return settle(label) if not left[label] else []

        specs = [
            child_spec(
                run,
                recipes[e["variant"]].replace(**e["point"]),
                e,
                parent_id,
                "tuning",
                sweep=True,
                name=f"{short_label(e['point'])}/s{e['seed']}",  # under <variant>/tuning
                nest=holders[e["variant"]],
            )
            for entries in sweep.values()
            for e in entries
            if e["config_hash"] not in done
        ]
        run.execute(specs, lines=False, ended=ended)
    record = {"grid": {}, "seeds": list(tune.seed_list), "variants": {}}
    for label, recipe in recipes.items():
        record["grid"][label] = {f: list(v) for f, v in tune.values(recipe).items()}
        record["variants"][label] = dataclasses.asdict(choices[label])
    return {label: r.replace(**choices[label].point) for label, r in recipes.items()}, record


@contextlib.contextmanager
def _tuning_runs(tracker: Tracker, parent_id: str, labels: list[str]) -> Iterator[dict[str, str]]:
    """Opens (or reopens) each variant's tuning run under the parent and yields their ids;
    ends them by how the block exits, as `Tracker.run` does. A tuning run another live
    process holds is nested under, not reopened; of two opened at once, the first stays."""
    with contextlib.ExitStack() as stack:
        held = {}
        for label in labels:
            tags = {keys.ROLE: SWEEP, keys.VARIANT: label}
            first = _first(tracker.children(parent_id, tags=tags))
            if first is not None and first.status == "RUNNING" and process_alive(first.tags):
                held[label] = first.run_id
                continue
            resume = first.run_id if first is not None else None
            mine = stack.enter_context(
                tracker.run(f"{label}/tuning", tags=tags, parent_id=parent_id, resume_id=resume)
            )
            first = _first(tracker.children(parent_id, tags=tags))
            if first is not None and first.run_id != mine:  # another process's came first
                tracker.withdraw(mine)
                mine = first.run_id
            held[label] = mine
        yield held


def _first(runs: list) -> Any:
    return min(runs, key=lambda r: (r.start_time, r.run_id), default=None)


def _log_choice(tracker: Tracker, run_id: str, choice: Choice, values: dict) -> None:
    """Logs a variant's sweep outcome to its tuning run: each point's validation accuracy,
    the chosen setting, and the points as a table in its description."""
    fields = list(values)
    tracker.log_new_params(
        run_id,
        {
            **{f"grid.{field}": ",".join(f"{v:g}" for v in values[field]) for field in fields},
            **{f"chosen.{field}": f"{value:g}" for field, value in choice.point.items()},
        },
    )
    tracker.log_metrics(
        run_id,
        {
            "val_accuracy": choice.score,
            "sweep_runs_failed": choice.failed,
            **{
                f"val_accuracy/{_metric_name(row['setting'])}": row["val_accuracy"]
                for row in choice.scores
            },
        },
    )
    tracker.set_tags(run_id, {keys.SETTING: point_label(choice.point)})
    table = ["| point | validation accuracy |", "|---|---|"] + [
        f"| {row['setting']}{' (chosen)' if row['setting'] == point_label(choice.point) else ''}"
        f" | {row['val_accuracy']:.4f} |"
        for row in choice.scores
    ]
    tracker.set_description(run_id, "\n".join(table) + "\n")


def _metric_name(setting: str) -> str:
    """`learning_rate=0.003` as MLflow allows a metric's name: `learning_rate_0.003`."""
    return setting.replace("=", "_").replace(",", "/")


def _sweep(run: Run, recipes: dict[str, Recipe]) -> dict[str, list[dict[str, Any]]]:
    """Each variant's sweep: one entry per point and sweep seed, in grid order."""
    tune, data = run.experiment.tune, run.experiment.data
    return {
        label: [
            {
                "variant": label,
                "setting": point_label(point),
                "point": point,
                "seed": seed,
                "config_hash": config_hash(
                    recipe.replace(**point), data, seed, devices=run.options.devices
                ),
            }
            for point in tune.points(recipe)
            for seed in tune.seed_list
        ]
        for label, recipe in recipes.items()
    }


def _choose(
    tune: Tune, recipe: Recipe, entries: list[dict], scores: dict[str, float | None]
) -> Choice:
    points = tune.points(recipe)
    per_point = [
        [scores.get(e["config_hash"]) for e in entries if e["setting"] == point_label(p)]
        for p in points
    ]
    return choose(points, per_point, tune.values(recipe))


def _choice_lines(label: str, choice: Choice, seeds: int, values: dict) -> list[str]:
    failed = f"; {choice.failed} sweep runs failed" if choice.failed else ""
    lines = [
        f"  {label}: {point_label(choice.point)} (validation accuracy "
        f"{choice.score:.4f}, mean of {seeds} seeds{failed})"
    ]
    warning = choice.warning(label, values)
    return lines + wrap(warning, initial="  ", subsequent="    ") if warning else lines


def _sweep_scores(tracker: Tracker, parent_id: str) -> dict[str, float | None]:
    """Each sweep run's validation accuracy by config hash, from the run that counts
    (`members`); `None` for a member that did not finish."""
    return {
        held.config_hash: held.run.metrics.get(SCORE) if held.state == "FINISHED" else None
        for held in members(tracker, parent_id, "tuning").values()
    }
