"""Larger than memory: data 4x the workers' total memory_limit is streamed from Zarr every pass;
worker memory stays under its limit and nothing spills to disk."""

import numpy as np
import pytest

from pipeline import GaussianMixture
from pipeline.data.synthetic import generate_mixture
from pipeline.data.zarr_io import open_dataset

LIMIT = 200 * 2**20  # per worker
N_WORKERS = 2
D = 8


def _peak_rss(dask_worker):
    """High-water mark of the worker's resident memory (VmHWM: this process image only;
    getrusage's ru_maxrss would also count the parent's memory before exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def _spilled(dask_worker):
    d = dask_worker.data
    return int(d.spilled_total.disk), len(getattr(d, "slow", {}) or {})


@pytest.mark.slow
def test_fit_of_data_4x_the_worker_memory_streams_with_bounded_memory(tmp_path):
    from distributed import Client, LocalCluster

    n = -(-4 * N_WORKERS * LIMIT // (D * 4))  # float32 rows: 4x the total worker memory
    path = tmp_path / "big.zarr"
    truth = generate_mixture(path, n_samples=n, n_features=D, n_components=3, seed=1, chunk_rows=262144,
                             dtype="float32", separation=6.0)
    X = open_dataset(path)
    assert X.nbytes >= 4 * N_WORKERS * LIMIT
    with LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=LIMIT) as cluster, Client(cluster) as client:
        pids = client.run(lambda: __import__("os").getpid())
        g = GaussianMixture(3, covariance_type="diag", dtype="float32", max_iter=3, tol=0,
                            means_init=truth["means"] + 0.3, random_state=0)
        with pytest.warns(Warning):  # max_iter reached on purpose
            g.fit(X)
        assert g.data_cached_ is False  # chosen automatically: streamed, never persisted
        peaks = client.run(_peak_rss)
        spilled = client.run(_spilled)
        assert client.run(lambda: __import__("os").getpid()) == pids  # no worker was restarted
    assert all(p < LIMIT for p in peaks.values()), {k: v / 2**20 for k, v in peaks.items()}
    assert all(s == (0, 0) for s in spilled.values()), spilled
    order = np.argsort(truth["weights"])
    np.testing.assert_allclose(np.sort(g.weights_), truth["weights"][order], atol=0.01)


def test_data_that_fits_is_persisted_once():
    import dask.array as da

    X = da.random.default_rng(0).normal(size=(2000, 2), chunks=(500, 2))
    g = GaussianMixture(2, random_state=0, max_iter=5).fit(X)
    assert g.data_cached_ is True
    assert GaussianMixture(2, random_state=0, max_iter=5, cache="none").fit(X).data_cached_ is False
