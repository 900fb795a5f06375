"""Plots: learning curves and test accuracy per variant, as matplotlib figures."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: dlkit runs in terminals and CI without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def variant_colors(labels: Sequence[str]) -> dict[str, str]:
    """One color per variant, by its place in the comparison: the same in every figure."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def plot_learning_curves(
    curves: dict[str, Sequence[dict[str, list[float]]]], colors: dict[str, str] | None = None
) -> plt.Figure:
    """Draws loss and accuracy per epoch for every variant, overlaid.

    Args:
        curves: For each variant label, one Keras history per seed. Training
            curves are solid, validation curves dashed; with several seeds the
            line is the mean and the band spans one standard deviation.
        colors: Each variant's color. Defaults to `variant_colors` of `curves`' order.

    Returns:
        A figure with a loss panel and an accuracy panel.
    """
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = colors or variant_colors(list(curves))
    for label, histories in curves.items():
        color = colors[label]
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for prefix, style in (("", "-"), ("val_", "--")):
                runs = [h[prefix + metric] for h in histories if h.get(prefix + metric)]
                if not runs:
                    continue
                # Early stopping makes runs differ in length: average what exists per epoch.
                length = max(len(r) for r in runs)
                table = np.full((len(runs), length), np.nan)
                for row, values in enumerate(runs):
                    table[row, : len(values)] = values
                mean, std = np.nanmean(table, axis=0), np.nanstd(table, axis=0)
                epochs = np.arange(1, length + 1)
                name = f"{label} ({'validation' if prefix else 'training'})"
                ax.plot(epochs, mean, style, color=color, label=name)
                if len(runs) > 1:
                    ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].set_title("Loss (solid: training, dashed: validation)")
    axes[1].set_title("Accuracy (solid: training, dashed: validation)")
    handles, labels = axes[1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8)
    figure.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 4), 1, 1))
    return figure


def plot_test_accuracy(table: pd.DataFrame) -> plt.Figure:
    """Draws test accuracy per variant with one-standard-deviation error bars.

    Args:
        table: The comparison table, with `variant`, `test_accuracy_mean` and
            `test_accuracy_std` columns.
    """
    figure, ax = plt.subplots(figsize=(max(5, 1.1 * len(table) + 2), 4.5))
    positions = np.arange(len(table))
    ax.bar(
        positions,
        table["test_accuracy_mean"],
        yerr=table["test_accuracy_std"].fillna(0),
        capsize=4,
        color="tab:blue",
        alpha=0.8,
    )
    ax.set_xticks(positions, table["variant"], rotation=30, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    for x, value in zip(positions, table["test_accuracy_mean"]):
        if np.isfinite(value):
            ax.text(x, value / 2, f"{value:.3f}", ha="center", color="white", fontsize=9)
    ax.set_title("Test accuracy (mean over seeds, error bar: one std)")
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def plot_gradient_norms(
    gradients: dict[str, Sequence[dict[int, dict[int, float]]]],
    colors: dict[str, str] | None = None,
) -> plt.Figure:
    """Draws each layer's gradient norm against its index, on a log scale.

    Args:
        gradients: For each variant label, one `{layer: {epoch: norm}}` per
            seed. The left panel shows initialization (epoch 0), the right the
            last epoch; lines are the geometric mean over seeds.
        colors: Each variant's color. Defaults to `variant_colors` of `gradients`' order.

    Returns:
        A figure with two panels. Layer 1 is nearest the input; the last is
        the softmax output layer.
    """
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = colors or variant_colors(list(gradients))
    for label, runs in gradients.items():
        if not runs:
            continue
        for ax, pick in zip(axes, (min, max)):
            layers = sorted(runs[0])
            values = []
            for layer in layers:
                norms = [run[layer][pick(run[layer])] for run in runs if run.get(layer)]
                values.append(float(np.exp(np.mean(np.log(np.maximum(norms, 1e-30))))))
            ax.plot(layers, values, marker="o", label=label, color=colors[label])
    for ax, title in zip(axes, ("At initialization", "After the last epoch")):
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = nearest the input; last = output)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("gradient norm of the layer's kernel")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(5, max(1, len(labels))), fontsize=8)
    figure.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 5), 1, 1))
    return figure


def plot_tuning(tuning: dict, colors: dict[str, str] | None = None) -> plt.Figure:
    """Draws each variant's sweep: mean validation accuracy at every point, the chosen one
    ringed.

    Args:
        tuning: The sweep's record, as a comparison's plan keeps it: per variant,
            its `scores` (one row per point, in grid order) and its chosen `point`.
        colors: Each variant's color. Defaults to `variant_colors` of the sweep's order.

    Returns:
        A figure with one line per variant. With one tuned field the x axis is its
        value (logarithmic for the learning rate); with several, the points in order.
    """
    figure, ax = plt.subplots(figsize=(7, 4.5))
    fields = list(next(iter(tuning["variants"].values()))["point"])
    one = len(fields) == 1
    colors = colors or variant_colors(list(tuning["variants"]))
    for label, choice in tuning["variants"].items():
        rows = choice["scores"]
        x = [row[fields[0]] for row in rows] if one else list(range(len(rows)))
        y = [row["val_accuracy"] for row in rows]
        (line,) = ax.plot(x, y, "o-", label=label, color=colors[label])
        best = [row["setting"] for row in rows].index(
            ",".join(f"{f}={choice['point'][f]:g}" for f in fields)
        )
        ax.plot(x[best], y[best], "o", ms=14, mfc="none", mec=line.get_color(), mew=2)
    if one:
        ax.set_xlabel(fields[0])
        if fields[0] == "learning_rate":
            ax.set_xscale("log")
    else:
        ax.set_xlabel("point of the sweep")
        settings = [row["setting"] for row in next(iter(tuning["variants"].values()))["scores"]]
        ax.set_xticks(range(len(settings)), settings, rotation=60, ha="right", fontsize=7)
    seeds = len(tuning.get("seeds", []))
    ax.set_ylabel(f"validation accuracy (mean of {seeds} seeds)")
    ax.set_title("Tuning: each variant's sweep, its chosen point ringed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
