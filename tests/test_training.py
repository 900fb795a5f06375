"""Training: seeded reproducibility, early stopping facts, decay, divergence."""

from __future__ import annotations

import math
import os
import platform
import signal
import subprocess
import sys
import time
import weakref

import keras
import numpy as np
import pytest

from dlkit import DlkitError, Recipe, signals
from dlkit.data.dataset import load_dataset
from dlkit.nn.results import TrainingDiverged
from dlkit.nn.training import fit

SMALL = Recipe(depth=2, width=32, epochs=3, batch_size=64)


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="dlkit sets it on x86 only"
)
@pytest.mark.integration  # a real process or server, or a benchmark
def test_tensorflow_runs_its_onednn_kernels_unless_the_user_turned_them_off():
    # TensorFlow turns them on by itself only on CPUs with AVX512-VNNI or newer; dlkit asks for
    # them on every CPU (docs/speed.md). A private reach, as TensorFlow's own tests make it.
    code = (
        "import dlkit, tensorflow\n"
        "from tensorflow.python.util import _pywrap_util_port\n"
        "print(_pywrap_util_port.IsMklEnabled())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}

    def enabled(**extra: str) -> str:
        run = [sys.executable, "-c", code]
        done = subprocess.run(run, env={**env, **extra}, capture_output=True, text=True, check=True)
        return done.stdout.split()[-1]

    assert enabled() == "True"
    assert enabled(TF_ENABLE_ONEDNN_OPTS="0") == "False"


def test_same_seed_same_result_other_seed_differs(digits):
    a = fit(SMALL, digits, seed=1, verbose=0)
    b = fit(SMALL, digits, seed=1, verbose=0)
    c = fit(SMALL, digits, seed=2, verbose=0)
    assert a.history["loss"] == b.history["loss"]
    assert a.test_accuracy == b.test_accuracy
    assert a.history["loss"] != c.history["loss"]


def test_result_reports_what_happened(digits):
    result = fit(SMALL, digits, seed=0, verbose=0)
    assert result.epochs_run == 3 and result.stopped_epoch is None
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert result.params == SMALL.param_count(64, 10)
    assert result.samples_per_second > 0 and result.wall_time > 0
    assert result.device in ("CPU", "GPU")
    assert 1 <= result.best_epoch <= 3
    metrics = result.summary_metrics()
    assert metrics["test_accuracy"] == result.test_accuracy
    # the last epoch's values are the last points of the per-epoch metrics, not metrics of their own
    assert not [key for key in metrics if key.startswith("final_")]
    # what a tuning sweep chooses by: the kept weights' validation accuracy, here the last epoch's
    assert metrics["kept_val_accuracy"] == result.history["val_accuracy"][-1]


def test_train_accuracy_is_measured_after_training_with_every_unit_on(digits):
    import numpy as np

    result = fit(SMALL.replace(dropout=0.5, input_dropout=0.5), digits, seed=0, verbose=0)
    x, y = digits.arrays("train")
    clean = float(np.mean(np.argmax(result.model(x, training=False), axis=1) == y))
    assert result.train_accuracy == pytest.approx(clean)
    assert result.summary_metrics()["train_accuracy"] == result.train_accuracy
    # Keras's running accuracy, with half the units dropped, is another (lower) figure
    assert result.history["accuracy"][-1] < result.train_accuracy


def test_a_reused_model_trains_exactly_as_a_new_one_from_the_same_seed(digits):
    # dropout's random state, a learning-rate schedule, Adam's moments, early stopping:
    # everything a second seed of a variant must start over from
    recipe = SMALL.replace(dropout=0.3, input_dropout=0.1, lr_decay_epochs=1, early_stopping=True)
    from dlkit.nn.traced import TRACED

    new = fit(recipe, digits, seed=1, verbose=0, keras_loop=True)
    first = fit(recipe, digits, seed=0, verbose=0, reuse=True)
    first_weights = [w.numpy() for w in first.model.weights]
    kept = TRACED._entries[0][2]
    # Another load of the same data holds the same examples: the traced model serves it.
    again = fit(recipe, digits.copy(), seed=1, verbose=0, reuse=True)
    assert TRACED._entries[0][2] is kept  # traced once
    assert again.history == new.history and again.history != first.history
    assert again.test_accuracy == new.test_accuracy
    assert again.train_accuracy == new.train_accuracy
    # Each caller's model is its own: the second training changed nothing of the first's.
    assert again.model is not first.model and kept not in (first.model, again.model)
    for before, now in zip(first_weights, first.model.weights, strict=True):
        np.testing.assert_array_equal(before, now.numpy())
    assert again.model.evaluate(*digits.tensors("test"), verbose=0, return_dict=True)[
        "accuracy"
    ] == pytest.approx(again.test_accuracy, abs=1e-6)
    fit(recipe.replace(width=16), digits, seed=1, verbose=0, reuse=True)  # another net
    assert TRACED._entries[0][2] is not kept


def test_an_epoch_in_one_call_trains_on_the_same_batches_as_epoch_by_epoch(digits):
    # 1,294 training examples at batch 64 are 21 steps: by default one call per epoch
    # from one endless pipeline; one step per call reads a new iterator every epoch
    recipe = SMALL.replace(dropout=0.2)
    one_call = fit(recipe, digits, seed=4, verbose=0, keras_loop=True)
    stepwise = fit(recipe, digits, seed=4, verbose=0, steps_per_execution=1)
    assert one_call.history["loss"] == stepwise.history["loss"]
    assert one_call.history["accuracy"] == stepwise.history["accuracy"]
    assert one_call.test_accuracy == stepwise.test_accuracy


def test_validation_and_test_scores_are_what_keras_evaluate_gives(digits, monkeypatch):
    # the weight penalty is part of Keras's loss, on every split; in chunks of 50 examples
    # (144 validation and 359 test examples), each chunk weighs what it holds
    monkeypatch.setattr("dlkit.nn.callbacks.SCORE_CHUNK", 50)
    result = fit(SMALL.replace(weight_decay=1e-3), digits, seed=0, verbose=0)
    for split, loss, accuracy in [
        ("validation", result.history["val_loss"][-1], result.history["val_accuracy"][-1]),
        ("test", result.test_loss, result.test_accuracy),
    ]:
        keras_says = result.model.evaluate(digits.pipeline(split, 64), verbose=0, return_dict=True)
        assert loss == pytest.approx(keras_says["loss"], rel=1e-5)
        assert accuracy == pytest.approx(keras_says["accuracy"], abs=1e-7)


def test_early_stopping_stops_and_reports_its_epochs(digits):
    # patience 0 on a tiny net: the first epoch without improvement stops it
    recipe = SMALL.replace(
        epochs=60, early_stopping=True, patience=0, monitor="val_accuracy", learning_rate=0.01
    )
    result = fit(recipe, digits, seed=0, verbose=0)
    assert result.epochs_run < 60
    assert result.stopped_epoch == result.epochs_run
    best = max(range(result.epochs_run), key=lambda i: result.history["val_accuracy"][i]) + 1
    assert result.best_epoch == best
    # weights restored to the best epoch: a tuning sweep scores those, not the last epoch's
    assert result.recipe.restore_best_weights
    assert result.kept_val_accuracy == max(result.history["val_accuracy"])


def test_early_stopping_needs_a_validation_split():
    data = load_dataset("digits", validation_split=0.0, train_size=100)
    with pytest.raises(DlkitError, match="no validation split"):
        fit(SMALL.replace(early_stopping=True), data, verbose=0)


def test_step_decay_lowers_the_learning_rate_every_n_epochs(digits):
    recipe = SMALL.replace(
        epochs=4, lr_decay=0.5, lr_decay_epochs=2, learning_rate=0.01, optimizer="sgd"
    )
    result = fit(recipe, digits, seed=0, verbose=0)
    assert result.history["learning_rate"] == pytest.approx([0.01, 0.01, 0.005, 0.005])


def test_nan_loss_raises_a_clear_error(digits):
    recipe = SMALL.replace(
        optimizer="sgd", learning_rate=1e12, normalization="none", initializer="large_normal"
    )
    with pytest.raises(TrainingDiverged, match="diverged.*Lower learning_rate"):
        fit(recipe, digits, seed=0, verbose=0)


def test_mse_and_crossentropy_both_train(digits):
    for loss in ("mse", "crossentropy"):
        result = fit(SMALL.replace(loss=loss), digits, seed=0, verbose=0)
        assert math.isfinite(result.test_loss)


def test_an_interrupt_whose_exception_was_swallowed_still_stops_training(digits):
    with signals.handled():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # never elapses: the handler raises in here
        except KeyboardInterrupt:
            pass  # lost, as inside a garbage-collection callback
        with pytest.raises(KeyboardInterrupt):
            fit(SMALL, digits, seed=0, verbose=0)


class _SignalsWhenCollected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(100))  # Python runs the handler here, inside the finalizer


