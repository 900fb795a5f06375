"""dlkit: fair, reproducible comparisons of fully connected networks on Keras.

Recipes (`get_recipe`, `list_recipes`, `register_recipe`, `Recipe`) are pure
Python. Everything that needs TensorFlow or MLflow is imported on first use,
so `import dlkit` and the CLI's listings start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from dlkit.errors import DlkitError
from dlkit.recipes import Recipe, get_recipe, list_recipes, register_recipe

__version__ = "0.1.0"

_LAZY = {
    "load_dataset": "dlkit.data",
    "Dataset": "dlkit.data",
    "build_model": "dlkit.models",
    "load_model": "dlkit.models",
    "Maxout": "dlkit.layers",
    "train": "dlkit.training",
    "fit": "dlkit.training",
    "TrainResult": "dlkit.training",
    "Tracker": "dlkit.tracking",
    "compare": "dlkit.comparison",
    "report": "dlkit.comparison",
    "Comparison": "dlkit.reports",
    "Experiment": "dlkit.experiments",
    "load_experiment": "dlkit.experiments",
}

__all__ = [
    "DlkitError",
    "Recipe",
    "get_recipe",
    "list_recipes",
    "register_recipe",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dlkit' has no attribute {name!r}")
