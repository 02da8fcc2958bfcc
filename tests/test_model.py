"""The estimator's behaviour: API, recovery of known mixtures, degenerate data, bad input."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from pipeline import GaussianMixture
from pipeline.exceptions import ConvergenceWarning, CovarianceError, DataError
from tests.helpers import blobs


def test_recovers_generating_parameters_of_well_separated_mixture():
    X, y = blobs(3000, centres=((0, 0, 0), (12, 0, 0), (0, 12, 0), (0, 0, 12)), seed=1)
    g = GaussianMixture(4, random_state=0, chunk_rows=2500).fit(X)
    labels = g.predict(X)
    assert adjusted_rand_score(y, labels) > 0.999
    true_means = np.array([X[y == k].mean(0) for k in range(4)])
    order = [int(np.argmin(((g.means_ - m) ** 2).sum(1))) for m in true_means]
    assert sorted(order) == [0, 1, 2, 3]
    np.testing.assert_allclose(g.means_[order], true_means, atol=0.05)
    np.testing.assert_allclose(g.weights_[order], 0.25, atol=0.01)
    true_cov = np.array([np.cov(X[y == k].T) for k in range(4)])
    np.testing.assert_allclose(g.covariances_[order], true_cov, atol=0.05)
    assert g.converged_


def test_beats_kmeans_on_the_mouse():
    """The classic "mouse": a big head and two small ears. K-means (equal spherical clusters)
    gives head points to the ears; the GMM, started from those k-means labels, fixes it."""
    rng = np.random.default_rng(0)
    head = rng.normal(size=(3000, 2))
    ears = [rng.normal(size=(500, 2)) * 0.3 + c for c in ([-1.8, 1.8], [1.8, 1.8])]
    X = np.concatenate([head, *ears])
    y = np.repeat([0, 1, 2], [3000, 500, 500])
    km = KMeans(3, n_init=10, random_state=0).fit(X).labels_
    g = GaussianMixture(3, random_state=0, chunk_rows=1000).fit(X)
    ari_gmm, ari_km = adjusted_rand_score(y, g.predict(X)), adjusted_rand_score(y, km)
    assert ari_gmm > 0.85
    assert ari_gmm > ari_km + 0.4


def test_restarts_escape_the_kmeans_local_optimum_on_elongated_clusters():
    """Parallel elongated clusters: k-means cuts them crosswise and EM started there stays in
    that local optimum; random restarts (n_init) find the better optimum."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3000, 2)) * [6.0, 0.4]
    b = rng.normal(size=(3000, 2)) * [6.0, 0.4] + [0, 3.0]
    c = rng.normal(size=(600, 2)) * 0.5 + [9, 6]
    X = np.concatenate([a, b, c])
    y = np.repeat([0, 1, 2], [3000, 3000, 600])
    one = GaussianMixture(3, random_state=0, chunk_rows=1000).fit(X)
    many = GaussianMixture(3, n_init=10, init_params="random_from_data", random_state=0, chunk_rows=1000).fit(X)
    assert adjusted_rand_score(y, one.predict(X)) < 0.5
    assert adjusted_rand_score(y, many.predict(X)) > 0.99
    assert many.lower_bound_ > one.lower_bound_ + 0.5


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random_from_data"])
def test_every_initialisation_finds_the_clusters(init_params):
    X, y = blobs(1000, centres=((0, 0), (15, 0), (0, 15)), seed=4)
    g = GaussianMixture(3, init_params=init_params, random_state=1, n_init=2, chunk_rows=700).fit(X)
    assert adjusted_rand_score(y, g.predict(X)) > 0.99


