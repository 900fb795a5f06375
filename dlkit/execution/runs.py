"""Runs: one training inside one MLflow run, and a child run as a function over plain data.

`run_child(spec)` is the unit of work every executor shares. It receives a
picklable `ChildSpec` (the resolved recipe and data spec as plain values, the
seed, the tracking URI, the parent run and the tags), loads its own data,
trains, logs, and returns a small `ChildResult`. The in-process loop of
`dlkit.compare` calls it; so can a process pool or a cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dlkit import keys, signals
from dlkit.data.dataset import DEFAULT_SOURCE, Dataset, DatasetInfo, DataSpec
from dlkit.execution.checkpoints import PackCheckpoint
from dlkit.recipes.packing import single_device, trains_alone
from dlkit.recipes.precision import resolve_precision
from dlkit.recipes.recipe import Recipe, get_recipe
from dlkit.tracking.calls import EpochMetrics
from dlkit.tracking.claims import ClaimedElsewhere, contested
from dlkit.tracking.stores import portable_uri
from dlkit.tracking.tracker import Tracker

if TYPE_CHECKING:
    from dlkit.nn.training import TrainResult

GRADIENT_PROBE_EXAMPLES = 512  # a fixed batch: the same examples at every epoch


def train_params(recipe: Recipe, info: DatasetInfo, seed: int) -> dict[str, Any]:
    """Returns everything that defines a training, as flat params.

    The recipe's fields that take effect, the network they resolve to on this
    data (`hidden_widths`, `param_count`), the data and the seed. The exact
    recipe, every field, is the run's `recipe.json`. A registered model's network is its
    builder's: `model` says which, and no `hidden_widths` are made up for it.
    """
    from dlkit.nn.models import count_params  # TensorFlow: loaded by the training already

    widths = {} if recipe.model else {"hidden_widths": recipe.hidden_layers(*info.dims) or "none"}
    return {
        **recipe.applicable(),
        **widths,
        "param_count": count_params(recipe, *info.dims),
        **info.to_params(),
        "seed": seed,
    }


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
    from dlkit.nn.training import EpochLines, fit

    recipe = (
        get_recipe(recipe, **overrides) if isinstance(recipe, str) else recipe.replace(**overrides)
    )
    data = load_dataset(data, seed=seed) if isinstance(data, str) else data
    if seeds is not None:
        if gradient_norms or register or not single_device(devices):
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
        return fit(recipe, data, seed=seed, verbose=verbose, devices=devices)
    tracker = Tracker(tracking_uri, experiment)
    name = run_name or f"{recipe.name}/seed{seed}"
    if trains_alone(recipe, gradient_norms=gradient_norms, devices=devices):  # Keras's loop
        run_id, result = tracked_fit(
            tracker,
            recipe,
            data,
            seed=seed,
            run_name=name,
            verbose=verbose,
            gradient_norms=gradient_norms,
            devices=devices,
        )
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
    members = tracked_pack(
        tracker,
        [recipe] * len(seeds),
        data,
        list(seeds),
        names=names,
        tags=[{}] * len(seeds),
        params=[{}] * len(seeds),
        on_epoch=on_epoch,
    )
    for _, outcome in members:
        if isinstance(outcome, Exception):
            raise outcome  # its run is FAILED; the others' are FINISHED
    return [outcome for _, outcome in members]


def tracked_fit(
    tracker: Tracker,
    recipe: Recipe,
    data: Dataset,
    *,
    seed: int,
    run_name: str,
    parent_id: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    verbose: int | str = 2,
    callbacks: Sequence[Any] = (),
    gradient_norms: bool = False,
    devices: int | str = 1,
) -> tuple[str, TrainResult]:
    """Runs `fit` inside one MLflow run of `tracker` and logs everything about it.

    `params` are logged beside the recipe's and the dataset's. With
    `gradient_norms`, per-layer gradient norms on a fixed batch of 512
    training examples are logged at step 0 (initialization) and every epoch.
    The run ends FINISHED, FAILED (the exception propagates) or KILLED.
    """
    run_tags = {keys.RECIPE: recipe.name, keys.DATASET: data.info.name, **(tags or {})}
    with tracker.run(run_name, tags=run_tags, parent_id=parent_id) as run_id:
        result = _fit_in_run(
            tracker,
            run_id,
            recipe,
            data,
            seed=seed,
            params=params,
            verbose=verbose,
            callbacks=callbacks,
            gradient_norms=gradient_norms,
            devices=devices,
        )
    return run_id, result


def _fit_in_run(
    tracker: Tracker,
    run_id: str,
    recipe: Recipe,
    data: Dataset,
    *,
    seed: int,
    params: dict[str, Any] | None,
    verbose: int | str,
    callbacks: Sequence[Any],
    gradient_norms: bool,
    devices: int | str = 1,
    reuse: bool = False,
    sweep: bool = False,
) -> TrainResult:
    from dlkit.nn.callbacks import EpochLogger
    from dlkit.nn.training import fit

    recipe = _log_start(tracker, run_id, recipe, data, seed, params, sweep=sweep)
    # Gradient norms go first so their values are in the logs MLflow receives.
    probes = [_gradient_probe(data)] if gradient_norms else []
    epochs = tracker.epoch_metrics(run_id)
    try:
        result = fit(
            recipe,
            data,
            seed=seed,
            verbose=verbose,
            callbacks=[*probes, EpochLogger(epochs), *callbacks],
            devices=devices,
            reuse=reuse,
        )
        for probe in probes:
            tracker.log_metrics(run_id, probe.initial, step=0)
        _log_end(tracker, run_id, result, data, sweep=sweep, curves=epochs)
    finally:
        epochs.flush()  # a failed or interrupted run keeps the curves it had
    return result


def _log_start(tracker, run_id, recipe, data, seed, params, *, sweep: bool = False) -> Recipe:
    """Logs what a training is before it starts; returns the recipe as it runs. A sweep's
    run logs no dataset inputs: its parent has them."""
    recipe = recipe.replace(precision=resolve_precision(recipe.precision))  # log what runs
    tracker.log_params(run_id, {**train_params(recipe, data.info, seed), **(params or {})})
    if not sweep:
        tracker.log_dataset(run_id, data)
    return recipe


def _log_end(
    tracker: Tracker,
    run_id: str,
    result: TrainResult,
    data: Dataset,
    *,
    sweep: bool = False,
    curves: EpochMetrics | None = None,
) -> None:
    """Logs a finished training, in one write with what is left of its `curves`; a sweep's
    run logs its metrics only (no model, no files)."""
    known_now = {"replicas": result.replicas}
    if sweep:
        metrics = result.summary_metrics()
        tracker.log_batch(
            run_id, params=known_now, metrics=metrics, step=result.epochs_run, curves=curves
        )
        return
    example = data.arrays("test")[0][:2]
    tracker.log_result(run_id, result, input_example=example, params=known_now, curves=curves)


def _gradient_probe(data: Dataset):
    from dlkit.nn.callbacks import GradientNorms

    x, y = data.tensors("train")
    return GradientNorms(x[:GRADIENT_PROBE_EXAMPLES], y[:GRADIENT_PROBE_EXAMPLES])


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


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """Everything one child run of a comparison needs, as plain, picklable values.

    Args:
        recipe: The resolved recipe, as `Recipe.to_dict()` gives it.
        data: The data spec, as `dataclasses.asdict(DataSpec)` gives it.
        seed: The training seed.
        tracking_uri: Where the run is logged (an absolute path for sqlite,
            so that a worker in another folder finds the same store).
        experiment: The MLflow experiment name.
        run_name: The run's name in the MLflow UI.
        parent_id: The parent run, if any. Defaults to `None`.
        tags: Tags of the run (variant, seed, config hash...). Defaults to `{}`.
        params: Params logged beside the recipe's and the data's. Defaults to `{}`.
        gradient_norms: Log per-layer gradient norms. Defaults to `False`.
        verbose: Keras progress output (0, 1 or 2). Defaults to `0`.
        devices: Devices the child trains on at once. Defaults to `1`.
        sweep: A tuning sweep's run: params and metrics only, without the
            model, the artifacts or the dataset inputs. Defaults to `False`.
        imports: Modules that register the recipe's model (name -> file), which a
            worker imports before it builds anything. Defaults to `{}`.
    """

    recipe: dict[str, Any]
    data: dict[str, Any]
    seed: int
    tracking_uri: str
    experiment: str
    run_name: str
    parent_id: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    gradient_norms: bool = False
    verbose: int | str = 0
    devices: int | str = 1
    sweep: bool = False
    imports: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(
        cls, recipe: Recipe, data: DataSpec, seed: int, tracker: Tracker, **fields: Any
    ) -> ChildSpec:
        """Returns the spec of training `recipe` on `data` into `tracker`'s experiment."""
        from dlkit.recipes.builders import modules_of

        return cls(
            recipe=recipe.to_dict(),
            imports=modules_of(recipe),
            data=dataclasses.asdict(data),
            seed=seed,
            tracking_uri=portable_uri(tracker.tracking_uri),
            experiment=tracker.experiment,
            **fields,
        )


