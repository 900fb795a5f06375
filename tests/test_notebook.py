"""docs/quickstart.ipynb run end to end in a real Jupyter kernel, as a learner runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]'")
nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_the_quickstart_notebook_shows_the_report_inline(tmp_path, monkeypatch):
    # The repository's layout, in a folder of its own: the store and reports land there.
    (tmp_path / "experiments").mkdir()
    shutil.copy(ROOT / "experiments" / "quickstart.yaml", tmp_path / "experiments")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    notebook = nbformat.read(ROOT / "docs" / "quickstart.ipynb", as_version=4)

    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
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
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for o in notebook.cells[1].outputs)  # fmt: skip
    table = notebook.cells[3].outputs[-1]["data"]["text/plain"]
    assert "deep-relu" in table and "learning_rate=" in table
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "reports" / "quickstart").is_dir()