def test_random_initialisation_runs_and_is_reproducible():
    X, _ = blobs(500, seed=4)
    a = GaussianMixture(3, init_params="random", random_state=3, max_iter=50, tol=1e-6, chunk_rows=300)
    b = clone(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.fit(X)
        b.fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert np.all(np.isfinite(a.covariances_))


def test_n_init_keeps_the_best_lower_bound():
    X, _ = blobs(800, centres=((0, 0), (5, 0), (0, 5), (5, 5), (2.5, 9)), seed=8)
    g = GaussianMixture(5, n_init=4, init_params="random_from_data", random_state=0, chunk_rows=1500).fit(X)
    finals = [h[-1] for h in g.init_history_]
    assert len(finals) == 4
    assert g.lower_bound_ == max(finals)


def test_fit_on_dask_array_gives_lazy_predictions_with_input_chunks():
    X, _ = blobs(700, seed=9)
    Xd = da.from_array(X, chunks=(500, 3))
    g = GaussianMixture(3, random_state=0).fit(Xd)
    proba, labels, ss = g.predict_proba(Xd), g.predict(Xd), g.score_samples(Xd)
    assert isinstance(proba, da.Array) and isinstance(labels, da.Array)
    assert proba.chunks == (Xd.chunks[0], (3,))
    assert labels.chunks == (Xd.chunks[0],) and labels.dtype == np.int64
    np.testing.assert_allclose(proba.sum(axis=1).compute(), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(labels.compute(), g.predict(X))
    np.testing.assert_allclose(ss.mean().compute(), g.score(X), rtol=1e-12)
    np.testing.assert_array_equal(g.fit_predict(Xd).compute(), g.predict(X))


def test_threaded_and_synchronous_schedulers_agree():
    X, _ = blobs(600, seed=10)
    kw = dict(n_components=3, random_state=0, chunk_rows=400, tol=1e-8, max_iter=30)
    with dask.config.set(scheduler="threads"):
        a = GaussianMixture(**kw).fit(X)
    with dask.config.set(scheduler="synchronous"):
        b = GaussianMixture(**kw).fit(X)
    np.testing.assert_array_equal(a.history_, b.history_)


def test_bic_aic_match_definition_and_prefer_true_k():
    X, _ = blobs(1000, centres=((0, 0), (10, 0), (0, 10)), seed=11)
    bics = {}
    for k in (1, 2, 3, 4, 5):
        g = GaussianMixture(k, random_state=0, chunk_rows=1200).fit(X)
        n = X.shape[0]
        p = {1: 5, 2: 11, 3: 17, 4: 23, 5: 29}[k]
        assert g._n_parameters() == p
        np.testing.assert_allclose(g.bic(X), -2 * g.score(X) * n + p * np.log(n))
        np.testing.assert_allclose(g.aic(X), -2 * g.score(X) * n + 2 * p)
        bics[k] = g.bic(X)
    assert min(bics, key=bics.get) == 3


def test_sample_follows_the_fitted_mixture():
    X, _ = blobs(2000, seed=12)
    g = GaussianMixture(3, random_state=0).fit(X)
    S, y = g.sample(30000, random_state=1)
    assert S.shape == (30000, 3) and y.shape == (30000,)
    np.testing.assert_allclose(np.bincount(y) / 30000, g.weights_, atol=0.01)
    for k in range(3):
        np.testing.assert_allclose(S[y == k].mean(0), g.means_[k], atol=0.1)


def test_get_set_params_and_clone_work_with_sklearn_tooling():
    from sklearn.model_selection import GridSearchCV

    g = GaussianMixture(2, covariance_type="diag", dtype="float32")
    assert g.get_params()["covariance_type"] == "diag"
    c = clone(g)
    assert c.get_params() == g.get_params() and c is not g
    g.set_params(n_components=4)
    assert g.n_components == 4
    with pytest.raises(ValueError, match="Invalid parameter 'bogus'"):
        g.set_params(bogus=1)
    X, _ = blobs(300, centres=((0, 0), (10, 0), (0, 10)), seed=13)
    gs = GridSearchCV(GaussianMixture(random_state=0), {"n_components": [1, 3]}, cv=2).fit(X)
    assert gs.best_params_ == {"n_components": 3}


def test_convergence_warning_when_max_iter_reached():
    X, _ = blobs(500, seed=14)
    g = GaussianMixture(3, max_iter=2, tol=1e-12, random_state=0)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        g.fit(X)
    assert not g.converged_ and g.n_iter_ == 2 and len(g.history_) == 2


# --------------------------------------------------------------------- degenerate data


def test_duplicated_points_and_collapsing_components_give_no_nan():
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 200, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = GaussianMixture(4, random_state=0, reg_covar=1e-6, chunk_rows=150).fit(X)
    for a in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(g, a))), a
    assert np.all(np.isfinite(g.history_))
    assert set(np.unique(g.predict(X))) <= set(range(4))


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_collapse_with_reg_covar_zero_is_scikit_learns_error(covariance_type):
    """reg_covar=0 asks for no regularisation: a collapsed component is an error (as in
    scikit-learn), raised before any NaN, not a silently floored covariance."""
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 200, axis=0)
    g = GaussianMixture(4, covariance_type=covariance_type, random_state=0, reg_covar=0.0, chunk_rows=150)
    with pytest.raises(CovarianceError, match="increase reg_covar") as info:
        g.fit(X)
    assert isinstance(info.value, ValueError)
    assert not hasattr(g, "means_")


