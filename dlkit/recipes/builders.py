"""Your own Keras models as recipes: builders registered by name, and where each came from.

A builder is a function `(recipe, input_shape, num_classes) -> keras.Model` that defines an
architecture; the recipe it is given still says how it trains (optimizer, learning rate and
its decay, loss, batch size, epochs, early stopping, weight decay, precision, the inputs'
normalization). `register_model` files it under a name, which is also a recipe's name
(`get_recipe(name)` is `Recipe(model=name)`), so that experiment files, `--set`, `tune:` and
`dlkit compare NAME ...` take it as they take a preset. This module knows nothing of
recipes beyond their `model` field: `dlkit.recipes.recipe` reads it, not the other way.

Builders come from three places: a module imported by the user's own code, a module an
experiment file names (`imports:`) or the command line does (`--import`), and installed
packages' entry points in the group `dlkit.models` (each a module, imported when a name
is looked up). A comparison's specs carry the file of each model's module, so that worker
processes and Ray tasks import the very same file before they build anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from dlkit.errors import DlkitError, closest

# The recipe fields that describe an architecture. A builder declares which of them it
# reads (`uses=`); setting any other one on its recipe is an error, not a silent no-op.
ARCHITECTURE = (
    "depth",
    "width",
    "widths",
    "match_depth",
    "match_recipe",
    "conv_filters",
    "kernel_size",
    "pool_size",
    "activation",
    "maxout_pieces",
    "input_dropout",
    "dropout",
    "max_norm",
    "initializer",
)
ENTRY_POINTS = "dlkit.models"


@dataclasses.dataclass(frozen=True)
class Builder:
    """A registered model builder.

    Attributes:
        name: The name experiment files and the command line use.
        function: The builder, `(recipe, input_shape, num_classes) -> keras.Model`.
        uses: The `ARCHITECTURE` fields it reads from its recipe.
        origin: Where it came from, as `dlkit recipes` shows it.
    """

    name: str
    function: Callable[..., Any]
    uses: tuple[str, ...]
    origin: str

    @property
    def identity(self) -> str:
        """The builder's qualified name and a digest of its source and of the functions and
        classes of its module it uses (a helper, a custom layer): part of every config hash
        of its runs, so that editing them retrains and leaving them alone resumes."""
        function = self.function
        digest = hashlib.sha256("\n".join(_sources(function)).encode()).hexdigest()[:12]
        return f"{function.__module__}.{function.__qualname__}@{digest}"


def _sources(function: Callable[..., Any]) -> list[str]:
    """The source of `function` and of what it names from its own module, transitively."""
    module = sys.modules.get(function.__module__)
    texts, seen, waiting = [], set(), [function]
    while waiting:
        item = waiting.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        try:
            texts.append(inspect.getsource(item))
        except (OSError, TypeError):  # defined where no source is kept (a REPL)
            texts.append(getattr(getattr(item, "__code__", None), "co_code", b"").hex())
        for name in sorted(_names(item)):
            found = getattr(module, name, None)
            if (inspect.isfunction(found) or inspect.isclass(found)) and (
                found.__module__ == function.__module__
            ):
                waiting.append(found)
    return texts


def _names(item: Any) -> set[str]:
    """The global names a function's code (its nested code too) or a class's methods use."""
    if inspect.isclass(item):
        return set().union(*(_names(v) for v in vars(item).values() if inspect.isfunction(v)))
    names, codes = set(), [getattr(item, "__code__", None)]
    while codes:
        code = codes.pop()
        if code is None:
            continue
        names.update(code.co_names)
        codes += [c for c in code.co_consts if inspect.iscode(c)]
    return names


_BUILDERS: dict[str, Builder] = {}
_ENTRY_POINTS_LOADED = False


def register_model(
    name: str | Callable[..., Any] | None = None,
    *,
    uses: Iterable[str] = (),
    replace: bool = False,
) -> Callable[..., Any]:
    """Registers a Keras model builder under `name`, as a model and as a recipe of that name.

    Args:
        name: The registry name. Defaults to the function's name with `_` as `-`.
        uses: The architecture fields of the recipe the builder reads (from `ARCHITECTURE`:
            `depth`, `width`, `activation`, `dropout` and so on); setting any other one
            on its recipe is an error. Defaults to none.
        replace: Allow replacing a builder already registered under `name`.

    Returns:
        A decorator that returns the function unchanged.

    Example:

    >>> import keras
    >>> @register_model("tiny-mlp", uses=["width"])
    ... def tiny_mlp(recipe, input_shape, num_classes):
    ...     return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
    ...                              keras.layers.Dense(recipe.width, activation="relu"),
    ...                              keras.layers.Dense(num_classes)])
    """
    if callable(name):  # @register_model without parentheses
        return register_model(uses=uses, replace=replace)(name)
    used = tuple(uses)
    unknown = [field for field in used if field not in ARCHITECTURE]
    if unknown:
        raise DlkitError(
            f"register_model(uses=...) names {', '.join(map(repr, unknown))}, which is not an "
            f"architecture field. Choose from: {', '.join(ARCHITECTURE)}."
        )

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        key = name or function.__name__.replace("_", "-")
        if key in _BUILDERS and not replace and not _same(_BUILDERS[key].function, function):
            raise DlkitError(
                f"A model named {key!r} is already registered ({_BUILDERS[key].origin}). "
                "Choose another name, or pass replace=True to register_model."
            )
        _BUILDERS[key] = Builder(key, function, used, _origin(function))
        return function

    return decorate


def _same(registered: Callable[..., Any], function: Callable[..., Any]) -> bool:
    """Whether `function` is `registered` again: the same function, or its module run again
    (a module imported afresh, a notebook cell run twice), which replaces it."""
    return (registered.__module__, registered.__qualname__) == (
        function.__module__,
        function.__qualname__,
    )


def get_builder(name: str) -> Builder:
    """The builder registered as `name`.

    Raises:
        DlkitError: No builder has that name, with the closest names and where builders
            come from.
    """
    if name not in _BUILDERS:
        load_entry_points()
    if name not in _BUILDERS:
        raise DlkitError(
            f"Unknown model {name!r}.{closest(name, _BUILDERS)} A model is registered with "
            "@dlkit.register_model in a module that is imported first: name it in the "
            "experiment file's `imports:` or with --import MODULE."
        )
    return _BUILDERS[name]


def list_builders() -> list[Builder]:
    """Every registered builder, those of installed packages' entry points included."""
    load_entry_points()
    return list(_BUILDERS.values())


