"""Training: fit a recipe on a dataset with Keras, seeded, and measure what happened."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dlkit import signals
from dlkit.data.dataset import Dataset, DatasetInfo
from dlkit.errors import DlkitError
from dlkit.nn.callbacks import EpochTimer, StopOnSignal, Validation, score
from dlkit.nn.devices import device_name, distribution
from dlkit.nn.models import build_for, compile_model, count_params, trainable_count
from dlkit.nn.pack import per_member
from dlkit.nn.pack_training import train_pack
from dlkit.nn.results import TrainingDiverged, TrainResult, best_epoch, diverged, member_result
from dlkit.nn.traced import TRACED
from dlkit.recipes.builders import get_builder
from dlkit.recipes.packing import trains_alone
from dlkit.recipes.recipe import Recipe
from dlkit.recipes.train_options import TrainOptions

# Training steps per call into TensorFlow. It changes nothing about the
# updates (batch size and order stay as the recipe says) but removes most of
# the per-step Python overhead of small dense nets. Measured on 2 CPU cores
# (784-500-500-10, batch 128): 32 steps ~1.03x plain Keras, 128 ~1.2x, 512 no better.
STEPS_PER_EXECUTION = 128


class _ExpectedRetracing(logging.Filter):
    """Drops TensorFlow's warning that a function "triggered tf.function retracing".

    A comparison builds a new model per child, and each new model traces its
    training function anew: that is expected here, and the warning about it
    (once five or more variants ran) buried the progress lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _retracing_expected(function: Callable) -> Callable:
    """Runs `function` with TensorFlow's retracing warning dropped, and only then: a
    program's own tf.functions keep the warning outside dlkit's training."""

    @functools.wraps(function)
    def quietly(*args: Any, **kwargs: Any) -> Any:
        logger, quiet = tf.get_logger(), _ExpectedRetracing()
        logger.addFilter(quiet)
        try:
            return function(*args, **kwargs)
        finally:
            logger.removeFilter(quiet)

    return quietly


@_retracing_expected
def fit(
    recipe: Recipe,
    data: Dataset,
    *,
    seed: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 2,
    steps_per_execution: int = STEPS_PER_EXECUTION,
    jit_compile: bool | str = "auto",
    devices: int | str = 1,
    reuse: bool = False,
    seeds: Sequence[int] | None = None,
    keras_loop: bool = False,
) -> TrainResult | list[TrainResult]:
    """Builds, trains and evaluates `recipe` on `data`, without any tracking.

    A training is a pack of one (`fit_pack`), unless it needs Keras's own
    `fit` loop: with `callbacks`, several `devices`, `reuse`, other
    `steps_per_execution` or `jit_compile` than the defaults, a recipe no
    pack trains (`mixed_float16`, a convnet), or `keras_loop`. Both give the
    same training up to float rounding. With `seeds`, one training per seed,
    all trained together as one pack: a list of results, in the order of the
    seeds.

    Args:
        recipe: What to train.
        data: A `Dataset` from `load_dataset`.
        seed: Seeds Python, NumPy, TensorFlow and the shuffle. Defaults to `0`.
        callbacks: Extra Keras callbacks (dlkit's MLflow logger, for one).
        verbose: 0 silent, else one line per epoch (Keras's `fit`, when it
            trains, shows a progress bar at 1). Defaults to `2`.
        steps_per_execution: Steps per TensorFlow call. Defaults to `128`.
        jit_compile: XLA compilation, passed to `compile`. Defaults to `"auto"`.
        devices: Train one model on this many devices with
            `tf.distribute.MirroredStrategy`: GPUs when TensorFlow sees them,
            else logical CPU devices (which must be asked for before TensorFlow
            runs anything in this process); `"all"` is every GPU. The recipe's
            `batch_size` is the global batch, split across the replicas, so
            the updates match a single-device run's. Defaults to `1`.
        reuse: Train, from this seed's fresh initial state, a model this
            process already compiled and traced for the same recipe and data
            (another seed of a comparison's variant), instead of tracing a new
            one. The updates are exactly those of a new model; only the
            tracing (a second or more per model) is saved. The traced model
            stays in this process for the next such training: the returned
            `model` is a copy of it, the caller's own. Defaults to `False`.
        seeds: Train one member per seed in one pack instead of `seed` alone;
            each result is what that seed gives alone, up to float rounding.
            Not with `callbacks` or several `devices`. Defaults to `None`.
        keras_loop: Train with Keras's `fit` even when a pack of one could
            (what `--pack 1` and the benchmarks compare against). Defaults to
            `False`.

    Returns:
        A `TrainResult`, or one per seed.

    Raises:
        TrainingDiverged: when the loss became NaN or infinite.

    A Ctrl-C or SIGTERM is held while TensorFlow runs and raised at the next
    step's end (see `train_pack`).
    """
    options = TrainOptions(seed=seed, verbose=verbose, callbacks=callbacks, devices=devices)
    if seeds is not None:
        return _fit_seeds(recipe, data, seeds, options)
    loop = KerasLoop(steps_per_execution, jit_compile)
    keras_loop = keras_loop or loop != KerasLoop()
    return fit_one(recipe, data, options, reuse=reuse, loop=loop if keras_loop else None)


