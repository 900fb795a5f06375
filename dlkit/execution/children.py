"""A comparison's child as a function over plain data: the unit of work every executor shares.

`run_child(spec)` receives a picklable `ChildSpec` (the resolved recipe and data spec as plain
values, the seed, the tracking URI, the parent run and the tags), loads its own data, trains,
logs, and returns a small `ChildResult`; `run_pack(specs)` does the same for children of one
network shape, trained together. The in-process loop of `dlkit.compare` calls them; so do a
process pool and a Ray cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from dlkit import keys
from dlkit.data.dataset import DataSpec
from dlkit.execution.pack_runs import MemberRun, tracked_pack
from dlkit.execution.run_logs import failure
from dlkit.execution.runs import fit_in_run
from dlkit.recipes.recipe import Recipe
from dlkit.recipes.train_options import TrainOptions
from dlkit.tracking.claims import ClaimedElsewhere, contested
from dlkit.tracking.stores import portable_uri
from dlkit.tracking.tracker import Tracker


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """Everything one child run of a comparison needs, as plain, picklable values.

    Args:
        recipe: The resolved recipe, as `Recipe.to_dict()` gives it.
        data: The data spec, as `dataclasses.asdict(DataSpec)` gives it.
        options: The training's seed, output, gradient norms and devices (without
            callbacks: those stay in the process that has them).
        tracking_uri: Where the run is logged (an absolute path for sqlite,
            so that a worker in another folder finds the same store).
        experiment: The MLflow experiment name.
        run_name: The run's name in the MLflow UI.
        parent_id: The parent run, if any. Defaults to `None`.
        tags: Tags of the run (variant, seed, config hash...). Defaults to `{}`.
        params: Params logged beside the recipe's and the data's. Defaults to `{}`.
        sweep: A tuning sweep's run: params and metrics only, without the
            model, the artifacts or the dataset inputs. Defaults to `False`.
        imports: Modules that register the recipe's model (name -> file), which a
            worker imports before it builds anything. Defaults to `{}`.
    """

    recipe: dict[str, Any]
    data: dict[str, Any]
    options: TrainOptions
    tracking_uri: str
    experiment: str
    run_name: str
    parent_id: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    sweep: bool = False
    imports: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(
        cls, recipe: Recipe, data: DataSpec, options: TrainOptions, tracker: Tracker, **fields: Any
    ) -> ChildSpec:
        """Returns the spec of training `recipe` on `data` into `tracker`'s experiment."""
        from dlkit.recipes.builders import modules_of

        return cls(
            recipe=recipe.to_dict(),
            imports=modules_of(recipe),
            data=dataclasses.asdict(data),
            options=options,
            tracking_uri=portable_uri(tracker.tracking_uri),
            experiment=tracker.experiment,
            **fields,
        )

    @property
    def seed(self) -> int:
        """The training seed (`options.seed`)."""
        return self.options.seed


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
            claim = {run_id: spec.tags.get(keys.CONFIG_HASH)}
            lost = contested(tracker, spec.parent_id, claim, running=True, role=role)
            if lost:
                return _elsewhere(run_id, lost[run_id], start)
            result = fit_in_run(
                tracker,
                run_id,
                recipe,
                data,
                spec.options.replace(callbacks=callbacks),
                params=spec.params,
                sweep=spec.sweep,
                # Another seed of the variant trains the model this process traced: only a
                # child may, since no caller holds the model it hands back.
                reuse=True,
            )
            lost = contested(tracker, spec.parent_id, claim, running=False, role=role)
            if lost:  # it finished in another process meanwhile
                return _elsewhere(run_id, lost[run_id], start)
    except Exception as error:  # the run is already FAILED, with the reason as a tag
        return ChildResult(run_id, "FAILED", None, time.perf_counter() - start, failure(error))
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
    runs = [
        MemberRun(
            Recipe(**spec.recipe), spec.seed, spec.run_name, spec.tags, spec.params, spec.sweep
        )
        for spec in specs
    ]
    members = tracked_pack(
        _tracker(first.tracking_uri, first.experiment),
        runs,
        data,
        parent_id=first.parent_id,
        on_epoch=on_epoch,
        checkpoints=True,
    )
    seconds = time.perf_counter() - start
    return [
        _elsewhere(run_id, outcome, start)
        if isinstance(outcome, ClaimedElsewhere)
        else ChildResult(run_id, "FAILED", None, seconds, failure(outcome))
        if isinstance(outcome, Exception)
        else ChildResult(run_id, "FINISHED", outcome.test_accuracy, seconds)
        for run_id, outcome in members
    ]


def _elsewhere(run_id: str, claim: ClaimedElsewhere, start: float) -> ChildResult:
    """A member left to the process that holds it: its own run was withdrawn."""
    return ChildResult(None, ELSEWHERE, None, time.perf_counter() - start, str(claim))


@functools.lru_cache(maxsize=4)
def _tracker(tracking_uri: str, experiment: str) -> Tracker:
    # One client per store and experiment for all the children a process runs.
    return Tracker(tracking_uri, experiment)
