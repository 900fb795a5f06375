"""Datasets: read from TFDS, IDX files, .npz or scikit-learn's digits into tf.data pipelines.

Every source is read once into memory (these are MNIST-sized sets), split
deterministically, and served by pipelines that shuffle with the seed, batch
and prefetch. The splits never depend on the training seed, so every variant
and seed of a comparison sees the same examples.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from dlkit.errors import DlkitError, closest

LOCAL_SOURCES = ("digits",)
IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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
    ):
        self.info = info
        self.batch_size = batch_size
        self.seed = seed
        self._arrays = splits
        self._tensors: dict[str, Any] = {}
        x_train = splits["train"][0].reshape(len(splits["train"][0]), -1).astype(np.float64)
        self.input_mean = x_train.mean(axis=0).astype(np.float32)
        self.input_variance = x_train.var(axis=0).astype(np.float32)

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

    def pipeline(self, split: str, batch_size: int | None = None, seed: int | None = None):
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
        """
        import tensorflow as tf

        if split not in self._arrays:
            raise ValueError(
                f"Unknown split {split!r}. Expected one of: {', '.join(self._arrays)}."
            )
        batch_size = batch_size or self.batch_size
        seed = self.seed if seed is None else seed
        x, y = self._tensor(split)
        n = len(self._arrays[split][1])
        indices = tf.data.Dataset.range(n)
        if split == "train":
            indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return (
            indices.batch(batch_size)
            .map(lambda i: (tf.gather(x, i), tf.gather(y, i)), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )

    def _tensor(self, split: str):
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
    source: str = "digits",
    *,
    train_size: int | None = None,
    validation_split: float = 0.1,
    flatten: bool = True,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 128,
    seed: int = 0,
) -> Dataset:
    """Loads a dataset and splits it into train, validation and test.

    Args:
        source: `"digits"` (scikit-learn's 8x8 digits, no download), a TFDS
            name such as `"mnist"` or `"fashion_mnist"`, a folder of IDX files
            (the original MNIST format, gzipped or not), or a `.npz` file with
            `x_train`, `y_train`, `x_test` and `y_test`. Defaults to `"digits"`.
        train_size: Keep only the first `train_size` training examples (the
            classic demo trains on the first 10,000). Defaults to `None` (all).
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

    Returns:
        A `Dataset`.

    Example:

    >>> data = load_dataset("digits", train_size=500)
    >>> data.info.input_shape, data.info.train_size
    ((64,), 500)
    """
    if not 0.0 <= validation_split < 1.0:
        raise DlkitError(
            "validation_split must be at least 0 and below 1. "
            f"Received: validation_split={validation_split}"
        )
    if train_size is not None and train_size < 1:
        raise DlkitError(f"train_size must be a positive number. Received: train_size={train_size}")

    kind = source_kind(source)
    if kind == "digits":
        name, arrays = "digits", _read_digits()
    elif kind == "npz":
        name, arrays = Path(source).stem, _read_npz(Path(source))
    elif kind == "idx":
        name, arrays = Path(source).resolve().name, _read_idx_folder(Path(source))
    else:
        name, arrays = source, _read_tfds(source, data_dir=data_dir, download=download)
    x_train, y_train, x_test, y_test = arrays

    y_train, y_test = y_train.astype(np.int64).reshape(-1), y_test.astype(np.int64).reshape(-1)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    input_max = 255.0 if x_train.dtype == np.uint8 else float(np.abs(x_train).max()) or 1.0
    if flatten:
        x_train = x_train.reshape(len(x_train), -1)
        x_test = x_test.reshape(len(x_test), -1)
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)

    n_val = int(round(len(x_train) * validation_split))
    pool = len(x_train) - n_val
    if train_size is not None and train_size > pool:
        raise DlkitError(
            f"train_size={train_size} is more than the {pool} training examples of "
            f"{name!r} left after holding out {n_val} for validation. "
            "Use a smaller train_size or validation_split."
        )
    n_train = pool if train_size is None else train_size
    if n_train < 1:
        raise DlkitError(f"{name!r} has no training examples left after the validation split.")
    splits = {
        "train": (x_train[:n_train], y_train[:n_train]),
        "validation": (x_train[pool:], y_train[pool:]),
        "test": (x_test, y_test),
    }
    info = DatasetInfo(
        name=name,
        source=kind if kind in ("digits", "tfds") else f"{kind}:{Path(source).resolve()}",
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        num_classes=num_classes,
        train_size=n_train,
        validation_size=n_val,
        test_size=len(x_test),
        input_max=input_max,
    )
    return Dataset(info, splits, batch_size=batch_size, seed=seed)


