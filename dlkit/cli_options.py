"""The command line's shared options: data, training, comparison, tracking, imports, output."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from dlkit.comparison.experiment import ERROR_RATES, INTERVALS
from dlkit.comparison.options import MAX_SEEDS, OUTPUT_DIR, Options
from dlkit.data.dataset import DEFAULT_SOURCE, DEFAULT_VALIDATION_SPLIT
from dlkit.errors import DlkitError
from dlkit.recipes.fields import PRECISIONS
from dlkit.recipes.recipe import parse_assignments

tracking_uri_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    help="MLflow store.  [env: MLFLOW_TRACKING_URI; default: sqlite:///mlflow.db]",
)


output_option = click.option(
    "--output",
    "output_dir",
    default=OUTPUT_DIR,
    show_default=True,
    help="Folder the report files are written to (in a subfolder per experiment).",
)


def import_modules_option(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> None:
    if value:
        from dlkit.recipes.builders import import_modules

        try:
            import_modules(value)
        except DlkitError as error:
            raise click.BadParameter(str(error)) from None


import_option = click.option(
    "--import",
    "imports",
    metavar="MODULE",
    multiple=True,
    is_eager=True,  # before anything resolves a recipe
    expose_value=False,
    callback=import_modules_option,
    help="Import a module (a name, from this folder or installed, or a .py file) first, for "
    "the models it registers with dlkit.register_model. Repeatable.",
)


wide_option = click.option(
    "--wide",
    is_flag=True,
    help="Show every column of the table (losses, parameters, throughput...), as table.md has.",
)


def dataset_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The data options shared by every command that trains."""
    options = [
        click.option(
            "--dataset",
            "-d",
            default=None,
            help="'digits' or 'synthetic' (no download), a TFDS name (mnist, fashion_mnist, "
            f"...), a folder of IDX files or a .npz file.  [default: {DEFAULT_SOURCE}]",
        ),
        click.option(
            "--train-size",
            type=click.IntRange(min=1),
            default=None,
            help="Train on N training examples only (the first N, unless --train-offset).",
        ),
        click.option(
            "--train-offset",
            type=click.IntRange(min=0),
            default=None,
            help="Start the training examples this far into the training pool.  [default: 0]",
        ),
        click.option(
            "--validation-split",
            type=click.FloatRange(0, 1, max_open=True),
            default=None,
            help=f"Fraction of training data held out.  [default: {DEFAULT_VALIDATION_SPLIT}]",
        ),
        click.option(
            "--data-dir",
            envvar="TFDS_DATA_DIR",
            default=None,
            help="TFDS data directory.  [env: TFDS_DATA_DIR]",
        ),
        click.option(
            "--download/--no-download",
            default=True,
            show_default=True,
            help="Let TFDS download a dataset that is not prepared.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def precision_option(default: str | None) -> Callable[..., Any]:
    """The --precision option: a recipe field, given its own option since it is a speed lever."""
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default=default,
        show_default=default is not None,
        help="Arithmetic of the hidden layers: auto is bfloat16 where the hardware has it "
        "(AMX/AVX512-BF16 CPUs, GPUs of compute capability 8.0+).  [default: the recipe's]"
        if default is None
        else "Arithmetic of dlkit's path: auto is bfloat16 where the hardware has it.",
    )


class DevicesType(click.ParamType):
    """A device count of 1 or more, or `all`."""

    name = "N|all"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if str(value).strip().lower() == "all":
            return "all"
        try:
            count = int(value)
        except (TypeError, ValueError):
            count = 0
        if count < 1:
            self.fail(f"{value!r} is not a device count (1 or more) nor 'all'.", param, ctx)
        return count


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The recipe and tracking options shared by every command that trains."""
    options = [
        click.option(
            "--epochs",
            "-e",
            type=click.IntRange(min=1),
            default=None,
            help="Override the recipe's epochs.",
        ),
        click.option(
            "--set",
            "assignments",
            multiple=True,
            metavar="FIELD=VALUE",
            help="Override a recipe field, e.g. --set dropout=0.5 (repeatable).",
        ),
        precision_option(None),
        click.option(
            "--devices",
            type=DevicesType(),
            default="1",
            show_default=True,
            help="Train each model on N devices at once (MirroredStrategy): GPUs, or logical "
            "CPU devices when there are none; 'all' is every GPU. --batch-size stays global.",
        ),
        tracking_uri_option,
        click.option(
            "--verbose",
            "-v",
            is_flag=True,
            help="Show Keras's per-epoch lines and TensorFlow's own log.",
        ),
        click.option("--quiet", "-q", is_flag=True, help="Show no progress, only the result."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def recipe_overrides(
    assignments: Sequence[str], epochs: int | None, precision: str | None
) -> dict[str, Any]:
    """The recipe fields a command's `--set`, `--epochs` and `--precision` change."""
    overrides = parse_assignments(assignments)
    if epochs is not None:
        overrides["epochs"] = epochs
    if precision is not None:
        overrides["precision"] = precision
    return overrides


# How many seeds, on which split, and until what is decided.
_SEED_OPTIONS = [
    click.option(
        "--seeds",
        type=click.IntRange(1, MAX_SEEDS),
        default=None,
        help="Train every variant with seeds 0..N-1.  [default: the file's, else 1]",
    ),
    click.option(
        "--max-seeds",
        type=click.IntRange(2, MAX_SEEDS),
        default=None,
        help="Add seeds while an expectation is undecided, up to N per variant, with an error "
        "rate that holds whenever it stops.  [default: the file's, else none added]",
    ),
    click.option(
        "--split",
        type=click.Choice(["fixed", "random"]),
        default=None,
        help="fixed: the source's own test set for every seed; random: each seed draws its own "
        "stratified split, shared by the variants.  [default: the file's, else fixed]",
    ),
    click.option(
        "--equivalence",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=None,
        help="An accuracy difference inside ±this reads 'equivalent'.  "
        "[default: the file's, else 0.01]",
    ),
    click.option(
        "--error-rate",
        type=click.Choice(ERROR_RATES),
        default=None,
        help="per_comparison: at most 5% chance that any expectation is decided wrongly (the "
        "5% split among them); per_expectation: 5% each.  [default: the file's, else "
        "per_comparison]",
    ),
    click.option(
        "--interval",
        type=click.Choice(INTERVALS),
        default=None,
        help="t: repeated t intervals (roughly normal seeds); betting: a confidence sequence "
        "that assumes nothing but the range, and needs many more seeds (--split random).  "
        "[default: the file's, else t]",
    ),
    click.option(
        "--yes",
        is_flag=True,
        help="Start a comparison of more than 500 runs (variants x seeds).",
    ),
    click.option(
        "--replicate",
        is_flag=True,
        help="Then rerun it on the next train-size images of the training pool (disjoint from "
        "the first) and show both slices' verdicts side by side.",
    ),
    click.option(
        "--force", is_flag=True, help="Retrain runs that already finished, in a new parent."
    ),
]


# Where children train.
_EXECUTOR_OPTIONS = [
    click.option(
        "--executor",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="Where children train: on this machine (in this process, or in --workers worker "
        "processes), or as Ray tasks.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(1, 4096),
        default=1,
        show_default=True,
        help="Children training at once, each in its own process with cores/N threads.",
    ),
    click.option(
        "--cpus-per-run",
        type=click.FloatRange(0, min_open=True),
        default=None,
        help="CPUs Ray reserves for each child.  [default: cores / workers]",
    ),
    click.option(
        "--gpus-per-run",
        type=click.FloatRange(0),
        default=0.0,
        show_default=True,
        help="GPUs Ray reserves for each child; 0.25 packs four children on one GPU.",
    ),
    click.option(
        "--pack",
        type=click.IntRange(0, 4096),
        default=0,
        show_default=True,
        help="Members of one network shape trained together in one graph: 0 as many as memory "
        "allows, 1 one at a time with Keras's own fit.",
    ),
    click.option(
        "--retries",
        type=click.IntRange(0, 100),
        default=Options.retries,
        show_default=True,
        help="Times a child whose worker died is started again (a failed training is not).",
    ),
    click.option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        default=None,
        help="Ray cluster to join.  [env: RAY_ADDRESS; default: a local Ray instance]",
    ),
]


