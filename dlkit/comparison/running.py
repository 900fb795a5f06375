"""One comparison as it runs: what it trains with, where it logs, what it shows.

`Run.execute` trains a list of planned runs (packed where they can be), waits for
those another process holds, and reports each as it ends; `child_spec` turns a plan
entry into the `ChildSpec` a worker trains.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from dlkit import keys, signals
from dlkit.comparison.experiment import Experiment
from dlkit.comparison.options import Options
from dlkit.comparison.progress import Progress
from dlkit.execution.children import ELSEWHERE, ChildSpec
from dlkit.execution.executors import execute, in_this_process
from dlkit.execution.packs import Unit, units
from dlkit.recipes.recipe import Recipe
from dlkit.recipes.train_options import TrainOptions
from dlkit.text import plural
from dlkit.tracking.claims import holders
from dlkit.tracking.members import member_key
from dlkit.tracking.tracker import MLFLOW_PARENT_RUN_ID, Tracker

_WAIT = 1.0  # seconds between looks at runs another process trains


@dataclasses.dataclass
class Run:
    """One comparison as it runs: what it trains with, where it logs, what it shows."""

    experiment: Experiment
    options: Options
    tracker: Tracker
    callbacks: Sequence[Any]
    log: Callable[[str], None]
    progress: bool
    shape: tuple  # inputs, classes and image shape of the data

    def execute(
        self,
        specs: list[ChildSpec],
        *,
        lines: bool = True,
        ended: Callable[[ChildSpec], list[str]] | None = None,
    ) -> None:
        """Trains `specs`, packed where they can be; `lines=False` shows them in the bar
        only, never a line per run (a sweep's runs). `ended` is told of each run as it
        ends and returns lines to show. Members another process holds are waited for,
        and trained here if that process goes before they finish."""
        with Progress(len(specs), self.log, bar=self.progress, lines=lines) as shown:
            done = functools.partial(self._done, shown, ended)
            pending = self._train(specs, shown, done)
            while pending:
                pending = self._await(pending, shown, done)

    def _train(self, specs: list[ChildSpec], shown: Progress, done: Callable) -> list[ChildSpec]:
        """Trains `specs`; returns those left to another process."""
        options = self.options
        here = in_this_process(options.executor, options)
        # Keras callbacks reach a child that trains alone, with Keras's fit.
        # `workers` packs train at once: on this machine, or (a cluster) at most that many.
        work = units(
            specs, 1 if self.callbacks else options.pack, *self.shape, at_once=options.workers
        )
        alone = any(not unit.packed for unit in work)
        children = execute(
            work,
            options.executor,
            self.options,
            # Built only when a child trains alone in this process: they load TensorFlow.
            callbacks=[*self.callbacks, _epoch_callback(shown)] if alone and here else (),
            started=lambda unit: shown.start(_unit_label(unit), _epochs(unit)),
            on_epoch=lambda k, metrics, epoch: shown.epoch(metrics, epoch) if k == 0 else None,
        )
        elsewhere = []
        for spec, result in children:
            signals.check()
            if result.status == ELSEWHERE:
                elsewhere.append(spec)
            elif result.status == "FINISHED":
                done(spec, f"test accuracy {result.test_accuracy:.4f}")
            else:
                done(spec, f"FAILED - {result.failure}", failed=True)
        return elsewhere

    def _await(self, pending: list[ChildSpec], shown: Progress, done: Callable) -> list:
        """Waits until another process ends some of `pending`, or goes; returns those still
        held, having trained here the ones it left."""
        parent_id = pending[0].parent_id
        shown.line(
            f"{plural(len(pending), 'run')} of this comparison "
            f"{'is' if len(pending) == 1 else 'are'} training in another process: waiting."
        )
        while True:
            state = holders(self.tracker, parent_id)
            status = {id(spec): state.get(member_key(spec.tags)) for spec in pending}
            for spec in pending:
                if status[id(spec)] in ("FINISHED", "FAILED"):
                    done(spec, f"{status[id(spec)]} in another process")
            free = [spec for spec in pending if status[id(spec)] is None]
            held = [spec for spec in pending if status[id(spec)] == "LIVE"]
            if free:  # its process went before it finished: train it here
                self.tracker.close_orphans(parent_id)
                return held + self._train(free, shown, done)
            if not held:
                return []
            time.sleep(_WAIT)
            pending = held

    @staticmethod
    def _done(
        shown: Progress,
        ended: Callable[[ChildSpec], list[str]] | None,
        spec: ChildSpec,
        outcome: str,
        *,
        failed: bool = False,
    ) -> None:
        shown.finish(outcome, label=_label(spec), failed=failed)
        for line in ended(spec) if ended else ():
            shown.line(line)


def child_spec(
    run: Run,
    recipe: Recipe,
    entry: dict,
    parent_id: str,
    role: str = "child",
    *,
    name: str | None = None,
    nest: str | None = None,
    **fields: Any,
) -> ChildSpec:
    """The spec of one planned run of the comparison under `parent_id`.

    Args:
        run: The comparison as it runs.
        recipe: What the run trains.
        entry: Its plan entry: `variant`, `seed`, `config_hash` (and a sweep's `setting`).
        parent_id: The comparison's parent run.
        role: `"child"` (a measured run) or `"tuning"` (a sweep's run).
        name: The run's name. Defaults to `<variant>/seed<seed>`.
        nest: The run to show it under in MLflow, when not the parent (a variant's tuning
            run). It still belongs to the comparison (`dlkit.comparison`).
        **fields: Any other `ChildSpec` field.
    """
    options = TrainOptions(
        seed=entry["seed"],
        verbose=run.options.verbose,
        gradient_norms=run.experiment.gradient_norms and role == "child",
        devices=run.options.devices,
    )
    return ChildSpec.of(
        recipe,
        run.experiment.data,
        options,
        run.tracker,
        run_name=name or f"{entry['variant']}/seed{entry['seed']}",
        parent_id=parent_id,
        tags={
            keys.VARIANT: entry["variant"],
            keys.SEED: str(entry["seed"]),
            keys.CONFIG_HASH: entry["config_hash"],
            keys.ROLE: role,
            **({keys.SETTING: entry["setting"]} if "setting" in entry else {}),
            **({MLFLOW_PARENT_RUN_ID: nest} if nest else {}),
        },
        params={"variant": entry["variant"]},
        **fields,
    )


def _label(spec: ChildSpec) -> str:
    return f"{spec.tags['dlkit.variant']} seed {spec.seed}"


def _unit_label(unit: Unit) -> str:
    """What trains: `deep-relu seed 0`, or a pack's `deep-relu seeds 0, 1, 2`."""
    if len(unit.specs) == 1:
        return _label(unit.specs[0])
    variants = list(dict.fromkeys(spec.tags[keys.VARIANT] for spec in unit.specs))
    seeds = list(dict.fromkeys(str(spec.seed) for spec in unit.specs))
    return f"{', '.join(variants)} seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"


def _epochs(unit: Unit) -> int:
    return max(spec.recipe["epochs"] for spec in unit.specs)


def _epoch_callback(progress: Progress) -> Any:
    from dlkit.console import load_tensorflow

    load_tensorflow()  # quietly, before the callbacks module imports Keras
    from dlkit.nn.callbacks import EpochLogger

    return EpochLogger(progress.epoch)
