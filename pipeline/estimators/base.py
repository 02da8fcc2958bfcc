"""What every mixture estimator shares: scikit-learn's contract over out-of-core EM.

:class:`BaseMixture` holds the restarts loop (``n_init``), ``warm_start``, the convergence
bookkeeping and warning, verbose output, ``n_features_in_`` checks and the prediction methods
(``predict``/``predict_proba``/``score_samples``/``score``/``fit_predict``).  A subclass
supplies the model: its parameter checks, its initial parameters, its updater (the M step and
the objective, :mod:`pipeline.core.updaters`), its fitted attributes and its E-step plan.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

import dask
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted

from pipeline.core.state import EMResult, FitState
from pipeline.engine.em import IterationInfo, run_em, warn_not_converged
from pipeline.engine.graph import counting_passes, record_pass, reduce_blocks
from pipeline.engine.missing import complete_rows, initialisation_data
from pipeline.engine.resources import should_cache, single_threaded_blas
from pipeline.engine.summary import summarize
from pipeline.estimators.validation import validate_input, validate_weights
from pipeline.exceptions import DataError
from pipeline.kernels.predict import (
    criteria_sum_block,
    labels_block,
    proba_block,
    score_block,
    score_sum_block,
    weighted_criteria_sum_block,
)

logger = logging.getLogger("pipeline")


@contextmanager
def verbose_logging(verbose):
    """While fitting with ``verbose > 0``: if the "pipeline" logger has no handler that shows
    anything (the package installs only a NullHandler), one that writes to (the current)
    ``sys.stdout`` is attached and the level lowered to INFO."""
    if not verbose or any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class BaseMixture(DensityMixin, BaseEstimator):
    """Base class of the mixture estimators (scikit-learn's ``BaseMixture`` contract).

    Subclasses implement ``_check_parameters(n_samples, n_features)``,
    ``_compute_dtype(X)``, ``_initial_params(X, summary, rng, dtype, weights)``,
    ``_updater(summary)``, ``_set_fitted(result, dtype, out_dtype)`` and ``_plan()`` (the E-step plan of
    the fitted parameters) and keep the fitted parameters in ``self._mixture``.
    """

    def __init__(self, n_components, *, tol, reg_covar, max_iter, n_init, init_params, random_state,
                 warm_start, verbose, verbose_interval):
        self.n_components = n_components
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    # ------------------------------------------------------------------ helpers
    def _rng(self):
        rs = self.random_state
        if isinstance(rs, np.random.Generator):
            return rs
        if isinstance(rs, np.random.RandomState):
            return np.random.default_rng(rs.randint(2**31))
        return np.random.default_rng(rs)

    def _validate(self, X, *, reset, name="X", as_dask=True):
        chunk_rows = getattr(self, "chunk_rows", "auto")
        return validate_input(self, X, reset=reset, name=name, chunk_rows=chunk_rows, as_dask=as_dask)

    def _maybe_cache(self, X, was_dask):
        """Persist X in (worker) memory if :func:`should_cache` says so; sets ``data_cached_``."""
        self.data_cached_ = should_cache(X, getattr(self, "cache", "auto"), was_dask)
        if not self.data_cached_:
            return X
        record_pass()  # persisting reads every chunk once
        return X.persist()

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, sample_weight=None, *, callback=None, resume=None, data_name=None, summary=None):
        """Fit by EM (``n_init`` restarts, or one continued fit with ``warm_start``).

        sample_weight : optional (n_samples,) non-negative weights (NumPy, or Dask, rechunked
            to X's row chunks): every statistic, the initialisation (weighted k-means|| and
            Lloyd, weighted choice of rows) and the log-likelihood are weighted, as if row i
            were repeated w_i times (exactly so, from a given start, for integer weights); a
            weight of 0 drops its row.  ``lower_bound_`` is the weighted mean log-likelihood.

        callback : called as ``callback(info)`` after every EM iteration with an
            :class:`pipeline.engine.em.IterationInfo` whose ``state`` (a :class:`FitState`) is
            enough to resume the fit later (the CLI checkpoints it).

        ``n_passes_`` counts the passes over the data the fit made (the summary, the
        initialisation's and one per EM iteration; persisting cached data counts one).
        resume : a :class:`FitState` from such a callback: the fit continues from it, with the
            same result as an uninterrupted fit.
        data_name : what to call the data in error messages (e.g. its path); default "X".
        summary : the :class:`pipeline.engine.summary.DataSummary` of X if the caller already
            made that pass (row count, moments, finiteness check); else the fit makes it.
        """
        with single_threaded_blas(), verbose_logging(self.verbose), counting_passes() as passes:
            self._fit(X, callback=callback, resume=resume, data_name=data_name, summary=summary,
                      sample_weight=sample_weight)
        self.n_passes_ = passes.n
        return self

    def fit_predict(self, X, y=None):
        """Fit, then the labels of X (consistent with ``fit(X).predict(X)``)."""
        return self.fit(X).predict(X)

    def _fit(self, X, callback=None, resume=None, data_name=None, summary=None, sample_weight=None):
        t_start = time.perf_counter()
        name = data_name or "X"
        do_init = not (self.warm_start and resume is None and hasattr(self, "converged_"))
        if not do_init:
            check_is_fitted(self)
        X, was_dask = self._validate(X, reset=do_init, name=name)
        self._check_parameters(X.shape[0], X.shape[1])
        dtype = self._compute_dtype(X)
        weights = None if sample_weight is None else validate_weights(sample_weight, X, name)
        X = self._maybe_cache(X, was_dask)
        if weights is not None and self.data_cached_:
            weights = weights.persist()
        policy = getattr(self, "nan_policy", "raise")
        if (summary is None or (summary.nan_policy != policy and summary.n_incomplete)
                or summary.weighted != (weights is not None)):
            summary = summarize(X, name, policy, weights)
        self.n_incomplete_rows_, self.n_missing_values_ = int(summary.n_incomplete), int(summary.n_missing)
        marginalize = policy == "marginalize" and summary.n_incomplete > 0
        init_X, init_summary, init_weights = X, summary, weights
        if policy == "omit":
            if summary.n_samples < self.n_components:
                raise DataError(
                    f"{name}: nan_policy='omit' leaves {summary.n_samples} complete rows of {summary.n_rows}, fewer "
                    f"than n_components={self.n_components}; use nan_policy='marginalize'"
                )
            X, weights = complete_rows(X, summary, weights)
            init_X, init_weights = X, weights
        elif marginalize:
            init_X, init_summary, init_weights = initialisation_data(X, summary, self.n_components, weights)
        rng = self._rng()
        n_init = self.n_init if do_init else 1
        state = FitState() if resume is None else resume
        updater = self._updater(summary)
        for init in range(state.init, n_init):
            if self.verbose:
                logger.info("Initialization %d", init)
            t_init = time.perf_counter()
            start_bound = None
            if resume is not None and init == resume.init and resume.params is not None:
                rng.bit_generator.state = resume.rng_state
                params0, history = resume.params, resume.history
            elif do_init:
                params0, history = self._initial_params(init_X, init_summary, rng, dtype, init_weights), []
            else:
                params0, history, start_bound = self._mixture, [], self.lower_bound_
            state.init, state.rng_state = init, rng.bit_generator.state
            if self.max_iter == 0:
                result = EMResult(params0, [], False, 0)
            else:
                result = run_em(
                    X, params0, tol=self.tol, max_iter=self.max_iter, dtype=dtype, scale=summary.scale,
                    history=history, name=name, callback=self._make_callback(callback, state),
                    updater=updater, lower_bound=start_bound, weights=weights, marginalize=marginalize,
                )
                self._log_init_end(result, time.perf_counter() - t_init)
            state.init_history.append(result.history)
            if state.best is None or result.lower_bound > state.best.lower_bound:
                state.best, state.best_init = result, init
            state.params, state.history = None, []
        # float32 fitted attributes for float32 data computed in float32 (scikit-learn's rule);
        # otherwise float64, e.g. dtype="float32" compute on float64 data keeps float64 means
        out_dtype = "float32" if X.dtype == np.float32 and dtype == "float32" else "float64"
        self._set_fitted(state.best, dtype, out_dtype)
        self.best_init_ = state.best_init
        self.init_history_ = state.init_history
        self.fit_seconds_ = time.perf_counter() - t_start
        warn_not_converged(state.best, self.max_iter)
        return X

    def _log_init_end(self, result, seconds):
        if not self.verbose:
            return
        msg = "converged" if result.converged else "did not converge"
        if self.verbose >= 2:
            logger.info("Initialization %s. time lapse %.5fs\t lower bound %.5f.", msg, seconds, result.lower_bound)
        else:
            logger.info("Initialization %s.", msg)

    def _make_callback(self, user_callback, state):
        def cb(info: IterationInfo):
            state.params, state.history = info.params, list(info.history)
            info.state = state
            if self.verbose and info.n_iter % self.verbose_interval == 0:
                if self.verbose >= 2:
                    logger.info("  Iteration %d\t time lapse %.5fs\t ll change %.5f", info.n_iter, info.seconds, info.change)
                else:
                    logger.info("  Iteration %d", info.n_iter)
            if user_callback is not None:
                user_callback(info)

        return cb

    def _set_result(self, result: EMResult):
        """The convergence bookkeeping of the kept restart."""
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bound_ = float(result.lower_bound)
        self.history_ = [float(v) for v in result.history]
        self.lower_bounds_ = list(self.history_)

    # ------------------------------------------------------------------ prediction
    def _fitted_plan(self):
        check_is_fitted(self)
        return self._plan()

    def _blockwise(self, X, fn, out_cols, dtype):
        plan = self._fitted_plan()
        Xd, was_dask = self._validate(X, reset=False, as_dask=False)

        def kernel(block, p):
            return fn(block, p).astype(dtype, copy=False)

        if not was_dask:
            return kernel(Xd, plan)  # Xd: the validated NumPy array
        chunks = (Xd.chunks[0],) if out_cols is None else (Xd.chunks[0], (out_cols,))
        kwargs = {"drop_axis": 1} if out_cols is None else {}
        return Xd.map_blocks(
            kernel, dask.delayed(plan, pure=True), chunks=chunks, dtype=dtype,
            meta=np.empty((0,) * len(chunks), dtype=dtype), **kwargs,
        )

    def _out_dtype(self):
        return np.dtype(getattr(self, "_out_dtype_", "float64"))

    def predict_proba(self, X):
        """Responsibilities (n_samples, n_components), in the fitted dtype."""
        return self._blockwise(X, proba_block, self.n_components, self._out_dtype())

    def predict(self, X):
        """Hard labels (n_samples,) int64: the component of highest responsibility."""
        return self._blockwise(X, labels_block, None, np.int64)

    def score_samples(self, X):
        """log p(x) per sample (n_samples,), in the fitted dtype."""
        return self._blockwise(X, score_block, None, self._out_dtype())

    def _score_sum(self, X):
        """(sum of log p(x), n_samples) in one pass."""
        plan = self._fitted_plan()
        Xd, _ = self._validate(X, reset=False)
        total, n = reduce_blocks(Xd, score_sum_block, 2, dask.delayed(plan, pure=True))
        return float(total), int(n)

    def _criteria_sums(self, X, sample_weight=None):
        """(sum of log p(x), n_samples, sum of log max_k r_k(x)) in one pass; with
        ``sample_weight`` weighted sums, n_samples the total weight."""
        plan = self._fitted_plan()
        Xd, _ = self._validate(X, reset=False)
        if sample_weight is None:
            total, n, top = reduce_blocks(Xd, criteria_sum_block, 3, dask.delayed(plan, pure=True))
            return float(total), int(n), float(top)
        w = validate_weights(sample_weight, Xd)
        total, n, top = reduce_blocks((Xd, w), weighted_criteria_sum_block, 3, dask.delayed(plan, pure=True))
        return float(total), float(n), float(top)

    def score(self, X, y=None, sample_weight=None):
        """Mean log-likelihood of X (a float), one pass over the data; with
        ``sample_weight`` the weighted mean ``sum w log p(x) / sum w``."""
        if sample_weight is not None:
            total, n, _ = self._criteria_sums(X, sample_weight)
            return total / n
        total, n = self._score_sum(X)
        return total / n


__all__ = ["BaseMixture", "verbose_logging"]
