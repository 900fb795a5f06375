"""Datasets: a source's arrays split deterministically and served as tf.data pipelines.

Every source (see `dlkit.data.sources`) is read once into memory (these are
MNIST-sized sets), checked, split deterministically, and served by pipelines
that shuffle with the seed, batch and prefetch. The splits never depend on
the training seed, so every variant and seed of a comparison sees the same
examples.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import math
from typing import Any

import numpy as np

from dlkit.data.sources import find_source
from dlkit.data.splits import (
    check_arrays,
    check_split_options,
    image_shape_of,
    random_index,
    train_count,
)
from dlkit.errors import DlkitError

DEFAULT_SOURCE = "mnist"
DEFAULT_VALIDATION_SPLIT = 0.1
SPLITS = ("fixed", "random")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which data a training reads: plain values, so it travels to any worker.

    Args:
        source: A dataset source: `"digits"`, `"synthetic"`, a TFDS name, a
            folder of IDX files, a `.npz` file, or any registered source.
            Defaults to `"mnist"`.
        train_size: Train on N training examples only. Defaults to `None` (all).
        train_offset: Where those examples start in the training pool, so a
            lesson can be replicated on other images of the same distribution
            (e.g. 10,000 from 10,000 on). Defaults to `0`.
        validation_split: Fraction of the training pool held out for
            validation, from its end. Defaults to `0.1`.
        data_dir: TFDS data directory. Defaults to `None` (`$TFDS_DATA_DIR`,
            else `~/tensorflow_datasets`).
        download: Let TFDS download data that is not prepared.
            Defaults to `True`.
        split: `"fixed"`: the source's own test set, and the validation split
            from the training pool's end, the same for every seed. `"random"`:
            each seed draws its own stratified partition of all the source's
            examples, of the same sizes, shared by every variant at that seed
            (Bouthillier et al. 2021). Defaults to `"fixed"`.
    """

    source: str = DEFAULT_SOURCE
    train_size: int | None = None
    train_offset: int = 0
    validation_split: float = DEFAULT_VALIDATION_SPLIT
    data_dir: str | None = None
    download: bool = True
    split: str = "fixed"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise DlkitError(
                f"dataset split must be one of: {', '.join(SPLITS)}. Received: {self.split!r}"
            )
        if self.split == "random" and self.train_offset:
            raise DlkitError(
                "train_offset picks a slice of the fixed split; a random split draws each "
                "seed's own examples from the whole source. Drop one of the two."
            )

    def identity(self) -> dict[str, Any]:
        """Returns the fields that decide which examples are read (what a config hash covers)."""
        identity = {
            "source": self.source,
            "train_size": self.train_size,
            "validation_split": self.validation_split,
        }
        if self.train_offset:  # left out at 0, so runs from before the field still resume
            identity["train_offset"] = self.train_offset
        if self.split != "fixed":  # left out when fixed, so earlier runs still resume
            identity["split"] = self.split
        return identity

    def load(self, seed: int = 0) -> Dataset:
        """Loads the dataset. Its examples are read once per process (every child of a
        comparison shares them, read-only); each call returns a `Dataset` of its own.

        Args:
            seed: Under a `"random"` split, the seed whose partition to serve (the
                sizes are every seed's). Ignored under `"fixed"`. Defaults to `0`.
        """
        return _load_cached(self, seed if self.split == "random" else 0).copy()


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


@functools.lru_cache(maxsize=2)
def _load_cached(spec: DataSpec, seed: int) -> Dataset:
    if seed:  # a random split's other seeds: the same pooled examples, partitioned anew
        return _load_cached(spec, 0).resplit(seed)
    return load_dataset(
        spec.source,
        train_size=spec.train_size,
        train_offset=spec.train_offset,
        validation_split=spec.validation_split,
        data_dir=spec.data_dir,
        download=spec.download,
        split=spec.split,
        split_seed=seed,
    )


