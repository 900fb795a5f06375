"""MLflow tracking: the one module that talks to MLflow, for reads and writes alike.

A `Tracker` opens runs (ending them FINISHED, FAILED or KILLED, never left
RUNNING), logs params, metrics, a training's results and artifacts, and reads
back what reports and resumed comparisons need: the latest parent, its
children as plain `RunRecord`s, metric histories and artifacts. Training code
stays MLflow-free, and nothing here imports TensorFlow, so commands that only
read runs start fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

import dlkit
from dlkit import keys, signals
from dlkit.errors import DlkitError
from dlkit.keys import CORRECT_ARTIFACT
from dlkit.text import safe_name

if TYPE_CHECKING:
    from dlkit.data.dataset import Dataset
    from dlkit.nn.training import TrainResult

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_UI_PORT = 5000
_BATCH = 100  # MLflow's log_batch accepts at most 100 params per call
_METRIC_BATCH = 1000  # and at most 1,000 metrics
# How long the write that ends a run rides out a store another process keeps locked, in
# seconds, on top of the 20 s that MLflow's own SQLite busy timeout waits in each attempt.
_BUSY_PATIENCE = 60.0
# A process renews the heartbeat tag of the runs it holds this often, in seconds; a run of
# another machine whose heartbeat is older than HEARTBEAT_STALE is taken to be orphaned (the
# clocks of the two machines may differ by less than the difference of the two).
HEARTBEAT_EVERY = 60.0
HEARTBEAT_STALE = 600.0
# What SQLite says when MLflow meets tables that a stopped first run left half-built.
_HALF_MADE = ("already exists", "duplicate column", "no such table", "no such column")


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """Returns `tracking_uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def ui_address(tracking_uri: str | None = None, *, port: int = DEFAULT_UI_PORT) -> str:
    """Returns where the MLflow UI for this store is: the server itself, or `dlkit ui`'s address."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{port}"


def latest_experiment(tracking_uri: str | None = None) -> str | None:
    """Returns the name of the experiment with the most recent dlkit run in the store, if any."""
    client = StoreCalls(MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri)))
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = (
        client.search_runs(
            ids,
            f"tags.`{keys.VERSION}` != ''",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if ids
        else []
    )
    return client.get_experiment(runs[0].info.experiment_id).name if runs else None


def _signal_name(interrupt: BaseException) -> str:
    signum = getattr(interrupt, "signum", None)
    return "Ctrl-C" if signum in (None, signal.SIGINT) else signal.Signals(signum).name


def process_alive(tags: dict[str, str], now: float | None = None) -> bool:
    """Whether the process a run's `dlkit.host`/`dlkit.pid` tags name still runs.

    On this machine, the pid says so. On another one, the run's heartbeat
    does: it is renewed every `HEARTBEAT_EVERY` seconds while the process
    holds the run, so one older than `HEARTBEAT_STALE` is a process gone. A
    run of another machine without a heartbeat (an older dlkit) counts as alive.
    """
    host, pid = tags.get(keys.HOST), tags.get(keys.PID)
    if host is None or pid is None or not pid.isdigit():
        return False
    if host != socket.gethostname():
        beat = tags.get(keys.HEARTBEAT, "")
        if not beat.replace(".", "", 1).isdigit():
            return True  # nothing here can tell, so leave it
        return (time.time() if now is None else now) - float(beat) < HEARTBEAT_STALE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """Whether `pid` has ended but its parent has not reaped it yet (Linux; elsewhere
    no such process is told apart)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def create_sqlite_store(tracking_uri: str) -> None:
    """Creates a missing local sqlite store whole, or not at all, and fast.

    MLflow builds a new store's tables in place, which takes seconds, so a
    signal meanwhile, or two processes starting together, can leave a file
    that never opens again. Here the store is made in a temporary file beside
    it and moved into place in one step, under a lock file beside it, so a
    second process waits and then opens the finished store. The tables are
    built once per machine and MLflow version into a template in
    `$XDG_CACHE_HOME/dlkit` (default `~/.cache/dlkit`), which every new store
    copies. Other URIs are left alone.
    """
    if not tracking_uri.startswith("sqlite:///") or tracking_uri.endswith(":memory:"):
        return
    path = sqlite_path(tracking_uri)
    if path.exists():
        return
    if not path.parent.is_dir():
        raise DlkitError(
            f"Cannot create the MLflow store {path}: the folder {path.parent} does not exist. "
            "Create it, or point --tracking-uri at an existing folder."
        )
    artifacts = path.parent / "mlruns"  # where MLflow puts them for ./mlflow.db

    def make(temporary: Path) -> None:
        template = _store_template()
        if template is None:
            _build_store(temporary, artifacts)
            return
        shutil.copyfile(template, temporary)
        with contextlib.closing(sqlite3.connect(temporary)) as db, db:
            db.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                (artifacts.as_uri(),),
            )

    _create_whole(path, make)


def _store_template() -> Path | None:
    """Returns an empty, migrated store for this MLflow version (built on first use), or None.

    None where no cache folder can be written: the store is then built in place.
    """
    import mlflow

    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlkit"
    template = folder / f"mlflow-{mlflow.__version__}.db"
    if template.exists():
        return template
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _create_whole(template, lambda temporary: _build_store(temporary, folder / "mlruns"))
    except OSError:
        return None
    return template


def _create_whole(path: Path, make: Callable[[Path], None]) -> None:
    """Has `make` write a temporary file beside `path`, then moves it into place in one step.

    Under a lock file beside it (`.<name>.lock`): a process that waited finds `path` made
    and does nothing.
    """
    with filelock.FileLock(path.with_name(f".{path.name}.lock")):
        if path.exists():
            return
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            make(temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def _build_store(path: Path, artifacts: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{path}"
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    SqlAlchemyStore(uri, artifacts.as_uri())
    # A private reach, the only way: MLflow caches one engine per URI on the class, with no
    # public close, and the file is moved into place next, so its engine must be let go.
    SqlAlchemyStore._engine_map.pop(uri).dispose()


def sqlite_path(tracking_uri: str) -> Path:
    """The file of a `sqlite:///` tracking URI, absolute (relative paths are from here)."""
    return Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()


