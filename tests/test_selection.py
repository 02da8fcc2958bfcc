"""GaussianMixtureIC: a model-selection sweep whose candidates share every pass over the data."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.base import clone

from pipeline import GaussianMixture, GaussianMixtureIC
from tests.helpers import blobs

CENTRES = ((0, 0, 0), (4, 4, 0), (0, 5, 4))


@pytest.fixture(scope="module")
def data():
    X, _ = blobs(3000, centres=CENTRES, seed=7)
    return X


@pytest.mark.filterwarnings("ignore::pipeline.exceptions.ConvergenceWarning")
def test_lockstep_candidates_equal_the_same_candidates_fitted_one_by_one(data):
    """init_sample=None: each candidate and restart starts exactly as its own fit starts; in
    lockstep every run then gives the single fit's trajectory, parameters and criteria."""
    Xd = da.from_array(data, chunks=(700, 3))
    kw = dict(random_state=3, n_init=2, tol=1e-5, max_iter=40, init_params="k-means++")
    types = ["full", "diag", "tied", "spherical", "VEV"]
    ic = GaussianMixtureIC(n_components=[1, 2, 3, 4], covariance_type=types, init_sample=None, **kw).fit(Xd)
    assert len(ic.criteria_) == 20 and all(c["status"] == "ok" for c in ic.criteria_)
    one_by_one = 0
    for c in ic.criteria_:
        k, ct = c["n_components"], c["covariance_type"]
        single = GaussianMixture(k, covariance_type=ct, **kw).fit(Xd)
        one_by_one += single.n_passes_ + 1  # + the pass of information_criteria
        ref = single.information_criteria(Xd)
        got = ic.estimators_[k, ct]
        assert got.n_iter_ == single.n_iter_ == c["n_iter"] and got.best_init_ == single.best_init_
        assert got.converged_ == single.converged_ == c["converged"]
        np.testing.assert_allclose(got.history_, single.history_, rtol=1e-10)
        for h, h_ref in zip(got.init_history_, single.init_history_):
            np.testing.assert_allclose(h, h_ref, rtol=1e-10)
        for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            np.testing.assert_allclose(getattr(got, attr), getattr(single, attr), rtol=1e-10, atol=1e-12)
        for key in ("loglik", "bic", "icl", "aic", "n_parameters"):
            np.testing.assert_allclose(c[key], ref[key], rtol=1e-10)
    best = min(ic.criteria_, key=lambda c: c["bic"])
    assert (ic.n_components_, ic.covariance_type_) == (best["n_components"], best["covariance_type"]) == (3, "full")
    # one pass per lockstep iteration serves every run: the EM passes are the slowest run's, not the sum
    slowest = max(max(len(h) for h in ic.estimators_[c["n_components"], c["covariance_type"]].init_history_)
                  for c in ic.criteria_)
    assert ic.n_em_passes_ == slowest + 1  # + the pass that scores the last runs to stop
    assert ic.n_passes_ < one_by_one / 3


class CountingReads:
    """A counting identity over the chunks of a Zarr-backed array: how often chunk 0 is read."""

    def __init__(self):
        self.reads = 0

    def __call__(self, block, block_info=None):
        if block_info is not None and block_info[0]["chunk-location"][0] == 0:
            self.reads += 1
        return block


@pytest.mark.filterwarnings("ignore::pipeline.exceptions.ConvergenceWarning")
def test_passes_are_counted_independently_and_the_sample_start_needs_no_pass_of_its_own(tmp_path, data):
    import zarr

    from pipeline import open_dataset

    z = zarr.create_array(tmp_path / "x.zarr", shape=data.shape, chunks=(500, 3), dtype="f8")
    z[:] = data
    for init_sample, ks in ((100_000, [1, 2, 3, 4, 5]), (1000, [2, 3, 4])):
        counter = CountingReads()
        X = open_dataset(tmp_path / "x.zarr", chunk_rows=500).map_blocks(counter, dtype=np.float64)
        with dask.config.set(scheduler="threads"):
            ic = GaussianMixtureIC(n_components=ks, covariance_type=["full", "diag"], random_state=0, cache="none",
                                   init_sample=init_sample, n_init=3).fit(X)
        assert counter.reads == ic.n_passes_
        # the summary pass (which draws the sample), the slowest candidate's EM passes + its scores
        slowest = max(c["n_iter"] for c in ic.criteria_)
        assert ic.n_passes_ == 1 + slowest + 1 == 1 + ic.n_em_passes_
        assert ic.init_sample_rows_ == (len(data) if init_sample > len(data) else pytest.approx(1000, rel=0.2))
        assert (ic.n_components_, ic.covariance_type_) == (3, "full")
        # every candidate meets tol on an exact iteration over the whole data
        for c in ic.criteria_:
            est = ic.estimators_[c["n_components"], c["covariance_type"]]
            assert est.converged_ and abs(est.history_[-1] - est.history_[-2]) < est.tol


