"""The 14 mclust covariance models without R: every M step is the maximiser of Q, counts and
aliases, warm starts, precisions_init in mclust's (K, D, D) form, degenerate fits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import optimize

from pipeline import GaussianMixture
from pipeline.exceptions import CovarianceError
from pipeline.families import COVARIANCE_TYPES, MCLUST_MODELS, get_family
from tests.helpers import blobs

K, D = 3, 3


def _statistics(family, seed):
    """Soft responsibilities on 90 rows far from the origin; statistics centred at centres
    away from the means, in the family's statistic form; and the exact scatters W_k."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(size=(30, D)) @ rng.normal(size=(D, D)) + 5.0 * k for k in range(K)]) + 100.0
    r = rng.dirichlet(np.full(K, 0.7), size=len(X))
    centres = np.array([X[r.argmax(1) == k].mean(0) for k in range(K)]) + rng.normal(size=(K, D))
    s0 = r.sum(0)
    xc = X[None] - centres[:, None]  # (K, n, D)
    s1 = np.einsum("nk,knd->kd", r, xc)
    outer = np.einsum("nk,kni,knj->kij", r, xc, xc)
    s2 = {"outer": outer, "diagonal": np.einsum("kii->ki", outer), "trace": np.einsum("kii->k", outer)}[family.statistic]
    means = centres + s1 / s0[:, None]
    xm = X[None] - means[:, None]
    w = np.einsum("nk,kni,knj->kij", r, xm, xm)
    return s0, s1, s2, w


def _q(cov, s0, w):
    """-2 Q = sum_k N_k log|Sigma_k| + tr(Sigma_k^-1 W_k)."""
    sign, logdet = np.linalg.slogdet(cov)
    if np.any(sign <= 0):
        return np.inf
    return float(np.dot(s0, logdet) + np.einsum("kii->", np.linalg.solve(cov, w)))


