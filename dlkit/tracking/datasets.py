"""A dataset as MLflow's dataset inputs: each split with its digest, its source and its context."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlkit import keys

if TYPE_CHECKING:
    from dlkit.data.dataset import Dataset

_DATASET_PAGES = {
    "digits": "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
}


def dataset_inputs(data: Dataset) -> list[Any]:
    """The data's three splits as MLflow dataset inputs: each is the dataset's name, a digest
    of its examples, where it comes from, its shape, and the split as its context."""
    from mlflow.data import from_numpy
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for split in ("train", "validation", "test"):
        x, y = data.arrays(split)
        dataset = from_numpy(
            x,
            targets=y,
            source=_dataset_source(data.info.source),
            name=data.info.name,
            digest=data.digest(split),
        )
        # A private reach, the only way: MlflowClient.log_inputs takes entities, and the
        # public mlflow.log_input logs to the fluent active run only, not to a run by id.
        inputs.append(
            DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, split)])
        )
    return inputs


def _dataset_source(source: str) -> Any:
    """Where a dataset comes from, as MLflow names sources: a local file, a web page, or code."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    path = Path(source).expanduser()
    if path.exists():
        return resolve_dataset_source(str(path.resolve()))
    if source in _DATASET_PAGES:
        return HTTPDatasetSource(_DATASET_PAGES[source])
    if source != "synthetic" and "/" not in source:  # a TFDS name, e.g. mnist or mnist:3.0.1
        name = source.split(":")[0]
        return HTTPDatasetSource(f"https://www.tensorflow.org/datasets/catalog/{name}")
    return CodeDatasetSource({keys.SOURCE: source})
