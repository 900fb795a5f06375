"""Interrupts: Ctrl-C and SIGTERM end a command the same clean way, as a scheduler sends them.

Inside `handled()`, the first SIGINT or SIGTERM raises `Interrupted` (a
`KeyboardInterrupt`) and is remembered, so that an exception TensorFlow or a
garbage-collection callback makes of it, or swallows, is still treated as the
interrupt: the run ends KILLED, never FAILED, and the command stops. A second
signal ends the process at once; the next run marks what it left RUNNING as KILLED.
A first signal that lands inside a finalizer (`__del__`) or a weak reference's
callback, where Python would print its exception and drop it, is sent again a
moment later and raised outside it.

Inside `deferred()` (every call into the tracking store) the first signal is
held and raised when the call returns: an exception raised inside a SQLAlchemy
session would leave its connection in an open transaction, and SQLite would
then refuse the clean-up's own write ("database is locked").

`hold()`, at the end of every epoch of every training, waits while the file named
by `DLKIT_HOLD` exists: a training stops at a known point (after the epoch's
checkpoint) for as long as someone outside wants, and a signal or a kill then
finds it there, however fast the CPU trained.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HOLD = "DLKIT_HOLD"  # names a file: while it exists, training waits at each epoch's end
_received: int | None = None
_patient = False
_handling = False  # inside handled(): our handler owns SIGINT and SIGTERM
_deferring = False  # inside deferred(): a first signal is held, not raised
_held: int | None = None
_again = False  # a signal that landed in a finalizer is sent again: not a second one
_notes: list[str] = []  # what an interrupted command kept, beyond its finished runs


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


def note(text: str) -> None:
    """Records what an interrupt left to resume (`the pack of 4 runs in training was saved
    at epoch 3 of 5 and resumes on rerun`), for the command's last message."""
    _notes.append(text)


def notes() -> list[str]:
    """What `note` recorded since `handled()` began."""
    return list(_notes)


def hold() -> float:
    """Waits while the file named by the `DLKIT_HOLD` environment variable exists, until a
    signal arrives; called at each epoch's end, after its checkpoint.

    Returns:
        The seconds it waited, which are not training time.
    """
    path = os.environ.get(HOLD)
    began = time.perf_counter()
    while path and os.path.exists(path) and _received is None:
        time.sleep(0.02)
    return time.perf_counter() - began


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
    global _received, _patient, _handling, _again
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received, _again = None, False
    _patient = patient
    _notes.clear()
    previous = {signum: signal.getsignal(signum) for signum in signums or _SIGNALS}
    for signum in previous:
        signal.signal(signum, _handler)
    _handling = True
    hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_unraisable, hook)
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received, _again = None, False
        _patient = False
        _handling = False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Holds back the first SIGINT or SIGTERM while the block runs, and raises it after.

    For calls into the tracking store, which must not stop halfway through a
    transaction. The held signal is raised as `Interrupted` when the block
    returns (chained to the block's own error, if it raised one). A second
    signal still ends the process at once inside `handled()`. Outside it (a
    user's own Python process, a notebook) Ctrl-C is held the same way, and
    further ones during the block are ignored rather than ending the process.
    Nested blocks and threads other than the main one run as they are.
    """
    global _deferring, _received, _patient
    if _deferring or threading.current_thread() is not threading.main_thread():
        yield
        return
    borrowed = not _handling and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if borrowed:
        _received, _patient = None, True
        signal.signal(signal.SIGINT, _handler)
    _deferring = True
    try:
        yield
    except BaseException as error:
        held = _end_deferral(borrowed)
        if held is None or isinstance(error, Interrupted):  # the block raised it itself
            raise
        raise Interrupted(held) from error
    held = _end_deferral(borrowed)
    if held is not None:
        raise Interrupted(held)


def _end_deferral(borrowed: bool) -> int | None:
    """Ends a `deferred()` block; returns the signal it held, if any."""
    global _deferring, _held, _received, _patient
    _deferring = False
    held, _held = _held, None
    if borrowed:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _received, _patient = None, False
    return held


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


def _handler(signum: int, frame: Any) -> None:
    global _received, _held, _again
    if _received is not None and not _again:
        if _patient:
            return
        _exit_now(signum, frame)
    _again = False
    _received = signum
    if _deferring:
        _held = signum
        return
    if _in_finalizer(frame):
        # Python prints an exception raised in a finalizer ("Exception ignored") and drops
        # it: the signal comes again a moment later, outside it.
        _send_again(signum)
        return
    raise Interrupted(signum)


def _send_again(signum: int) -> None:
    global _again
    _again = True
    again = threading.Timer(0.01, os.kill, (os.getpid(), signum))
    again.daemon = True
    again.start()


def _unraisable(hook: Callable[[Any], None], info: Any) -> None:
    """`sys.unraisablehook` inside `handled()`: an interrupt raised where Python can only
    print it and drop it (a weak reference's callback, which `_in_finalizer` cannot tell
    from its frames) is sent again, to be raised outside it. Anything else goes to `hook`."""
    if isinstance(info.exc_value, Interrupted):
        _send_again(info.exc_value.signum)
        return
    hook(info)


def _in_finalizer(frame: Any) -> bool:
    """Whether `frame` runs inside an object's `__del__` (TensorFlow's run at any time)."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False
