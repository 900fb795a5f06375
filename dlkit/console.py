"""A quiet terminal: TensorFlow's native start-up chatter filtered out, real errors kept.

TensorFlow's C++ side writes to the process's standard error before its own
log level (`TF_CPP_MIN_LOG_LEVEL`) is read: abseil's "All log messages before
absl::InitializeLog()", oneDNN and CUDA notes, and on a machine without a GPU
an error-level "failed call to cuInit". Python cannot catch those, so while
TensorFlow loads, file descriptor 2 goes to a temporary file, and afterwards
every line but the known noise is written back.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# Lines TensorFlow prints on every start-up that tell a user nothing they can act on.
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} \d\d:\d\d:\d\d"  # INFO and WARNING lines of TensorFlow's C++ log
    r"|E\d{4} .*failed call to cuInit"  # no GPU driver: TensorFlow runs on the CPU
    r"|To enable the following instructions:"  # the second line of an INFO note
    r")"
)


def load_tensorflow(*, verbose: bool = False) -> None:
    """Imports TensorFlow and lists its devices, hiding its start-up chatter unless `verbose`.

    A user's own `TF_CPP_MIN_LOG_LEVEL` wins over dlkit's default (`2`: errors only).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    if verbose or "tensorflow" in sys.modules:
        return
    with filtered_stderr(_NOISE):
        import tensorflow as tf

        tf.config.list_physical_devices()


@contextlib.contextmanager
def quiet_tensorflow_start() -> Iterator[None]:
    """Hides TensorFlow's start-up chatter should it load inside (a user's module that
    imports keras), as `load_tensorflow` does; a user's `TF_CPP_MIN_LOG_LEVEL` wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        yield
        return
    with filtered_stderr(_NOISE):
        yield
        if "tensorflow" in sys.modules:  # it loaded: its devices' start-up talks too
            sys.modules["tensorflow"].config.list_physical_devices()


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[str]) -> Iterator[None]:
    """Captures everything written to file descriptor 2 and writes back what `noise` misses."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not noise.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
