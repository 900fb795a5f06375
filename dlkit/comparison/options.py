"""Options: what a comparison takes beyond its experiment, as one object with each default once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlkit.errors import DlkitError, closest

MAX_SEED = 2**32 - 1  # Keras seeds NumPy, whose seeds are 32-bit
MAX_SEEDS = 10_000  # seeds of one comparison; a count is expanded to 0..N-1
LARGE_COMPARISON = 500  # runs (variants x seeds) a comparison starts only with `yes`


@dataclasses.dataclass(frozen=True)
class Options:
    """How to run a comparison: the command line, `dlkit.compare()` and files resolve into this.

    The first ten fields change the experiment, and beat its file; `None`
    keeps the file's value. The rest say where data comes from, where runs
    and reports go, and how much the terminal shows.

    Args:
        dataset: Data source for every variant (`--dataset`). Defaults to `None`.
        train_size: Train on N examples. Defaults to `None`.
        train_offset: Where those N start in the training pool. Defaults to `None`.
        validation_split: Fraction held out for validation. Defaults to `None`.
        epochs: Every variant's epochs. Defaults to `None`.
        seeds: A number of seeds (0..N-1) or the list of seeds. Defaults to `None`.
        overrides: Recipe fields set on every variant; they win over the file.
            Defaults to `{}`.
        gradient_norms: Log per-layer gradient norms. Defaults to `None`.
        tune: Fields to tune per variant before its seeds train, each with its
            values (`None` for the field's default grid), e.g.
            `{"learning_rate": [0.001, 0.01, 0.1]}`; they replace the file's
            `tune:`. `False` trains every variant as given. Defaults to `None`.
        tune_seeds: Seeds per point of the sweep. Defaults to `None` (the
            file's, else 2).
        split: `"fixed"` or `"random"` data splits (see `DataSpec`). Defaults
            to `None` (the file's, else `"fixed"`).
        max_seeds: Add seeds while an expectation is undecided, up to this many
            per variant. Defaults to `None` (the file's, else none added).
        equivalence: The margin within which a `>` or `<` on accuracy reads
            "equivalent". Defaults to `None` (the file's, else 0.01).
        error_rate: `"per_comparison"` (at most 5% chance that any expectation is
            decided wrongly) or `"per_expectation"` (5% each). Defaults to `None`
            (the file's, else `"per_comparison"`).
        interval: `"t"` (repeated t intervals) or `"betting"` (a distribution-free
            confidence sequence; needs the random split). Defaults to `None` (the file's,
            else `"t"`).
        data_dir: TFDS data directory. Defaults to `None` (`$TFDS_DATA_DIR`).
        download: Let TFDS download data. Defaults to `True`.
        force: Retrain everything in a new parent run. Defaults to `False`.
        tracking_uri: MLflow store. Defaults to `None` (`$MLFLOW_TRACKING_URI`,
            else `sqlite:///mlflow.db`).
        output_dir: Folder for the report files, in `<output_dir>/<name>/`;
            `None` writes none. Defaults to `"reports"`.
        verbose: Keras progress per epoch (0, 1 or 2). Defaults to `2`.
        yes: Start a comparison of more than 500 runs (`--yes`).
            Defaults to `False`: so many runs are more often a typo than a plan.
        replicate: Then rerun the comparison on the next `train_size` images
            of the training pool, disjoint from the first, as the experiment
            `<name>-replica`, and report both slices' verdicts side by side.
            Defaults to `False`.
        register_best: Register the best variant's model (its seed with the
            best validation accuracy) in the MLflow Model Registry under this
            name (`--register-best`). Defaults to `None`.
        executor: Where children train: `"local"` (on this machine: one after
            the other in this process, or in `workers` worker processes) or
            `"ray"` (Ray tasks). Defaults to `"local"`.
        workers: Children training at once, each in its own process with
            cores / workers TensorFlow threads. Defaults to `1`.
        cpus_per_run: CPUs Ray reserves per child. Defaults to cores / workers.
        gpus_per_run: GPUs Ray reserves per child; a fraction packs several
            children on one GPU. Defaults to `0`.
        retries: Times a child whose worker process died is started again
            (not one whose training failed). Defaults to `3`.
        ray_address: The Ray cluster to join (`$RAY_ADDRESS`); `None` starts
            a local instance for the comparison. Defaults to `None`.
        devices: Devices each child trains on at once, with
            `MirroredStrategy` (see `dlkit.fit`); `"all"` is every GPU.
            Defaults to `1`.
        pack: Members (variant x seed) trained together in one graph, when
            their networks share a shape (`--pack`): `0` as many as memory
            allows, `1` one at a time with Keras's own `fit`; in this process,
            a worker process or a Ray task alike. Defaults to `0`.

    Example:

    >>> Options(dataset="digits", seeds=3).replace(epochs=5).epochs
    5
    """

    dataset: str | None = None
    train_size: int | None = None
    train_offset: int | None = None
    validation_split: float | None = None
    epochs: int | None = None
    seeds: int | Sequence[int] | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    gradient_norms: bool | None = None
    tune: Mapping[str, Sequence[float] | None] | bool | None = None
    tune_seeds: int | None = None
    split: str | None = None
    max_seeds: int | None = None
    equivalence: float | None = None
    error_rate: str | None = None
    interval: str | None = None
    data_dir: str | None = None
    download: bool = True
    force: bool = False
    tracking_uri: str | None = None
    output_dir: str | Path | None = "reports"
    verbose: int | str = 2
    yes: bool = False
    replicate: bool = False
    register_best: str | None = None
    executor: str = "local"
    workers: int = 1
    cpus_per_run: float | None = None
    gpus_per_run: float = 0.0
    retries: int = 3  # Ray's own default for tasks whose worker died
    ray_address: str | None = None
    devices: int | str = 1
    pack: int = 0

    def __post_init__(self) -> None:
        # The command line checks these ranges itself; Python callers get the same answer.
        for name, low, kind in (
            ("workers", 1, int),
            ("retries", 0, int),
            ("pack", 0, int),
            ("gpus_per_run", 0, (int, float)),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind) or value < low:
                what = "a whole number" if kind is int else "a number"
                raise DlkitError(
                    f"Comparison option {name} must be {what} of at least {low}. "
                    f"Received: {name}={value!r}"
                )
        if self.cpus_per_run is not None and not self.cpus_per_run > 0:
            raise DlkitError(
                f"Comparison option cpus_per_run must be above 0. Received: {self.cpus_per_run!r}"
            )

    def replace(self, **fields: Any) -> Options:
        """Returns a copy with `fields` changed; unknown names raise `DlkitError`."""
        names = [f.name for f in dataclasses.fields(self)]
        for name in fields:
            if name not in names:
                raise DlkitError(
                    f"Unknown comparison option {name!r}.{closest(name, names)} "
                    f"Valid options: {', '.join(names)}."
                )
        return dataclasses.replace(self, **fields)


OUTPUT_DIR = Options.output_dir  # the default report folder, for the command line's help
