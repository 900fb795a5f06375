"""The CLI, in-process: listings, a real training, and every kind of user mistake."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from dlkit.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("recipes", "train"):
        assert command in result.output


def test_recipes_lists_every_preset_with_its_parameters():
    result = invoke("recipes")
    assert result.exit_code == 0
    assert "deep-relu" in result.output and "wide-sigmoid-dropout-early-stop" in result.output
    assert "784-500-500-500-10" in result.output and "898,510" in result.output
    digits = invoke("recipes", "--input-dim", "64")
    assert "64-500-500-500-10" in digits.output and "538,510" in digits.output


def test_recipes_and_help_do_not_import_tensorflow():
    code = (
        "import sys; from dlkit.cli import main\n"
        "for args in (['--help'], ['recipes']):\n"
        "    try: main(args)\n"
        "    except SystemExit: pass\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_the_program_skips_the_last_garbage_collection_and_main_does_not():
    # the dlkit program leaves its objects to the operating system at exit (2 s saved
    # with TensorFlow loaded); main called in a process of the user's keeps collecting
    code = (
        "import atexit, gc, sys; from dlkit.cli import run\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "sys.argv = ['dlkit', 'recipes']; run()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "deep-relu" in done.stdout and "frozen True" in done.stdout
    assert invoke("recipes").exit_code == 0
    assert gc.get_freeze_count() == 0


@pytest.mark.integration  # a real process or server, or a benchmark
def test_a_rerun_that_skips_every_child_does_not_import_tensorflow(tracking_uri, tmp_path):
    args = ["compare", "softmax-regression", "-d", "digits", "--train-size", "100", "-e", "1"]
    args += ["--tracking-uri", tracking_uri, "--output", str(tmp_path)]
    assert invoke(*args).exit_code == 0
    code = (
        "import sys; from dlkit.cli import main\n"
        f"try: main({args!r})\n"
        "except SystemExit as stop: assert not stop.code, stop.code\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 of 1 runs already finished" in done.stdout


def test_train_on_digits_logs_a_run(tracking_uri):
    result = invoke(
        "train",
        "deep-relu",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--train-size",
        "300",
        "--set",
        "width=32",
        "--tracking-uri",
        tracking_uri,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "Logged to MLflow: run" in result.output
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name("dlkit").experiment_id
    (run,) = client.search_runs([experiment_id])
    # The address of the run's own page, not the UI's front page.
    page = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run.info.run_id}"
    assert page in result.output and "dlkit ui --tracking-uri" in result.output
    assert run.info.status == "FINISHED"
    assert run.data.params["width"] == "32" and run.data.params["epochs"] == "2"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "dep-relu"], "Unknown recipe 'dep-relu'. Did you mean 'deep-relu'"),
        (["train", "deep-relu", "--set", "dropout=1.5"], "Received: dropout=1.5"),
        (["train", "deep-relu", "--set", "depth=-1"], "Received: depth=-1"),
        (["train", "deep-relu", "--set", "dropuot=0.2"], "Unknown recipe field 'dropuot'"),
        (["train", "deep-relu", "--set", "activation=relu7"], "Unknown activation"),
        (["train", "deep-relu", "-d", "./no/such/folder"], "does not exist"),
        (["train", "deep-relu", "-d", "mnsit", "--data-dir", "."], "Unknown dataset 'mnsit'"),
        (["train", "deep-relu", "--epochs", "0"], "Invalid value for '--epochs'"),
    ],
)
def test_user_mistakes_give_one_message_and_a_non_zero_exit(args, message):
    result = invoke(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_unreadable_file_is_a_user_mistake(tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    result = invoke(
        "train", "deep-relu", "-d", str(broken), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"
    )
    assert result.exit_code == 1
    assert "Cannot read" in result.output and "Traceback" not in result.output
