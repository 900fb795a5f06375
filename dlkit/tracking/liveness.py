"""Whether the process that holds a run still lives: its pid here, its heartbeat elsewhere."""

from __future__ import annotations

import os
import socket
import time

from dlkit import keys

# A process renews the heartbeat tag of the runs it holds this often, in seconds; a run of
# another machine whose heartbeat is older than HEARTBEAT_STALE is taken to be orphaned (the
# clocks of the two machines may differ by less than the difference of the two).
HEARTBEAT_EVERY = 60.0


HEARTBEAT_STALE = 600.0


def process_alive(tags: dict[str, str], now: float | None = None) -> bool:
    """Whether the process a run's `dlkit.host`/`dlkit.pid` tags name still runs.

    On this machine, the pid says so. On another one, the run's heartbeat
    does: it is renewed every `HEARTBEAT_EVERY` seconds while the process
    holds the run, so one older than `HEARTBEAT_STALE` is a process gone. A
    run of another machine without a heartbeat (an older dlkit) counts as alive.
    """
    host, pid = tags.get(keys.HOST), tags.get(keys.PID)
    if host is None or pid is None or not pid.isdigit():
        return False
    if host != socket.gethostname():
        beat = tags.get(keys.HEARTBEAT, "")
        if not beat.replace(".", "", 1).isdigit():
            return True  # nothing here can tell, so leave it
        return (time.time() if now is None else now) - float(beat) < HEARTBEAT_STALE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """Whether `pid` has ended but its parent has not reaped it yet (Linux; elsewhere
    no such process is told apart)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
