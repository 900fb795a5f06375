"""The MLflow UI as a user sees it: served on loopback, and driven in a real browser.

`serve(tracking_uri)` starts `mlflow ui` on 127.0.0.1 over a store and stops it
afterwards. The page helpers take a Playwright page (Playwright is not a
dependency of dlkit; `docs/screenshots.py` and the browser test bring it) and
know the few things about MLflow 3's runs table that a script needs: when it
has loaded, how to close the assistant panel, how to expand a parent run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from dlkit.errors import DlkitError

CHROMIUM = "/usr/bin/chromium"  # Debian's package: `apt-get install chromium`


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve(
    tracking_uri: str,
    *,
    port: int | None = None,
    artifacts: str | None = None,
    timeout: float = 120,
) -> Iterator[str]:
    """Runs an MLflow server on 127.0.0.1 over `tracking_uri`; yields its address, then stops it.

    With `artifacts` (a folder), the server also stores and serves the
    artifacts of experiments created through it (`--artifacts-destination`):
    the shared tracking server of a distributed comparison.

    Raises:
        DlkitError: The UI did not answer within `timeout` seconds.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri]
    if artifacts:
        command += ["--artifacts-destination", artifacts]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers stop with it
    )
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{address}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise DlkitError(
                        f"mlflow server on port {port} did not start (exit {server.poll()})."
                    ) from None
                time.sleep(0.5)
        yield address
    finally:
        stop_group(server)


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stops a process started with `start_new_session=True` and every process it started
    (an MLflow server's workers would otherwise serve on, reparented to init)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def open_runs(page: Any, runs_page: str, *, timeout: float = 120) -> None:
    """Opens an experiment's runs table and waits until its rows are drawn."""
    page.goto(runs_page)
    page.locator(".ag-pinned-left-cols-container .ag-row").first.wait_for(timeout=timeout * 1000)
    close_assistant(page)


def close_assistant(page: Any) -> None:
    """Closes MLflow's assistant side panel when it is open, so the runs get the width."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()


def expand_parent(page: Any, name: str) -> None:
    """Expands the first parent run called `name`, showing its children under it."""
    cell = page.locator(".ag-pinned-left-cols-container .ag-row").filter(has_text=name).first
    cell.locator("button").first.click()


def run_names(page: Any) -> list[str]:
    """Returns the run names the runs table shows, top to bottom."""
    rows = page.locator(".ag-pinned-left-cols-container .ag-row a")
    return [text.strip() for text in rows.all_inner_texts()]
