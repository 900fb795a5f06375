"""Packed training: each member of a pack trains as the same (recipe, seed) trains alone."""

from __future__ import annotations

import os
import signal
import sys

import keras
import numpy as np
import pytest

from dlkit import DlkitError, Recipe, signals
from dlkit.nn import pack as packing
from dlkit.nn.models import build_model
from dlkit.nn.pack import Pack
from dlkit.nn.pack_training import train_pack
from dlkit.nn.results import TrainingDiverged
from dlkit.nn.training import fit, fit_pack

SMALL = Recipe(name="small", depth=2, width=32, epochs=1, batch_size=32, learning_rate=0.01)
# A member among others against the same member alone: float rounding only. How much depends
# on the CPU: where TensorFlow's batched matmul sums in another order for another number of
# members (AVX2 without AVX-512: up to 2.3e-5 after two epochs; 1e-6 with AVX-512), the
# difference grows over the steps. A wrong mask, data order or initial weight is off by 1e-2.
PACK_SIZE_ROUNDING = 1e-4


def weights(model: keras.Model) -> list[np.ndarray]:
    return [w.numpy() for layer in model.layers for w in layer.weights]


def assert_same_weights(a: keras.Model, b: keras.Model, atol: float) -> None:
    for x, y in zip(weights(a), weights(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize("initializer", ["glorot_uniform", "he_normal"])
def test_members_start_from_the_weights_their_seed_gives_alone(digits, initializer):
    recipe = SMALL.replace(initializer=initializer)
    pack = Pack([recipe] * 3, [4, 5, 6], digits)
    for k, seed in enumerate([4, 5, 6]):
        keras.utils.set_random_seed(seed)  # as fit seeds a training alone
        own = build_model(recipe, digits.info.input_shape, digits.info.num_classes)
        kernels = [layer.kernel.numpy() for layer in own.layers if hasattr(layer, "kernel")]
        for stacked, kernel in zip(pack.kernels, kernels, strict=True):
            np.testing.assert_array_equal(stacked.numpy()[k], kernel)


def test_members_of_one_seed_that_differ_after_the_draw_start_as_each_alone(digits):
    # A sweep's members: one seed, other learning rates, penalties and dropout rates. The
    # pack builds their shared start once; each must still start where it would alone.
    recipes = [
        SMALL,
        SMALL.replace(learning_rate=0.3, weight_decay=1e-3, max_norm=2.0, epochs=4),
        SMALL.replace(dropout=0.2),
        SMALL.replace(dropout=0.5, input_dropout=0.1),
    ]
    pack = Pack(recipes, [7] * len(recipes), digits)
    for k, recipe in enumerate(recipes):
        keras.utils.set_random_seed(7)
        own = build_model(recipe, digits.info.input_shape, digits.info.num_classes)
        kernels = [layer.kernel.numpy() for layer in own.layers if hasattr(layer, "kernel")]
        for stacked, kernel in zip(pack.kernels, kernels, strict=True):
            np.testing.assert_array_equal(stacked.numpy()[k], kernel)


def test_a_member_asked_for_no_model_gets_none_and_the_same_scores(digits):
    with_model, without = fit_pack([SMALL, SMALL], digits, [3, 3], models=[True, False])
    assert without.model is None and with_model.model is not None
    assert without.test_accuracy == with_model.test_accuracy
    for key, values in with_model.history.items():
        np.testing.assert_allclose(without.history[key], values, rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "rmsprop", "nadam", "adagrad"])
def test_a_member_trains_one_epoch_as_its_seed_alone(digits, optimizer):
    recipe = SMALL.replace(optimizer=optimizer)
    alone = fit(recipe, digits, seed=1, verbose=0, keras_loop=True)
    # Beside a member with another learning rate, and one with another seed.
    members = fit_pack([recipe.replace(learning_rate=0.003), recipe, recipe], digits, [1, 1, 2])
    packed = members[1]
    assert_same_weights(alone.model, packed.model, atol=2e-5)
    for key, values in alone.history.items():
        np.testing.assert_allclose(packed.history[key], values, rtol=1e-4)
    assert packed.test_accuracy == pytest.approx(alone.test_accuracy, abs=1e-6)
    assert not np.allclose(weights(members[0].model)[0], weights(packed.model)[0])


def test_members_of_other_activations_and_initializers_train_as_each_alone(digits):
    # ReLU beside sigmoid beside tanh, each drawn by its own initializer: one pack.
    recipes = [
        SMALL.replace(initializer="he_normal"),
        SMALL.replace(activation="sigmoid", learning_rate=0.1),
        SMALL.replace(activation="tanh", initializer="glorot_normal", epochs=2),
    ]
    seeds = [1, 1, 2]
    members = fit_pack(recipes, digits, seeds)
    for recipe, seed, packed in zip(recipes, seeds, members, strict=True):
        own = fit_pack([recipe], digits, [seed])[0]  # its pack-mates change nothing
        assert_same_weights(own.model, packed.model, atol=PACK_SIZE_ROUNDING)
        alone = fit(recipe, digits, seed=seed, verbose=0, keras_loop=True)
        # Keras's own loop rounds otherwise: sigmoid at Adam's 0.1 drifts most (5e-5).
        assert_same_weights(alone.model, packed.model, atol=2e-4)
        np.testing.assert_allclose(packed.history["loss"], alone.history["loss"], rtol=1e-4)
        assert packed.test_accuracy == pytest.approx(alone.test_accuracy, abs=0.01)


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "rmsprop"])
def test_an_update_compiled_with_xla_trains_as_keras_alone(digits, optimizer):
    recipe = SMALL.replace(optimizer=optimizer, max_norm=2.0)
    alone = fit(recipe, digits, seed=1, verbose=0, keras_loop=True)
    members, _, _ = train_pack(
        [recipe.replace(learning_rate=0.003), recipe], [1, 1], digits, compile_update=True
    )
    assert_same_weights(alone.model, members[1].model, atol=2e-5)
    np.testing.assert_allclose(members[1].history["loss"], alone.history["loss"], rtol=1e-4)