@dataclasses.dataclass(frozen=True)
class KerasLoop:
    """Keras's own `fit` loop, and how it calls TensorFlow (what the benchmarks vary).

    Args:
        steps_per_execution: Steps per TensorFlow call. Defaults to `STEPS_PER_EXECUTION`.
        jit_compile: XLA compilation, passed to `compile`. Defaults to `"auto"`.
    """

    steps_per_execution: int = STEPS_PER_EXECUTION
    jit_compile: bool | str = "auto"


@_retracing_expected
def fit_one(
    recipe: Recipe,
    data: Dataset,
    options: TrainOptions,
    *,
    reuse: bool = False,
    loop: KerasLoop | None = None,
) -> TrainResult:
    """`fit` of one seed, with its options as one value: a pack of one, or Keras's own loop
    (`loop`, or what `options` or the recipe need: callbacks, several devices, `reuse`, a
    recipe no pack trains)."""
    if loop is None and not (reuse or options.callbacks or trains_alone(recipe, options)):
        on_epoch = EpochLines(recipe.epochs) if options.verbose else None
        return _fit_seeds(recipe, data, [options.seed], options, on_epoch=on_epoch)[0]
    with signals.deferred():
        return _fit_keras(recipe, data, options, loop or KerasLoop(), reuse=reuse)


def _fit_keras(
    recipe: Recipe, data: Dataset, options: TrainOptions, loop: KerasLoop, *, reuse: bool
) -> TrainResult:
    seed = options.seed
    recipe = _trainable(recipe, data.info)
    info = data.info
    strategy = distribution(options.devices)  # before anything starts TensorFlow's runtime
    steps, repeat, steps_per_execution = _loop(info, recipe, strategy, loop.steps_per_execution)
    keras.utils.set_random_seed(seed)
    reuse = reuse and not strategy
    # A registered model's recipe names its builder; the builder itself (re-registered in a
    # notebook, say) is part of what a kept model was traced from.
    builder = get_builder(recipe.model).function if recipe.model else None
    key = (recipe, builder, steps_per_execution, loop.jit_compile)
    model, optimizer_start = _compiled(recipe, data, strategy, key, reuse=reuse)
    own, validation, early_stopping, timer = _own_callbacks(recipe, data, strategy)

    start = time.perf_counter()
    history = model.fit(
        data.pipeline("train", recipe.batch_size, seed=seed, repeat=repeat),
        steps_per_epoch=steps if repeat else None,
        validation_data=validation,
        epochs=recipe.epochs,
        shuffle=False,  # the pipeline already reshuffles every epoch, from the seed
        callbacks=[*own, *options.callbacks],
        verbose=options.verbose,
    ).history
    wall_time = time.perf_counter() - start
    history = {key: [float(v) for v in values] for key, values in history.items()}
    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise diverged(recipe, len(losses))
    scores = _scores(model, data, recipe, strategy)
    copy = _own_copy(model, recipe, data, key) if reuse else None
    if copy is not None:  # the traced model stays here for the next seed; the caller gets a copy
        TRACED.keep(key, data, model, optimizer_start)
        model = copy
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
        # a registered model's count is its built model's: read off the one trained here
        params=trainable_count(model) if recipe.model else count_params(recipe, *info.dims),
        epochs_run=len(losses),
        best_epoch=best_epoch(history, recipe.monitor),
        stopped_epoch=stopped,
        wall_time=wall_time,
        samples_per_second=timer.samples_per_second(info.train_size),
        device=device_name(),
        model=model,
        replicas=strategy.num_replicas_in_sync if strategy else 1,
        **scores,
    )


