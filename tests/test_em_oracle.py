"""Our EM against the oracle, scikit-learn's GaussianMixture, from the same initial parameters."""

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SK

from pipeline import GaussianMixture
from tests.helpers import blobs, sklearn_initial_params

TYPES = ["full", "tied", "diag", "spherical"]


def fit_both(X, k, ct, chunks, max_iter=25, dtype="float64", X_ours=None, shift=0.0):
    w, m, p = sklearn_initial_params(X, k, ct)
    sk = SK(k, covariance_type=ct, max_iter=max_iter, tol=0, weights_init=w, means_init=m, precisions_init=p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(X)
    Xo = X if X_ours is None else X_ours
    ours = GaussianMixture(
        k, covariance_type=ct, max_iter=max_iter, tol=0, weights_init=w, means_init=m + shift,
        precisions_init=p, dtype=dtype,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(da.from_array(Xo, chunks=(chunks, -1)))
    return sk, ours


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.mark.parametrize("covariance_type", TYPES)
def test_loglik_trajectory_and_parameters_match_sklearn(covariance_type):
    X, _ = blobs(1500)
    sk, ours = fit_both(X, 3, covariance_type, chunks=(700, 1100, 300, 1400, 1000))
    assert len(ours.history_) == len(sk.lower_bounds_) == 25
    assert rel(ours.history_, sk.lower_bounds_) <= 1e-8
    assert rel(ours.weights_, sk.weights_) <= 1e-7
    assert np.max(np.abs(ours.means_ - sk.means_)) <= 1e-7 * np.abs(sk.means_).max()
    cov_scale = np.abs(sk.covariances_).max()
    assert np.max(np.abs(ours.covariances_ - sk.covariances_)) <= 1e-7 * cov_scale
    assert np.max(np.abs(ours.precisions_ - sk.precisions_)) <= 1e-6 * np.abs(sk.precisions_).max()
    Xd = da.from_array(X, chunks=500)
    np.testing.assert_allclose(ours.score(X), sk.score(X), rtol=1e-10)
    np.testing.assert_allclose(ours.predict_proba(Xd).compute(), sk.predict_proba(X), atol=1e-7)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_result_does_not_depend_on_chunking(covariance_type):
    X, _ = blobs(1200, seed=3)
    _, one = fit_both(X, 3, covariance_type, chunks=X.shape[0], max_iter=15)
    _, many = fit_both(X, 3, covariance_type, chunks=(1, 999, 17, 1500, 1082, 1), max_iter=15)
    assert rel(one.history_, many.history_) <= 1e-10
    for a in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(one, a), getattr(many, a), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_common_offset_of_1e5_does_not_cancel(covariance_type):
    """Unit-spread data shifted by 1e5: covariances equal scikit-learn's on the unshifted data.

    (scikit-learn itself loses ~1e-5 for tied/diag/spherical at this offset, as it forms
    E[x^2] - E[x]^2, so the accurate oracle is its fit of the same data without the offset.)
    """
    X, _ = blobs(1500, seed=5)
    X = (X - X.mean(0)) / X.std(0)
    sk, ours = fit_both(X, 3, covariance_type, chunks=800, max_iter=10, X_ours=X + 1e5, shift=1e5)
    assert rel(ours.covariances_, sk.covariances_) <= 1e-6
    np.testing.assert_allclose(ours.means_ - 1e5, sk.means_, atol=1e-6)
    assert rel(ours.history_, sk.lower_bounds_) <= 1e-8


def test_full_covariance_with_offset_matches_sklearn_on_the_same_data():
    X, _ = blobs(1500, seed=6)
    X = (X - X.mean(0)) / X.std(0) + 1e5
    sk, ours = fit_both(X, 3, "full", chunks=800, max_iter=10)
    assert rel(ours.covariances_, sk.covariances_) <= 1e-6


@pytest.mark.parametrize("covariance_type", TYPES)
def test_float32_loglik_close_to_float64(covariance_type):
    X, _ = blobs(3000, seed=7)
    _, f64 = fit_both(X, 3, covariance_type, chunks=2500, max_iter=20)
    _, f32 = fit_both(X, 3, covariance_type, chunks=2500, max_iter=20, dtype="float32",
                      X_ours=X.astype(np.float32))
    assert rel(f32.history_, f64.history_) <= 1e-4
    assert np.all(np.isfinite(f32.covariances_))


def test_float32_compute_on_float64_data_at_a_large_offset():
    """Clusters 10 standard deviations apart on a common offset of 1e5: the float32 fit and its
    predictions lose nothing to the offset (the shift is subtracted before rounding)."""
    rng = np.random.default_rng(8)
    X = np.concatenate([rng.normal(size=(2000, 2)) * 1e-3, rng.normal(size=(2000, 2)) * 1e-3 + 0.01]) + 1e5
    fits = {}
    for dtype in ("float64", "float32"):
        fits[dtype] = GaussianMixture(2, dtype=dtype, random_state=0, tol=1e-8).fit(X)
    f64, f32 = fits["float64"], fits["float32"]
    assert rel(f32.lower_bound_, f64.lower_bound_) <= 1e-6
    assert rel(f32.score(X), f64.score(X)) <= 1e-6
    np.testing.assert_allclose(np.sort(f32.means_[:, 0]) - 1e5, np.sort(f64.means_[:, 0]) - 1e5, atol=1e-6)
    np.testing.assert_array_equal(f32.predict(X), f64.predict(X))
