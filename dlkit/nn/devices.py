"""Where training runs: the device TensorFlow uses, and a `MirroredStrategy` over several."""

from __future__ import annotations

import tensorflow as tf

from dlkit.errors import DlkitError


def device_name() -> str:
    """Returns `"GPU"` when TensorFlow sees one, else `"CPU"`."""
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def distribution(devices: int | str) -> tf.distribute.Strategy | None:
    """Returns the `MirroredStrategy` over `devices` devices (as `TrainOptions` holds them: a
    count of 1 or more, or `"all"`), or `None` for one device.

    GPUs when TensorFlow sees any; otherwise that many logical CPU devices,
    which TensorFlow allows only before its runtime starts in this process.
    """
    if devices == 1:
        return None
    gpus = tf.config.list_physical_devices("GPU")
    if devices == "all":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else None
    count = int(devices)
    if gpus:
        if count > len(gpus):
            raise DlkitError(
                f"devices={count}, but TensorFlow sees {len(gpus)} GPUs. Use at most "
                f"{len(gpus)}, or 'all'."
            )
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(count)])
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:  # the runtime started: only what it started with is there
        if len(tf.config.list_logical_devices("CPU")) < count:
            raise DlkitError(
                f"devices={count} on a machine without GPUs means {count} logical CPU devices, "
                "which TensorFlow creates only before it first runs. Train in a fresh process "
                "(the dlkit command does), before any other training."
            ) from None
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(count)])
