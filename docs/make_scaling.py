"""Measures a comparison's wall time per executor and worker count, and writes docs/scaling.md's
tables.

    python docs/make_scaling.py                    # the quickstart, 3 alternating repeats
    python docs/make_scaling.py --lesson experiments/normalization.yaml -d path/to/mnist

Each measurement is one `dlkit compare ... --force -q` command in a fresh store, timed from
the start of the process to its end (start-up, Ray's start, data, training, logging, the
report). The settings alternate within each repeat, so a slow spell of a shared machine
falls on all of them; the figure is the median over repeats, and the ratio to the local
executor is the median of each repeat's ratio. The figures go to docs/scaling.json under the
lesson's name (with the machine's CPU), and every lesson there is written to the tables
section of docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "scaling.json"
PAGE = ROOT / "docs" / "scaling.md"
BEGIN, END = "<!-- tables: docs/make_scaling.py -->", "<!-- end of tables -->"
SETTINGS = {
    "local": [],
    "ray, 1 worker": ["--executor", "ray", "--workers", "1"],
    "ray, 2 workers": ["--executor", "ray", "--workers", "2"],
}


def measure(experiment: str, extra: list[str], repeats: int) -> dict[str, list[float]]:
    """Returns the wall seconds of every setting, one per repeat."""
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for repeat in range(repeats):
        for name, flags in SETTINGS.items():
            with tempfile.TemporaryDirectory(prefix="dlkit-scaling-") as tmp:
                command = ["dlkit", "compare", experiment, *extra, *flags, "--force", "-q"]
                command += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--output", tmp]
                start = time.perf_counter()
                done = subprocess.run(command, stdout=subprocess.DEVNULL)
                if done.returncode not in (0, 1):  # 1: some runs failed, as a lesson may expect
                    raise SystemExit(f"{' '.join(command)} exited {done.returncode}")
                seconds[name].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}, {name}: {seconds[name][-1]:.1f} s", flush=True)
    return seconds


def cpu_name() -> str:
    """The CPU's model name as `lscpu` gives it, else what Python knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def table(lesson: str, figures: dict) -> str:
    """One lesson's figures as a Markdown table, with how they were measured."""
    seconds = figures["seconds"]
    repeats = len(seconds["local"])
    dataset = f" -d {figures['dataset']}" if figures.get("dataset") else ""
    lines = [
        f"### {lesson}",
        "",
        f"`dlkit compare experiments/{lesson}.yaml{dataset}`, {repeats} alternating repeats on "
        f"{figures.get('cpu', 'an unnamed CPU')} ({figures.get('cores', '?')} cores), "
        f"dlkit {figures.get('version', '?')}:",
        "",
        "| setting | wall time (s), median | repeats (s) | vs local (median of ratios) |",
        "| --- | --- | --- | --- |",
    ]
    for name, values in seconds.items():
        ratios = [local / value for local, value in zip(seconds["local"], values)]
        each = " / ".join(f"{v:.1f}" for v in values)
        lines.append(
            f"| {name} | {statistics.median(values):.1f} | {each} | "
            f"{statistics.median(ratios):.2f}x |"
        )
    return "\n".join(lines)


def write_page(all_figures: dict) -> None:
    """Replaces the tables section of docs/scaling.md with every lesson's table."""
    text = PAGE.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    tables = "\n\n".join(table(lesson, f) for lesson, f in all_figures.items())
    PAGE.write_text(f"{head}{BEGIN}\n\n{tables}\n\n{END}{tail}")


def main() -> None:
    import os

    import dlkit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesson", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("-d", "--dataset", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    extra = ["-d", args.dataset] if args.dataset else []
    seconds = measure(args.lesson, extra, args.repeats)
    all_figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    all_figures[Path(args.lesson).stem] = {
        "dataset": "path/to/mnist" if args.dataset else None,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "version": dlkit.__version__,
        "seconds": seconds,
    }
    FIGURES.write_text(json.dumps(all_figures, indent=2) + "\n")
    write_page(all_figures)
    print(table(Path(args.lesson).stem, all_figures[Path(args.lesson).stem]))


if __name__ == "__main__":
    sys.exit(main())
