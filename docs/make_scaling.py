"""Measures a comparison's wall time per executor and worker count, for docs/scaling.md.

    python docs/make_scaling.py                    # the quickstart, 2 alternating repeats
    python docs/make_scaling.py --lesson experiments/normalization.yaml -d path/to/mnist

Each measurement is one `dlkit compare ... --force` command in a fresh store, timed from
the start of the process to its end (start-up, Ray's start, data, training, logging, the
report). The settings alternate within each repeat, so a slow spell of a shared machine
falls on all of them; the figure is the median over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesson", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("-d", "--dataset", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="Append the figures to this JSON file.")
    args = parser.parse_args()
    extra = ["-d", args.dataset] if args.dataset else []
    seconds = measure(args.lesson, extra, args.repeats)
    local = statistics.median(seconds["local"])
    print(f"\n{Path(args.lesson).name}: median wall time of {args.repeats} repeats")
    print("| setting | wall time (s) | vs local |\n| --- | --- | --- |")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {local / median:.2f}x |")
    if args.json:
        path = Path(args.json)
        figures = json.loads(path.read_text()) if path.exists() else {}
        figures[Path(args.lesson).stem] = {"dataset": args.dataset, "seconds": seconds}
        path.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