# What each run logs and registers, and the tuning before it.
_RUN_OPTIONS = [
    click.option(
        "--register-best",
        metavar="NAME",
        default=None,
        help="Register the best variant's model (its seed with the best validation accuracy) "
        "in the MLflow Model Registry as a new version of NAME.",
    ),
    click.option(
        "--gradient-norms",
        is_flag=True,
        default=None,
        help="Log per-layer gradient norms and plot them against the layer index.",
    ),
    click.option(
        "--tune",
        "tune",
        multiple=True,
        metavar="FIELD[=V,V,...]",
        help="Tune FIELD for each variant first, on validation, with an equal budget: "
        "learning_rate=0.001,0.01,0.1, or learning_rate for its optimizer's default grid. "
        "Repeat for more fields; replaces the file's tune:.",
    ),
    click.option("--no-tune", is_flag=True, help="Train every variant as given, without tuning."),
    click.option(
        "--tune-seeds",
        type=click.IntRange(1, 100),
        default=None,
        help="Seeds per point of the tuning sweep.  [default: the file's, else 2]",
    ),
]


def comparison_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `dlkit compare` beyond data and training: seeds, until-decided, where
    children train, tuning. Each is an `Options` field of the same name."""
    for option in reversed([*_SEED_OPTIONS, *_EXECUTOR_OPTIONS, *_RUN_OPTIONS]):
        command = option(command)
    return command
