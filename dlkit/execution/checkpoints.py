"""Pack checkpoints: a pack in training saved between epochs, so that a rerun continues it.

A pack's state (stacked weights, optimizer slots and step, each member's history and
early-stopping state, which members have stopped) is saved as an artifact of the
comparison's parent run, `checkpoints/<key>.npz`, with a small `<key>.json` naming its
members (config hashes) and epoch. The parent's artifact location is the one place
every process and worker of a comparison already reaches, whatever the store: a
folder beside a sqlite store, or an MLflow server's artifact store for a team's. A
rerun, a second process, or a retried Ray task whose pack's members are all in one
checkpoint continues from it; once the members are logged, it is removed.

A save costs a write of the pack's weights and slots, so it is made only while the
saves so far took at most `BUDGET` of the training time (the first once the pack has
trained `FIRST` seconds, or as many as the `DLKIT_CHECKPOINT_AFTER` environment variable
says: 0 saves the first epoch), and always at the epoch an interrupt arrives in. The arrays are
stored with numpy's own format and the rest as JSON: nothing is unpickled from a shared
store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlkit.errors import DlkitError
from dlkit.tracking.tracker import Tracker

FOLDER = "checkpoints"
BUDGET = 0.05  # at most this share of a pack's training goes into saving it
FIRST = 2.0  # seconds of training before a first save: a shorter pack loses little to a stop
AFTER = "DLKIT_CHECKPOINT_AFTER"  # the environment variable that sets another FIRST


class PackCheckpoint:
    """The checkpoint of one pack of a comparison, kept with the parent run.

    Args:
        tracker: The comparison's tracker.
        parent_id: The comparison's parent run.
        members: Each member's config hash, in the pack's order.
    """

    def __init__(self, tracker: Tracker, parent_id: str, members: list[str]):
        self.tracker, self.parent_id, self.members = tracker, parent_id, list(members)
        self.key = hashlib.sha256("|".join(members).encode()).hexdigest()[:16]
        self.loaded_from: str | None = None  # the key of the checkpoint it continued
        self.loaded_epoch: int | None = None  # and that checkpoint's epoch
        self.saved_epoch: int | None = None  # the epoch of its last save
        self._saving, self._saves = 0.0, 0  # seconds spent saving, and saves
        self.first = _first()

    def due(self, training_seconds: float) -> bool:
        """Whether a save now keeps the saves within `BUDGET` of the training time (the
        next save counted at the mean cost of those before it); the first, after `FIRST`
        seconds of training, measures what one costs."""
        if not self._saves:
            return training_seconds >= self.first
        each = self._saving / self._saves
        return self._saving + each <= BUDGET * training_seconds

    def save(self, state: dict[str, Any]) -> None:
        """Saves `state` (a pack's, see `dlkit.nn.pack_training`), replacing its last one."""
        began = time.perf_counter()
        arrays: dict[str, np.ndarray] = {}
        meta = {"members": self.members, "state": _encode(state, arrays)}
        with tempfile.TemporaryDirectory(prefix="dlkit-") as tmp:
            data, index = Path(tmp, f"{self.key}.npz"), Path(tmp, f"{self.key}.json")
            np.savez(data, meta=np.array(json.dumps(meta)), **arrays)
            index.write_text(json.dumps({"members": self.members, "epochs": state["epochs"]}))
            self.tracker.log_artifact(self.parent_id, data, FOLDER)
            self.tracker.log_artifact(self.parent_id, index, FOLDER)  # written last: complete
        self.saved_epoch = int(state["epochs"])
        self._saving += time.perf_counter() - began
        self._saves += 1

    def load(self) -> dict[str, Any] | None:
        """The saved state of these members: from a checkpoint holding all of them (a
        pack whose other members finished meanwhile), the furthest trained; else `None`."""
        best = None
        for name in self.tracker.list_artifacts(self.parent_id, FOLDER):
            if not name.endswith(".json"):
                continue
            text = self.tracker.read_artifact(self.parent_id, f"{FOLDER}/{name}")
            try:
                index = json.loads(text or "")
            except ValueError:
                continue
            if set(self.members) <= set(index["members"]):
                if best is None or index["epochs"] > best[1]:
                    best = (name.removesuffix(".json"), index["epochs"])
        if best is None:
            return None
        blob = self.tracker.read_bytes(self.parent_id, f"{FOLDER}/{best[0]}.npz")
        if blob is None:
            return None
        with np.load(io.BytesIO(blob), allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            state = _decode(meta["state"], saved)
        self.loaded_from, self.loaded_epoch = best[0], int(best[1])
        return _rows(state, [meta["members"].index(m) for m in self.members])

    def kept(self, epochs: int) -> str:
        """What an interrupt left of this pack, for the command's last message."""
        runs = f"{len(self.members)} run{'s' if len(self.members) != 1 else ''}"
        return (
            f"the pack of {runs} in training was saved at epoch {self.saved_epoch} of "
            f"{epochs} and resumes on rerun"
        )

    def remove(self) -> None:
        """Deletes this pack's checkpoint and the one it continued, its members logged."""
        for key in {self.key, self.loaded_from} - {None}:
            for suffix in (".json", ".npz"):
                self.tracker.delete_artifact(self.parent_id, f"{FOLDER}/{key}{suffix}")


def _first() -> float:
    """Seconds of training before a pack's first save: `FIRST`, or the `AFTER` variable's."""
    text = os.environ.get(AFTER, "").strip()
    if not text:
        return FIRST
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise DlkitError(
            f"{AFTER} must be a number of seconds of training, 0 or more, before a pack's "
            f"first checkpoint. Received: {AFTER}={text!r}. Unset it for the default ({FIRST})."
        )
    return seconds


def _rows(state: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """The state of some members of a saved pack, in the order of `rows`: each stacked
    array's rows (members lead every weight and slot of rank 3), each member's record."""
    return {
        **state,
        "variables": [v[rows] for v in state["variables"]],
        "slots": [s[rows] if s.ndim == 3 else s for s in state["slots"]],
        "members": [state["members"][k] for k in rows],
    }


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """`value` as JSON, each array replaced by its name in `arrays`."""
    if isinstance(value, np.ndarray | np.generic):
        name = f"a{len(arrays)}"
        arrays[name] = np.asarray(value)
        return {"__array__": name}
    if isinstance(value, dict):
        return {key: _encode(item, arrays) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item, arrays) for item in value]
    return value


def _decode(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return np.array(arrays[value["__array__"]])
        return {key: _decode(item, arrays) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item, arrays) for item in value]
    return value
