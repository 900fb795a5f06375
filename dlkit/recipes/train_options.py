"""How one training runs beside its recipe: its seed, output, callbacks, gradient norms, devices.

One small frozen value, checked and normalized once where a training enters dlkit (`dlkit.fit`,
`dlkit.train`, a comparison's child), and handed down from there as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dlkit.errors import DlkitError


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """How one training runs, beside what it trains (the recipe) and on what (the data).

    Args:
        seed: Seeds Python, NumPy, TensorFlow and the shuffle. Defaults to `0`.
        verbose: 0 silent, else one line per epoch (Keras's `fit`, when it trains, shows a
            progress bar at 1). Defaults to `2`.
        callbacks: Extra Keras callbacks, for an in-process caller only: they never travel
            to a worker. Defaults to `()`.
        gradient_norms: Log every layer's gradient norm per epoch. Defaults to `False`.
        devices: Devices one model trains on at once: a count of 1 or more, or `"all"` (every
            GPU); a count given as text (the command line's) is read as a number. Defaults
            to `1`.
    """

    seed: int = 0
    verbose: int | str = 2
    callbacks: tuple[Any, ...] = ()
    gradient_norms: bool = False
    devices: int | str = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "callbacks", tuple(self.callbacks))
        object.__setattr__(self, "devices", _devices(self.devices))

    @property
    def one_device(self) -> bool:
        """Whether the model trains on one device."""
        return self.devices == 1

    def replace(self, **fields: Any) -> TrainOptions:
        return dataclasses.replace(self, **fields)


def _devices(value: Any) -> int | str:
    if value == "all":
        return "all"
    try:
        count = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        count = None
    if count is None or count < 1:
        raise DlkitError(f"devices must be 1 or more, or 'all'. Received: {value!r}")
    return count
