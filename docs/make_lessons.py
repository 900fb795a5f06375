"""Regenerates docs/lessons.md from real runs of every lesson in experiments/, on two slices.

    python docs/make_lessons.py --dataset path/to/mnist

Each lesson is run with `dlkit.compare(..., replicate=True)`: on its training slice, then on the
next images of the same training pool (a held-out replication). Finished runs in the MLflow store
are reused, so an interrupted regeneration picks up where it stopped. Reports and plots go to
docs/lessons/<name>/ and docs/lessons.md is rewritten from MLflow after each lesson.

`--slice first` or `--slice second` runs one slice only and writes nothing, so two processes
(one core each) can run the slices side by side; `--write` then writes the page from the store
without training anything, leaving out lessons that have no runs yet.
"""

from __future__ import annotations

import argparse
import platform
import re
import time
from pathlib import Path

import dlkit
from dlkit.comparison.compare import replication_of
from dlkit.comparison.experiment_file import load_experiment
from dlkit.comparison.reports import verdict_cell
from dlkit.errors import DlkitError

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "lessons"
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
    "why_cnn",
]  # the page's order


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
    parser.add_argument(
        "--slice",
        choices=("both", "first", "second"),
        default="both",
        help="run one slice only, and write nothing (default: both, then write)",
    )
    parser.add_argument("--write", action="store_true", help="write the page; train nothing")
    parser.add_argument(
        "--tuned-tracking-uri",
        default=None,
        help="the store of docs/make_tuned.py's runs: adds each verdict tuned to the summary",
    )
    return parser.parse_args()


def run(stem: str, args: argparse.Namespace) -> None:
    """Trains (or reuses) one lesson's runs on the slices asked for."""
    path = ROOT / "experiments" / f"{stem}.yaml"
    options = dlkit.Options(dataset=args.dataset, tracking_uri=args.tracking_uri, verbose=0)
    experiment = load_experiment(path).with_options(options)
    if args.slice == "second":
        experiment = replication_of(experiment)
    comparison = dlkit.compare(experiment, options, output_dir=OUT, replicate=args.slice == "both")
    print(comparison.format(), flush=True)


def stored(name: str, args: argparse.Namespace, out: Path = OUT) -> dlkit.Comparison | None:
    """The comparison as MLflow holds it (its report written under `out`), or `None` if no runs."""
    try:
        return dlkit.report(name, tracking_uri=args.tracking_uri, output_dir=out)
    except DlkitError:
        return None


def summary_cell(verdict) -> str:
    return "not run" if verdict is None else verdict_cell(verdict, digits=3)


def tuned_verdicts(name: str, args: argparse.Namespace) -> dict[str, str]:
    """Each expectation's verdict tuned (first slice), from make_tuned.py's store, if any."""
    uri = getattr(args, "tuned_tracking_uri", None)
    if not uri:
        return {}
    try:
        tuned = dlkit.report(name, tracking_uri=uri, output_dir=None)
    except DlkitError:
        return {}
    if tuned.tuning is None:
        return {}
    return {v.expectation: summary_cell(v) for v in tuned.expectations}


def section(stem: str, args: argparse.Namespace, summary: list[str]) -> str | None:
    """One lesson's part of the page (both slices), and its rows of the summary."""
    path = ROOT / "experiments" / f"{stem}.yaml"
    experiment = load_experiment(path)
    first = stored(experiment.name, args)
    if first is None:
        return None
    second = stored(f"{experiment.name}-replica", args)
    command = f"dlkit compare experiments/{path.name}"
    if args.dataset:
        command += f" --dataset {args.dataset}"
    lines = [f"## {experiment.question}", "", f"`{command} --replicate`", ""]
    for note in header_notes(path):  # the claim's conditions get a paragraph of their own
        lines += ["", note] if note.startswith("Conditions of the claim") else [note]
    lines.append("")
    for label, comparison in (("First slice", first), ("Second slice (replication)", second)):
        if comparison is None:
            lines += [f"### {label}", "", "Not run yet.", ""]
            continue
        body = comparison.markdown().split("\n", 2)[2]  # drop the '## name' heading
        body = body.replace(experiment.question + "\n\n", "", 1)
        folder = f"lessons/{comparison.output_dir.name}"
        body = re.sub(r"\]\((\w+\.png)\)", rf"]({folder}/\1)", body)
        lines += [f"### {label}", "", body]
    two = second.expectations if second else [None] * len(first.expectations)
    tuned = tuned_verdicts(experiment.name, args)
    for i, (one, other) in enumerate(zip(first.expectations, two)):
        lesson = f"[{experiment.name}](#{_anchor(experiment.question)})" if i == 0 else ""
        summary.append(
            f"| {lesson} | `{one.expectation}` | {summary_cell(one)} | {summary_cell(other)} | "
            f"{tuned.get(one.expectation, '-')} |"
        )
    return "\n".join(lines)


