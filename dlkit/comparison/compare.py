"""Comparisons: every variant x seed on identical data, as child runs of one MLflow parent."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dlkit import keys, signals
from dlkit.comparison.experiment import Experiment, config_hash
from dlkit.comparison.experiment_file import is_experiment_file, load_experiment, resolve_experiment
from dlkit.comparison.loading import PLAN_ARTIFACT, load_comparison
from dlkit.comparison.options import LARGE_COMPARISON, Options
from dlkit.comparison.progress import in_notebook
from dlkit.comparison.reports import Comparison
from dlkit.comparison.running import Run, child_spec
from dlkit.comparison.seeds import Seeds
from dlkit.comparison.sweep import tuned
from dlkit.errors import DlkitError
from dlkit.execution.executors import check as check_executor
from dlkit.execution.executors import ray_kept
from dlkit.recipes.recipe import Recipe
from dlkit.text import plural, safe_name, wrap
from dlkit.tracking.members import finished as finished_runs
from dlkit.tracking.tracker import Tracker

_MAX_PARAM = 500  # longer lists are logged as a count; the full plan is plan.json


def compare(
    target: Experiment | str | Path | Sequence[Any] | Mapping[str, Any],
    options: Options | None = None,
    *,
    callbacks: Sequence[Any] = (),
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
    **fields: Any,
) -> Comparison:
    """Trains every variant with every seed and reports them side by side.

    The variants share one data split. Each variant x seed is a child MLflow
    run under one parent run, in an MLflow experiment named after the
    experiment. Rerunning reopens the latest parent and skips children that
    already FINISHED with an identical configuration; `force=True` starts a
    new parent and retrains everything. A variant that fails (NaN loss, say)
    is marked FAILED and the others go on; an interrupt ends the running
    child and the parent KILLED, keeping every finished child.

    With a `tune` (the file's `tune:` or `tune=` here), each variant first
    trains at every point of one grid, and its seeds then train at the point
    with the best mean validation accuracy (see `dlkit.comparison.tuning`).

    Args:
        target: An experiment file, recipe names, or an `Experiment`. A name may be a
            model builder function instead (see `dlkit.register_model`), and a mapping
            labels each variant: `{"bn": bn_mlp, "baseline": "deep-relu"}`.
        options: How to run it, as an `Options`. Defaults to `Options()`.
        callbacks: Extra Keras callbacks for every training.
        log: Where progress lines go. Defaults to printing them at once (flushed).
        progress: Draw one progress bar (on standard error in a terminal) instead
            of a line per run. Defaults to `None`: a bar in a notebook that can draw
            one (Jupyter with ipywidgets), lines elsewhere.
        **fields: Any `Options` field by name (`dataset`, `epochs`, `seeds`,
            `overrides`, `tune`, `force`, `replicate`, `tracking_uri`,
            `output_dir`, `verbose`...); they beat `options`.

    Returns:
        A `Comparison` whose `table` is a pandas DataFrame; its `failed`
        counts the runs that did not finish.

    Example:

    >>> result = compare(["deep-relu", "wide-relu"], dataset="digits", epochs=5, seeds=2)
    >>> result.table[["variant", "test_accuracy_mean", "test_accuracy_std"]]
    """
    options = (options or Options()).replace(**fields)
    progress = in_notebook() if progress is None else progress
    experiment = resolve_experiment(target, options)
    log = log or functools.partial(print, flush=True)
    replica = replication_of(experiment) if options.replicate else None
    if replica is not None:
        replica.data.load()  # a second slice that does not fit fails before anything trains
    with ray_kept():  # one Ray instance for every stage (sweep, looks, replication), if any
        comparison = _compare(experiment, options, callbacks, log, progress)
        if replica is not None:
            log(f"Replication on training images {_slice(replica)}:")
            once = options.replace(register_best=None)  # the first slice's best is registered
            comparison.replication = _compare(replica, once, callbacks, log, progress)
    return comparison


def replication_of(experiment: Experiment) -> Experiment:
    """Returns the experiment rerun on the next `train_size` images of the training pool.

    Named `<name>-replica`, so its runs live beside the first slice's, not among them.
    """
    data = experiment.data
    if data.train_size is None:
        raise DlkitError(
            f"{experiment.name!r} trains on the whole training pool, so there is no second "
            "slice to replicate it on. Give a train_size (e.g. --train-size 10000)."
        )
    return dataclasses.replace(
        experiment,
        name=f"{experiment.name}-replica",
        data=dataclasses.replace(data, train_offset=data.train_offset + data.train_size),
    )


def _slice(experiment: Experiment) -> str:
    start = experiment.data.train_offset
    return f"{start:,} to {start + experiment.data.train_size - 1:,}"


def _compare(
    experiment: Experiment,
    options: Options,
    callbacks: Sequence[Any],
    log: Callable[[str], None],
    progress: bool,
) -> Comparison:
    recipes, data = _checked(experiment, options)
    folder = _report_folder(options.output_dir, experiment.name)
    tracker = Tracker(options.tracking_uri, experiment.name)
    run = Run(experiment, options, tracker, callbacks, log, progress, data.info.dims)
    check_executor(options.executor, options, tracker.tracking_uri)
    parent = _open_parent(run, data)
    with tracker.run(
        experiment.name, tags=parent.tags, resume_id=parent.run_id, opened=parent.claimed
    ) as parent_id:
        tracker.log_dataset(parent_id, data)
        tuning = None
        if experiment.tune:
            recipes, tuning = tuned(run, recipes, parent_id, parent.swept)
        context = _context(experiment, recipes, data)
        seeds = Seeds.start(experiment, tracker.read_artifact(parent_id, PLAN_ARTIFACT))
        # The measured runs, read once here and once per look after its round.
        runs = tracker.children(parent_id, tags={keys.ROLE: "child"})
        while True:
            plan = _plan(experiment, recipes, options, seeds.by_variant)
            done = finished_runs(tracker, parent_id, runs=runs)
            if parent.resumed or parent.joined:
                log(_resuming(parent_id, plan, done))
                parent = dataclasses.replace(parent, resumed=False, joined=False)
            context["seeds"] = seeds.all
            logged = _log_plan(
                tracker, parent_id, experiment, plan, context, tuning, seeds.record()
            )
            run.execute(
                [
                    child_spec(run, recipes[entry["variant"]], entry, parent_id)
                    for entry in plan
                    if entry["config_hash"] not in done
                ]
            )
            tracker.close_orphans(parent_id)  # runs of workers that died, retried elsewhere
            signals.check()
            if not seeds.budget:
                break
            runs = tracker.children(parent_id, tags={keys.ROLE: "child"})
            looked = load_comparison(tracker, parent_id, verdicts_only=True, plan=logged, runs=runs)
            if not seeds.more(looked, log):
                break
        _log_plan(tracker, parent_id, experiment, plan, context, tuning, seeds.record())
        comparison = _report(tracker, parent_id, folder)
    if options.register_best and comparison.best_run():
        comparison.registered = tracker.register_model(
            comparison.best_run(),
            options.register_best,
            description=f"{comparison.best} from comparison {experiment.name!r}: "
            f"{experiment.question}",
        )
    return comparison


def _resuming(parent_id: str, plan: list[dict], done: dict[str, str]) -> str:
    return (
        f"Resuming parent run {parent_id}; {sum(p['config_hash'] in done for p in plan)} of "
        f"{len(plan)} runs already finished (use --force to retrain them)."
    )


def _checked(experiment: Experiment, options: Options) -> tuple[dict[str, Recipe], Any]:
    """The variants' recipes and the loaded data, once everything that can be checked
    before a run opens is: sizes, the data, whether tuning has a validation split."""
    # `auto` precision is resolved here, so the value that runs is the one hashed and logged.
    recipes = {label: recipe.resolved() for label, recipe in experiment.recipes().items()}
    _check_size(experiment, options)
    # Loaded here once (and cached for the children this process runs), so
    # a broken dataset fails before any run is opened.
    data = experiment.data.load()
    if experiment.tune and not data.info.validation_size:
        raise DlkitError(
            f"{experiment.name!r} tunes on the validation split, and {data.info.name} has "
            "none. Hold some out (validation_split: 0.1) or compare as given (--no-tune)."
        )
    for recipe in recipes.values():
        recipe.check_size(*data.info.dims)
    return recipes, data


@dataclasses.dataclass(frozen=True)
class _Parent:
    """The parent run a comparison opens, resumes or joins, and what it already holds."""

    run_id: str | None
    tags: dict[str, str]
    resumed: bool
    joined: bool
    claimed: bool  # opened by this process just now: nothing to reopen
    swept: dict[str, str]  # the tuning sweep's finished runs, by config hash


def _open_parent(run: Run, data: Any) -> _Parent:
    """Finds the parent to resume (the latest), or claims a new one (joining another
    process's if it opened one at the same time); says so, and ends orphans KILLED."""
    experiment, options, tracker = run.experiment, run.options, run.tracker
    # A parent means one comparison: what changes the meaning of its results (tuned or not,
    # the grid, the split, the data, the variants' settings) opens a new one, and its children
    # all share them.
    like = _kind(experiment)
    tags = {
        keys.ROLE: "parent",
        keys.QUESTION: experiment.question,
        keys.DATASET: data.info.name,
        **like,
    }
    resume_id = None if options.force else tracker.latest_parent(like)
    if resume_id is None and not options.force and tracker.latest_parent() is not None:
        text = (
            f"A new parent run: the earlier ones of {experiment.name!r} differ in what the "
            "results mean (tuned or not, the tuning grid, the split, the data or the variants' "
            "settings); they stay."
        )
        for line in wrap(text, subsequent="  "):
            run.log(line)
    resumed, joined = resume_id is not None, False
    if not resumed and not options.force:  # another process may be opening one now
        resume_id, joined = tracker.claim_parent(experiment.name, tags, like)
    orphans = tracker.close_orphans(resume_id) if resume_id else 0
    info = data.info
    text = (
        f"Comparison {experiment.name!r}: {plural(len(experiment.variants), 'variant')} x "
        f"{plural(len(experiment.seeds), 'seed')}"
        + (f" (up to {experiment.max_seeds} while undecided)" if experiment.max_seeds else "")
        + f" on {info.name} ({info.train_size:,} train, "
        f"{info.validation_size:,} validation, {info.test_size:,} test)"
    )
    for line in wrap(text, subsequent="  "):
        run.log(line)
    if joined:
        run.log(f"Joined parent run {resume_id}, which another process opened at the same time.")
    if orphans:
        run.log(f"Marked {plural(orphans, 'run')} left RUNNING by a stopped process as KILLED.")
    swept = finished_runs(tracker, resume_id, "tuning") if resume_id else {}
    claimed = resume_id is not None and not (resumed or joined)
    return _Parent(resume_id, tags, resumed, joined, claimed, swept)


def _kind(experiment: Experiment) -> dict[str, str]:
    """The parent tags that say what a comparison's results mean: tuned or not, the tuning
    grid, the split mode, the data and the variants' settings (`--epochs 40` is another
    comparison). A parent resumes only with all five the same; one from before a tag was
    written matches any value of it, and is tagged as it resumes."""
    tune = experiment.tune
    grid = (
        ";".join(
            f"{field}={','.join(f'{v:g}' for v in values) if values else 'default'}"
            for field, values in tune.grid.items()
        )
        + f";seeds={tune.seeds}"
        if tune
        else "-"
    )
    data = ",".join(f"{k}={v}" for k, v in experiment.data.identity().items())
    settings = {
        label: config_hash(recipe.resolved(), experiment.data, 0)
        for label, recipe in experiment.recipes().items()
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return {
        keys.TUNED: "yes" if tune else "no",
        keys.GRID: grid,
        keys.SPLIT: experiment.data.split,
        keys.DATA: data,
        keys.VARIANTS: digest,
    }


def _report(tracker: Tracker, parent_id: str, folder: Path | None) -> Comparison:
    """Rebuilds the comparison from the store and renders its report once: into the output
    folder, or a temporary one when there is none, and logs those same files to the parent."""
    comparison = load_comparison(tracker, parent_id)
    with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
        files = comparison.save(folder or Path(tmp))
        _log_report(tracker, parent_id, comparison, files)
    comparison.output_dir, comparison.files = folder, files if folder else []
    return comparison


def _check_size(experiment: Experiment, options: Options) -> None:
    tune = experiment.tune
    recipes = experiment.recipes().values()
    sweep = sum(len(tune.points(r)) * tune.seeds for r in recipes) if tune else 0
    seeds = experiment.max_seeds or len(experiment.seeds)
    runs = len(experiment.variants) * seeds + sweep
    if runs > LARGE_COMPARISON and not options.yes:
        swept = f", {sweep:,} of them tuning" if sweep else ""
        raise DlkitError(
            f"{experiment.name!r} plans {runs:,} runs ({len(experiment.variants):,} variants x "
            f"{seeds:,} seeds{swept}), more than {LARGE_COMPARISON}. If that "
            "is the plan, pass --yes (yes=True in Python)."
        )


def _plan(
    experiment: Experiment,
    recipes: dict[str, Recipe],
    options: Options,
    seeds: dict[str, list[int]],
) -> list[dict]:
    return [
        {
            "variant": variant.label,
            "recipe": variant.recipe,
            "seed": seed,
            "config_hash": config_hash(
                recipes[variant.label], experiment.data, seed, devices=options.devices
            ),
        }
        for variant in experiment.variants
        for seed in seeds[variant.label]
    ]


def report(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    output_dir: str | Path | None = Options.output_dir,
) -> Comparison:
    """Rebuilds a comparison's table and plots from MLflow alone, without training.

    Args:
        experiment: The experiment's name, or its experiment file.
        tracking_uri: MLflow store. Defaults as in `compare`.
        output_dir: Folder for the report files; `None` writes none.
            Defaults to `"reports"`.
    """
    name = load_experiment(experiment).name if is_experiment_file(experiment) else experiment
    comparison = load_comparison(Tracker(tracking_uri, name, create=False))
    folder = _report_folder(output_dir, name)  # made only for a comparison that exists
    if folder is not None:
        comparison.files = comparison.save(folder)
        comparison.output_dir = folder
    return comparison


def _report_folder(output_dir: str | Path | None, name: str) -> Path | None:
    """Returns `<output_dir>/<name>/`, made now, so a bad --output fails before any training."""
    if output_dir is None:
        return None
    folder = Path(output_dir).expanduser() / safe_name(name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DlkitError(
            f"Cannot write the report to {str(folder)!r}: {error.strerror or error}. "
            "Point --output at a folder you can write to."
        ) from None
    if not os.access(folder, os.W_OK):
        raise DlkitError(
            f"Cannot write the report to {str(folder)!r}: no permission. "
            "Point --output at a folder you can write to."
        )
    return folder


def _context(experiment: Experiment, recipes: dict[str, Any], data: Any) -> dict[str, Any]:
    """What was run, in a few values a report opens with."""
    from importlib.metadata import PackageNotFoundError, version

    from dlkit import __version__

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "-"

    info = data.info
    return {
        "dataset": info.name,
        "source": info.source,
        "train_size": info.train_size,
        "train_offset": experiment.data.train_offset,
        "validation_size": info.validation_size,
        "test_size": info.test_size,
        "num_classes": info.num_classes,
        "seeds": list(experiment.seeds),
        "split": experiment.data.split,
        "epochs": sorted({recipe.epochs for recipe in recipes.values()}),
        "precision": sorted({recipe.precision for recipe in recipes.values()}),
        "versions": {
            "dlkit": __version__,
            "tensorflow": installed("tensorflow"),
            "keras": installed("keras"),
            "mlflow": installed("mlflow"),
        },
    }


def _log_plan(
    tracker: Tracker,
    parent_id: str,
    experiment: Experiment,
    plan: list[dict],
    context: dict[str, Any],
    tuning: dict[str, Any] | None = None,
    sequential: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Logs the parent's plan (and the resolved experiment, and its params); returns the plan."""
    with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
        content = {
            "sequential": sequential,
            "name": experiment.name,
            "question": experiment.question,
            "expect": list(experiment.expect),
            "gradient_norms": experiment.gradient_norms,
            "published": experiment.published,
            "context": context,
            "runs": plan,
            "tuning": tuning,
        }
        Path(tmp, PLAN_ARTIFACT).write_text(json.dumps(content, indent=2) + "\n")
        tracker.log_artifact(parent_id, Path(tmp, PLAN_ARTIFACT))
        resolved = {
            "name": experiment.name,
            "question": experiment.question,
            "dataset": dataclasses.asdict(experiment.data),
            "seeds": list(experiment.seeds),
            "variants": [
                {"label": label, **recipe.to_dict(), "widths": list(recipe.widths)}
                for label, recipe in experiment.recipes().items()
            ],
        }
        Path(tmp, "experiment.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        tracker.log_artifact(parent_id, Path(tmp, "experiment.yaml"))
    labels = [variant.label for variant in experiment.variants]
    tracker.log_new_params(
        parent_id,
        {
            "experiment": experiment.name,
            "question": experiment.question[:_MAX_PARAM] or "-",
            "dataset": context["dataset"],
            "train_size": context["train_size"],
            "train_offset": context["train_offset"],
            "epochs": "/".join(map(str, context["epochs"])),
            "variants": _listed(labels, "variants"),
        },
    )
    # Seeds are added while verdicts are open: a tag and a metric, which can change.
    tracker.set_tags(parent_id, {keys.SEEDS: _listed(context["seeds"], "seeds")})
    tracker.log_metrics(
        parent_id, {"seeds": len(context["seeds"])}, step=len((sequential or {}).get("looks", []))
    )
    return content


def _listed(values: list[Any], noun: str) -> str:
    text = ",".join(map(str, values))
    return text if len(text) <= _MAX_PARAM else f"{len(values):,} {noun}"


def _log_report(
    tracker: Tracker, parent_id: str, comparison: Comparison, files: list[Path]
) -> None:
    for path in files:
        tracker.log_artifact(parent_id, path, "report")
    best = comparison.best
    tags = {keys.FAILED_RUNS: comparison.failed}
    if best:
        tags[keys.BEST_VARIANT] = best
    held = [v.held for v in comparison.expectations]
    if held:
        tags[keys.EXPECTATIONS_HELD] = f"{sum(h is True for h in held)}/{len(held)}"
    tracker.set_tags(parent_id, tags)
    statuses = [v.status for v in comparison.expectations]
    metrics = {
        "runs_finished": len(comparison.runs) - comparison.failed,
        "runs_failed": comparison.failed,
        **{
            f"expectations_{s}": statuses.count(s)
            for s in ("held", "contradicted", "equivalent", "inconclusive")
        },
        "training_seconds": comparison.training_seconds,
    }
    decided = sum(v.decided for v in comparison.expectations)
    if decided:
        metrics["training_seconds_per_decided"] = comparison.training_seconds / decided
    if best:
        row = comparison.table.set_index("variant").loc[best]
        metrics["best_test_accuracy"] = float(row["test_accuracy_mean"])
    tracker.log_metrics(parent_id, metrics)
    tracker.set_description(parent_id, _description(comparison))


def _description(comparison: Comparison) -> str:
    """The report as the parent's description: Markdown without its plots (not reachable there)."""
    lines = comparison.markdown().splitlines()
    return "\n".join(line for line in lines if not line.startswith("![")).strip() + "\n"
