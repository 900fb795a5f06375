"""The `dlkit` command line: thin shells over the Python API, one function per command.

TensorFlow and MLflow are imported inside the commands that train, so `--help`
and `dlkit recipes` stay fast, and mistakes that can be seen without them
(unknown recipe or field, out-of-range value, missing path) fail before they load.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from dlkit.cli_options import (
    comparison_options,
    dataset_options,
    import_option,
    output_option,
    precision_option,
    recipe_overrides,
    tracking_uri_option,
    training_options,
    wide_option,
)
from dlkit.comparison.options import MAX_SEED, Options
from dlkit.data.dataset import DataSpec
from dlkit.errors import DlkitError
from dlkit.recipes.listing import describe
from dlkit.recipes.recipe import get_recipe, list_recipes
from dlkit.text import text_table


class _Interrupted(SystemExit):
    """The exit of an interrupted command: `run` leaves without waiting for threads."""


def _resumes(command: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a command that, run again after an interrupt, continues where it stopped."""
    command.resumes = True  # type: ignore[attr-defined]
    return command


def _handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turns user mistakes into one clear message and a non-zero exit, no traceback.

    Ctrl-C and SIGTERM stop the command the same way: the running MLflow run
    ends KILLED, finished runs stay, and the exit code is 128 + the signal. The
    message says a rerun continues only for a command marked `_resumes`.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dlkit import signals

        try:
            with signals.handled():
                return command(*args, **kwargs)
        except DlkitError as error:
            raise click.ClickException(str(error)) from None
        except KeyboardInterrupt as interrupt:
            signals.stop_at_once_on_another()
            code = getattr(interrupt, "exit_code", 130)
            name = "Ctrl-C" if code == 130 else signal.Signals(code - 128).name
            again = (
                "run the same command again to continue where it stopped"
                if getattr(command, "resumes", False)
                else "the interrupted one ends KILLED, with what it had logged"
            )
            kept = "".join(f"; {text}" for text in signals.notes())
            click.echo(
                f"\nInterrupted ({name}). Finished runs are kept in MLflow{kept}; {again}.",
                err=True,
            )
            raise _Interrupted(code) from None

    return wrapper


def _load_tensorflow(verbose: bool = False) -> None:
    # TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) is noise
    # in a terminal; errors still come through, and -v shows it all.
    from dlkit.console import load_tensorflow

    load_tensorflow(verbose=verbose)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dlkit")
def main() -> None:
    """Fair, reproducible comparisons of neural networks on Keras, logged to MLflow.

    \b
    dlkit recipes                          list the preset recipes
    dlkit train deep-relu -d digits        train one recipe
    dlkit compare experiments/quickstart.yaml
    dlkit ui                               review the runs in the MLflow UI
    """


@main.command()
@click.option(
    "--input-dim",
    type=click.IntRange(min=1),
    default=784,
    show_default=True,
    help="Input size the parameter counts are computed for (MNIST: 784).",
)
@click.option(
    "--classes",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    help="Number of classes the parameter counts are computed for.",
)
@import_option
@_handle_errors
def recipes(input_dim: int, classes: int) -> None:
    """List the recipes: layers, activation, regularization, parameters; registered models
    (dlkit.register_model) with the module they come from."""
    rows = [describe(get_recipe(name), input_dim, classes) for name in list_recipes()]
    click.echo(text_table(rows, align_right=("params",)))
    click.echo(
        f"\n{len(rows)} recipes; parameter counts for {input_dim} inputs and {classes} classes. "
        "Wide recipes match the deep ones' parameter count on any data."
    )