def _own_copy(model: keras.Model, recipe: Recipe, data: Dataset, key: tuple) -> keras.Model | None:
    """A model of the caller's own equal to `model`: its weights, its dropout layers' seed
    state and its optimizer's state, compiled the same way (traced when first used). `None`
    when the builder builds another network this time (one whose layers depend on the
    random state): then no model of it is kept, since a kept one would stand in for others."""
    copy, _ = _compiled(recipe, data, None, key, reuse=False)
    if [v.shape for v in copy.variables] != [v.shape for v in model.variables]:
        return None
    copy.optimizer.build(copy.trainable_variables)
    pairs = [
        *zip(copy.variables, model.variables),
        *zip(copy.optimizer.variables, model.optimizer.variables),
    ]
    for target, source in pairs:
        target.assign(source)
    return copy


def _loop(
    info: DatasetInfo, recipe: Recipe, strategy: Any, steps_per_execution: int
) -> tuple[int, bool, int]:
    """Steps per epoch, whether the pipeline repeats, and steps per call into TensorFlow."""
    if strategy:
        # Keras's multi-step loop fails under MirroredStrategy (an unfed placeholder
        # in its while loop, TF 2.21): one step per call there.
        steps_per_execution = 1
    steps = math.ceil(info.train_size / recipe.batch_size)
    # An epoch that fits in one call into TensorFlow trains as one call, from one
    # endless pipeline: no dataset iterator opened and dropped every epoch (the
    # batches are the same, see Dataset.pipeline).
    repeat = not strategy and steps <= steps_per_execution
    return steps, repeat, steps if repeat else steps_per_execution


def _compiled(recipe: Recipe, data: Dataset, strategy: Any, key: tuple, *, reuse: bool):
    """The model to train, compiled; with `reuse`, the one this process traced for `key`
    (with the optimizer's state before its first step, to start over from) when it has one."""
    optimizer_start = None
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_for(recipe, data)
        traced = TRACED.take(key, data, model) if reuse else None
        if traced:
            return traced
        _, _, steps_per_execution, jit_compile = key
        compile_model(
            model, recipe, steps_per_execution=steps_per_execution, jit_compile=jit_compile
        )
        if reuse:
            model.optimizer.build(model.trainable_variables)
            optimizer_start = [np.array(v) for v in model.optimizer.variables]
    return model, optimizer_start


def _own_callbacks(recipe: Recipe, data: Dataset, strategy: Any) -> tuple:
    """dlkit's callbacks around a fit: NaN stop, epoch timer, signals, validation scoring,
    early stopping and the learning-rate schedule; with the validation data Keras scores
    itself (under a strategy), the early stopping and the timer."""
    timer = EpochTimer()
    own: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), timer, StopOnSignal()]
    validation = None
    if data.info.validation_size and strategy:  # score's traced step runs outside the replicas
        validation = data.pipeline("validation", recipe.batch_size)
    elif data.info.validation_size:  # first: early stopping and the loggers read its metrics
        own.insert(0, Validation(*data.tensors("validation")))
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
    return own, validation, early_stopping, timer


def _scores(model: keras.Model, data: Dataset, recipe: Recipe, strategy: Any) -> dict:
    """A trained model's test loss and accuracy, which test examples it got right, and its
    accuracy on the training split with every unit on."""
    if strategy:
        test = model.evaluate(data.pipeline("test", recipe.batch_size), verbose=0, return_dict=True)
    else:
        test = score(model, *data.tensors("test"))
    y_train = data.arrays("train")[1]
    return {
        "test_loss": float(test["loss"]),
        "test_accuracy": float(test["accuracy"]),
        "train_accuracy": float(np.mean(_predicted_classes(model, data, "train") == y_train)),
        "test_correct": _predicted_classes(model, data, "test") == data.arrays("test")[1],
    }


