"""Runs the batch-norm lesson (models of our own) tuned on MNIST's first slice; writes its part
of docs/lessons.md.

    python docs/make_batch_norm.py --dataset path/to/mnist

Its variants are models registered in experiments/models.py, which the experiment file
imports. Finished runs in the MLflow store are reused. The report and its plots go to
docs/lessons/batch-norm/; the section between the page's batch-norm markers is replaced.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
from pathlib import Path

import dlkit

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "experiments" / "batch_norm.yaml"
PAGE = ROOT / "docs" / "lessons.md"
BEGIN, END = "<!-- batch-norm: docs/make_batch_norm.py -->", "<!-- /batch-norm -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=None, help="MNIST's folder; default: TFDS mnist")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    comparison = dlkit.compare(
        str(FILE),
        dataset=args.dataset,
        tracking_uri=args.tracking_uri,
        output_dir=ROOT / "docs" / "lessons",
        verbose=0,
    )
    print(comparison.format(), flush=True)
    write(comparison, args.dataset)


def write(comparison: dlkit.Comparison, dataset: str | None) -> None:
    """Replaces (or appends) the lesson's section of docs/lessons.md."""
    experiment = dlkit.load_experiment(FILE)
    command = f"dlkit compare experiments/{FILE.name}"
    if dataset:  # a folder of this machine's: the page names the option, not the path
        command += " --dataset path/to/mnist" if Path(dataset).is_dir() else f" --dataset {dataset}"
    body = comparison.markdown().split("\n", 2)[2].replace(experiment.question + "\n\n", "", 1)
    folder = f"lessons/{comparison.output_dir.name}"
    body = re.sub(r"\]\((\w+\.png)\)", rf"]({folder}/\1)", body)
    cpu = _cpu()
    section = "\n".join(
        [
            BEGIN,
            f"## {experiment.question}",
            "",
            f"`{command}`",
            "",
            "A lesson whose variants are models of our own: `mlp` and `mlp-bn` in "
            "experiments/models.py, registered with `dlkit.register_model` and named in the "
            "file's `imports:`. They differ in BatchNormalization alone (Ioffe & Szegedy 2015); "
            "the recipe gives both their depth, width, activation and training. First slice "
            f"only, tuned: each variant at its own best learning rate. Measured on {cpu}.",
            "",
            body.rstrip(),
            END,
        ]
    )
    text = PAGE.read_text()
    if BEGIN in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    PAGE.write_text(text)


def _cpu() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if "Model name" in line)
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores, no GPU"


if __name__ == "__main__":
    main()