def _unconstrained(name, k, d):
    """Sigma_k(theta) for model ``name``: log volumes, log shapes (|A| = 1), rotations by the
    Cayley transform of a skew-symmetric S (every rotation without the eigenvalue -1)."""
    vol, shape, orient = name
    n_vol = {"E": 1, "V": k}[vol]
    n_shape = {"I": 0, "E": d - 1, "V": k * (d - 1)}[shape]
    n_rot = {"I": 0, "E": d * (d - 1) // 2, "V": k * d * (d - 1) // 2}[orient]
    iu = np.triu_indices(d, 1)

    def covs(theta):
        lv, ls, lr = np.split(theta, [n_vol, n_vol + n_shape])
        lam = np.exp(np.broadcast_to(lv, (k,)))
        if shape == "I":
            a = np.ones((k, d))
        else:
            ls = np.broadcast_to(ls.reshape(-1, d - 1), (k, d - 1))
            a = np.exp(np.concatenate([ls, -ls.sum(1, keepdims=True)], axis=1))
        out = []
        for j in range(k):
            if orient == "I":
                rot = np.eye(d)
            else:
                s = np.zeros((d, d))
                s[iu] = lr.reshape(-1, len(iu[0]))[0 if orient == "E" else j]
                s = s - s.T
                rot = np.linalg.solve(np.eye(d) + s, np.eye(d) - s)
            out.append(lam[j] * rot @ np.diag(a[j]) @ rot.T)
        return np.array(out)

    return covs, n_vol + n_shape + n_rot


@pytest.mark.parametrize("name", MCLUST_MODELS)
def test_every_m_step_maximises_q(name):
    """No numerical optimisation over the model's unconstrained parametrisation (BFGS from
    six random starts) beats our M step by more than 1e-8 relative, on two statistics each."""
    family = get_family(name)
    covs, n_theta = _unconstrained(name, K, D)
    for seed in (0, 1):
        s0, s1, s2, w = _statistics(family, seed)
        ours = family.full_covariances(family.m_step(s0, s1, s2, 0.0), K, D)
        q_ours = _q(ours, s0, w)
        rng = np.random.default_rng(seed + 10)
        best = np.inf
        for _ in range(6):
            theta0 = rng.normal(scale=0.7, size=n_theta)
            theta0[: 1 if name[0] == "E" else K] += np.log(np.trace(w.sum(0)) / (s0.sum() * D))
            res = optimize.minimize(lambda t: _q(covs(t), s0, w), theta0, method="BFGS",
                                    options={"gtol": 1e-8, "maxiter": 3000})
            best = min(best, res.fun)
        assert best >= q_ours - 1e-8 * abs(q_ours), (name, seed, q_ours, best)
        assert best <= q_ours + 1e-3 * abs(q_ours), (name, seed, q_ours, best)  # the optimiser works


@pytest.mark.parametrize("name", [m for m in MCLUST_MODELS if get_family(m).iterative])
def test_iterative_m_step_warm_starts_from_the_previous_covariances(name):
    """One inner iteration from the solution stays at it (1e-6), one from a cold start does
    not get there (so ``previous`` is what makes the difference); unusable ``previous``
    (NaN, another shape) gives the cold result exactly."""
    family = get_family(name)
    s0, s1, s2, _ = _statistics(family, 3)
    solution = family.m_step(s0, s1, s2, 0.0)
    one_step = type(family)()
    one_step.inner_max_iter = 1
    scale = np.abs(solution).max()
    assert np.max(np.abs(one_step.m_step(s0, s1, s2, 0.0, previous=solution) - solution)) <= 1e-6 * scale
    assert np.max(np.abs(one_step.m_step(s0, s1, s2, 0.0) - solution)) >= 1e-5 * scale
    for bad in (np.full_like(solution, np.nan), solution[:1]):
        np.testing.assert_array_equal(family.m_step(s0, s1, s2, 0.0, previous=bad), solution)


@pytest.mark.parametrize("name", MCLUST_MODELS)
def test_reg_covar_above_zero_never_raises_on_a_singular_scatter(name):
    """A component whose scatter is singular (two identical rows, one direction) at a large
    scale, where N_k * reg_covar is lost to rounding: the M step is retried with more
    regularisation (the component reported as floored) instead of raising; at reg_covar=0
    the models that need its determinant or its variances raise."""
    from pipeline.core.stats import SuffStats
    from pipeline.core.updaters import MaximumLikelihood

    family = get_family(name)
    w1 = np.array([[1e6, 1e6], [1e6, 1e6]])  # rank one
    outer = np.stack([np.eye(2) * 50.0, w1])
    st = SuffStats.zeros(np.zeros((2, 2)), name)
    st.n, st.s0 = 100.0, np.array([50.0, 50.0])
    st.s2 = {"outer": outer, "diagonal": np.einsum("kii->ki", outer), "trace": np.einsum("kii->k", outer)}[family.statistic]
    params, floored = MaximumLikelihood(reg_covar=1e-300, scale=1.0).m_step(st)
    mats = family.full_covariances(params.covariances, 2, 2)
    assert np.all(np.isfinite(mats)) and np.all(np.linalg.eigvalsh(mats) > 0)
    if name == "EVV":  # |W_1| is 0: EVV cannot do without regularisation
        assert floored == [1]
        with pytest.raises(CovarianceError):
            MaximumLikelihood(reg_covar=0.0).m_step(st)


@pytest.mark.parametrize("name", ["EII", "VII", "EEI", "VVI", "EEE", "VVV"])
def test_reg_covar_is_scikit_learns_for_the_models_linear_in_the_scatter(name):
    family = get_family(name)
    s0, s1, s2, _ = _statistics(family, 4)
    base, reg = family.m_step(s0, s1, s2, 0.0), family.m_step(s0, s1, s2, 1e-3)
    eye = {3: np.eye(D)[None], 2: np.eye(D) if name == "EEE" else np.ones((1, D))}.get(base.ndim, 1.0)
    np.testing.assert_allclose(reg, base + 1e-3 * eye, rtol=1e-12, atol=1e-14)


def test_names_counts_and_aliases():
    assert COVARIANCE_TYPES[:4] == ("full", "tied", "diag", "spherical") and set(MCLUST_MODELS) <= set(COVARIANCE_TYPES)
    for alias, name in (("VVV", "full"), ("EEE", "tied"), ("VVI", "diag"), ("VII", "spherical")):
        assert get_family(alias) is get_family(name)
    # nVarParams for d = 3, G = 3 as printed by mclust 6.0.0 (mapply(nVarParams, models, d = 3, G = 3))
    expected = [1, 3, 3, 5, 7, 9, 6, 8, 10, 12, 12, 14, 16, 18]
    assert [get_family(m).n_covariance_parameters(3, 3) for m in MCLUST_MODELS] == expected
    assert get_family("VVV").n_parameters(3, 3) == 29  # nMclustParams("VVV", 3, 3)


@pytest.mark.parametrize("name", MCLUST_MODELS)
def test_every_model_fits_and_predicts(name):
    X, y = blobs(300, seed=4)
    g = GaussianMixture(3, covariance_type=name, random_state=0, chunk_rows=250).fit(X)
    assert g.converged_ and np.all(np.diff(g.history_) > -1e-9)
    assert g.covariances_.shape == get_family(name).covariance_shape(3, X.shape[1])
    assert np.all(np.isfinite(g.predict_proba(X)))
    assert g.icl(X) >= g.bic(X)  # the classification term is an entropy, >= 0


def test_precisions_init_as_full_matrices_for_every_mclust_name():
    X, _ = blobs(300, seed=5)
    ref = GaussianMixture(3, covariance_type="VVV", random_state=0).fit(X)
    for name in MCLUST_MODELS:
        family = get_family(name)
        start = family.m_step(*_stats_of(X, ref.predict_proba(X), family), 0.0)
        mats = family.full_covariances(start, 3, X.shape[1])
        g = GaussianMixture(3, covariance_type=name, weights_init=ref.weights_, means_init=ref.means_,
                            precisions_init=np.linalg.inv(mats), max_iter=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g.fit(X)
        np.testing.assert_allclose(family.full_covariances(g.covariances_, 3, X.shape[1]), mats, rtol=1e-9)
    full = np.linalg.inv(ref.covariances_)
    diagonal = np.stack([np.diag(np.diag(p)) for p in full])
    for name, precisions, match in (("EEI", full, "diagonal"), ("VVI", full, "diagonal"),
                                    ("EII", diagonal, "multiples of the identity"), ("EEE", full, "shared")):
        with pytest.raises(ValueError, match=match):
            GaussianMixture(3, covariance_type=name, means_init=ref.means_, precisions_init=precisions).fit(X)


def _stats_of(X, r, family):
    c = np.zeros((r.shape[1], X.shape[1]))
    outer = np.einsum("nk,ni,nj->kij", r, X, X)
    s2 = {"outer": outer, "diagonal": np.einsum("kii->ki", outer), "trace": np.einsum("kii->k", outer)}[family.statistic]
    return r.sum(0), r.T @ X - c, s2


@pytest.mark.parametrize("name", MCLUST_MODELS)
def test_a_collapsing_component_without_regularisation_is_an_error(name):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(200, 2)), np.tile([[9.0, 9.0]], (40, 1))])
    g = GaussianMixture(2, covariance_type=name, reg_covar=0.0, means_init=[[0.0, 0.0], [9.0, 9.0]])
    fam = get_family(name)
    if name in ("EII", "EEI", "EEE", "EEV"):  # equal volumes (and shapes): no component of its own collapses
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g.fit(X)
        assert np.all(np.isfinite(g.covariances_))
    else:
        with pytest.raises(CovarianceError, match="increase reg_covar"):
            g.fit(X)
    with warnings.catch_warnings():  # with regularisation every model fits, finite
        warnings.simplefilter("ignore")
        g.set_params(reg_covar=1e-6).fit(X)
    assert np.all(np.isfinite(fam.full_covariances(g.covariances_, 2, 2)))
