"""Shared fixtures: small real data, a real MLflow store in a temp folder, clean registries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Ray instances the tests start bind their servers to the loopback only (Ray reads this as
# it is imported): nothing of a test listens beyond 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
import dlkit  # noqa: E402, F401  (its TensorFlow switches, set before any test loads TensorFlow)

# Real MNIST's IDX files, for the few tests that train on them: $DLKIT_MNIST_DIR, else a
# `shared/data/mnist` folder beside the checkout (where the project's CI keeps them).
SHARED_MNIST = Path(
    os.environ.get("DLKIT_MNIST_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits: small and offline, with a validation split."""
    from dlkit.data.dataset import load_dataset

    return load_dataset("digits", train_size=400, validation_split=0.1)


@pytest.fixture(scope="session", autouse=True)
def _cache_folder(tmp_path_factory: pytest.TempPathFactory):
    # dlkit keeps its template MLflow store in $XDG_CACHE_HOME/dlkit: one per test session.
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh sqlite MLflow store (artifacts land in mlruns/ beside it)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Nothing a test runs may write mlflow.db or mlruns/ into the checkout.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _restore_registries():
    # A recipe, source or model a test registers must not leak into the next test.
    from dlkit.data import sources
    from dlkit.recipes import builders
    from dlkit.recipes import recipe as recipes

    saved = dict(recipes._REGISTRY), dict(sources._SOURCES), dict(builders._BUILDERS)
    yield
    for registry, before in zip(
        (recipes._REGISTRY, sources._SOURCES, builders._BUILDERS), saved, strict=True
    ):
        registry.clear()
        registry.update(before)
