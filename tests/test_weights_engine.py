"""Sample weights in the engine (the first layer of the weights issue): the chunk kernels and
the EM pass take per-row weights aligned with the data's row chunks.  Integer weights equal
repeated rows, a constant factor changes nothing, chunking changes nothing, zero drops a row.
(``GaussianMixture.fit(sample_weight=...)``, weighted initialisation and scores come next.)"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from pipeline.core.params import MixtureParams
from pipeline.engine.em import run_em
from pipeline.families import get_family
from pipeline.kernels.cpu import chunk_stats
from tests.helpers import blobs

MODELS = ["full", "tied", "diag", "spherical", "EII", "VEI", "EVE", "VEV", "EVV"]


def _start(X, name, k=3, seed=0):
    """A start every model can take: distinct rows as means, the data's covariance."""
    rng = np.random.default_rng(seed)
    family = get_family(name)
    d = X.shape[1]
    cov = np.cov(X, rowvar=False)
    mats = np.repeat(cov[None], k, axis=0)
    stored = {"ellipsoidal": mats, "diagonal": np.repeat(np.diag(cov)[None], k, axis=0),
              "scalar": np.full(k, np.trace(cov) / d)}[family.structure]
    if family.structure == "ellipsoidal" and len(family.covariance_shape(k, d)) == 2:  # tied: one matrix
        stored = cov
    means = X[rng.choice(len(X), size=k, replace=False)]
    return MixtureParams(np.full(k, 1.0 / k), means, stored, family.precision_cholesky(stored), family.name)


def _em(X, start, name, weights=None, chunks=250, iters=6):
    Xd = da.from_array(X, chunks=(chunks, X.shape[1]))
    wd = None if weights is None else da.from_array(weights, chunks=(Xd.chunks[0],))
    with dask.config.set(scheduler="synchronous"):
        return run_em(Xd, start, tol=0.0, max_iter=iters, reg_covar=1e-6, weights=wd)


def _close(a, b, tol=1e-10):
    np.testing.assert_allclose(a.history, b.history, rtol=tol, atol=0)
    for attr in ("weights", "means", "covariances"):
        np.testing.assert_allclose(getattr(a.params, attr), getattr(b.params, attr), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", MODELS)
def test_integer_weights_equal_repeated_rows(name):
    X, _ = blobs(200, seed=7)
    w = np.random.default_rng(1).integers(1, 4, size=len(X))
    start = _start(X, name)
    _close(_em(X, start, name, weights=w.astype(float)), _em(np.repeat(X, w, axis=0), start, name))


@pytest.mark.parametrize("name", ["full", "diag", "VEV"])
def test_scaled_weights_and_other_chunks_change_nothing_and_zero_drops_a_row(name):
    X, _ = blobs(200, seed=8)
    w = np.random.default_rng(2).uniform(0.2, 3.0, size=len(X))
    start = _start(X, name)
    ref = _em(X, start, name, weights=w)
    _close(_em(X, start, name, weights=w * 7.5), ref)
    _close(_em(X, start, name, weights=w, chunks=97), ref)
    # a row of weight 0 (far away, so it would move a mean if counted) drops out
    X0, w0 = np.vstack([X, [[500.0, -500.0, 500.0]]]), np.append(w, 0.0)
    _close(_em(X0, start, name, weights=w0), ref)


@pytest.mark.parametrize("name", ["full", "diag", "spherical"])
def test_the_centred_kernel_weighs_as_the_fast_one(name):
    X, _ = blobs(150, seed=9)
    w = np.random.default_rng(3).uniform(0.0, 2.0, size=len(X))
    p = _start(X, name)
    fast = chunk_stats(X, p.plan(kernel="features"), p.means, p.covariance_type, weights=w)
    centred = chunk_stats(X, p.plan(kernel="centred"), p.means, p.covariance_type, weights=w)
    repeated = chunk_stats(np.repeat(X, 2, axis=0), p.plan(), p.means, p.covariance_type,
                           weights=np.repeat(w, 2) / 2)
    for other in (centred, repeated):
        np.testing.assert_allclose(other.to_vector(), fast.to_vector(), rtol=1e-10, atol=1e-9)
    assert fast.n == pytest.approx(w.sum(), rel=1e-14)
