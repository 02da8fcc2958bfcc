"""What the engine offers the next estimators: several aligned arrays in one pass, statistics
that re-centre, scale and merge across iterations, and the M step behind an updater."""

import dask.array as da
import numpy as np
import pytest

from pipeline.core.params import MixtureParams
from pipeline.core.stats import SuffStats
from pipeline.core.updaters import MaximumLikelihood
from pipeline.engine.em import run_em
from pipeline.engine.graph import per_block, reduce_blocks
from pipeline.families import get_family
from pipeline.kernels.cpu import chunk_stats
from tests.helpers import blobs

TYPES = ["full", "tied", "diag", "spherical"]


def _weighted_sums(block, weights, scale):
    return scale * np.concatenate([[weights.sum()], weights @ np.asarray(block, dtype=np.float64)])


def test_reduce_over_aligned_arrays_passes_matching_blocks():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(1000, 3)), rng.uniform(size=1000)
    X, W = da.from_array(x, chunks=(170, 3)), da.from_array(w, chunks=170)
    out = reduce_blocks((X, W), _weighted_sums, 4, 2.0)
    np.testing.assert_allclose(out, 2.0 * np.concatenate([[w.sum()], w @ x]), rtol=1e-12)
    rows = per_block((X, W), _weighted_sums, 4, 1.0)
    assert rows.shape == (6, 4)
    np.testing.assert_allclose(rows[:, 0], [w[i:i + 170].sum() for i in range(0, 1000, 170)], rtol=1e-12)


def test_misaligned_arrays_are_refused_with_their_chunks():
    X = da.zeros((100, 2), chunks=(50, 2))
    with pytest.raises(ValueError, match="not aligned"):
        reduce_blocks((X, da.zeros(100, chunks=30)), _weighted_sums, 3, 1.0)


def _params(rng, ct, k=3, d=4):
    fam = get_family(ct)
    a = rng.normal(size=(k, d, d)) * 0.3 + np.eye(d)
    full = np.einsum("kij,klj->kil", a, a)
    cov = {"full": full, "tied": full[0], "diag": np.einsum("kii->ki", full), "spherical": np.einsum("kii->k", full) / d}[ct]
    return MixtureParams(rng.dirichlet(np.ones(k)), rng.normal(size=(k, d)) * 3, cov, fam.precision_cholesky(cov), ct)


@pytest.mark.parametrize("ct", TYPES)
def test_recentred_statistics_equal_statistics_computed_at_the_new_centres(ct):
    rng = np.random.default_rng(1)
    p = _params(rng, ct)
    p.means = p.means / 3 + 50.0  # every component has rows (no empty one: N_k is floored)
    x = rng.normal(size=(800, 4)) * 2 + 50.0
    plan = p.plan()
    at_means = chunk_stats(x, plan, p.means, ct)
    elsewhere = p.means + rng.normal(size=p.means.shape) * 5
    direct = chunk_stats(x, plan, elsewhere, ct)
    moved = at_means.recentred(elsewhere)
    np.testing.assert_allclose(moved.to_vector(), direct.to_vector(), rtol=1e-10, atol=1e-8)
    # merging statistics centred differently: refused by default, exact with recentre=True
    with pytest.raises(ValueError, match="centred differently"):
        direct.merge(at_means)
    both = direct.merge(at_means, recentre=True)
    np.testing.assert_allclose(both.to_vector(), direct.scaled(2.0).to_vector(), rtol=1e-10, atol=1e-8)
    # scaling all sums leaves the M step unchanged
    a, _ = at_means.m_step(1e-6)
    b, _ = at_means.scaled(3.5).m_step(1e-6)
    np.testing.assert_allclose(b.covariances, a.covariances, rtol=1e-9)
    np.testing.assert_allclose(b.means, a.means, rtol=1e-9)


def test_merge_refuses_other_families():
    with pytest.raises(ValueError, match="different covariance families"):
        SuffStats.zeros(np.zeros((2, 2)), "full").merge(SuffStats.zeros(np.zeros((2, 2)), "diag"))


class _Damped(MaximumLikelihood):
    """A different updater (half-step on the means) to show the loop does not hard-code the
    maximum-likelihood M step."""

    def m_step(self, stats, previous=None):
        new, floored = super().m_step(stats, previous)
        new.means = 0.5 * (new.means + stats.centres)
        return new, floored


def test_the_em_loop_uses_the_updater_it_is_given():
    X, _ = blobs(300, seed=3)
    Xd = da.from_array(X, chunks=(400, 3))
    p0 = _params(np.random.default_rng(2), "full", k=3, d=3)
    p0.means = X[[0, 300, 600]].copy()
    ml = run_em(Xd, p0, tol=0.0, max_iter=3, reg_covar=1e-6)
    same = run_em(Xd, p0, tol=0.0, max_iter=3, updater=MaximumLikelihood(1e-6))
    damped = run_em(Xd, p0, tol=0.0, max_iter=3, updater=_Damped(1e-6))
    assert same.history == ml.history
    assert damped.history[0] == ml.history[0]  # same start, same first E step
    assert damped.history[1] != ml.history[1]
    # one damped step from p0 by hand
    st = chunk_stats(X, p0.plan(), p0.means, "full")
    np.testing.assert_allclose(_Damped(1e-6).m_step(st)[0].means, 0.5 * (st.m_step(1e-6)[0].means + p0.means))