def test_a_candidate_that_collapses_is_reported_and_the_sweep_finishes():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) + 6, np.full((40, 2), [20.0, -20.0])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ic = GaussianMixtureIC(n_components=[1, 2, 3], covariance_type=["full"], reg_covar=0.0, random_state=0,
                               init_sample=None).fit(X)
    status = {c["n_components"]: c for c in ic.criteria_}
    assert status[3]["status"] == "failed" and "ill-defined empirical covariance" in status[3]["reason"] and status[3]["bic"] is None
    assert status[1]["status"] == status[2]["status"] == "ok"
    assert ic.n_components_ in (1, 2) and (3, "full") not in ic.estimators_


def test_the_selected_model_answers_and_the_estimator_clones(data):
    ic = GaussianMixtureIC(n_components=[2, 3], covariance_type="full", random_state=0, criterion="icl").fit(data)
    best = ic.best_estimator_
    np.testing.assert_array_equal(ic.predict(data), best.predict(data))
    np.testing.assert_allclose(ic.predict_proba(data), best.predict_proba(data))
    np.testing.assert_allclose(ic.score_samples(data), best.score_samples(data))
    assert ic.score(data) == best.score(data)
    assert min(ic.criteria_, key=lambda c: c["icl"])["n_components"] == ic.n_components_ == 3
    twin = clone(ic)
    assert twin.get_params() == ic.get_params() and not hasattr(twin, "best_estimator_")
    with pytest.raises(ValueError, match="name a candidate twice"):
        GaussianMixtureIC(n_components=[2], covariance_type=["full", "VVV"]).fit(data)
    with pytest.raises(ValueError, match="'criterion' must be one of bic, icl"):
        GaussianMixtureIC(criterion="aicc").fit(data)


def test_the_summary_pass_draws_a_reproducible_uniform_sample_and_its_figures_are_unchanged(data):
    from pipeline.engine.summary import summarize

    X = data.copy()
    X[::7, 1] = np.nan
    Xd = da.from_array(X, chunks=(700, 3))
    w = np.random.default_rng(1).uniform(0.5, 2.0, size=len(X))
    w[::5] = 0.0
    for policy in ("omit", "marginalize"):
        plain = summarize(Xd, "X", policy, w)
        a = summarize(Xd, "X", policy, w, sample=(0.3, 11))
        b = summarize(Xd, "X", policy, w, sample=(0.3, 11))
        np.testing.assert_array_equal(a.per_chunk, plain.per_chunk)  # the summary itself is the same
        np.testing.assert_array_equal(a.mean, plain.mean)
        np.testing.assert_array_equal(a.sample[0], b.sample[0])  # reproducible from the seed
        rows, weights = a.sample
        assert abs(len(rows) - 0.3 * 0.8 * len(X) * (6 / 7 if policy == "omit" else 1)) < 0.1 * len(rows)
        assert np.all(weights > 0) and (policy != "omit" or not np.isnan(rows).any())
        index = {tuple(np.nan_to_num(r, nan=-99.0)): i for i, r in enumerate(X)}
        found = np.array([index[tuple(np.nan_to_num(r, nan=-99.0))] for r in rows])
        np.testing.assert_array_equal(weights, w[found])  # each sampled row carries its own weight
        assert np.all(np.diff(found) > 0)  # rows in order, each at most once
    other = summarize(Xd, "X", "omit", w, sample=(0.3, 12)).sample[0]
    assert len(other) != len(a.sample[0]) or not np.array_equal(other, a.sample[0])