ELSEWHERE = "ELSEWHERE"  # a ChildResult's status when another process holds the member


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """What a child run returns to whoever ran it: small and picklable.

    Attributes:
        run_id: The MLflow run, or `None` when none was opened.
        status: `"FINISHED"`, `"FAILED"`, or `"ELSEWHERE"`: another process
            holds this member (it trains or trained it), so this one did not.
        test_accuracy: Test accuracy when it finished, else `None`.
        seconds: Wall time of the whole child, data loading and logging included.
        failure: The reason it failed, `""` when it finished.
    """

    run_id: str | None
    status: str
    test_accuracy: float | None
    seconds: float
    failure: str = ""


def run_child(spec: ChildSpec, *, callbacks: Sequence[Any] = ()) -> ChildResult:
    """Trains and logs one child run from its spec; the unit of work of every executor.

    A training that fails (a NaN loss, say) ends its run FAILED and comes back
    as a `ChildResult` with status `"FAILED"`, so one bad variant never stops a
    comparison. An interrupt ends the run KILLED and propagates.

    Args:
        spec: What to train, where to log it.
        callbacks: Extra Keras callbacks; only for an in-process caller, since
            they do not travel with the spec.

    Returns:
        A `ChildResult`.
    """
    from dlkit.console import load_tensorflow

    start = time.perf_counter()
    load_tensorflow()  # without its start-up chatter, unless it is loaded already
    recipe = Recipe(**spec.recipe)
    data = DataSpec(**spec.data).load(spec.seed)
    tracker = _tracker(spec.tracking_uri, spec.experiment)
    run_tags = {keys.RECIPE: recipe.name, keys.DATASET: data.info.name, **spec.tags}
    run_id = None
    try:
        with tracker.run(spec.run_name, tags=run_tags, parent_id=spec.parent_id) as run_id:
            # A member another process holds is left to it (see dlkit.tracking.claims).
            role = spec.tags.get(keys.ROLE)
            lost = contested(tracker, spec.parent_id, [run_id], running=True, role=role)
            if lost:
                return _elsewhere(run_id, lost[run_id], start)
            result = _fit_in_run(
                tracker,
                run_id,
                recipe,
                data,
                seed=spec.seed,
                params=spec.params,
                verbose=spec.verbose,
                callbacks=callbacks,
                gradient_norms=spec.gradient_norms,
                devices=spec.devices,
                sweep=spec.sweep,
                # Another seed of the variant trains the model this process traced: only a
                # child may, since no caller holds the model it hands back.
                reuse=True,
            )
            lost = contested(tracker, spec.parent_id, [run_id], running=False, role=role)
            if lost:  # it finished in another process meanwhile
                return _elsewhere(run_id, lost[run_id], start)
    except Exception as error:  # the run is already FAILED, with the reason as a tag
        return ChildResult(run_id, "FAILED", None, time.perf_counter() - start, _failure(error))
    return ChildResult(run_id, "FINISHED", result.test_accuracy, time.perf_counter() - start)


