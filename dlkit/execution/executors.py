"""Executors: where a comparison's units train (`run_unit`: a pack, or one child alone).

- `local`: on this machine (the default). With one worker, one unit after the other in
  this process: Keras callbacks and the progress bar's per-epoch view work here only. With
  `workers` above 1, a pool of that many worker processes, each with its share of the cores;
  a worker that dies (killed, out of memory) is replaced and its unit's children run again,
  up to `retries` times each.
- `ray`: each unit is a Ray task, at most `workers` at once. Without an address it starts
  a local Ray instance (on 127.0.0.1) and stops it afterwards; with one (`--ray-address`,
  `$RAY_ADDRESS`) it joins that cluster. A task whose worker process dies (killed, out of
  memory, a lost node) is retried; a training that fails is not (it comes back FAILED).

Every executor hands results back as they finish, so the caller reports progress and the
order of finishing does not matter: runs are matched to the plan by their config hash.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import gc
import os
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from dlkit import signals
from dlkit.errors import DlkitError
from dlkit.execution.children import ChildResult, ChildSpec, run_child, run_pack
from dlkit.execution.packs import Unit
from dlkit.text import plural

EXECUTORS = ("local", "ray")


class Resources(Protocol):
    """How many children run at once and what each gets: `dlkit.Options` holds these.

    Attributes:
        workers: Children at once.
        cpus_per_run: CPUs Ray reserves for each child; `None` is the
            machine's cores divided by `workers`.
        gpus_per_run: GPUs (or a fraction, e.g. 0.25 packs four children on
            one) Ray reserves for each child.
        retries: Times a child whose worker died is started again.
        ray_address: The Ray cluster to join; `None` starts a local instance.
    """

    workers: int
    cpus_per_run: float | None
    gpus_per_run: float
    retries: int
    ray_address: str | None


def threads_per_child(resources: Resources) -> int:
    """TensorFlow threads per child: this machine's cores shared among the workers."""
    return max(1, (os.cpu_count() or 1) // resources.workers)


def execute(
    work: Sequence[Unit],
    executor: str,
    resources: Resources,
    *,
    callbacks: Sequence[Any] = (),
    started: Callable[[Unit], None] = lambda unit: None,
    on_epoch: Callable[[int, dict[str, float], int], None] | None = None,
) -> Iterator[tuple[ChildSpec, ChildResult]]:
    """Runs every child and yields `(spec, result)` as each one finishes.

    Each `Unit` trains where it is sent as a whole: a packed one as one pack
    (`run_pack`), in this process, a pool worker or a Ray task alike.
    `callbacks` (Keras callbacks, for children that train alone), `started`
    (called as a unit starts) and `on_epoch` (after each epoch of a pack's
    members: member index, metrics, epoch) reach children in this process only.
    """
    if in_this_process(executor, resources):
        for unit in work:
            started(unit)
            yield from zip(unit.specs, run_unit(unit, callbacks=callbacks, on_epoch=on_epoch))
        return
    if executor == "local":
        yield from _in_processes(work, resources)
    elif executor == "ray":
        yield from _on_ray(work, resources)
    else:
        raise DlkitError(f"Unknown executor {executor!r}. Choose one of: {', '.join(EXECUTORS)}.")


def run_unit(
    unit: Unit,
    *,
    callbacks: Sequence[Any] = (),
    on_epoch: Callable[[int, dict[str, float], int], None] | None = None,
) -> list[ChildResult]:
    """Trains a unit: its members as one pack, or its one child alone. A result per child."""
    from dlkit.recipes.builders import ensure_imported

    for spec in unit.specs:
        ensure_imported(spec.imports)  # in a worker: the modules its models come from
    if unit.packed:
        return run_pack(unit.specs, on_epoch=on_epoch)
    return [run_child(unit.specs[0], callbacks=callbacks)]


def in_this_process(executor: str, resources: Resources) -> bool:
    """Whether the children train in the calling process, where Keras callbacks reach them."""
    return executor == "local" and resources.workers == 1


def check(executor: str, resources: Resources, tracking_uri: str) -> None:
    """Refuses, before anything trains, what cannot work: a missing Ray, a store remote workers
    cannot reach."""
    if executor not in EXECUTORS:
        raise DlkitError(f"Unknown executor {executor!r}. Choose one of: {', '.join(EXECUTORS)}.")
    if executor == "local":
        cores = os.cpu_count() or 1
        if resources.workers > cores:
            raise DlkitError(
                f"--workers {resources.workers} on this machine's {cores} cores: each worker "
                f"process needs a core of its own. Use at most --workers {cores}, or "
                "--executor ray to spread the children over a cluster."
            )
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise DlkitError(
            "--executor ray needs Ray: pip install 'ray>=2.9' (or pip install -e '.[ray]')."
        ) from None
    if _remote(resources.ray_address) and not tracking_uri.startswith(("http://", "https://")):
        raise DlkitError(
            f"The Ray cluster at {resources.ray_address} runs children on other machines, which "
            f"cannot write to the local store {tracking_uri}. Start an MLflow server they can "
            "reach (mlflow server --host <this machine> --port 5000 --backend-store-uri "
            "sqlite:///mlflow.db --artifacts-destination ./mlartifacts, or Postgres and an "
            "object store) and pass --tracking-uri http://<this machine>:5000."
        )


def _remote(address: str | None) -> bool:
    if address in (None, "", "local"):
        return False
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    return host not in ("127.0.0.1", "localhost", "::1", "[::1]")


# Inside `ray_kept()`: a Ray instance a stage started stays up for the next stages (a sweep, the
# looks that add seeds), whose workers then keep TensorFlow loaded; the block ends it.
_kept: dict[str, Any] = {"depth": 0, "started": False, "shipped": set()}


@contextlib.contextmanager
def ray_kept() -> Iterator[None]:
    """Keeps the Ray instance the first Ray stage inside the block starts until the block
    ends, instead of one per stage: starting Ray and loading TensorFlow in its workers costs
    seconds each time. A Ray the caller started (or joined) is theirs, and left running."""
    _kept["depth"] += 1
    try:
        yield
    finally:
        _kept["depth"] -= 1
        if _kept["depth"] == 0 and _kept["started"]:
            _kept["started"] = False
            import ray

            ray.shutdown()


def _on_ray(work: Sequence[Unit], resources: Resources) -> Iterator[tuple[ChildSpec, Any]]:
    if resources.ray_address in (None, "", "local"):
        # The comparison's own Ray instance serves this machine only: Ray then binds its
        # servers to the loopback, not every interface (read as Ray is first imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if _kept["started"] and not set(_modules(work)) <= _kept["shipped"]:
        ray.shutdown()  # a kept Ray without this work's model modules: start one with them
        _kept["started"] = False
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,  # children's Keras and TensorFlow output stays in Ray's logs
            "configure_logging": False,
        }
        if resources.ray_address in (None, "", "local"):
            options["num_cpus"] = os.cpu_count() or 1
        else:
            options["address"] = resources.ray_address
        options.update(_shipped(work))
        try:
            ray.init(**options)
        except (ConnectionError, ValueError) as error:  # no cluster there, or a bad address
            raise DlkitError(
                f"Cannot join the Ray cluster at {resources.ray_address}: "
                f"{str(error).strip().splitlines()[0]} Check --ray-address / $RAY_ADDRESS "
                "(`ray status` on the head node shows its address), or leave it out for a "
                "local Ray instance."
            ) from None
    try:
        task = ray.remote(_unit_task).options(
            num_cpus=resources.cpus_per_run or (os.cpu_count() or 1) / resources.workers,
            num_gpus=resources.gpus_per_run,
            max_retries=resources.retries,
            retry_exceptions=False,  # a failed training is an answer, not a crash
        )
        threads = threads_per_child(resources)
        waiting = list(work)
        running: dict[Any, Unit] = {}
        while waiting or running:
            while waiting and len(running) < resources.workers:
                unit = waiting.pop(0)
                running[task.remote(unit, threads)] = unit
            (done,), _ = ray.wait(list(running), num_returns=1)
            unit = running.pop(done)
            try:
                results = ray.get(done)
            except ray.exceptions.RayError as error:  # the retries ran out
                cause = str(error).strip().splitlines()[0]
                results = [_lost(f"worker lost: {cause}")] * len(unit.specs)
            yield from zip(unit.specs, results)
    finally:
        if started_here and _kept["depth"]:
            _kept["started"], _kept["shipped"] = True, set(_modules(work))  # `ray_kept()` ends it
        elif started_here:
            ray.shutdown()


