"""Logged Keras models: logged, found, downloaded and registered in one store.

A model is an MLflow logged model of its run, carrying what serving it needs: pinned
requirements, its own classes and their files. Each function takes the store's client, so
that models are never logged through MLflow's global tracking URI or active run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dlkit.errors import DlkitError
from dlkit.text import safe_name
from dlkit.tracking.calls import no_progress_bar, quiet_logger


def model_requirements() -> list[str]:
    """What serving a dlkit model needs, pinned to what trained it."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("tensorflow", "keras", "numpy")]


def custom_objects(model: Any) -> dict[str, Any] | None:
    """The classes of `model` that are not Keras's own (dlkit's maxout layer, a registered
    model's layers), by registered name, for MLflow's loader."""
    from dlkit.nn.models import custom_classes

    return custom_classes(model) or None


def code_paths(model: Any) -> list[str] | None:
    """The files of the modules that define `model`'s own classes, where they are not part
    of an installed package: logged with the model (its `code/`), so that a loader in
    another process imports them first."""
    found = set()
    for cls in (custom_objects(model) or {}).values():
        module = sys.modules.get(cls.__module__)
        file = getattr(module, "__file__", None)
        if (
            file
            and "site-packages" not in Path(file).parts
            and not cls.__module__.startswith("dlkit.")
        ):
            found.add(file)
    return sorted(found) or None


def log_model(
    client: Any, experiment_id: str, run_id: str, model: Any, input_example: Any, name: str
) -> str:
    """Logs a Keras model as an MLflow logged model of the run; returns its `models:/` URI.

    MLflow's TensorFlow flavor (which saves Keras 3 models as `.keras`),
    with a signature and an input example, so that `mlflow.pyfunc.load_model`,
    `mlflow models serve` and the Model Registry take it. The pip
    requirements are given, not inferred: inferring them takes seconds.
    The model is created in this tracker's store and experiment, without
    touching MLflow's global tracking URI or active run.
    """
    import mlflow.tensorflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model, infer_signature

    example = np.asarray(input_example[:2])
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    logged = client.create_logged_model(
        experiment_id,
        name=safe_name(name),
        source_run_id=run_id,
    )
    info = Model(artifact_path=None, run_id=run_id, model_id=logged.model_id)
    with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
        local = Path(tmp, "model")
        with quiet_logger("mlflow"):
            mlflow.tensorflow.save_model(
                model,
                str(local),
                mlflow_model=info,
                signature=signature,
                input_example=example,
                pip_requirements=model_requirements(),
                custom_objects=custom_objects(model),
                code_paths=code_paths(model),
            )
        client.log_model_artifacts(logged.model_id, str(local))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=0)])
    return f"models:/{logged.model_id}"


def model_uri(client: Any, tracking_uri: str, run_id: str) -> str | None:
    """Returns the `models:/` URI of the model a run logged, or `None` when it logged none."""
    try:
        outputs = client.get_run(run_id).outputs
    except Exception:
        raise DlkitError(
            f"No run {run_id!r} in the MLflow store {tracking_uri}. Check the run id "
            "and --tracking-uri / $MLFLOW_TRACKING_URI."
        ) from None
    models = outputs.model_outputs if outputs is not None else []
    return f"models:/{models[-1].model_id}" if models else None


def download_model(client: Any, tracking_uri: str, model_uri: str, folder: str | Path) -> Path:
    """Downloads a logged or registered model into `folder`; returns its `.keras` file.

    `model_uri` is `models:/<model id>`, `models:/NAME/VERSION` or
    `models:/NAME@ALIAS`, resolved in this tracker's store.
    """
    from mlflow.artifacts import download_artifacts

    try:
        location = _model_location(client, model_uri)
        with no_progress_bar():
            local = Path(download_artifacts(artifact_uri=location, dst_path=str(folder)))
    except DlkitError:
        raise
    except Exception as error:
        raise DlkitError(
            f"Cannot load {model_uri} from the MLflow store {tracking_uri}: "
            f"{str(error).splitlines()[0]}. Check the URI and --tracking-uri."
        ) from None
    found = sorted(local.rglob("*.keras"))
    if not found:
        raise DlkitError(f"{model_uri} holds no Keras model file: it was not logged by dlkit.")
    return found[0]


def register_model(
    client: Any, tracking_uri: str, run_id: str, name: str, description: str = ""
) -> str:
    """Registers the model `run_id` logged as a new version of `name`; returns its URI.

    The registered model is created on first use. The version links back
    to its run and logged model.
    """
    uri = model_uri(client, tracking_uri, run_id)
    if uri is None:
        raise DlkitError(f"Run {run_id} logged no model, so there is nothing to register.")
    model_id = uri.removeprefix("models:/")
    try:
        try:
            client.get_registered_model(name)
        except Exception:  # not registered yet
            client.create_registered_model(name)
        version = client.create_model_version(
            name,
            source=client.get_logged_model(model_id).artifact_location,
            run_id=run_id,
            model_id=model_id,
            description=description or None,
        )
    except Exception as error:
        raise DlkitError(
            f"Cannot register the model of run {run_id} as {name!r}: {str(error).splitlines()[0]}"
        ) from None
    return f"models:/{name}/{version.version}"


def _model_location(client: Any, model_uri: str) -> str:
    """Where a `models:/` URI's files are (the store's, not MLflow's global, registry)."""
    reference = model_uri.removeprefix("models:/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in reference:
        name, number = reference.rsplit("/", 1)
        version = client.get_model_version(name, number)
    else:
        return client.get_logged_model(reference).artifact_location
    if version.model_id:
        return client.get_logged_model(version.model_id).artifact_location
    return version.source