def test_a_sweep_that_cannot_fit_the_workers_memory_is_refused_before_any_pass(tmp_path):
    import zarr
    from distributed import Client, LocalCluster

    from pipeline import open_dataset
    from pipeline.exceptions import MemoryBudgetError

    rng = np.random.default_rng(0)
    z = zarr.create_array(tmp_path / "x.zarr", shape=(4000, 60), chunks=(1000, 60), dtype="f8")
    z[:] = rng.normal(size=(4000, 60))
    counter = CountingReads()
    X = open_dataset(tmp_path / "x.zarr", chunk_rows=1000).map_blocks(counter, dtype=np.float64)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=None,
                      memory_limit="400MiB") as cluster, Client(cluster):
        # 15 x 14 candidates of up to 15 components in 60 dimensions: ~28 MiB of statistics per chunk
        # task, and a tree sum holds 16 of them: more than 80% of 400 MiB
        with pytest.raises(MemoryBudgetError, match=r"MiB per worker .* more than the smallest worker memory limit"):
            GaussianMixtureIC(n_components=range(1, 16), covariance_type="all", cache="none").fit(X)
        small = GaussianMixtureIC(n_components=[1, 2], covariance_type="diag", cache="none", random_state=0).fit(X)
        assert small.memory_["worker_bytes"] < small.memory_["worker_budget"] == int(0.8 * 400 * 2**20)
    assert counter.reads == 0  # (the counter of this process is not the workers': a pass there counts nothing here)
    from pipeline.engine.resources import check_sweep_memory

    with pytest.raises(MemoryBudgetError, match="on the driver .* more than this host's available"):
        check_sweep_memory(X, 100, driver_bytes=2**60, fan_in=16)


OVERLAPPING = ((0, 0, 0), (2, 2, 0), (0, 2.5, 2), (3, 0, 3))


@pytest.mark.filterwarnings("ignore::pipeline.exceptions.ConvergenceWarning")
def test_incremental_em_stops_on_exact_iterations_in_fewer_passes_at_a_fixed_point_of_exact_em(tmp_path):
    """Incremental EM over 4 groups of chunks from the same starts as batch EM (init_sample=None):
    every run stops on two exact batch iterations whose change is below tol, no lower than batch EM
    at the same tol, in fewer passes; with a tight tol both reach the same fixed point.  A pass of
    4 computations still reads each chunk once."""
    import zarr

    from pipeline import open_dataset

    X, _ = blobs(4000, centres=OVERLAPPING, seed=7)
    z = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(500, 3), dtype="f8")
    z[:] = X
    counter = CountingReads()
    Xd = open_dataset(tmp_path / "x.zarr", chunk_rows=500).map_blocks(counter, dtype=np.float64)
    kw = dict(n_components=[3, 4], covariance_type=["full", "diag"], random_state=0, init_sample=None, tol=1e-4,
              cache="none", max_iter=300)
    with dask.config.set(scheduler="threads"):
        batch = GaussianMixtureIC(**kw).fit(Xd)
        reads = counter.reads
        inc = GaussianMixtureIC(incremental_blocks=4, **kw).fit(Xd)
        assert counter.reads - reads == inc.n_passes_
        tight = {b: GaussianMixtureIC(**{**kw, "n_components": 4, "covariance_type": "full", "tol": 1e-8},
                                      incremental_blocks=b).fit(Xd) for b in (1, 4)}
    for c, ref in zip(inc.criteria_, batch.criteria_):
        est = inc.estimators_[c["n_components"], c["covariance_type"]]
        h = est.history_
        assert est.converged_ and 0 < c["incremental_passes"] <= c["n_iter"] - 3
        assert abs(h[-1] - h[-2]) < est.tol  # the stopping change is between two exact iterations
        assert c["loglik"] >= ref["loglik"] - 1e-5
    assert sum(c["n_iter"] for c in inc.criteria_) < sum(c["n_iter"] for c in batch.criteria_)
    assert inc.n_em_passes_ <= batch.n_em_passes_
    a, b = (tight[b].best_estimator_ for b in (1, 4))
    assert tight[4].criteria_[0]["incremental_passes"] > 0 and b.n_iter_ < a.n_iter_
    np.testing.assert_allclose(b.history_[-1], a.history_[-1], rtol=1e-8)
    order_a, order_b = np.argsort(a.means_[:, 0]), np.argsort(b.means_[:, 0])
    np.testing.assert_allclose(b.means_[order_b], a.means_[order_a], atol=1e-3)  # (a flat optimum)
    np.testing.assert_allclose(b.covariances_[order_b], a.covariances_[order_a], atol=1e-3)


