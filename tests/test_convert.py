"""``gmm-pipeline convert`` of Parquet and delimited text through pyarrow: row groups and
blocks into Zarr chunks, column selection, the weights column ``w`` and a weighted YAML run on
it, one-line errors naming the file, row group or line and column, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import pipeline.data.convert as convert_mod
from pipeline import GaussianMixture
from pipeline.batch.cli import main
from pipeline.data.convert import convert
from pipeline.data.zarr_io import open_dataset
from pipeline.exceptions import DataError
from tests.helpers import blobs


@pytest.fixture
def small_batches(monkeypatch):
    """Parquet batches of 40 rows of 5 columns (more rows of fewer), CSV blocks of 1,600 bytes:
    many of each per row group or file, ending inside stored chunks."""
    monkeypatch.setattr(convert_mod, "BATCH_BYTES", 40 * 5 * 8)


def leftovers(directory):
    return [p.name for p in directory.iterdir() if ".tmp" in p.name]


def parquet(path, columns: dict, row_group_size: int):
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def csv_text(arr, delimiter=",", header=None) -> str:
    lines = [] if header is None else [delimiter.join(header)]
    lines += [delimiter.join(f"{v:.17g}" for v in row) for row in arr]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- Parquet


def test_parquet_row_groups_land_in_chunks_that_do_not_divide_them(tmp_path, small_batches):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(1003, 5)) * 1e3
    cols = {f"f{i}": arr[:, i] for i in range(4)}
    cols["n"] = np.arange(1003, dtype=np.int32) - 500  # integers are stored as float64 too
    arr[:, 4] = cols["n"]
    path = parquet(tmp_path / "x.parquet", cols, row_group_size=150)
    assert pq.ParquetFile(path).num_row_groups == 7
    assert convert(path, tmp_path / "x.zarr", chunk_rows=64) == (1003, 5)
    z = zarr.open_array(tmp_path / "x.zarr")
    assert z.dtype == np.float64 and z.chunks == (64, 5) and z.attrs["columns"] == ["f0", "f1", "f2", "f3", "n"]
    np.testing.assert_array_equal(z[:], arr)
    np.testing.assert_array_equal(open_dataset(tmp_path / "x.zarr").compute(), arr)
    assert leftovers(tmp_path) == []


def test_parquet_nulls_become_nan_and_dtype_float32(tmp_path):
    a = pa.array([1.5, None, 3.0, 4.0])
    b = pa.array([None, 2, 3, 4], pa.int64())
    path = parquet(tmp_path / "n.parquet", {"a": a, "b": b}, row_group_size=3)
    convert(path, tmp_path / "n.zarr", chunk_rows=2, dtype="float32")
    z = zarr.open_array(tmp_path / "n.zarr")
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z[:], np.array([[1.5, np.nan], [np.nan, 2], [3, 3], [4, 4]], np.float32))


def test_parquet_columns_subset_order_by_name_or_number(tmp_path):
    arr = np.random.default_rng(1).normal(size=(30, 4))
    path = parquet(tmp_path / "x.parquet", {c: arr[:, i] for i, c in enumerate("abcd")}, row_group_size=7)
    convert(path, tmp_path / "named.zarr", columns=["d", "b"])
    convert(path, tmp_path / "numbered.zarr", columns=[3, "1"])
    for name in ("named", "numbered"):
        z = zarr.open_array(tmp_path / f"{name}.zarr")
        np.testing.assert_array_equal(z[:], arr[:, [3, 1]])
        assert z.attrs["columns"] == ["d", "b"]


# ---------------------------------------------------------------------------- text


@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("delimiter, suffix", [(",", "csv"), ("\t", "tsv"), (";", "txt")])
def test_text_with_and_without_header_in_small_blocks(tmp_path, small_batches, header, delimiter, suffix):
    arr = np.random.default_rng(2).normal(size=(211, 3))
    path = tmp_path / f"x.{suffix}"
    path.write_text(csv_text(arr, delimiter, ["x", "y", "z"] if header else None))
    assert convert(path, tmp_path / "x.zarr", chunk_rows=16) == (211, 3)
    z = zarr.open_array(tmp_path / "x.zarr")
    assert z.chunks == (16, 3) and z.attrs.get("columns") == (["x", "y", "z"] if header else None)
    np.testing.assert_array_equal(z[:], arr)


def test_text_missing_values_become_nan(tmp_path):
    (tmp_path / "m.csv").write_text("a,b,c\n1,,3\n NA ,5, \n7,null,nan\n")
    convert(tmp_path / "m.csv", tmp_path / "m.zarr")
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "m.zarr")[:],
                                  [[1, np.nan, 3], [np.nan, 5, np.nan], [7, np.nan, np.nan]])


def test_text_columns_subset_and_order(tmp_path):
    arr = np.random.default_rng(3).normal(size=(20, 4))
    (tmp_path / "h.csv").write_text(csv_text(arr, header=["a", "b", "c", "d"]))
    (tmp_path / "n.tsv").write_text(csv_text(arr, "\t"))
    convert(tmp_path / "h.csv", tmp_path / "h.zarr", columns=["c", "a"])
    convert(tmp_path / "n.tsv", tmp_path / "n.zarr", columns=["2", 0])  # no header: numbers
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "h.zarr")[:], arr[:, [2, 0]])
    assert zarr.open_array(tmp_path / "h.zarr").attrs["columns"] == ["c", "a"]
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "n.zarr")[:], arr[:, [2, 0]])


# ---------------------------------------------------------------------------- weights


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_weights_column_becomes_w_beside_x(tmp_path, small_batches, suffix):
    arr = np.random.default_rng(4).normal(size=(333, 3))
    w = np.random.default_rng(5).integers(0, 4, size=333).astype(np.int64)
    path = tmp_path / f"x.{suffix}"
    if suffix == "parquet":
        parquet(path, {"a": arr[:, 0], "wt": w, "b": arr[:, 1], "c": arr[:, 2]}, row_group_size=100)
    else:
        full = np.column_stack([arr[:, 0], w, arr[:, 1:]])
        path.write_text(csv_text(full, header=["a", "wt", "b", "c"]))
    assert convert(path, tmp_path / "x.zarr", chunk_rows=64, weights="wt") == (333, 3)
    group = zarr.open_group(tmp_path / "x.zarr", mode="r")
    assert sorted(name for name, _ in group.arrays()) == ["X", "w"]
    assert group["w"].shape == (333,) and group["w"].dtype == np.float64 and group["w"].chunks == (64,)
    np.testing.assert_array_equal(group["w"][:], w)
    np.testing.assert_array_equal(group["X"][:], arr)  # every column but the weights
    assert group["X"].attrs["columns"] == ["a", "b", "c"]


def test_yaml_run_with_converted_weights_equals_a_fit_with_the_weights(tmp_path):
    from distributed import Client

    from pipeline.batch.config import load_config
    from pipeline.batch.runner import run

    X, _ = blobs(600, seed=31)
    w = np.random.default_rng(6).integers(0, 4, size=len(X)).astype(float)
    parquet(tmp_path / "t.parquet", {"x0": X[:, 0], "x1": X[:, 1], "x2": X[:, 2], "w": w}, row_group_size=170)
    r_code = main(["convert", str(tmp_path / "t.parquet"), str(tmp_path / "t.zarr"), "--chunk-rows", "128",
                   "--weights", "w"])
    assert r_code == 0
    config = tmp_path / "run.yaml"
    config.write_text(textwrap.dedent(f"""\
        data: {{path: {tmp_path / 't.zarr'}, weights: w, chunk_rows: null}}
        model: {{n_components: 3, covariance_type: full, max_iter: 30, tol: 1.0e-8, dtype: float64, random_state: 0,
                 init_sample: null}}
        output: {{dir: {tmp_path / 'run'}, labels: false, responsibilities: false, plots: false}}
        """))
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        result = run(load_config(config), client=client)
    data = open_dataset(tmp_path / "t.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = GaussianMixture(3, covariance_type="full", max_iter=30, tol=1e-8, random_state=0,
                                   dtype="float64").fit(data, sample_weight=w)
    np.testing.assert_allclose(result.model.means_, expected.means_, rtol=1e-10)
    np.testing.assert_allclose(result.model.weights_, expected.weights_, rtol=1e-10)
    assert result.report["selected"]["loglik"] == pytest.approx(expected.score(data, sample_weight=w), rel=1e-12)


# ---------------------------------------------------------------------------- errors


def _parquet_file(columns, row_group_size=2):
    return lambda path: parquet(path, columns, row_group_size)


def _text_file(text):
    return lambda path: path.write_text(text)


ERRORS = [  # (file name, make it, convert's keyword arguments, what the message says)
    ("s.parquet", _parquet_file({"a": [1.0, 2.0, 3.0], "s": ["x", "y", "z"]}), {},
     ["column 's'", "every row group", "type string is not numeric", "numeric columns are: a"]),
    ("u.parquet", _parquet_file({"a": [1.0], "b": [2.0]}), {"columns": ["a", "zz"]},
     ["no column 'zz'", "the columns are: a, b"]),
    ("n.parquet", _parquet_file({"a": [1.0, 2.0, 3.0, 4.0, 5.0], "w": pa.array([1.0, 1.0, 1.0, None, 1.0])}),
     {"weights": "w"}, ["row group 1", "column 'w'", "null weight in row 3"]),
    ("e.parquet", _parquet_file({"a": pa.array([], pa.float64())}), {}, ["has no data rows"]),
    ("c.parquet", lambda path: path.write_bytes(b"PAR1 not really PAR1"), {}, ["cannot read as Parquet"]),
    ("s.csv", _text_file("a,name,b\n1,x,2\n3,y,4\n"), {},
     ["line 2", "cannot parse '1,x,2' as numbers", "column 'name' holds 'x'"]),
    ("v.tsv", _text_file("1\t2\n\n3\t4\n5\toops\n"), {}, ["line 4", "column 1 (0-based) holds 'oops'"]),
    ("u.csv", _text_file("a,b\n1,2\n"), {"weights": "c"}, ["no column 'c' (weights)", "the columns are: a, b"]),
    ("n.csv", _text_file("a,b,w\n1,2,1\n\n3,4,\n"), {"weights": "w"},
     ["line 4", "column 'w'", "missing weight", "'3,4,'"]),
    ("r.csv", _text_file("a,b,c\n1,2,3\n\n4,5\n"), {},
     ["line 4", "ragged row: 2 value(s) where 3 were expected", "the header, line 1"]),
    ("r.txt", _text_file("1 2 3\n4  5   6\n7 8\n"), {}, ["line 3", "ragged row", "'7 8'"]),
    ("e.csv", _text_file("\n\n"), {}, ["has no data rows (it is empty)"]),
    ("h.csv", _text_file("\na,b\n"), {}, ["has no data rows (only its header, line 2)"]),
]


@pytest.mark.parametrize("name, make, kwargs, says", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_one_line_naming_file_place_and_column(tmp_path, capsys, name, make, kwargs, says):
    src = tmp_path / name
    make(src)
    with pytest.raises(DataError) as info:
        convert(src, tmp_path / "out.zarr", chunk_rows=2, **kwargs)
    msg = str(info.value)
    assert msg.startswith(f"{src}") and "\n" not in msg, msg
    for part in says:
        assert part in msg, (part, msg)
    assert not (tmp_path / "out.zarr").exists() and leftovers(tmp_path) == []
    argv = ["convert", str(src), str(tmp_path / "out.zarr"), "--chunk-rows", "2"]
    for option in ("columns", "weights"):
        if option in kwargs:
            value = kwargs[option]
            argv += [f"--{option}", ",".join(value) if isinstance(value, list) else value]
    capsys.readouterr()
    assert main(argv) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"gmm-pipeline: error: {msg}\n"


def test_the_command_converts_and_fails_in_one_line(tmp_path):
    (tmp_path / "x.csv").write_text("a,b,w\n1,2,1\n3,4,2\n5,6,x\n")
    cli = [sys.executable, "-m", "pipeline.batch.cli", "convert", str(tmp_path / "x.csv")]
    r = subprocess.run([*cli, str(tmp_path / "x.zarr"), "--weights", "w"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "x.csv, line 4: cannot parse '5,6,x' as numbers: column 'w' holds 'x'" in r.stderr
    (tmp_path / "x.csv").write_text("a,b,w\n1,2,1\n3,4,2\n")
    r = subprocess.run([*cli, str(tmp_path / "x.zarr"), "--columns", "b,a", "--weights", "w"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "wrote 2 x 2" in r.stdout, r.stderr
    group = zarr.open_group(tmp_path / "x.zarr", mode="r")
    np.testing.assert_array_equal(group["X"][:], [[2, 1], [4, 3]])
    np.testing.assert_array_equal(group["w"][:], [1, 2])


def test_columns_and_weights_are_refused_for_npy_and_twice(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    with pytest.raises(DataError, match=r"x\.npy: columns and weights can be chosen in Parquet and text files only"):
        convert(tmp_path / "x.npy", tmp_path / "x.zarr", columns=["0"])
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="a column is chosen twice"):
        convert(tmp_path / "x.csv", tmp_path / "x.zarr", columns=["a", "b"], weights="b")
    with pytest.raises(DataError, match="no columns left for X"):
        convert(tmp_path / "x.csv", tmp_path / "x.zarr", columns=[], weights="b")


# ---------------------------------------------------------------------------- memory


MEMORY_PROBE = """
import json, sys, tracemalloc
import pyarrow as pa
from pipeline.data.convert import convert
tracemalloc.start()
convert(sys.argv[1], sys.argv[2], chunk_rows=8192)
print(json.dumps({"numpy": tracemalloc.get_traced_memory()[1], "arrow": pa.default_memory_pool().max_memory()}))
"""


def test_parquet_conversion_memory_is_bounded_by_a_row_group_not_the_file(tmp_path):
    """40 row groups of 1.3 MB, 51 MB of values: the peak of NumPy allocations (tracemalloc) and
    of pyarrow's memory pool, in a fresh process, stay below a fifth of the file (about 8 MB
    each; reading the whole file at once takes over 50 MB)."""
    arr = np.random.default_rng(7).normal(size=(800_000, 8))
    path = parquet(tmp_path / "big.parquet", {f"c{i}": arr[:, i] for i in range(8)}, row_group_size=20_000)
    size = path.stat().st_size
    assert size > 45e6
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), str(tmp_path / "big.zarr")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    peaks = json.loads(r.stdout)
    assert peaks["numpy"] < size / 5 and peaks["arrow"] < size / 5, (peaks, size)
    assert zarr.open_array(tmp_path / "big.zarr").shape == (800_000, 8)
