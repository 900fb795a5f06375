"""docs/quickstart.ipynb run end to end in a real Jupyter kernel, as a learner runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]'")
nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_the_quickstart_notebook_shows_the_report_inline(tmp_path):
    # The repository's layout, in a folder of its own, the kernel started in docs/ as Jupyter
    # starts it beside the notebook: the store and the reports land in the root, as the
    # command line's do.
    (tmp_path / "experiments").mkdir()
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "experiments" / "quickstart.yaml", tmp_path / "experiments")
    notebook = nbformat.read(ROOT / "docs" / "quickstart.ipynb", as_version=4)

    nbclient.NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": tmp_path / "docs"}},
    ).execute()

    report = notebook.cells[1].outputs[-1]["data"]
    assert "<table>" in report["text/html"] and "softmax-regression" in report["text/html"]
    assert "variants compared tuned" in report["text/html"]
    # every figure of the report, the tuning sweep's among them
    assert report["text/html"].count("data:image/png;base64,") == 3
    assert '<img alt="tuning"' in report["text/html"]
    # tqdm's notebook bar draws (ipywidgets is there), without a warning in its place
    streams = "".join(o.get("text", "") for o in notebook.cells[1].outputs)
    assert "IProgress not found" not in streams and "TqdmWarning" not in streams
    # the chosen rates and the looks are the report's lines, not warnings (standard error)
    errors = "".join(
        o.get("text", "") for o in notebook.cells[1].outputs if o.get("name") == "stderr"
    )
    assert "learning_rate=" not in errors and "Tuning" not in errors, errors
    assert "learning_rate=" in streams
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for o in notebook.cells[1].outputs)  # fmt: skip
    table = notebook.cells[3].outputs[-1]["data"]["text/plain"]
    assert "deep-relu" in table and "learning_rate=" in table
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "reports" / "quickstart").is_dir()
