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
from dlkit.comparison.tuning import (
    MAX_EXTENSIONS,
    SCORE,
    Choice,
    Tune,
    choose,
    extended,
    point_label,
    short_label,
)
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

    A variant whose best value sits on an edge of its grid has that grid extended one
    step past it, at the grid's own spacing, and trains the new points, until its best lies
    inside or `MAX_EXTENSIONS` steps were added (see `dlkit.comparison.tuning.extended`).

    Args:
        run: The comparison as it runs.
        recipes: Each variant's recipe, by label.
        parent_id: The comparison's parent run.
        done: The sweep runs already finished, by config hash (skipped).
    """
    tune, tracker = run.experiment.tune, run.tracker
    grids = {label: tune.values(recipe) for label, recipe in recipes.items()}
    sweep = {label: _entries(run, label, r, grids[label]) for label, r in recipes.items()}
    total = sum(map(len, sweep.values()))
    finished = sum(e["config_hash"] in done for entries in sweep.values() for e in entries)
    text = (
        f"Tuning {tune.describe()}: {plural(total, 'run')} ({finished} already finished), "
        "chosen on validation accuracy."
    )
    for line in wrap(text, subsequent="  "):
        run.log(line)
    choices: dict[str, Choice] = {}
    shown: list[str] = []  # the variants whose choice is shown, in the file's order
    steps = dict.fromkeys(recipes, 0)  # how far each variant's grid was extended
    trained = set(done)
    with _tuning_runs(tracker, parent_id, list(recipes)) as holders:

        def settle(label: str, scores: dict[str, float | None] | None = None) -> list[str]:
            """Chooses a variant's point once its sweep is whole, or extends its grid past
            an edge; returns the lines to show: the choices not shown yet that follow, in
            the file's order, those shown. `scores` are the sweep's, when read already."""
            scores = _sweep_scores(tracker, parent_id) if scores is None else scores
            choice = _choose(tune, recipes[label], sweep[label], scores, grids[label])
            wider = steps[label] < MAX_EXTENSIONS and extended(recipes[label], grids[label], choice)
            if wider:  # trained in the next round
                grids[label], steps[label] = wider, steps[label] + 1
                sweep[label] = _entries(run, label, recipes[label], wider)
                return []
            choices[label] = choice
            _log_choice(tracker, holders[label], choice, grids[label], tune.values(recipes[label]))
            lines = []
            for next_label in list(recipes)[len(shown) :]:
                if next_label not in choices:
                    break
                shown.append(next_label)
                asked = tune.values(recipes[next_label])
                lines += _choice_lines(
                    next_label, choices[next_label], tune, grids[next_label], asked
                )
            return lines

        while len(choices) < len(recipes):
            _sweep_round(run, recipes, sweep, choices, trained, holders, parent_id, settle)
    record = {"grid": {}, "seeds": list(tune.seed_list), "variants": {}, "extended": {}}
    for label, recipe in recipes.items():  # the grid asked for, and the values added past it
        asked = tune.values(recipe)
        record["grid"][label] = {f: list(v) for f, v in asked.items()}
        record["variants"][label] = dataclasses.asdict(choices[label])
        added = {f: [v for v in grids[label][f] if v not in asked[f]] for f in asked}
        if any(added.values()):
            record["extended"][label] = {f: values for f, values in added.items() if values}
    return {label: r.replace(**choices[label].point) for label, r in recipes.items()}, record


def _sweep_round(run, recipes, sweep, choices, trained, holders, parent_id, settle) -> None:
    """Trains what the unchosen variants' sweeps still lack, settling each as it is whole."""
    open_ = [label for label in recipes if label not in choices]
    left = {label: sum(e["config_hash"] not in trained for e in sweep[label]) for label in open_}
    whole = [label for label in open_ if not left[label]]
    scores = _sweep_scores(run.tracker, parent_id) if whole else {}  # one read for all of them
    for label in whole:
        for line in settle(label, scores):
            run.log(line)

    def ended(spec: ChildSpec) -> list[str]:
        label = spec.tags[keys.VARIANT]
        left[label] -= 1
        return settle(label) if not left[label] else []

    entries = [e for label in open_ if left[label] for e in sweep[label]]
    entries = [e for e in entries if e["config_hash"] not in trained]
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
        for e in entries
    ]
    trained.update(e["config_hash"] for e in entries)
    if specs:
        run.execute(specs, lines=False, ended=ended)


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


def _log_choice(tracker: Tracker, run_id: str, choice: Choice, values: dict, asked: dict) -> None:
    """Logs a variant's sweep outcome to its tuning run: each point's validation accuracy,
    the chosen setting, the grid it was chosen on (`grid.<field>`, and `extended.<field>`
    the values added past the experiment's grid), and the points as a table in its
    description."""
    fields = list(values)
    added = {f: [v for v in values[f] if v not in asked[f]] for f in fields}
    tracker.log_new_params(
        run_id,
        {
            **{f"grid.{field}": ",".join(f"{v:g}" for v in asked[field]) for field in fields},
            **{f"extended.{f}": ",".join(f"{v:g}" for v in added[f]) for f in fields if added[f]},
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


def _entries(run: Run, label: str, recipe: Recipe, values: dict) -> list[dict[str, Any]]:
    """A variant's sweep over `values`: one entry per point and sweep seed, in grid order."""
    tune, data = run.experiment.tune, run.experiment.data
    return [
        {
            "variant": label,
            "setting": point_label(point),
            "point": point,
            "seed": seed,
            "config_hash": config_hash(
                recipe.replace(**point), data, seed, devices=run.options.devices
            ),
        }
        for point in tune.points(recipe, values)
        for seed in tune.seed_list
    ]


def _choose(
    tune: Tune, recipe: Recipe, entries: list[dict], scores: dict[str, float | None], values
) -> Choice:
    points = tune.points(recipe, values)
    per_point = [
        [scores.get(e["config_hash"]) for e in entries if e["setting"] == point_label(p)]
        for p in points
    ]
    return choose(points, per_point, values)


def _choice_lines(label: str, choice: Choice, tune: Tune, values: dict, asked: dict) -> list[str]:
    failed = f"; {plural(choice.failed, 'sweep run')} failed" if choice.failed else ""
    added = [
        f"{field} to {', '.join(f'{v:g}' for v in values[field] if v not in asked[field])}"
        for field in values
        if set(values[field]) - set(asked[field])
    ]
    wider = f"; grid extended past its edge: {'; '.join(added)}" if added else ""
    lines = wrap(
        f"{label}: {point_label(choice.point)} (validation accuracy {choice.score:.4f}, "
        f"mean of {plural(tune.seeds, 'seed')}{failed}{wider})",
        initial="  ",
        subsequent="    ",
    )
    warning = choice.warning(label, values)
    return lines + wrap(warning, initial="  ", subsequent="    ") if warning else lines


def _sweep_scores(tracker: Tracker, parent_id: str) -> dict[str, float | None]:
    """Each sweep run's validation accuracy by config hash, from the run that counts
    (`members`); `None` for a member that did not finish."""
    return {
        held.config_hash: held.run.metrics.get(SCORE) if held.state == "FINISHED" else None
        for held in members(tracker, parent_id, "tuning").values()
    }