def test_component_that_loses_all_points_stays_finite():
    X, _ = blobs(500, centres=((0, 0), (8, 0)), seed=15)
    means = np.array([[0.0, 0.0], [8.0, 0.0], [1e6, 1e6]])
    g = GaussianMixture(3, means_init=means, random_state=0, chunk_rows=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g.fit(X)
    assert g.weights_[2] < 1e-10
    assert np.all(np.isfinite(g.covariances_)) and np.all(np.isfinite(g.history_))
    assert set(np.unique(g.predict(X))) == {0, 1}


def test_singular_component_is_an_error_at_zero_and_tiny_with_any_reg_covar():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(300, 2)), np.tile([[20.0, 20.0]], (50, 1))])
    means = [[0.0, 0.0], [20.0, 20.0]]
    with pytest.raises(CovarianceError, match="ill-defined empirical covariance"):
        GaussianMixture(2, reg_covar=0.0, means_init=means, random_state=0).fit(X)
    g = GaussianMixture(2, reg_covar=1e-12, means_init=means, random_state=0).fit(X)
    assert np.all(np.isfinite(g.precisions_cholesky_))
    assert g.covariances_[1].max() < 1e-6


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_m_step_floors_a_covariance_that_rounding_left_indefinite(covariance_type):
    """With reg_covar > 0 a scatter that rounding made slightly negative (large offsets,
    duplicated rows) is floored with a warning naming the component, never NaN."""
    from pipeline.core.stats import SuffStats
    from pipeline.core.updaters import MaximumLikelihood
    from pipeline.families import warn_floored

    k, d = 2, 2
    st = SuffStats.zeros(np.zeros((k, d)), covariance_type)
    st.n, st.s0 = 200.0, np.array([100.0, 100.0])
    healthy, broken = np.eye(d) * 100.0, -np.ones((d, d)) * 1e-3
    if covariance_type == "tied":
        broken = -np.eye(d) * 200.0  # the pooled scatter itself indefinite
    outer = np.stack([healthy, broken])
    st.s2 = {"full": outer, "tied": outer, "diag": np.stack([np.diag(m) for m in outer]),
             "spherical": np.array([np.trace(m) for m in outer])}[covariance_type]
    params, floored = MaximumLikelihood(reg_covar=1e-12, scale=1.0).m_step(st)
    assert np.all(np.isfinite(params.precisions_cholesky)) and np.all(np.isfinite(params.covariances))
    if covariance_type in ("diag", "spherical"):  # variances are clipped at 0, then + reg_covar
        assert floored == [] and np.allclose(params.covariances[1], 1e-12, rtol=0, atol=1e-18)
    else:
        assert floored == ([0] if covariance_type == "tied" else [1])
        with pytest.warns(RuntimeWarning, match=rf"components \[{floored[0]}\] collapsed"):
            warn_floored(floored)
    with pytest.raises(CovarianceError):
        MaximumLikelihood(reg_covar=0.0).m_step(st)


# --------------------------------------------------------------------- bad input


def test_nan_values_are_reported_with_count_and_chunk():
    X, _ = blobs(400, seed=16)
    X[650, 1] = np.nan
    X[651, 0] = np.nan
    X[1100, 2] = np.inf
    with pytest.raises(DataError, match=r"2 NaN and 1 inf.*row chunk 1 \(rows 500-999\): 2 NaN, 0 inf.*row chunk 2"):
        GaussianMixture(2).fit(da.from_array(X, chunks=(500, 3)))


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros(10), "must be 2-D"),
        (np.zeros((2, 3, 4)), "must be 2-D"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype <U1"),
        (np.zeros((3, 2), dtype=complex), "dtype complex128"),
        (np.zeros((0, 3)), "0 samples"),
        (np.zeros((5, 0)), "0 features"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(X, match):
    with pytest.raises(DataError, match=match):
        GaussianMixture(1).fit(X)


def test_fewer_samples_than_components_is_an_error():
    with pytest.raises(DataError, match="n_samples >= n_components"):
        GaussianMixture(5).fit(np.random.default_rng(0).normal(size=(3, 2)))


def test_feature_mismatch_at_predict_time():
    X, _ = blobs(100, seed=17)
    g = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(DataError, match="has 2 features, but the GaussianMixture was fitted with 3"):
        g.predict(X[:, :2])


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": 2.5}, "n_components"),
        ({"covariance_type": "banana"}, "covariance_type"),
        ({"tol": -1}, "tol"),
        ({"reg_covar": -1e-3}, "reg_covar"),
        ({"max_iter": -1}, "max_iter"),
        ({"n_init": 0}, "n_init"),
        ({"init_params": "nope"}, "init_params"),
        ({"dtype": "float16"}, "dtype"),
        ({"means_init": np.zeros((3, 3))}, "means_init must have shape"),
        ({"weights_init": [0.5, 0.6]}, "sum to 1"),
        ({"precisions_init": np.ones((2, 3))}, "precisions_init"),
    ],
)
def test_invalid_parameters_name_the_parameter(params, match):
    X, _ = blobs(50, seed=18)
    kw = {"n_components": 2, **params}
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kw).fit(X)


def test_unfitted_model_says_so():
    with pytest.raises(AttributeError, match="not fitted"):
        GaussianMixture(2).predict(np.zeros((3, 2)))


