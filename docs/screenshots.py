"""Screenshots of the MLflow UI over a fresh quickstart comparison, for the README.

    python docs/screenshots.py                              # a fresh quickstart, about 1 minute
    python docs/screenshots.py --store sqlite:///mlflow.db  # an existing store's quickstart

Needs Chromium from the distribution (`apt-get install chromium`) and Playwright from
pip (`pip install playwright`; its own browser download is not needed). Writes
docs/screenshots/{runs,sweep,parent,child,report}.png: the experiment's runs with the parent
expanded, a variant's tuning run expanded to its sweep, the parent run's page, a child run's
page, and the parent's report artifacts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
SIZE = {"width": 1440, "height": 900}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="An MLflow store holding a quickstart comparison.")
    parser.add_argument("--output", default=str(ROOT / "docs" / "screenshots"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dlkit-screenshots-") as tmp:
        store = args.store or _fresh_quickstart(Path(tmp))
        for path in take(store, Path(args.output)):
            print(path)


def _fresh_quickstart(folder: Path) -> str:
    from dlkit import compare

    store = f"sqlite:///{folder / 'mlflow.db'}"
    compare(str(QUICKSTART), tracking_uri=store, output_dir=folder / "reports")
    return store


def take(store: str, output: Path) -> list[Path]:
    """Screenshots the quickstart's runs, parent, a child and the report into `output`."""
    from playwright.sync_api import sync_playwright

    from dlkit.comparison.loading import load_comparison
    from dlkit.tracking import ui
    from dlkit.tracking.tracker import Tracker

    tracker = Tracker(store, "quickstart", create=False)
    comparison = load_comparison(tracker)
    parent, child = comparison.parent_run_id, comparison.best_run()
    output.mkdir(parents=True, exist_ok=True)
    shots = []
    with ui.serve(store) as address, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=ui.CHROMIUM)
        page = browser.new_page(viewport=SIZE)
        runs = tracker.runs_page(address=address)

        ui.open_runs(page, runs)
        ui.expand_parent(page, "quickstart")
        page.get_by_text("deep-relu/seed0").first.wait_for()
        shots.append(_shot(page, output / "runs.png"))

        ui.expand_parent(page, "deep-relu/tuning")  # the sweep, folded under its tuning run
        page.get_by_text("lr=0.001/s1000").first.wait_for()
        rows = page.locator(".ag-pinned-left-cols-container .ag-row")
        rows.filter(has_text="lr=0.001/s1000").first.scroll_into_view_if_needed()
        shots.append(_shot(page, output / "sweep.png"))

        for name, run_id in (("parent", parent), ("child", child)):
            page.goto(tracker.runs_page(run_id, address=address))
            page.get_by_text("Parameters").first.wait_for(timeout=60_000)
            ui.close_assistant(page)
            shots.append(_shot(page, output / f"{name}.png", full_page=True))

        report = tracker.runs_page(parent, address=address)
        page.goto(report.replace("?", "/artifacts/report/test_accuracy.png?"))
        page.get_by_text("table.md").first.wait_for(timeout=60_000)
        ui.close_assistant(page)
        shots.append(_shot(page, output / "report.png"))
        browser.close()
    return shots


def _shot(page, path: Path, *, full_page: bool = False) -> Path:
    page.wait_for_timeout(1500)  # charts and images draw after the data arrives
    page.screenshot(path=str(path), full_page=full_page)
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
