"""Packed rows of the benchmark: K members trained in one pack against plain Keras fits.

    dlkit bench --packs

A pack's throughput counts every member's examples; plain Keras trains one
network per `fit`. Both train in the same run, alternating, repeat `i` with
seed `i` (a pack's members with seeds `100 i`, `100 i + 1`, ...).
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from dlkit.bench.throughput import TARGET, load_bench_data, matmul_peak, plain_keras
from dlkit.recipes.recipe import Recipe, get_recipe

SIZES = (1, 4, 16)
# The quickstart's network (deep-relu at width 128), on the benchmark's data.
QUICKSTART_NET = get_recipe("deep-relu", width=128).replace(name="quickstart-net")
PRECISIONS = ("float32", "mixed_bfloat16")
_PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16"}


def run_packs(dataset: str, epochs: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Times packs of the speed target's network and the quickstart's, on `dataset`."""
    data = load_bench_data(dataset)
    return {
        recipe.name: packed(recipe, data, epochs, repeats=repeats)
        for recipe in (TARGET, QUICKSTART_NET)
    }


def packed(
    recipe: Recipe,
    data: Any,
    epochs: int,
    *,
    sizes: tuple[int, ...] = SIZES,
    precisions: tuple[str, ...] = PRECISIONS,
    repeats: int = 3,
    peak_seconds: float = 3.0,
    both_updates: bool = False,
) -> dict[str, Any]:
    """Times packs of each size and precision against plain Keras float32, alternating.

    With `both_updates`, each pack whose optimizer's update the pack's rule
    compiles with XLA trains a second time with the update as Keras runs it
    (a row `"<precision> K=<k>, update not compiled"`): what compiling buys.

    Returns:
        `plain` (samples/s and test accuracy of plain Keras) and, per
        `"<precision> K=<k>"`, the pack's samples/s (all members' examples),
        its speed-up over plain Keras (the median of the per-repeat ratios,
        with each), its model-FLOP utilization against the matmul peak of its
        precision, and the members' test accuracy (mean ± std).
    """
    from dlkit.nn.pack import compiles_update

    runs: dict[str, list[dict[str, float]]] = {}
    for rep in range(repeats):
        plain = plain_keras(recipe, data, epochs, seed=rep)
        runs.setdefault("plain", []).append(plain)
        for precision in precisions:
            member = recipe.replace(epochs=epochs, precision=precision)
            for k in sizes:
                seeds = [100 * rep + i for i in range(k)]
                updates = [None]  # as the pack's rule decides
                if both_updates and compiles_update([member] * k, data):
                    updates.append(False)
                for compiled in updates:
                    name = f"{precision} K={k}"
                    if compiled is False:
                        name += ", update not compiled"
                    row = _pack_row(member, data, seeds, plain, compiled)
                    runs.setdefault(name, []).append(row)
    flops = 6 * recipe.param_count(int(np.prod(data.info.input_shape)), data.info.num_classes)
    peaks = {p: matmul_peak(dtype=_PEAK_DTYPE[p], seconds=peak_seconds) for p in precisions}
    return {
        "plain": _summary(
            [r["samples_per_second"] for r in runs["plain"]],
            [r["test_accuracy"] for r in runs["plain"]],
        ),
        **{
            name: _pack_summary(rows, flops, peaks[name.split()[0]])
            for name, rows in runs.items()
            if name != "plain"
        },
    }


def _pack_row(recipe, data, seeds, plain, compiled: bool | None) -> dict[str, Any]:
    from dlkit.nn.training import fit_pack

    members = fit_pack([recipe] * len(seeds), data, seeds, compile_update=compiled)
    for member in members:
        if isinstance(member, Exception):
            raise member  # a member that diverged, said as fit says it
    return {
        "samples_per_second": members[0].samples_per_second,
        "ratio": members[0].samples_per_second / plain["samples_per_second"],
        "test_accuracies": [m.test_accuracy for m in members],
    }


def _summary(speeds: list[float], accuracies: list[float]) -> dict[str, float]:
    return {
        "samples_per_second": statistics.median(speeds),
        "test_accuracy": float(np.mean(accuracies)),
        "test_accuracy_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
    }


def _pack_summary(rows: list[dict[str, Any]], flops: int, peak: float) -> dict[str, Any]:
    summary = _summary(
        [r["samples_per_second"] for r in rows], [a for r in rows for a in r["test_accuracies"]]
    )
    summary["speedup"] = statistics.median(r["ratio"] for r in rows)
    summary["speedup_per_repeat"] = [r["ratio"] for r in rows]
    summary["mfu"] = summary["samples_per_second"] * flops / peak
    return summary


def format_packs(figures: dict[str, dict[str, Any]]) -> str:
    """Returns the packed rows, one table per network, as text."""
    from dlkit.text import text_table

    parts = []
    for network, rows in figures.items():
        plain = rows["plain"]
        table = [
            {
                "training": "plain Keras fit, float32",
                "samples/s": f"{plain['samples_per_second']:,.0f}",
                "vs plain Keras (median; each repeat)": "1.00x",
                "MFU": "",
                "test acc (mean ± std)": _pm(plain),
            }
        ]
        table += [
            {
                "training": f"pack, {name}",
                "samples/s": f"{f['samples_per_second']:,.0f}",
                "vs plain Keras (median; each repeat)": f"{f['speedup']:.2f}x ("
                + ", ".join(f"{r:.2f}" for r in f["speedup_per_repeat"])
                + ")",
                "MFU": f"{f['mfu']:.0%}",
                "test acc (mean ± std)": _pm(f),
            }
            for name, f in rows.items()
            if name != "plain"
        ]
        parts.append(f"{network} (a pack's samples/s count every member's):\n\n{text_table(table)}")
    return "\n\n".join(parts)


def _pm(figures: dict[str, float]) -> str:
    return f"{figures['test_accuracy']:.4f} ± {figures['test_accuracy_std']:.4f}"
