"""The benchmark's own logic (its speed figures are measured by `dlkit bench`, not asserted)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from click.testing import CliRunner

from dlkit import Recipe
from dlkit.bench.benchmark import format_results, run
from dlkit.bench.throughput import TARGET, load_bench_data
from dlkit.cli import main
from dlkit.data.sources import synthetic_mnist


def test_target_network_is_784_500_500_10():
    assert TARGET.hidden_layers(784, 10) == (500, 500)
    assert TARGET.optimizer == "adam" and TARGET.batch_size == 128


def test_synthetic_data_is_mnist_shaped_and_learnable():
    x_train, y_train, x_test, y_test = synthetic_mnist(n_train=500, n_test=100)
    assert x_train.shape == (500, 28, 28) and x_train.dtype == np.uint8
    assert set(np.unique(y_train)) <= set(range(10)) and len(np.unique(y_train)) > 5
    # a least-squares fit of the teacher's kind separates the classes far above chance
    features = x_train.reshape(500, -1) / 255.0 - 0.5
    weights, *_ = np.linalg.lstsq(features, np.eye(10)[y_train], rcond=None)
    accuracy = np.mean((features @ weights).argmax(1) == y_train)
    assert accuracy > 0.5


def test_results_table_names_every_figure_and_its_target():
    throughput = {
        "plain_keras_samples_per_second": 9000.0,
        "dlkit_samples_per_second": 12000.0,
        "speedup": 1.33,
        "mfu_dlkit": 0.35,
        "mfu_plain": 0.26,
        "plain_test_accuracy": 0.97,
        "dlkit_test_accuracy": 0.971,
        "dlkit_test_accuracy_std": 0.002,
    }
    results = {
        "machine": {"tensorflow": "2.x", "processor": "x86_64", "gpus": 0},
        "dataset": "synthetic",
        "epochs": 4,
        "throughput": {TARGET.name: throughput},
        "precision": "mixed_bfloat16",
        "matmul_peak_gflops": {"float32": 130.0, "bfloat16": 400.0},
        "tracking": {"overhead_percent": 1.5},
        "comparison": {"overhead_per_child_seconds": 0.8},
        "cli": {"help_seconds": 0.2, "recipes_seconds": 0.3},
    }
    text = format_results(results)
    for fragment in ("1.33x", ">= 2.5x", "35% / 26%", "1.5%", "<= 2%", "0.20", "<= 1.0"):
        assert fragment in text
    assert "0.9710 ± 0.0020 / 0.9700" in text  # one seed on the plain side: no ± to show
    peak = next(line for line in text.splitlines() if line.startswith("matmul peak, bfloat16"))
    assert peak.split()[-2:] == ["bfloat16", "400.0"]
    assert "dlkit train path (samples/s)" in text and "mixed_bfloat16" in text


@pytest.mark.integration  # a real process or server, or a benchmark
def test_bench_run_measures_every_figure_on_tiny_data():
    tiny = Recipe(name="tiny", depth=1, width=8, batch_size=64)
    results = run(
        "digits",
        epochs=2,
        repeats=2,
        recipes=(tiny,),
        peak_size=64,
        peak_seconds=0.05,
        overhead_train_size=100,
        tracking_seconds=0.5,
    )
    figures = results["throughput"]["tiny"]
    assert results["dataset"] == "digits" and results["repeats"] == 2
    assert figures["dlkit_samples_per_second"] > 0 and figures["plain_keras_samples_per_second"] > 0
    assert len(figures["speedup_per_repeat"]) == 2
    # plain Keras builds the same 64-8-10 network on digits, so both learn above chance
    assert figures["plain_test_accuracy"] > 0.2 and figures["dlkit_test_accuracy"] > 0.2
    assert 0 < figures["mfu_dlkit"] and results["matmul_peak_gflops"]["float32"] > 0
    assert results["precision"] in ("float32", "mixed_bfloat16", "mixed_float16")
    assert figures["dlkit_test_accuracy_std"] >= 0  # two seeds: a spread
    tracking = results["tracking"]
    assert tracking["tracking_seconds"] > 0 and tracking["epochs"] >= 2
    # its epochs follow from the measured speed, for a training of about the asked length
    epoch_seconds = load_bench_data("digits").info.train_size / figures["dlkit_samples_per_second"]
    assert tracking["epochs"] == max(2, math.ceil(0.5 / epoch_seconds))
    assert f"% of a {tracking['training_seconds']:.1f}-s training" in format_results(results)
    assert results["comparison"]["children"] == 4
    assert results["cli"]["help_seconds"] > 0
    assert "tiny: speed-up over plain Keras" in format_results(results)


def test_bench_command_is_listed():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0 and "plain Keras" in result.output


@pytest.mark.integration  # a real process or server, or a benchmark
def test_levers_are_timed_alone_together_and_all_but_one_and_a_step_is_profiled():
    from dlkit.bench.levers import LEVERS, format_levers, levers, step_profile
    from dlkit.bench.throughput import load_bench_data

    tiny = Recipe(name="tiny", depth=1, width=8, batch_size=64)
    digits = load_bench_data("digits")
    figures = levers(tiny, digits, epochs=2, repeats=1)
    assert len(figures) == 2 + 2 * len(LEVERS)
    assert figures["baseline"]["speedup"] == 1.0 and figures["baseline"]["levers"] == []
    assert figures["all"]["levers"] == sorted(LEVERS)
    assert all(f["samples_per_second"] > 0 for f in figures.values())
    profile = step_profile(tiny, digits, steps=5)
    shares = [f["share"] for f in profile["by_type"].values()]
    assert sum(shares) == pytest.approx(1.0) and shares == sorted(shares, reverse=True)
    assert any("MatMul" in name for name in profile["by_type"])  # the dense layers ran
    assert "fused_adam" in format_levers(figures, profile)


def test_pytorch_reference_trains_the_same_network_when_torch_is_installed():
    pytest.importorskip("torch")
    from dlkit.bench.throughput import load_bench_data, torch_reference

    small = Recipe(name="small", depth=1, width=32, batch_size=32)
    figures = torch_reference(small, load_bench_data("digits"), epochs=5, seed=0)
    assert figures["samples_per_second"] > 0 and figures["test_accuracy"] > 0.2


@pytest.mark.integration  # a real process or server, or a benchmark
def test_packs_are_timed_against_plain_keras_in_the_same_run(digits):
    from dlkit.bench.packs import format_packs, packed

    recipe = Recipe(name="tiny", depth=1, width=16, batch_size=64, learning_rate=0.01)
    figures = packed(
        recipe, digits, 3, sizes=(1, 3), precisions=("float32",), repeats=2, peak_seconds=0.2
    )
    assert set(figures) == {"plain", "float32 K=1", "float32 K=3"}
    for name in ("float32 K=1", "float32 K=3"):
        pack = figures[name]
        assert len(pack["speedup_per_repeat"]) == 2
        assert pack["speedup"] == statistics.median(pack["speedup_per_repeat"])
        assert 0 < pack["mfu"] < 1
        assert pack["test_accuracy"] > 0.5  # every member learned: 10 classes, chance is 0.1
    text = format_packs({"tiny": figures})
    assert "pack, float32 K=3" in text and "plain Keras fit, float32" in text


@pytest.mark.integration  # a real process or server, or a benchmark
def test_packs_the_rule_compiles_are_timed_both_ways_on_asking(digits, monkeypatch):
    from dlkit.bench.packs import packed
    from dlkit.nn import pack

    recipe = Recipe(name="tiny", depth=1, width=16, batch_size=64, learning_rate=0.01)
    # A tiny pack of 3 members compiles, one member alone does not.
    steps = math.ceil(digits.info.train_size / recipe.batch_size) * 2  # 2 epochs
    monkeypatch.setattr(pack, "COMPILE_UPDATE_AT", 3 * recipe.param_count(64, 10) * steps)
    figures = packed(
        recipe,
        digits,
        2,
        sizes=(1, 3),
        precisions=("float32",),
        repeats=1,
        peak_seconds=0.1,
        both_updates=True,
    )
    assert set(figures) == {
        "plain",
        "float32 K=1",
        "float32 K=3",
        "float32 K=3, update not compiled",
    }
    compiled, not_compiled = figures["float32 K=3"], figures["float32 K=3, update not compiled"]
    assert compiled["test_accuracy"] == pytest.approx(not_compiled["test_accuracy"], abs=0.02)


@pytest.mark.integration  # a real process or server, or a benchmark
def test_the_store_is_timed_per_run_at_each_size():
    from dlkit.bench.store import format_store, store_overhead

    rows = store_overhead(sizes=(4, 8))
    assert [(row["store"], row["runs"]) for row in rows] == [("sqlite", 4), ("sqlite", 8)]
    for row in rows:
        assert 0 < row["store_s"] < row["wall_s"] and row["calls_per_run"] > 1
    text = format_store(rows)
    assert "calls/run" in text and "1.00x" in text