@pytest.mark.filterwarnings("ignore::pipeline.exceptions.ConvergenceWarning")
def test_the_aitken_rule_goes_on_through_a_slow_tail_that_the_change_rule_stops_in():
    X, _ = blobs(4000, centres=OVERLAPPING, seed=7)
    Xd = da.from_array(X, chunks=(1000, 3))
    kw = dict(n_components=[4, 5], covariance_type=["full"], random_state=0, init_sample=None, tol=1e-3,
              max_iter=500)
    with dask.config.set(scheduler="threads"):
        change = GaussianMixtureIC(**kw).fit(Xd)
        aitken = GaussianMixtureIC(stopping="aitken", **kw).fit(Xd)
    longer = 0
    for a, c in zip(aitken.criteria_, change.criteria_):
        h = aitken.estimators_[a["n_components"], a["covariance_type"]].history_
        # the same trajectory, stopped no earlier, and where it stops the Aitken estimate of the
        # limit is within tol (or the rate is not that of a linear tail)
        np.testing.assert_allclose(h[: c["n_iter"]], change.estimators_[a["n_components"], "full"].history_)
        assert a["n_iter"] >= c["n_iter"] and a["loglik"] >= c["loglik"] - 1e-12
        rate = (h[-1] - h[-2]) / (h[-2] - h[-3])
        assert abs(h[-1] - h[-2]) < 1e-3 and (not 0 <= rate < 1 or abs(h[-1] - h[-2]) / (1 - rate) < 1e-3)
        longer += a["n_iter"] > c["n_iter"]
    assert longer >= 1
    with pytest.raises(ValueError, match="'stopping' must be one of change, aitken"):
        GaussianMixtureIC(stopping="relative").fit(X)
    with pytest.raises(ValueError, match="'incremental_blocks' must be an integer >= 1"):
        GaussianMixtureIC(incremental_blocks=0).fit(X)


@pytest.mark.filterwarnings("ignore::pipeline.exceptions.ConvergenceWarning")
def test_without_a_sample_each_candidate_starts_on_its_own_fits_initialisation_data_under_marginalize(data):
    """init_sample=None, nan_policy="marginalize": 20 complete rows are enough to start K=2 on
    the complete rows (K * (D + 1) = 8) but not K=6 (24, so its start is on the mean-imputed
    rows): each candidate starts, and runs, as its own GaussianMixture.fit."""
    X = data[:600].copy()
    rng = np.random.default_rng(5)
    X[np.arange(20, 600), rng.integers(0, 3, size=580)] = np.nan
    kw = dict(nan_policy="marginalize", random_state=1, max_iter=5, tol=0.0, init_params="k-means++")
    ic = GaussianMixtureIC(n_components=[2, 6], covariance_type="full", init_sample=None, **kw).fit(X)
    for k in (2, 6):
        single = GaussianMixture(k, **kw).fit(X)
        np.testing.assert_allclose(ic.estimators_[k, "full"].history_, single.history_, rtol=1e-10)
        np.testing.assert_allclose(ic.estimators_[k, "full"].means_, single.means_, rtol=1e-10)


def test_init_sample_must_be_a_positive_integer_or_none(data):
    for bad in (0, -5, 2.5, "many", True):
        with pytest.raises(ValueError, match=r"parameter 'init_sample' must be an integer >= 1 or None"):
            GaussianMixtureIC(n_components=[1, 2], init_sample=bad).fit(data)
