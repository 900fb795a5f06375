"""Reruns lessons tuned, each variant at its own best learning rate, and writes docs/tuned.md.

    python docs/make_tuned.py --dataset path/to/mnist --tracking-uri sqlite:///tuned.db

Each lesson's first slice is compared with `--tune learning_rate`: every variant trains at the
six learning rates of its optimizer's default grid with 2 sweep seeds, keeps the rate with the
best mean validation accuracy, and its seeds then train there. The page sets each expectation's
verdict tuned beside its verdict as given, read from the lesson's report in docs/lessons/ (the
runs docs/make_lessons.py made), and counts how many keep their verdict. Use a store of its
own: a lesson's tuned runs would otherwise join its as-given parent. Finished runs are reused,
so an interrupted rerun picks up where it stopped; `--write` writes the page from the store
without training, leaving out lessons that have no runs yet.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import dlkit
from dlkit.comparison.experiment_file import load_experiment
from dlkit.comparison.reports import verdict_cell
from dlkit.comparison.tuning import point_label
from dlkit.errors import DlkitError

sys.path.insert(0, str(Path(__file__).parent))
from make_lessons import ROOT, _anchor, lesson_arguments  # noqa: E402

OUT = ROOT / "docs" / "lessons-tuned"
AS_GIVEN = ROOT / "docs" / "lessons"
# The lessons whose claim is about an architecture, an activation, an optimizer or an
# initialization: where a hand-set learning rate could be what decided the verdict.
LESSONS = [
    "baseline",
    "optimizers",
    "initialization",
    "maxout",
    "vanishing_gradients",
    "why_deep",
]
TUNE = {"learning_rate": None}  # the optimizer's default grid of six rates
_VERDICT = re.compile(
    r"^- `(?P<text>.+?)`: \**(?P<status>held|contradicted|inconclusive|unchecked)\**"
    r"(?: \(.*?difference (?P<d>[-+0-9.e]+), 95% interval \[(?P<lo>[-+0-9.e]+), "
    r"(?P<hi>[-+0-9.e]+)\])?"
)


def as_given(name: str) -> dict[str, str]:
    """Each expectation's verdict as given on the first slice, from the lesson's report."""
    path = AS_GIVEN / name / "table.md"
    verdicts = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        match = _VERDICT.match(line)
        if match:
            cell = match["status"]
            if match["d"]:
                d, lo, hi = (float(match[k]) for k in ("d", "lo", "hi"))
                cell += f" {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            verdicts[match["text"]] = cell
    return verdicts


def run(stem: str, args) -> None:
    """Trains (or reuses) one lesson's tuned runs on its first slice."""
    path = ROOT / "experiments" / f"{stem}.yaml"
    options = dlkit.Options(
        dataset=args.dataset, tracking_uri=args.tracking_uri, verbose=0, tune=TUNE
    )
    comparison = dlkit.compare(load_experiment(path), options, output_dir=OUT)
    print(comparison.format(), flush=True)


def training_span(comparison: dlkit.Comparison, args) -> float:
    """Minutes from the first run's start to the last run's end under the parent: the
    sweep and the seeds, start-up and report excluded."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.tracking_uri)
    parent = client.get_run(comparison.parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.`dlkit.comparison` = '{comparison.parent_run_id}'"
    )
    starts = [r.info.start_time for r in runs]
    ends = [r.info.end_time for r in runs if r.info.end_time]
    return (max(ends) - min(starts)) / 60_000 if starts and ends else float("nan")


def section(stem: str, args, summary: list[str], kept: list[bool]) -> str | None:
    """One lesson's part of the page, and its rows of the summary."""
    experiment = load_experiment(ROOT / "experiments" / f"{stem}.yaml")
    try:
        tuned = dlkit.report(experiment.name, tracking_uri=args.tracking_uri, output_dir=OUT)
    except DlkitError:
        return None
    if tuned.tuning is None or tuned.failed == len(tuned.runs):
        return None
    given = as_given(experiment.name)
    for i, verdict in enumerate(tuned.expectations):
        before = given.get(verdict.expectation, "not run")
        kept.append(before.split(" ")[0] == verdict.status)
        lesson = f"[{experiment.name}](#{_anchor(experiment.question)})" if i == 0 else ""
        summary.append(
            f"| {lesson} | `{verdict.expectation}` | {before} | {verdict_cell(verdict, 3)} |"
        )
    chosen = ", ".join(
        f"{label} {point_label(choice['point']).removeprefix('learning_rate=')}"
        for label, choice in tuned.tuning["variants"].items()
    )
    body = tuned.markdown().split("\n", 2)[2].replace(experiment.question + "\n\n", "", 1)
    body = re.sub(r"\]\((\w+\.png)\)", rf"](lessons-tuned/{tuned.output_dir.name}/\1)", body)
    return "\n".join(
        [
            f"## {experiment.question}",
            "",
            f"`dlkit compare experiments/{stem}.yaml --tune learning_rate`; training took "
            f"{training_span(tuned, args):.0f} minutes on this machine.",
            "",
            f"Chosen learning rates: {chosen}.",
            "",
            body,
        ]
    )


def write(args) -> None:
    """Rewrites docs/tuned.md from the store."""
    summary: list[str] = []
    kept: list[bool] = []
    stems = args.only or LESSONS
    sections = [text for stem in stems if (text := section(stem, args, summary, kept))]
    intro = f"""# The lessons, tuned

Each lesson here ran with a fixed number of seeds; `--max-seeds N` adds seeds until each
verdict decides, and [decided.md](decided.md) measures what that costs.

The lessons in [lessons.md](lessons.md) train every variant at the learning rate its experiment
file sets by hand. A verdict reached that way may measure which variant suits that step size
rather than the variants themselves. Here each lesson is rerun on its first slice with
`--tune learning_rate`: every variant first trains at the six learning rates of its optimizer's
default grid with 2 sweep seeds (the same budget for all), keeps the rate with the best mean
validation accuracy, and its seeds then train at that rate. The test split is never read to
choose. The verdicts as given are those of lessons.md's first slice.

**{sum(kept)} of {len(kept)} expectations keep their verdict when tuned** (in the lessons
rerun so far: {len(sections)} of {len(stems)}).

Regenerate (finished runs are reused from the store):

```bash
python docs/make_tuned.py --dataset path/to/mnist --tracking-uri sqlite:///tuned.db
```

| lesson | expectation | as given (first slice) | tuned (first slice) |
|---|---|---|---|
"""
    text = intro + "\n".join(summary) + "\n\n" + "\n\n".join(sections) + "\n"
    (ROOT / "docs" / "tuned.md").write_text(text)
    print(f"wrote docs/tuned.md: {len(sections)} lessons, {sum(kept)}/{len(kept)} kept")


def main() -> None:
    args = lesson_arguments(__doc__)
    if not args.write:
        for stem in args.only or LESSONS:
            run(stem, args)
            write(args)
    write(args)


if __name__ == "__main__":
    main()
