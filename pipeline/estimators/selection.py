"""``GaussianMixtureIC``: a whole model-selection sweep (G components x covariance model) by BIC
or ICL, every candidate and restart fitted in lockstep so that one pass over the data serves
them all (:mod:`pipeline.engine.sweep`).  Named as in scikit-learn's proposal #19338.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Iterable

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted

from pipeline.core.state import EMResult
from pipeline.core.stats import vector_length
from pipeline.engine.em import warn_not_converged
from pipeline.engine.graph import SPLIT_EVERY, counting_passes, record_pass
from pipeline.engine.init import initialize
from pipeline.engine.missing import INIT_MIN_COMPLETE_PER_PARAMETER, complete_rows, initialisation_data
from pipeline.engine.resources import check_sweep_memory, should_cache, single_threaded, single_threaded_blas
from pipeline.engine.summary import summarize
from pipeline.engine.sweep import STOPPING, LockstepRun, run_lockstep
from pipeline.estimators.base import logger, verbose_logging
from pipeline.estimators.gaussian_mixture import GaussianMixture, criteria_from_sums
from pipeline.estimators.validation import validate_input, validate_weights
from pipeline.exceptions import CovarianceError, DataError
from pipeline.families import MCLUST_MODELS, get_family
from pipeline.options import INIT_SAMPLE_DEFAULT

CRITERIA = ("bic", "icl")
#: on the initialisation sample: starts per n_init, the EM iterations each of them gets, and the
#: iterations the best of a candidate's starts gets in all before it goes to the data
SAMPLE_STARTS_PER_INIT = 10
SHORT_EM_ITER = 5
SAMPLE_EM_ITER = 20
#: chunks of the sample (threads on the driver)
SAMPLE_CHUNKS = 8


class GaussianMixtureIC(DensityMixin, BaseEstimator):
    """Gaussian mixtures of every ``n_components`` x ``covariance_type``, the best by BIC or ICL.

    Every candidate and each of its ``n_init`` restarts is an EM run of its own, started exactly
    as ``GaussianMixture(n_components=k, covariance_type=ct, random_state=random_state,
    ...).fit`` starts it (the same initialisation passes, the same random draws), but the runs
    go in lockstep: each pass over the data makes the E step of every run still going, so a
    sweep's EM costs the passes of its slowest run rather than the sum of all.  A run stops at
    ``|change| < tol`` or ``max_iter``; a run whose component collapses (only without
    regularisation, ``reg_covar=0``) fails and is reported, and the sweep goes on.  The
    log-likelihood, BIC and ICL of each candidate come from the pass after its run stopped
    (one last pass for the slowest), not from passes of their own.  Each candidate keeps its best
    restart (the highest final lower bound, as ``GaussianMixture``), and the candidate with the
    lowest ``criterion`` is ``best_estimator_``.

    Parameters
    ----------
    n_components : int or iterable of int
        The numbers of components to try (default 1 to 9, as R's mclust).
    covariance_type : str, iterable of str, or "all"
        The covariance models to try: any of ``GaussianMixture``'s, or "all" for mclust's 14.
    criterion : {"bic", "icl"}
        What picks the best candidate (lower is better for both; see ``GaussianMixture.icl``).
    tol, reg_covar, max_iter, n_init, init_params, random_state, verbose, verbose_interval,
    dtype, cache, chunk_rows, nan_policy :
        As for :class:`pipeline.GaussianMixture`, for every candidate.
    init_sample : int or None
        Where the candidates start (default 20,000).  An integer: a uniform sample of about that
        many rows is drawn in the summary pass and held in memory on the driver (rows x features x 8
        bytes: 2.6 MB for 16 features).  There each candidate gets ``10 * n_init`` initialisations
        (``init_params``, the same strategies, drawn in turn from one generator seeded by
        ``random_state``; "kmeans" is scikit-learn's ``KMeans`` on the sample, in memory), each
        followed by 5 EM iterations ("small EM", Biernacki, Celeux and
        Govaert 2003); the best of them (the highest sample log-likelihood) goes on to at most 20
        iterations there, then to the data.  The initialisation costs no pass of its own,
        whatever the number of candidates and restarts.  None: every restart is initialised on the data and run
        on it, exactly as ``GaussianMixture(...).fit`` would (its passes, its result).
    incremental_blocks : int
        1 (the default): batch EM on the data, one M step per pass.  B > 1: incremental EM (Neal
        and Hinton 1998) over B groups of consecutive chunks, B M steps per pass, each on the sum
        of every group's latest statistics; it reaches EM's fixed points in fewer passes when
        EM's own steps are slow, and costs B computations (each over a B-th of the chunks) per
        pass.  After a first batch pass a run makes incremental passes until their objective
        changes by less than ``tol``, then goes back to exact batch iterations: it stops only on
        those, so the returned model meets ``tol`` on exact EM iterations (its ``history_`` has
        one entry per pass; those of incremental passes are listed in ``criteria_``'s
        ``incremental_passes``).  See :mod:`pipeline.engine.sweep`.
    stopping : {"change", "aitken"}
        "change" (the default, scikit-learn's): a run stops when its mean log-likelihood changes by
        less than ``tol``.  "aitken": it also needs Aitken's estimate of the limit of a linear
        tail (McNicholas 2010) within ``tol``, so a slow tail of small steps goes on.

    Attributes
    ----------
    best_estimator_ : the fitted ``GaussianMixture`` of the selected candidate.
    estimators_ : dict ``(n_components, covariance_type) -> GaussianMixture`` of every candidate
        fitted (failed ones are absent).
    criteria_ : list of dicts, one per candidate in the order tried: ``n_components``,
        ``covariance_type``, ``status`` ("ok" or "failed"), ``reason``, ``loglik`` (mean),
        ``bic``, ``icl``, ``aic``, ``n_parameters``, ``n_iter``, ``converged``.
    n_passes_ : passes over the data that ``fit`` made: the summary, the initialisations' and
        the lockstep EM's.
    memory_ : the memory estimate checked before the first pass (bytes): ``worker_bytes``, a
        worker's most in one pass (per thread a chunk and every candidate's statistics, plus a
        tree sum's vectors), against ``worker_budget`` (80% of the smallest worker memory limit,
        or this host's available memory), and ``driver_bytes`` (the sample, the candidates'
        parameters and statistics) against ``driver_budget``.  A sweep that does not fit is a
        :class:`pipeline.exceptions.MemoryBudgetError` before any pass.
    n_components_, covariance_type_ : those of the selected candidate.
    """

    def __init__(
        self,
        n_components=(1, 2, 3, 4, 5, 6, 7, 8, 9),
        *,
        covariance_type="full",
        criterion="bic",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        random_state=None,
        verbose=0,
        verbose_interval=10,
        dtype=None,
        cache="auto",
        chunk_rows="auto",
        nan_policy="raise",
        init_sample=INIT_SAMPLE_DEFAULT,
        incremental_blocks=1,
        stopping="change",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.criterion = criterion
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.dtype = dtype
        self.cache = cache
        self.chunk_rows = chunk_rows
        self.nan_policy = nan_policy
        self.init_sample = init_sample
        self.incremental_blocks = incremental_blocks
        self.stopping = stopping

    # ------------------------------------------------------------------ candidates
    def _candidates(self) -> list[tuple[int, str]]:
        ks = self.n_components
        ks = [ks] if isinstance(ks, numbers.Integral) else list(ks) if isinstance(ks, Iterable) else [ks]
        if not ks or any(not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1 for k in ks):
            raise ValueError(f"GaussianMixtureIC parameter 'n_components' must be an integer >= 1 or a non-empty "
                             f"list of them; got {self.n_components!r}")
        cts = self.covariance_type
        cts = list(MCLUST_MODELS) if cts == "all" else [cts] if isinstance(cts, str) else list(cts)
        if not cts:
            raise ValueError("GaussianMixtureIC parameter 'covariance_type' is an empty list")
        families = [get_family(ct).name for ct in cts]  # raises for an unknown name
        if len(set(families)) != len(families) or len(set(ks)) != len(ks):
            raise ValueError(f"GaussianMixtureIC: n_components {self.n_components!r} and covariance_type "
                             f"{self.covariance_type!r} name a candidate twice (full is VVV, tied EEE, diag VVI, "
                             "spherical VII)")
        b = self.incremental_blocks
        if not isinstance(b, numbers.Integral) or isinstance(b, bool) or b < 1:
            raise ValueError(f"GaussianMixtureIC parameter 'incremental_blocks' must be an integer >= 1; got {b!r}")
        if self.stopping not in STOPPING:
            raise ValueError(f"GaussianMixtureIC parameter 'stopping' must be one of {', '.join(STOPPING)}; "
                             f"got {self.stopping!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"GaussianMixtureIC parameter 'criterion' must be one of {', '.join(CRITERIA)}; "
                             f"got {self.criterion!r}")
        return [(int(k), ct) for ct in cts for k in ks]

    def _estimator(self, k: int, ct: str) -> GaussianMixture:
        return GaussianMixture(
            k, covariance_type=ct, tol=self.tol, reg_covar=self.reg_covar, max_iter=self.max_iter,
            n_init=self.n_init, init_params=self.init_params, random_state=self.random_state, dtype=self.dtype,
            cache=self.cache, chunk_rows=self.chunk_rows, nan_policy=self.nan_policy,
        )

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, sample_weight=None):
        """Fit every candidate (see the class docstring); ``sample_weight`` as for
        ``GaussianMixture.fit`` (then BIC's n is the total weight)."""
        with single_threaded_blas(), verbose_logging(self.verbose), counting_passes() as passes:
            self._fit(X, sample_weight)
        self.n_passes_ = passes.n
        if self.verbose:
            logger.info(f"sweep: {len(self.criteria_)} candidates in {self.n_passes_} passes over the data; "
                        f"selected {self.n_components_} {self.covariance_type_} by {self.criterion.upper()}")
        return self

    def _fit(self, X, sample_weight):
        t_start = time.perf_counter()
        candidates = self._candidates()
        estimators = [self._estimator(k, ct) for k, ct in candidates]
        sweep = SweepStart(estimators, self.init_sample, blocks=self.incremental_blocks)
        X, was_dask, weights = sweep.validate(self, X, sample_weight)
        dtype = sweep.dtype
        if should_cache(X, self.cache, was_dask):
            record_pass()  # persisting reads every chunk once
            X = X.persist()
            weights = None if weights is None else weights.persist()
        self.memory_ = sweep.check_memory(X)
        summary = summarize(X, "X", self.nan_policy, weights, sample=sweep.sample(X.shape[0]))  # the sample: this pass
        X, weights, marginalize = sweep.em_data(X, summary, weights)
        runs = sweep.runs(X, summary, weights)
        if sweep.sample_rows is not None:
            self.init_sample_rows_ = sweep.sample_rows
        n_em = run_lockstep(X, [r for rs in runs for r in rs], tol=self.tol, max_iter=self.max_iter, dtype=dtype,
                            weights=weights, marginalize=marginalize, callback=self._progress,
                            blocks=self.incremental_blocks, stopping=self.stopping)
        out_dtype = "float32" if X.dtype == np.float32 and dtype == "float32" else "float64"
        self.criteria_, self.estimators_ = [], {}
        for (k, ct), est, rs in zip(candidates, estimators, runs):
            self.criteria_.append(self._settle(k, ct, est, rs, dtype, out_dtype))
        fitted = [c for c in self.criteria_ if c["status"] == "ok"]
        if not fitted:
            raise CovarianceError(f"every candidate failed: {self.criteria_[0]['reason']}")
        best = min(fitted, key=lambda c: c[self.criterion])
        self.n_components_, self.covariance_type_ = best["n_components"], best["covariance_type"]
        self.best_estimator_ = self.estimators_[self.n_components_, self.covariance_type_]
        self.n_features_in_ = X.shape[1]
        self.n_em_passes_ = n_em
        self.fit_seconds_ = time.perf_counter() - t_start
        b = self.best_estimator_
        warn_not_converged(EMResult(b._mixture, b.history_, b.converged_, b.n_iter_), self.max_iter)

    def _progress(self, info):
        if self.verbose and (info.n_pass % self.verbose_interval == 0 or self.verbose >= 2):
            logger.info(f"  pass {info.n_pass}: {info.n_em} EM runs, {info.n_scored} scored, {info.seconds:.2f} s")

    def _settle(self, k, ct, est: GaussianMixture, rs: list[LockstepRun], dtype, out_dtype) -> dict:
        """The candidate's best restart as its fitted estimator, and its line of ``criteria_``."""
        entry = {"n_components": k, "covariance_type": ct, "status": "ok", "reason": None, "loglik": None,
                 "bic": None, "icl": None, "aic": None, "n_parameters": None, "n_iter": None, "converged": False}
        settled = settle_runs(est, rs, dtype, out_dtype)
        if settled is None:
            return {**entry, "status": "failed", "reason": rs[0].reason}
        self.estimators_[k, ct] = est
        return {**entry, **settled}

    # ------------------------------------------------------------------ the selected model
    def _best(self) -> GaussianMixture:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_

    def predict(self, X):
        return self._best().predict(X)

    def predict_proba(self, X):
        return self._best().predict_proba(X)

    def score_samples(self, X):
        return self._best().score_samples(X)

    def score(self, X, y=None, sample_weight=None):
        return self._best().score(X, sample_weight=sample_weight)

    def fit_predict(self, X, y=None):
        return self.fit(X).predict(X)


class SweepStart:
    """The start of a lockstep sweep, one preparation for :meth:`GaussianMixtureIC.fit` and
    ``gmm-pipeline run`` (:mod:`pipeline.batch.runner`), in the order of the passes:

    1. :meth:`validate`, before any pass: the data, every candidate's parameters, the compute
       dtype (``dtype``), the weights;
    2. :meth:`check_memory`, before any pass;
    3. :meth:`sample`: what the summary pass draws (``summarize(..., sample=...)``);
    4. :meth:`em_data`, after the summary pass: the data the EM passes run on (``nan_policy``);
    5. :meth:`runs`: each candidate's runs, from the sample or initialised on the data.

    ``estimators``: one ``GaussianMixture`` per candidate, with the parameters its own fit would
    have (shared but for ``n_components`` and ``covariance_type``).  ``init_sample``: as
    ``GaussianMixtureIC``'s (None: each candidate's ``n_init`` restarts start on the data as its
    fit starts them; an integer: one start per candidate, from the sample).  ``name``: the data
    in error messages.  ``blocks``: ``incremental_blocks`` (incremental EM keeps statistics per
    group on the driver).
    """

    def __init__(self, estimators: list[GaussianMixture], init_sample: int | None, name: str = "X", blocks: int = 1):
        if init_sample is not None and (not isinstance(init_sample, numbers.Integral) or isinstance(init_sample, bool)
                                        or init_sample < 1):
            raise ValueError(f"GaussianMixtureIC parameter 'init_sample' must be an integer >= 1 or None; "
                             f"got {init_sample!r}")
        self.estimators, self.init_sample, self.name, self.blocks = estimators, init_sample, name, blocks
        first = estimators[0]
        self.n_init, self.nan_policy, self.tol, self.max_iter = first.n_init, first.nan_policy, first.tol, first.max_iter
        self.dtype = None  # the compute dtype, set by validate
        self.sample_rows = None  # the rows of the sample the starts were made on (set by runs, with init_sample)

    @property
    def runs_per_candidate(self) -> int:
        """A candidate's runs on the data: its ``n_init`` restarts, or its one start from the sample."""
        return self.n_init if self.init_sample is None else 1

    def validate(self, owner, X, sample_weight=None):
        """X as a row-chunked Dask array (``owner``'s ``n_features_in_`` set), checked against
        every candidate's parameters; sets ``dtype``.  Returns (X, input_was_dask, the
        validated weights or None)."""
        first = self.estimators[0]
        X, was_dask = validate_input(owner, X, reset=True, name=self.name, chunk_rows=first.chunk_rows)
        for est in self.estimators:
            est._check_parameters(X.shape[0], X.shape[1])
        self.dtype = first._compute_dtype(X)
        weights = None if sample_weight is None else validate_weights(sample_weight, X, self.name)
        return X, was_dask, weights

    def check_memory(self, X, sample: bool = True) -> dict:
        """Worker and driver memory of the sweep's passes against what they may use, before any
        pass (:func:`pipeline.engine.resources.check_sweep_memory`); ``sample=False``: no
        sample is drawn (the runs come from a checkpoint)."""
        sample = sample and self.init_sample is not None
        candidates = [(est.n_components, est.covariance_type) for est in self.estimators]
        d = X.shape[1]
        per_data = self.runs_per_candidate
        lengths = [vector_length(ct, k, d) + 3 for k, ct in candidates]
        params = [8 * k * (d * d + d + 1) * 3 for k, _ in candidates]  # weights, means, covariances, factors
        on_sample = SAMPLE_STARTS_PER_INIT * self.n_init if sample else 0
        sample_rows = min(int(self.init_sample) * 2, X.shape[0]) if sample else 0
        kept = 2 + (self.blocks if self.blocks > 1 else 0)  # incremental EM keeps statistics per group
        driver = (3 * 8 * sample_rows * (d + 1) + sum(params) * (on_sample + per_data)
                  + kept * 8 * sum(lengths) * per_data)
        return check_sweep_memory(X, sum(lengths) * per_data, driver, SPLIT_EVERY)

    def sample(self, n_rows: int) -> tuple | None:
        """``summarize``'s ``sample=(fraction, seed)`` for data of ``n_rows`` rows (about
        ``init_sample`` rows, seeded from ``random_state``), or None without ``init_sample``."""
        if self.init_sample is None:
            return None
        seed = int(self.estimators[0]._rng().integers(2**31))
        return min(1.0, int(self.init_sample) / n_rows), seed

    def em_data(self, X, summary, weights):
        """(the data, its weights, whether EM marginalises missing values) of the EM passes:
        under ``nan_policy="omit"`` the complete rows (fewer than the largest ``n_components``
        is a DataError, as for a fit)."""
        if self.nan_policy == "omit":
            k = max(est.n_components for est in self.estimators)
            if summary.n_samples < k:
                raise DataError(
                    f"{self.name}: nan_policy='omit' leaves {summary.n_samples} complete rows of {summary.n_rows}, "
                    f"fewer than n_components={k}; use nan_policy='marginalize'"
                )
            X, weights = complete_rows(X, summary, weights)
        return X, weights, self.nan_policy == "marginalize" and summary.n_incomplete > 0

    def runs(self, X, summary, weights) -> list[list[LockstepRun]]:
        """Each candidate's runs on ``X`` (:meth:`em_data`'s): with ``init_sample`` one start
        from the summary's sample (:meth:`starts_from_sample`), else its ``n_init`` restarts
        initialised on the data as its ``GaussianMixture.fit`` initialises them (under
        "marginalize" on its own :func:`initialisation_data`)."""
        if self.init_sample is not None:
            starts = self.starts_from_sample(summary, weighted=weights is not None)
            return [[LockstepRun(r.params, est._updater(summary), status="failed" if r.status == "failed" else "running",
                                 reason=r.reason and f"on the initialisation sample: {r.reason}")]
                    for r, est in zip(starts, self.estimators)]
        runs = []
        for est in self.estimators:
            init_X, init_summary, init_weights = X, summary, weights
            if self.nan_policy == "marginalize":
                init_X, init_summary, init_weights = initialisation_data(X, summary, est.n_components, weights)
            runs.append(_starts(est, self.n_init, init_X, init_summary, init_weights, self.dtype, est._updater(summary)))
        return runs

    def starts_from_sample(self, summary, weighted: bool) -> list[LockstepRun]:
        """One start (a run on the sample) per candidate from the uniform sample of about
        ``init_sample`` rows drawn in the summary pass, held in memory (under
        ``nan_policy="marginalize"`` its complete rows if there are enough of them, as for a fit,
        else every row with its NaN replaced by the feature's mean): each candidate's
        ``SAMPLE_STARTS_PER_INIT * n_init`` initialisations are made on it, each followed by
        ``SHORT_EM_ITER`` EM iterations (all in lockstep, on the driver's threads); the start of
        the highest sample log-likelihood goes on to ``SAMPLE_EM_ITER`` iterations and is the
        start on the data (a candidate whose every start failed on the sample fails)."""
        S, Sw, estimators, dtype = *summary.sample, self.estimators, self.dtype
        if summary.n_incomplete and self.nan_policy == "marginalize":
            complete = ~np.isnan(S).any(axis=1)
            k_max = max(est.n_components for est in estimators)
            if complete.sum() >= INIT_MIN_COMPLETE_PER_PARAMETER * k_max * (S.shape[1] + 1):
                S, Sw = S[complete], Sw[complete]
            else:
                S = np.where(np.isnan(S), summary.mean, S)
        self.sample_rows = len(S)
        if len(S) < max(est.n_components for est in estimators):
            raise DataError(f"{self.name}: the initialisation sample has {len(S)} rows, fewer than the largest n_components; "
                            "raise init_sample")
        # in memory, on the driver's threads: no pass over the data
        with counting_passes(), dask.config.set(scheduler="threads"):
            Sd = da.from_array(S, chunks=(max(1, -(-len(S) // SAMPLE_CHUNKS)), S.shape[1]))
            Swd = da.from_array(Sw, chunks=(Sd.chunks[0],)) if weighted else None
            s_summary = summarize(Sd, "the initialisation sample", "raise", Swd)
            runs = [_starts(est, self.n_init * SAMPLE_STARTS_PER_INIT, Sd, s_summary, Swd, dtype,
                            est._updater(s_summary), in_memory=(S, Sw if weighted else None)) for est in estimators]
            run_lockstep(Sd, [r for rs in runs for r in rs], tol=self.tol, max_iter=min(self.max_iter, SHORT_EM_ITER),
                         dtype=dtype, weights=Swd)
            starts = []
            for rs in runs:  # each candidate's best short run goes on, then to the data
                done = [r for r in rs if r.status != "failed" and r.scores is not None]
                best = max(done, key=lambda r: r.scores[0] / r.scores[1]) if done else rs[0]
                if best.status == "max_iter":
                    best.status, best.scores = "running", None
                starts.append(best)
            run_lockstep(Sd, starts, tol=self.tol, max_iter=min(self.max_iter, SAMPLE_EM_ITER), dtype=dtype, weights=Swd)
        return starts


def settle_runs(est: GaussianMixture, rs: list[LockstepRun], dtype, out_dtype) -> dict | None:
    """A candidate's lockstep runs (its restarts, stopped and scored) settled as ``est.fit``
    settles its restarts: the one of the highest final lower bound (the first of equals) becomes
    ``est``'s fitted state (``best_init_``, ``init_history_`` too).  Returns its figures from the
    scoring pass (``loglik``, ``bic``, ``icl``, ``aic``, ``n_parameters``, ``n_iter``,
    ``converged``, ``best_init``, ``failed_restarts``, ``incremental_passes``; the criteria as
    ``GaussianMixture.information_criteria`` computes them), or None if every run failed."""
    done = [(i, r) for i, r in enumerate(rs) if r.status != "failed"]
    if not done:
        return None
    best_i, best = done[0]
    for i, r in done[1:]:
        if r.result.lower_bound > best.result.lower_bound:
            best_i, best = i, r
    result = best.result
    est._set_fitted(result, dtype, out_dtype)
    est.best_init_ = best_i
    est.init_history_ = [r.history for r in rs]
    est.n_features_in_ = best.params.n_features
    ic = criteria_from_sums(*best.scores, best.params.n_parameters())
    return {"loglik": ic["loglik"], "bic": float(ic["bic"]), "icl": float(ic["icl"]), "aic": float(ic["aic"]),
            "n_parameters": int(ic["n_parameters"]), "n_iter": result.n_iter, "converged": bool(result.converged),
            "best_init": best_i, "failed_restarts": [r.reason for r in rs if r.status == "failed"],
            "incremental_passes": len(best.incremental)}


def _starts(est: GaussianMixture, n_init: int, X, summary, weights, dtype, updater, in_memory=None) -> list[LockstepRun]:
    """``n_init`` runs started as ``est.fit`` starts its restarts (one random generator, drawn in
    turn); an initialisation whose component collapses (``reg_covar=0``) is a failed run.

    ``in_memory``: (rows, weights or None), the NumPy form of ``X`` when it is the initialisation
    sample; then ``init_params="kmeans"`` is scikit-learn's ``KMeans`` (k-means++ seeding and
    Lloyd, one init, seeded from the generator) on those rows, whose centres start the M step,
    instead of k-means|| and Lloyd made of Dask passes; on one thread (see
    :func:`pipeline.engine.resources.single_threaded`)."""
    rng, runs = est._rng(), []
    for _ in range(n_init):
        try:
            if in_memory is not None and est.init_params == "kmeans":
                from sklearn.cluster import KMeans

                rows, w = in_memory
                km = KMeans(est.n_components, n_init=1, random_state=int(rng.integers(2**31)))
                with single_threaded():
                    centres = km.fit(rows, sample_weight=w).cluster_centers_
                params = initialize(X, summary, est.n_components, est.covariance_type, est.init_params, rng,
                                    est.reg_covar, dtype, means_init=centres, weights=weights)
            else:
                params = est._initial_params(X, summary, rng, dtype, weights)
            runs.append(LockstepRun(params, updater))
        except CovarianceError as exc:
            runs.append(LockstepRun(None, updater, status="failed", reason=f"initialisation: {exc}"))
    return runs


__all__ = ["GaussianMixtureIC", "SweepStart"]
