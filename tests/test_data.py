"""Data: every source (IDX written here, .npz, digits, TFDS mock), splits and pipelines."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from dlkit import DlkitError, register_source
from dlkit.data.dataset import DataSpec, load_dataset
from dlkit.data.sources import find_source, list_sources, read_idx


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Writes `array` (uint8) in the original IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def fake_mnist(n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        np.arange(n_train) % 10,
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        np.arange(n_test) % 10,
    )


def write_idx_folder(folder: Path, compress: bool = True) -> tuple[np.ndarray, ...]:
    folder.mkdir(exist_ok=True)
    arrays = fake_mnist()
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    for name, array in zip(names, arrays):
        write_idx(folder / name, array, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_loads_exactly_what_was_written(tmp_path, compress):
    x_train, y_train, x_test, y_test = write_idx_folder(tmp_path / "mnist", compress)
    data = load_dataset(str(tmp_path / "mnist"), validation_split=0.25)
    info = data.info
    assert (info.name, info.input_shape, info.num_classes, info.input_max) == (
        "mnist",
        (784,),
        10,
        255.0,
    )
    assert (info.train_size, info.validation_size, info.test_size) == (45, 15, 20)
    x, y = data.arrays("train")
    np.testing.assert_array_equal(x, x_train[:45].reshape(45, -1))
    np.testing.assert_array_equal(y, y_train[:45])
    np.testing.assert_array_equal(data.arrays("validation")[1], y_train[45:])
    np.testing.assert_array_equal(data.arrays("test")[0], x_test.reshape(20, -1))


def test_train_size_takes_the_first_examples_and_validation_stays_disjoint(tmp_path):
    write_idx_folder(tmp_path / "mnist")
    data = load_dataset(str(tmp_path / "mnist"), train_size=10, validation_split=0.5)
    assert data.info.train_size == 10 and data.info.validation_size == 30
    with pytest.raises(DlkitError, match="train_size=40 is more than the 30"):
        load_dataset(str(tmp_path / "mnist"), train_size=40, validation_split=0.5)


def test_npz_source(tmp_path):
    x_train, y_train, x_test, y_test = fake_mnist()
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = load_dataset(str(path), flatten=False, validation_split=0.0)
    assert data.info.name == "mine" and data.info.input_shape == (28, 28)
    assert data.info.train_size == 60 and data.info.validation_size == 0


def test_digits_needs_no_download_and_splits_deterministically():
    a, b = load_dataset("digits"), load_dataset("digits", seed=7)
    assert a.info.input_shape == (64,) and a.info.num_classes == 10 and a.info.input_max == 16.0
    assert a.info.train_size + a.info.validation_size + a.info.test_size == 1797
    np.testing.assert_array_equal(a.arrays("test")[0], b.arrays("test")[0])


def test_tfds_path_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=30):
        data = load_dataset("mnist", data_dir=str(tmp_path), validation_split=0.2)
    assert data.info.source == "tfds"
    assert data.info.input_shape == (784,) and data.info.num_classes == 10
    assert data.info.train_size == 24 and data.info.test_size == 30


def test_unknown_tfds_name_suggests_close_names(tmp_path):
    with pytest.raises(DlkitError, match="Did you mean 'mnist'"):
        load_dataset("mnsit", data_dir=str(tmp_path))


def test_unprepared_tfds_dataset_without_download_says_how_to_fix(tmp_path):
    with pytest.raises(DlkitError, match="local folder of IDX files"):
        load_dataset("mnist", data_dir=str(tmp_path), download=False)


def test_pipelines_batch_one_hot_and_reshuffle_from_the_seed(digits):
    x, y = next(iter(digits.pipeline("train", batch_size=32, seed=3)))
    assert tuple(x.shape) == (32, 64) and tuple(y.shape) == (32, 10)
    np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0)

    def first_labels(seed):
        epochs = digits.pipeline("train", batch_size=400, seed=seed).repeat(2)
        return [batch[1].numpy().argmax(1) for batch in epochs]

    run_a, run_b = first_labels(3), first_labels(3)
    np.testing.assert_array_equal(run_a[0], run_b[0])  # same seed, same order
    assert not np.array_equal(run_a[0], run_a[1])  # reshuffled every epoch
    assert sorted(run_a[0]) == sorted(digits.arrays("train")[1])  # every example once
    # endless: the epochs Keras's fit reads from the finite pipeline (see Dataset.pipeline)
    endless = iter(digits.pipeline("train", batch_size=400, seed=3, repeat=True))
    finite = digits.pipeline("train", batch_size=400, seed=3)
    for _ in range(3):
        for _, labels in finite:
            np.testing.assert_array_equal(next(endless)[1].numpy(), labels.numpy())
        iter(finite)  # the iterator fit opens and drops at the end of every epoch
    x_test, _ = next(iter(digits.pipeline("test", batch_size=5)))
    np.testing.assert_array_equal(x_test.numpy(), digits.arrays("test")[0][:5])


def test_missing_and_broken_files_give_clear_errors(tmp_path):
    with pytest.raises(DlkitError, match="does not exist"):
        find_source(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DlkitError, match="no train-images-idx3-ubyte"):
        load_dataset(str(tmp_path / "empty"))
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"not an idx file at all")
    with pytest.raises(DlkitError, match="is not an IDX file"):
        read_idx(bad)
    truncated = write_idx(tmp_path / "short", np.zeros((5, 4, 4)), compress=False)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(DlkitError, match="truncated or corrupt"):
        read_idx(truncated)
    broken_gz = tmp_path / "x.gz"
    broken_gz.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DlkitError, match="Cannot read IDX file"):
        read_idx(broken_gz)
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 2)))
    with pytest.raises(DlkitError, match="lacks y_train, x_test, y_test"):
        load_dataset(str(tmp_path / "partial.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DlkitError, match="Cannot read"):
        load_dataset(str(tmp_path / "junk.npz"))


def test_out_of_range_options():
    with pytest.raises(DlkitError, match="validation_split"):
        load_dataset("digits", validation_split=1.0)
    with pytest.raises(DlkitError, match="train_size"):
        load_dataset("digits", train_size=0)


def test_a_users_own_source_is_one_decorated_function(tmp_path):
    @register_source("blobs")
    def read_blobs(source, **options):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(90, 3)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        return x[:60], y[:60], x[60:], y[60:]

    assert "blobs" in list_sources()
    data = load_dataset("blobs", validation_split=0.0)
    assert data.info.name == "blobs" and data.info.source == "blobs"
    assert data.info.input_shape == (3,) and data.info.num_classes == 2
    assert DataSpec(source="blobs", validation_split=0.0).load().info.train_size == 60
    with pytest.raises(DlkitError, match="'blobs' is already registered"):
        register_source("blobs")(read_blobs)


def test_synthetic_source_is_mnist_shaped_and_needs_nothing():
    data = load_dataset("synthetic", validation_split=0.0)
    assert data.info.input_shape == (784,) and data.info.num_classes == 10
    assert data.info.train_size == 24_000 and data.info.input_max == 255.0


def test_an_empty_dataset_name_is_refused():
    for value in ("", "  "):
        with pytest.raises(DlkitError, match="The dataset is empty"):
            find_source(value)


def write_npz(path: Path, **changes) -> str:
    arrays = dict(zip(("x_train", "y_train", "x_test", "y_test"), fake_mnist()))
    arrays.update(changes)
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"y_train": np.arange(60) % 10 + 0.5}, "labels must be whole class numbers"),
        ({"y_train": np.where(np.arange(60) == 0, np.nan, np.arange(60) % 10)}, "whole class"),
        ({"y_train": np.arange(60) % 10 - 1}, "labels must be class numbers from 0"),
        ({"y_train": np.where(np.arange(60) == 0, 200, np.arange(60) % 10)}, "out of range"),
        ({"y_train": np.zeros(60, int), "y_test": np.zeros(20, int)}, "only one class"),
        ({"x_train": np.full((60, 28, 28), np.nan)}, "NaN or infinite"),
        ({"x_train": np.zeros((60, 28, 28), complex)}, "expected real numbers"),
        ({"x_train": np.zeros(60)}, "x_train has shape (60,)"),
        ({"x_test": np.zeros((20, 8, 8))}, "they must agree"),
        ({"y_test": np.arange(19) % 10}, "differ in count"),
    ],
)
def test_data_that_cannot_be_trained_on_is_refused_before_training(tmp_path, changes, message):
    path = write_npz(tmp_path / "bad.npz", **changes)
    with pytest.raises(DlkitError) as error:
        load_dataset(path)
    assert message in str(error.value) and "'bad'" in str(error.value)


def test_an_idx_header_that_promises_too_much_is_corrupt_not_a_crash(tmp_path):
    huge = tmp_path / "huge-idx"
    huge.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31) + b"\0")
    with pytest.raises(DlkitError, match="truncated or corrupt"):
        read_idx(huge)


def test_digits_read_from_scikit_learns_file_equal_load_digits():
    from sklearn.datasets import load_digits

    from dlkit.data.sources import digits_arrays

    images, target = digits_arrays()
    digits = load_digits()
    assert images.dtype == digits.images.dtype and target.dtype == digits.target.dtype
    np.testing.assert_array_equal(images, digits.images)
    np.testing.assert_array_equal(target, digits.target)


def test_each_load_is_a_dataset_of_its_own_whose_examples_no_caller_can_change():
    spec = DataSpec(source="digits", train_size=200)
    first, second = spec.load(), spec.load()
    assert first is not second
    first.batch_size, first.seed = 7, 99  # one caller's settings reach no other
    assert (second.batch_size, second.seed) != (7, 99)
    assert (spec.load().batch_size, spec.load().seed) == (second.batch_size, second.seed)
    x, y = first.arrays("train")
    for array in (x, y, first.input_mean):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0
    np.testing.assert_array_equal(second.arrays("train")[0], x)


def test_arrays_a_users_source_returns_stay_writable_for_that_user():
    x, y = np.ones((90, 3), np.float32), np.arange(90) % 2
    register_source("held")(lambda source, **options: (x[:60], y[:60], x[60:], y[60:]))
    data = load_dataset("held", validation_split=0.0)
    x[0, 0] = 5.0  # the user's own arrays stay theirs: writable, as they were
    assert data.arrays("train")[0].flags.writeable is False
