"""A source's arrays checked, and divided into training, validation and test examples.

Pure NumPy: the checks a source's arrays must pass (shapes, labels, sizes), and the fixed
and random stratified splits, each a function of the sizes and the seed alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlkit.errors import DlkitError


def random_index(y: np.ndarray, n_train: int, n_val: int, n_test: int, seed: int) -> dict:
    """A stratified partition of examples labelled `y` into train, validation and test of
    these sizes, drawn from `seed`: each split's positions, in ascending order."""
    try:
        return stratified(y, n_train, n_val, n_test, seed)
    except ValueError as error:  # a class too rare to be in every split, say
        raise DlkitError(
            f"Cannot draw a stratified random split of {len(y):,} examples into {n_train:,} "
            f"training, {n_val:,} validation and {n_test:,} test examples: "
            f"{str(error).rstrip('.')}. Use "
            "split: fixed, or a source with more examples of each class."
        ) from None


def stratified(y: np.ndarray, n_train: int, n_val: int, n_test: int, seed: int) -> dict:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=n_test, stratify=y, random_state=seed)
    if n_train + n_val < len(rest):
        rest, _ = train_test_split(
            rest, train_size=n_train + n_val, stratify=y[rest], random_state=seed
        )
    train, validation = rest, rest[:0]
    if n_val:
        train, validation = train_test_split(
            rest, test_size=n_val, stratify=y[rest], random_state=seed
        )
    parts = {"train": train, "validation": validation, "test": test}
    return {name: np.sort(part) for name, part in parts.items()}


def check_split_options(validation_split: float, train_size: int | None, train_offset: int) -> None:
    if not 0.0 <= validation_split < 1.0:
        raise DlkitError(
            "validation_split must be at least 0 and below 1. "
            f"Received: validation_split={validation_split}"
        )
    if train_size is not None and train_size < 1:
        raise DlkitError(f"train_size must be a positive number. Received: train_size={train_size}")
    if train_offset < 0:
        raise DlkitError(f"train_offset must be 0 or more. Received: train_offset={train_offset}")


def train_count(name: str, pool: int, n_val: int, train_size: int | None, train_offset: int) -> int:
    """How many training examples `train_size` and `train_offset` leave of a pool of `pool`."""
    available = pool - train_offset
    if train_size is not None and train_size > available:
        start = f" from train_offset={train_offset}" if train_offset else ""
        raise DlkitError(
            f"train_size={train_size}{start} is more than the {available} training examples "
            f"of {name!r} left after holding out {n_val} for validation"
            f"{f' and skipping {train_offset}' if train_offset else ''}. Use a smaller "
            f"train_size{', train_offset' if train_offset else ''} or validation_split."
        )
    n_train = available if train_size is None else train_size
    if n_train < 1:
        raise DlkitError(
            f"{name!r} has no training examples left after the validation split"
            + (f" and train_offset={train_offset}." if train_offset else ".")
        )
    return n_train


def image_shape_of(example: tuple[int, ...]) -> tuple[int, int, int] | None:
    """An example's (height, width, channels) when it is an image: 2-D, or 3-D with at most
    4 channels last; None for a flat vector."""
    if len(example) == 2:
        return (int(example[0]), int(example[1]), 1)
    if len(example) == 3 and example[2] <= 4:
        return (int(example[0]), int(example[1]), int(example[2]))
    return None


def check_arrays(
    name: str, x_train: Any, y_train: Any, x_test: Any, y_test: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Checks a source's arrays once, vectorised, and returns them with the class count.

    Images must be real and finite, with one label per image and the same
    example shape in train and test; labels must be whole numbers from 0 with
    at least two classes present.

    Returns:
        `(x_train, y_train, x_test, y_test, num_classes)`, labels as int64 vectors.

    Raises:
        DlkitError: naming the dataset and what is wrong.
    """
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    for split in ("train", "test"):
        _check_split(name, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DlkitError(
            f"Dataset {name!r}: train examples have shape {arrays['x_train'].shape[1:]} but "
            f"test examples {arrays['x_test'].shape[1:]}; they must agree."
        )
    labels = _checked_labels(name, np.concatenate([arrays["y_train"], arrays["y_test"]]))
    n_train = len(arrays["y_train"])
    return (
        arrays["x_train"],
        labels[:n_train],
        arrays["x_test"],
        labels[n_train:],
        int(labels.max()) + 1,
    )


def _check_split(name: str, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """One split's images and labels: one label per image, real and finite values."""
    if x.ndim < 2:
        raise DlkitError(
            f"Dataset {name!r}: x_{split} has shape {x.shape}; expected one row per "
            "example, e.g. (examples, 28, 28) or (examples, features)."
        )
    if y.ndim != 1:
        raise DlkitError(
            f"Dataset {name!r}: y_{split} has shape {y.shape}; expected one label per example."
        )
    if len(x) != len(y):
        raise DlkitError(
            f"Dataset {name!r}: the {split} images ({len(x)}) and labels ({len(y)}) "
            "differ in count."
        )
    if not len(x):
        raise DlkitError(f"Dataset {name!r}: the {split} split is empty.")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DlkitError(
            f"Dataset {name!r}: x_{split} holds {x.dtype} values; expected real numbers."
        )
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DlkitError(
            f"Dataset {name!r}: x_{split} holds NaN or infinite values "
            f"({int((~np.isfinite(x)).sum()):,} of them). Clean the data before training."
        )


def _checked_labels(name: str, labels: np.ndarray) -> np.ndarray:
    """All labels, as int64: whole class numbers from 0, two classes at least, no big gaps."""
    whole = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating)
        and np.isfinite(labels).all()
        and (labels == np.round(labels)).all()
    )
    if not whole:
        raise DlkitError(
            f"Dataset {name!r}: labels must be whole class numbers 0, 1, 2, ... "
            f"Received {labels.dtype} labels such as {labels[:3].tolist()}."
        )
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise DlkitError(
            f"Dataset {name!r}: labels must be class numbers from 0. Received: {labels.min()}."
        )
    present = np.unique(labels)
    if len(present) < 2:
        raise DlkitError(
            f"Dataset {name!r}: only one class ({present[0]}) is present; a classifier "
            "needs at least two."
        )
    if len(present) * 2 < present[-1] + 1:
        raise DlkitError(
            f"Dataset {name!r}: labels look out of range: {len(present)} classes are present "
            f"but the largest label is {present[-1]}, which would make {present[-1] + 1} "
            "classes. Number the classes 0 to N-1."
        )
    return labels
