"""Object storage for real: a local S3 server (moto's server mode on 127.0.0.1, started here as its
own process), data read from it, outputs published on it by a manifest, resumption, and the test
credentials nowhere in any output or log.

moto rather than MinIO: it installs from PyPI with the test extras (no binary to download), and
speaks the S3 API that s3fs uses (ListObjectsV2, multipart uploads, HEAD)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import kill_run_at
from tests.test_cli import CLI, small_config

s3fs = pytest.importorskip("s3fs")

#: the test credentials: they must appear in no output, report, log or checkpoint
KEY_ID = "AKIAGMMTESTKEYID0042"
SECRET = "gmm-test-secret-5f1d2c9e0b7a4c31"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 and the environment that reaches it (the test credentials
    only in the environment, as users give them); yields the endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def bucket(s3_server, request):
    """A new, empty bucket for one test: (s3fs file system, bucket name)."""
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    name = "gmm-" + request.node.name.replace("_", "-")[:40].strip("-").lower()
    fs.mkdir(name)
    yield fs, name
    fs.rm(name, recursive=True)


def _store_config(tmp_path, endpoint, bucket_name, name, **model):
    """small_config with the data and the outputs on the store (the data uploaded there)."""
    config, cfg = small_config(tmp_path)
    cfg["data"]["path"] = f"s3://{bucket_name}/data.zarr"
    cfg["data"]["generate"] = None
    cfg["data"]["storage_options"] = {"endpoint": endpoint}
    cfg["output"]["dir"] = f"s3://{bucket_name}/runs/{name}"
    cfg["model"].update(model)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def _local_data(tmp_path):
    """The small demo data, generated on local disk (small_config's data.generate)."""
    from pipeline.data.synthetic import generate_mixture

    _, cfg = small_config(tmp_path)
    generate_mixture(cfg["data"]["path"], **cfg["data"]["generate"])
    return Path(cfg["data"]["path"])


def _everything_text(fs, bucket_name, *texts) -> bytes:
    """Every object in the bucket and the given texts, as one bytes string to search."""
    blobs = [fs.cat_file(k) for k in fs.find(bucket_name)]
    return b"\n".join(blobs + [t.encode() for t in texts])


def test_a_run_on_the_store_equals_the_local_run_and_leaks_no_credentials(tmp_path, bucket):
    import zarr

    from pipeline import GaussianMixture

    fs, name = bucket
    endpoint = fs.endpoint_url
    _local_data(tmp_path)
    g = small_config(tmp_path)[1]["data"]["generate"]
    gen_args = [f"--{k.replace('_', '-')}={v}" for k, v in g.items()]
    made = subprocess.run([*CLI, "generate", *gen_args, "--out", f"s3://{name}/data.zarr",
                           "--storage-option", f"endpoint={endpoint}"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr  # the same seed: the same data as on local disk
    local_cfg, local = small_config(tmp_path, data={"generate": None}, output={"dir": str(tmp_path / "local-run")})
    r = subprocess.run([*CLI, "run", local_cfg], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr

    cfg_path, cfg = _store_config(tmp_path, endpoint, name, "a")
    s = subprocess.run([*CLI, "run", cfg_path], capture_output=True, text=True, timeout=600)
    assert s.returncode == 0, s.stderr
    out = cfg["output"]["dir"]
    manifest = json.loads(fs.cat_file(f"{name}/runs/a/_gmm_manifest.json"))
    gen = manifest["generation"]
    assert {"model.npz", "report.json", "report.md"} <= set(manifest["files"])
    assert not any(k.startswith(("checkpoint", "progress")) for k in manifest["files"])
    assert not fs.exists(f"{name}/runs/a/_gmm_staging.json")
    assert f"generation {gen}" in s.stdout

    # the same model, labels, responsibilities and report figures as on local disk
    so = {"endpoint_url": endpoint}
    a = GaussianMixture.load(f"{out}/{gen}/model.npz", storage_options=so)
    b = GaussianMixture.load(tmp_path / "local-run" / "model.npz")
    for attr in ("weights_", "means_", "covariances_", "history_"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    for arr in ("labels.zarr", "responsibilities.zarr"):
        remote = zarr.open_array(f"{out}/{gen}/{arr}", mode="r", storage_options=so)[:]
        np.testing.assert_array_equal(remote, zarr.open_array(tmp_path / "local-run" / arr, mode="r")[:])
    ra = json.loads(fs.cat_file(f"{name}/runs/a/{gen}/report.json"))
    rb = json.loads((tmp_path / "local-run" / "report.json").read_text())
    for key in ("loglik", "bic", "icl", "n_iter"):
        assert [c[key] for c in ra["candidates"]] == [c[key] for c in rb["candidates"]]
    assert ra["selected"]["name"] == rb["selected"]["name"]

    # readers: info and predict read the published generation through the manifest
    opt = ["--storage-option", f"endpoint={endpoint}"]
    info = subprocess.run([*CLI, "info", out, *opt], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "finished run" in info.stdout, info.stderr
    pred = subprocess.run([*CLI, "predict", out, cfg["data"]["path"], f"s3://{name}/pred.zarr", *opt],
                          capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stderr
    np.testing.assert_array_equal(zarr.open_group(f"s3://{name}/pred.zarr", mode="r", storage_options=so)["labels"][:],
                                  zarr.open_array(tmp_path / "local-run" / "labels.zarr", mode="r")[:])

    # the no-overwrite rule holds on the store: one line, nothing touched
    before = {k: fs.info(k)["ETag"] for k in fs.find(f"{name}/runs/a")}
    again = subprocess.run([*CLI, "run", cfg_path], capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "already holds an earlier run's results" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    fs.invalidate_cache()
    assert {k: fs.info(k)["ETag"] for k in fs.find(f"{name}/runs/a")} == before

    # with overwrite: a new generation is published, the old one removed
    over = subprocess.run([*CLI, "run", cfg_path, "--set", "output.overwrite=true"], capture_output=True, text=True,
                          timeout=600)
    assert over.returncode == 0, over.stderr
    fs.invalidate_cache()
    new_gen = json.loads(fs.cat_file(f"{name}/runs/a/_gmm_manifest.json"))["generation"]
    assert new_gen != gen and not fs.exists(f"{name}/runs/a/{gen}")

    # the credentials: in the environment only, never in an object, a log or an output
    text = _everything_text(fs, name, s.stdout, s.stderr, info.stdout, pred.stdout, over.stdout, over.stderr)
    assert KEY_ID.encode() not in text and SECRET.encode() not in text


def _manifest_and_staging(fs, name, run):
    fs.invalidate_cache()
    have = set(fs.ls(f"{name}/runs/{run}", detail=False)) if fs.exists(f"{name}/runs/{run}") else set()
    return f"{name}/runs/{run}/_gmm_manifest.json" in have, f"{name}/runs/{run}/_gmm_staging.json" in have


def test_a_run_killed_on_the_store_is_never_a_result_and_resumes_to_the_same_model(tmp_path, bucket):
    from pipeline import GaussianMixture

    fs, name = bucket
    endpoint = fs.endpoint_url
    fs.put(str(_local_data(tmp_path)), f"{name}/data.zarr", recursive=True)
    slow = dict(n_components=4, tol=0.0, max_iter=25, init_params="random_from_data")
    ref_path, ref = _store_config(tmp_path, endpoint, name, "reference", **slow)
    r = subprocess.run([*CLI, "run", ref_path], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr

    cfg_path, cfg = _store_config(tmp_path, endpoint, name, "killed", **slow)
    seen = kill_run_at([*CLI, "run", cfg_path], "iter    6")  # the driver and its local cluster, at once
    assert _manifest_and_staging(fs, name, "killed") == (False, True)  # written, not published
    opt = ["--storage-option", f"endpoint={endpoint}"]
    info = subprocess.run([*CLI, "info", cfg["output"]["dir"], *opt], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "running (or interrupted) run" in info.stdout and "iteration 6" in info.stdout
    pred = subprocess.run([*CLI, "predict", cfg["output"]["dir"], cfg["data"]["path"], tmp_path / "p.zarr", *opt],
                          capture_output=True, text=True, timeout=120)
    assert pred.returncode == 1 and "holds no published run" in pred.stderr  # not mistaken for a result
    again = subprocess.run([*CLI, "run", cfg_path], capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--resume" in again.stderr
    resumed = subprocess.run([*CLI, "run", cfg_path, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint" in resumed.stdout and "iter    1 " not in resumed.stdout.split("resuming")[1]
    assert _manifest_and_staging(fs, name, "killed") == (True, False)
    so = {"endpoint_url": endpoint}

    def model(run):
        gen = json.loads(fs.cat_file(f"{name}/runs/{run}/_gmm_manifest.json"))["generation"]
        return GaussianMixture.load(f"s3://{name}/runs/{run}/{gen}/model.npz", storage_options=so)

    a, b = model("killed"), model("reference")
    assert a.n_iter_ == b.n_iter_ == 25
    np.testing.assert_array_equal(a.history_, b.history_)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-10, atol=1e-12)
    text = _everything_text(fs, name, *seen, resumed.stdout, resumed.stderr)
    assert KEY_ID.encode() not in text and SECRET.encode() not in text


def test_the_manifest_publishes_checks_and_replaces_generations(bucket):
    from pipeline.exceptions import DataError
    from pipeline.storage.stores import StoreOutput, StorePath

    fs, name = bucket
    out = StorePath(f"s3://{name}/out", fs=fs)
    store = StoreOutput(out)
    assert store.manifest() is None and store.staging() is None
    first = store.new_staging()
    (first / "a.bin").write_bytes(b"12345")
    (first / "sub" / "b.json").write_text("{}")
    (first / "checkpoint.npz").write_bytes(b"state")
    assert store.staging() == first and store.published() is None  # written, not published
    store.publish(first, leave_out=("checkpoint.npz",))
    assert store.manifest()["files"] == {"a.bin": 5, "sub/b.json": 2}
    assert store.verified() == first and store.staging() is None and not (first / "checkpoint.npz").exists()
    second = store.new_staging()
    (second / "a.bin").write_bytes(b"678")
    assert store.verified() == first  # the published run is untouched while the next is written
    store.publish(second)
    assert store.verified() == second and not first.exists()
    (second / "a.bin").write_bytes(b"6789")  # changed behind the manifest's back
    with pytest.raises(DataError, match=r"a.bin has 4 bytes, the manifest says 3"):
        store.verified()
    (second / "a.bin").unlink()
    with pytest.raises(DataError, match=r"a.bin is missing"):
        store.verified()


def test_data_written_to_the_store_is_invisible_until_complete_and_removed_on_failure(bucket, monkeypatch):
    import zarr

    import pipeline.data.synthetic as synthetic

    fs, name = bucket
    url = f"s3://{name}/partial.zarr"
    so = {"endpoint_url": fs.endpoint_url}
    real = synthetic._mixture_chunk
    seen = []

    def chunk(params, n, rng, dtype):
        if len(seen) == 2:  # two chunks written: the store must not open as Zarr yet
            with pytest.raises(FileNotFoundError):
                zarr.open(url, mode="r", storage_options=so)
            seen.append("hidden")
            raise OSError("the disk of the test is full")
        seen.append(n)
        return real(params, n, rng, dtype)

    monkeypatch.setattr(synthetic, "_mixture_chunk", chunk)
    with pytest.raises(OSError, match="the disk of the test is full"):
        synthetic.generate_mixture(url, n_samples=400, n_features=2, n_components=2, chunk_rows=100, storage_options=so)
    assert seen == [100, 100, "hidden"]
    fs.invalidate_cache()
    assert not fs.find(f"{name}/partial.zarr")  # nothing half-written is left
    monkeypatch.setattr(synthetic, "_mixture_chunk", real)
    info = synthetic.generate_mixture(url, n_samples=400, n_features=2, n_components=2, chunk_rows=100,
                                      storage_options=so)
    local = synthetic._mixture_chunk(info, 100, np.random.default_rng([info["seed"], 0]), np.dtype("float32"))[0]
    np.testing.assert_array_equal(zarr.open_group(url, mode="r", storage_options=so)["X"][:100], local)


def test_convert_writes_parquet_to_the_store_and_a_failed_conversion_leaves_nothing(tmp_path, bucket):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import zarr

    from pipeline.data.zarr_io import open_dataset

    fs, name = bucket
    rng = np.random.default_rng(3)
    X, w = rng.normal(size=(2500, 3)), rng.uniform(0.5, 2, size=2500)
    table = pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "w": w})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=700)
    opt = ["--storage-option", f"endpoint={fs.endpoint_url}"]
    r = subprocess.run([*CLI, "convert", tmp_path / "t.parquet", f"s3://{name}/t.zarr", "--weights", "w",
                        "--chunk-rows", "1000", *opt], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    so = {"endpoint_url": fs.endpoint_url}
    np.testing.assert_array_equal(open_dataset(f"s3://{name}/t.zarr", storage_options=so).compute(), X)
    np.testing.assert_array_equal(zarr.open_group(f"s3://{name}/t.zarr", mode="r", storage_options=so)["w"][:], w)
    # input on the store too: Parquet, and CSV with a header, read through fsspec's file objects
    fs.put(str(tmp_path / "t.parquet"), f"{name}/in/t.parquet")
    np.savetxt(tmp_path / "t.csv", np.column_stack([X, w]), delimiter=",", header="a,b,c,w", comments="")
    fs.put(str(tmp_path / "t.csv"), f"{name}/in/t.csv")
    for src in ("t.parquet", "t.csv"):
        r = subprocess.run([*CLI, "convert", f"s3://{name}/in/{src}", tmp_path / f"{src}.zarr", "--columns", "c,a",
                            *opt], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(open_dataset(tmp_path / f"{src}.zarr").compute(), X[:, [2, 0]])

    w_bad = pa.array(np.where(np.arange(2500) == 2100, np.nan, w), mask=np.arange(2500) == 2100)
    pq.write_table(table.set_column(3, "w", w_bad), tmp_path / "bad.parquet", row_group_size=700)
    bad = subprocess.run([*CLI, "convert", tmp_path / "bad.parquet", f"s3://{name}/bad.zarr", "--weights", "w",
                          "--chunk-rows", "1000", *opt], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "row group 3" in bad.stderr and "null weight" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    fs.invalidate_cache()
    assert not fs.find(f"{name}/bad.zarr")  # the chunks written before the failure were removed


def test_storage_options_refuse_credentials_and_unknown_keys(tmp_path):
    from pipeline.batch.config import config_from_dict
    from pipeline.exceptions import ConfigError
    from pipeline.storage.stores import fsspec_options

    _, cfg = small_config(tmp_path)
    for options, match in (({"secret": "x"}, "credentials are never read from a config"),
                           ({"aws_access_key_id": "x"}, "credentials are never read from a config"),
                           ({"endpont": "http://x"}, "unknown key 'endpont'; accepted: endpoint"),
                           ({"anonymous": "yes"}, "anonymous: expected true or false")):
        with pytest.raises(ConfigError, match=match):
            config_from_dict({**cfg, "data": {**cfg["data"], "storage_options": options}})
    ok = config_from_dict({**cfg, "data": {**cfg["data"], "storage_options": {"endpoint": "http://127.0.0.1:9",
                                                                             "region": "eu-west-1",
                                                                             "anonymous": True}}})
    assert fsspec_options(ok.data.storage_options) == {
        "endpoint_url": "http://127.0.0.1:9", "client_kwargs": {"region_name": "eu-west-1"}, "anon": True}
