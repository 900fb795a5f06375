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
# The folders, lowest first: data flows recipe -> model -> data pipeline -> training ->
# tracking -> runs -> comparison report. A module imports from its own folder, from a
# folder before it, and from the root modules every layer uses; the CLI sits on top.
FOLDERS = ("recipes", "data", "nn", "tracking", "execution", "comparison", "bench")
SHARED = ("errors", "text", "keys", "signals", "console")
TOP = ("cli", "cli_options")
# The one folder that may import TensorFlow when loaded: commands that list, validate or
# read MLflow never load it. The benchmarks load it on use.
TENSORFLOW_FOLDER = "nn"


def folder(module: str) -> str:
    return module.split(".")[0] if "." in module else ""


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


def test_every_module_is_in_a_folder_or_named_at_the_root():
    root = {m for m in MODULES if not folder(m)}
    assert root == {*SHARED, *TOP}
    assert {folder(m) for m in MODULES} - {""} == set(FOLDERS)


@pytest.mark.parametrize("module", [m for m in MODULES if m not in TOP])
def test_a_module_imports_only_its_own_folder_earlier_folders_and_the_shared_root(module):
    allowed = set(SHARED)
    if folder(module):
        allowed |= {m for m in MODULES if folder(m) in FOLDERS[: FOLDERS.index(folder(module)) + 1]}
    assert dlkit_edges()[module] <= allowed, dlkit_edges()[module] - allowed


def test_only_the_tracking_folder_imports_mlflow():
    users = [m for m in MODULES if any(n.split(".")[0] == "mlflow" for n in imports(m))]
    assert users and {folder(m) for m in users} == {"tracking"}


def test_recipes_are_pure_python():
    for module in (m for m in MODULES if folder(m) == "recipes"):
        assert not {n.split(".")[0] for n in imports(module)} & {*HEAVY, "numpy"}, module


@pytest.mark.parametrize("module", [m for m in MODULES if folder(m) != TENSORFLOW_FOLDER])
def test_outside_nn_no_module_imports_tensorflow_when_loaded(module):
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


MAX_MODULE_LINES = 600  # "about 500": a module past it holds more than one job
MAX_FUNCTION_LINES = 60  # lines of code in a body: blank lines, comments and docstrings not counted


def _code_lines(path: Path, node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = path.read_text().splitlines()[node.lineno - 1 : node.end_lineno]
    body = node.body
    docstring = (
        body[0].end_lineno - body[0].lineno + 1
        if isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
        else 0
    )
    code = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    return len(code) - docstring


@pytest.mark.parametrize("module", MODULES)
def test_each_module_says_its_one_job_first_and_stays_short(module):
    path = PACKAGE / f"{module.replace('.', '/')}.py"
    text = path.read_text()
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring and docstring.splitlines()[0].strip(), f"{module}: no first line of its job"
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module}: split it by job"


def test_no_function_is_longer_than_sixty_lines_of_code():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := _code_lines(path, node)) > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n})"
                    )
    assert not long, "split these functions: " + ", ".join(long)


def test_the_lazily_imported_names_are_listed_and_runs_record_the_onednn_switch(tmp_path):
    import dlkit
    from dlkit import keys
    from dlkit.tracking.tracker import Tracker

    assert {"compare", "train", "Comparison", "load_dataset"} <= set(dir(dlkit))
    assert set(dlkit.__all__) <= set(dir(dlkit)) and "os" not in dir(dlkit)
    # The user's verbs and types only: internals stay in their modules.
    assert not {"Tracker", "ChildSpec", "run_child", "TrainOptions"} & set(dlkit.__all__)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "onednn")
    with tracker.run("a run") as run_id:
        pass
    # as TensorFlow loaded it (it changes the numerics): the environment's, or dlkit's default
    recorded = tracker.client.get_run(run_id).data.tags[keys.ONEDNN]
    assert recorded == dlkit.ONEDNN and recorded