def _read_source(source: str, data_dir: str | None, download: bool) -> tuple:
    """A source's reader, its checked arrays and its class count."""
    reader = find_source(source)
    arrays = reader.read(source, data_dir=data_dir, download=download)
    *checked, num_classes = check_arrays(reader.dataset_name(source), *arrays)
    return reader, tuple(checked), num_classes


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a loaded dataset is: where it came from, its shapes and split sizes."""

    name: str
    source: str
    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    validation_size: int
    test_size: int
    input_max: float
    train_offset: int = 0  # where the training examples start in the training pool
    # Height, width and channels of each example when it is an image (what a convnet
    # reads); None for flat vectors. `input_shape` is what the model is fed: flat.
    image_shape: tuple[int, ...] | None = None

    @property
    def dims(self) -> tuple[int, int, tuple[int, ...] | None]:
        """(inputs, classes, image shape): what a recipe's sizes depend on."""
        return math.prod(self.input_shape), self.num_classes, self.image_shape

    def to_params(self) -> dict[str, Any]:
        """Returns the fields as MLflow params, prefixed `data.`."""
        return {f"data.{key}": value for key, value in dataclasses.asdict(self).items()}


class Dataset:
    """Train, validation and test splits held in memory, served as tf.data pipelines.

    `train`, `validation` and `test` are pipelines at the batch size and seed
    given to `load_dataset`; `pipeline()` makes them at any other.
    """

    def __init__(
        self,
        info: DatasetInfo,
        splits: dict[str, tuple[np.ndarray, np.ndarray]],
        *,
        batch_size: int = 128,
        seed: int = 0,
        pool: tuple[np.ndarray, np.ndarray] | None = None,
        pool_index: dict[str, np.ndarray] | None = None,
    ):
        self.info = info
        self.batch_size = batch_size
        self.seed = seed
        # Read-only views: whoever holds this dataset, or a copy, cannot change its examples.
        self._arrays = {split: tuple(_read_only(a) for a in xy) for split, xy in splits.items()}
        self._tensors: dict[str, Any] = {}
        self._digests: dict[str, str] = {}
        # A random split's pooled examples (every split's, shared read-only by each seed's
        # Dataset) and where each split's examples sit in them; None for a fixed split.
        self.pool = None if pool is None else tuple(_read_only(a) for a in pool)
        self.pool_index = None
        if pool_index is not None:
            self.pool_index = {split: _read_only(index) for split, index in pool_index.items()}
        self._pool_tensors = None
        x_train = splits["train"][0].reshape(len(splits["train"][0]), -1).astype(np.float64)
        self.input_mean = _read_only(x_train.mean(axis=0).astype(np.float32))
        self.input_variance = _read_only(x_train.var(axis=0).astype(np.float32))

    def same_examples(self, other: Dataset) -> bool:
        """Whether `other` holds these very examples: it is this dataset or a copy of it
        (two loads of one `DataSpec` in a process are)."""
        return self._arrays is other._arrays

    def same_pool(self, other: Dataset) -> bool:
        """Whether `other` is a random split of the very examples this one partitions."""
        return (
            self.pool is not None
            and other.pool is not None
            and self.pool[0].base is other.pool[0].base
        )

    def resplit(self, seed: int) -> Dataset:
        """Returns this random split's examples partitioned anew under `seed`: the same
        sizes, the same pooled examples (shared, read-only), another stratified draw."""
        if self.pool is None:
            raise ValueError("resplit needs a dataset loaded with split='random'.")
        x, y = self.pool
        info = self.info
        index = random_index(y, info.train_size, info.validation_size, info.test_size, seed)
        splits = {split: (x[i], y[i]) for split, i in index.items()}
        return Dataset(
            info, splits, batch_size=self.batch_size, seed=self.seed, pool=self.pool,
            pool_index=index,
        )  # fmt: skip

    def pool_tensors(self):
        """The pooled examples as TensorFlow tensors `(x, one_hot_y)`, made once and kept."""
        if self._pool_tensors is None:
            import tensorflow as tf

            x, y = self.pool
            self._pool_tensors = (
                tf.constant(x, dtype=tf.float32),
                tf.one_hot(y, self.info.num_classes, dtype=tf.float32),
            )
        return self._pool_tensors

    def copy(self) -> Dataset:
        """Returns a dataset of its own over the same read-only examples: changing its
        `batch_size` or `seed` changes nothing for this one."""
        other = copy.copy(self)
        other._tensors, other._digests = dict(self._tensors), dict(self._digests)
        return other

    @property
    def train(self):
        return self.pipeline("train")

    @property
    def validation(self):
        return self.pipeline("validation")

    @property
    def test(self):
        return self.pipeline("test")

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns a split as numpy `(x, y)`, with integer labels."""
        return self._arrays[split]

    def digest(self, split: str) -> str:
        """Returns a short fingerprint of a split's examples and labels (hex, 8 characters).

        Two runs whose splits have the same digest saw the same data, bit for bit.
        """
        if split not in self._digests:
            hasher = hashlib.sha256()
            for array in self._arrays[split]:
                hasher.update(str((array.dtype.str, array.shape)).encode())
                hasher.update(np.ascontiguousarray(array).data)
            self._digests[split] = hasher.hexdigest()[:8]
        return self._digests[split]

    def pipeline(
        self,
        split: str,
        batch_size: int | None = None,
        seed: int | None = None,
        *,
        repeat: bool = False,
    ):
        """Returns a batched, prefetched `tf.data.Dataset` of `(x, one_hot_y)`.

        The training split is reshuffled every epoch from `seed`; validation
        and test keep their order. The examples live in memory as tensors (on
        the GPU when there is one) and each batch is gathered from them by
        index, which is what `cache()` followed by an element-wise shuffle
        achieves, at a fraction of the per-element cost.

        Args:
            split: `"train"`, `"validation"` or `"test"`.
            batch_size: Examples per batch. Defaults to the dataset's.
            seed: Shuffle seed for the training split. Defaults to the dataset's.
            repeat: Serve epoch after epoch without end, for `fit` with
                `steps_per_epoch`: one iterator for a whole training instead
                of a new one every epoch. The epochs' orders are those `fit`
                trains on from the finite pipeline, which skips every other
                reshuffle (Keras opens and drops an iterator at the end of
                each epoch), so a run's batches do not depend on this choice.
                Defaults to `False`.
        """
        import tensorflow as tf

        if split not in self._arrays:
            raise ValueError(
                f"Unknown split {split!r}. Expected one of: {', '.join(self._arrays)}."
            )
        batch_size = batch_size or self.batch_size
        seed = self.seed if seed is None else seed
        x, y = self.tensors(split)
        n = len(self._arrays[split][1])
        indices = tf.data.Dataset.range(n)
        if repeat:
            epochs = self.epoch_orders(seed) if split == "train" else indices.batch(n).repeat()
            batches = epochs.flat_map(
                lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
            )
        else:
            if split == "train":
                indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
            batches = indices.batch(batch_size)
        return batches.map(
            lambda i: (tf.gather(x, i), tf.gather(y, i)), num_parallel_calls=tf.data.AUTOTUNE
        ).prefetch(tf.data.AUTOTUNE)

    def epoch_orders(self, seed: int | None = None):
        """Returns an endless `tf.data.Dataset` of the training split's orders, one per epoch.

        The order in which `pipeline("train", seed=seed)` serves the examples
        each epoch, as indices: what a packed training gathers each member's
        batches from. Keras's `fit` opens and drops an extra iterator at the end
        of each epoch, so it trains on every other reshuffle; these are those.

        Args:
            seed: Shuffle seed. Defaults to the dataset's.
        """
        import tensorflow as tf

        n = len(self._arrays["train"][1])
        seed = self.seed if seed is None else seed
        orders = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return orders.batch(n).repeat().shard(2, 0)

    def tensors(self, split: str):
        """Returns a split as TensorFlow tensors `(x, one_hot_y)`, made once and kept."""
        if split not in self._tensors:
            import tensorflow as tf

            x, y = self._arrays[split]
            self._tensors[split] = (
                tf.constant(x, dtype=tf.float32),
                tf.one_hot(y, self.info.num_classes, dtype=tf.float32),
            )
        return self._tensors[split]

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Dataset({i.name!r}, input_shape={i.input_shape}, num_classes={i.num_classes}, "
            f"train={i.train_size}, validation={i.validation_size}, test={i.test_size})"
        )


def load_dataset(
    source: str = DEFAULT_SOURCE,
    *,
    train_size: int | None = None,
    train_offset: int = 0,
    validation_split: float = DEFAULT_VALIDATION_SPLIT,
    flatten: bool = True,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 128,
    seed: int = 0,
    split: str = "fixed",
    split_seed: int = 0,
) -> Dataset:
    """Loads a dataset, checks it, and splits it into train, validation and test.

    Args:
        source: `"digits"` (scikit-learn's 8x8 digits, no download),
            `"synthetic"` (MNIST-shaped, learnable, no download), a TFDS name
            such as `"mnist"` or `"fashion_mnist"`, a folder of IDX files (the
            original MNIST format, gzipped or not), a `.npz` file with
            `x_train`, `y_train`, `x_test` and `y_test`, or any source
            registered with `dlkit.register_source`. Defaults to `"mnist"`.
        train_size: Keep only the first `train_size` training examples (the
            classic demo trains on the first 10,000). Defaults to `None` (all).
        train_offset: Start the training examples this far into the training
            pool: `train_offset=10000, train_size=10000` trains on images
            10,000 to 19,999, disjoint from the first 10,000. Defaults to `0`.
        validation_split: Fraction of the training pool held out for
            validation, taken from its end, so it never overlaps the first
            `train_size` examples. Defaults to `0.1`.
        flatten: Reshape each example to a vector. Defaults to `True`.
        data_dir: TFDS data directory. Defaults to `$TFDS_DATA_DIR`, else
            TFDS's own default (`~/tensorflow_datasets`).
        download: Let TFDS download data that is not prepared yet.
            Defaults to `True`.
        batch_size: Batch size of the `train`, `validation` and `test`
            pipelines. Defaults to `128`.
        seed: Shuffle seed of the `train` pipeline. Defaults to `0`.
        split: `"fixed"` (the source's test set; validation from the training
            pool's end) or `"random"`: a stratified partition of all the
            source's examples drawn from `split_seed`, with the sizes the fixed
            split has. Defaults to `"fixed"`.
        split_seed: The random split's seed. Defaults to `0`.

    Returns:
        A `Dataset`.

    Raises:
        DlkitError: for an unknown source, a missing or corrupt file, or
            data that cannot be trained on (see `check_arrays`).

    Example:

    >>> data = load_dataset("digits", train_size=500)
    >>> data.info.input_shape, data.info.train_size
    ((64,), 500)
    """
    check_split_options(validation_split, train_size, train_offset)
    DataSpec(source, train_size, train_offset, validation_split, split=split)  # checks split
    reader, (x_train, y_train, x_test, y_test), num_classes = _read_source(
        source, data_dir, download
    )
    name = reader.dataset_name(source)
    input_max = 255.0 if x_train.dtype == np.uint8 else float(np.abs(x_train).max()) or 1.0
    image_shape = image_shape_of(x_train.shape[1:])
    if flatten:
        x_train = x_train.reshape(len(x_train), -1)
        x_test = x_test.reshape(len(x_test), -1)
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)

    n_val = int(round(len(x_train) * validation_split))
    pool = len(x_train) - n_val
    n_train = train_count(name, pool, n_val, train_size, train_offset)
    start = train_offset
    splits = {
        "train": (x_train[start : start + n_train], y_train[start : start + n_train]),
        "validation": (x_train[pool:], y_train[pool:]),
        "test": (x_test, y_test),
    }
    pool = index = None
    if split == "random":
        pool = (np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]))
        index = random_index(pool[1], n_train, n_val, len(y_test), split_seed)
        splits = {name: (pool[0][i], pool[1][i]) for name, i in index.items()}
    info = DatasetInfo(
        name=name,
        source=reader.describe(source),
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        num_classes=num_classes,
        train_size=n_train,
        validation_size=n_val,
        test_size=len(x_test),
        input_max=input_max,
        train_offset=train_offset,
        image_shape=image_shape,
    )
    return Dataset(info, splits, batch_size=batch_size, seed=seed, pool=pool, pool_index=index)