def run_pack(
    specs: Sequence[ChildSpec],
    *,
    on_epoch: Callable[[int, dict[str, float], int], None] | None = None,
) -> list[ChildResult]:
    """Trains children of one network shape together, as one pack; logs each as its own run.

    The children must share their data spec, store, experiment and parent,
    and their recipes a `pack_shape`. Each member is one MLflow run with what
    `run_child` logs for it; a member that diverges ends FAILED and the others
    train on. An interrupt ends every member's run KILLED and propagates.

    Args:
        specs: The children, a pack.
        on_epoch: Called after every epoch with (member index, the epoch's
            metrics, the 1-based epoch); only for an in-process caller.

    Returns:
        A `ChildResult` per child, in order.
    """
    from dlkit.console import load_tensorflow

    start = time.perf_counter()
    load_tensorflow()
    first = specs[0]
    # Each member's data: one dataset for all under a fixed split, its seed's under a random one.
    data = [DataSpec(**spec.data).load(spec.seed) for spec in specs]
    members = tracked_pack(
        _tracker(first.tracking_uri, first.experiment),
        [Recipe(**spec.recipe) for spec in specs],
        data,
        [spec.seed for spec in specs],
        names=[spec.run_name for spec in specs],
        tags=[spec.tags for spec in specs],
        params=[spec.params for spec in specs],
        parent_id=first.parent_id,
        on_epoch=on_epoch,
        sweeps=[spec.sweep for spec in specs],
        checkpoints=True,
    )
    seconds = time.perf_counter() - start
    return [
        _elsewhere(run_id, outcome, start)
        if isinstance(outcome, ClaimedElsewhere)
        else ChildResult(run_id, "FAILED", None, seconds, _failure(outcome))
        if isinstance(outcome, Exception)
        else ChildResult(run_id, "FINISHED", outcome.test_accuracy, seconds)
        for run_id, outcome in members
    ]


