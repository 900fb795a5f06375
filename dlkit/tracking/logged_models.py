"""What a logged Keras model carries: pinned requirements, its own classes and their files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def model_requirements() -> list[str]:
    """What serving a dlkit model needs, pinned to what trained it."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("tensorflow", "keras", "numpy")]


def custom_objects(model: Any) -> dict[str, Any] | None:
    """The classes of `model` that are not Keras's own (dlkit's maxout layer, a registered
    model's layers), by registered name, for MLflow's loader."""
    from dlkit.nn.models import custom_classes

    return custom_classes(model) or None


def code_paths(model: Any) -> list[str] | None:
    """The files of the modules that define `model`'s own classes, where they are not part
    of an installed package: logged with the model (its `code/`), so that a loader in
    another process imports them first."""
    found = set()
    for cls in (custom_objects(model) or {}).values():
        module = sys.modules.get(cls.__module__)
        file = getattr(module, "__file__", None)
        if (
            file
            and "site-packages" not in Path(file).parts
            and not cls.__module__.startswith("dlkit.")
        ):
            found.add(file)
    return sorted(found) or None
