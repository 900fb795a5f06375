"""Packed training: members of one network shape trained together in one TensorFlow graph.

A member is a (recipe, seed). Members whose recipes share a shape (`pack_shape`)
train as one pack: each kernel is stacked into one variable of shape
`[K, in, out]`, each layer is one batched matmul, and one traced call trains
an epoch of every member. Each member still trains as it would alone:

- its initial weights are those `build_model` gives under its seed (each
  member's own Keras model is built and its weights stacked, so the fans, and
  so the Glorot/He limits, are the member's own, not those of a 3-D kernel,
  and so is its initializer);
- its units take its own activation: members of another (sigmoid beside
  ReLU) take theirs, chosen element by element;
- each epoch it reads the training split in the order its seed gives alone
  (`Dataset.epoch_orders`), and its dropout masks come from its own seed;
- under a random split (`DataSpec(split="random")`) each member reads its own
  seed's partition: the pack holds the pooled examples once, and each member
  gathers its batches, and is scored, through its own index sets;
- its gradient is that of its own loss: the pack minimises the sum of the
  members' losses, and member k's weights appear in member k's loss only;
- Keras's optimizers update element by element, so each member has its own
  slice of every optimizer slot, and its own learning rate (and decay),
  weight decay, dropout rates and max-norm;
- it stops on its own (its epochs, early stopping, a loss that turns NaN):
  its learning rate and optimizer slots are zeroed so its weights change no
  more, and the pack ends when every member has stopped.

Then each member is unpacked into its own `keras.Sequential` from
`build_model`: what a caller holds never depends on the pack it trained in.

The rest of packing, one layer each: which recipes pack together (`pack_shape`, `packable`,
`trains_alone` in `dlkit.recipes.packing`), its epochs (`dlkit.nn.pack_training`), how a
comparison groups its children into packs and sizes them (`dlkit.execution.packs`), each
member as its own MLflow run (`dlkit.execution.pack_runs`), and what packs buy
(`dlkit.bench.packs`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from dlkit.data.dataset import Dataset
from dlkit.errors import DlkitError
from dlkit.nn import callbacks
from dlkit.nn.layers import Maxout
from dlkit.nn.models import build_for, compile_model, make_optimizer
from dlkit.recipes.packing import PER_MEMBER, PER_MEMBER_DEFAULTS, pack_shape, packable
from dlkit.recipes.recipe import Recipe

SCORE_CHUNK = callbacks.SCORE_CHUNK  # here examples x members per traced call
# Keras's optimizers update a variable in about ten elementwise operations, each a pass over
# every member's copy of it; compiled with XLA they fuse into one. On its own an Adam update
# of 784-500-500-10 at 4 members took 11 ms, compiled 4 ms (about 3 ns per weight and step);
# in a whole bfloat16 MNIST pack it raised the members' throughput by 10% at 4 members and
# 28% at 16. Compiling costs 0.4-1 s per pack, which a small pack (the quickstart's) never
# earns back, so a pack compiles its update when its weights x steps reach this.
COMPILE_UPDATE_AT = 4e8
_WEIGHTED = (keras.layers.Dense, Maxout)


@dataclasses.dataclass
class Member:
    """What a pack made of one member.

    Attributes:
        history: Per-epoch values, as Keras's `fit` reports them.
        model: The member's own trained `keras.Sequential`, compiled; `None` when
            `train_pack` was told it needs none.
        stopped_epoch: 1-based epoch at which early stopping ended it, or `None`.
        diverged_at: 1-based epoch whose loss was NaN or infinite, or `None`.
        test: Loss and accuracy on the test split.
        train_accuracy: Accuracy on the training split, every unit on.
        test_correct: Whether it classified each test example correctly.
    """

    history: dict[str, list[float]]
    model: keras.Sequential | None = None
    stopped_epoch: int | None = None
    diverged_at: int | None = None
    test: dict[str, float] = dataclasses.field(default_factory=dict)
    train_accuracy: float = math.nan
    test_correct: np.ndarray | None = None


class Pack:
    """Members of one shape, their weights stacked along a first axis of size K.

    Args:
        recipes: One recipe per member, all of one `pack_shape`.
        seeds: One seed per member.
        data: The dataset every member trains on, or one per member: random
            splits of the same pooled examples (`Dataset.resplit`), whose input
            layers (scaling, standardizing) agree.
    """

    def __init__(
        self,
        recipes: Sequence[Recipe],
        seeds: Sequence[int],
        data: Dataset | Sequence[Dataset],
        *,
        compile_update: bool | None = None,
    ):
        _check_members(recipes, seeds)
        self.datas = per_member(data, len(recipes))
        data = self.datas[0]
        # Members on other examples than the first's: each reads the pool through its indices.
        self.pooled = any(not d.same_examples(data) for d in self.datas)
        if self.pooled and not all(data.same_pool(d) for d in self.datas):
            raise DlkitError(
                "A pack's members train on one dataset, or on random splits of one pool of "
                "examples (DataSpec(split='random').load(seed)); these are neither."
            )
        self.recipes = [recipe.resolved() for recipe in recipes]
        self.seeds = [int(seed) for seed in seeds]
        self.size = len(self.recipes)
        self.shape = pack_shape(self.recipes[0])
        self.data = data
        # Members that differ only in what acts after the weights are drawn (a sweep's
        # learning rates) start from one model's weights: each is built once.
        built: dict[tuple[Recipe, int], keras.Sequential] = {}
        keys = [(_drawn_alike(recipe), seed) for recipe, seed in zip(self.recipes, self.seeds)]
        for recipe, seed, key, own in zip(self.recipes, self.seeds, keys, self.datas):
            if key not in built:
                built[key] = _built(recipe, seed, own)
        self.initial = [built[key] for key in keys]
        # A member built alone is unpacked into that same model (see `unpack`).
        self._own = {k: self.initial[k] for k, key in enumerate(keys) if keys.count(key) == 1}
        # Each seed's data order, drawn once however many members share the seed (a sweep's).
        self._index = {}
        if self.pooled:  # each member's positions of each split in the pool: [K, n]
            self._index = {
                split: tf.constant(np.stack([d.pool_index[split] for d in self.datas]), tf.int64)
                for split in ("train", "validation", "test")
            }
        self._orders = self._epoch_orders()
        self._stack()
        self.inputs = self._inputs()
        # Every stacked variable has the members on its first axis and rank 3 (biases are
        # [K, 1, out]), so one learning rate per member, shaped [K, 1, 1], broadcasts against
        # each of them in the optimizer's elementwise update. Keras takes a callable rate.
        self.learning_rates = tf.Variable(self.rates(0)[:, None, None], trainable=False)
        self.optimizer = make_optimizer(self.shape, fused=False)
        self.optimizer.learning_rate = lambda: self.learning_rates
        self.optimizer.build(self.variables)
        if compile_update is None:
            compile_update = compiles_update(self.recipes, data)
        self.compiled_update = compile_update
        self._update = self._apply
        if compile_update:
            self._update = tf.function(self._apply, jit_compile=True, autograph=False)
        self._steps = 0
        # Written with TensorFlow's own control flow, so traced without AutoGraph: converting
        # this code and Keras's optimizer took a third of a pack's first epoch.
        self._train_epoch = tf.function(self._epoch, autograph=False)
        x, y = self.inputs["train"]
        own = [self.size] if self.pooled else []  # pooled: each member scores its own examples
        self._score_chunk = tf.function(  # traced once for every split and chunk
            self._score,
            input_signature=[
                tf.TensorSpec([*own, None, *x.shape[1:]]),
                tf.TensorSpec([*own, None, y.shape[1]]),
            ],
            autograph=False,
        )

    def _epoch_orders(self):
        """Each member's order of its training examples, epoch after epoch: `[K, n]` per
        epoch. Each seed's order is drawn once, however many members share the seed."""
        seeds = list(dict.fromkeys(self.seeds))
        orders = []
        for seed in seeds:
            keras.utils.set_random_seed(seed)  # tf.data's shuffle reads the global seed too
            orders.append(self.data.epoch_orders(seed))
        rows = tf.constant([seeds.index(seed) for seed in self.seeds])
        own = self._index.get("train")
        return iter(
            tf.data.Dataset.zip(tuple(orders)).map(
                lambda *o: _through(tf.gather(tf.stack(o), rows), own)
            )
        )

    def _inputs(self) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
        """Each split's examples through the input layers; pooled, the pool for every split
        (each member reads it through its own indices)."""
        splits = ("train", "validation", "test")
        if self.pooled:
            pool = self._prepared(self.data.pool_tensors())
            return {split: pool for split in splits}
        return {split: self._prepared(self.data.tensors(split)) for split in splits}

    def _stack(self) -> None:
        per_model = [[la for la in m.layers if isinstance(la, _WEIGHTED)] for m in self.initial]
        self.kernels = [_stacked([la.kernel for la in same]) for same in zip(*per_model)]
        self.biases = [_stacked([la.bias for la in same], rows=1) for same in zip(*per_model)]
        self.variables = [v for pair in zip(self.kernels, self.biases) for v in pair]
        self.layers = per_model[0]
        # Each hidden layer's activation per member: one for all, or each member's own.
        self.activations = [
            [getattr(la, "activation", None) for la in same] for same in zip(*per_model)
        ]

        def column(name: str) -> tf.Tensor:
            return tf.constant([float(getattr(r, name)) for r in self.recipes], tf.float32)

        self.weight_decay, self.max_norm = column("weight_decay"), column("max_norm")
        self.input_dropout, self.dropout = column("input_dropout"), column("dropout")
        self.dropping = any(r.dropout or r.input_dropout for r in self.recipes)
        self.decaying = any(r.weight_decay for r in self.recipes)
        self.constrained = any(r.max_norm for r in self.recipes)
        mixed = self.shape.precision == "mixed_bfloat16"
        self.compute_dtype = tf.bfloat16 if mixed else tf.float32

    def _prepared(self, tensors: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        # The input layers (flatten, scale, standardize) hold nothing that trains and are
        # the same for every member: each split goes through them once, here.
        x, y = tensors
        first = itertools.takewhile(
            lambda la: not isinstance(la, (*_WEIGHTED, keras.layers.Dropout)),
            self.initial[0].layers,
        )
        for layer in first:
            x = layer(x)
        return tf.cast(x, tf.float32), tf.cast(y, tf.float32)

    # The stacked network.

    def forward(self, x: tf.Tensor, *, step: tf.Tensor | None = None) -> tf.Tensor:
        """Returns the members' logits, `[K, batch, classes]`.

        Args:
            x: Each member's own batch, `[K, batch, in]`, or one batch for all, `[batch, in]`.
            step: The training step, for dropout masks; `None` scores (no dropout).
        """
        h = x
        last = len(self.layers) - 1
        for i, (layer, kernel, bias) in enumerate(zip(self.layers, self.kernels, self.biases)):
            if step is not None and self.dropping:
                h = self._dropout(h, self.input_dropout if i == 0 else self.dropout, step, i)
            dtype = tf.float32 if i == last else self.compute_dtype
            h, w = tf.cast(h, dtype), tf.cast(kernel.value, dtype)
            spec = "bi,kio->kbo" if h.shape.rank == 2 else "kbi,kio->kbo"
            z = tf.einsum(spec, h, w) + tf.cast(bias.value, dtype)
            if i == last:
                return z  # the logits of the softmax output
            h = self._activated(i, layer, z)
        raise AssertionError("every network has an output layer")

    def _activated(self, i: int, layer: keras.layers.Layer, z: tf.Tensor) -> tf.Tensor:
        # Members of other activations (relu and sigmoid, say) each take their own, chosen
        # element by element: what it gives and its gradient are exactly the member's own.
        functions = list(dict.fromkeys(self.activations[i]))
        if len(functions) == 1:
            return _activation(layer, z)
        h = None
        for function in functions:
            mine = tf.constant([f is function for f in self.activations[i]])[:, None, None]
            h = function(z) if h is None else tf.where(mine, function(z), h)
        return h

    def _dropout(self, h: tf.Tensor, rates: tf.Tensor, step: tf.Tensor, layer: int) -> tf.Tensor:
        # Keras's Dropout (scaled at training time), each member's mask from its own seed,
        # so that it does not depend on the pack.
        masked = []
        for k, seed in enumerate(self.seeds):
            mask_seed = tf.stack([tf.constant(seed, tf.int64), step * 64 + layer])
            rate = tf.cast(rates[k], h.dtype)
            masked.append(tf.nn.experimental.stateless_dropout(h[k], rate, mask_seed))
        return tf.stack(masked)

    def losses(self, logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Returns each member's mean loss on its batch, weight penalty included: `[K]`."""
        if self.shape.loss == "mse":
            per_example = tf.reduce_mean(tf.square(y - tf.nn.softmax(logits)), axis=-1)
        else:  # Keras takes the logits under a softmax output, as here
            per_example = tf.nn.softmax_cross_entropy_with_logits(y, logits)
        loss = tf.reduce_mean(per_example, axis=-1)
        if not self.decaying:  # as Keras, which adds no regularizer then: no pass over the weights
            return loss
        squares = [tf.reduce_sum(tf.square(k.value), axis=[1, 2]) for k in self.kernels]
        return loss + self.weight_decay * tf.add_n(squares)

    # Training.

    def train_epoch(self, epoch: int, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Trains every active member one epoch; returns each member's loss and accuracy."""
        self.learning_rates.assign((self.rates(epoch) * active)[:, None, None])
        orders = next(self._orders)
        loss, accuracy = self._train_epoch(orders, tf.constant(self._steps, tf.int64))
        self._steps += math.ceil(int(orders.shape[1]) / self.shape.batch_size)
        return loss.numpy(), accuracy.numpy()

    def _epoch(self, orders: tf.Tensor, first_step: tf.Tensor):
        x, y = self.inputs["train"]
        n, batch = tf.shape(orders)[1], self.shape.batch_size

        def step(s, loss_sum, correct):
            index = orders[:, s * batch : (s + 1) * batch]
            xb, yb = tf.gather(x, index), tf.gather(y, index)
            losses, logits = self._step(xb, yb, first_step + tf.cast(s, tf.int64))
            loss_sum += losses * tf.cast(tf.shape(index)[1], tf.float32)
            hits = tf.argmax(logits, -1) == tf.argmax(yb, -1)
            return s + 1, loss_sum, correct + tf.reduce_sum(tf.cast(hits, tf.float32), axis=1)

        steps = (n + batch - 1) // batch
        zeros = tf.zeros([self.size])
        _, loss_sum, correct = tf.while_loop(
            lambda s, *sums: s < steps, step, (tf.constant(0), zeros, zeros)
        )
        return loss_sum / tf.cast(n, tf.float32), correct / tf.cast(n, tf.float32)

    def _step(self, x: tf.Tensor, y: tf.Tensor, step: tf.Tensor):
        with tf.GradientTape() as tape:
            logits = self.forward(x, step=step)
            losses = self.losses(logits, y)
            total = tf.reduce_sum(losses)  # member k's weights are in member k's loss only
        self._update(tape.gradient(total, [v.value for v in self.variables]))
        if self.constrained:
            self._max_norm()
        return losses, logits

    def _apply(self, gradients: list[tf.Tensor]) -> None:
        self.optimizer.apply(gradients, self.variables)

    def _max_norm(self) -> None:
        # Keras's MaxNorm(axis=0) on each member's kernel: the weights into each unit.
        limit = self.max_norm[:, None, None]
        for kernel in self.kernels:
            norms = tf.sqrt(tf.reduce_sum(tf.square(kernel.value), axis=1, keepdims=True))
            desired = tf.where(limit > 0, tf.clip_by_value(norms, 0.0, limit), norms)
            kernel.assign(kernel.value * (desired / (keras.config.epsilon() + norms)))

    def rates(self, epoch: int) -> np.ndarray:
        """Each member's learning rate in `epoch` (0-based), after its step decay."""
        return np.array([r.learning_rate_at(epoch) for r in self.recipes], np.float32)

    def stop(self, members: Sequence[int]) -> None:
        """These members change no more: with their learning rates at 0 and their slots
        zeroed (a momentum would carry them on), their updates are zero."""
        keep = np.ones([self.size, 1, 1], bool)
        keep[list(members)] = False  # zeroed, not scaled: a diverged member's slots hold NaN
        for variable in self.optimizer.variables:
            if len(variable.shape) == 3:  # one assignment per slot for all of them
                variable.assign(tf.where(keep, variable.value, tf.zeros_like(variable.value)))

    # Checkpoints.

    def state(self) -> dict:
        """The pack's training state between epochs: its stacked weights, its optimizer's
        variables (each member's slots, and the step count) and its steps so far."""
        return {
            "variables": [v.value.numpy() for v in self.variables],
            "slots": [v.value.numpy() for v in self.optimizer.variables],
            "steps": self._steps,
        }

    def restore(self, state: dict, epochs: int) -> None:
        """Continues from `state`, taken after `epochs` epochs: the weights, the optimizer's
        variables and steps, and each member's data order at its next epoch."""
        pairs = [*zip(self.variables, state["variables"]), *zip(self.optimizer.variables,
                                                                state["slots"])]  # fmt: skip
        if len(pairs) != len(self.variables) + len(self.optimizer.variables) or any(
            tuple(v.shape) != np.shape(value) for v, value in pairs
        ):
            raise DlkitError("The checkpoint is of another pack's shape.")
        for variable, value in pairs:
            variable.assign(value)
        self._steps = int(state["steps"])
        for _ in range(epochs):  # the orders are drawn from the seeds: the next is as before
            next(self._orders)

    # Scores and weights.

    def _score(self, x: tf.Tensor, y: tf.Tensor):
        logits = self.forward(x)
        if y.shape.rank == 2:  # one batch for all members
            y = tf.broadcast_to(y[None], tf.shape(logits))
        return self.losses(logits, y), tf.argmax(logits, -1)

    def labels(self, split: str) -> np.ndarray:
        """Each member's labels of a split, `[K, n]` (one row for all when not pooled)."""
        if not self.pooled:
            return self.data.arrays(split)[1][None]
        return np.stack([d.arrays(split)[1] for d in self.datas])

    def score(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns each member's loss and accuracy on a split, and its predicted classes."""
        x, y = self.inputs[split]
        index = self._index.get(split)
        n = int(x.shape[0]) if index is None else int(index.shape[1])
        loss = np.zeros(self.size)
        predicted = []
        chunk = max(1, SCORE_CHUNK // self.size)  # each member's activations: the pack's memory
        for start in range(0, n, chunk):
            if index is None:
                xb, yb = x[start : start + chunk], y[start : start + chunk]
            else:  # each member's own examples of the split
                rows = index[:, start : start + chunk]
                xb, yb = tf.gather(x, rows), tf.gather(y, rows)
            losses, classes = self._score_chunk(xb, yb)
            loss += losses.numpy() * int(classes.shape[1])  # chunks weighted by their size
            predicted.append(classes.numpy())
        predicted = np.concatenate(predicted, axis=1)
        accuracy = (predicted == self.labels(split)).mean(axis=1)
        return loss / n, accuracy, predicted

    def weights(self, k: int) -> list[np.ndarray]:
        """Member k's weights, copied out of the pack."""
        return [v.value[k].numpy() for v in self.variables]

    def set_weights(self, k: int, weights: list[np.ndarray]) -> None:
        for variable, value in zip(self.variables, weights):
            _assign_member(variable, k, value)

    def unpack(self, k: int) -> keras.Sequential:
        """Puts member k's weights into its own Keras model, compiled; returns the model.

        The model is the one built under the member's seed to draw its initial weights
        (or, when members shared that one, or it was unpacked before, one built the same
        way anew): its every other variable (a dropout layer's seed) is as alone. Each call
        returns a model of its own."""
        model = self._own.pop(k, None) or _built(self.recipes[k], self.seeds[k], self.datas[k])
        for layer, kernel, bias in zip(
            [la for la in model.layers if isinstance(la, _WEIGHTED)], self.kernels, self.biases
        ):
            layer.kernel.assign(kernel.value[k])
            layer.bias.assign(bias.value[k, 0])
        return compile_model(model, self.recipes[k])


def per_member(data: Dataset | Sequence[Dataset], size: int) -> list[Dataset]:
    """One dataset per member: `data` itself for each, or its own when given a sequence."""
    if isinstance(data, Dataset):
        return [data] * size
    if len(data) != size:
        raise DlkitError(f"A pack of {size} members needs {size} datasets. Received {len(data)}.")
    return list(data)


def _through(orders: tf.Tensor, index: tf.Tensor | None) -> tf.Tensor:
    """Each member's epoch order as positions in what the pack gathers from: the order
    itself, or (pooled) the member's own training examples in that order."""
    return orders if index is None else tf.gather(index, orders, batch_dims=1)


def compiles_update(recipes: Sequence[Recipe], data: Dataset) -> bool:
    """Whether a pack of these members compiles its optimizer's update by default: when its
    weights x training steps, what compiling pays back on, reach `COMPILE_UPDATE_AT`."""
    weights = len(recipes) * recipes[0].param_count(*data.info.dims)
    steps = math.ceil(data.info.train_size / recipes[0].batch_size)
    return weights * steps * max(r.epochs for r in recipes) >= COMPILE_UPDATE_AT


def _built(recipe: Recipe, seed: int, data: Dataset) -> keras.Sequential:
    keras.utils.set_random_seed(seed)  # as `fit` seeds the weights
    return build_for(recipe, data)


# What a recipe's fields change of the weights `build_model` draws: fields that act in
# training only are set aside; a dropout layer draws a seed as it is made, whatever its rate.
_TRAINING_ONLY = {
    name: default
    for name, default in PER_MEMBER_DEFAULTS.items()
    if name not in ("dropout", "input_dropout", "initializer", "activation")
}


def _drawn_alike(recipe: Recipe) -> Recipe:
    """The recipe as far as its initial weights go: two recipes equal here, built under
    one seed, draw the same initial weights."""
    return recipe.replace(
        **_TRAINING_ONLY,
        dropout=0.5 if recipe.dropout else 0.0,
        input_dropout=0.5 if recipe.input_dropout else 0.0,
    )


def _stacked(variables: list, rows: int | None = None) -> keras.Variable:
    """One variable holding every member's copy of a weight, the members first; `rows`
    makes a vector a 1-row matrix."""
    values = [np.asarray(v.numpy()) for v in variables]
    if rows:
        values = [value.reshape(rows, -1) for value in values]
    return keras.Variable(np.stack(values))


def _activation(layer: keras.layers.Layer, z: tf.Tensor) -> tf.Tensor:
    if isinstance(layer, Maxout):  # as Maxout.call, per member
        shape = tf.shape(z)
        pieces = tf.reshape(z, [shape[0], shape[1], layer.units, layer.pieces])
        return tf.reduce_max(pieces, axis=-1)
    return layer.activation(z)


def _assign_member(variable, k: int, value) -> None:
    """Sets member k's slice of a stacked variable, copying no other member's."""
    row = variable.value[k]
    row.assign(tf.broadcast_to(tf.cast(value, row.dtype), row.shape))


def _check_members(recipes: Sequence[Recipe], seeds: Sequence[int]) -> None:
    if not recipes or len(recipes) != len(seeds):
        raise DlkitError(
            f"A pack needs one seed per recipe and at least one member. Received: "
            f"{len(recipes)} recipes and {len(seeds)} seeds."
        )
    unpackable = [r.name for r in recipes if not packable(r)]
    if unpackable:
        raise DlkitError(
            f"Recipes {unpackable} use mixed_float16, which needs a loss scale per training: "
            "they train alone (fit with one seed)."
        )
    if len({pack_shape(r) for r in recipes}) > 1:
        raise DlkitError(
            "These recipes differ in more than the fields a member may have of its own, so "
            f"they cannot train in one pack. Those fields: {', '.join(PER_MEMBER)}."
        )