@main.command()
@click.argument("recipe")
@dataset_options
@training_options
@click.option(
    "--seed",
    "-s",
    type=click.IntRange(0, MAX_SEED),
    default=0,
    show_default=True,
    help="Random seed.",
)
@click.option("--experiment", default="dlkit", show_default=True, help="MLflow experiment name.")
@click.option(
    "--gradient-norms",
    is_flag=True,
    help="Log per-layer gradient norms every epoch (metrics grad_norm_1, ...).",
)
@click.option(
    "--register",
    metavar="NAME",
    default=None,
    help="Register the trained model in the MLflow Model Registry as a new version of NAME.",
)
@import_option
@_handle_errors
def train(
    recipe: str,
    dataset: str | None,
    train_size: int | None,
    train_offset: int | None,
    validation_split: float | None,
    data_dir: str | None,
    download: bool,
    epochs: int | None,
    assignments: Sequence[str],
    precision: str | None,
    devices: int | str,
    tracking_uri: str | None,
    verbose: bool,
    quiet: bool,
    seed: int,
    experiment: str,
    gradient_norms: bool,
    register: str | None,
) -> None:
    """Train RECIPE once and log it as an MLflow run."""
    chosen = get_recipe(recipe, **recipe_overrides(assignments, epochs, precision))
    given = {
        "source": dataset,
        "train_size": train_size,
        "train_offset": train_offset,
        "validation_split": validation_split,
    }
    spec = DataSpec(
        **{key: value for key, value in given.items() if value is not None},
        data_dir=data_dir,
        download=download,
    )
    _load_tensorflow(verbose)
    from dlkit.execution.runs import train as train_recipe

    data = spec.load()
    click.echo(f"Training {chosen.name} on {data!r}")
    result = train_recipe(
        chosen,
        data,
        seed=seed,
        tracking_uri=tracking_uri,
        experiment=experiment,
        verbose=0 if quiet else 2,
        gradient_norms=gradient_norms,
        register=register,
        devices=devices,
    )
    stopped = f", stopped early at epoch {result.stopped_epoch}" if result.stopped_epoch else ""
    click.echo(
        f"\n{chosen.name}: test accuracy {result.test_accuracy:.4f}, test loss "
        f"{result.test_loss:.4f}, {result.params:,} params, {result.epochs_run} epochs{stopped}, "
        f"{result.wall_time:.1f} s ({result.samples_per_second:,.0f} samples/s on "
        f"{_devices(result)})."
    )
    from dlkit.tracking.tracker import Tracker

    click.echo(f"Logged to MLflow: run {result.run_id}, experiment {experiment!r}.")
    if result.registered:
        click.echo(f"Registered as {result.registered}.")
    _print_review(Tracker(tracking_uri, experiment).runs_page(result.run_id), tracking_uri)


@main.command()
@click.argument("targets", nargs=-1, required=True)
@dataset_options
@training_options
@comparison_options
@output_option
@wide_option
@import_option
@_handle_errors
@_resumes  # finished children are reused
def compare(
    targets: Sequence[str],
    assignments: Sequence[str],
    precision: str | None,
    verbose: bool,
    quiet: bool,
    gradient_norms: bool | None,
    tune: Sequence[str],
    no_tune: bool,
    wide: bool,
    **fields: Any,
) -> None:
    """Compare recipes side by side: an experiment file, or recipe names.

    \b
    dlkit compare experiments/quickstart.yaml
    dlkit compare deep-relu wide-relu --dataset digits --seeds 3 --epochs 10
    """
    from dlkit.comparison.experiment_file import is_experiment_file, resolve_experiment
    from dlkit.comparison.tuning import parse_tune_option
    from dlkit.data.sources import find_source

    if len(targets) > 1 and any(is_experiment_file(t) for t in targets):
        raise DlkitError("Give either one experiment file or recipe names, not both.")
    if tune and no_tune:
        raise DlkitError("Give --tune or --no-tune, not both.")
    target = targets[0] if len(targets) == 1 and is_experiment_file(targets[0]) else list(targets)
    # Every other option is an `Options` field of the same name.
    options = Options(
        **fields,
        overrides=recipe_overrides(assignments, None, precision),
        gradient_norms=gradient_norms or None,
        tune=False if no_tune else (parse_tune_option(tune) or None),
        verbose=2 if verbose else 0,
    )
    # Everything that can be checked without TensorFlow fails here, before it loads.
    experiment = resolve_experiment(target, options)
    find_source(experiment.data.source)
    if verbose:  # otherwise TensorFlow loads, quietly, when a child first trains here
        _load_tensorflow(verbose)
    from dlkit.comparison.compare import compare as run_comparison

    comparison = run_comparison(
        experiment,
        options,
        log=(lambda line: None) if quiet else click.echo,
        progress=not quiet and not verbose and sys.stderr.isatty(),
    )
    _print_report(comparison, options.tracking_uri, wide)
    for part in (comparison, comparison.replication):
        if part is not None and part.failed:
            first = part.runs[part.runs["status"] != "FINISHED"].iloc[0]
            raise click.ClickException(
                f"{part.failed} of {len(part.runs)} runs of {part.name!r} did not finish; the "
                f"first, {first['variant']} seed {first['seed']}: {first['status']} - "
                f"{first['failure']}"
            )


