"""A TFDS dataset on a machine that cannot download it, in a real `dlkit` process.

Offline is made the way it looks to a download, without a packet beyond 127.0.0.1:
`HTTPS_PROXY` points at a loopback port. Nothing listening there is a network that
refuses; a listener that takes the connection and never answers is one that hangs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dlkit.data.downloads import hosts

pytestmark = pytest.mark.integration

COMMAND = ["compare", "deep-relu", "--dataset", "mnist", "--seeds", "1", "--epochs", "1"]


def dlkit(tmp_path: Path, proxy_port: int, **popen) -> subprocess.Popen:
    env = {
        **os.environ,
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
        "HTTP_PROXY": f"http://127.0.0.1:{proxy_port}",
        "NO_PROXY": "",
        "TFDS_DATA_DIR": str(tmp_path / "tfds"),  # not a copy this machine may have prepared
    }
    store = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    return subprocess.Popen(
        [sys.executable, "-c", "from dlkit.cli import run; run()", *COMMAND, *store],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.fixture
def hanging_proxy():
    """A loopback listener that accepts connections and never answers; yields its port and
    the requests it was sent."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    seen: list[bytes] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            connection.settimeout(30)
            try:
                seen.append(connection.recv(200))
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], seen
    server.close()
    for connection in held:
        connection.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_hosts_are_each_fetched_from_once():
    urls = ["https://a.org/x.gz", "https://a.org/y.gz", "http://b.org:8080/z", "ftp://c.org/w"]
    assert hosts(urls) == ["https://a.org:443", "http://b.org:8080"]


def test_an_unreachable_download_fails_at_once_with_one_clear_message(tmp_path):
    started = time.monotonic()
    process = dlkit(tmp_path, closed_port())
    out, err = process.communicate(timeout=120)
    took = time.monotonic() - started
    assert process.returncode == 1, err
    assert "Cannot download TFDS dataset 'mnist': storage.googleapis.com cannot be reached" in err
    assert "--dataset" in err and "Traceback" not in err
    # no retry after retry (TFDS's own would try each file 10 times, warning each time)
    assert "Retrying" not in err and "urllib3" not in err
    assert took < 60, f"{took:.0f} s"  # minutes before; a few seconds and TensorFlow's start
    assert not (tmp_path / "mlflow.db").exists()  # the data fails before a run is opened


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_a_download_ends_the_command_at_once(tmp_path, hanging_proxy, signum):
    port, seen = hanging_proxy
    process = dlkit(tmp_path, port)
    deadline = time.monotonic() + 120
    # the download itself has started: its tunnel request reached the "network"
    while not any(request.startswith(b"CONNECT ") for request in seen):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.2)
    process.send_signal(signum)
    stopped = time.monotonic()
    _, err = process.communicate(timeout=60)  # the download threads would hang for good
    assert time.monotonic() - stopped < 10
    assert process.returncode == 128 + signum
    assert "Interrupted (" in err and "Traceback" not in err