class _DropsOne(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        _SignalsWhenCollected()  # collected at once: its finalizer sends the signal


def test_a_signal_inside_a_finalizer_stops_a_fit_without_a_printed_traceback(digits, monkeypatch):
    # Raised inside a finalizer (TensorFlow's own run at any time), an interrupt is printed
    # as "Exception ignored" (Python's unraisable hook) and lost; fit holds it and raises it
    # at the next step's end.
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(signals.Interrupted), signals.handled(signal.SIGINT):
        fit(SMALL.replace(epochs=50), digits, verbose=0, callbacks=[_DropsOne()])
    assert not unraisable, [u.exc_value for u in unraisable]


def test_a_signal_inside_a_finalizer_outside_a_training_is_raised_after_it(monkeypatch):
    # Not held by any training or store call: raised in the finalizer, Python would print
    # it and drop it; it is sent again and raised once the finalizer has run.
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(signals.Interrupted), signals.handled(signal.SIGINT):
        _SignalsWhenCollected()
        time.sleep(5)  # never elapses: the signal comes again in here
    assert not unraisable, [u.exc_value for u in unraisable]


class _Collected:
    pass


def _signals_when_called(_reference) -> None:
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(100))  # Python runs the handler here, inside the weak reference's callback


def test_a_signal_inside_a_weak_reference_callback_is_raised_after_it(monkeypatch):
    # A weak reference's callback (WeakKeyDictionary's, TensorFlow's) has no `__del__`
    # frame to tell it by; Python prints what it raises and drops it, as a finalizer's.
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(signals.Interrupted), signals.handled(signal.SIGINT):
        collected = _Collected()
        reference = weakref.ref(collected, _signals_when_called)
        del collected  # the callback runs here
        time.sleep(5)  # never elapses: the signal comes again in here
    assert reference() is None
    assert not unraisable, [u.exc_value for u in unraisable]