def portable_uri(tracking_uri: str) -> str:
    """Returns `tracking_uri` with a relative sqlite path made absolute.

    `sqlite:///mlflow.db` means "in the working folder"; a worker running
    elsewhere must be told which file that was.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or tracking_uri.startswith(prefix + "/"):
        return tracking_uri
    path = tracking_uri.removeprefix(prefix)
    if path == ":memory:" or Path(path).is_absolute():
        return tracking_uri
    return prefix + str(Path(path).expanduser().resolve())


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
        try:
            # Alembic logs a line per migration (INFO) while MLflow builds or checks tables.
            with _quiet_logger("alembic", logging.WARNING):
                create_sqlite_store(self.tracking_uri)
                self.client = StoreCalls(MlflowClient(tracking_uri=self.tracking_uri))
                found = self.client.get_experiment_by_name(experiment) if experiment else None
        except DlkitError:
            raise
        except Exception as error:
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            if self.tracking_uri.startswith("sqlite:") and any(sign in text for sign in _HALF_MADE):
                db = sqlite_path(self.tracking_uri)
                raise DlkitError(
                    f"The MLflow store {db} was left half-created ({text}), most likely by a "
                    "first run that was interrupted under an older dlkit. It holds no runs: "
                    f"move it aside (mv {db} {db}.broken) and run again."
                ) from None
            raise DlkitError(
                f"Cannot open the MLflow tracking store {self.tracking_uri!r}: {text}. "
                "Check --tracking-uri / $MLFLOW_TRACKING_URI."
            ) from None
        self.experiment = experiment
        self.busy_patience = _BUSY_PATIENCE
        self._ended: set[str] = set()  # runs of `runs` ended early, by `finish` or `fail`
        self._held: set[str] = set()  # runs this tracker opened and has not ended yet
        self._heartbeat: threading.Thread | None = None
        if experiment is None:  # reads of runs and models by id only
            self.experiment_id = None
        elif found is None or (not create and found.lifecycle_stage == "deleted"):
            if not create:
                raise DlkitError(
                    f"No MLflow experiment named {experiment!r} in the tracking store "
                    f"{self.tracking_uri}. Run `dlkit compare` first, or check --tracking-uri."
                )
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment,
                    artifact_location=_artifact_location(self.tracking_uri, experiment),
                    tags={EXPERIMENT_KIND: MODEL_TRAINING},
                )
            except Exception:  # another process created it first: use theirs
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                self.experiment_id = found.experiment_id
        else:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            self.experiment_id = found.experiment_id
            if create and EXPERIMENT_KIND not in found.tags:  # made before dlkit set it
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)

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
            end("KILLED", f"interrupted ({_signal_name(interrupt)})")
            raise
        except BaseException as error:
            if signals.received() is not None:  # e.g. TensorFlow re-raised it as its own error
                interrupt = signals.Interrupted(signals.received())
                end("KILLED", f"interrupted ({_signal_name(interrupt)})")
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
        _REPORTED_BY_DLKIT.ending.add(threading.get_ident())
        try:
            self._end_patiently(run_id, status, reason)
        finally:
            _REPORTED_BY_DLKIT.ending.discard(threading.get_ident())

    def _end_patiently(self, run_id: str, status: str, reason: str | None) -> None:
        deadline, pause = time.monotonic() + self.busy_patience, 0.1
        while True:
            try:
                if reason is not None:
                    self.client.set_tag(run_id, keys.FAILURE, reason[:5000])
                self.client.set_terminated(run_id, status)
                return
            except Exception as error:
                if not _locked(error):
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
        ended = _stamped(metrics or {}, step)
        history = curves.take() if curves is not None else []
        while len(history) + len(ended) > _METRIC_BATCH - _BATCH:  # room for params and tags
            self.client.log_batch(run_id, metrics=history[:_METRIC_BATCH])
            history = history[_METRIC_BATCH:]
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

        _beside_another_writer(log)

    def set_description(self, run_id: str, text: str) -> None:
        """Sets the run's description, shown on its page in the MLflow UI (Markdown)."""
        self.set_tags(run_id, {"mlflow.note.content": text[:_MAX_NOTE]})

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.client.log_batch(run_id, metrics=_stamped(metrics, step))

    def epoch_metrics(self, run_id: str, every: float = 2.0) -> EpochMetrics:
        """A sink for per-epoch metrics that writes to MLflow at most every `every` seconds."""
        return self.pack_metrics([run_id], every)[0]

    def pack_metrics(self, run_ids: Sequence[str], every: float = 2.0) -> list[EpochMetrics]:
        """One sink per run for runs that train together (a pack's members): they write in
        rounds, all at once, at most every `every` seconds (see `EpochMetrics`)."""
        rounds = _Rounds(every)
        rounds.sinks = [EpochMetrics(self.client, run_id, rounds) for run_id in run_ids]
        return list(rounds.sinks)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dataset(self, run_id: str, data: Dataset) -> None:
        """Logs the data's three splits as the run's dataset inputs (MLflow's Datasets column).

        Each split is one input: the dataset's name, a digest of its examples,
        where it comes from, its shape, and the split as its context.
        """
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
        # MLflow skips a dataset the store holds already: a retry after another process
        # logged the same ones to a parent they share logs nothing twice.
        _beside_another_writer(lambda: self.client.log_inputs(run_id, datasets=inputs))

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
        logged = self.client.create_logged_model(
            self.experiment_id,
            name=safe_name(name),
            source_run_id=run_id,
        )
        info = Model(artifact_path=None, run_id=run_id, model_id=logged.model_id)
        with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
            local = Path(tmp, "model")
            with _quiet_logger("mlflow"):
                mlflow.tensorflow.save_model(
                    model,
                    str(local),
                    mlflow_model=info,
                    signature=signature,
                    input_example=example,
                    pip_requirements=_model_requirements(),
                    custom_objects=_custom_objects(model),
                    code_paths=_code_paths(model),
                )
            self.client.log_model_artifacts(logged.model_id, str(local))
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=0)])
        return f"models:/{logged.model_id}"

    def model_uri(self, run_id: str) -> str | None:
        """Returns the `models:/` URI of the model a run logged, or `None` when it logged none."""
        try:
            outputs = self.client.get_run(run_id).outputs
        except Exception:
            raise DlkitError(
                f"No run {run_id!r} in the MLflow store {self.tracking_uri}. Check the run id "
                "and --tracking-uri / $MLFLOW_TRACKING_URI."
            ) from None
        models = outputs.model_outputs if outputs is not None else []
        return f"models:/{models[-1].model_id}" if models else None

    def download_model(self, model_uri: str, folder: str | Path) -> Path:
        """Downloads a logged or registered model into `folder`; returns its `.keras` file.

        `model_uri` is `models:/<model id>`, `models:/NAME/VERSION` or
        `models:/NAME@ALIAS`, resolved in this tracker's store.
        """
        from mlflow.artifacts import download_artifacts

        try:
            location = self._model_location(model_uri)
            with _no_progress_bar():
                local = Path(download_artifacts(artifact_uri=location, dst_path=str(folder)))
        except DlkitError:
            raise
        except Exception as error:
            raise DlkitError(
                f"Cannot load {model_uri} from the MLflow store {self.tracking_uri}: "
                f"{str(error).splitlines()[0]}. Check the URI and --tracking-uri."
            ) from None
        found = sorted(local.rglob("*.keras"))
        if not found:
            raise DlkitError(f"{model_uri} holds no Keras model file: it was not logged by dlkit.")
        return found[0]

    def register_model(self, run_id: str, name: str, *, description: str = "") -> str:
        """Registers the model `run_id` logged as a new version of `name`; returns its URI.

        The registered model is created on first use. The version links back
        to its run and logged model.
        """
        uri = self.model_uri(run_id)
        if uri is None:
            raise DlkitError(f"Run {run_id} logged no model, so there is nothing to register.")
        model_id = uri.removeprefix("models:/")
        try:
            try:
                self.client.get_registered_model(name)
            except Exception:  # not registered yet
                self.client.create_registered_model(name)
            version = self.client.create_model_version(
                name,
                source=self.client.get_logged_model(model_id).artifact_location,
                run_id=run_id,
                model_id=model_id,
                description=description or None,
            )
        except Exception as error:
            raise DlkitError(
                f"Cannot register the model of run {run_id} as {name!r}: "
                f"{str(error).splitlines()[0]}"
            ) from None
        return f"models:/{name}/{version.version}"

    def _model_location(self, model_uri: str) -> str:
        """Where a `models:/` URI's files are (the store's, not MLflow's global, registry)."""
        reference = model_uri.removeprefix("models:/")
        if "@" in reference:
            name, alias = reference.split("@", 1)
            version = self.client.get_model_version_by_alias(name, alias)
        elif "/" in reference:
            name, number = reference.rsplit("/", 1)
            version = self.client.get_model_version(name, number)
        else:
            return self.client.get_logged_model(reference).artifact_location
        if version.model_id:
            return self.client.get_logged_model(version.model_id).artifact_location
        return version.source

    # Reads: everything a report or a resumed comparison needs, as plain values.

    def latest_parent(self, like: dict[str, str] | None = None) -> str | None:
        """Returns the id of the experiment's most recent comparison parent run, if any.

        Args:
            like: Tags the parent must carry as these values (a tuned comparison resumes
                a tuned parent, not an untuned one). A parent without the tag carries the
                value it had before dlkit wrote the tag: `fixed` for the split, `no`
                for tuned; without the grid or data tags, it matches any. Defaults to
                `None`: any parent.
        """
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{keys.ROLE}` = 'parent'",
            order_by=["attributes.start_time DESC"],
            max_results=_MAX_PARENTS,
        )
        before = {keys.SPLIT: "fixed", keys.TUNED: "no"}
        for run in found:
            tags = run.data.tags
            if all(tags.get(k, before.get(k, v)) == v for k, v in (like or {}).items()):
                return run.info.run_id
        return None

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
            _record(run)
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
        self, parent_id: str, *, status: str | None = None, tags: dict[str, str] | None = None
    ) -> list[RunRecord]:
        """Returns the runs of the comparison under `parent_id`, newest first, optionally of
        one status and with these tag values: its children and the runs nested deeper (a
        variant's sweep runs under its tuning run), which carry `dlkit.comparison`."""
        where = ""
        if status:
            where += f" and attributes.status = '{status}'"
        for key, value in (tags or {}).items():
            where += f" and tags.`{key}` = '{value}'"
        found = {}
        # Runs logged before dlkit tagged the comparison are the parent's children only.
        for link in (f"tags.`{keys.COMPARISON}`", "tags.mlflow.parentRunId"):
            for run in self.client.search_runs(
                [self.experiment_id],
                filter_string=f"{link} = '{parent_id}'{where}",
                order_by=["attributes.start_time DESC"],
                max_results=_MAX_CHILDREN,
            ):
                found.setdefault(run.info.run_id, run)
        runs = sorted(found.values(), key=lambda r: r.info.start_time, reverse=True)
        return [_record(run) for run in runs]

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
        with _no_progress_bar():
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
        with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp, _no_progress_bar():
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except Exception:  # MLflow raises several kinds for a missing artifact
                return None
            return load(local)


_MAX_CHILDREN = 50_000
# The experiment tag MLflow 3's UI reads to pick its layout: model training (runs, models),
# not GenAI (traces, an assistant panel), for the experiments dlkit creates.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
_MAX_PARENTS = 1_000  # the latest parents a resume looks through for one of its kind
_MAX_NOTE = 60_000  # a description is a tag; keep it well inside MLflow's tag limit


class EpochMetrics:
    """Per-epoch metrics, each stamped with its epoch's end, written in one batch every few seconds.

    A write to the store costs about as much as a small model's epoch, so a
    short training sends its curves in a batch or two instead of one per
    epoch; a long one still shows live in the MLflow UI. The sinks of runs
    that train together write in rounds (`_Rounds`): a pack of 32 members
    makes 32 writes a round, so rounds are spaced to keep the writing to a
    small share of the training. When training ends, hand what is left to the
    write that ends the run (`Tracker.log_batch`), or `flush` it (an
    interrupt, a failure).
    """

    def __init__(self, client: StoreCalls, run_id: str, rounds: _Rounds):
        self.client, self.run_id, self.rounds = client, run_id, rounds
        self._pending: list[Metric] = []

    def __call__(self, metrics: dict[str, float], step: int = 0) -> None:
        self._pending += _stamped(metrics, step)
        if self.rounds.due():
            self.rounds.write()

    def flush(self) -> None:
        pending = self.take()
        for i in range(0, len(pending), _METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[i : i + _METRIC_BATCH])

    def take(self) -> list[Metric]:
        """Returns the metrics not written yet, for the caller to write (`Tracker.log_batch`
        takes them into the write that ends a run)."""
        pending, self._pending = self._pending, []
        return pending


class _Rounds:
    """When the sinks of runs that train together write: all of them in one round, at
    most every `every` seconds, and never so often that the rounds take more than
    `_WRITE_SHARE` of the time (the pause after a round is at least its own duration
    divided by that share)."""

    def __init__(self, every: float):
        self.every = every
        self.sinks: list[EpochMetrics] = []
        self._sent = time.monotonic()
        self.took = 0.0  # how long the last round's writes took, in seconds

    def due(self) -> bool:
        return time.monotonic() - self._sent >= max(self.every, self.took / _WRITE_SHARE)

    def write(self) -> None:
        start = time.monotonic()
        for sink in self.sinks:
            sink.flush()
        self._sent = time.monotonic()
        self.took = self._sent - start


_WRITE_SHARE = 0.05


class StoreCalls:
    """An `MlflowClient` whose every call holds Ctrl-C and SIGTERM back until it returns.

    A signal raised inside one of MLflow's SQLAlchemy sessions would leave that
    session's connection in an open transaction, and SQLite would then refuse the
    clean-up's write that ends the run KILLED ("database is locked"). See
    `signals.deferred`.
    """

    def __init__(self, client: MlflowClient):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with signals.deferred():
                return value(*args, **kwargs)

        return call


# How stores say a row is there already: SQLite, PostgreSQL, MySQL (through a server too).
_DUPLICATE_ROW = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def _beside_another_writer(write: Callable[[], None], tries: int = 3) -> None:
    """Runs `write`, which another process may be making to the same run at once: when
    both insert the same rows, the store refuses the second (a UNIQUE constraint), and
    `write`, run again, finds the other's rows and writes only the rest."""
    for attempt in range(tries):
        try:
            return write()
        except Exception as error:
            duplicate = any(_in_chain(error, text) for text in _DUPLICATE_ROW)
            if attempt == tries - 1 or not duplicate:
                raise
            time.sleep(0.05 * (attempt + 1))


def _in_chain(error: BaseException, text: str) -> bool:
    """Whether `text` is in `error` or in what it was raised from."""
    seen: BaseException | None = error
    while seen is not None:
        if text in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _locked(error: BaseException) -> bool:
    """Whether `error` (or what it was raised from) is SQLite's "database is locked"."""
    return _in_chain(error, "database is locked")


def _stamped(metrics: dict[str, float], step: int) -> list[Metric]:
    """MLflow metrics at `step`, stamped with the current time."""
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in metrics.items()]


def _record(run: Any) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain values: what reports and resumes read.

    Attributes:
        run_id: The run's id.
        status: `FINISHED`, `FAILED`, `KILLED` or `RUNNING`.
        start_time: Start, in milliseconds since the epoch.
        tags: The run's tags.
        params: The run's params, as text.
        metrics: The latest value of each metric.
    """

    run_id: str
    status: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


class _ReportedByDlkit(logging.Filter):
    """Drops the store errors (and tracebacks) that dlkit reports itself, once.

    A query a Ctrl-C or SIGTERM broke: the signal's exception lands inside
    SQLAlchemy, which MLflow logs as a database error before it propagates, or
    which SQLAlchemy's connection pool logs as an "Exception during reset" when it
    lands in the pool's clean-up of a connection. And a locked store met while a
    thread ends a run (`Tracker._end`), which retries and gives up in one line.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ending: set[int] = set()  # threads inside Tracker._end

    def filter(self, record: logging.LogRecord) -> bool:
        return signals.received() is None and record.thread not in self.ending


_REPORTED_BY_DLKIT = _ReportedByDlkit()
# A filter applies to its own logger's records only, so each logger that reports them is named:
# MLflow's store, and the connection pools SQLAlchemy names after their classes.
_INTERRUPTIBLE_LOGGERS = (
    "mlflow.store.db.utils",
    *(f"sqlalchemy.pool.impl.{pool}" for pool in ("QueuePool", "NullPool", "StaticPool")),
)


# Installed once, on import: the filter drops only what dlkit reports itself (see above).
for _name in _INTERRUPTIBLE_LOGGERS:
    logging.getLogger(_name).addFilter(_REPORTED_BY_DLKIT)


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a progress bar for every artifact download; a report fetches several.

    Set for the download only, and only when the user has not chosen."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


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


_DATASET_PAGES = {
    "digits": "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
}


def _model_requirements() -> list[str]:
    """What serving a dlkit model needs, pinned to what trained it."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("tensorflow", "keras", "numpy")]


def _custom_objects(model: Any) -> dict[str, Any] | None:
    """The classes of `model` that are not Keras's own (dlkit's maxout layer, a registered
    model's layers), by registered name, for MLflow's loader."""
    from dlkit.nn.models import custom_classes

    return custom_classes(model) or None


def _code_paths(model: Any) -> list[str] | None:
    """The files of the modules that define `model`'s own classes, where they are not part
    of an installed package: logged with the model (its `code/`), so that a loader in
    another process imports them first."""
    found = set()
    for cls in (_custom_objects(model) or {}).values():
        module = sys.modules.get(cls.__module__)
        file = getattr(module, "__file__", None)
        if (
            file
            and "site-packages" not in Path(file).parts
            and not cls.__module__.startswith("dlkit.")
        ):
            found.add(file)
    return sorted(found) or None


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
    return (sqlite_path(tracking_uri).parent / "mlruns" / safe_name(experiment)).as_uri()
