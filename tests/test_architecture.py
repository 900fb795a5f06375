"""The package's seams: one-way imports, one door to MLflow, light modules free of TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dlkit"
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
    for p in PACKAGE.rglob("*.py")
    if p.stem != "__init__"
)
HEAVY = ("tensorflow", "keras", "tensorflow_datasets")
# Modules a command that only lists, validates or reads MLflow goes through.
LIGHT = (
    "errors",
    "text",
    "keys",
    "recipes.recipe",
    "recipes.presets",
    "comparison.options",
    "data.sources",
    "data.dataset",
    "comparison.expectations",
    "comparison.experiment",
    "tracking.tracker",
    "comparison.reports",
    "execution.runs",
    "comparison.compare",
    "comparison.plots",
    "cli",
)


def imports(module: str, *, top_level_only: bool = False) -> set[str]:
    """Returns every module `module` imports, lazily inside functions too unless asked not to.

    Top level only means the statements run on import, so `if TYPE_CHECKING:`
    blocks and function bodies are left out.
    """
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module.startswith("dlkit"):  # `from dlkit.recipes import presets`
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def dlkit_edges() -> dict[str, set[str]]:
    return {
        module: {
            name.removeprefix("dlkit.")
            for name in imports(module)
            if name.startswith("dlkit.") and name.removeprefix("dlkit.") in MODULES
        }
        for module in MODULES
    }


def test_the_import_graph_has_no_cycle():
    edges = dlkit_edges()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_only_the_tracking_module_imports_mlflow():
    users = [m for m in MODULES if any(n.split(".")[0] == "mlflow" for n in imports(m))]
    assert users == ["tracking.tracker"]


def test_recipes_are_pure_data():
    assert not {n.split(".")[0] for n in imports("recipes.recipe")} & {*HEAVY, "numpy"}
    assert imports("recipes.recipe") & {f"dlkit.{m}" for m in MODULES} == {"dlkit.errors"}


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_import_no_tensorflow_at_load(module):
    assert not {n.split(".")[0] for n in imports(module, top_level_only=True)} & set(HEAVY)


def test_reading_a_comparison_does_not_load_tensorflow():
    code = (
        "import sys\n"
        "import dlkit, dlkit.cli, dlkit.comparison.compare, dlkit.comparison.reports\n"
        "import dlkit.execution.runs\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
