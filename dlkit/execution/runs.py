"""One training inside one MLflow run (`train`, `tracked_fit`), and a run's model loaded back.

A training that Keras's own loop runs is one run here; seeds and packs of one go through
`dlkit.execution.pack_runs`, and a comparison's children through `dlkit.execution.children`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dlkit import keys
from dlkit.data.dataset import DEFAULT_SOURCE, Dataset
from dlkit.execution.pack_runs import MemberRun, tracked_pack
from dlkit.execution.run_logs import gradient_probe, log_end, log_start
from dlkit.recipes.packing import trains_alone
from dlkit.recipes.recipe import Recipe, get_recipe
from dlkit.recipes.train_options import TrainOptions
from dlkit.tracking.tracker import Tracker

if TYPE_CHECKING:
    from dlkit.nn.results import TrainResult


def train(
    recipe: Recipe | str,
    data: Dataset | str = DEFAULT_SOURCE,
    *,
    seed: int = 0,
    track: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "dlkit",
    run_name: str | None = None,
    verbose: int | str = 2,
    gradient_norms: bool = False,
    register: str | None = None,
    devices: int | str = 1,
    seeds: Sequence[int] | None = None,
    **overrides: Any,
) -> TrainResult | list[TrainResult]:
    """Trains a recipe on a dataset and logs it as one MLflow run.

    With `seeds`, one run per seed, trained together as one pack (see
    `dlkit.fit`), and one result per seed.

    Args:
        recipe: A `Recipe`, or the name of a registered one.
        data: A `Dataset`, or a source for `load_dataset`. Defaults to `"mnist"`.
        seed: Random seed. Defaults to `0`.
        track: Log the run to MLflow. Defaults to `True`.
        tracking_uri: MLflow store. Defaults to `$MLFLOW_TRACKING_URI`, else
            `sqlite:///mlflow.db`.
        experiment: MLflow experiment name. Defaults to `"dlkit"`.
        run_name: MLflow run name. Defaults to the recipe's name and seed.
        verbose: Keras progress output (0, 1 or 2). Defaults to `2`.
        gradient_norms: Log every layer's gradient norm per epoch (metrics
            `grad_norm_1` nearest the input, ...). Defaults to `False`.
        register: Register the trained model in the MLflow Model Registry
            under this name (a new version each time). Defaults to `None`.
        devices: Train on this many devices at once (see `dlkit.fit`).
            Defaults to `1`.
        seeds: Train one member per seed, together; the data split then
            follows `seed`. Not with `gradient_norms`, `register` or several
            `devices`. Defaults to `None`.
        **overrides: Recipe fields to override, e.g. `epochs=5`.

    Returns:
        A `TrainResult`; with tracking, its `run_id` names the MLflow run.

    Example:

    >>> result = train("deep-relu", "digits", epochs=5)
    >>> result.test_accuracy > 0.9
    True
    """
    from dlkit.data.dataset import load_dataset
    from dlkit.errors import DlkitError
    from dlkit.nn.training import EpochLines, fit, fit_one

    recipe = (
        get_recipe(recipe, **overrides) if isinstance(recipe, str) else recipe.replace(**overrides)
    )
    options = TrainOptions(
        seed=seed, verbose=verbose, gradient_norms=gradient_norms, devices=devices
    )
    data = load_dataset(data, seed=seed) if isinstance(data, str) else data
    if seeds is not None:
        if gradient_norms or register or not options.one_device:
            raise DlkitError(
                "train with seeds trains them together in one pack: without gradient_norms, "
                "register or several devices. Train once per seed for those."
            )
        if not track:
            return fit(recipe, data, seeds=seeds)
        names = [f"{run_name or recipe.name}/seed{seed}" for seed in seeds]
        return _train_seeds(Tracker(tracking_uri, experiment), recipe, data, seeds, names)
    if not track:
        if register:
            raise DlkitError("register needs tracking: a model is registered from its MLflow run.")
        return fit_one(recipe, data, options.replace(gradient_norms=False))  # no run to log to
    tracker = Tracker(tracking_uri, experiment)
    name = run_name or f"{recipe.name}/seed{seed}"
    if trains_alone(recipe, options):  # Keras's loop
        run_id, result = tracked_fit(tracker, recipe, data, options, run_name=name)
        result.run_id = run_id
    else:  # a pack of one, as a comparison trains it
        lines = EpochLines(recipe.epochs) if verbose else None
        [result] = _train_seeds(tracker, recipe, data, [seed], [name], on_epoch=lines)
    if register:
        result.registered = tracker.register_model(result.run_id, register)
    return result


def _train_seeds(
    tracker: Tracker,
    recipe: Recipe,
    data: Dataset,
    seeds: Sequence[int],
    names: Sequence[str],
    *,
    on_epoch: Callable[[int, dict[str, float], int], None] | None = None,
) -> list[TrainResult]:
    runs = [MemberRun(recipe, seed, name) for seed, name in zip(seeds, names, strict=True)]
    members = tracked_pack(tracker, runs, data, on_epoch=on_epoch)
    for _, outcome in members:
        if isinstance(outcome, Exception):
            raise outcome  # its run is FAILED; the others' are FINISHED
    return [outcome for _, outcome in members]


def tracked_fit(
    tracker: Tracker,
    recipe: Recipe,
    data: Dataset,
    options: TrainOptions,
    *,
    run_name: str,
    parent_id: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[str, TrainResult]:
    """Runs `fit` inside one MLflow run of `tracker` and logs everything about it.

    `params` are logged beside the recipe's and the dataset's. With
    `options.gradient_norms`, per-layer gradient norms on a fixed batch of 512
    training examples are logged at step 0 (initialization) and every epoch.
    The run ends FINISHED, FAILED (the exception propagates) or KILLED.
    """
    run_tags = {keys.RECIPE: recipe.name, keys.DATASET: data.info.name, **(tags or {})}
    with tracker.run(run_name, tags=run_tags, parent_id=parent_id) as run_id:
        result = fit_in_run(tracker, run_id, recipe, data, options, params=params)
    return run_id, result


def fit_in_run(
    tracker: Tracker,
    run_id: str,
    recipe: Recipe,
    data: Dataset,
    options: TrainOptions,
    *,
    params: dict[str, Any] | None,
    reuse: bool = False,
    sweep: bool = False,
) -> TrainResult:
    """`fit_one` inside the open run `run_id`: what it is logged as it starts, its epochs as
    they end, its results at the end (without a model, artifacts or inputs for a `sweep`)."""
    from dlkit.nn.callbacks import EpochLogger
    from dlkit.nn.training import fit_one

    recipe = log_start(tracker, run_id, recipe, data, options.seed, params, sweep=sweep)
    # Gradient norms go first so their values are in the logs MLflow receives.
    probes = [gradient_probe(data)] if options.gradient_norms else []
    epochs = tracker.epoch_metrics(run_id)
    try:
        callbacks = (*probes, EpochLogger(epochs), *options.callbacks)
        result = fit_one(recipe, data, options.replace(callbacks=callbacks), reuse=reuse)
        for probe in probes:
            tracker.log_metrics(run_id, probe.initial, step=0)
        log_end(tracker, run_id, result, data, sweep=sweep, curves=epochs)
    finally:
        epochs.flush()  # a failed or interrupted run keeps the curves it had
    return result


def load_model(source: str, *, tracking_uri: str | None = None) -> Any:
    """Loads a model dlkit trained, as a `keras.Model` (maxout layers included).

    Args:
        source: An MLflow run id (the model that run logged), a `models:/...`
            URI (a logged model, or a registered one as `models:/NAME/VERSION`),
            or the path of a `.keras` file.
        tracking_uri: The MLflow store for a run id or URI. Defaults to
            `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`.

    Example:

    >>> result = train("deep-relu", "digits", epochs=5)
    >>> model = load_model(result.run_id)
    """
    import tempfile
    from pathlib import Path

    from dlkit.errors import DlkitError
    from dlkit.nn.models import load_model as load_keras_file

    if source.endswith(".keras") or Path(source).is_file():
        if not Path(source).is_file():
            raise DlkitError(f"No model file {source!r}. Give a .keras file, a run id or a URI.")
        return load_keras_file(source)
    tracker = Tracker(tracking_uri, create=False, experiment=None)
    uri = source if source.startswith("models:/") else tracker.model_uri(source)
    if uri is None:
        raise DlkitError(f"Run {source} logged no model (it did not finish, or it predates them).")
    with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
        file = tracker.download_model(uri, tmp)
        _import_logged_code(Path(tmp))
        return load_keras_file(str(file))


def _import_logged_code(folder: Any) -> None:
    """Imports the modules a model was logged with (its `code/`: the files defining its own
    layers), those not imported yet, so that Keras finds their registered classes."""
    from dlkit.recipes.builders import ensure_imported

    for code in folder.rglob("code"):
        for file in sorted(code.glob("*.py")):
            ensure_imported({file.stem: str(file)})
