"""MLflow tracking: the one module that talks to MLflow.

A `Tracker` opens runs (ending them FINISHED, FAILED or KILLED, never left
RUNNING), logs params, per-epoch metrics through a Keras callback, and a
training's results and artifacts. Training code stays MLflow-free.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

import dlkit
from dlkit.errors import DlkitError
from dlkit.text import safe_name

if TYPE_CHECKING:
    from dlkit.training import TrainResult

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
FAILURE_TAG = "dlkit.failure"
_BATCH = 100  # MLflow's log_batch accepts at most 100 params per call


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """Returns `tracking_uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class Tracker:
    """Logs dlkit runs into one MLflow experiment.

    Args:
        tracking_uri: MLflow tracking URI. Defaults to `$MLFLOW_TRACKING_URI`,
            else `sqlite:///mlflow.db` in the working directory with artifacts
            in `mlruns/` beside it (MLflow's own default layout).
        experiment: MLflow experiment name, created when missing.
            Defaults to `"dlkit"`.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "dlkit"):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # MLflow draws a progress bar for every artifact download; reports fetch several.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
        except Exception as error:
            raise DlkitError(
                f"Cannot open the MLflow tracking store {self.tracking_uri!r}: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}. "
                "Check --tracking-uri / $MLFLOW_TRACKING_URI."
            ) from None
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=_artifact_location(self.tracking_uri, experiment)
            )
        else:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            self.experiment_id = found.experiment_id
        self.experiment = experiment

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        *,
        tags: dict[str, str] | None = None,
        parent_id: str | None = None,
        resume_id: str | None = None,
    ) -> Iterator[str]:
        """Opens a run (or reopens `resume_id`) and yields its id; ends it by how the block exits.

        A normal exit ends the run FINISHED, an exception FAILED and an
        interrupt (Ctrl-C) KILLED, with the reason in the `dlkit.failure` tag.
        The exception propagates.
        """
        all_tags = {MLFLOW_RUN_NAME: name, "dlkit.version": dlkit.__version__, **(tags or {})}
        if parent_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
        if resume_id:
            run_id = resume_id
            self.client.update_run(run_id, status="RUNNING")
            if FAILURE_TAG in self.client.get_run(run_id).data.tags:
                self.client.delete_tag(run_id, FAILURE_TAG)
            self.set_tags(run_id, all_tags)
        else:
            run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
            run_id = run.info.run_id
        try:
            yield run_id
        except KeyboardInterrupt:
            self._end(run_id, "KILLED", "interrupted by the user (KeyboardInterrupt)")
            raise
        except BaseException as error:
            self._end(run_id, "FAILED", f"{type(error).__name__}: {error}")
            raise
        else:
            self.client.set_terminated(run_id, "FINISHED")

    def _end(self, run_id: str, status: str, reason: str) -> None:
        self.client.set_tag(run_id, FAILURE_TAG, reason[:5000])
        self.client.set_terminated(run_id, status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Logs params; tuples and booleans are written the way the CLI reads them."""
        items = [Param(key, _param_text(value)) for key, value in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def callback(self, run_id: str) -> keras.callbacks.Callback:
        """Returns a Keras callback that logs every epoch's metrics to `run_id`."""
        return MlflowMetricsLogger(self, run_id)

    def log_result(self, run_id: str, result: TrainResult, *, save_model: bool = True) -> None:
        """Logs a finished training: summary metrics, tags and artifacts.

        Artifacts: `model/model.keras` (load with `dlkit.load_model`),
        `recipe.json` and `learning_curves.png`.
        """
        from dlkit.plots import plot_learning_curves

        self.log_metrics(run_id, result.summary_metrics(), step=result.epochs_run)
        self.set_tags(run_id, {"dlkit.device": result.device})
        with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
            recipe_file = Path(tmp, "recipe.json")
            recipe_file.write_text(json.dumps(result.recipe.to_dict(), indent=2) + "\n")
            self.log_artifact(run_id, recipe_file)
            figure = plot_learning_curves({result.recipe.name: [result.history]})
            figure.savefig(Path(tmp, "learning_curves.png"), dpi=100)
            import matplotlib.pyplot as plt

            plt.close(figure)
            self.log_artifact(run_id, Path(tmp, "learning_curves.png"))
            if save_model:
                model_file = Path(tmp, "model.keras")
                result.model.save(model_file)
                self.log_artifact(run_id, model_file, "model")


class MlflowMetricsLogger(keras.callbacks.Callback):
    """Logs each epoch's Keras logs as MLflow metrics, step = epoch number (1-based).

    One `log_batch` call per epoch keeps the cost to a few milliseconds an epoch.
    """

    def __init__(self, tracker: Tracker, run_id: str):
        super().__init__()
        self.tracker = tracker
        self.run_id = run_id

    def on_epoch_end(self, epoch, logs=None):
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        if metrics:
            self.tracker.log_metrics(self.run_id, metrics, step=epoch + 1)


def _param_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    # Keep artifacts beside a local sqlite store (mlflow.db -> mlruns/), as
    # MLflow does for ./mlflow.db, instead of in whatever folder runs it.
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()
    return (db.parent / "mlruns" / safe_name(experiment)).as_uri()
