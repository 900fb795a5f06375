"""What a training logs to its MLflow run: what it is as it starts, what it gave as it ends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlkit.data.dataset import Dataset, DatasetInfo
from dlkit.recipes.recipe import Recipe
from dlkit.tracking.calls import EpochMetrics
from dlkit.tracking.tracker import Tracker

if TYPE_CHECKING:
    from dlkit.nn.results import TrainResult


GRADIENT_PROBE_EXAMPLES = 512  # a fixed batch: the same examples at every epoch


def train_params(recipe: Recipe, info: DatasetInfo, seed: int) -> dict[str, Any]:
    """Returns everything that defines a training, as flat params.

    The recipe's fields that take effect, the network they resolve to on this
    data (`hidden_widths`, `param_count`), the data and the seed. The exact
    recipe, every field, is the run's `recipe.json`. A registered model's network is its
    builder's: `model` says which, and no `hidden_widths` are made up for it.
    """
    from dlkit.nn.models import count_params  # TensorFlow: loaded by the training already

    widths = {} if recipe.model else {"hidden_widths": recipe.hidden_layers(*info.dims) or "none"}
    return {
        **recipe.applicable(),
        **widths,
        "param_count": count_params(recipe, *info.dims),
        **info.to_params(),
        "seed": seed,
    }


def log_start(tracker, run_id, recipe, data, seed, params, *, sweep: bool = False) -> Recipe:
    """Logs what a training is before it starts; returns the recipe as it runs. A sweep's
    run logs no dataset inputs: its parent has them."""
    recipe = recipe.resolved()  # log what runs
    tracker.log_params(run_id, {**train_params(recipe, data.info, seed), **(params or {})})
    if not sweep:
        tracker.log_dataset(run_id, data)
    return recipe


def log_end(
    tracker: Tracker,
    run_id: str,
    result: TrainResult,
    data: Dataset,
    *,
    sweep: bool = False,
    curves: EpochMetrics | None = None,
) -> None:
    """Logs a finished training, in one write with what is left of its `curves`; a sweep's
    run logs its metrics only (no model, no files)."""
    known_now = {"replicas": result.replicas}
    if sweep:
        metrics = result.summary_metrics()
        tracker.log_batch(
            run_id, params=known_now, metrics=metrics, step=result.epochs_run, curves=curves
        )
        return
    example = data.arrays("test")[0][:2]
    tracker.log_result(run_id, result, input_example=example, params=known_now, curves=curves)


def gradient_probe(data: Dataset):
    from dlkit.nn.callbacks import GradientNorms

    x, y = data.tensors("train")
    return GradientNorms(x[:GRADIENT_PROBE_EXAMPLES], y[:GRADIENT_PROBE_EXAMPLES])


def failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
