"""A comparison's report: its tables (terminal, CSV, Markdown, HTML), verdicts and plots."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import dlkit
from dlkit.comparison.expectations import Verdict, evaluate, parse_expectation
from dlkit.comparison.sequential import ALPHA, Look
from dlkit.comparison.summary import samples_by_variant, summarize
from dlkit.comparison.tuning import point_label
from dlkit.text import plural, text_table, wrap


class Comparison:
    """The outcome of a comparison: one row per child run, summarized per variant.

    Made by `load_comparison` from the parent run's plan (`plan.json`: the name, question,
    expectations, published figures, context, tuning and how seeds were added) and the runs
    that count under it.

    Attributes:
        name: The experiment's name.
        question: The question it answers.
        parent_run_id: The MLflow parent run.
        runs: One row per planned variant x seed: `variant`, `seed`, `run_id`,
            `status`, `failure` and the run's final metrics.
        histories: For each variant, the per-epoch Keras history of each
            finished seed.
        expectations: The verdict on each expectation of the experiment.
        gradients: With gradient norms logged: for each variant and finished
            seed, `{layer index: {epoch: norm}}` (epoch 0 is initialization).
    """

    def __init__(
        self,
        plan: dict[str, Any],
        parent_run_id: str,
        runs: pd.DataFrame,
        histories: dict[str, list[dict[str, list[float]]]],
        gradients: dict[str, list[dict[int, dict[int, float]]]] | None = None,
        correct: dict[str, dict[int, np.ndarray]] | None = None,
    ):
        self.name = plan["name"]
        self.question = plan.get("question", "")
        self.parent_run_id = parent_run_id
        self.runs = runs
        self.histories = histories
        self.gradients = gradients or {}
        self.output_dir: Path | None = None  # where compare/report saved the files
        self.files: list[Path] = []  # the files compare/report wrote there
        self.context = plan.get("context") or {}  # dataset, sizes, seeds, epochs, versions
        self.replication: Comparison | None = None  # the rerun on a second slice, if any
        self.registered: str | None = None  # `models:/NAME/VERSION` when the best was registered
        self.tuning = plan.get("tuning")  # the sweep's grid, seeds and each variant's choice
        classes = self.context.get("num_classes")
        # What a diverged seed counts at; a plan from before dlkit recorded the classes: 0
        self.chance = 1 / classes if classes else 0.0
        self.table = summarize(runs, self.chance)
        if self.tuning:
            chosen = {v: point_label(c["point"]) for v, c in self.tuning["variants"].items()}
            self.table["tuned"] = self.table["variant"].map(chosen)
        self.published = plan.get("published") or {}
        if self.published:
            self.table["published_accuracy"] = self.table["variant"].map(self.published)
        labels = list(self.table["variant"])
        samples = samples_by_variant(runs, self.table, correct or {}, self.chance)
        # How seeds were added: the looks, the budget, the equivalence margin (see `sequential`).
        self.sequential = plan.get("sequential") or {}
        looks = [Look.of(look) for look in self.sequential.get("looks", [])]
        self.parsed = [parse_expectation(e, labels) for e in plan.get("expect", ())]
        # A plan from before the error rate was per comparison decided each at its own
        self.error_rate = self.sequential.get("error_rate", "per_expectation")
        shares = len(self.parsed) if self.error_rate == "per_comparison" else 1
        self.expectations = [
            evaluate(
                e,
                samples,
                looks=looks,
                paired=self.context.get("split") == "random",
                equivalence=self.sequential.get("equivalence"),
                alpha=ALPHA / max(shares, 1),
                interval=self.sequential.get("interval", "t"),
            )
            for e in self.parsed
        ]

    @property
    def failed(self) -> int:
        """The number of planned runs that did not finish (failed, killed or not run)."""
        return int((self.runs["status"] != "FINISHED").sum())

    @property
    def best(self) -> str | None:
        """The variant with the highest mean test accuracy."""
        best = self.table[self.table["best"]]
        return None if best.empty else str(best["variant"].iloc[0])

    def best_run(self) -> str | None:
        """The finished run of the best variant with the highest best validation accuracy.

        Chosen on validation, not test, accuracy: the model to keep, e.g. to register.
        """
        if self.best is None:
            return None
        runs = self.runs[(self.runs["variant"] == self.best) & (self.runs["status"] == "FINISHED")]
        key = "best_val_accuracy" if runs["best_val_accuracy"].notna().any() else "test_accuracy"
        return str(runs.sort_values(key, ascending=False, kind="stable")["run_id"].iloc[0])

    def colors(self) -> dict[str, str]:
        """Each variant's color in every figure, by its place in the table."""
        from dlkit.comparison.plots import variant_colors

        return variant_colors(list(self.table["variant"]))

    def plot_learning_curves(self):
        """Returns a figure of every variant's curves, mean over seeds with a band."""
        from dlkit.comparison.plots import plot_learning_curves

        return plot_learning_curves(self.histories, self.colors())

    def plot_test_accuracy(self):
        """Returns a bar chart of test accuracy per variant with error bars."""
        from dlkit.comparison.plots import plot_test_accuracy

        return plot_test_accuracy(self.table)

    def plot_tuning(self):
        """Returns each variant's tuning sweep: validation accuracy at every point."""
        from dlkit.comparison.plots import plot_tuning

        return plot_tuning(self.tuning, self.colors())

    def plot_gradient_norms(self):
        """Returns gradient norm against layer index, at initialization and after training."""
        from dlkit.comparison.plots import plot_gradient_norms

        return plot_gradient_norms(self.gradients, self.colors())

    def how_decided(self, verdict: Verdict) -> str:
        """How a verdict was reached: the seeds, the looks, and why the seeds stopped there."""
        budget = self.sequential.get("max_seeds")
        seeds = f"{plural(verdict.seeds, 'seed')}" + (
            " (paired on their random splits)" if self.context.get("split") == "random" else ""
        )
        if verdict.status == "unchecked":
            return "not checked"
        if not budget:
            return f"{seeds}, one look"
        looks = plural(verdict.looks, "look")
        if verdict.decided:
            return f"decided at look {verdict.looks}, budget {budget}; {seeds}"
        reason = self.sequential.get("stopped", "")
        return f"{seeds}, {looks}; stopped: {reason or f'the budget of {budget} seeds'}"

    def format(self, *, wide: bool = False) -> str:
        """Returns the report as terminal text: table, failures, expectations.

        Args:
            wide: Show every column of the table (losses, validation and training
                accuracy, parameters, throughput...), as `table.md` does. Defaults to
                `False`: the columns a verdict is read with, in 100 columns.
        """
        lines = wrap(f"{self.name}: {self.question}".rstrip(": "), subsequent="  ")
        if self.context:
            lines += wrap(self.what_was_run(), subsequent="  ")
        lines += ["", text_table(self._display_rows(wide=wide)), *wrap(self._footnote(wide))]
        failed = self.runs[self.runs["status"] != "FINISHED"]
        if not failed.empty:
            lines.append("")
            lines.append(f"{plural(len(failed), 'run')} did not finish:")
            for row in failed.itertuples():
                lines.append(f"  {row.variant} seed {row.seed}: {row.status} - {row.failure}")
        if self.expectations:
            lines.append("")
            lines += wrap(f"Expectations ({self.how_compared()}):", subsequent="  ")
            lines += wrap(self.untuned_note(), initial="  ", subsequent="  ")  # [] when tuned
            for verdict in self.expectations:
                text = (
                    f"[{verdict.status.upper()}] {verdict.expectation}: {self.how_decided(verdict)}"
                )
                lines += wrap(text, initial="  ", subsequent="      ")
                lines += wrap(verdict.detail, initial="      ", subsequent="      ")
            lines += wrap(self.cost(), initial="  ", subsequent="  ")
        if self.replication is not None:
            lines += [
                "",
                f"Replicated as {self.replication.name!r}:",
                "",
                self.replication.format(wide=wide),
            ]
            lines += ["", "Verdicts on both slices:", text_table(self._side_by_side())]
        return "\n".join(lines)

    def markdown(self) -> str:
        """Returns the report as Markdown, with every column of the table."""
        rows = self._display_rows(wide=True)
        header = list(rows[0])
        lines = [f"## {self.name}", ""]
        if self.question:
            lines += [self.question, ""]
        if self.context:
            lines += [self.what_was_run(), ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(row[c]) for c in header) + " |" for row in rows]
        lines += ["", self._footnote(wide=True)]
        failed = self.runs[self.runs["status"] != "FINISHED"]
        if not failed.empty:
            lines += ["", "Runs that did not finish:", ""]
            lines += [
                f"- {row.variant} seed {row.seed}: {row.status}, {row.failure}"
                for row in failed.itertuples()
            ]
        if self.expectations:
            lines += ["", f"Expectations ({self.how_compared()}):", ""]
            for verdict in self.expectations:
                mark = {"contradicted": "**contradicted**"}.get(verdict.status, verdict.status)
                lines.append(
                    f"- `{verdict.expectation}`: {mark}, {self.how_decided(verdict)} "
                    f"({verdict.detail})"
                )
            lines += ["", self.cost()]
        if self.replication is not None and self.expectations:
            rows = self._side_by_side()
            lines += ["", "Verdicts on both slices:", ""]
            lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(row.values()) + " |" for row in rows]
        plots = [name for name, _ in self._plots()]
        lines += ["", *(f"![{name.removesuffix('.png')}]({name})" for name in plots)]
        return "\n".join(lines) + "\n"

    @property
    def training_seconds(self) -> float:
        """Seconds the measured runs trained (a packed member counts its share of its pack's
        time); the tuning sweep, the same whatever the seeds, is not counted."""
        done = self.runs[self.runs["status"] == "FINISHED"]
        return float(done["wall_time_s"].fillna(0.0).sum())

    def cost(self) -> str:
        """How many expectations are decided, and the training seconds per decided one."""
        decided = sum(verdict.decided for verdict in self.expectations)
        seconds = self.training_seconds
        each = f" ({seconds / decided:.1f} s per decided one)" if decided else ""
        if self.error_rate == "per_comparison" or len(self.expectations) == 1:
            rate = f"at most {ALPHA:.0%} chance that any of them is wrong"
        else:
            rate = f"at most {ALPHA:.0%} chance that each is wrong (per expectation)"
        looks = len(self.sequential.get("looks", [])) > 1
        levels = (
            " Each interval's level is what its looks spent of that, so the levels differ."
            if looks
            else ""
        )
        return (
            f"Decided {decided} of {len(self.expectations)} expectations; {rate}.{levels} "
            f"{seconds:.1f} s of training of the measured runs{each}."
        )

    def untuned_note(self) -> str:
        """What an untuned verdict between variants rests on; empty when tuned."""
        if self.tuning or not any(isinstance(e.right, str) for e in self.parsed):
            return ""
        return (
            "Untuned, each variant trains at its recipe's own learning rate: a verdict on an "
            "optimizer, an activation or an architecture can change when each is tuned (--tune)."
        )

    def how_compared(self) -> str:
        """Whether the variants were compared tuned (and how) or as given."""
        if not self.tuning:
            return "variants compared as given"
        grid = next(iter(self.tuning["grid"].values()))
        sizes = " x ".join(f"{len(values)} {field}" for field, values in grid.items())
        seeds = len(self.tuning.get("seeds", []))
        wider = self.tuning.get("extended") or {}
        steps = ", ".join(
            f"{label} to "
            + " and ".join(
                f"{field} {', '.join(f'{v:g}' for v in values)}" for field, values in added.items()
            )
            for label, added in wider.items()
        )
        return (
            f"variants compared tuned: each at its best of {sizes} on validation accuracy, "
            f"{seeds} seed{'s' if seeds != 1 else ''} per point"
            + (f"; grids extended past an edge: {steps}" if steps else "")
        )

    def __repr__(self) -> str:
        """The report as terminal text, as a script or a Python prompt shows it."""
        return self.format()

    def _repr_html_(self) -> str:
        """The report in a notebook (Jupyter, Colab): the table, the verdicts, the plots."""
        rows = self._display_rows(wide=True)
        head = "".join(f"<th>{html.escape(column)}</th>" for column in rows[0])
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(value))}</td>" for value in row.values())
            for row in rows
        )
        parts = [f"<h3>{html.escape(self.name)}</h3>"]
        if self.question:
            parts.append(f"<p>{html.escape(self.question)}</p>")
        if self.context:
            parts.append(f"<p><small>{html.escape(self.what_was_run())}</small></p>")
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        parts.append(f"<p><small>{html.escape(self._footnote(wide=True))}</small></p>")
        if self.expectations:
            items = "".join(
                f"<li><b>{verdict.status}</b> <code>{html.escape(verdict.expectation)}</code>, "
                f"{html.escape(self.how_decided(verdict))}: {html.escape(verdict.detail)}</li>"
                for verdict in self.expectations
            )
            parts.append(
                f"<p>Expectations ({html.escape(self.how_compared())}):</p><ul>{items}</ul>"
                f"<p><small>{html.escape(self.cost())}</small></p>"
            )
        for name, draw in self._plots():
            alt = name.removesuffix(".png")
            parts.append(f'<img alt="{alt}" src="data:image/png;base64,{_png(draw())}"/>')
        return "\n".join(parts)

    def _plots(self) -> list[tuple[str, Callable[[], Any]]]:
        """The report's figures, by file name: the same in its folder, Markdown and notebook."""
        plots = [
            ("learning_curves.png", self.plot_learning_curves),
            ("test_accuracy.png", self.plot_test_accuracy),
        ]
        if any(self.gradients.values()):
            plots.append(("gradient_norms.png", self.plot_gradient_norms))
        if self.tuning:
            plots.append(("tuning.png", self.plot_tuning))
        return plots

    def what_was_run(self) -> str:
        """Returns one line: dataset and split sizes, seeds, epochs, precision, versions."""
        c = self.context
        epochs = "/".join(str(e) for e in c.get("epochs", [])) or "-"
        versions = ", ".join(f"{k} {v}" for k, v in c.get("versions", {}).items())
        seeds = c.get("seeds", [])
        offset = c.get("train_offset", 0)
        first = f" from image {offset:,}" if offset else ""
        return (
            f"Data: {c.get('dataset')} ({c.get('train_size', 0):,} train{first}, "
            f"{c.get('validation_size', 0):,} validation, {c.get('test_size', 0):,} test). "
            f"{plural(len(seeds), 'seed')} ({_ranges(seeds)}), {epochs} epochs, "
            f"{'/'.join(c.get('precision', [])) or 'float32'}. {versions}."
        )

    def _side_by_side(self) -> list[dict[str, str]]:
        rows = []
        for one, two in zip(self.expectations, self.replication.expectations):
            rows.append(
                {
                    "expectation": one.expectation,
                    "first slice": verdict_cell(one),
                    "second slice": verdict_cell(two),
                    "agree": "yes" if one.status == two.status else "no",
                }
            )
        return rows

    def _footnote(self, wide: bool = False) -> str:
        several = self.runs.groupby("variant")["seed"].count().max() > 1
        spread = "; ± is one standard deviation over seeds" if several else ""
        gap = "; gap is training minus test accuracy"
        time = "; time/run is a run's training time, its share of its pack's when packed"
        pack = "; samples/s is its pack's" if wide else "; every column: --wide, table.md"
        diverged = (
            f"; a seed that diverged (NaN loss) counts at chance, {self.chance:.2f}"
            if self.table["diverged"].any()
            else ""
        )
        return f"(* best mean test accuracy{spread}{diverged}{gap}{time}{pack})"

    def save(self, folder: str | Path) -> list[Path]:
        """Writes table.csv, table.md, runs.csv and the plots (PNG) into `folder`.

        The plots are drawn only when the runs differ from those the folder's
        plots were drawn from (a digest in `.plots-digest`): drawing them costs
        seconds, and a report of unchanged runs would redraw the same images.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        markdown, runs = self.markdown(), self.runs.to_csv(index=False)
        self.csv_table().to_csv(folder / "table.csv", index=False)
        (folder / "table.md").write_text(markdown)
        (folder / "runs.csv").write_text(runs)
        plots = self._plots()
        names = [name for name, _ in plots]
        for stale in ("gradient_norms.png", "tuning.png"):  # an earlier comparison's plots
            if stale not in names:
                (folder / stale).unlink(missing_ok=True)
        digest_file = folder / ".plots-digest"
        digest = hashlib.sha256(
            "\n".join([dlkit.__version__, *names, markdown, runs]).encode()
        ).hexdigest()
        drawn = digest_file.is_file() and digest_file.read_bytes() == digest.encode()
        if not (drawn and all((folder / name).is_file() for name in names)):
            import matplotlib.pyplot as plt

            digest_file.unlink(missing_ok=True)  # an interrupted redraw leaves no stale digest
            for name, draw in plots:
                figure = draw()
                figure.savefig(folder / name, dpi=100)
                plt.close(figure)
            digest_file.write_text(digest)
        return [folder / name for name in ("table.csv", "table.md", "runs.csv", *names)]

    def csv_table(self) -> pd.DataFrame:
        """Returns the per-variant table as written to `table.csv`: the variant and its
        result first."""
        first = ["variant", "test_accuracy_mean", "test_accuracy_std", "test_loss_mean"]
        return self.table[first + [c for c in self.table.columns if c not in first]]

    def _display_rows(self, wide: bool = False) -> list[dict[str, str]]:
        """The table as shown: with `wide`, every column; else those a verdict is read with."""
        rows = []
        for row in self.table.to_dict("records"):
            shown = {
                "variant": row["variant"] + (" *" if row["best"] else ""),
                "tuned": row.get("tuned", ""),
                "params": _int(row["params"]),
                "seeds": f"{row['finished']}/{row['planned']}"
                + (f", {row['diverged']} diverged" if row["diverged"] else ""),
                "test acc": _pm(row["test_accuracy_mean"], row["test_accuracy_std"]),
                "published": _num(row.get("published_accuracy", math.nan)),
                "test loss": _pm(row["test_loss_mean"], row["test_loss_std"]),
                "best val acc": _num(row["best_val_accuracy"]),
                "train acc": _num(row["train_accuracy"]),
                "gap": _num(row["gap"]),
                "epochs": _count(row["epochs_run"]),
                "stopped at": _count(row["stopped_epoch"]),
                "time/run (s)": _num(row["wall_time_s"], ".1f"),
                "samples/s": _int(row["samples_per_second"]),
            }
            columns = _WIDE if wide else _NARROW
            rows.append({c: shown[c] for c in columns if self._has(c)})
        return rows

    def _has(self, column: str) -> bool:
        return {"tuned": bool(self.tuning), "published": bool(self.published)}.get(column, True)


# The terminal's default table, and every column (`--wide`, table.md, the notebook).
_NARROW = ("variant", "tuned", "seeds", "test acc", "published", "gap", "epochs", "time/run (s)")
_WIDE = (
    "variant", "tuned", "params", "seeds", "test acc", "published", "test loss", "best val acc",
    "train acc", "gap", "epochs", "stopped at", "time/run (s)", "samples/s",
)  # fmt: skip


def _png(figure) -> str:
    """A matplotlib figure as base64 PNG text, closed afterwards."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pm(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if math.isfinite(std) else "")


def _num(value: float, spec: str = ".4f") -> str:
    return format(value, spec) if math.isfinite(value) else "-"


def verdict_cell(verdict: Verdict, digits: int = 4) -> str:
    """One table cell: status, difference and 95% interval (the status alone without one)."""
    if not math.isfinite(verdict.low):
        return verdict.status
    d, low, high = (f"{v:+.{digits}f}" for v in (verdict.difference, verdict.low, verdict.high))
    return f"{verdict.status} {d} [{low}, {high}]"


def _ranges(seeds: list[int]) -> str:
    """`0-14` for seeds 0 to 14, `0-2, 5, 6` for 0, 1, 2, 5 and 6."""
    spans: list[list[int]] = []
    for seed in sorted(seeds):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}-{b}" if b > a + 1 else ", ".join(map(str, range(a, b + 1)))
                     for a, b in spans)  # fmt: skip


def _count(value: float) -> str:
    """A mean of whole numbers: `15` when it is whole, `14.5` when the seeds differ."""
    if not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _int(value: float) -> str:
    return "-" if pd.isna(value) or not math.isfinite(value) else f"{value:,.0f}"
