"""Interrupts: Ctrl-C and SIGTERM end a command the same clean way, as a scheduler sends them.

Inside `handled()`, the first SIGINT or SIGTERM raises `Interrupted` (a
`KeyboardInterrupt`) and is remembered, so that an exception TensorFlow or a
garbage-collection callback makes of it, or swallows, is still treated as the
interrupt: the run ends KILLED, never FAILED, and the command stops. A second
signal ends the process at once; the next run marks what it left RUNNING as KILLED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None
_patient = False


class Interrupted(KeyboardInterrupt):
    """The user (Ctrl-C) or a scheduler (SIGTERM) asked dlkit to stop.

    Attributes:
        signum: The signal received.
        exit_code: What the command exits with: 128 + the signal number.
    """

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


def received() -> int | None:
    """Returns the signal received inside `handled()`, or `None`."""
    return _received


def check() -> None:
    """Raises `Interrupted` if a signal arrived, even if its first exception was swallowed."""
    if _received is not None:
        raise Interrupted(_received)


@contextlib.contextmanager
def handled(*signums: int, patient: bool = False) -> Iterator[None]:
    """Turns SIGINT and SIGTERM (or only `signums`) into `Interrupted` for the duration of the
    block.

    A second signal ends the process at once, unless `patient`: then it is ignored, and the
    block ends its run as the first one asked (a worker whose parent is already stopping it,
    and may say so twice).

    Only the main thread can own signal handlers; elsewhere this does nothing.
    """
    global _received, _patient
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    _patient = patient
    previous = {signum: signal.getsignal(signum) for signum in signums or _SIGNALS}
    for signum in previous:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received = None
        _patient = False


def stop_at_once_on_another() -> None:
    """From now on, any SIGINT or SIGTERM ends the process at once: a command that is ending.

    Call it from the main thread while an interrupt is being handled, so that a second
    Ctrl-C during the clean-up stops the process, without a traceback.
    """
    if threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            signal.signal(signum, _exit_now)


def _exit_now(signum: int, frame: object) -> None:
    sys.stderr.write(
        "\nSecond interrupt: stopping at once. Finished runs are kept; the next run "
        "marks the ones left RUNNING as KILLED.\n"
    )
    sys.stderr.flush()
    os._exit(128 + signum)


def _handler(signum: int, frame: object) -> None:
    global _received
    if _received is not None:
        if _patient:
            return
        _exit_now(signum, frame)
    _received = signum
    raise Interrupted(signum)
