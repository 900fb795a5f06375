"""Training: fit a recipe on a dataset with Keras, seeded, and measure what happened."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dlkit.data import Dataset, DatasetInfo
from dlkit.errors import DlkitError
from dlkit.models import build_model, compile_model
from dlkit.recipes import Recipe

# Training steps per call into TensorFlow. It changes nothing about the
# updates (batch size and order stay as the recipe says) but removes most of
# the per-step Python overhead of small dense nets. Measured on 2 CPU cores
# (784-500-500-10, batch 128): 32 steps ~1.03x plain Keras, 128 ~1.2x, 512 no better.
STEPS_PER_EXECUTION = 128


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
        model: The trained `keras.Model`.
        run_id: The MLflow run it was logged to, if any.
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
    model: keras.Model = dataclasses.field(repr=False)
    run_id: str | None = None

    def summary_metrics(self) -> dict[str, float]:
        """Returns the final figures, as logged to MLflow."""
        metrics = {
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "params": float(self.params),
            "epochs_run": float(self.epochs_run),
            "wall_time_s": self.wall_time,
            "samples_per_second": self.samples_per_second,
        }
        if "val_accuracy" in self.history:
            metrics["best_val_accuracy"] = float(np.nanmax(self.history["val_accuracy"]))
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if key in self.history:
                metrics[f"final_{key}"] = self.history[key][-1]
        if self.best_epoch is not None:
            metrics["best_epoch"] = float(self.best_epoch)
        if self.stopped_epoch is not None:
            metrics["stopped_epoch"] = float(self.stopped_epoch)
        return metrics


def device_name() -> str:
    """Returns `"GPU"` when TensorFlow sees one, else `"CPU"`."""
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def fit(
    recipe: Recipe,
    data: Dataset,
    *,
    seed: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 2,
    steps_per_execution: int = STEPS_PER_EXECUTION,
    jit_compile: bool | str = "auto",
) -> TrainResult:
    """Builds, trains and evaluates `recipe` on `data`, without any tracking.

    Args:
        recipe: What to train.
        data: A `Dataset` from `load_dataset`.
        seed: Seeds Python, NumPy, TensorFlow and the shuffle. Defaults to `0`.
        callbacks: Extra Keras callbacks (dlkit's MLflow logger, for one).
        verbose: Keras's `fit` verbosity: 0 silent, 1 progress bar, 2 one
            line per epoch. Defaults to `2`.
        steps_per_execution: Steps per TensorFlow call. Defaults to `128`.
        jit_compile: XLA compilation, passed to `compile`. Defaults to `"auto"`.

    Returns:
        A `TrainResult`.

    Raises:
        TrainingDiverged: when the loss became NaN or infinite.
    """
    info = data.info
    if recipe.early_stopping and recipe.monitor.startswith("val_") and not info.validation_size:
        raise DlkitError(
            f"Early stopping monitors {recipe.monitor!r} but the dataset has no validation "
            "split. Set validation_split above 0 or monitor 'loss'."
        )
    keras.utils.set_random_seed(seed)
    model = build_model(
        recipe,
        info.input_shape,
        info.num_classes,
        input_max=info.input_max,
        input_mean=data.input_mean,
        input_variance=data.input_variance,
    )
    compile_model(model, recipe, steps_per_execution=steps_per_execution, jit_compile=jit_compile)

    timer = _EpochTimer()
    own: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), timer]
    early_stopping = None
    if recipe.early_stopping:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=recipe.monitor,
            patience=recipe.patience,
            restore_best_weights=recipe.restore_best_weights,
        )
        own.append(early_stopping)
    if recipe.lr_decay_epochs:
        own.append(keras.callbacks.LearningRateScheduler(_step_decay(recipe)))

    validation = data.pipeline("validation", recipe.batch_size) if info.validation_size else None
    start = time.perf_counter()
    history = model.fit(
        data.pipeline("train", recipe.batch_size, seed=seed),
        validation_data=validation,
        epochs=recipe.epochs,
        shuffle=False,  # the pipeline already reshuffles every epoch, from the seed
        callbacks=[*own, *callbacks],
        verbose=verbose,
    ).history
    wall_time = time.perf_counter() - start
    history = {key: [float(v) for v in values] for key, values in history.items()}

    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        where = f"epoch {len(losses)}" if losses else "the first epoch"
        raise TrainingDiverged(
            f"Training of recipe {recipe.name!r} diverged: the loss became NaN or infinite "
            f"in {where}. Lower learning_rate (now {recipe.learning_rate:g}), "
            "or use normalization='scale'."
        )

    test = model.evaluate(data.pipeline("test", recipe.batch_size), verbose=0, return_dict=True)
    epochs_run = len(losses)
    stopped = (
        early_stopping.stopped_epoch + 1
        if early_stopping and early_stopping.stopped_epoch
        else None
    )
    return TrainResult(
        recipe=recipe,
        dataset=info,
        seed=seed,
        history=history,
        test_loss=float(test["loss"]),
        test_accuracy=float(test["accuracy"]),
        params=recipe.param_count(int(np.prod(info.input_shape)), info.num_classes),
        epochs_run=epochs_run,
        best_epoch=_best_epoch(history, recipe.monitor),
        stopped_epoch=stopped,
        wall_time=wall_time,
        samples_per_second=timer.samples_per_second(info.train_size),
        device=device_name(),
        model=model,
    )


def _step_decay(recipe: Recipe):
    def schedule(epoch: int, lr: float) -> float:
        return recipe.learning_rate * recipe.lr_decay ** (epoch // recipe.lr_decay_epochs)

    return schedule


def _best_epoch(history: dict[str, list[float]], monitor: str) -> int | None:
    values = history.get(monitor)
    if not values:
        return None
    pick = np.nanargmax if "accuracy" in monitor else np.nanargmin
    return int(pick(values)) + 1


class _EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch's training steps (validation excluded)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(getattr(self, "_last", time.perf_counter()) - self._start)

    def samples_per_second(self, samples_per_epoch: int) -> float:
        timed = self.seconds[1:] or self.seconds  # the first epoch includes tracing
        return samples_per_epoch * len(timed) / max(sum(timed), 1e-9)


def train_params(recipe: Recipe, info: DatasetInfo, seed: int) -> dict[str, Any]:
    """Returns everything that defines a training, as flat params."""
    return {**recipe.to_dict(), **info.to_params(), "seed": seed}


def train(
    recipe: Recipe | str,
    data: Dataset | str = "digits",
    *,
    seed: int = 0,
    track: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "dlkit",
    run_name: str | None = None,
    verbose: int | str = 2,
    gradient_norms: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Trains a recipe on a dataset and logs it as one MLflow run.

    Args:
        recipe: A `Recipe`, or the name of a registered one.
        data: A `Dataset`, or a source for `load_dataset`. Defaults to `"digits"`.
        seed: Random seed. Defaults to `0`.
        track: Log the run to MLflow. Defaults to `True`.
        tracking_uri: MLflow store. Defaults to `$MLFLOW_TRACKING_URI`, else
            `sqlite:///mlflow.db`.
        experiment: MLflow experiment name. Defaults to `"dlkit"`.
        run_name: MLflow run name. Defaults to the recipe's name and seed.
        verbose: Keras progress output (0, 1 or 2). Defaults to `2`.
        gradient_norms: Log every layer's gradient norm per epoch (metrics
            `grad_norm_1` nearest the input, ...). Defaults to `False`.
        **overrides: Recipe fields to override, e.g. `epochs=5`.

    Returns:
        A `TrainResult`; with tracking, its `run_id` names the MLflow run.

    Example:

    >>> result = train("deep-relu", "digits", epochs=5)
    >>> result.test_accuracy > 0.9
    True
    """
    from dlkit.data import load_dataset
    from dlkit.recipes import get_recipe

    recipe = (
        get_recipe(recipe, **overrides) if isinstance(recipe, str) else recipe.replace(**overrides)
    )
    data = load_dataset(data, seed=seed) if isinstance(data, str) else data
    if not track:
        return fit(recipe, data, seed=seed, verbose=verbose)
    from dlkit.tracking import Tracker

    tracker = Tracker(tracking_uri, experiment)
    run_id, result = tracked_fit(
        tracker,
        recipe,
        data,
        seed=seed,
        run_name=run_name or f"{recipe.name}/seed{seed}",
        verbose=verbose,
        gradient_norms=gradient_norms,
    )
    result.run_id = run_id
    return result


def tracked_fit(
    tracker: Any,
    recipe: Recipe,
    data: Dataset,
    *,
    seed: int,
    run_name: str,
    parent_id: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    verbose: int | str = 2,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    gradient_norms: bool = False,
) -> tuple[str, TrainResult]:
    """Runs `fit` inside one MLflow run of `tracker` and logs everything about it.

    `params` are logged beside the recipe's and the dataset's. With
    `gradient_norms`, per-layer gradient norms on a fixed batch of 512
    training examples are logged at step 0 (initialization) and every epoch.
    """
    run_tags = {"dlkit.recipe": recipe.name, "dlkit.dataset": data.info.name, **(tags or {})}
    with tracker.run(run_name, tags=run_tags, parent_id=parent_id) as run_id:
        tracker.log_params(run_id, {**train_params(recipe, data.info, seed), **(params or {})})
        # Gradient norms go first so their values are in the logs MLflow receives.
        probes = [_gradient_probe(data)] if gradient_norms else []
        result = fit(
            recipe,
            data,
            seed=seed,
            verbose=verbose,
            callbacks=[*probes, tracker.callback(run_id), *callbacks],
        )
        for probe in probes:
            tracker.log_metrics(run_id, probe.initial, step=0)
        tracker.log_result(run_id, result)
    return run_id, result


def _gradient_probe(data: Dataset, examples: int = 512):
    from dlkit.callbacks import GradientNorms

    x, y = data.arrays("train")
    x, y = x[:examples], y[:examples]
    return GradientNorms(x, np.eye(data.info.num_classes, dtype=np.float32)[y])
