"""TFDS downloads that fail fast without a network, quietly, and never retry for minutes.

TensorFlow Datasets retries each file ten times with a growing back-off, and
urllib3 logs every retry: offline, a first `mnist` spends minutes printing
warnings before its error. Before a dataset that is not prepared yet is
downloaded, `check_reachable` connects once to each host its files come from
(or to the HTTPS proxy that would), and a host that cannot be reached is one
clear error within seconds. `quiet_retries` then lets a real download retry a
few times, without a warning per retry.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator

from dlkit.errors import DlkitError

CONNECT_TIMEOUT = 5.0  # seconds to open a connection to a download host
RETRIES = 3  # tries of a file whose host answered, for its transient errors (TFDS's: 10)


def hosts(urls: Iterable[str]) -> list[str]:
    """The `host:port` pairs a set of URLs are fetched from, each once, in order."""
    found: dict[str, None] = {}
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            found[f"{parts.scheme}://{parts.hostname}:{port}"] = None
    return list(found)


def check_reachable(urls: Iterable[str], dataset: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Opens (and closes) one connection to each host of `urls`, or to the proxy configured
    for it (`HTTPS_PROXY`, `HTTP_PROXY`).

    Raises:
        DlkitError: A host (or its proxy) cannot be reached within `timeout` seconds.
    """
    proxies = urllib.request.getproxies()
    for address in hosts(urls):
        parts = urllib.parse.urlsplit(address)
        target = (parts.hostname, parts.port)
        proxy = proxies.get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname):
            via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            target = (via.hostname, via.port or 80)
        try:
            socket.create_connection(target, timeout=timeout).close()
        except OSError as error:
            through = "" if target[0] == parts.hostname else f" (through the proxy {proxy})"
            raise DlkitError(
                f"Cannot download TFDS dataset {dataset!r}: {parts.hostname} cannot be reached"
                f"{through}: {error.strerror or error}. This machine looks offline. Download it "
                "where there is a network and copy ~/tensorflow_datasets (or --data-dir) here, "
                "or point --dataset at a local folder of IDX files, a .npz file, or 'digits'."
            ) from None


@contextlib.contextmanager
def quiet_retries(retries: int = RETRIES) -> Iterator[None]:
    """While the block runs, TFDS tries a file `retries` times and urllib3 logs no retries."""
    from tensorflow_datasets.core.download import downloader

    logger = logging.getLogger("urllib3.connectionpool")
    before, level = downloader.MAX_RETRIES, logger.level
    downloader.MAX_RETRIES = retries
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        downloader.MAX_RETRIES = before
        logger.setLevel(level)