def test_the_traced_models_can_be_forgotten(digits):
    from dlkit.nn import traced

    fit(SMALL.replace(epochs=1), digits, verbose=0, reuse=True)
    assert traced.TRACED._entries
    traced.forget_traced_models()
    assert not traced.TRACED._entries


def test_tensorflow_s_retracing_warning_is_dropped_only_while_dlkit_trains(digits):
    import tensorflow as tf

    from dlkit.nn.training import _ExpectedRetracing

    def quieted() -> bool:
        return any(isinstance(f, _ExpectedRetracing) for f in tf.get_logger().filters)

    during = []
    probe = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: during.append(quieted()))
    assert not quieted()  # importing dlkit leaves a program's own TensorFlow logs alone
    fit(SMALL.replace(epochs=1), digits, verbose=0, callbacks=[probe])
    assert during == [True] and not quieted()


def test_a_library_caller_keeps_its_own_sigint_handler_outside_dlkit_s_training(digits):
    # A notebook or script calling dlkit: dlkit holds Ctrl-C only while it trains or writes.
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    during = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda *_: during.append(signal.getsignal(signal.SIGINT))
    )
    fit(SMALL.replace(epochs=1), digits, verbose=0, callbacks=[probe])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    if before[0] is signal.default_int_handler:  # borrowed for the training, then given back
        assert during and during[0] is not signal.default_int_handler
