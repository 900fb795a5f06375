"""Precision: the recipe field, what `auto` resolves to, and a mixed-precision model's dtypes."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from dlkit import DlkitError, Recipe
from dlkit.comparison.experiment import config_hash
from dlkit.data.dataset import DataSpec
from dlkit.nn.models import build_model, compile_model
from dlkit.nn.training import fit
from dlkit.recipes.precision import cpu_has_native_bf16, gpu_compute_capability, resolve_precision

SMALL = Recipe(depth=2, width=16, epochs=2, batch_size=64)


def test_precision_is_a_validated_recipe_field():
    assert Recipe().precision == "float32"
    assert Recipe(precision="auto").precision == "auto"
    with pytest.raises(DlkitError, match="Did you mean 'mixed_bfloat16'"):
        Recipe(precision="mixed_bfloat")


def test_auto_follows_the_hardware_and_other_values_stay():
    for concrete in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert resolve_precision(concrete) == concrete
    if gpu_compute_capability() is None:
        expected = "mixed_bfloat16" if cpu_has_native_bf16() else "float32"
        assert resolve_precision("auto") == expected


def test_a_recipe_resolves_auto_once_and_a_resolved_one_is_itself():
    auto = Recipe(precision="auto")
    assert auto.resolved() == auto.replace(precision=resolve_precision("auto")) != auto
    concrete = Recipe(precision="float32")
    assert concrete.resolved() is concrete


@pytest.mark.parametrize(
    "flags, native",
    [("fpu avx2 amx_bf16 amx_tile", True), ("fpu avx512f avx512_bf16", True), ("avx2 fma", False)],
)
def test_the_cpu_flag_reader_finds_bfloat16_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is native
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_mixed_bfloat16_computes_hidden_layers_in_bfloat16_and_the_output_in_float32():
    model = build_model(SMALL.replace(precision="mixed_bfloat16", dropout=0.1), (6,), 3)
    hidden, output = model.get_layer("hidden_1"), model.get_layer("output")
    assert hidden.compute_dtype == "bfloat16" and hidden.kernel.dtype == "float32"
    assert model.get_layer("dropout_1").compute_dtype == "bfloat16"
    assert output.compute_dtype == "float32"
    x = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    probabilities = model(x)
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, rtol=1e-5)


def test_mixed_float16_scales_the_loss():
    recipe = SMALL.replace(precision="mixed_float16")
    model = compile_model(build_model(recipe, (6,), 3), recipe)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_training_in_auto_logs_and_hashes_the_resolved_precision(digits):
    recipe = SMALL.replace(epochs=8, learning_rate=0.01)
    auto = fit(recipe.replace(precision="auto"), digits, seed=0, verbose=0)
    plain = fit(recipe, digits, seed=0, verbose=0)
    assert auto.recipe.precision == resolve_precision("auto")
    assert math.isfinite(auto.history["loss"][-1])
    # bfloat16 arithmetic learns what float32 learns on this small net
    assert auto.test_accuracy > 0.8 and abs(auto.test_accuracy - plain.test_accuracy) < 0.05
    data = DataSpec(source="digits")
    plain = config_hash(SMALL, data, 0)
    assert config_hash(SMALL.replace(precision="mixed_bfloat16"), data, 0) != plain
