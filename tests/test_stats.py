"""SuffStats: a mergeable value; the M step from merged chunk statistics equals the one-chunk M step."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.params import MixtureParams
from pipeline.core.stats import SuffStats, vector_length
from pipeline.families import get_family
from pipeline.kernels.cpu import chunk_stats

TYPES = ["full", "tied", "diag", "spherical"]


def _params(rng, k, d, ct):
    means = rng.normal(size=(k, d)) * 3
    a = rng.normal(size=(k, d, d)) * 0.3 + np.eye(d)
    full = np.einsum("kij,klj->kil", a, a)
    cov = {"full": full, "tied": full[0], "diag": np.einsum("kii->ki", full), "spherical": np.einsum("kii->k", full) / d}[ct]
    w = rng.dirichlet(np.ones(k))
    return MixtureParams(w, means, cov, get_family(ct).precision_cholesky(cov), ct)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 300), min_size=0, max_size=5),
    ct=st.sampled_from(TYPES),
    dtype=st.sampled_from(["float64", "float32"]),
)
def test_merge_of_chunk_statistics_equals_statistics_of_the_whole(seed, cuts, ct, dtype):
    rng = np.random.default_rng(seed)
    k, d = 3, 4
    p = _params(rng, k, d, ct)
    p.means += 1e3
    X = rng.normal(size=(300, d)) * 2 + 1e3
    plan = p.plan(dtype)
    whole = chunk_stats(X, plan, p.means, ct)
    bounds = [0, *sorted(cuts), 300]
    parts = [chunk_stats(X[a:b], plan, p.means, ct) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = SuffStats.zeros(p.means, ct)
    for part in parts:
        merged = merged.merge(part)
    rtol = 1e-10 if dtype == "float64" else 1e-5
    assert merged.n == whole.n == 300
    np.testing.assert_allclose(merged.to_vector(), whole.to_vector(), rtol=rtol, atol=rtol * 1e3)
    # (a + b) + c == a + (b + c) up to rounding, and the wire format round-trips
    v = merged.to_vector()
    assert v.shape == (vector_length(ct, k, d),)
    back = SuffStats.from_vector(v, p.means, ct)
    np.testing.assert_array_equal(back.to_vector(), v)
    pa, _ = merged.m_step(1e-6)
    pb, _ = whole.m_step(1e-6)
    np.testing.assert_allclose(pa.covariances, pb.covariances, rtol=100 * rtol, atol=100 * rtol * np.abs(pb.covariances).max())
    np.testing.assert_allclose(pa.means, pb.means, rtol=rtol)


def test_loglik_of_chunk_equals_direct_density():
    """sum log p(x) from the fused kernel equals a direct evaluation of the mixture density."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    p = _params(rng, 3, 2, "full")
    X = rng.normal(size=(50, 2)) * 3
    dens = sum(w * multivariate_normal(m, c).pdf(X) for w, m, c in zip(p.weights, p.means, p.covariances))
    st_ = chunk_stats(X, p.plan(), p.means, "full")
    np.testing.assert_allclose(st_.loglik, np.log(dens).sum(), rtol=1e-12)


def test_merge_refuses_statistics_centred_differently():
    a = SuffStats.zeros(np.zeros((2, 2)), "full")
    b = SuffStats.zeros(np.ones((2, 2)), "full")
    try:
        a.merge(b)
    except ValueError as exc:
        assert "centred differently" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("merge accepted different centres")


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_features_kernel_equals_centred_kernel(ct, dtype):
    rng = np.random.default_rng(3)
    p = _params(rng, 4, 5, ct)
    X = rng.normal(size=(2500, 5)) * 2
    fast = chunk_stats(X.astype(dtype), p.plan(dtype, kernel="features"), p.means, ct)
    slow = chunk_stats(X.astype(dtype), p.plan(dtype, kernel="centred"), p.means, ct)
    assert p.plan(dtype).kind == {"full": "outer", "tied": "outer", "diag": "diag", "spherical": "sphere"}[ct]
    rtol = 1e-11 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(fast.loglik, slow.loglik, rtol=rtol)
    np.testing.assert_allclose(fast.to_vector(), slow.to_vector(), rtol=rtol, atol=rtol * np.abs(slow.to_vector()).max())