def _elsewhere(run_id: str, claim: ClaimedElsewhere, start: float) -> ChildResult:
    """A member left to the process that holds it: its own run was withdrawn."""
    return ChildResult(None, ELSEWHERE, None, time.perf_counter() - start, str(claim))


def tracked_pack(
    tracker: Tracker,
    recipes: Sequence[Recipe],
    data: Dataset | Sequence[Dataset],
    seeds: Sequence[int],
    *,
    names: Sequence[str],
    tags: Sequence[dict[str, str]],
    params: Sequence[dict[str, Any]],
    parent_id: str | None = None,
    on_epoch: Callable[[int, dict[str, float], int], None] | None = None,
    sweeps: Sequence[bool] | None = None,
    checkpoints: bool = False,
) -> list[tuple[str, TrainResult | Exception]]:
    """Runs `fit_pack` with each member inside its own MLflow run of `tracker`.

    Each member's run is opened before the pack trains, and ended, FINISHED
    or FAILED, as soon as its results are logged; an interrupt ends the
    members still open KILLED and propagates. With `checkpoints` (members of a
    comparison under `parent_id`, each tagged with its config hash), the pack is
    saved between epochs and at an interrupt, continued from a saved state of its
    members, and its checkpoint removed once they are logged (see
    `dlkit.execution.checkpoints`).

    Returns:
        Each member's run id, with its `TrainResult` or the error that failed it.
    """
    from dlkit.nn.pack import per_member

    datas = per_member(data, len(recipes))
    run_tags = [
        {keys.RECIPE: recipe.name, keys.DATASET: datas[0].info.name, **extra}
        for recipe, extra in zip(recipes, tags)
    ]
    sweeps = sweeps or [False] * len(recipes)
    roles = {t.get(keys.ROLE) for t in run_tags}
    role = roles.pop() if len(roles) == 1 else None  # a pack's members are one role's
    with tracker.runs(names, tags=run_tags, parent_id=parent_id) as run_ids:
        # Members another process holds are left to it (see dlkit.tracking.claims).
        outcomes: dict[str, Any] = contested(tracker, parent_id, run_ids, running=True, role=role)
        mine = [k for k, run_id in enumerate(run_ids) if run_id not in outcomes]
        for k in mine:
            _log_start(
                tracker, run_ids[k], recipes[k], datas[k], seeds[k], params[k], sweep=sweeps[k]
            )
        # Each member's per-epoch metrics: written every few seconds, the rest with its end.
        curves = tracker.pack_metrics([run_ids[k] for k in mine])
        hashes = [run_tags[k].get(keys.CONFIG_HASH) for k in mine]
        checkpoint = _checkpoint(tracker, parent_id, hashes) if checkpoints else None
        try:
            trained = _fit_members(
                [recipes[k] for k in mine],
                [datas[k] for k in mine],
                [seeds[k] for k in mine],
                curves,
                on_epoch,
                models=[not sweeps[k] for k in mine],  # a sweep's runs log no model
                checkpoint=checkpoint,
            )
            if checkpoint is not None and checkpoint.loaded_epoch is not None:
                for k in mine:  # the run says it continued a saved pack, and from where
                    tracker.set_tags(run_ids[k], {keys.RESUMED: checkpoint.loaded_epoch})
            # One look for all of them: a member that FINISHED in another process meanwhile
            # withdraws instead of finishing a second time.
            done = [run_ids[k] for k, o in zip(mine, trained) if not isinstance(o, Exception)]
            outcomes.update(contested(tracker, parent_id, done, running=False, role=role))
            for k, outcome, sink in zip(mine, trained, curves):
                if run_ids[k] not in outcomes:
                    end = functools.partial(_end_member, tracker, run_ids[k], data=datas[k])
                    outcomes[run_ids[k]] = end(outcome, sweep=sweeps[k], curves=sink)
            if checkpoint is not None:
                checkpoint.remove()  # its members are logged
        except BaseException as error:
            for sink in curves:  # an interrupted run keeps the curves it had
                sink.flush()
            trained = [(run_ids[k], datas[k], sweeps[k], sink) for k, sink in zip(mine, curves)]
            _keep(tracker, error, trained, checkpoint, max(r.epochs for r in recipes))
            raise
    return [(run_id, outcomes[run_id]) for run_id in run_ids]


