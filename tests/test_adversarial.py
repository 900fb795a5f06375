"""Bad input, generated: every mistake ends in one clear message, a non-zero exit, no traceback.

The cases are built from the recipe fields, the option ranges and a list of
broken files, so a new field or option is covered the day it is added.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlkit import Recipe
from dlkit.cli import main
from dlkit.recipes.fields import (
    ACTIVATIONS,
    INITIALIZERS,
    LOSSES,
    MONITORS,
    NORMALIZATIONS,
    OPTIMIZERS,
)
from dlkit.recipes.recipe import _FIELD_TYPES

CHOICES = {
    "activation": ACTIVATIONS,
    "initializer": INITIALIZERS,
    "loss": LOSSES,
    "optimizer": OPTIMIZERS,
    "normalization": NORMALIZATIONS,
    "monitor": MONITORS,
}
# Values out of range for each numeric field, beside values of the wrong type.
OUT_OF_RANGE = {
    "depth": ["-1", "1001"],
    "width": ["0", "-3"],
    "match_depth": ["-1", "5000"],
    "maxout_pieces": ["1", "0"],
    "input_dropout": ["1", "1.5", "-0.1"],
    "dropout": ["1", "2", "-0.5"],
    "weight_decay": ["-1e-4"],
    "learning_rate": ["0", "-0.1"],
    "momentum": ["1", "-0.1"],
    "lr_decay": ["0", "1.5"],
    "lr_decay_epochs": ["-2"],
    "batch_size": ["0", "-128"],
    "epochs": ["0", "-1"],
    "patience": ["-1"],
}
WRONG_TYPE = {
    int: ["x", "1.5", "", "1e3", "ten"],
    float: ["nan", "inf", "-inf", "abc", "", "1,5"],
    bool: ["maybe", "2", "", "truthy"],
    tuple: ["1,,2", "0,16", "a,b", "-4", "16,"],
}


def bad_set_values() -> list[tuple[str, str]]:
    cases = []
    for field, kind in _FIELD_TYPES.items():
        if kind is str:
            cases += [(field, f"{field}=bogus"), (field, f"{field}=")] if field in CHOICES else []
            continue
        cases += [(field, f"{field}={value}") for value in WRONG_TYPE[kind]]
        cases += [(field, f"{field}={value}") for value in OUT_OF_RANGE.get(field, [])]
    return cases


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_refused(result, fragment: str, exit_code: int | None = None) -> None:
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert fragment in result.output, result.output


@pytest.mark.parametrize("field, assignment", bad_set_values())
@pytest.mark.parametrize("command", ["train", "compare"])
def test_a_bad_recipe_value_is_refused_naming_the_field(command, field, assignment):
    result = invoke(command, "deep-relu", "-d", "digits", "--set", assignment)
    assert_refused(result, field, exit_code=1)


@pytest.mark.parametrize(
    "assignment, fragment",
    [
        ("dropout", "field=value"),
        ("=0.5", "field=value"),
        ("dropuot=0.5", "Did you mean 'dropout'"),
        ("Dropout=0.5", "Unknown recipe field"),
        ("widths=16 match_depth=3", "must be a list of whole numbers"),
    ],
)
def test_malformed_overrides(assignment, fragment):
    assert_refused(invoke("train", "deep-relu", "-d", "digits", "--set", assignment), fragment)


BAD_OPTIONS = [
    (["train", "deep-relu", "--seed", "-1"], "Invalid value for '--seed'"),
    (["train", "deep-relu", "--seed", str(2**32)], "Invalid value for '--seed'"),
    (["train", "deep-relu", "--seed", "x"], "Invalid value for '--seed'"),
    (["train", "deep-relu", "--seed", "1.5"], "Invalid value for '--seed'"),
    (["train", "deep-relu", "--epochs", "0"], "Invalid value for '--epochs'"),
    (["train", "deep-relu", "--epochs", "-1"], "Invalid value for '--epochs'"),
    (["train", "deep-relu", "--epochs", "many"], "Invalid value for '--epochs'"),
    (["train", "deep-relu", "--train-size", "0"], "Invalid value for '--train-size'"),
    (["train", "deep-relu", "--train-size", "-5"], "Invalid value for '--train-size'"),
    (["train", "deep-relu", "--train-offset", "-1"], "Invalid value for '--train-offset'"),
    (["train", "deep-relu", "-d", "digits", "--train-offset", "5000"], "train_offset=5000"),
    (["compare", "deep-relu", "-d", "digits", "--replicate"], "no second slice"),
    (["compare", "deep-relu", "-d", "digits", "--train-size", "900", "--replicate"], "skipping"),
    (["train", "deep-relu", "--validation-split", "1"], "Invalid value for '--validation-split'"),
    (["train", "deep-relu", "--validation-split", "-0.1"], "Invalid value"),
    (["train", "deep-relu", "--validation-split", "half"], "Invalid value"),
    (["train", "deep-relu", "-d", ""], "The dataset is empty"),
    (["train", "deep-relu", "-d", "   "], "The dataset is empty"),
    (["train", "deep-relu", "-d", "./nowhere"], "does not exist"),
    (["train", "deep-relu", "-d", "/no/such/data.npz"], "does not exist"),
    (["train", "deep-relu", "-d", "digits", "--train-size", "5000"], "is more than the"),
    (["train", "deep-relu", "-d", "digits", "--set", "width=100000000"], "more than this"),
    (["train", "dep-relu"], "Did you mean 'deep-relu'"),
    (["train", ""], "Unknown recipe ''"),
    (["train", "../../etc/passwd"], "Unknown recipe"),
    (["train", "x" * 300], "Unknown recipe"),
    (["train"], "Missing argument"),
    (["train", "deep-relu", "--bogus"], "No such option"),
    (["compare"], "Missing argument"),
    (["compare", "deep-relu", "deep-relu", "-d", "digits"], "is named twice"),
    (["compare", "deep-relu", "nope"], "Unknown recipe 'nope'"),
    (["compare", "deep-relu", "--seeds", "0"], "Invalid value for '--seeds'"),
    (["compare", "deep-relu", "--seeds", "1000000000"], "Invalid value for '--seeds'"),
    (["compare", "deep-relu", "-d", "digits", "--seeds", "600"], "pass --yes"),
    (["compare", "deep-relu", "-d", ""], "The dataset is empty"),
    (["compare", "missing.yaml"], "Cannot read experiment file"),
    (["compare", "missing.yaml", "deep-relu"], "not both"),
    (["compare", "deep-relu", "-d", "digits", "--output", "a-file"], "Cannot write the report"),
    (["report", "nothing", "--tracking-uri", "sqlite:///m.db"], "No MLflow experiment"),
    (["report", "x", "--tracking-uri", "sqlite:////no/such/dir/m.db"], "does not exist"),
    (["report", "x", "--tracking-uri", "bogus://nowhere"], "Cannot open the MLflow"),
    (["report", "missing.yaml"], "Cannot read experiment file"),
    (["bench", "--epochs", "1"], "Invalid value for '--epochs'"),
    (["bench", "--repeats", "0"], "Invalid value for '--repeats'"),
    (["bench", "-d", "./nowhere"], "does not exist"),
    (["bench", "--json", "/no/such/dir/b.json"], "does not exist"),
    (["bench", "--json", "."], "is a folder"),
    (["recipes", "--input-dim", "0"], "Invalid value for '--input-dim'"),
    (["recipes", "--classes", "1"], "Invalid value for '--classes'"),
    (["nonsense"], "No such command"),
]


@pytest.mark.parametrize("args, fragment", BAD_OPTIONS)
def test_bad_options_and_arguments(args, fragment):
    Path("a-file").write_text("not a folder")
    assert_refused(invoke(*args), fragment)


EXPERIMENT = "name: ok\ndataset: digits\nvariants: [deep-relu, softmax-regression]\n"
BAD_FILES = [
    ("name: ..\nvariants: [deep-relu]\n", "cannot name an experiment"),
    ("name: .\nvariants: [deep-relu]\n", "cannot name an experiment"),
    ("name: exp a\nvariants: [deep-relu]\n", "cannot name an experiment"),
    ("name: ../escape\nvariants: [deep-relu]\n", "cannot name an experiment"),
    ("name: /abs\nvariants: [deep-relu]\n", "cannot name an experiment"),
    (f"name: {'n' * 300}\nvariants: [deep-relu]\n", "cannot name an experiment"),
    ("name: ''\nvariants: [deep-relu]\n", "expected a non-empty string"),
    ("name: 5\nvariants: [deep-relu]\n", "expected a non-empty string"),
    ("name: a\nname: b\nvariants: [deep-relu]\n", "appears twice"),
    ("variants: [deep-relu]\nseeds: 2\nseeds: 3\n", "appears twice"),
    ("variants:\n  - {recipe: deep-relu, recipe: wide-relu}\n", "appears twice"),
    ("a: &x [1]\nvariants: *x\n", "aliases"),
    (
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nvariants: [deep-relu]\n",
        "aliases",
    ),
    ("variants: [deep-relu]\nseeds: -1\n", "number of seeds must be from 1"),
    ("variants: [deep-relu]\nseeds: 1000000000\n", "number of seeds must be from 1"),
    ("variants: [deep-relu]\nseeds: [-1]\n", "seeds must be from 0 to"),
    ("variants: [deep-relu]\nseeds: [4294967296]\n", "seeds must be from 0 to"),
    ("variants: [deep-relu]\nseeds: [1, 1]\n", "seeds repeat"),
    ("variants: [deep-relu]\nseeds: [1.5]\n", "whole-number seeds"),
    ("variants: [deep-relu]\nseeds: true\n", "expected a count"),
    ("variants: [deep-relu]\nseeds: []\n", "whole-number seeds"),
    (
        "variants: [deep-relu, softmax-regression]\n"
        "expect: [deep-relu > softmax-regression by -1]\n",
        "margin must be a finite number of at least 0",
    ),
    ("variants: [deep-relu]\nexpect: [deep-relu > nan]\n", "threshold must be a finite"),
    ("variants: [deep-relu]\nexpect: [deep-relu > inf]\n", "threshold must be a finite"),
    ("variants: [deep-relu]\nexpect: [deep-relu ~ 0.5 by 0.1]\n", "use 'by' with > and <"),
    ("variants: [deep-relu]\nexpect: [deep-relu >> 0.5]\n", "cannot read expectation"),
    ("variants: [deep-relu]\nexpect: 5\n", "expect: expected a list"),
    ("variants: [deep-relu]\noverrides: {epochs: 0}\n", "epochs=0"),
    ("variants: [deep-relu]\noverrides: {epochs: -1}\n", "epochs=-1"),
    ("variants: [deep-relu]\noverrides: {widths: '1,,2'}\n", "widths"),
    ("variants: [deep-relu]\noverrides: {depth: 1000000000000}\n", "depth"),
    ("variants: [deep-relu]\noverrides: {name: 5}\n", "name"),
    ("variants: [deep-relu]\noverrides: [epochs]\n", "expected a mapping"),
    ("variants: [deep-relu]\ndataset: {source: ''}\n", "non-empty string"),
    ("variants: [deep-relu]\ndataset: {source: digits, validation_split: 1}\n", "[0, 1)"),
    ("variants: [deep-relu]\ndataset: {source: digits, train_size: 0}\n", "train_size"),
    ("variants: [deep-relu]\ndataset: {source: digits, train_offset: -1}\n", "train_offset"),
    ("variants: [deep-relu]\ndataset: [digits]\n", "dataset: expected"),
    ("variants: [deep-relu]\ndataset: {source: digits, size: 3}\n", "unknown key"),
    ("variants: [deep-relu]\ngradient_norms: maybe\n", "gradient_norms: expected true"),
    ("variants: [deep-relu]\npublished: {deep-relu: 1.5}\n", "published.deep-relu"),
    ("variants: [deep-relu]\npublished: {other: 0.5}\n", "not a variant"),
    ("variants: deep-relu\n", "variants: expected a list"),
    ("variants: [5]\n", "expected a recipe name"),
    ("variants: [{label: x}]\n", "missing `recipe`"),
    ("variants: []\n", "has no variants"),
    ("variants: [deep-relu, {label: again, recipe: deep-relu}]\n", "the same configuration"),
    (
        "variants: [deep-relu, softmax-regression]\noverrides: {depth: 3, width: 500}\n",
        "the same configuration",
    ),
    ("grid: {recipe: deep-relu, axes: {depth: [1, 2], width: 5}}\n", "non-empty list"),
    ("grid: {recipe: deep-relu, axes: {}}\n", "grid.axes"),
    (
        "grid: {recipe: deep-relu, axes: {"
        + ", ".join(f"f{i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" for i in range(7))
        + "}}\n",
        "a grid may have at most",
    ),
    ("grid: {recipe: deep-relu, axes: {dropuot: [0, 0.5]}}\n", "Unknown recipe field"),
    ("grid: {recipe: nope, axes: {depth: [1]}}\n", "Unknown recipe 'nope'"),
    ("grid: [deep-relu]\n", "grid: expected a mapping"),
    ("variants: [deep-relu\n", "not valid YAML"),
    ("{{{{\n", "not valid YAML"),
    ("\t- tab\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['echo owned']\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("", "must be a mapping"),
    ("42\n", "must be a mapping"),
    ("variants: [deep-relu]\nseed: 3\n", "Did you mean 'seeds'"),
]


@pytest.mark.parametrize("text, fragment", BAD_FILES)
def test_bad_experiment_files_name_the_file_and_the_problem(tmp_path, text, fragment):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    result = invoke("compare", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert_refused(result, fragment, exit_code=1)
    assert str(path) in result.output
    assert not (tmp_path / "m.db").exists()  # refused before anything was opened


def test_files_that_are_not_text_or_too_large(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\nvariants: [deep-relu]\n")
    assert_refused(invoke("compare", str(binary)), "not UTF-8 text")
    large = tmp_path / "large.yaml"
    large.write_text("# padding\n" * 200_000 + EXPERIMENT)
    assert_refused(invoke("compare", str(large)), "an experiment file is at most")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    assert_refused(invoke("compare", str(folder)), "Cannot read experiment file")


def mnist_like(n: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8),
        "y_train": np.arange(n) % 4,
        "x_test": rng.integers(0, 256, (n // 2, 8, 8), dtype=np.uint8),
        "y_test": np.arange(n // 2) % 4,
    }


def npz_bytes(tmp_path: Path, **changes) -> bytes:
    path = tmp_path / "source.npz"
    np.savez(path, **{**mnist_like(), **changes})
    return path.read_bytes()


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    header = bytes([0, 0, dtype_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def broken_npz_files(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    good = npz_bytes(tmp_path)
    n = 40
    return {
        "empty": (b"", "Cannot read"),
        "text": (b"x_train,y_train\n1,2\n", "Cannot read"),
        "truncated": (good[: len(good) // 2], "Cannot read"),
        "garbled": (good[:100] + bytes(200) + good[300:], "Cannot read"),
        "zip-of-junk": (
            _zip({f"{key}.npy": b"junk" for key in ("x_train", "y_train", "x_test", "y_test")}),
            "Cannot read",
        ),
        "missing-arrays": (_zip({}), "lacks x_train"),
        "pickled": (
            npz_bytes(tmp_path, y_test=np.array([object()] * (n // 2), dtype=object)),
            "Cannot read",
        ),
        "labels-fractional": (npz_bytes(tmp_path, y_train=np.arange(n) % 4 + 0.5), "whole class"),
        "labels-nan": (npz_bytes(tmp_path, y_train=np.full(n, np.nan)), "whole class"),
        "labels-negative": (npz_bytes(tmp_path, y_train=np.arange(n) % 4 - 2), "from 0"),
        "labels-huge": (npz_bytes(tmp_path, y_train=np.where(np.arange(n) < 1, 10**6, 1)), "range"),
        "labels-one-class": (
            npz_bytes(tmp_path, y_train=np.zeros(n, int), y_test=np.zeros(n // 2, int)),
            "only one class",
        ),
        "labels-2d": (npz_bytes(tmp_path, y_train=np.zeros((n, 2, 2))), "one label per example"),
        "labels-short": (npz_bytes(tmp_path, y_train=np.arange(n - 1) % 4), "differ in count"),
        "labels-strings": (npz_bytes(tmp_path, y_train=np.array(["a"] * n)), "whole class"),
        "pixels-nan": (npz_bytes(tmp_path, x_train=np.full((n, 8, 8), np.nan)), "NaN or infinite"),
        "pixels-inf": (npz_bytes(tmp_path, x_test=np.full((n // 2, 8, 8), np.inf)), "NaN or inf"),
        "pixels-complex": (npz_bytes(tmp_path, x_train=np.zeros((n, 8, 8), complex)), "real"),
        "pixels-strings": (npz_bytes(tmp_path, x_train=np.array([["a"] * 4] * n)), "real"),
        "pixels-1d": (npz_bytes(tmp_path, x_train=np.zeros(n)), "one row per example"),
        "shapes-differ": (npz_bytes(tmp_path, x_test=np.zeros((n // 2, 4, 4))), "must agree"),
        "no-examples": (
            npz_bytes(tmp_path, x_train=np.zeros((0, 8, 8)), y_train=np.zeros(0, int)),
            "is empty",
        ),
    }


def _zip(members: dict[str, bytes]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


NPZ_CASES = [
    "empty",
    "text",
    "truncated",
    "garbled",
    "zip-of-junk",
    "missing-arrays",
    "pickled",
    "labels-fractional",
    "labels-nan",
    "labels-negative",
    "labels-huge",
    "labels-one-class",
    "labels-2d",
    "labels-short",
    "labels-strings",
    "pixels-nan",
    "pixels-inf",
    "pixels-complex",
    "pixels-strings",
    "pixels-1d",
    "shapes-differ",
    "no-examples",
]


@pytest.mark.parametrize("case", NPZ_CASES)
@pytest.mark.parametrize("command", ["train", "compare"])
def test_broken_npz_files_are_refused_with_the_file_named(tmp_path, command, case):
    content, fragment = broken_npz_files(tmp_path)[case]
    path = tmp_path / f"{case}.npz"
    path.write_bytes(content)
    result = invoke(command, "deep-relu", "-d", str(path), "--tracking-uri", "sqlite:///m.db")
    assert_refused(result, fragment, exit_code=1)
    assert case in result.output  # the file (or the dataset named after it)


IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_folder(folder: Path, replace: dict[str, bytes] | None = None, gz: bool = False) -> Path:
    folder.mkdir()
    arrays = mnist_like()
    contents = dict(zip(IDX_NAMES, (idx_bytes(arrays[k]) for k in arrays)))
    contents.update(replace or {})
    for name, content in contents.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)
    return folder


IDX_CASES = {
    "not-idx": ({IDX_NAMES[0]: b"hello world, not idx"}, "is not an IDX file"),
    "bad-type": ({IDX_NAMES[0]: bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 0])}, "is not an IDX file"),
    "short-header": ({IDX_NAMES[0]: bytes([0, 0, 8, 3, 0, 0])}, "truncated inside its header"),
    "overflowing-header": (
        {IDX_NAMES[0]: bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31)},
        "truncated or corrupt",
    ),
    "truncated-data": ({IDX_NAMES[0]: idx_bytes(np.zeros((40, 8, 8)))[:-7]}, "truncated or"),
    "count-mismatch": ({IDX_NAMES[1]: idx_bytes(np.arange(39) % 4)}, "differ in count"),
    "one-dimensional-images": ({IDX_NAMES[0]: idx_bytes(np.zeros(40))}, "one row per example"),
    "test-shape": ({IDX_NAMES[2]: idx_bytes(np.zeros((20, 4, 4)))}, "must agree"),
    "labels-out-of-range": (
        {IDX_NAMES[1]: idx_bytes(np.where(np.arange(40) < 1, 250, 1))},
        "range",
    ),
    "empty-file": ({IDX_NAMES[3]: b""}, "is not an IDX file"),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
@pytest.mark.parametrize("gz", [False, True])
def test_broken_idx_folders_are_refused_with_the_file_named(tmp_path, case, gz):
    replace, fragment = IDX_CASES[case]
    folder = idx_folder(tmp_path / case, replace, gz)
    assert_refused(invoke("train", "deep-relu", "-d", str(folder)), fragment, exit_code=1)


@pytest.mark.parametrize(
    "content", [b"", b"\x1f\x8b", b"\x1f\x8bgarbage", gzip.compress(b"x" * 100, mtime=0)[:-8]]
)
def test_broken_gzip_streams_are_refused(tmp_path, content):
    folder = idx_folder(tmp_path / "mnist", gz=True)
    (folder / f"{IDX_NAMES[0]}.gz").write_bytes(content)
    assert_refused(invoke("train", "deep-relu", "-d", str(folder)), IDX_NAMES[0], exit_code=1)


def test_a_missing_idx_file_is_named(tmp_path):
    folder = idx_folder(tmp_path / "mnist")
    (folder / IDX_NAMES[2]).unlink()
    assert_refused(invoke("train", "deep-relu", "-d", str(folder)), "has no t10k-images")


def test_recipes_refuse_sizes_that_cannot_fit_before_allocating():
    with pytest.raises(Exception, match="more than this machine's"):
        Recipe(width=10**12).check_size(784, 10)
    Recipe().check_size(784, 10)
