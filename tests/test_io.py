"""Zarr input/output, synthetic data, conversion and atomic writes."""

import os
import stat

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from pipeline.data.chunking import auto_chunk_rows
from pipeline.data.convert import convert
from pipeline.data.synthetic import generate_mixture
from pipeline.data.zarr_io import dataset_from_config, open_dataset, write_array_zarr
from pipeline.exceptions import DataError, OutputExistsError
from pipeline.storage.atomic import atomic_write_bytes, atomic_write_text


def make_array(path, data, chunks, zarr_format=3):
    z = zarr.create_array(
        str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format
    )
    z[...] = data
    return z


def leftovers(directory):
    """Temporary files or stores a writer left behind."""
    return [p.name for p in directory.iterdir() if ".tmp" in p.name]


@pytest.fixture
def data():
    return np.random.default_rng(0).normal(size=(50, 3))


# ---------------------------------------------------------------------------- open_dataset


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_dataset_reads_v2_and_v3_arrays_with_requested_row_chunks(
    tmp_path, data, zarr_format
):
    make_array(tmp_path / "a.zarr", data, chunks=(7, 2), zarr_format=zarr_format)
    X = open_dataset(tmp_path / "a.zarr", chunk_rows=20)
    assert isinstance(X, da.Array)
    assert X.shape == (50, 3) and X.dtype == data.dtype
    assert X.chunks == ((20, 20, 10), (3,))  # features never split
    np.testing.assert_array_equal(X.compute(), data)


def test_open_dataset_keeps_store_row_chunks_by_default(tmp_path, data):
    make_array(tmp_path / "a.zarr", data, chunks=(16, 3))
    X = open_dataset(tmp_path / "a.zarr")
    assert X.chunks == ((16, 16, 16, 2), (3,))