def _keep(tracker: Tracker, error: BaseException, members: list, checkpoint, epochs: int) -> None:
    """What a pack keeps when an interrupt stops it: the members done before it (their epochs,
    early stopping) end FINISHED, and its saved epoch is noted for the command's message."""
    for j, result in getattr(error, "results", {}).items():
        run_id, data, sweep, curves = members[j]
        _end_member(tracker, run_id, result, data=data, sweep=sweep, curves=curves)
    if checkpoint is not None and checkpoint.saved_epoch is not None:
        signals.note(checkpoint.kept(epochs))


def _checkpoint(tracker: Tracker, parent_id: str | None, hashes: list) -> PackCheckpoint | None:
    """The checkpoint of a comparison's pack: of members under a parent, each with its hash."""
    if not (parent_id and hashes and all(hashes)):
        return None
    return PackCheckpoint(tracker, parent_id, hashes)


def _fit_members(recipes, data, seeds, sinks, on_epoch, *, models, checkpoint=None) -> list:
    """`fit_pack` with each member's epochs sent to its sink; nothing when no member."""
    from dlkit.nn.training import fit_pack

    if not recipes:
        return []

    def logged(k: int, metrics: dict[str, float], epoch: int) -> None:
        sinks[k](metrics, step=epoch)
        if on_epoch is not None:
            on_epoch(k, metrics, epoch)

    return fit_pack(recipes, data, seeds, on_epoch=logged, models=models, checkpoint=checkpoint)


def _end_member(tracker: Tracker, run_id: str, outcome, *, data: Dataset, sweep: bool, curves):
    """Logs a member's results and ends its run, before the next member's; returns its
    outcome."""
    from dlkit import signals

    if not isinstance(outcome, Exception):
        try:
            _log_end(tracker, run_id, outcome, data, sweep=sweep, curves=curves)
        except Exception as error:
            signals.check()  # an interrupt turned into another error stops them all
            outcome = error
    if isinstance(outcome, Exception):
        curves.flush()  # a failed run keeps the curves it had
        tracker.fail(run_id, _failure(outcome))
    else:
        outcome.run_id = run_id
        tracker.finish(run_id)
    return outcome


def _failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@functools.lru_cache(maxsize=4)
def _tracker(tracking_uri: str, experiment: str) -> Tracker:
    # One client per store and experiment for all the children a process runs.
    return Tracker(tracking_uri, experiment)
