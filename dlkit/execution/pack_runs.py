"""A pack's members trained together, each logged as its own MLflow run.

`tracked_pack` opens a run per member, trains them as one pack (`dlkit.nn.training.fit_pack`),
and ends each run as soon as its results are logged; members another process holds are left
to it, and a comparison's pack keeps a checkpoint to continue after an interrupt.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dlkit import keys, signals
from dlkit.data.dataset import Dataset
from dlkit.execution.checkpoints import PackCheckpoint
from dlkit.execution.run_logs import failure, log_end, log_start
from dlkit.recipes.recipe import Recipe
from dlkit.tracking.claims import contested
from dlkit.tracking.tracker import Tracker

if TYPE_CHECKING:
    from dlkit.nn.results import TrainResult


@dataclasses.dataclass(frozen=True)
class MemberRun:
    """A pack's member as its own MLflow run: what it trains and how the run is logged.

    Args:
        recipe: What the member trains.
        seed: Its seed.
        name: Its run's name.
        tags: Its run's tags beside the recipe's and the data's. Defaults to `{}`.
        params: Params logged beside the recipe's and the data's. Defaults to `{}`.
        sweep: A tuning sweep's run: params and metrics only, without the model, the
            artifacts or the dataset inputs. Defaults to `False`.
    """

    recipe: Recipe
    seed: int
    name: str
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    sweep: bool = False


def tracked_pack(
    tracker: Tracker,
    members: Sequence[MemberRun],
    data: Dataset | Sequence[Dataset],
    *,
    parent_id: str | None = None,
    on_epoch: Callable[[int, dict[str, float], int], None] | None = None,
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

    recipes, seeds = [m.recipe for m in members], [m.seed for m in members]
    params, sweeps = [m.params for m in members], [m.sweep for m in members]
    datas = per_member(data, len(members))
    run_tags = [
        {keys.RECIPE: m.recipe.name, keys.DATASET: datas[0].info.name, **m.tags} for m in members
    ]
    roles = {t.get(keys.ROLE) for t in run_tags}
    role = roles.pop() if len(roles) == 1 else None  # a pack's members are one role's
    names = [m.name for m in members]
    with tracker.runs(names, tags=run_tags, parent_id=parent_id) as run_ids:
        # Members another process holds are left to it (see dlkit.tracking.claims).
        claims = {run_id: t.get(keys.CONFIG_HASH) for run_id, t in zip(run_ids, run_tags)}
        outcomes: dict[str, Any] = contested(tracker, parent_id, claims, running=True, role=role)
        mine = [k for k, run_id in enumerate(run_ids) if run_id not in outcomes]
        for k in mine:
            log_start(
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
            done = {
                run_ids[k]: claims[run_ids[k]]
                for k, o in zip(mine, trained)
                if not isinstance(o, Exception)
            }
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
            log_end(tracker, run_id, outcome, data, sweep=sweep, curves=curves)
        except Exception as error:
            signals.check()  # an interrupt turned into another error stops them all
            outcome = error
    if isinstance(outcome, Exception):
        curves.flush()  # a failed run keeps the curves it had
        tracker.fail(run_id, failure(outcome))
    else:
        outcome.run_id = run_id
        tracker.finish(run_id)
    return outcome
