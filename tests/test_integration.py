"""Integration: real MNIST files ($DLKIT_MNIST_DIR, see conftest), skipped where they are absent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import SHARED_MNIST

from dlkit import get_recipe
from dlkit.comparison.experiment_file import load_experiment
from dlkit.data.dataset import load_dataset
from dlkit.nn.training import fit

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no MNIST files at {SHARED_MNIST}"),
]


def test_relu_preset_beats_90_percent_on_real_mnist():
    data = load_dataset(str(SHARED_MNIST), train_size=10_000)
    assert data.info.test_size == 10_000
    result = fit(get_recipe("deep-relu", epochs=2), data, seed=0, verbose=0)
    assert result.test_accuracy > 0.90


def test_classic_demo_ordering_holds_at_reduced_epochs(tmp_path):
    from dlkit import compare

    # The four variants that carry the lesson, one seed, fewer epochs: 8 of the 20, which is
    # when sigmoid + cross-entropy has left its plateau; 3 for the slow 13-layer net.
    experiment = load_experiment(EXPERIMENTS / "classic_demo.yaml")
    epochs = {"sigmoid-mse": 8, "sigmoid-crossentropy": 8, "sigmoid-13-layers": 3, "relu": 8}
    experiment = dataclasses.replace(
        experiment,
        variants=tuple(
            dataclasses.replace(v, overrides={**v.overrides, "epochs": epochs[v.label]})
            for v in experiment.variants
            if v.label in epochs
        ),
        seeds=(0,),
        published={},
        expect=(),
    )
    result = compare(
        experiment,
        dataset=str(SHARED_MNIST),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        output_dir=None,
        verbose=0,
        log=lambda line: None,
    )
    accuracy = result.table.set_index("variant")["test_accuracy_mean"]
    assert accuracy["relu"] > accuracy["sigmoid-13-layers"] + 0.5  # ReLU >> sigmoid when deep
    assert accuracy["sigmoid-crossentropy"] > accuracy["sigmoid-mse"] + 0.3  # CE >> MSE
    assert accuracy["relu"] > 0.9