@_retracing_expected
def fit_pack(
    recipes: Sequence[Recipe],
    data: Dataset | Sequence[Dataset],
    seeds: Sequence[int],
    *,
    on_epoch: Callable[[int, dict[str, float], int], None] | None = None,
    models: Sequence[bool] | None = None,
    compile_update: bool | None = None,
    checkpoint: Any = None,
) -> list[TrainResult | TrainingDiverged]:
    """Trains members, a (recipe, seed) each, together in one pack (see `dlkit.nn.pack`).

    The recipes must share a network shape (`pack_shape`); they may differ
    in activation (maxout aside), initializer, learning rate and its decay,
    weight decay, dropout rates, max-norm and when they stop. A member's
    figures do not depend on the pack it trained in, beyond float rounding.
    Its `wall_time` and `samples_per_second` are its share of the pack's: the
    pack's time divided among its members.

    Args:
        recipes: One per member.
        data: A `Dataset` from `load_dataset`, or one per member: each seed's
            random split of one pool (`DataSpec(split="random").load(seed)`).
        seeds: One per member.
        on_epoch: Called after every epoch with (member index, the epoch's
            metrics, the 1-based epoch). Defaults to `None`.
        models: Whether each member's result holds its trained Keras model;
            one that does not (a tuning sweep's) has `model=None`, and its
            pack builds no model for it. Defaults to every member.
        compile_update: Compile the optimizer's update with XLA, or not; `None`
            leaves it to the pack's rule (`COMPILE_UPDATE_AT`). Defaults to `None`.
        checkpoint: Where the pack's state is kept between epochs, to continue after an
            interrupt (see `dlkit.nn.pack_training.train_pack`). Defaults to `None`: not kept.

    Returns:
        For each member in order, its `TrainResult`, or the `TrainingDiverged`
        error that ended it (the others train on).
    """
    info = per_member(data, len(recipes))[0].info  # the sizes: every member's alike
    recipes = [_trainable(recipe, info) for recipe in recipes]
    try:
        members, wall_time, seconds = train_pack(
            recipes,
            seeds,
            data,
            on_epoch=on_epoch,
            models=models,
            compile_update=compile_update,
            checkpoint=checkpoint,
        )
    except signals.Interrupted as interrupt:
        # The members done before it are results: `results` maps their index to theirs.
        wall_time, seconds = getattr(interrupt, "timing", (0.0, []))
        done = getattr(interrupt, "finished", {})
        interrupt.results = {
            k: _result(recipes[k], info, seeds[k], member, wall_time, seconds, len(recipes))
            for k, member in done.items()
        }
        raise
    return [
        _result(recipe, info, seed, member, wall_time, seconds, len(members))
        for recipe, seed, member in zip(recipes, seeds, members)
    ]


def _result(recipe, info, seed, member, wall_time, seconds, size):
    """A member's `TrainResult` (its share of the pack's time), or why it diverged."""
    if member.diverged_at:
        return diverged(recipe, member.diverged_at)
    timed = seconds[1:] or seconds  # the first epoch includes tracing
    return member_result(recipe, info, seed, member, wall_time / size, timed, size)


def _fit_seeds(recipe, data, seeds, options, *, on_epoch=None) -> list[TrainResult]:
    if options.callbacks or not options.one_device:
        raise DlkitError(
            "fit with seeds trains them together in one pack, which takes no Keras callbacks "
            "and one device. Call fit once per seed for those."
        )
    results = fit_pack([recipe] * len(seeds), data, list(seeds), on_epoch=on_epoch)
    for result in results:
        if isinstance(result, TrainingDiverged):
            raise result
    return results


class EpochLines:
    """An `on_epoch` for a pack of one that prints a line per epoch, as Keras's `fit` does
    at `verbose=2`: the epoch, its seconds and its metrics."""

    def __init__(self, epochs: int, print_line: Callable[[str], None] = print):
        self.epochs = epochs
        self.print_line = print_line
        self._since = time.perf_counter()

    def __call__(self, k: int, logs: dict[str, float], epoch: int) -> None:
        now = time.perf_counter()
        metrics = " - ".join(f"{key}: {value:.4f}" for key, value in sorted(logs.items()))
        self.print_line(f"Epoch {epoch}/{self.epochs} - {now - self._since:.2f}s - {metrics}")
        self._since = now


def _trainable(recipe: Recipe, info: DatasetInfo) -> Recipe:
    """Returns the recipe with its precision resolved, once it is known to fit the data."""
    if recipe.early_stopping and recipe.monitor.startswith("val_") and not info.validation_size:
        raise DlkitError(
            f"Early stopping monitors {recipe.monitor!r} but the dataset has no validation "
            "split. Set validation_split above 0 or monitor 'loss'."
        )
    recipe.check_size(*info.dims)
    return recipe.resolved()


def _predicted_classes(
    model: keras.Model, data: Dataset, split: str, chunk: int = 8192
) -> np.ndarray:
    # Plain eager calls in large chunks: `model.predict` would trace one more
    # graph per model, which costs more than these few forward passes.
    x = data.arrays(split)[0]
    return np.concatenate(
        [
            np.asarray(model(x[i : i + chunk], training=False)).argmax(axis=1)
            for i in range(0, len(x), chunk)
        ]
    )


def _step_decay(recipe: Recipe):
    def schedule(epoch: int, lr: float) -> float:
        return recipe.learning_rate_at(epoch)

    return schedule
