"""``GaussianMixture.fit(X, sample_weight=w)``: weights in EM, the initialisation, the
criteria and scores; their errors."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest

from pipeline import GaussianMixture
from pipeline.exceptions import DataError
from pipeline.families import MCLUST_MODELS, get_family
from tests.helpers import blobs


def _start(X, name, k=3, seed=0):
    """weights_init/means_init/precisions_init every model takes (mclust names: full matrices)."""
    rng = np.random.default_rng(seed)
    family = get_family(name)
    cov = np.cov(X, rowvar=False)
    prec = np.linalg.inv(cov)
    mats = np.repeat(prec[None], k, axis=0)
    if family.structure != "ellipsoidal":
        mats = np.repeat(np.diag(np.diag(prec))[None], k, axis=0)
    if family.structure == "scalar":
        mats = np.repeat(np.eye(X.shape[1])[None] * np.mean(np.diag(prec)), k, axis=0)
    return {"weights_init": np.full(k, 1.0 / k), "means_init": X[rng.choice(len(X), k, replace=False)],
            "precisions_init": mats}


def _fit(X, name, w=None, **kw):
    g = GaussianMixture(3, covariance_type=name, tol=1e-8, max_iter=40, random_state=0, **kw)
    with warnings.catch_warnings(), dask.config.set(scheduler="synchronous"):
        warnings.simplefilter("ignore")
        return g.fit(X, sample_weight=w)


def _same(a, b, tol=1e-10):
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.history_, b.history_, rtol=tol, atol=0)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", MCLUST_MODELS)
def test_integer_weights_equal_repeated_rows_from_the_same_start(name):
    X, _ = blobs(150, seed=21)
    w = np.random.default_rng(4).integers(1, 4, size=len(X))
    start = _start(X, name)
    _same(_fit(X, name, w.astype(float), **start), _fit(np.repeat(X, w, axis=0), name, **start))


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random_from_data", "random"])
def test_scaled_weights_change_nothing_including_the_initialisation(init_params):
    X, _ = blobs(200, seed=22)
    w = np.random.default_rng(5).uniform(0.1, 3.0, size=len(X))
    _same(_fit(X, "full", w * 13.0, init_params=init_params), _fit(X, "full", w, init_params=init_params))


def test_weighted_fits_are_chunking_invariant_and_zero_drops_a_row():
    X, _ = blobs(200, seed=23)
    w = np.random.default_rng(6).uniform(0.1, 3.0, size=len(X))
    start = _start(X, "VVV")
    ref = _fit(X, "VVV", w, **start)
    _same(_fit(da.from_array(X, chunks=(97, 3)), "VVV", w, **start), ref)
    _same(_fit(X, "VVV", da.from_array(w, chunks=333), **start), ref)  # weights rechunked to X's
    far = np.vstack([X, [[300.0, 300.0, -300.0]]])
    _same(_fit(far, "VVV", np.append(w, 0.0), **start), ref)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random_from_data"])
def test_the_initialisation_ignores_rows_of_weight_zero(init_params):
    X, y = blobs(300, centres=((0, 0), (10, 0), (0, 10)), seed=24)
    w = (y != 2).astype(float)  # the third blob weighs nothing
    g = GaussianMixture(2, init_params=init_params, random_state=0, max_iter=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g.fit(X, sample_weight=w)
    assert sorted(np.round(g.means_[:, 0] / 10).tolist()) == [0.0, 1.0]
    assert np.all(np.abs(g.means_[:, 1]) < 1.0)  # nowhere near the blob at (0, 10)


def test_weighted_score_and_criteria():
    X, _ = blobs(150, seed=25)
    w = np.random.default_rng(7).integers(0, 4, size=len(X)).astype(float)
    g = _fit(X, "full", w)
    rep = np.repeat(X, w.astype(int), axis=0)
    assert g.score(X, sample_weight=w) == pytest.approx(np.dot(w, g.score_samples(X)) / w.sum(), rel=1e-12)
    assert g.score(X, sample_weight=w) == pytest.approx(g.score(rep), rel=1e-12)
    ic, ic_rep = g.information_criteria(X, sample_weight=w), g.information_criteria(rep)
    for key in ("bic", "aic", "icl", "n_samples"):
        assert ic[key] == pytest.approx(ic_rep[key], rel=1e-12), key
    assert g.lower_bound_ == pytest.approx(g.history_[-1])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda w: np.append(w, 1.0), r"sample_weight must have shape \(400,\)"),
        (lambda w: w.reshape(-1, 1), r"sample_weight must have shape \(400,\)"),
        (lambda w: np.where(np.arange(400) == 250, -1.0, w), r"1 negative values, first in row chunk 2 \(rows 200-299\)"),
        (lambda w: np.where(np.arange(400) == 399, np.nan, w), r"1 NaN values, first in row chunk 3 \(rows 300-399\)"),
        (lambda w: np.where(np.arange(400) == 5, np.inf, w), r"1 inf values, first in row chunk 0 \(rows 0-99\)"),
        (lambda w: np.zeros_like(w), "sample_weight sums to 0"),
        (lambda w: w.astype(complex), "real numbers"),
    ],
)
def test_bad_weights_are_clear_errors_naming_the_chunk(edit, match):
    X, _ = blobs(400 // 3 + 1, seed=26)
    X = X[:400]
    with pytest.raises(DataError, match=match):
        GaussianMixture(2).fit(da.from_array(X, chunks=(100, 3)), sample_weight=edit(np.ones(400)))


@pytest.mark.parametrize("nan_policy", ["raise", "omit", "marginalize"])
def test_the_data_summary_is_weighted(nan_policy):
    """The summary pass (the moments the initialisation and the floors use) weighs rows as
    repeated rows; a row of weight 0 leaves no trace in it."""
    from pipeline.engine.summary import summarize

    X, _ = blobs(120, seed=26)
    if nan_policy != "raise":
        X = X.copy()
        X[np.random.default_rng(8).random(X.shape) < 0.1] = np.nan
        X[np.isnan(X).all(axis=1), 0] = 1.0
    w = np.random.default_rng(9).integers(0, 4, size=len(X))
    weighted = summarize(da.from_array(X, chunks=(50, 3)), nan_policy=nan_policy, weights=w.astype(float))
    repeated = summarize(da.from_array(np.repeat(X, w, axis=0), chunks=(70, 3)), nan_policy=nan_policy)
    assert weighted.weighted and weighted.n_samples == len(X) - (nan_policy == "omit") * int(np.isnan(X).any(axis=1).sum())
    np.testing.assert_allclose(weighted.mean, repeated.mean, rtol=1e-12)
    np.testing.assert_allclose(weighted.var, repeated.var, rtol=1e-12)
    np.testing.assert_allclose(weighted.complete_rows().var, repeated.complete_rows().var, rtol=1e-12)
    far = summarize(da.from_array(np.vstack([X, [[1e6, -1e6, 1e6]]]), chunks=(50, 3)), nan_policy=nan_policy,
                    weights=np.append(w, 0.0))
    np.testing.assert_allclose(far.var, weighted.var, rtol=1e-12)