@main.command()
@click.argument("experiment")
@tracking_uri_option
@output_option
@wide_option
@import_option
@_handle_errors
def report(experiment: str, tracking_uri: str | None, output_dir: str, wide: bool) -> None:
    """Rebuild a comparison's table and plots from MLflow, without training.

    EXPERIMENT is the experiment's name or its experiment file.
    """
    from dlkit.comparison.compare import report as build_report

    comparison = build_report(experiment, tracking_uri=tracking_uri, output_dir=output_dir)
    _print_report(comparison, tracking_uri, wide)


@main.command()
@click.option(
    "--dataset",
    "-d",
    default="synthetic",
    show_default=True,
    help="'synthetic' (MNIST-shaped, no download) or any dataset source.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=2),
    default=4,
    show_default=True,
    help="Epochs per timed training; the first is warm-up and not counted.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Alternating runs of each path, repeat i with seed i: the median speed and the "
    "mean ± std test accuracy are reported.",
)
@precision_option("auto")
@click.option(
    "--levers",
    is_flag=True,
    help="Also time each per-step lever (bfloat16, XLA, steps per call, fused Adam, "
    "per-batch metrics) alone and together, and profile one training step.",
)
@click.option(
    "--packs",
    is_flag=True,
    help="Also time packs of 1, 4 and 16 members, in float32 and bfloat16, against plain Keras.",
)
@click.option(
    "--store",
    "stores",
    multiple=True,
    metavar="URI",
    help="Also time the store per run in comparisons of 100 and 1,000 tiny runs, on a "
    "temporary sqlite store and on this one (a team's `mlflow server`; repeatable). "
    "Give `sqlite` for the sqlite store alone.",
)
@click.option("--json", "json_path", default=None, help="Also write the figures to this file.")
@_handle_errors
def bench(
    dataset: str,
    epochs: int,
    repeats: int,
    precision: str,
    levers: bool,
    packs: bool,
    stores: tuple[str, ...],
    json_path: str | None,
) -> None:
    """Measure dlkit's training speed against plain Keras, tracking cost and start-up."""
    from dlkit.data.sources import find_source

    find_source(dataset)
    if json_path is not None:
        _check_writable(json_path)
    _load_tensorflow()
    from dlkit.bench import benchmark

    results = benchmark.run(
        dataset, epochs=epochs, repeats=repeats, precision=precision, with_levers=levers
    )
    click.echo(benchmark.format_results(results))
    if packs:
        from dlkit.bench.packs import format_packs, run_packs

        results["packs"] = run_packs(dataset, epochs, repeats)
        click.echo("\n" + format_packs(results["packs"]))
    if stores:
        from dlkit.bench.store import format_store, store_overhead

        results["store"] = store_overhead([uri for uri in stores if uri != "sqlite"])
        click.echo("\n" + format_store(results["store"]))
    if json_path is not None:
        benchmark.save(results, json_path)
        click.echo(f"\nFigures written to {json_path}")


