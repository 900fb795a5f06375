"""Exactly-once on a team's store: PostgreSQL behind `mlflow server`, both on 127.0.0.1.

A PostgreSQL cluster of the test's own (Debian's binaries: `apt-get install postgresql`) in a
temporary folder, on a free loopback port, with `mlflow server` over it; then the
four-process claims trial, with seeded signals, through the server. Skipped, saying why,
where PostgreSQL is not installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
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
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster of its own on 127.0.0.1; yields the URI of its database `mlflow`.

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
