"""Reruns every lesson under `precision: auto` and writes docs/precision.md beside its float32 runs.

    python docs/make_precision.py --dataset path/to/mnist

The float32 reference is each lesson's first-slice comparison in the same MLflow store, as
docs/make_lessons.py left it (run that first, with the same `--tracking-uri`). The auto runs go
to an experiment of their own, `<lesson>-auto`, beside it. `auto` becomes dlkit's default only
if, lesson by lesson, every expectation gets the same three-way verdict and every variant's mean
test accuracy agrees within max(0.5 points, 2 seed standard deviations). Finished runs are
reused, so a stopped run picks up where it stopped; `--write` writes the page from the store
without training anything.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from make_lessons import LESSONS, lesson_arguments, stored  # this folder

import dlkit
from dlkit.comparison.experiment_file import load_experiment
from dlkit.comparison.reports import verdict_cell
from dlkit.recipes.precision import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "precision"
TOLERANCE = 0.005  # half a point of test accuracy


def run_auto(stem: str, args) -> None:
    """Trains (or reuses) one lesson's first slice under `precision: auto`."""
    options = dlkit.Options(
        dataset=args.dataset,
        tracking_uri=args.tracking_uri,
        overrides={"precision": "auto"},
        verbose=0,
    )
    experiment = load_experiment(ROOT / "experiments" / f"{stem}.yaml").with_options(options)
    experiment = dataclasses.replace(experiment, name=f"{experiment.name}-auto")
    print(dlkit.compare(experiment, options, output_dir=OUT).format(), flush=True)


def lesson_section(stem: str, args) -> tuple[str, bool, float, float] | None:
    """One lesson's tables; whether it agrees; the float32 and auto runs' training seconds."""
    name = load_experiment(ROOT / "experiments" / f"{stem}.yaml").name
    reference, auto = stored(name, args), stored(f"{name}-auto", args, OUT)
    if reference is None or auto is None:
        return None
    before = {row["variant"]: row for row in reference.table.to_dict("records")}
    rows, agrees_all = [], True
    for row in auto.table.to_dict("records"):
        variant = row["variant"]
        ref = before.get(variant)
        if ref is None:
            return None  # the experiment changed since its float32 runs
        mean, std = row["test_accuracy_mean"], _spread(row["test_accuracy_std"])
        ref_mean, ref_std = ref["test_accuracy_mean"], _spread(ref["test_accuracy_std"])
        allowed = max(TOLERANCE, 2 * max(std, ref_std))
        if math.isnan(mean) and math.isnan(ref_mean):  # no finished seed in either
            rows.append(f"| {variant} | diverged | diverged | - | - | yes |")
            continue
        agrees = abs(mean - ref_mean) <= allowed  # False when only one diverged
        agrees_all &= agrees
        rows.append(
            f"| {variant} | {ref_mean:.4f} ± {ref_std:.4f} | {mean:.4f} ± {std:.4f} | "
            f"{mean - ref_mean:+.4f} | {allowed:.4f} | {'yes' if agrees else '**no**'} |"
        )
    verdicts = []
    for one, other in zip(reference.expectations, auto.expectations):
        same = one.status == other.status
        agrees_all &= same
        verdicts.append(
            f"| `{one.expectation}` | {verdict_cell(one, 3)} | {verdict_cell(other, 3)} | "
            f"{'yes' if same else '**no**'} |"
        )
    text = "\n".join(
        [
            f"## {stem}: {'agrees' if agrees_all else '**differs**'}",
            "",
            "| variant | float32 test acc | auto test acc | difference | allowed | agrees |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "| expectation | float32 | auto | same verdict |",
            "|---|---|---|---|",
            *verdicts,
        ]
    )
    return text, agrees_all, _seconds(reference), _seconds(auto)


def _spread(std: float) -> float:
    return 0.0 if math.isnan(std) else std  # one seed: no spread


def _seconds(comparison) -> float:
    return float(comparison.runs["wall_time_s"].fillna(0).sum())


def write(args) -> None:
    """Rewrites docs/precision.md from the store."""
    sections, missing, agree_all = [], [], True
    float32_s = auto_s = 0.0
    for stem in LESSONS:
        found = lesson_section(stem, args)
        if found is None:
            missing.append(f"`{stem}`")
            continue
        text, agrees, seconds32, seconds_auto = found
        sections.append(text)
        agree_all &= agrees
        float32_s += seconds32
        auto_s += seconds_auto
    if missing:
        decision = (
            f"Incomplete: {len(missing)} of {len(LESSONS)} lessons have no auto runs yet "
            f"({', '.join(missing)}), so no decision; the default stays `float32`."
        )
    elif agree_all:
        decision = "Every lesson agrees: `auto` can become the default."
    else:
        decision = "At least one lesson differs: the default stays `float32`; `auto` is opt-in."
    speed = f"{float32_s / auto_s:.2f}x" if auto_s else "-"
    intro = f"""# float32 against `precision: auto`, lesson by lesson

`auto` resolves to **{resolve_precision("auto")}** on this machine (dlkit {dlkit.__version__}). The
float32 column is each lesson's first slice in [docs/lessons.md](lessons.md); the auto column
reruns the same experiment file on the same images with `--set precision=auto`. A variant agrees
when its mean test accuracy is within max(0.5 points, 2 seed standard deviations) of float32's; a
lesson agrees when all its variants do and every expectation gets the same three-way verdict.

**{decision}**

Training time of the lessons compared here, the sum of their runs' `fit` times: float32
{float32_s / 60:.1f} minutes, auto {auto_s / 60:.1f} minutes ({speed}). Both ran as single-core
processes beside other work, so this ratio is indicative; `dlkit bench` measures speed properly.

Regenerate (after docs/make_lessons.py, with the same store):
`python docs/make_precision.py --dataset path/to/mnist`
"""
    (ROOT / "docs" / "precision.md").write_text(intro + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote docs/precision.md: {len(sections)} lessons; {decision}", flush=True)


def main() -> None:
    args = lesson_arguments(__doc__)
    started = time.time()
    if not args.write:
        for stem in args.only or LESSONS:
            run_auto(stem, args)
        print(f"auto runs: {(time.time() - started) / 60:.1f} minutes", flush=True)
    write(args)


if __name__ == "__main__":
    main()
