"""Shared fixtures: small real data, a real MLflow store in a temp folder, clean registries."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits: small and offline, with a validation split."""
    from dlkit.data import load_dataset

    return load_dataset("digits", train_size=400, validation_split=0.1)


@pytest.fixture(scope="session")
def _store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Creating a sqlite store runs MLflow's schema migrations (seconds); do it
    # once and hand every test a copy of the result.
    from dlkit.tracking import Tracker

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    Tracker(f"sqlite:///{path}", "template")
    return path


@pytest.fixture(scope="session")
def new_store(_store_template: Path):
    """Returns a function that puts a fresh, migrated sqlite store in a folder and gives its URI."""

    def make(folder: Path) -> str:
        shutil.copyfile(_store_template, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return make


@pytest.fixture
def tracking_uri(tmp_path: Path, new_store) -> str:
    """A fresh sqlite MLflow store (artifacts land in mlruns/ beside it)."""
    return new_store(tmp_path)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Nothing a test runs may write mlflow.db or mlruns/ into the checkout.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _restore_registries():
    # A recipe or source a test registers must not leak into the next test.
    from dlkit import recipes, sources

    saved = dict(recipes._REGISTRY), dict(sources._SOURCES)
    yield
    recipes._REGISTRY.clear()
    recipes._REGISTRY.update(saved[0])
    sources._SOURCES.clear()
    sources._SOURCES.update(saved[1])
