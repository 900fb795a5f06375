"""What a training produced (`TrainResult`), and the error of one whose loss diverged."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from dlkit.data.dataset import DatasetInfo
from dlkit.errors import DlkitError
from dlkit.nn.devices import device_name
from dlkit.nn.models import count_params
from dlkit.recipes.recipe import Recipe


class TrainingDiverged(DlkitError):
    """The loss became NaN or infinite; Keras's TerminateOnNaN stopped the run."""


@dataclasses.dataclass
class TrainResult:
    """What one training produced.

    Attributes:
        recipe: The recipe trained.
        dataset: The dataset's `DatasetInfo`.
        seed: The random seed.
        history: Per-epoch values from Keras (`loss`, `accuracy`, `val_loss`, ...).
        test_loss: Loss on the test split after training.
        test_accuracy: Accuracy on the test split after training.
        params: Trainable parameter count.
        epochs_run: Epochs actually trained.
        best_epoch: 1-based epoch with the best monitored value (the
            recipe's `monitor`), or `None` without that metric.
        stopped_epoch: 1-based epoch at which early stopping ended training,
            or `None` when it ran every epoch.
        wall_time: Seconds spent in `fit`, compilation included.
        samples_per_second: Training throughput after the first (warm-up)
            epoch; over all epochs when only one ran.
        device: Where TensorFlow ran (`"GPU"` or `"CPU"`).
        train_accuracy: Accuracy on the training split after training, with
            every unit on (no dropout), as the test is scored: the fit that
            the train/test gap compares. Keras's per-epoch `accuracy` is a
            running average over the epoch, with dropout active.
        test_correct: For each test example, in order, whether the model
            classified it correctly (what paired verdicts compare).
        model: The trained `keras.Model`; `None` for a member of a pack told to keep
            none (a tuning sweep's).
        run_id: The MLflow run it was logged to, if any.
        registered: The registered model version (`models:/NAME/VERSION`), if any.
        replicas: Devices the model trained on at once (`devices`).
    """

    recipe: Recipe
    dataset: DatasetInfo
    seed: int
    history: dict[str, list[float]]
    test_loss: float
    test_accuracy: float
    params: int
    epochs_run: int
    best_epoch: int | None
    stopped_epoch: int | None
    wall_time: float
    samples_per_second: float
    device: str
    train_accuracy: float
    test_correct: np.ndarray = dataclasses.field(repr=False)
    model: keras.Model | None = dataclasses.field(repr=False)
    run_id: str | None = None
    registered: str | None = None
    replicas: int = 1

    @property
    def kept_val_accuracy(self) -> float:
        """Validation accuracy of the weights training kept: the best epoch's when early
        stopping restored them, else the last epoch's (what a tuning sweep chooses by)."""
        values = self.history.get("val_accuracy") or [math.nan]
        recipe = self.recipe
        restored = recipe.early_stopping and recipe.restore_best_weights and self.best_epoch
        return float(values[self.best_epoch - 1] if restored else values[-1])

    def summary_metrics(self) -> dict[str, float]:
        """Returns the final figures, as logged to MLflow.

        The last epoch's loss and accuracy are not repeated here: they are the
        last points of the per-epoch metrics.
        """
        metrics = {
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "train_accuracy": self.train_accuracy,
            "params": float(self.params),
            "epochs_run": float(self.epochs_run),
            "wall_time_s": self.wall_time,
            "samples_per_second": self.samples_per_second,
        }
        if "val_accuracy" in self.history:
            metrics["best_val_accuracy"] = float(np.nanmax(self.history["val_accuracy"]))
            metrics["kept_val_accuracy"] = self.kept_val_accuracy
        if self.best_epoch is not None:
            metrics["best_epoch"] = float(self.best_epoch)
        if self.stopped_epoch is not None:
            metrics["stopped_epoch"] = float(self.stopped_epoch)
        return metrics


def diverged(recipe: Recipe, epoch: int | None) -> TrainingDiverged:
    where = f"epoch {epoch}" if epoch else "the first epoch"
    return TrainingDiverged(
        f"Training of recipe {recipe.name!r} diverged: the loss became NaN or infinite "
        f"in {where}. Lower learning_rate (now {recipe.learning_rate:g}), "
        "or use normalization='scale'."
    )


def member_result(recipe, info, seed, member, wall_time, timed, size) -> TrainResult:
    epochs_run = len(member.history["loss"])
    return TrainResult(
        recipe=recipe,
        dataset=info,
        seed=seed,
        history=member.history,
        test_loss=member.test["loss"],
        test_accuracy=member.test["accuracy"],
        params=count_params(recipe, *info.dims),
        epochs_run=epochs_run,
        best_epoch=best_epoch(member.history, recipe.monitor),
        stopped_epoch=member.stopped_epoch,
        wall_time=wall_time,
        samples_per_second=info.train_size * size * len(timed) / max(sum(timed), 1e-9),
        device=device_name(),
        train_accuracy=member.train_accuracy,
        test_correct=member.test_correct,
        model=member.model,
    )


def best_epoch(history: dict[str, list[float]], monitor: str) -> int | None:
    values = history.get(monitor)
    if not values:
        return None
    pick = np.nanargmax if "accuracy" in monitor else np.nanargmin
    return int(pick(values)) + 1
