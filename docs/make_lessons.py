"""Regenerates docs/lessons.md from real runs of every lesson in experiments/.

    python docs/make_lessons.py --dataset ../shared/data/mnist

Each lesson is run with `dlkit.compare` (finished runs in the MLflow store are reused, so an
interrupted regeneration picks up where it stopped), its report and plots are written to
docs/lessons/<name>/, and docs/lessons.md is rewritten from those reports.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import dlkit
from dlkit.experiments import load_experiment

ROOT = Path(__file__).resolve().parents[1]
LESSONS = [
    "classic_demo",
    "baseline",
    "why_deep",
    "vanishing_gradients",
    "loss",
    "optimizers",
    "lr_decay",
    "minibatch",
    "early_stopping",
    "dropout",
    "weight_decay",
    "maxout",
    "normalization",
    "initialization",
]


def header_notes(path: Path) -> list[str]:
    """The file's opening comments after the command line: what the lesson does and why."""
    notes = []
    for line in path.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        if "Offline" not in line:
            notes.append(line.lstrip("# ").rstrip())
    return notes


def lesson_arguments(doc: str) -> argparse.Namespace:
    """Parses the options every script that reruns the lessons takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dataset", default=None, help="override every lesson's data source")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--only", nargs="*", default=None, help="lesson file stems to run")
    return parser.parse_args()


def main() -> None:
    args = lesson_arguments(__doc__)

    out = ROOT / "docs" / "lessons"
    sections = []
    started = time.time()
    training_seconds = 0.0
    for stem in args.only or LESSONS:
        path = ROOT / "experiments" / f"{stem}.yaml"
        experiment = load_experiment(path)
        comparison = dlkit.compare(
            path,
            dataset=args.dataset,
            tracking_uri=args.tracking_uri,
            output_dir=out,
            verbose=0,
        )
        print(comparison.format(), flush=True)
        training_seconds += float(comparison.runs["wall_time_s"].fillna(0).sum())
        command = f"dlkit compare experiments/{path.name}"
        if args.dataset:
            command += f" --dataset {args.dataset}"
        data = experiment.with_options(dlkit.Options(dataset=args.dataset)).data
        held = [v.held for v in comparison.expectations]
        lines = [
            f"## {experiment.question}",
            "",
            f"`{command}`",
            "",
            *header_notes(path),
            "",
            f"Data: {data.source}, first {data.train_size or 'all'} training images, "
            f"{len(experiment.seeds)} seed(s). Expectations held: "
            f"{sum(h is True for h in held)} of {len(held)}.",
            "",
            comparison.markdown().split("\n", 2)[2],  # drop the '## name' heading
        ]
        folder = f"lessons/{comparison.output_dir.name}"
        plots = ["learning_curves.png", "test_accuracy.png"]
        if (comparison.output_dir / "gradient_norms.png").exists():
            plots.insert(0, "gradient_norms.png")
        lines += [f"![{p}]({folder}/{p})" for p in plots[:2]]
        sections.append("\n".join(lines))

    elapsed = (time.time() - started) / 60
    intro = f"""# The lessons, measured

Every table below comes from actually running the lesson's experiment file with dlkit
{dlkit.__version__} on real MNIST (the official 10,000-image test set; training on a prefix of
the official training set, as each section says), on a {platform.machine()} machine with
{_cpus()} CPU cores and no GPU. Accuracies are test accuracies, mean ± standard deviation over
seeds. "Expectations" are the outcomes the lesson predicts, checked on these very runs; one that
did not hold is reported as such.

Regenerate everything (the trainings take about {training_seconds / 60:.0f} minutes here, plus
TensorFlow and MLflow start-up; finished runs are reused from MLflow, so an interrupted
regeneration picks up where it stopped):

```bash
python docs/make_lessons.py --dataset ../shared/data/mnist   # or omit --dataset to use TFDS mnist
```

Published numbers these are held against (`../shared/LESSONS.md`): the course's Keras demo
(sigmoid + MSE 11.35%, sigmoid + cross-entropy ~87%, 10 more sigmoid layers ~10%, ReLU 95.64%;
shown in the first table's *published* column); Keras's `mnist_mlp.py` 98.40% on the full
60,000 images; Srivastava et al. 2014 (dropout) 1.60% error for a standard net and 1.25% with
dropout, and Glorot & Bengio 2010 2.21% error for 5 sigmoid layers, both on all 60,000 images
with far longer training than these lessons use, so they are an upper bound, not a target.
"""
    (ROOT / "docs" / "lessons.md").write_text(intro + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote docs/lessons.md ({elapsed:.1f} min)")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