# --------------------------------------------------------------------- persistence


def test_save_load_round_trip_predicts_the_same(tmp_path):
    X, _ = blobs(400, seed=19)
    g = GaussianMixture(3, covariance_type="tied", random_state=0).fit(X)
    path = g.save(tmp_path / "model.npz")
    h = GaussianMixture.load(path)
    assert h.get_params() == g.get_params()
    for a in ("weights_", "means_", "covariances_", "precisions_cholesky_", "history_"):
        np.testing.assert_array_equal(getattr(h, a), getattr(g, a))
    assert (h.converged_, h.n_iter_, h.lower_bound_) == (g.converged_, g.n_iter_, g.lower_bound_)
    np.testing.assert_array_equal(h.predict(X), g.predict(X))
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary left


def test_loading_a_truncated_or_tampered_model_is_a_clear_error(tmp_path):
    import zipfile

    from pipeline.exceptions import ModelFileError

    X, _ = blobs(200, seed=20)
    path = GaussianMixture(2, random_state=0).fit(X).save(tmp_path / "m.npz")
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="trunc.npz.*truncated"):
        GaussianMixture.load(tmp_path / "trunc.npz")
    # replace the means by other numbers, keeping the archive well-formed
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    fake = np.lib.format
    import io

    buf = io.BytesIO()
    fake.write_array(buf, np.zeros((2, 3)))
    members["means.npy"] = buf.getvalue()
    with zipfile.ZipFile(tmp_path / "tampered.npz", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ModelFileError, match="'means' does not match its checksum"):
        GaussianMixture.load(tmp_path / "tampered.npz")
    np.save(tmp_path / "other.npy", np.zeros(3))
    with pytest.raises(ModelFileError, match="not a .npz|not a gmm-pipeline"):
        GaussianMixture.load(tmp_path / "other.npy")
    with pytest.raises(ModelFileError, match="does not exist"):
        GaussianMixture.load(tmp_path / "missing.npz")


def test_nan_at_predict_time_is_an_error_not_label_zero():
    X, _ = blobs(200, seed=23)
    g = GaussianMixture(2, random_state=0).fit(X)
    bad = X.copy()
    bad[5, 1] = np.nan
    with pytest.raises(DataError, match="1 rows to predict have NaN/inf"):
        g.predict(bad)
    with pytest.raises(DataError, match="NaN/inf"):
        g.predict(da.from_array(bad, chunks=100)).compute()
    with pytest.raises(DataError, match="NaN/inf"):
        g.score(bad)


def test_params_given_as_numpy_scalars_save_and_load(tmp_path):
    X, _ = blobs(200, seed=24)
    g = GaussianMixture(np.int64(3), random_state=np.int64(2), dtype=np.dtype("float32"), reg_covar=np.float64(1e-5)).fit(X)
    h = GaussianMixture.load(g.save(tmp_path / "m.npz"))
    assert (h.n_components, h.random_state, h.dtype, h.reg_covar) == (3, 2, "float32", 1e-5)
    assert type(h.n_components) is int
    np.testing.assert_array_equal(h.predict(X), g.predict(X))


def test_bic_accepts_lists_and_counts_samples_in_the_same_pass():
    X, _ = blobs(100, seed=25)
    g = GaussianMixture(2, random_state=0).fit(X)
    ic = g.information_criteria(X.tolist())
    assert ic["n_samples"] == 300
    assert g.bic(X.tolist()) == pytest.approx(ic["bic"]) == pytest.approx(-2 * g.score(X) * 300 + ic["n_parameters"] * np.log(300))


def test_numpy_input_is_chunked_by_size_unless_chunk_rows_is_given():
    from pipeline.estimators.validation import check_array

    small, _ = check_array(np.zeros((1000, 3)))
    assert small.numblocks == (1, 1)  # 24 kB: one chunk
    big, was_dask = check_array(np.zeros((200_000, 8)))  # 12.8 MB: 12 chunks of >= 1 MiB
    assert not was_dask and big.chunks[0] == (16_667,) * 11 + (200_000 - 11 * 16_667,)
    given, _ = check_array(np.zeros((200_000, 8)), chunk_rows=50_000)
    assert given.chunks[0] == (50_000,) * 4
    assert check_array(np.zeros((200_000, 8)), chunk_rows="auto")[0].chunks == big.chunks
    for bad in (0, -5, 2.5, "big", True):
        with pytest.raises(ValueError, match="chunk_rows must be None, 'auto' or an integer >= 1"):
            check_array(np.zeros((10, 2)), chunk_rows=bad)
    dask_in, was_dask = check_array(da.zeros((200_000, 8), chunks=(30_000, 4)), chunk_rows=50_000)
    assert was_dask and dask_in.chunks == ((30_000,) * 6 + (20_000,), (8,))  # Dask keeps its rows
