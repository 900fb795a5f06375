"""Comparisons: every variant x seed on identical data, as child runs of one MLflow parent."""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from dlkit.data import load_dataset
from dlkit.errors import DlkitError
from dlkit.experiments import (
    Experiment,
    config_hash,
    is_experiment_file,
    load_experiment,
    resolve_experiment,
)
from dlkit.reports import PLAN_ARTIFACT, Comparison, latest_parent, load_comparison
from dlkit.text import safe_name
from dlkit.tracking import Tracker
from dlkit.training import tracked_fit


def compare(
    target: Experiment | str | Path | Sequence[str],
    *,
    dataset: str | None = None,
    train_size: int | None = None,
    validation_split: float | None = None,
    epochs: int | None = None,
    seeds: int | Sequence[int] | None = None,
    overrides: dict[str, Any] | None = None,
    gradient_norms: bool | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    data_dir: str | None = None,
    download: bool = True,
    output_dir: str | Path | None = "reports",
    verbose: int | str = 2,
    callbacks: Sequence[Any] = (),
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """Trains every variant with every seed and reports them side by side.

    The variants share one data split. Each variant x seed is a child MLflow
    run under one parent run, in an MLflow experiment named after the
    experiment. Rerunning reopens the latest parent and skips children that
    already FINISHED with an identical configuration; `force=True` starts a
    new parent and retrains everything. A variant that fails (NaN loss, say)
    is marked FAILED and the others go on; an interrupt ends the running
    child and the parent KILLED, keeping every finished child.

    Args:
        target: An experiment file, recipe names, or an `Experiment`.
        dataset: Override the experiment's data source.
        train_size: Override the training-set size.
        validation_split: Override the validation fraction.
        epochs: Override every variant's epochs.
        seeds: Number of seeds (0..N-1) or the list of seeds.
        overrides: Recipe fields set on every variant; they win over the file.
        gradient_norms: Log per-layer gradient norms (overrides the file).
        force: Retrain everything in a new parent run. Defaults to `False`.
        tracking_uri: MLflow store. Defaults to `$MLFLOW_TRACKING_URI`, else
            `sqlite:///mlflow.db`.
        data_dir: TFDS data directory.
        download: Let TFDS download data. Defaults to `True`.
        output_dir: Folder for the report files, in `<output_dir>/<name>/`;
            `None` writes none. Defaults to `"reports"`.
        verbose: Keras progress per epoch (0, 1 or 2). Defaults to `2`.
        callbacks: Extra Keras callbacks for every training.
        log: Where progress lines go. Defaults to printing them at once (flushed).

    Returns:
        A `Comparison` whose `table` is a pandas DataFrame.

    Example:

    >>> result = compare(["deep-relu", "wide-relu"], dataset="digits", epochs=5, seeds=2)
    >>> result.table[["variant", "test_accuracy_mean", "test_accuracy_std"]]
    """
    experiment = resolve_experiment(
        target,
        dataset=dataset,
        train_size=train_size,
        validation_split=validation_split,
        epochs=epochs,
        seeds=seeds,
        overrides=overrides,
        gradient_norms=gradient_norms,
    )
    log = log or functools.partial(print, flush=True)
    recipes = experiment.recipes()
    spec = experiment.data
    data = load_dataset(
        spec.source,
        train_size=spec.train_size,
        validation_split=spec.validation_split,
        data_dir=data_dir,
        download=download,
    )
    tracker = Tracker(tracking_uri, experiment.name)
    plan = [
        {
            "variant": variant.label,
            "recipe": variant.recipe,
            "seed": seed,
            "config_hash": config_hash(recipes[variant.label], spec, seed),
        }
        for variant in experiment.variants
        for seed in experiment.seeds
    ]
    resume_id = None if force else latest_parent(tracker)
    finished = _finished_children(tracker, resume_id) if resume_id else {}

    log(
        f"Comparison {experiment.name!r}: {len(experiment.variants)} variants x "
        f"{len(experiment.seeds)} seeds on {data!r}"
    )
    if resume_id:
        log(
            f"Resuming parent run {resume_id}; {sum(p['config_hash'] in finished for p in plan)} "
            f"of {len(plan)} runs already finished (use --force to retrain them)."
        )

    parent_tags = {
        "dlkit.role": "parent",
        "dlkit.question": experiment.question,
        "dlkit.dataset": data.info.name,
    }
    with tracker.run(experiment.name, tags=parent_tags, resume_id=resume_id) as parent_id:
        _log_plan(tracker, parent_id, experiment, plan)
        trained_times: list[float] = []
        for i, entry in enumerate(plan, start=1):
            label, seed, key = entry["variant"], entry["seed"], entry["config_hash"]
            prefix = f"[{i}/{len(plan)}] {label} seed {seed}"
            if key in finished:
                log(f"{prefix}: already finished (run {finished[key]}), skipped")
                continue
            remaining = sum(p["config_hash"] not in finished for p in plan[i - 1 :])
            eta = _eta(trained_times, remaining)
            log(f"{prefix}: training{eta}")
            start = time.perf_counter()
            try:
                _, result = tracked_fit(
                    tracker,
                    recipes[label],
                    data,
                    seed=seed,
                    run_name=f"{label}/seed{seed}",
                    parent_id=parent_id,
                    tags={
                        "dlkit.variant": label,
                        "dlkit.seed": str(seed),
                        "dlkit.config_hash": key,
                        "dlkit.role": "child",
                    },
                    params={"variant": label},
                    verbose=verbose,
                    callbacks=callbacks,
                    gradient_norms=experiment.gradient_norms,
                )
                log(f"{prefix}: test accuracy {result.test_accuracy:.4f}")
            except Exception as error:  # one failing variant must not stop the others
                log(f"{prefix}: FAILED - {error}")
            trained_times.append(time.perf_counter() - start)

        comparison = load_comparison(tracker, parent_id)
        # Render the report once: into the output folder, or a temporary one
        # when there is none, and log those same files to the parent run.
        with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
            folder = (
                Path(tmp) if output_dir is None else Path(output_dir) / safe_name(experiment.name)
            )
            _log_report(tracker, parent_id, comparison, comparison.save(folder))
        if output_dir is not None:
            comparison.output_dir = folder
    return comparison


def report(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    output_dir: str | Path | None = "reports",
) -> Comparison:
    """Rebuilds a comparison's table and plots from MLflow alone, without training.

    Args:
        experiment: The experiment's name, or its experiment file.
        tracking_uri: MLflow store. Defaults as in `compare`.
        output_dir: Folder for the report files; `None` writes none.
    """
    name = load_experiment(experiment).name if is_experiment_file(experiment) else experiment
    tracker = Tracker(tracking_uri, name) if _experiment_exists(tracking_uri, name) else None
    if tracker is None:
        raise DlkitError(
            f"No MLflow experiment named {name!r} in the tracking store. "
            "Run `dlkit compare` first, or check --tracking-uri."
        )
    comparison = load_comparison(tracker)
    if output_dir is not None:
        folder = Path(output_dir) / safe_name(name)
        comparison.save(folder)
        comparison.output_dir = folder
    return comparison


def _experiment_exists(tracking_uri: str | None, name: str) -> bool:
    from mlflow.tracking import MlflowClient

    from dlkit.tracking import resolve_tracking_uri

    found = MlflowClient(resolve_tracking_uri(tracking_uri)).get_experiment_by_name(name)
    return found is not None and found.lifecycle_stage == "active"


def _finished_children(tracker: Tracker, parent_id: str) -> dict[str, str]:
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    return {
        r.data.tags["dlkit.config_hash"]: r.info.run_id
        for r in runs
        if "dlkit.config_hash" in r.data.tags
    }


def _log_plan(tracker: Tracker, parent_id: str, experiment: Experiment, plan: list[dict]) -> None:
    with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
        content = {
            "name": experiment.name,
            "question": experiment.question,
            "expect": list(experiment.expect),
            "gradient_norms": experiment.gradient_norms,
            "published": experiment.published,
            "runs": plan,
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


def _log_report(
    tracker: Tracker, parent_id: str, comparison: Comparison, files: list[Path]
) -> None:
    for path in files:
        tracker.log_artifact(parent_id, path, "report")
    best = comparison.best
    tags = {"dlkit.failed_runs": int((comparison.runs["status"] != "FINISHED").sum())}
    if best:
        tags["dlkit.best_variant"] = best
    held = [v.held for v in comparison.expectations]
    if held:
        tags["dlkit.expectations_held"] = f"{sum(h is True for h in held)}/{len(held)}"
    tracker.set_tags(parent_id, tags)


def _eta(times: list[float], remaining: int) -> str:
    if not times:
        return ""
    seconds = sum(times) / len(times) * remaining
    minutes, secs = divmod(int(round(seconds)), 60)
    return f" (about {minutes}m{secs:02d}s left)" if minutes else f" (about {secs}s left)"
