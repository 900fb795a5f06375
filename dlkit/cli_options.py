"""The command line's shared options: data, training, tracking, imports, output."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from dlkit.comparison.options import OUTPUT_DIR
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
