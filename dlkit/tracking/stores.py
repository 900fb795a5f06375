"""Where runs are kept: tracking URIs, sqlite stores made whole, the UI's address."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
from mlflow.tracking import MlflowClient

from dlkit import keys
from dlkit.errors import DlkitError
from dlkit.text import safe_name
from dlkit.tracking.calls import StoreCalls, quiet_logger

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


DEFAULT_UI_PORT = 5000


# What SQLite says when MLflow meets tables that a stopped first run left half-built.
HALF_MADE = ("already exists", "duplicate column", "no such table", "no such column")


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


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    # Keep artifacts beside a local sqlite store (mlflow.db -> mlruns/), as
    # MLflow does for ./mlflow.db, instead of in whatever folder runs it.
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (sqlite_path(tracking_uri).parent / "mlruns" / safe_name(experiment)).as_uri()


# The experiment tag MLflow 3's UI reads to pick its layout: model training (runs, models),
# not GenAI (traces, an assistant panel), for the experiments dlkit creates.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def connect(tracking_uri: str, experiment: str | None) -> tuple[StoreCalls, Any]:
    """Opens the store (a sqlite store is created whole first); returns its client and the
    experiment named `experiment` as the store has it (`None` when it has none).

    Raises:
        DlkitError: the store cannot be opened, or a sqlite store was left half-created.
    """
    try:
        # Alembic logs a line per migration (INFO) while MLflow builds or checks tables.
        with quiet_logger("alembic", logging.WARNING):
            create_sqlite_store(tracking_uri)
            client = StoreCalls(MlflowClient(tracking_uri=tracking_uri))
            return client, client.get_experiment_by_name(experiment) if experiment else None
    except DlkitError:
        raise
    except Exception as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        if tracking_uri.startswith("sqlite:") and any(sign in text for sign in HALF_MADE):
            db = sqlite_path(tracking_uri)
            raise DlkitError(
                f"The MLflow store {db} was left half-created ({text}), most likely by a "
                "first run that was interrupted under an older dlkit. It holds no runs: "
                f"move it aside (mv {db} {db}.broken) and run again."
            ) from None
        raise DlkitError(
            f"Cannot open the MLflow tracking store {tracking_uri!r}: {text}. "
            "Check --tracking-uri / $MLFLOW_TRACKING_URI."
        ) from None


def experiment_id(
    client: StoreCalls, tracking_uri: str, experiment: str, found: Any, *, create: bool
) -> str:
    """The id of the experiment named `experiment`: `found` (restored if deleted), or, with
    `create`, one made now (or the one another process made meanwhile).

    Raises:
        DlkitError: there is no such experiment and `create` is off.
    """
    if found is None or (not create and found.lifecycle_stage == "deleted"):
        if not create:
            raise DlkitError(
                f"No MLflow experiment named {experiment!r} in the tracking store "
                f"{tracking_uri}. Run `dlkit compare` first, or check --tracking-uri."
            )
        try:
            return client.create_experiment(
                experiment,
                artifact_location=artifact_location(tracking_uri, experiment),
                tags={EXPERIMENT_KIND: MODEL_TRAINING},
            )
        except Exception:  # another process created it first: use theirs
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return found.experiment_id
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    if create and EXPERIMENT_KIND not in found.tags:  # made before dlkit set it
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return found.experiment_id