def test_a_pack_compiles_its_update_only_where_that_pays(digits):
    assert not Pack([SMALL] * 2, [0, 1], digits).compiled_update  # the quickstart's kind
    large = SMALL.replace(width=512, epochs=100)  # 0.3M weights a member, 3,000+ steps
    assert Pack([large] * 2, [0, 1], digits).compiled_update


def test_per_member_decay_penalty_and_max_norm_act_as_alone(digits):
    recipe = SMALL.replace(
        optimizer="sgd",
        learning_rate=0.1,
        epochs=3,
        lr_decay_epochs=1,
        lr_decay=0.5,
        weight_decay=1e-3,
        max_norm=1.0,
    )
    alone = fit(recipe, digits, seed=0, verbose=0, keras_loop=True)
    other = recipe.replace(learning_rate=0.05, weight_decay=0.0, max_norm=0.0, lr_decay_epochs=0)
    packed = fit_pack([other, recipe], digits, [0, 0])[1]
    assert_same_weights(alone.model, packed.model, atol=2e-5)
    np.testing.assert_allclose(packed.history["learning_rate"], [0.1, 0.05, 0.025])
    np.testing.assert_allclose(packed.history["val_loss"], alone.history["val_loss"], rtol=1e-4)


def test_a_member_does_not_depend_on_the_pack_it_trains_in(digits):
    # Dropout masks, maxout and data order are the member's own: alone or among others.
    recipe = SMALL.replace(activation="maxout", dropout=0.3, input_dropout=0.1, epochs=2)
    alone = fit_pack([recipe], digits, [3])[0]
    among = fit_pack([recipe.replace(dropout=0.5), recipe, recipe], digits, [0, 3, 5])
    assert_same_weights(alone.model, among[1].model, atol=PACK_SIZE_ROUNDING)
    assert alone.history["loss"] == pytest.approx(among[1].history["loss"], rel=1e-4)
    assert among[1].model is not alone.model


def test_a_short_training_scores_as_alone(digits):
    recipe = SMALL.replace(epochs=6, width=64)
    alone = [fit(recipe, digits, seed=seed, verbose=0, keras_loop=True) for seed in (0, 1)]
    packed = fit(recipe, digits, seeds=[0, 1])
    for a, b in zip(alone, packed, strict=True):
        assert abs(a.test_accuracy - b.test_accuracy) <= 0.01
        assert b.test_accuracy > 0.85
        assert np.mean(a.test_correct == b.test_correct) > 0.98
    assert packed[0].model is not packed[1].model