def _shipped(work: Sequence[Unit]) -> dict[str, Any]:
    """The modules registering the work's models, shipped to Ray's workers with the job
    (`py_modules`, which Ray uploads only as the job starts), so that a cluster's nodes import
    the files this machine has."""
    files = _modules(work)
    return {"runtime_env": {"py_modules": files}} if files else {}


def _modules(work: Sequence[Unit]) -> list[str]:
    """The files of the modules that register the work's models."""
    return sorted({f for u in work for s in u.specs for f in s.imports.values() if f})


def _unit_task(unit: Unit, threads: int) -> list[ChildResult]:
    """A unit in a Ray worker: its share of the cores, then the same work as anywhere."""
    _load_tensorflow(threads)
    return run_unit(unit)


def _lost(failure: str) -> ChildResult:
    """The result of a child that never came back from its worker."""
    return ChildResult(None, "FAILED", None, 0.0, failure)


def _load_tensorflow(threads: int) -> None:
    """Loads TensorFlow quietly in a worker process, on `threads` threads."""
    from dlkit.console import load_tensorflow

    load_tensorflow()  # before the threads are set
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # a worker reused after TensorFlow started keeps its threads
        pass


def _in_processes(work: Sequence[Unit], resources: Resources) -> Iterator[tuple[ChildSpec, Any]]:
    """Runs the units in a pool of `resources.workers` processes on this machine.

    The workers are spawned, not forked (TensorFlow's and MLflow's threads do not survive a
    fork), and ignore Ctrl-C: this process owns the interrupt and stops them with SIGTERM, so
    each running child ends KILLED before its worker exits.
    """
    with tempfile.TemporaryDirectory(prefix="dlkit-") as folder:
        yield from _in_pools(work, resources, Path(folder) / "worker-start-failure")