def _survivors(summary: list[str]) -> str:
    """`N of M expectations rerun tuned keep their verdict`, from the summary's rows."""
    pairs = []
    for row in summary:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) == 5 and cells[4] != "-":
            pairs.append(cells[2].split(" ")[0] == cells[4].split(" ")[0])
    if not pairs:
        return ""
    return (
        f" **{sum(pairs)} of {len(pairs)} expectations rerun tuned keep their first-slice "
        "verdict.**"
    )


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def write(args: argparse.Namespace, minutes: float | None = None) -> None:
    """Rewrites docs/lessons.md from the store."""
    summary: list[str] = []
    stems = args.only or LESSONS
    sections, missing = [], []
    for stem in stems:
        text = section(stem, args, summary)
        if text:
            sections.append(text)
        else:
            missing.append(f"`{stem}`")
    if missing:
        sections.append(
            "## Not rerun yet\n\n"
            f"{', '.join(missing)}: no runs in this store yet. Run "
            "`python docs/make_lessons.py --only <name>` with the same `--tracking-uri`."
        )
    timing = f" (this regeneration took {minutes:.0f} minutes)" if minutes else ""
    survivors = _survivors(summary)
    intro = f"""# The lessons, measured

Every table below comes from actually running the lesson's experiment file with dlkit
{dlkit.__version__} on real MNIST (the official 10,000-image test set), on a {platform.machine()}
machine with {_cpus()} CPU cores and no GPU, twice: on the slice of the official training set that
the file names, and again on the next images of the same pool (a held-out replication: other
images of the same distribution). Accuracies are test accuracies, mean ± standard deviation over
seeds.

Each expectation gets a three-way verdict, **held**, **contradicted** or **inconclusive**, with the
estimated difference and its 95% interval (the method, seed-to-seed spread and the paired
test-set error together, is in [comparisons.md](comparisons.md#verdicts-that-respect-noise)).
An expectation is never changed after its result is seen. Where a lesson's first design
did not meet the conditions of its published claim, its experiment file says what those
conditions are and how the design was changed to meet them, before these runs.

Regenerate everything{timing}; finished runs are reused from MLflow, so an interrupted
regeneration picks up where it stopped:

```bash
python docs/make_lessons.py --dataset path/to/mnist   # or omit --dataset to use TFDS mnist
```

These runs train every variant at the learning rate its file sets by hand, as the published
conditions do. [tuned.md](tuned.md) reruns the lessons whose claim is about an architecture, an
activation, an optimizer or an initialization with each variant at its own best learning rate,
chosen on validation, and sets each verdict tuned beside the verdict here.

Published numbers these are held against: the course's Keras demo
(sigmoid + MSE 11.35%, sigmoid + cross-entropy ~87%, 10 more sigmoid layers ~10%, ReLU 95.64%;
shown in the first table's *published* column); Keras's `mnist_mlp.py` 98.40% on the full
60,000 images; Srivastava et al. 2014 (dropout) 1.60% error for a standard net and 1.25% with
dropout, and Glorot & Bengio 2010 2.21% error for 5 sigmoid layers, both on all 60,000 images
with far longer training than these lessons use, so they are an upper bound, not a target.

## Summary

Verdict, difference (left minus right, or minus the threshold) and 95% interval, per slice;
the last column is the first slice again with each variant at its own tuned learning rate
([tuned.md](tuned.md); `-` where that lesson was not rerun tuned).{survivors}

| lesson | expectation | first slice | second slice | tuned (first slice) |
|---|---|---|---|---|
"""
    if missing:
        summary.append(f"\nNot rerun yet: {', '.join(missing)} ([below](#not-rerun-yet)).")
    page = ROOT / "docs" / "lessons.md"
    kept = _kept_sections(page.read_text() if page.exists() else "")
    page.write_text(intro + "\n".join(summary) + "\n\n" + "\n\n".join([*sections, *kept]) + "\n")
    print(f"wrote docs/lessons.md: {len(sections)} lessons", flush=True)


def _kept_sections(text: str) -> list[str]:
    """Sections other scripts write into the page between their own markers (`<!-- name:
    script -->` ... `<!-- /name -->`, such as docs/make_batch_norm.py's): kept as they are."""
    return re.findall(r"(?ms)^<!-- [\w-]+: docs/\S+ -->$.*?^<!-- /[\w-]+ -->$", text)


def main() -> None:
    args = lesson_arguments(__doc__)
    started = time.time()
    if not args.write:
        for stem in args.only or LESSONS:
            run(stem, args)
            if args.slice == "both":
                write(args)
    if args.slice == "both":
        write(args, (time.time() - started) / 60 if not args.write else None)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