def test_a_single_training_is_a_pack_of_one(digits, capsys):
    recipe = SMALL.replace(epochs=2)
    single = fit(recipe, digits, seed=4)  # verbose, as dlkit train runs it
    [member] = fit_pack([recipe], digits, [4])
    assert_same_weights(single.model, member.model, atol=1e-6)
    assert single.history.keys() == member.history.keys()
    for key, values in member.history.items():
        np.testing.assert_allclose(single.history[key], values, rtol=1e-6)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    assert "val_accuracy: " in lines[-1] and "loss: " in lines[-1]
    # Keras's loop where a pack cannot go: a Keras callback sees every epoch.
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    fit(recipe, digits, seed=4, verbose=0, callbacks=[callback])
    assert seen == [0, 1]


def test_a_single_training_tracked_is_one_run_of_a_pack_of_one(digits, tmp_path):
    from dlkit.execution.runs import train
    from dlkit.tracking.tracker import Tracker

    store = f"sqlite:///{tmp_path}/mlflow.db"
    result = train(SMALL, digits, seed=2, tracking_uri=store, experiment="one", verbose=0)
    run = Tracker(store, "one").client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "small/seed2"
    assert run.data.params["seed"] == "2"
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.test_accuracy)
    alone = fit(SMALL, digits, seed=2, verbose=0, keras_loop=True)
    assert result.test_accuracy == pytest.approx(alone.test_accuracy, abs=0.01)
    assert Tracker(store, "one").model_uri(result.run_id) is not None


def test_each_member_stops_early_on_its_own_and_keeps_its_best_weights(digits):
    # At a learning rate this training is stable at: at 0.05 Adam, rounding differences
    # (even between packs of one and two) grow into different trainings by epoch 4.
    stopping = SMALL.replace(epochs=30, early_stopping=True, patience=1, monitor="val_loss")
    alone = fit(stopping, digits, seed=0, verbose=0, keras_loop=True)
    assert alone.stopped_epoch is not None  # the set-up stops early
    steady = stopping.replace(early_stopping=False, epochs=8)
    packed, steady_result = fit_pack([stopping, steady], digits, [0, 0])
    assert packed.stopped_epoch == alone.stopped_epoch
    assert packed.epochs_run == alone.epochs_run
    assert packed.best_epoch == alone.best_epoch
    assert_same_weights(alone.model, packed.model, atol=1e-4)  # restored to the best epoch
    assert steady_result.epochs_run == 8 and steady_result.stopped_epoch is None


def test_a_member_that_diverges_fails_alone_and_the_others_train_on(digits):
    recipe = SMALL.replace(optimizer="sgd", epochs=3, normalization="none")
    diverging, healthy = fit_pack([recipe.replace(learning_rate=1e6), recipe], digits, [0, 0])
    assert isinstance(diverging, TrainingDiverged)
    assert "diverged" in str(diverging) and "Lower learning_rate (now 1e+06)" in str(diverging)
    assert healthy.epochs_run == 3 and np.isfinite(healthy.history["loss"]).all()
    with pytest.raises(TrainingDiverged):
        fit(recipe.replace(learning_rate=1e6), digits, seeds=[0, 1])


def test_bfloat16_members_agree_with_float32_ones(digits):
    recipe = SMALL.replace(epochs=4, width=64)
    full = fit(recipe, digits, seeds=[0, 1])
    half = fit(recipe.replace(precision="mixed_bfloat16"), digits, seeds=[0, 1])
    for a, b in zip(full, half, strict=True):
        assert b.recipe.precision == "mixed_bfloat16"
        assert abs(a.test_accuracy - b.test_accuracy) <= 0.03


def test_recipes_of_another_shape_do_not_pack(digits):
    with pytest.raises(DlkitError, match="cannot train in one pack"):
        train_pack([SMALL, SMALL.replace(width=64)], [0, 0], digits)
    with pytest.raises(DlkitError, match="one seed per recipe"):
        train_pack([SMALL], [0, 1], digits)
    with pytest.raises(DlkitError, match="mixed_float16"):
        train_pack([SMALL.replace(precision="mixed_float16")], [0], digits)
    with pytest.raises(DlkitError, match="no Keras callbacks"):
        fit(SMALL, digits, seeds=[0, 1], callbacks=[keras.callbacks.History()])