def _in_pools(
    work: Sequence[Unit], resources: Resources, start_failure: Path
) -> Iterator[tuple[ChildSpec, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    waiting = dict(enumerate(work))
    losses: collections.Counter[int] = collections.Counter()  # deaths in flight, per unit
    idle = 0  # pools that broke before any child started
    folder = start_failure.parent
    while waiting:
        pool = ProcessPoolExecutor(
            resources.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(threads_per_child(resources), str(start_failure)),
        )
        try:
            futures = {
                pool.submit(_unit_in_process, unit, str(folder / f"{i}.started")): i
                for i, unit in waiting.items()
            }
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results = future.result()
                except BrokenProcessPool:  # a worker died: its unit stays waiting
                    continue
                yield from zip(waiting.pop(i).specs, results)
        except BaseException:  # interrupted, or the caller stopped asking
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if waiting and start_failure.exists():  # no worker will start: retrying cannot help
            failure = (
                f"its worker process could not start ({start_failure.read_text()}). Check that "
                "TensorFlow imports in this environment: python -c 'import tensorflow'"
            )
            for i in list(waiting):
                yield from _failed(waiting.pop(i), failure)
            return
        # What is still waiting was lost with a worker: the children that were training
        # count it against their retries, and the rest run again in a new pool.
        lost = [i for i in waiting if (folder / f"{i}.started").exists()]
        for i in lost:
            losses[i] += 1
            (folder / f"{i}.started").unlink()
        idle = 0 if lost else idle + 1
        for i in list(waiting):
            if losses[i] > resources.retries or idle > resources.retries:
                deaths = losses[i] or idle
                failure = (
                    f"its worker died {plural(deaths, 'time')} while it "
                    f"{'trained' if losses[i] else 'waited'} (killed, or out of memory?)"
                )
                yield from _failed(waiting.pop(i), failure)


def _failed(unit: Unit, failure: str) -> Iterator[tuple[ChildSpec, ChildResult]]:
    return ((spec, _lost(failure)) for spec in unit.specs)


def _start_worker(threads: int, start_failure: str) -> None:
    """A pool worker: Ctrl-C is its parent's to handle; TensorFlow loads quietly, on its share
    of the cores. A worker that cannot load it writes why to `start_failure` for its parent,
    which would otherwise see only a worker that died."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # At exit, skip the last garbage collection over TensorFlow's objects (seconds; see
    # `dlkit.cli.run`): the pool waits for its workers to exit.
    atexit.register(gc.freeze)
    try:
        _load_tensorflow(threads)
    except Exception as error:
        Path(start_failure).write_text(f"{type(error).__name__}: {error}")
        raise


def _unit_in_process(unit: Unit, started: str) -> list[ChildResult]:
    """A unit in a pool worker; the file `started` tells its parent it began, should the
    worker die. SIGTERM ends its runs KILLED, then the worker itself: a stopped pool must not
    start the next unit it had queued. A second SIGTERM (the pool terminates the workers it
    has left when one exits) must not cut the first one's clean-up short."""
    Path(started).touch()
    try:
        with signals.handled(signal.SIGTERM, patient=True):
            return run_unit(unit)
    except signals.Interrupted as interrupt:
        os._exit(interrupt.exit_code)


def _stop_workers(pool: Any) -> None:
    """Sends SIGTERM to the pool's workers and waits for their running children to end KILLED."""
    # A private reach, the only way: ProcessPoolExecutor has no public handle on its workers,
    # and shutdown() waits for running children instead of stopping them.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():  # stuck: the next run marks its child KILLED
            process.kill()