def source_kind(source: str) -> str:
    """Returns `"digits"`, `"npz"`, `"idx"` or `"tfds"` for a dataset source.

    Paths are checked here, before TensorFlow is imported, so a mistyped path
    fails at once.
    """
    if source in LOCAL_SOURCES:
        return source
    path = Path(source).expanduser()
    looks_like_path = source.endswith(".npz") or os.sep in source or source.startswith(".")
    if path.is_dir():
        return "idx"
    if path.is_file():
        if source.endswith(".npz"):
            return "npz"
        raise DlkitError(
            f"Cannot read dataset file {source!r}: expected a .npz file with "
            f"{', '.join(NPZ_KEYS)}, or a folder of IDX files."
        )
    if looks_like_path:
        raise DlkitError(
            f"Dataset path {source!r} does not exist. Give a folder of IDX files, "
            "a .npz file, 'digits', or a TFDS name such as 'mnist'."
        )
    return "tfds"


def read_idx(path: str | Path) -> np.ndarray:
    """Reads one IDX file (gzipped or not) into a numpy array.

    Raises:
        DlkitError: when the file is missing, truncated or not IDX.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise DlkitError(f"Cannot read IDX file {str(path)!r}: {error}.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DlkitError(
            f"{str(path)!r} is not an IDX file: its header does not start with the IDX "
            "magic number (0x00000801 labels, 0x00000803 images)."
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DlkitError(f"IDX file {str(path)!r} is truncated inside its header.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DlkitError(
            f"IDX file {str(path)!r} is truncated or corrupt: its header promises shape "
            f"{shape} ({expected:,} bytes of data) but it holds {len(raw) - header:,}."
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _find_idx(folder: Path, key: str) -> Path:
    for stem in IDX_FILES[key]:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    expected = ", ".join(f"{names[0]}[.gz]" for names in IDX_FILES.values())
    raise DlkitError(
        f"Folder {str(folder)!r} has no {IDX_FILES[key][0]}[.gz]. "
        f"An IDX dataset folder holds the four original MNIST-format files: {expected}."
    )


def _read_idx_folder(folder: Path) -> tuple[np.ndarray, ...]:
    arrays = tuple(read_idx(_find_idx(folder, key)) for key in IDX_FILES)
    for x, y, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "test")):
        if len(x) != len(y):
            raise DlkitError(
                f"IDX folder {str(folder)!r}: the {split} images ({len(x)}) and labels "
                f"({len(y)}) differ in count."
            )
    return arrays


def _read_npz(path: Path) -> tuple[np.ndarray, ...]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise DlkitError(
                    f"{str(path)!r} lacks {', '.join(missing)}. A dataset .npz holds "
                    f"{', '.join(NPZ_KEYS)} (found: {', '.join(npz.files) or 'nothing'})."
                )
            arrays = tuple(npz[key] for key in NPZ_KEYS)
    except (OSError, ValueError, EOFError) as error:
        if isinstance(error, DlkitError):
            raise
        raise DlkitError(f"Cannot read {str(path)!r} as a .npz file: {error}") from None
    x_train, y_train, x_test, y_test = arrays
    if y_train.ndim == 2:  # one-hot labels
        y_train, y_test = y_train.argmax(axis=1), y_test.argmax(axis=1)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DlkitError(f"{str(path)!r}: x and y of a split differ in length.")
    return x_train, y_train, x_test, y_test


def _read_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The set comes ordered by writer; a fixed permutation (independent of
    # any training seed) gives a stable 80/20 train/test split.
    order = np.random.default_rng(0).permutation(len(digits.target))
    x, y = digits.images[order].astype(np.float32), digits.target[order]
    n_test = len(y) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def _read_tfds(name: str, *, data_dir: str | None, download: bool) -> tuple[np.ndarray, ...]:
    import tensorflow_datasets as tfds

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        train, test = tfds.load(
            name,
            split=["train", "test"],
            data_dir=data_dir,
            as_supervised=True,
            download=download,
        )
    except tfds.core.registered.DatasetNotFoundError:
        raise DlkitError(
            f"Unknown dataset {name!r}: it is not 'digits', an existing path, or a TFDS "
            f"dataset.{closest(name, tfds.list_builders())}"
        ) from None
    except Exception as error:  # network, checksum, split and manual-download errors alike
        where = data_dir or "~/tensorflow_datasets"
        raise DlkitError(
            f"Could not load TFDS dataset {name!r} from {where}: {_first_line(error)}. "
            "Either let TFDS download it (needs network access), prepare it under "
            "--data-dir / $TFDS_DATA_DIR (original files can go in its downloads/manual "
            "folder), or point --dataset at a local folder of IDX files or a .npz file."
        ) from None
    (x_train, y_train), (x_test, y_test) = _to_numpy(train), _to_numpy(test)
    return x_train, y_train, x_test, y_test


def _to_numpy(split: Any) -> tuple[np.ndarray, np.ndarray]:
    # Large batches rather than batch_size=-1, which TFDS's mock data cannot serve.
    xs, ys = zip(*split.batch(8192).as_numpy_iterator())
    return np.concatenate(xs), np.concatenate(ys)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).rstrip(".")