def test_components_far_apart_switch_to_the_centred_kernel_and_stay_accurate():
    """Two unit-spread clusters 1e6 apart: the expanded (outer) form would cancel, so the plan
    promotes float32 and then takes the per-component centred kernel; covariances stay exact."""
    rng = np.random.default_rng(4)
    a = rng.normal(size=(2000, 2))
    b = rng.normal(size=(2000, 2)) + 1e6
    X = np.concatenate([a, b])
    cov = np.array([np.eye(2), np.eye(2)])
    p = MixtureParams(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [1e6, 1e6]]), cov, get_family("full").precision_cholesky(cov), "full")
    assert p.plan("float64").kind == "centred"
    assert p.plan("float32").kind == "centred" and p.plan("float32").dtype == "float64"
    new, _ = chunk_stats(X, p.plan(), p.means, "full").m_step(0.0)
    np.testing.assert_allclose(new.covariances[0], np.cov(a.T, bias=True), rtol=1e-9)
    np.testing.assert_allclose(new.covariances[1], np.cov(b.T, bias=True), rtol=1e-9)
    moderate = MixtureParams(p.weights, np.array([[0.0, 0.0], [20.0, 20.0]]), cov, p.precisions_cholesky, "full")
    assert moderate.plan("float32").kind == "outer" and moderate.plan("float32").dtype == "float32"


@pytest.mark.parametrize("ct", TYPES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_kernel_over_several_blocks_and_a_short_last_one(ct, dtype):
    """Blocks reuse buffers and a row of ones (for the bias and sum r): a chunk of two full
    blocks and a 37-row tail gives the statistics of the centred kernel."""
    from pipeline.core.plan import n_quadratic
    from pipeline.kernels.cpu import features_block_rows

    rng = np.random.default_rng(5)
    k, d = 4, 5
    p = _params(rng, k, d, ct)
    plan = p.plan(dtype, kernel="features")
    block = features_block_rows(n_quadratic(plan.kind, d) + d + 1, np.dtype(dtype).itemsize, k)
    X = (rng.normal(size=(2 * block + 37, d)) * 2).astype(dtype)
    fast = chunk_stats(X, plan, p.means, ct)
    slow = chunk_stats(X, p.plan(dtype, kernel="centred"), p.means, ct)
    assert fast.n == slow.n == X.shape[0]
    rtol = 1e-11 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(fast.s0.sum(), X.shape[0], rtol=rtol)
    np.testing.assert_allclose(fast.to_vector(), slow.to_vector(), rtol=rtol, atol=rtol * np.abs(slow.to_vector()).max())


@pytest.mark.parametrize("k", [1, 2, 3, 5, 16, 17])
@pytest.mark.parametrize("b", [1, 3, 64])
def test_responsibilities_match_logsumexp_for_any_k_and_block(k, b):
    """The pairwise column max and GEMV row sums give scipy's log-sum-exp and normalised
    responsibilities, also for blocks shorter than K; non-finite rows stay non-finite."""
    from scipy.special import logsumexp

    from pipeline.kernels.cpu import column_max, responsibilities

    rng = np.random.default_rng(k * 100 + b)
    wlp = rng.normal(size=(k, b)) * 200 - 300
    expect_lpx = logsumexp(wlp, axis=0)
    expect_r = np.exp(wlp - expect_lpx)
    out = np.empty(b)
    np.testing.assert_array_equal(column_max(wlp, np.empty((max(k // 2, 1), b)), out), wlp.max(axis=0))
    for clamp in (True, False):  # spreads of ~200 * 4 reach below EXP_FLOOR (-600)
        lpx, r = responsibilities(wlp.copy(), clamp=clamp)
        np.testing.assert_allclose(lpx, expect_lpx, rtol=1e-13)
        np.testing.assert_allclose(r, expect_r, rtol=1e-10, atol=1e-250)
    bad = wlp.copy()
    bad[:, 0] = -np.inf  # a row no component can explain
    if b > 1:
        bad[k // 2, -1] = np.nan  # a NaN in any component of a row
    lpx, r = responsibilities(bad)
    assert lpx[0] == -np.inf
    if b > 1:
        assert np.isnan(lpx[-1])
    if b > 2:
        np.testing.assert_allclose(lpx[1:-1], expect_lpx[1:-1], rtol=1e-13)
