"""Exactly-once on a team's store: PostgreSQL behind `mlflow server`, both on 127.0.0.1.

A PostgreSQL cluster of the test's own (Debian's binaries: `apt-get install postgresql`) in a
temporary folder, on a free loopback port, with `mlflow server` over it. Through the server:
the four-process claims trial with seeded signals, a pack interrupted in one process and
resumed by another, and the team setup of docs/command-line.md as written there, on Ray.
Skipped, saying why, where PostgreSQL is not installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlkit.tracking import ui

pytestmark = pytest.mark.postgres  # on demand: pytest -m postgres -n 0

pytest.importorskip("psycopg", reason="pip install -e '.[test]' (psycopg, PostgreSQL's driver)")
BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
if BIN is None or not Path(BIN, "initdb").exists():
    pytest.skip("PostgreSQL is not installed: apt-get install postgresql", allow_module_level=True)


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@contextlib.contextmanager
def postgres(*, create: bool = True) -> Iterator[str]:
    """A PostgreSQL cluster of its own on 127.0.0.1; yields the URI of its database `mlflow`,
    which it creates unless not `create`.

    Its folder is outside pytest's (which only root may enter), owned by the server's user.
    """
    folder = Path(tempfile.mkdtemp(prefix="dlkit-postgres-"))
    data, port = folder / "data", ui.free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")

    def run(*args: str) -> None:
        subprocess.run(_as_postgres(list(args)), check=True, capture_output=True, text=True)

    run(f"{BIN}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
    run(f"{BIN}/pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        if create:
            run(f"{BIN}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        run(f"{BIN}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def team_server(tmp_path) -> Iterator[str]:
    """`mlflow server` over PostgreSQL, storing artifacts in a folder: a team's store."""
    with postgres() as database:
        with ui.serve(database, artifacts=str(tmp_path / "artifacts"), timeout=300) as address:
            yield address


def test_four_processes_and_six_signals_finish_each_member_once_on_postgresql(
    tmp_path, team_server
):
    from test_claims import four_processes_and_six_signals

    four_processes_and_six_signals(tmp_path, team_server)


def _team_setup() -> str:
    """The bash block of docs/command-line.md's team setup, as it is written there."""
    text = (Path(__file__).parents[1] / "docs" / "command-line.md").read_text()
    after = text.split("<!-- tests/test_postgres.py runs this block")[1]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


def test_the_team_setup_of_the_docs_runs_as_written(tmp_path):
    """Every command of the docs' team setup, verbatim, with ports of the test's own: each
    member of the quickstart FINISHED exactly once on Ray, through the server, over PostgreSQL."""
    import collections

    from mlflow.tracking import MlflowClient

    pytest.importorskip("ray", reason="pip install -e '.[ray]'")
    block = _team_setup()
    settings, rest = block.split("\n", 1)
    assert settings.startswith("export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres")
    (tmp_path / "experiments").mkdir()
    shutil.copy(
        Path(__file__).parents[1] / "experiments" / "quickstart.yaml", tmp_path / "experiments"
    )
    with postgres(create=False) as database:  # the block creates it
        port = database.rsplit(":", 1)[1].split("/")[0]
        mlflow_port, ray_port = ui.free_port(), ui.free_port()
        script = (
            f"export PGHOST=127.0.0.1 PGPORT={port} PGUSER=postgres MLFLOW_PORT={mlflow_port} "
            f"RAY_PORT={ray_port}\n{rest}"
        )
        env = {
            k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")
        }
        env["PATH"] = f"{Path(sys.executable).parent}:{BIN}:{env['PATH']}"  # dlkit, mlflow, ray
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray's head on the loopback only
        log = tmp_path / "output.txt"  # not a pipe: the server started with `&` keeps it open
        with log.open("w") as out:
            shell = subprocess.Popen(
                ["bash", "-e", "-c", script], cwd=tmp_path, env=env, start_new_session=True,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                shell.wait(timeout=1500)
            finally:
                subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True)
                ui.stop_group(shell)  # and the mlflow server the block started with `&`
        output = log.read_text()
        assert shell.returncode == 0, output
        assert "Traceback" not in output, output
        assert "Expectations" in output, output
        client = MlflowClient(database)  # what the server wrote, read from PostgreSQL itself
        experiment = client.get_experiment_by_name("quickstart").experiment_id
        runs = client.search_runs([experiment], "tags.`dlkit.role` = 'child'")
        assert runs and not [r for r in runs if r.info.status != "FINISHED"]
        done = collections.Counter(r.data.tags["dlkit.config_hash"] for r in runs)
        assert set(done.values()) == {1}, done


def test_a_pack_interrupted_in_one_process_is_resumed_by_another_through_the_server(
    tmp_path, team_server
):
    from test_checkpoints import sigint_mid_pack_then_a_rerun

    sigint_mid_pack_then_a_rerun(tmp_path, team_server)
