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
