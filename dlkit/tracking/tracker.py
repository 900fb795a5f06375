"""MLflow tracking: a `Tracker` opens, writes and reads back runs in one experiment.

With its helpers beside it (`stores`: URIs, sqlite stores, opening one; `calls`: store calls
that ride out a busy store; `liveness`: whether a run's process lives; `records`: runs as
plain values and the searches that find them; `datasets`: a dataset as MLflow inputs;
`logged_models`: models logged, found and registered), `dlkit.tracking` is the one package
that talks to MLflow. A `Tracker` opens runs (ending them FINISHED, FAILED or KILLED, never
left RUNNING), logs params, metrics, a training's results and artifacts, and reads back what
reports and resumed comparisons need. Training code stays MLflow-free, and nothing here
imports TensorFlow, so commands that only read runs start fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.entities import Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

import dlkit
from dlkit import keys, signals
from dlkit.errors import DlkitError
from dlkit.keys import CORRECT_ARTIFACT
from dlkit.tracking import logged_models, records
from dlkit.tracking.calls import (
    BUSY_PATIENCE,
    INTERRUPTIBLE_LOGGERS,
    METRIC_BATCH,
    REPORTED_BY_DLKIT,
    EpochMetrics,
    Rounds,
    beside_another_writer,
    locked,
    no_progress_bar,
    signal_name,
    stamped,
)
from dlkit.tracking.datasets import dataset_inputs
from dlkit.tracking.liveness import HEARTBEAT_EVERY, process_alive
from dlkit.tracking.records import RunRecord
from dlkit.tracking.stores import (
    connect,
    experiment_id,
    resolve_tracking_uri,
    ui_address,
)

if TYPE_CHECKING:
    from dlkit.data.dataset import Dataset
    from dlkit.nn.results import TrainResult

_BATCH = 100  # MLflow's log_batch accepts at most 100 params per call


class Tracker:
    """Logs dlkit runs into one MLflow experiment.

    Args:
        tracking_uri: MLflow tracking URI. Defaults to `$MLFLOW_TRACKING_URI`,
            else `sqlite:///mlflow.db` in the working directory with artifacts
            in `mlruns/` beside it (MLflow's own default layout).
        experiment: MLflow experiment name. Defaults to `"dlkit"`; `None`
            opens the store only, for reading runs and models by id.
        create: Create the experiment when missing. Defaults to `True`;
            `False` raises `DlkitError` instead (for commands that only read).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = "dlkit",
        *,
        create: bool = True,
    ):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client, found = connect(self.tracking_uri, experiment)
        self.experiment = experiment
        self.busy_patience = BUSY_PATIENCE
        self._ended: set[str] = set()  # runs of `runs` ended early, by `finish` or `fail`
        self._held: set[str] = set()  # runs this tracker opened and has not ended yet
        self._heartbeat: threading.Thread | None = None
        self.experiment_id = (
            None  # reads of runs and models by id only
            if experiment is None
            else experiment_id(self.client, self.tracking_uri, experiment, found, create=create)
        )

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        *,
        tags: dict[str, str] | None = None,
        parent_id: str | None = None,
        resume_id: str | None = None,
        opened: bool = False,
    ) -> Iterator[str]:
        """Opens a run (or reopens `resume_id`) and yields its id; ends it by how the block exits.

        With `opened`, `resume_id` is a run this process opened itself a moment
        ago (`claim_parent`): the block only ends it.

        A normal exit ends the run FINISHED, an exception FAILED and an
        interrupt (Ctrl-C, SIGTERM) KILLED, with the reason in the
        `dlkit.failure` tag. Whatever is raised after a signal arrived counts
        as the interrupt. The exception propagates. The run is tagged with
        its process (`dlkit.host`, `dlkit.pid`), so that a later run can tell
        one left RUNNING by a killed process (see `close_orphans`).
        """
        run_ids: list[str] = []
        with self._ending(run_ids):
            with signals.deferred():  # opened and known to the clean-up in one step
                if opened and resume_id:
                    run_ids.append(resume_id)
                else:
                    run_ids.append(self._open(name, tags, parent_id, resume_id))
            yield run_ids[0]

    @contextlib.contextmanager
    def runs(
        self,
        names: Sequence[str],
        *,
        tags: Sequence[dict[str, str]],
        parent_id: str | None = None,
    ) -> Iterator[list[str]]:
        """Opens one run per name (a pack's members) and yields their ids; ends them as `run`.

        A run the block ends itself (`finish`, `fail`) stays as it ended; every
        other one ends by how the block exits, as `run` ends its one run.
        """
        run_ids: list[str] = []
        with self._ending(run_ids):
            for name, run_tags in zip(names, tags, strict=True):
                # Opened and known to the clean-up in one step: a signal held by the store
                # call that creates a run is raised once the run is on the list it ends.
                with signals.deferred():
                    run_ids.append(self._open(name, run_tags, parent_id, None))
            yield list(run_ids)

    def finish(self, run_id: str) -> None:
        """Ends a run of `runs` FINISHED now, while the others go on."""
        self._end(run_id, "FINISHED")
        self._ended.add(run_id)

    def withdraw(self, run_id: str) -> None:
        """Deletes a run of `run` or `runs` that another process's run stands for (see
        `dlkit.tracking.claims`), with any model it logged (which would otherwise stay in
        the experiment's list of models); the block leaves it alone."""
        self._held.discard(run_id)
        outputs = self.client.get_run(run_id).outputs
        for output in outputs.model_outputs if outputs else []:
            self.client.delete_logged_model(output.model_id)
        self.client.delete_run(run_id)
        self._ended.add(run_id)

    def fail(self, run_id: str, reason: str) -> None:
        """Ends a run of `runs` FAILED now, with `reason`, while the others go on."""
        self._end(run_id, "FAILED", reason)
        self._ended.add(run_id)

    def _open(
        self, name: str, tags: dict[str, str] | None, parent_id: str | None, resume_id: str | None
    ) -> str:
        all_tags = {
            MLFLOW_RUN_NAME: name,
            keys.VERSION: dlkit.__version__,
            keys.ONEDNN: dlkit.ONEDNN,
            keys.HOST: socket.gethostname(),
            keys.PID: str(os.getpid()),
            **(tags or {}),
        }
        if parent_id:  # shown under `parent_id`, unless the tags nest it deeper
            all_tags.setdefault(MLFLOW_PARENT_RUN_ID, parent_id)
            all_tags.setdefault(keys.COMPARISON, parent_id)
        all_tags[keys.HEARTBEAT] = f"{time.time():.3f}"
        if not resume_id:
            run_id = self.client.create_run(
                self.experiment_id, tags=all_tags, run_name=name
            ).info.run_id
        else:
            run_id = resume_id
            self.client.update_run(resume_id, status="RUNNING")
            if keys.FAILURE in self.client.get_run(resume_id).data.tags:
                self.client.delete_tag(resume_id, keys.FAILURE)
            self.set_tags(resume_id, all_tags)
        self._hold(run_id)
        return run_id

    def _hold(self, run_id: str) -> None:
        """Keeps `run_id`'s heartbeat renewed until the run ends (see `process_alive`)."""
        self._held.add(run_id)
        if self._heartbeat is None or not self._heartbeat.is_alive():
            self._heartbeat = threading.Thread(
                target=self._beat, name="dlkit-heartbeat", daemon=True
            )
            self._heartbeat.start()

    def _beat(self) -> None:
        client = self.client._client  # this thread's writes are not the main thread's to defer
        while True:
            time.sleep(HEARTBEAT_EVERY)
            beat = [RunTag(keys.HEARTBEAT, f"{time.time():.3f}")]
            for run_id in list(self._held):
                try:
                    client.log_batch(run_id, tags=beat)
                except Exception:  # a busy store or a run ended meanwhile: the next beat
                    pass

    @contextlib.contextmanager
    def _ending(self, run_ids: list[str]) -> Iterator[None]:
        """Ends `run_ids` (those not ended already) by how the block exits."""

        def end(status: str, reason: str | None = None) -> None:
            for run_id in [r for r in run_ids if r not in self._ended]:
                if reason is None:
                    self._end(run_id, status)
                else:
                    self._end_quietly(run_id, status, reason)

        try:
            yield
        except KeyboardInterrupt as interrupt:
            end("KILLED", f"interrupted ({signal_name(interrupt)})")
            raise
        except BaseException as error:
            if signals.received() is not None:  # e.g. TensorFlow re-raised it as its own error
                interrupt = signals.Interrupted(signals.received())
                end("KILLED", f"interrupted ({signal_name(interrupt)})")
                raise interrupt from error
            end("FAILED", f"{type(error).__name__}: {error}")
            raise
        else:
            end("FINISHED")

    def runs_page(self, run_id: str | None = None, *, address: str | None = None) -> str:
        """Returns the UI address of this experiment's runs table, or of one run's page.

        The runs table, not the experiment's bare address: MLflow 3 opens an
        experiment on its GenAI overview, where training runs are not listed. The
        address asks for the model-training layout (`workflowType`), which MLflow
        3's UI otherwise takes from the browser's last choice, GenAI at first.
        `address` is the UI's (e.g. `http://127.0.0.1:5123`); it defaults to
        `ui_address(tracking_uri)`.
        """
        address = address or ui_address(self.tracking_uri)
        page = f"{address}/#/experiments/{self.experiment_id}"
        page = f"{page}/runs/{run_id}" if run_id else f"{page}/runs"
        return f"{page}?workflowType=machine_learning"

    def close_orphans(self, parent_id: str) -> int:
        """Ends as KILLED the children of `parent_id` left RUNNING by a process that is gone.

        A SIGKILL, a crash or a second Ctrl-C gives a process no chance to end
        its runs. A RUNNING child whose process no longer exists on this
        machine (or that predates the process tags) is one of those.

        Returns:
            How many runs were ended.
        """
        ended = 0
        for run in self.children(parent_id, status="RUNNING"):
            if process_alive(run.tags):
                continue
            self._end(
                run.run_id,
                "KILLED",
                "its process ended without closing the run (killed, crashed or stopped at once)",
            )
            ended += 1
        return ended

    def _end(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Ends a run, riding out a store that another process keeps locked for a while.

        Raises:
            DlkitError: the store stayed locked for `busy_patience` seconds.
        """
        self._held.discard(run_id)
        REPORTED_BY_DLKIT.ending.add(threading.get_ident())
        try:
            self._end_patiently(run_id, status, reason)
        finally:
            REPORTED_BY_DLKIT.ending.discard(threading.get_ident())

    def _end_patiently(self, run_id: str, status: str, reason: str | None) -> None:
        deadline, pause = time.monotonic() + self.busy_patience, 0.1
        while True:
            try:
                if reason is not None:
                    self.client.set_tag(run_id, keys.FAILURE, reason[:5000])
                self.client.set_terminated(run_id, status)
                return
            except Exception as error:
                if not locked(error):
                    raise
                if time.monotonic() + pause > deadline:
                    raise DlkitError(
                        f"Could not end MLflow run {run_id} {status}: the store "
                        f"{self.tracking_uri} stayed locked by another process. Run the same "
                        "command again: it marks the run KILLED and trains it again."
                    ) from None
            time.sleep(pause)
            pause = min(2 * pause, 5.0)

    def _end_quietly(self, run_id: str, status: str, reason: str) -> None:
        """Ends a run on the way out of an error or an interrupt: a failure here is one line.

        The error or interrupt that is ending the run goes on; a traceback from the
        store would hide it. The next run of the command marks a run left RUNNING KILLED.
        """
        try:
            self._end(run_id, status, reason)
        except Exception as error:
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            if not isinstance(error, DlkitError):
                text = (
                    f"Could not end MLflow run {run_id} {status} ({text}); "
                    "the next run of the command marks it KILLED."
                )
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Logs params; tuples and booleans are written the way the CLI reads them."""
        items = [Param(key, _param_text(value)) for key, value in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])

    def log_batch(
        self,
        run_id: str,
        *,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        step: int = 0,
        tags: dict[str, Any] | None = None,
        curves: EpochMetrics | None = None,
    ) -> None:
        """Logs a few params, metrics (at `step`) and tags in one write to the store, with
        the per-epoch metrics `curves` still holds (a run's last, most often all of them)."""
        ended = stamped(metrics or {}, step)
        history = curves.take() if curves is not None else []
        while len(history) + len(ended) > METRIC_BATCH - _BATCH:  # room for params and tags
            self.client.log_batch(run_id, metrics=history[:METRIC_BATCH])
            history = history[METRIC_BATCH:]
        self.client.log_batch(
            run_id,
            metrics=[*history, *ended],
            params=[Param(key, _param_text(value)) for key, value in (params or {}).items()],
            tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
        )

    def log_new_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Logs the params a (resumed) run does not have yet; MLflow never changes a param.

        Another process may be logging them to the same run (a parent two processes
        share): what it wrote first is read again, and the rest logged."""

        def log() -> None:
            logged = self.client.get_run(run_id).data.params
            self.log_params(run_id, {k: v for k, v in params.items() if k not in logged})

        beside_another_writer(log)

    def set_description(self, run_id: str, text: str) -> None:
        """Sets the run's description, shown on its page in the MLflow UI (Markdown)."""
        self.set_tags(run_id, {"mlflow.note.content": text[:_MAX_NOTE]})

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.client.log_batch(run_id, metrics=stamped(metrics, step))

    def epoch_metrics(self, run_id: str, every: float = 2.0) -> EpochMetrics:
        """A sink for per-epoch metrics that writes to MLflow at most every `every` seconds."""
        return self.pack_metrics([run_id], every)[0]

    def pack_metrics(self, run_ids: Sequence[str], every: float = 2.0) -> list[EpochMetrics]:
        """One sink per run for runs that train together (a pack's members): they write in
        rounds, all at once, at most every `every` seconds (see `EpochMetrics`)."""
        rounds = Rounds(every)
        rounds.sinks = [EpochMetrics(self.client, run_id, rounds) for run_id in run_ids]
        return list(rounds.sinks)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dataset(self, run_id: str, data: Dataset) -> None:
        """Logs the data's three splits as the run's dataset inputs (MLflow's Datasets column;
        see `dlkit.tracking.datasets`)."""
        inputs = dataset_inputs(data)
        # MLflow skips a dataset the store holds already: a retry after another process
        # logged the same ones to a parent they share logs nothing twice.
        beside_another_writer(lambda: self.client.log_inputs(run_id, datasets=inputs))

    def log_result(
        self,
        run_id: str,
        result: TrainResult,
        *,
        input_example: np.ndarray | None = None,
        params: dict[str, Any] | None = None,
        curves: EpochMetrics | None = None,
    ) -> None:
        """Logs a finished training: summary metrics, tags and artifacts.

        The artifacts `recipe.json` (every field of the recipe) and
        `test_correct.npy` (which test examples it got right, for paired
        verdicts), and with an `input_example` (a few inputs) the model as an
        MLflow logged model (see `log_model`). No plot: MLflow's UI charts the
        per-epoch metrics, and a comparison's report draws every variant's
        curves; drawing one per run cost half a second of each. `params` known
        only now are logged with the metrics, and so are the per-epoch metrics
        `curves` still holds.
        """
        self.log_batch(
            run_id,
            params=params,
            metrics=result.summary_metrics(),
            step=result.epochs_run,
            tags={keys.DEVICE: result.device},
            curves=curves,
        )
        with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
            recipe_file = Path(tmp, "recipe.json")
            recipe_file.write_text(json.dumps(result.recipe.to_dict(), indent=2) + "\n")
            np.save(Path(tmp, CORRECT_ARTIFACT), np.asarray(result.test_correct, dtype=bool))
            self.client.log_artifacts(run_id, tmp)
        if input_example is not None:
            self.log_model(run_id, result.model, input_example, name=result.recipe.name)

    def log_model(self, run_id: str, model: Any, input_example: np.ndarray, *, name: str) -> str:
        """Logs a Keras model as an MLflow logged model of the run; returns its `models:/` URI
        (see `dlkit.tracking.logged_models.log_model`)."""
        return logged_models.log_model(
            self.client, self.experiment_id, run_id, model, input_example, name
        )

    def model_uri(self, run_id: str) -> str | None:
        """Returns the `models:/` URI of the model a run logged, or `None` when it logged none."""
        return logged_models.model_uri(self.client, self.tracking_uri, run_id)

    def download_model(self, model_uri: str, folder: str | Path) -> Path:
        """Downloads a logged or registered model into `folder`; returns its `.keras` file."""
        return logged_models.download_model(self.client, self.tracking_uri, model_uri, folder)

    def register_model(self, run_id: str, name: str, *, description: str = "") -> str:
        """Registers the model `run_id` logged as a new version of `name`; returns its URI."""
        return logged_models.register_model(
            self.client, self.tracking_uri, run_id, name, description
        )

    # Reads: everything a report or a resumed comparison needs, as plain values.

    def latest_parent(self, like: dict[str, str] | None = None) -> str | None:
        """Returns the id of the experiment's most recent comparison parent run, if any, of
        one kind with `like` (see `dlkit.tracking.records.latest_parent`)."""
        return records.latest_parent(self.client, self.experiment_id, like)

    def claim_parent(
        self, name: str, tags: dict[str, str], like: dict[str, str] | None = None
    ) -> tuple[str, bool]:
        """Opens a new comparison parent, or joins the one another process opened first.

        Two processes that start one comparison on a store with no parent yet
        both open one; each then keeps the earliest RUNNING parent of a live
        process and deletes its own if that is not it, so their members meet
        under one parent (see `dlkit.tracking.claims`).

        Args:
            name: The parent's name.
            tags: Its tags.
            like: Tags another process's parent must carry the same to be joined (see
                `latest_parent`). Defaults to `None`: any parent.

        Returns:
            The parent's id, and whether it is another process's.
        """
        mine = self._open(name, tags, None, None)
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{keys.ROLE}` = 'parent' and attributes.status = 'RUNNING'",
        )
        live = [
            records.record(run)
            for run in found
            if process_alive(dict(run.data.tags))
            and all(run.data.tags.get(k) == v for k, v in (like or {}).items())
        ]
        first = min(live, key=lambda r: (r.start_time, r.run_id), default=None)
        if first is None or first.run_id == mine:
            return mine, False
        self._held.discard(mine)
        self.client.delete_run(mine)
        return first.run_id, True

    def children(
        self,
        parent_id: str,
        *,
        status: str | None = None,
        tags: dict[str, str] | None = None,
        untagged: bool = True,
    ) -> list[RunRecord]:
        """Returns the runs of the comparison under `parent_id`, newest first, optionally of
        one status and with these tag values (see `dlkit.tracking.records.children`)."""
        return records.children(
            self.client, self.experiment_id, parent_id, status, tags, untagged=untagged
        )

    def metric_history(self, run_id: str, key: str) -> dict[int, float]:
        """Returns a metric's values by step (empty when it was never logged)."""
        return {m.step: m.value for m in self.client.get_metric_history(run_id, key)}

    def read_array(self, run_id: str, path: str) -> np.ndarray | None:
        """Returns a `.npy` artifact, or `None` when the run has no such file."""
        return self._read(run_id, path, lambda local: np.load(local, allow_pickle=False))

    def read_bytes(self, run_id: str, path: str) -> bytes | None:
        """Returns an artifact's bytes, or `None` when the run has no such file."""
        return self._read(run_id, path, lambda local: Path(local).read_bytes())

    def list_artifacts(self, run_id: str, folder: str) -> list[str]:
        """Returns the names of the files in a run's artifact folder (none when it has none)."""
        with no_progress_bar():
            found = self.client.list_artifacts(run_id, folder)
        return [Path(item.path).name for item in found if not item.is_dir]

    def delete_artifact(self, run_id: str, path: str) -> None:
        """Deletes one of a run's artifacts, where its artifact store can (local folders and
        MLflow servers can); a file already gone is no error."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        artifacts = self.client.get_run(run_id).info.artifact_uri
        repository = get_artifact_repository(artifacts, tracking_uri=self.tracking_uri)
        with contextlib.suppress(FileNotFoundError, NotImplementedError):
            repository.delete_artifacts(path)

    def read_artifact(self, run_id: str, path: str) -> str | None:
        """Returns a text artifact's content, or `None` when the run has no such file."""
        return self._read(run_id, path, lambda local: Path(local).read_text())

    def _read(self, run_id: str, path: str, load: Callable[[str], Any]) -> Any:
        with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp, no_progress_bar():
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except Exception:  # MLflow raises several kinds for a missing artifact
                return None
            return load(local)


_MAX_NOTE = 60_000  # a description is a tag; keep it well inside MLflow's tag limit


# Installed once, on import: the filter drops only what dlkit reports itself (see above).
for _name in INTERRUPTIBLE_LOGGERS:
    logging.getLogger(_name).addFilter(REPORTED_BY_DLKIT)


def _param_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
