"""The MLflow UI in a real browser: what a user sees after a comparison.

Chromium (Debian's package) driven by Playwright, over `mlflow ui` on 127.0.0.1.
`.ci/run` installs Chromium when it is missing and it can; otherwise these skip.
"""

from __future__ import annotations

import os

import pytest

from dlkit import compare
from dlkit.comparison.experiment_file import parse_experiment
from dlkit.tracking import ui
from dlkit.tracking.tracker import Tracker

pytestmark = pytest.mark.browser

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not os.path.exists(ui.CHROMIUM):
    pytest.skip(f"no Chromium at {ui.CHROMIUM}: apt-get install chromium", allow_module_level=True)

TINY = {
    "name": "browser",
    "question": "Does ReLU beat softmax regression here?",
    "dataset": {"source": "digits", "train_size": 200},
    "seeds": 2,
    "overrides": {"epochs": 1},
    "tune": {"learning_rate": [0.01, 0.1], "seeds": 1},
    "variants": ["deep-relu", "softmax-regression"],
    "expect": ["deep-relu > softmax-regression"],
}


VARIANTS = TINY["variants"]


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    result = compare(parse_experiment(TINY), tracking_uri=store, output_dir=None, log=print)
    with ui.serve(store) as address, playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=ui.CHROMIUM)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        yield page, Tracker(store, "browser", create=False).runs_page(address=address), result
        browser.close()


def test_runs_page_groups_each_variants_sweep_under_its_tuning_run(browser_page):
    page, runs, result = browser_page
    ui.open_runs(page, runs)
    text = page.inner_text("body")
    # MLflow 3's model-training layout, not its GenAI one (traces, judges, an assistant)
    assert "Model registry" in text and "Judges" not in text
    assert ui.run_names(page) == ["browser"]  # children folded under their parent
    ui.expand_parent(page, "browser")
    page.get_by_text("deep-relu/seed0").first.wait_for()
    names = ui.run_names(page)
    assert names[0] == "browser"
    # the measured runs and one tuning run per variant; the sweep's runs are folded in those
    assert sorted(names[1:]) == sorted(
        [f"{variant}/seed{seed}" for variant in VARIANTS for seed in (0, 1)]
        + [f"{variant}/tuning" for variant in VARIANTS]
    )
    ui.expand_parent(page, "deep-relu/tuning")
    page.get_by_text("lr=0.01/s1000").first.wait_for()
    assert {"lr=0.01/s1000", "lr=0.1/s1000"} <= set(ui.run_names(page))


def test_parent_page_shows_its_metrics_params_and_description(browser_page):
    page, runs, result = browser_page
    page.goto(runs.replace("/runs?", f"/runs/{result.parent_run_id}?"))
    page.get_by_text("best_test_accuracy").first.wait_for(timeout=60_000)
    text = page.inner_text("body")
    assert "Does ReLU beat softmax regression here?" in text  # the description
    for metric in ("best_test_accuracy", "expectations_held", "runs_finished"):
        assert metric in text
    best = result.table.set_index("variant").loc[result.best, "test_accuracy_mean"]
    assert f"{best:.4f}"[:5] in text