def test_scores_in_chunks_equal_keras_evaluate_of_each_unpacked_model(digits, monkeypatch):
    from dlkit.nn import pack

    monkeypatch.setattr(pack, "SCORE_CHUNK", 100)  # 3 members: chunks of 33 examples
    members = fit_pack([SMALL.replace(weight_decay=1e-3)] * 3, digits, [0, 1, 2])
    x, y = digits.tensors("test")
    for member in members:
        loss, accuracy = member.model.evaluate(x, y, verbose=0, batch_size=64)
        assert member.test_loss == pytest.approx(loss, rel=1e-5)  # the weight penalty too
        assert member.test_accuracy == pytest.approx(accuracy, abs=1e-6)


def test_each_unpacked_model_is_its_own_and_holds_its_members_weights(digits):
    # Members 0 and 1 share their start (one seed, other rates); member 2 was built alone.
    recipes = [SMALL, SMALL.replace(learning_rate=0.1), SMALL]
    pack = Pack(recipes, [3, 3, 4], digits)
    models = [pack.unpack(k) for k in (0, 1, 2, 2)]
    assert len({id(model) for model in models}) == 4  # no caller holds another's model
    assert not {id(model) for model in models} & {id(model) for model in pack.initial[:2]}
    for k, model in zip((0, 1, 2, 2), models):
        stacked = [v.numpy()[k].reshape(-1) for v in pack.variables]
        for mine, theirs in zip(weights(model), stacked, strict=True):
            np.testing.assert_array_equal(mine.reshape(-1), theirs)
    models[2].layers[-1].bias.assign(np.ones(10))  # one caller's change reaches no other
    assert not np.array_equal(models[3].layers[-1].bias.numpy(), np.ones(10))


class _SignalsWhenCollected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(100))  # Python runs the handler here, inside the finalizer


def test_a_signal_inside_a_finalizer_while_tensorflow_traces_stops_the_pack_cleanly(
    digits, monkeypatch
):
    # Raised inside a finalizer (TensorFlow's own run at any time), an interrupt would be
    # printed as "Exception ignored" and lost, and the pack would train on to its end.
    real, sent = packing._activation, []

    def activation(layer, z):  # called while the pack's first epoch is traced
        if not sent:
            sent.append(_SignalsWhenCollected())
            sent.clear()  # collected here: its finalizer sends the signal
            sent.append(True)
        return real(layer, z)

    monkeypatch.setattr(packing, "_activation", activation)
    unraisable: list = []  # what Python would print as "Exception ignored"
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(signals.Interrupted), signals.handled(signal.SIGINT):
        train_pack([SMALL.replace(epochs=50)] * 2, [0, 1], digits)
    assert sent and not unraisable, [u.exc_value for u in unraisable]


def test_members_on_their_own_random_splits_train_as_each_on_its_split_alone():
    # Under a random split each seed reads its own partition: the pack holds the pooled
    # examples once and each member gathers (and is scored on) its own.
    from dlkit.data.dataset import DataSpec

    spec = DataSpec("digits", train_size=300, split="random")
    splits = [spec.load(seed) for seed in (0, 4, 9)]
    recipe = SMALL.replace(dropout=0.2, epochs=2, normalization="scale")
    among = fit_pack([recipe] * 3, splits, [0, 4, 9])
    for k, (split, seed) in enumerate(zip(splits, (0, 4, 9))):
        alone = fit_pack([recipe], split, [seed])[0]
        assert_same_weights(alone.model, among[k].model, atol=PACK_SIZE_ROUNDING)
        assert alone.test_accuracy == pytest.approx(among[k].test_accuracy, abs=1 / 359)
        assert np.mean(alone.test_correct == among[k].test_correct) > 0.99
        keras_says = alone.model.evaluate(*split.tensors("test"), verbose=0)[1]
        assert alone.test_accuracy == pytest.approx(keras_says, abs=1.5 / 359)  # its own split
    # another split is another result: a member did not read the first one's examples
    assert not np.array_equal(among[0].test_correct, among[1].test_correct)


def test_a_pack_refuses_datasets_that_share_no_pool(digits):
    from dlkit.data.dataset import DataSpec

    with pytest.raises(DlkitError, match="random splits of one pool"):
        fit_pack([SMALL, SMALL], [digits, DataSpec("digits", split="random").load(1)], [0, 1])
