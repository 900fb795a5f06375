"""Store calls that ride out a busy store and an interrupt: retries, metric rounds, quiet logs."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from dlkit import signals

METRIC_BATCH = 1000  # MLflow's log_batch accepts at most 1,000 metrics per call
# How long the write that ends a run rides out a store another process keeps locked, in
# seconds, on top of the 20 s that MLflow's own SQLite busy timeout waits in each attempt.
BUSY_PATIENCE = 60.0


def signal_name(interrupt: BaseException) -> str:
    signum = getattr(interrupt, "signum", None)
    return "Ctrl-C" if signum in (None, signal.SIGINT) else signal.Signals(signum).name


class EpochMetrics:
    """Per-epoch metrics, each stamped with its epoch's end, written in one batch every few seconds.

    A write to the store costs about as much as a small model's epoch, so a
    short training sends its curves in a batch or two instead of one per
    epoch; a long one still shows live in the MLflow UI. The sinks of runs
    that train together write in rounds (`Rounds`): a pack of 32 members
    makes 32 writes a round, so rounds are spaced to keep the writing to a
    small share of the training. When training ends, hand what is left to the
    write that ends the run (`Tracker.log_batch`), or `flush` it (an
    interrupt, a failure).
    """

    def __init__(self, client: StoreCalls, run_id: str, rounds: Rounds):
        self.client, self.run_id, self.rounds = client, run_id, rounds
        self._pending: list[Metric] = []

    def __call__(self, metrics: dict[str, float], step: int = 0) -> None:
        self._pending += stamped(metrics, step)
        if self.rounds.due():
            self.rounds.write()

    def flush(self) -> None:
        pending = self.take()
        for i in range(0, len(pending), METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[i : i + METRIC_BATCH])

    def take(self) -> list[Metric]:
        """Returns the metrics not written yet, for the caller to write (`Tracker.log_batch`
        takes them into the write that ends a run)."""
        pending, self._pending = self._pending, []
        return pending


class Rounds:
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
            start = time.perf_counter()
            try:
                with signals.deferred():
                    return value(*args, **kwargs)
            finally:
                _SPENT[0] += 1
                _SPENT[1] += time.perf_counter() - start

        return call


_SPENT = [0, 0.0]  # this process's store calls through `StoreCalls`, and their seconds


def spent() -> tuple[int, float]:
    """How many store calls this process has made through `StoreCalls`, and the seconds they
    took: what `dlkit bench --store` reads before and after a comparison."""
    return int(_SPENT[0]), float(_SPENT[1])


# How stores say a row is there already: SQLite, PostgreSQL, MySQL (through a server too).
_DUPLICATE_ROW = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def beside_another_writer(write: Callable[[], None], tries: int = 3) -> None:
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


def locked(error: BaseException) -> bool:
    """Whether `error` (or what it was raised from) is SQLite's "database is locked"."""
    return _in_chain(error, "database is locked")


def stamped(metrics: dict[str, float], step: int) -> list[Metric]:
    """MLflow metrics at `step`, stamped with the current time."""
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in metrics.items()]


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


REPORTED_BY_DLKIT = _ReportedByDlkit()


# A filter applies to its own logger's records only, so each logger that reports them is named:
# MLflow's store, and the connection pools SQLAlchemy names after their classes.
INTERRUPTIBLE_LOGGERS = (
    "mlflow.store.db.utils",
    *(f"sqlalchemy.pool.impl.{pool}" for pool in ("QueuePool", "NullPool", "StaticPool")),
)


@contextlib.contextmanager
def no_progress_bar() -> Iterator[None]:
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
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
