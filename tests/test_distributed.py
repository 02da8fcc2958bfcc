"""The fit on a real `distributed` cluster: scheduler and worker processes over TCP on 127.0.0.1."""

import os

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from pipeline import GaussianMixture
from tests.helpers import blobs


def _transitions(dask_worker):
    return dask_worker.state.transition_counter


@pytest.fixture(scope="module")
def client():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, memory_limit="1GiB",
    ) as cluster, Client(cluster) as c:
        yield c


def test_workers_are_separate_processes_on_loopback(client):
    info = client.scheduler_info()
    assert info["address"].startswith("tcp://127.0.0.1:")
    pids = client.run(os.getpid)
    assert len(pids) == 2 and os.getpid() not in pids.values()
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in pids)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_distributed_fit_equals_threaded_fit(client, covariance_type):
    X, _ = blobs(2000, seed=21)
    Xd = da.from_array(X, chunks=(700, 3))
    kw = dict(n_components=3, covariance_type=covariance_type, random_state=0, tol=1e-9, max_iter=40)
    before = sum(client.run(_transitions).values())
    dist = GaussianMixture(**kw).fit(Xd)  # the active Client is the scheduler
    middle = sum(client.run(_transitions).values())
    with dask.config.set(scheduler="threads"):
        local = GaussianMixture(**kw).fit(Xd)
    assert middle - before > 100  # the workers did the distributed fit ...
    after = sum(client.run(_transitions).values())  # (late releases of earlier keys still count)
    assert after - middle < (middle - before) / 10  # ... and not the threaded one
    np.testing.assert_allclose(dist.history_, local.history_, rtol=1e-12)
    np.testing.assert_allclose(dist.means_, local.means_, rtol=1e-12)
    labels = dist.predict(Xd)
    np.testing.assert_array_equal(labels.compute(), local.predict(X))


def test_distributed_fit_of_numpy_input_keeps_it_on_the_workers(client):
    X, _ = blobs(1000, seed=22)
    g = GaussianMixture(3, random_state=0, chunk_rows=600).fit(X)
    assert g.data_cached_  # persisted on the workers once, not shipped with every iteration's graph
    assert g.converged_
    np.testing.assert_allclose(g.score(X), GaussianMixture(**g.get_params()).fit(X).score(X), rtol=1e-12)


def _rows_and_sum(block):
    return np.concatenate([[block.shape[0]], np.asarray(block).sum(axis=0)])


def test_reductions_over_chunks_held_by_the_workers(client):
    """The hand-built per-chunk graph refers to chunks by explicit key references: persisted
    chunks, slices of them and an optimised persisted array (whose graph no longer lists its
    keys; a tuple-form task received the key itself as a tuple there) all give the same sums."""
    from pipeline.engine.graph import per_block, reduce_blocks

    X = np.arange(600, dtype=np.float64).reshape(200, 3)
    Xp = da.from_array(X, chunks=(25, -1)).persist()
    (Xo,) = dask.optimize(Xp)
    for A, rows in ((Xp, X), (Xp[40:170], X[40:170]), (Xo, X)):
        total = reduce_blocks(A, _rows_and_sum, 4)
        np.testing.assert_allclose(total, np.concatenate([[rows.shape[0]], rows.sum(axis=0)]))
    np.testing.assert_array_equal(per_block(Xo, _rows_and_sum, 4)[:, 0], [25] * 8)


def test_weighted_fit_on_worker_processes_equals_the_threaded_one(client):
    X, _ = blobs(1500, seed=23)
    w = np.random.default_rng(3).uniform(0.0, 3.0, size=len(X))
    Xd, wd = da.from_array(X, chunks=(600, 3)), da.from_array(w, chunks=400)  # weights rechunked
    kw = dict(n_components=3, random_state=0, tol=1e-9, max_iter=40)
    before = sum(client.run(_transitions).values())
    dist = GaussianMixture(**kw).fit(Xd, sample_weight=wd)
    assert sum(client.run(_transitions).values()) - before > 100  # the workers did it
    with dask.config.set(scheduler="threads"):
        local = GaussianMixture(**kw).fit(Xd, sample_weight=w)
    np.testing.assert_allclose(dist.history_, local.history_, rtol=1e-12)
    np.testing.assert_allclose(dist.means_, local.means_, rtol=1e-12)
    assert dist.score(Xd, sample_weight=wd) == pytest.approx(local.score(X, sample_weight=w), rel=1e-12)


def test_marginalize_on_worker_processes_equals_the_threaded_one(client):
    X, _ = blobs(1500, seed=24)
    X = X.copy()
    X[np.random.default_rng(5).random(X.shape) < 0.15] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    Xd = da.from_array(X, chunks=(700, 3))
    kw = dict(n_components=3, random_state=0, tol=1e-9, max_iter=40, nan_policy="marginalize")
    before = sum(client.run(_transitions).values())
    dist = GaussianMixture(**kw).fit(Xd)
    assert sum(client.run(_transitions).values()) - before > 100  # the workers did it
    with dask.config.set(scheduler="threads"):
        local = GaussianMixture(**kw).fit(Xd)
    assert dist.n_incomplete_rows_ == local.n_incomplete_rows_ > 500
    np.testing.assert_allclose(dist.history_, local.history_, rtol=1e-12)
    np.testing.assert_allclose(dist.means_, local.means_, rtol=1e-12)
    np.testing.assert_array_equal(dist.predict(Xd).compute(), local.predict(X))
