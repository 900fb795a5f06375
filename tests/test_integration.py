"""Integration: real MNIST files from ../shared/data/mnist, skipped where they are absent."""

from __future__ import annotations

import pytest
from conftest import SHARED_MNIST

from dlkit import get_recipe
from dlkit.data import load_dataset
from dlkit.training import fit

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no MNIST files at {SHARED_MNIST}"),
]


def test_relu_preset_beats_90_percent_on_real_mnist():
    data = load_dataset(str(SHARED_MNIST), train_size=10_000)
    assert data.info.test_size == 10_000
    result = fit(get_recipe("deep-relu", epochs=2), data, seed=0, verbose=0)
    assert result.test_accuracy > 0.90
