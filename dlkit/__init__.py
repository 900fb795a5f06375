"""dlkit: fair, reproducible comparisons of neural networks on Keras, logged to MLflow.

Recipes (`get_recipe`, `list_recipes`, `register_recipe`, `Recipe`) are pure
Python, and data sources and your own Keras models register the same way
(`register_source`, `register_model`).
Everything that needs TensorFlow or MLflow is imported on first use, so
`import dlkit` and the CLI's listings start fast.

The subpackages depend on each other one way, each on those before it:
`recipes/` (pure data) -> `data/` (sources, datasets, tf.data pipelines) ->
`nn/` (models and training: the only folder that loads TensorFlow on import)
-> `tracking/` (the one door to MLflow) -> `execution/` (a training inside a
run; where children train) -> `comparison/` (experiment files, the comparison,
its report) -> `bench/`. What every layer uses (errors, text, keys, signals,
console) sits at the root below them all, and the CLI (`cli`) on top.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import Any

__version__ = "0.1.0"

# TensorFlow's x86 builds turn on their oneDNN kernels by themselves only on Linux and only on
# CPUs with AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX; elsewhere (AVX2 only, say) they run
# Eigen's, and a pack trains 1.1-1.8x and a convnet 2x slower (docs/speed.md). TensorFlow reads
# the switch once, as it loads: set here, before anything of dlkit imports it. A user's own
# setting wins. Not on ARM, where oneDNN is experimental and was not measured.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# What TensorFlow runs with, as every run records it (tag dlkit.onednn): the switch as it was
# when TensorFlow loaded; loaded before dlkit, TensorFlow read it before dlkit could set it.
ONEDNN = (
    "as TensorFlow found it (loaded before dlkit)"
    if "tensorflow" in sys.modules
    else os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow's default")
)

from dlkit.data.sources import register_source  # noqa: E402
from dlkit.errors import DlkitError  # noqa: E402
from dlkit.recipes import presets  # noqa: E402, F401  (registers the presets on import)
from dlkit.recipes.builders import register_model  # noqa: E402
from dlkit.recipes.recipe import Recipe, get_recipe, list_recipes, register_recipe  # noqa: E402

_LAZY = {
    "load_dataset": "dlkit.data.dataset",
    "Dataset": "dlkit.data.dataset",
    "DataSpec": "dlkit.data.dataset",
    "build_model": "dlkit.nn.models",
    "load_model": "dlkit.execution.runs",
    "Maxout": "dlkit.nn.layers",
    "fit": "dlkit.nn.training",
    "TrainResult": "dlkit.nn.results",
    "train": "dlkit.execution.runs",
    "compare": "dlkit.comparison.compare",
    "report": "dlkit.comparison.compare",
    "Options": "dlkit.comparison.options",
    "Comparison": "dlkit.comparison.reports",
    "Experiment": "dlkit.comparison.experiment",
    "load_experiment": "dlkit.comparison.experiment_file",
}

__all__ = [
    "DlkitError",
    "Recipe",
    "get_recipe",
    "list_recipes",
    "register_model",
    "register_recipe",
    "register_source",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = sys.modules.get(_LAZY[name])
        if module is None:
            from dlkit.console import quiet_tensorflow_start

            # A script's first `dlkit.fit` loads TensorFlow: without its start-up chatter on
            # standard error, as the command line does (a user's TF_CPP_MIN_LOG_LEVEL wins).
            with quiet_tensorflow_start():
                module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'dlkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazily imported ones among them (tab completion sees them)."""
    return sorted({*__all__, "__version__"})