@pytest.mark.parametrize(
    "n, d, itemsize, multiple, rows",
    [
        (10_000_000, 16, 8, 1, 262_144),  # 1.28 GB: 20 chunks of 64 MB would be > 262,144 rows
        (1_000_000, 16, 8, 1, 62_500),  # 128 MB: 16 chunks
        (1_000_000, 8, 4, 65_536, 65_536),  # 32 MB: 16 chunks, rounded up to whole stored chunks
        (200_000, 8, 8, 1, 16_667),  # 12.8 MB: 12 chunks, none under 1 MiB
        (17_000, 8, 8, 1, 17_000),  # 1.04 MiB: one chunk
        (1_000, 2, 8, 1, 1_000),  # 16 kB: one chunk
        (2_000, 1_000_000, 8, 1, 9),  # 8 MB rows: 239 equal chunks of ~64 MiB
        (200_000_000, 16, 4, 1_048_576, 1_048_576),  # a stored chunk above the row cap wins
        (12, 3, 8, 5, 12),  # rounding up never passes n_samples
    ],
)
def test_auto_chunk_rows_sizes_chunks_in_tens_of_mb(n, d, itemsize, multiple, rows):
    got = auto_chunk_rows(n, d, itemsize, multiple=multiple)
    assert got == rows
    assert got % multiple == 0 or got == n
    n_chunks = -(-n // got)
    nbytes = n * d * itemsize
    if got == multiple or got == n:
        return
    assert (got - 1) * d * itemsize <= 64 * 2**20 and got <= 2**18  # ~64 MiB and 262,144 rows at most
    assert n_chunks >= min(16, nbytes // 2**20)  # enough chunks ...
    assert got * d * itemsize >= 2**20 or n_chunks * d * itemsize > 64 * 2**20  # ... of >= 1 MiB


def test_auto_chunk_rows_refuses_empty_sizes():
    with pytest.raises(ValueError, match="positive sizes"):
        auto_chunk_rows(0, 3, 8)


def test_open_dataset_auto_chunks_are_whole_stored_chunks(tmp_path):
    data = np.random.default_rng(0).normal(size=(300_000, 4))  # 9.6 MB: 9 chunks of >= 1 MiB
    make_array(tmp_path / "a.zarr", data, chunks=(10_000, 4))
    X = open_dataset(tmp_path / "a.zarr", chunk_rows="auto")
    assert X.chunks == ((40_000,) * 7 + (20_000,), (4,))
    np.testing.assert_array_equal(X[-5:].compute(), data[-5:])
    with pytest.raises(DataError, match="'auto'"):
        open_dataset(tmp_path / "a.zarr", chunk_rows="big")


def test_open_dataset_is_lazy_and_reads_at_compute_time(tmp_path, data):
    z = make_array(tmp_path / "a.zarr", data, chunks=(10, 3))
    X = open_dataset(tmp_path / "a.zarr", chunk_rows=10)
    z[...] = data + 100.0  # changed after opening: a lazy reader sees the new values
    np.testing.assert_array_equal(X.compute(), data + 100.0)


def test_open_dataset_finds_X_in_a_group_and_lists_arrays_when_ambiguous(tmp_path, data):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("X", data=data)
    g.create_array("other", data=data[:, :2])
    g.create_array("labels", data=np.zeros(50, dtype=np.int32))
    np.testing.assert_array_equal(open_dataset(tmp_path / "g.zarr").compute(), data)
    np.testing.assert_array_equal(
        open_dataset(tmp_path / "g.zarr", array="other").compute(), data[:, :2]
    )

    h = zarr.open_group(str(tmp_path / "h.zarr"), mode="w")
    h.create_array("only", data=data)
    h.create_array("labels", data=np.zeros(50, dtype=np.int32))
    assert open_dataset(tmp_path / "h.zarr").shape == (50, 3)  # the single 2-D array

    h.create_array("second", data=data)
    with pytest.raises(DataError) as info:
        open_dataset(tmp_path / "h.zarr")
    msg = str(info.value)
    assert "h.zarr" in msg and "'only'" in msg and "'second'" in msg and "data.array" in msg

    with pytest.raises(DataError, match="no array named 'nope'.*'only'"):
        open_dataset(tmp_path / "h.zarr", array="nope")


def test_open_dataset_reports_missing_path_with_generate_hint(tmp_path):
    with pytest.raises(DataError) as info:
        open_dataset(tmp_path / "missing.zarr")
    msg = str(info.value)
    assert str(tmp_path / "missing.zarr") in msg
    assert "does not exist" in msg and "data.generate" in msg


def test_open_dataset_rejects_a_directory_that_is_not_zarr(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain"):
        open_dataset(tmp_path / "plain")


def test_open_dataset_rejects_1d_with_reshape_hint(tmp_path):
    make_array(tmp_path / "v.zarr", np.arange(10.0), chunks=(5,))
    with pytest.raises(DataError) as info:
        open_dataset(tmp_path / "v.zarr")
    msg = str(info.value)
    assert "v.zarr" in msg and "2-D" in msg and "reshape to (10, 1)" in msg


def test_open_dataset_names_the_group_array_in_errors(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("X", data=np.arange(6.0))
    with pytest.raises(DataError, match=r"g\.zarr \(array 'X'\).*2-D"):
        open_dataset(tmp_path / "g.zarr")


@pytest.mark.filterwarnings("ignore:The data type")  # zarr: no v3 spec for str dtypes
@pytest.mark.parametrize(
    "values",
    [
        np.array([["a", "b"], ["c", "d"]]),
        np.ones((4, 2), dtype=bool),
        np.ones((4, 2), dtype=np.complex128),
    ],
    ids=["string", "bool", "complex"],
)
def test_open_dataset_rejects_non_numeric_dtypes(tmp_path, values):
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=values.shape, dtype=values.dtype)
    z[...] = values
    with pytest.raises(DataError) as info:
        open_dataset(tmp_path / "s.zarr")
    assert "s.zarr" in str(info.value) and "not numeric" in str(info.value)


def test_open_dataset_accepts_integers_as_stored(tmp_path):
    make_array(tmp_path / "i.zarr", np.arange(12, dtype=np.int16).reshape(6, 2), chunks=(3, 2))
    X = open_dataset(tmp_path / "i.zarr")
    assert X.dtype == np.int16 and int(X.sum().compute()) == 66


@pytest.mark.parametrize("shape", [(0, 3), (5, 0)])
def test_open_dataset_rejects_empty_arrays(tmp_path, shape):
    zarr.create_array(str(tmp_path / "e.zarr"), shape=shape, chunks=(1, 1), dtype="f8")
    with pytest.raises(DataError, match=r"e\.zarr.*empty"):
        open_dataset(tmp_path / "e.zarr")


@pytest.fixture(scope="module")
def process_client():
    """A one-worker distributed cluster in a separate process (started in pytest's cwd)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        yield client


def test_open_dataset_reads_in_worker_processes_with_another_cwd(
    tmp_path, data, monkeypatch, process_client
):
    monkeypatch.chdir(tmp_path)
    make_array("x.zarr", data, chunks=(10, 3))
    X = open_dataset("x.zarr", chunk_rows=10)  # relative here; the worker's cwd is elsewhere
    assert process_client.run(os.getcwd) != {}
    assert str(tmp_path) not in process_client.run(os.getcwd).values()
    np.testing.assert_allclose(X.sum(axis=0).compute(), data.sum(axis=0))


# ---------------------------------------------------------------------------- generate_mixture


def test_generate_mixture_is_reproducible_and_openable(tmp_path):
    kw = dict(n_samples=1000, n_features=3, n_components=4, seed=7, chunk_rows=256)
    p1 = generate_mixture(tmp_path / "a.zarr", **kw)
    p2 = generate_mixture(tmp_path / "b.zarr", **kw)
    a, b = zarr.open_group(str(tmp_path / "a.zarr")), zarr.open_group(str(tmp_path / "b.zarr"))
    np.testing.assert_array_equal(a["X"][:], b["X"][:])
    np.testing.assert_array_equal(a["labels"][:], b["labels"][:])
    for key in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(p1[key], p2[key])
        np.testing.assert_array_equal(a[key][:], p1[key])

    X = open_dataset(tmp_path / "a.zarr")
    assert X.shape == (1000, 3) and X.dtype == np.float32
    assert X.chunks[0] == (256, 256, 256, 232)
    labels = a["labels"][:]
    assert labels.dtype == np.int32 and labels.shape == (1000,)
    assert labels.min() >= 0 and labels.max() <= 3
    assert p1["covariances"].shape == (4, 3, 3) and np.isclose(p1["weights"].sum(), 1.0)
    assert leftovers(tmp_path) == []

    p3 = generate_mixture(tmp_path / "c.zarr", **{**kw, "seed": 8})
    assert not np.allclose(p3["means"], p1["means"])


def test_generate_mixture_chunks_are_independent_of_total_size(tmp_path):
    generate_mixture(tmp_path / "small.zarr", 300, 2, 3, seed=1, chunk_rows=100)
    generate_mixture(tmp_path / "large.zarr", 1000, 2, 3, seed=1, chunk_rows=100)
    small = zarr.open_array(str(tmp_path / "small.zarr" / "X"))[:]
    large = zarr.open_array(str(tmp_path / "large.zarr" / "X"))[:]
    np.testing.assert_array_equal(small, large[:300])  # each chunk from its own seeded stream


def test_generate_mixture_samples_follow_the_true_parameters(tmp_path):
    params = generate_mixture(
        tmp_path / "m.zarr", 20000, 2, 2, seed=3, chunk_rows=4096, dtype="float64"
    )
    g = zarr.open_group(str(tmp_path / "m.zarr"))
    X, labels = g["X"][:], g["labels"][:]
    for k in range(2):
        rows = X[labels == k]
        assert abs(len(rows) / len(X) - params["weights"][k]) < 0.02
        np.testing.assert_allclose(rows.mean(axis=0), params["means"][k], atol=0.1)
        np.testing.assert_allclose(np.cov(rows.T), params["covariances"][k], atol=0.15)
        assert np.all(np.linalg.eigvalsh(params["covariances"][k]) > 0)


def test_generate_mixture_refuses_to_overwrite_unless_asked(tmp_path):
    generate_mixture(tmp_path / "d.zarr", 50, 2, 2, seed=0, chunk_rows=20)
    with pytest.raises(OutputExistsError, match="d.zarr"):
        generate_mixture(tmp_path / "d.zarr", 50, 2, 2, seed=1)
    generate_mixture(tmp_path / "d.zarr", 60, 2, 2, seed=1, overwrite=True)
    assert open_dataset(tmp_path / "d.zarr").shape == (60, 2)
    assert leftovers(tmp_path) == []


def test_dataset_from_config_generates_missing_demo_data(tmp_path):
    from pipeline.batch.config import config_from_dict

    cfg = config_from_dict(
        {
            "data": {
                "path": str(tmp_path / "demo.zarr"),
                "chunk_rows": 64,
                "generate": {"n_samples": 200, "n_features": 2, "n_components": 2},
            }
        }
    )
    X = dataset_from_config(cfg.data)
    assert X.shape == (200, 2) and X.chunks[0] == (64, 64, 64, 8)
    assert dataset_from_config(cfg.data).shape == (200, 2)  # second time: just opens it


# ---------------------------------------------------------------------------- convert


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_convert_npy_round_trips_exactly(tmp_path, dtype):
    arr = (np.random.default_rng(1).normal(size=(103, 4)) * 1000).astype(dtype)
    np.save(tmp_path / "x.npy", arr)
    assert convert(tmp_path / "x.npy", tmp_path / "x.zarr", chunk_rows=25) == (103, 4)
    X = open_dataset(tmp_path / "x.zarr")
    assert X.dtype == dtype and X.chunks[0] == (25, 25, 25, 25, 3)
    np.testing.assert_array_equal(X.compute(), arr)
    assert leftovers(tmp_path) == []


def test_convert_npy_rejects_1d(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(5.0))
    with pytest.raises(DataError, match=r"v\.npy.*reshape"):
        convert(tmp_path / "v.npy", tmp_path / "v.zarr")
    assert not (tmp_path / "v.zarr").exists()


@pytest.mark.parametrize("header", [False, True])
def test_convert_csv_round_trips_exactly_with_and_without_header(tmp_path, header):
    arr = np.random.default_rng(2).normal(size=(57, 3))
    np.savetxt(
        tmp_path / "x.csv", arr, delimiter=",", fmt="%.17g",
        header="f0,f1,f2" if header else "", comments="",
    )
    assert convert(tmp_path / "x.csv", tmp_path / "x.zarr", chunk_rows=10) == (57, 3)
    X = open_dataset(tmp_path / "x.zarr")
    assert X.chunks[0] == (10,) * 5 + (7,)
    np.testing.assert_array_equal(X.compute(), arr)
    z = zarr.open_array(str(tmp_path / "x.zarr"))
    assert z.attrs.get("columns") == (["f0", "f1", "f2"] if header else None)


def test_convert_whitespace_text_with_blank_lines(tmp_path):
    (tmp_path / "x.txt").write_text("1 2\n\n3.5   -4\n5e3 6\n")
    convert(tmp_path / "x.txt", tmp_path / "x.zarr")
    np.testing.assert_array_equal(
        open_dataset(tmp_path / "x.zarr").compute(), [[1, 2], [3.5, -4], [5000, 6]]
    )


def test_convert_ragged_csv_names_the_line_and_leaves_nothing(tmp_path):
    (tmp_path / "r.csv").write_text("a,b,c\n1,2,3\n4,5,6\n7,8\n")
    with pytest.raises(DataError) as info:
        convert(tmp_path / "r.csv", tmp_path / "r.zarr", chunk_rows=2)
    msg = str(info.value)
    assert "r.csv, line 4" in msg and "ragged" in msg and "2 value(s)" in msg and "3" in msg
    assert not (tmp_path / "r.zarr").exists() and leftovers(tmp_path) == []


def test_convert_bad_csv_value_names_the_line(tmp_path):
    (tmp_path / "b.csv").write_text("1,2\n3,oops\n")
    with pytest.raises(DataError, match=r"b\.csv, line 2: cannot parse '3,oops'"):
        convert(tmp_path / "b.csv", tmp_path / "b.zarr")


def test_convert_rejects_unknown_extension_and_existing_output(tmp_path):
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"'\.xlsx'.*\.npy.*\.parquet"):
        convert(tmp_path / "x.xlsx", tmp_path / "x.zarr")
    np.save(tmp_path / "x.npy", np.ones((2, 2)))
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(OutputExistsError, match=r"x\.zarr"):
        convert(tmp_path / "x.npy", tmp_path / "x.zarr")


# ---------------------------------------------------------------------------- writers


def test_write_array_zarr_keeps_dask_chunks_and_values(tmp_path):
    x = da.arange(230, dtype=np.float64, chunks=45).reshape(115, 2).rechunk((40, 2))
    out = write_array_zarr(x, tmp_path / "r.zarr")
    z = zarr.open_array(str(out))
    assert z.chunks == (40, 2) and z.shape == (115, 2)
    np.testing.assert_array_equal(z[:], x.compute())
    assert open_dataset(out).chunks == x.chunks
    assert leftovers(tmp_path) == []


def test_write_array_zarr_adds_named_arrays_to_a_group_and_replaces_them(tmp_path):
    labels = da.from_array(np.arange(100, dtype=np.int32), chunks=30)
    write_array_zarr(labels, tmp_path / "out.zarr", name="labels")
    write_array_zarr(da.ones((100, 3), chunks=(30, 3)), tmp_path / "out.zarr", name="resp")
    g = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert sorted(g.array_keys()) == ["labels", "resp"]
    assert g["labels"].chunks == (30,)
    np.testing.assert_array_equal(g["labels"][:], np.arange(100))

    write_array_zarr(labels * 2, tmp_path / "out.zarr", name="labels")  # replaced atomically
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "out.zarr" / "labels"))[:], 2 * np.arange(100)
    )
    with pytest.raises(OutputExistsError, match="labels"):
        write_array_zarr(labels, tmp_path / "out.zarr", name="labels", overwrite=False)
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "out.zarr") == []


def test_write_array_zarr_regularises_irregular_chunks(tmp_path):
    x = da.from_array(np.arange(10.0), chunks=((3, 5, 2),))
    z = zarr.open_array(str(write_array_zarr(x, tmp_path / "i.zarr")))
    assert z.chunks == (5,)
    np.testing.assert_array_equal(z[:], np.arange(10.0))


def test_write_array_zarr_computes_on_the_active_scheduler(tmp_path):
    calls = []

    def tag(block):
        calls.append(len(block))
        return block

    x = da.ones(40, chunks=10).map_blocks(tag, dtype=float)
    with dask.config.set(scheduler="synchronous"):
        write_array_zarr(x, tmp_path / "s.zarr")
    assert [n for n in calls if n] == [10, 10, 10, 10]  # (0: Dask's meta probe)


def test_write_array_zarr_from_worker_processes(tmp_path, process_client):
    x = da.random.default_rng(0).normal(size=(90, 2), chunks=(25, 2))
    expected = x.compute()
    out = write_array_zarr(x, tmp_path / "w.zarr", name="resp")
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], expected)
    assert zarr.open_array(str(out)).chunks == (25, 2)
    assert leftovers(tmp_path) == []


def test_atomic_write_text_and_bytes_replace_whole_files(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    os.chmod(target, 0o600)
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # existing permissions kept
    assert leftovers(target.parent) == []


def test_atomic_write_leaves_old_file_if_writing_fails(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails inside the write
    assert target.read_text() == "old" and leftovers(tmp_path) == []
