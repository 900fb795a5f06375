"""Data sources: a registry of readers that turn a `--dataset` value into numpy arrays.

A reader is one decorated function. It receives the user's `--dataset`
value and returns `(x_train, y_train, x_test, y_test)` with integer (or
one-hot) labels; `dlkit.data.dataset` splits, validates and serves the arrays. Each
reader says which values it claims, so adding a source never touches an
if/elif chain:

    @register_source("my-set")                       # claims exactly "my-set"
    def read_my_set(source, **options):
        ...
        return x_train, y_train, x_test, y_test

Values nobody claims go to TensorFlow Datasets (`tfds`), after paths have
been checked here, before TensorFlow is imported, so a mistyped path fails at once.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlkit.errors import DlkitError, closest

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Reader = Callable[..., Arrays]

IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FALLBACK = "tfds"


@dataclasses.dataclass(frozen=True)
class Source:
    """A registered reader and the dataset values it claims.

    Attributes:
        kind: The registry key, e.g. `"digits"`, `"idx"`.
        read: `read(value, data_dir=..., download=...)` returning the four arrays.
        claims: Whether this reader handles a `--dataset` value.
        is_path: The value names a file or folder: the dataset is named
            after it and its absolute path is logged.
    """

    kind: str
    read: Reader
    claims: Callable[[str], bool]
    is_path: bool = False

    def dataset_name(self, value: str) -> str:
        """Returns the short name a dataset from `value` is logged under."""
        if not self.is_path:
            return value
        path = Path(value).expanduser().resolve()
        return path.name if path.is_dir() else path.stem

    def describe(self, value: str) -> str:
        """Returns where the data came from, as logged (`kind`, or `kind:/abs/path`)."""
        if not self.is_path:
            return self.kind
        return f"{self.kind}:{Path(value).expanduser().resolve()}"


_SOURCES: dict[str, Source] = {}


def register_source(
    kind: str,
    *,
    claims: Callable[[str], bool] | None = None,
    is_path: bool = False,
    replace: bool = False,
) -> Callable[[Reader], Reader]:
    """Registers a reader of a data source under `kind`.

    Args:
        kind: Registry key, and the `--dataset` value the reader claims when
            `claims` is not given.
        claims: Given a `--dataset` value, whether this reader handles it.
            Defaults to "the value equals `kind`".
        is_path: The values this reader claims are files or folders.
            Defaults to `False`.
        replace: Allow replacing a reader already registered as `kind`.
            Defaults to `False`.

    Returns:
        A decorator that registers the reader and returns it unchanged.

    Example:

    >>> @register_source("tiny-blobs")
    ... def read_tiny_blobs(source, **options):
    ...     x = np.random.default_rng(0).normal(size=(60, 4)).astype("float32")
    ...     y = (x[:, 0] > 0).astype("int64")
    ...     return x[:40], y[:40], x[40:], y[40:]
    """

    def decorate(read: Reader) -> Reader:
        if kind in _SOURCES and not replace:
            raise DlkitError(
                f"A data source named {kind!r} is already registered. Choose another name, "
                "or pass replace=True to register_source to replace it on purpose."
            )
        _SOURCES[kind] = Source(kind, read, claims or (lambda value: value == kind), is_path)
        return read

    return decorate


def list_sources() -> list[str]:
    """Returns the registered source kinds, in the order they are tried."""
    return list(_SOURCES)


def find_source(value: str) -> Source:
    """Returns the reader that handles a `--dataset` value.

    Readers are asked in registration order; TFDS takes what none claims,
    except values that look like paths, which must exist.

    Raises:
        DlkitError: for an empty value, or a path that is missing or of no
            known kind.
    """
    if not isinstance(value, str) or not value.strip():
        raise DlkitError(
            f"The dataset is empty. Received: {value!r}. Give 'digits', a TFDS name such as "
            "'mnist', a folder of IDX files or a .npz file."
        )
    for source in _SOURCES.values():
        if source.kind != FALLBACK and source.claims(value):
            return source
    path = Path(value).expanduser()
    if path.exists():
        raise DlkitError(
            f"Cannot read dataset file {value!r}: expected a .npz file with "
            f"{', '.join(NPZ_KEYS)}, or a folder of IDX files."
        )
    if value.endswith(".npz") or os.sep in value or value.startswith("."):
        raise DlkitError(
            f"Dataset path {value!r} does not exist. Give a folder of IDX files, "
            "a .npz file, 'digits', or a TFDS name such as 'mnist'."
        )
    return _SOURCES[FALLBACK]


@register_source("digits")
def read_digits(source: str, **options: Any) -> Arrays:
    """scikit-learn's 1,797 8x8 digits, bundled: no download. A fixed 80/20 split."""
    images, target = digits_arrays()
    # The set comes ordered by writer; a fixed permutation (independent of
    # any training seed) gives a stable 80/20 train/test split.
    order = np.random.default_rng(0).permutation(len(target))
    x, y = images[order].astype(np.float32), target[order]
    n_test = len(y) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """`load_digits()`'s images and targets, read from the file scikit-learn ships.

    Importing scikit-learn (and SciPy with it) takes seconds, longer than reading
    the 1,797 rows; `load_digits` is the fallback if the file has moved.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    origin = spec.origin if spec else None  # None too for a package without an __init__
    path = Path(origin).parent / "datasets" / "data" / "digits.csv.gz" if origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt") as file:
        data = np.loadtxt(file, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


@register_source("synthetic")
def read_synthetic(source: str, **options: Any) -> Arrays:
    """MNIST-shaped data that needs no download and can be learned.

    24,000 training and 4,000 test uint8 28x28 images of uniform noise, each
    labelled by a fixed random linear teacher: what `dlkit bench` times.
    """
    return synthetic_mnist()


def synthetic_mnist(n_train: int = 24_000, n_test: int = 4_000, seed: int = 0) -> Arrays:
    """Returns `n_train` + `n_test` noise images labelled by a fixed linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    teacher = rng.normal(size=(784, 10))
    y = np.argmax((x.reshape(len(x), -1) / 255.0 - 0.5) @ teacher, axis=1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@register_source(
    "npz",
    claims=lambda value: value.endswith(".npz") and Path(value).expanduser().is_file(),
    is_path=True,
)
def read_npz(source: str, **options: Any) -> Arrays:
    """A `.npz` file with `x_train`, `y_train`, `x_test`, `y_test` (loaded without pickle)."""
    path = Path(source).expanduser()
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise DlkitError(
                    f"{str(path)!r} lacks {', '.join(missing)}. A dataset .npz holds "
                    f"{', '.join(NPZ_KEYS)} (found: {', '.join(npz.files) or 'nothing'})."
                )
            arrays = tuple(npz[key] for key in NPZ_KEYS)
        # A member that is not in .npy format comes back as its raw bytes.
        raw = [key for key, array in zip(NPZ_KEYS, arrays) if not isinstance(array, np.ndarray)]
        if raw:
            raise DlkitError(
                f"Cannot read {str(path)!r} as a .npz file: {', '.join(raw)} is not a "
                "numpy array (.npy). Write it with numpy.savez."
            )
    except DlkitError:
        raise
    except Exception as error:  # zipfile, zlib and format errors of a corrupt file alike
        raise DlkitError(
            f"Cannot read {str(path)!r} as a .npz file: {_first_line(error)}. "
            "Write it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        ) from None
    x_train, y_train, x_test, y_test = arrays
    if y_train.ndim == 2:  # one-hot labels
        y_train, y_test = y_train.argmax(axis=1), y_test.argmax(axis=1)
    return x_train, y_train, x_test, y_test


@register_source("idx", claims=lambda value: Path(value).expanduser().is_dir(), is_path=True)
def read_idx_folder(source: str, **options: Any) -> Arrays:
    """A folder of the four original MNIST-format IDX files, gzipped or not."""
    folder = Path(source).expanduser()
    x_train, y_train, x_test, y_test = (read_idx(_find_idx(folder, key)) for key in IDX_FILES)
    return x_train, y_train, x_test, y_test


@register_source(FALLBACK)
def read_tfds(source: str, *, data_dir: str | None = None, download: bool = True) -> Arrays:
    """A TensorFlow Datasets name (`mnist`, `fashion_mnist`, ...), downloaded on first use."""
    import tensorflow_datasets as tfds

    from dlkit.data.downloads import check_reachable, quiet_retries

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        builder = tfds.builder(source, data_dir=data_dir)
        # Offline, fail in seconds, not minutes; unless the download is TFDS's test double
        # (`tfds.testing.mock_data`), which reaches no network.
        prepare = type(builder).download_and_prepare
        real = prepare.__module__.startswith("tensorflow_datasets.core")
        if download and real and not builder.is_prepared():
            check_reachable((builder.url_infos or {}).keys(), source)
        with quiet_retries():
            train, test = tfds.load(
                source,
                split=["train", "test"],
                data_dir=data_dir,
                as_supervised=True,
                download=download,
            )
    except DlkitError:
        raise
    except tfds.core.registered.DatasetNotFoundError:
        raise DlkitError(
            f"Unknown dataset {source!r}: it is not one of {', '.join(_named_sources())}, an "
            f"existing path, or a TFDS dataset.{closest(source, tfds.list_builders())}"
        ) from None
    except Exception as error:  # network, checksum, split and manual-download errors alike
        where = data_dir or "~/tensorflow_datasets"
        raise DlkitError(
            f"Could not load TFDS dataset {source!r} from {where}: {_first_line(error)}. "
            "Either let TFDS download it (needs network access), prepare it under "
            "--data-dir / $TFDS_DATA_DIR (original files can go in its downloads/manual "
            "folder), or point --dataset at a local folder of IDX files or a .npz file."
        ) from None
    (x_train, y_train), (x_test, y_test) = _to_numpy(train), _to_numpy(test)
    return x_train, y_train, x_test, y_test


def read_idx(path: str | Path) -> np.ndarray:
    """Reads one IDX file (gzipped or not) into a numpy array.

    Raises:
        DlkitError: when the file is missing, truncated, corrupt or not IDX.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except Exception as error:  # OSError, EOFError, zlib.error of a broken gzip stream
        raise DlkitError(f"Cannot read IDX file {str(path)!r}: {_first_line(error)}.") from None
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
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
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


def _named_sources() -> list[str]:
    return [repr(s.kind) for s in _SOURCES.values() if not s.is_path and s.kind != FALLBACK]


def _to_numpy(split: Any) -> tuple[np.ndarray, np.ndarray]:
    # Large batches rather than batch_size=-1, which TFDS's mock data cannot serve.
    xs, ys = zip(*split.batch(8192).as_numpy_iterator())
    return np.concatenate(xs), np.concatenate(ys)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).rstrip(".")
