"""Training a pack: its epochs, each member's stopping, and what a checkpoint keeps of them.

A pack (`dlkit.nn.pack.Pack`) holds the members' stacked weights and traces their
steps; here it trains, epoch by epoch, until every member has stopped, and each
member is unpacked into its own Keras model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dlkit import signals
from dlkit.data.dataset import Dataset
from dlkit.nn.pack import Member, Pack
from dlkit.recipes.recipe import Recipe


def train_pack(
    recipes: Sequence[Recipe],
    seeds: Sequence[int],
    data: Dataset | Sequence[Dataset],
    *,
    on_epoch: Callable[[int, dict[str, float], int], None] | None = None,
    models: Sequence[bool] | None = None,
    compile_update: bool | None = None,
    checkpoint: Any = None,
) -> tuple[list[Member], float, list[float]]:
    """Trains members together as one pack.

    Args:
        recipes: One per member, all of one `pack_shape`.
        seeds: One per member.
        data: What they train on: one dataset, or one per member (see `Pack`).
        on_epoch: Called after each epoch with (member index, the epoch's
            metrics, the 1-based epoch) for every member that trained in it.
        models: Whether each member is unpacked into its own Keras model
            (`Member.model`); a member without one (a tuning sweep's, whose
            scores are all it leaves) has `None`. Defaults to every member.
        compile_update: Whether the optimizer's update is compiled with XLA;
            `None` (the default) compiles it where the pack is large enough to
            pay the compiling back (`COMPILE_UPDATE_AT`).
        checkpoint: Where the pack's state is kept between epochs, to continue after an
            interrupt: an object with `load()` (the state saved for these members, or
            `None`), `due(seconds)` (whether to save after that many seconds of training)
            and `save(state)` (see `dlkit.execution.checkpoints`). The state is saved at
            the epoch an interrupt arrives in. A resumed pack calls `on_epoch` for the
            epochs it restored. Defaults to `None`: not kept.

    Returns:
        Each member's `Member`, the pack's wall time in seconds, and the
        seconds of each epoch's training steps.

    A Ctrl-C or SIGTERM is held while TensorFlow runs and raised after the
    epoch (or the member's unpacking) it arrived in: raised inside TensorFlow's
    own Python (tracing, a finalizer) it could come out as a `SystemError`, or
    be printed and lost.
    """
    with signals.deferred():
        return _train(recipes, seeds, data, on_epoch, models, compile_update, checkpoint)


def _train(
    recipes, seeds, data, on_epoch, models, compile_update, checkpoint
) -> tuple[list[Member], float, list[float]]:
    pack = Pack(recipes, seeds, data, compile_update=compile_update)
    signals.check()
    run = _Training(pack, on_epoch)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        run.restore(saved)
    start = time.perf_counter() - run.seconds
    for epoch in range(run.epochs, max(r.epochs for r in pack.recipes)):
        began = time.perf_counter()
        loss, accuracy = pack.train_epoch(epoch, run.active)
        run.epoch_seconds.append(time.perf_counter() - began)
        validation = pack.score("validation")[:2] if pack.data.info.validation_size else None
        stopped = run.end_epoch(epoch, loss, accuracy, validation)
        if stopped:  # others train on: these must not move
            pack.stop(stopped)
        run.seconds = time.perf_counter() - start
        saving = checkpoint is not None and run.active.any()
        if saving and checkpoint.due(run.seconds):
            checkpoint.save(run.state())
        start += signals.hold()
        if signals.received() is not None:
            if saving and checkpoint.saved_epoch != run.epochs:
                checkpoint.save(run.state())  # the interrupt's epoch is saved before it stops
            raise run.interrupted([True] * pack.size if models is None else models)
        if not run.active.any():
            break
    wall_time = time.perf_counter() - start
    _finish(pack, run.members, run.stoppers, [True] * pack.size if models is None else models)
    return run.members, wall_time, run.epoch_seconds


class _Training:
    """A pack's training as it goes: each member's history and stopping, and what a
    checkpoint keeps of it."""

    def __init__(self, pack: Pack, on_epoch: Callable | None):
        self.pack, self.on_epoch = pack, on_epoch
        self.members = [Member(history={}) for _ in range(pack.size)]
        self.stoppers = [_EarlyStopping(r) if r.early_stopping else None for r in pack.recipes]
        self.active = np.ones(pack.size, bool)
        self.epoch_seconds: list[float] = []
        self.epochs = 0  # epochs done
        self.seconds = 0.0  # of training so far, a resumed pack's earlier ones included

    def end_epoch(self, epoch: int, loss, accuracy, validation) -> list[int]:
        """Records an epoch of every active member; returns those that stop after it."""
        stopped = []
        for k in np.flatnonzero(self.active):
            logs = _epoch_logs(self.pack, k, epoch, loss, accuracy, validation)
            for key, value in logs.items():
                self.members[k].history.setdefault(key, []).append(value)
            if self.on_epoch is not None:
                self.on_epoch(int(k), logs, epoch + 1)
            if _member_ends(self.pack, k, epoch, logs, self.members[k], self.stoppers[k]):
                self.active[k] = False
                stopped.append(int(k))
        self.epochs = epoch + 1
        return stopped

    def interrupted(self, models: Sequence[bool]) -> signals.Interrupted:
        """The interrupt that stops the pack, carrying the members that were done before it
        (their epochs, early stopping or a NaN loss), finished and scored: `finished` maps
        their indices to their `Member`, `timing` is the pack's seconds and epoch seconds."""
        interrupt = signals.Interrupted(signals.received())
        done = [int(k) for k in np.flatnonzero(~self.active)]
        if done:
            wanted = [models[k] and k in done for k in range(self.pack.size)]
            _finish(self.pack, self.members, self.stoppers, wanted, only=done)
        interrupt.finished = {k: self.members[k] for k in done}
        interrupt.timing = (self.seconds, list(self.epoch_seconds))
        return interrupt

    def state(self) -> dict:
        """Everything a rerun needs to continue exactly: the pack's, and each member's."""
        members = [
            {
                "history": member.history,
                "stopped_epoch": member.stopped_epoch,
                "diverged_at": member.diverged_at,
                "active": bool(self.active[k]),
                "stopper": vars(stopper).copy() if stopper is not None else None,
            }
            for k, (member, stopper) in enumerate(zip(self.members, self.stoppers))
        ]
        return {
            **self.pack.state(),
            "epochs": self.epochs,
            "seconds": self.seconds,
            "epoch_seconds": list(self.epoch_seconds),
            "members": members,
        }

    def restore(self, state: dict) -> None:
        """Continues from a checkpoint's `state`, replaying each member's epochs to
        `on_epoch` (a new run's curves start at epoch 1)."""
        self.pack.restore(state, state["epochs"])
        self.epochs, self.seconds = int(state["epochs"]), float(state["seconds"])
        self.epoch_seconds = list(state["epoch_seconds"])
        for k, saved in enumerate(state["members"]):
            member = self.members[k]
            member.history = {key: list(values) for key, values in saved["history"].items()}
            member.stopped_epoch, member.diverged_at = saved["stopped_epoch"], saved["diverged_at"]
            self.active[k] = saved["active"]
            if saved["stopper"] is not None:
                vars(self.stoppers[k]).update(saved["stopper"])
            for epoch in range(len(member.history.get("loss", []))):
                if self.on_epoch is not None:
                    logs = {key: values[epoch] for key, values in member.history.items()}
                    self.on_epoch(k, logs, epoch + 1)


def _epoch_logs(pack, k, epoch, loss, accuracy, validation) -> dict[str, float]:
    logs = {"loss": float(loss[k]), "accuracy": float(accuracy[k])}
    if validation is not None:
        logs.update(val_loss=float(validation[0][k]), val_accuracy=float(validation[1][k]))
    if pack.recipes[k].lr_decay_epochs:  # as Keras's LearningRateScheduler logs it
        logs["learning_rate"] = float(pack.rates(epoch)[k])
    return logs


def _member_ends(pack: Pack, k: int, epoch: int, logs, member: Member, stopper) -> bool:
    if not math.isfinite(logs["loss"]):
        member.diverged_at = epoch + 1
        return True
    if stopper is not None and stopper.update(epoch, logs, lambda: pack.weights(k)):
        member.stopped_epoch = epoch + 1
        return True
    return epoch + 1 >= pack.recipes[k].epochs


def _finish(
    pack: Pack,
    members: list[Member],
    stoppers: list,
    models: Sequence[bool],
    only: Sequence[int] | None = None,
) -> None:
    """Restores best weights where asked, scores every member, and unpacks those asked;
    `only` some members (those done when an interrupt came: not stopped by it)."""
    for k, stopper in enumerate(stoppers):
        if stopper is not None and stopper.best_weights is not None:
            pack.set_weights(k, stopper.best_weights)  # as Keras does at the end of fit
    test_loss, test_accuracy, predicted = pack.score("test")
    train_accuracy = pack.score("train")[1]
    y_test = pack.labels("test")
    for k, member in enumerate(members):
        if only is not None and k not in only:
            continue
        if only is None:
            signals.check()
        member.model = pack.unpack(k) if models[k] else None
        member.test = {"loss": float(test_loss[k]), "accuracy": float(test_accuracy[k])}
        member.train_accuracy = float(train_accuracy[k])
        member.test_correct = predicted[k] == y_test[min(k, len(y_test) - 1)]


class _EarlyStopping:
    """Keras's `EarlyStopping` rule (no min_delta, no baseline) for one member."""

    def __init__(self, recipe: Recipe):
        self.monitor, self.patience = recipe.monitor, recipe.patience
        self.restore = recipe.restore_best_weights
        self.maximize = "accuracy" in recipe.monitor
        self.best = -np.inf if self.maximize else np.inf
        self.wait = 0
        self.best_weights: list[np.ndarray] | None = None

    def update(self, epoch: int, logs: dict[str, float], weights: Callable[[], list]) -> bool:
        """Takes an epoch's logs; returns whether the member stops here."""
        current = logs.get(self.monitor)
        if current is None:
            return False
        if self.restore and self.best_weights is None:
            self.best_weights = weights()
        self.wait += 1
        if current > self.best if self.maximize else current < self.best:
            self.best, self.wait = current, 0
            if self.restore:
                self.best_weights = weights()
            return False
        return self.wait >= self.patience and epoch > 0