@main.command()
@click.argument("experiment", required=False)
@tracking_uri_option
@click.option(
    "--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="UI port."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Only this machine can reach 127.0.0.1; to share the UI, give "
    "0.0.0.0 deliberately (with --allowed-hosts): anyone who reaches the port can then read and "
    "change your runs.",
)
@click.option(
    "--allowed-hosts",
    default=None,
    metavar="NAMES",
    help="Host names clients may use to reach a shared UI (comma-separated, e.g. "
    "myhost,myhost.lab:5000); passed to MLflow's security check.",
)
@_handle_errors
def ui(
    experiment: str | None,
    tracking_uri: str | None,
    port: int,
    host: str,
    allowed_hosts: str | None,
) -> None:
    """Open the MLflow UI on dlkit's store and print where an experiment's runs are.

    EXPERIMENT (a name or an experiment file) picks the runs page printed;
    without it, the latest experiment dlkit logged to.
    """
    import subprocess

    from dlkit.comparison.experiment_file import is_experiment_file, load_experiment
    from dlkit.tracking.stores import latest_experiment, resolve_tracking_uri, sqlite_path
    from dlkit.tracking.tracker import Tracker

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise DlkitError(
            f"{uri} is an MLflow server already: open it in a browser. `dlkit ui` serves a "
            "local store (sqlite:///... or a folder)."
        )
    if uri.startswith("sqlite:///") and not sqlite_path(uri).is_file():
        raise DlkitError(
            f"No MLflow store at {sqlite_path(uri)}. Run `dlkit compare "
            "experiments/quickstart.yaml` here first, or point --tracking-uri at your store."
        )
    if experiment and is_experiment_file(experiment):
        experiment = load_experiment(experiment).name
    name = experiment or latest_experiment(uri)
    if name is None:
        raise DlkitError(
            f"The MLflow store {uri} has no dlkit runs yet. Run `dlkit compare "
            "experiments/quickstart.yaml` first, or check --tracking-uri."
        )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    page = Tracker(uri, name, create=False).runs_page(address=f"http://{shown}:{port}")
    click.echo(f"MLflow UI for {uri}\nExperiment {name!r}: {page}\nStop it with Ctrl-C.")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"Listening on {host}: anyone who can reach port {port} of this machine can read "
            "and change these runs.",
            err=True,
        )
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", host, "--port", str(port)]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    from dlkit.tracking.ui import stop_group

    # A session of its own, so that stopping it stops its workers too, however dlkit ends.
    server = subprocess.Popen(command, start_new_session=True)
    try:
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        stop_group(server)
    if code not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise DlkitError(
            f"mlflow ui exited with status {code} (is port {port} in use? try --port)."
        )


def _check_writable(path: str) -> None:
    from pathlib import Path

    target = Path(path).expanduser()
    if target.is_dir():
        raise DlkitError(f"--json {path!r} is a folder. Give the path of a file to write.")
    if not target.resolve().parent.is_dir():
        raise DlkitError(
            f"--json {path!r}: the folder {str(target.resolve().parent)!r} does not exist. "
            "Create it, or give a path in an existing folder."
        )


def _devices(result: Any) -> str:
    return f"{result.replicas} {result.device}s" if result.replicas > 1 else result.device


def _print_report(comparison: Any, tracking_uri: str | None, wide: bool = False) -> None:
    from dlkit.text import wrap
    from dlkit.tracking.tracker import Tracker

    click.echo("\n" + comparison.format(wide=wide))
    if comparison.output_dir:
        files = ", ".join(path.name for path in comparison.files)
        text = f"Report files written to {comparison.output_dir}/: {files}"
        click.echo("\n" + "\n".join(wrap(text, subsequent="  ")))
    click.echo(f"MLflow: experiment {comparison.name!r}, parent run {comparison.parent_run_id}.")
    if comparison.registered:
        click.echo(f"Registered {comparison.best} as {comparison.registered}.")
    _print_review(Tracker(tracking_uri, comparison.name, create=False).runs_page(), tracking_uri)


def _print_review(page: str, tracking_uri: str | None) -> None:
    from dlkit.tracking.stores import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        click.echo(f"Review: {page}")
    else:
        given = "" if tracking_uri is None else f" --tracking-uri {uri}"
        click.echo(f"Review: run `dlkit ui{given}`,\n  and open {page}")


def run() -> None:
    """The `dlkit` program: `main`, then a quick exit.

    Python's last garbage collection at exit takes about 2 s once TensorFlow
    and a few trained models are loaded; every run is in MLflow by then, and
    the operating system frees the memory at once, so the objects are frozen
    out of it. Only the program does this: `main` in a test or notebook
    leaves their process as it was.
    """
    try:
        main()
    except _Interrupted as stop:
        # Every run is ended by now. A library's threads (a TFDS download's, say) would hold
        # the exit until they end, for minutes: the user asked to stop now. A Ray instance
        # this process started is stopped first (its own exit hook would not run).
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code)
    finally:
        gc.freeze()


if __name__ == "__main__":
    run()