def unregister_model(name: str) -> None:
    """Removes the model `name` (for tests and interactive sessions)."""
    get_builder(name)
    del _BUILDERS[name]


def load_entry_points() -> None:
    """Imports the modules installed packages expose in the `dlkit.models` group, once."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINTS):
        try:
            point.load()
        except Exception as error:
            raise DlkitError(
                f"The package entry point {point.name!r} ({point.value}) in group "
                f"{ENTRY_POINTS!r} failed to import: {type(error).__name__}: {error}"
            ) from None


def import_modules(names: Sequence[str], *, folder: str | Path | None = None) -> dict[str, str]:
    """Imports modules that register models; returns each module's name and file.

    Args:
        names: Module names (`models`, `mypkg.models`) or paths of `.py` files. A name is
            looked for first in `folder` (an experiment file's folder), then the current
            folder, then among installed modules.
        folder: Where relative names resolve first. Defaults to the current folder.

    Raises:
        DlkitError: A module is not found or fails to import (its error is named).
    """
    from dlkit.console import quiet_tensorflow_start

    imported = {}
    for name in names:
        with quiet_tensorflow_start():  # a module that imports keras loads TensorFlow
            module = _import(str(name), Path(folder) if folder else Path.cwd())
        imported[module.__name__] = getattr(module, "__file__", None) or ""
    return imported


def modules_of(recipe: Any) -> dict[str, str]:
    """The module that registers `recipe`'s model, as `{name: file}` (none for a preset):
    what a worker imports to build it."""
    if not recipe.model:
        return {}
    function = get_builder(recipe.model).function
    module = sys.modules.get(function.__module__)
    return {function.__module__: getattr(module, "__file__", None) or ""}


def ensure_imported(modules: dict[str, str]) -> None:
    """Imports, in a worker, the modules a spec's model needs (`modules_of` in the process
    that made it): each from its file where that file is here, else by name (a Ray
    task's `py_modules`, an installed package)."""
    for name, file in modules.items():
        if name in sys.modules or name == "__main__":  # a script's: this process only
            continue
        path = Path(file) if file else None
        try:
            # A module of a package imports by its name, its package first; a lone file
            # (a module beside an experiment file) from where it is.
            if "." not in name and path is not None and path.is_file():
                _import_file(path.resolve())
            else:
                importlib.import_module(name)
        except Exception as error:
            raise DlkitError(
                f"This worker cannot import {name!r} ({file or 'installed'}), which registers "
                f"the models it trains: {type(error).__name__}: {error}"
            ) from None


def _import(name: str, folder: Path) -> Any:
    path = Path(name) if name.endswith(".py") else None
    if path is None:
        for base in (folder, Path.cwd()):
            candidate = base / (name.replace(".", "/") + ".py")
            if candidate.is_file():
                path = candidate
                break
    elif not path.is_absolute():
        path = next((b / path for b in (folder, Path.cwd()) if (b / path).is_file()), path)
    try:
        if path is None:
            return importlib.import_module(name)
        if not path.is_file():
            raise DlkitError(f"No module file {str(path)!r} to import.")
        return _import_file(path.resolve())
    except DlkitError:
        raise
    except ModuleNotFoundError as error:
        if error.name == name:
            places = " and ".join(dict.fromkeys(str(p) for p in (folder, Path.cwd())))
            raise DlkitError(
                f"No module {name!r} to import: looked in {places}, and among installed "
                "packages. Give its file's path, or the folder it is in."
            ) from None
        raise DlkitError(f"Importing {name!r} failed: {error}") from None
    except Exception as error:
        raise DlkitError(f"Importing {name!r} failed: {type(error).__name__}: {error}") from None


def _import_file(path: Path) -> Any:
    """Imports the module at `path` under its file's stem, its folder on `sys.path` (so that
    pickled references and Keras's registered classes find it again by name)."""
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _origin(function: Callable[..., Any]) -> str:
    module = sys.modules.get(function.__module__)
    file = getattr(module, "__file__", None)
    if function.__module__ == "__main__" or not file:
        return f"{function.__module__} (this session)"
    return f"{function.__module__} ({_short(file)})"


def _short(file: str) -> str:
    try:
        return str(Path(file).resolve().relative_to(Path.cwd()))
    except ValueError:
        return file
