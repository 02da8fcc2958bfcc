"""The :class:`GaussianMixture` estimator: scikit-learn's interface over out-of-core, distributed EM.

``fit`` accepts a NumPy array or a Dask array (read from Zarr with :func:`pipeline.open_dataset`,
say).  All heavy work runs chunk by chunk on the active Dask scheduler: the threaded scheduler
by default, or a ``distributed`` cluster when a ``Client`` is active.  For Dask input,
``predict``/``predict_proba``/``score_samples`` return lazy Dask arrays with the input's row
chunks; for NumPy input they return NumPy arrays.

Saved models (:meth:`GaussianMixture.save`) are a ``.npz`` archive of plain arrays plus JSON
metadata with a SHA-256 checksum of each array: no pickle, loading never executes code
(:mod:`pipeline.estimators.persistence`).
"""

from __future__ import annotations

import inspect
import numbers
import sys
import time

import dask
import dask.array as da
import numpy as np

from pipeline.core.params import MixtureParams
from pipeline.core.state import EMResult, FitState
from pipeline.engine.em import IterationInfo, run_em, warn_not_converged
from pipeline.engine.graph import reduce_blocks
from pipeline.engine.init import initialize
from pipeline.engine.resources import should_cache, single_threaded_blas
from pipeline.engine.summary import summarize
from pipeline.estimators import persistence
from pipeline.estimators.validation import check_array
from pipeline.exceptions import DataError
from pipeline.families import COVARIANCE_TYPES, get_family
from pipeline.kernels.cpu import labels_block, proba_block, score_block, score_sum_block
from pipeline.options import CACHE_MODES, DTYPES, INIT_PARAMS, check_chunk_rows


class GaussianMixture:
    """Gaussian mixture model fitted by EM on chunked (possibly larger-than-memory) data.

    Parameters are scikit-learn's (see ``sklearn.mixture.GaussianMixture``) plus:

    dtype : {"float64", "float32"}
        Compute precision of the E step and of the statistics' GEMMs.  Statistics are always
        accumulated in float64 across blocks and chunks.
    cache : {"auto", "memory", "none"}
        Whether to keep the data in (worker) memory between iterations.  "auto" persists data
        that is already in memory (NumPy input, persisted Dask arrays) or small (< 1/4 of the
        available worker memory), and streams it from its source (e.g. Zarr) every iteration
        otherwise.
    chunk_rows : int, "auto" or None
        Rows per chunk when a NumPy array is given (Dask arrays keep their chunks): "auto"
        (default) about 64 MiB and at most 262,144 rows per chunk, at least 16 chunks of
        >= 1 MiB (:func:`pipeline.data.chunking.auto_chunk_rows`); None: one chunk.
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        verbose=0,
        verbose_interval=10,
        dtype="float64",
        cache="auto",
        chunk_rows="auto",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.dtype = dtype
        self.cache = cache
        self.chunk_rows = chunk_rows

    # ------------------------------------------------------------------ sklearn plumbing
    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p for p in sig.parameters if p != "self")

    def get_params(self, deep=True):
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(
                    f"Invalid parameter {key!r} for estimator GaussianMixture. Valid parameters are: {valid!r}."
                )
            setattr(self, key, value)
        return self

    def __repr__(self):
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values() if p.name != "self"
        }
        changed = []
        for k, v in self.get_params().items():
            d = defaults.get(k)
            same = v is d or (not isinstance(v, np.ndarray) and not isinstance(d, np.ndarray) and v == d)
            if not same:
                changed.append(f"{k}={v!r}")
        return f"GaussianMixture({', '.join(changed)})"

    def __sklearn_tags__(self):
        """Estimator tags for scikit-learn tooling (only called by scikit-learn itself)."""
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type="clusterer", target_tags=TargetTags(required=False))

    _estimator_type = "clusterer"

    # ------------------------------------------------------------------ validation
    def _validate_params(self, n_samples):
        def err(name, msg):
            raise ValueError(f"GaussianMixture parameter {name!r} {msg}; got {getattr(self, name)!r}")

        def integer(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        if not integer(self.n_components) or self.n_components < 1:
            err("n_components", "must be an integer >= 1")
        try:
            get_family(self.covariance_type)
        except ValueError:
            err("covariance_type", f"must be one of {', '.join(COVARIANCE_TYPES)}")
        if not isinstance(self.tol, numbers.Real) or isinstance(self.tol, bool) or self.tol < 0:
            err("tol", "must be a number >= 0")
        if not isinstance(self.reg_covar, numbers.Real) or isinstance(self.reg_covar, bool) or self.reg_covar < 0:
            err("reg_covar", "must be a number >= 0")
        if not integer(self.max_iter) or self.max_iter < 0:
            err("max_iter", "must be an integer >= 0")
        if not integer(self.n_init) or self.n_init < 1:
            err("n_init", "must be an integer >= 1")
        if self.init_params not in INIT_PARAMS:
            err("init_params", f"must be one of {', '.join(INIT_PARAMS)}")
        if str(self.dtype) not in DTYPES:
            err("dtype", f"must be one of {', '.join(DTYPES)}")
        if self.cache not in CACHE_MODES:
            err("cache", f"must be one of {', '.join(CACHE_MODES)}")
        check_chunk_rows(self.chunk_rows)
        if n_samples < self.n_components:
            raise DataError(
                f"Expected n_samples >= n_components but got n_components = {self.n_components}, "
                f"n_samples = {n_samples}"
            )

    def _validate_inits(self, n_features):
        k, d = self.n_components, n_features
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (k,):
                raise ValueError(f"weights_init must have shape ({k},); got {w.shape}")
            if np.any(w < 0) or np.any(w > 1) or not np.isclose(w.sum(), 1.0, atol=1e-6):
                raise ValueError(f"weights_init must be in [0, 1] and sum to 1; got sum {w.sum():.6g}")
        if self.means_init is not None:
            m = np.asarray(self.means_init, dtype=np.float64)
            if m.shape != (k, d):
                raise ValueError(f"means_init must have shape ({k}, {d}); got {m.shape}")
        if self.precisions_init is not None:
            shape = get_family(self.covariance_type).covariance_shape(k, d)
            p = np.asarray(self.precisions_init, dtype=np.float64)
            if p.shape != shape:
                raise ValueError(
                    f"precisions_init for covariance_type={self.covariance_type!r} must have shape {shape}; got {p.shape}"
                )

    def _rng(self):
        rs = self.random_state
        if isinstance(rs, np.random.Generator):
            return rs
        if isinstance(rs, np.random.RandomState):
            return np.random.default_rng(rs.randint(2**31))
        return np.random.default_rng(rs)

    # ------------------------------------------------------------------ caching
    def _maybe_cache(self, X: da.Array, was_dask: bool) -> da.Array:
        """Persist X in (worker) memory if :func:`should_cache` says so; sets ``data_cached_``."""
        self.data_cached_ = should_cache(X, self.cache, was_dask)
        return X.persist() if self.data_cached_ else X

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, *, callback=None, resume=None, data_name=None, summary=None):
        """Fit by EM.

        callback : called as ``callback(info)`` after every EM iteration with an
            :class:`pipeline.engine.em.IterationInfo` whose ``state`` (a :class:`FitState`) is enough to
            resume the fit later (the CLI checkpoints it).
        resume : a :class:`FitState` from such a callback: the fit continues from it, with the
            same result as an uninterrupted fit.
        data_name : what to call the data in error messages (e.g. its path); default "X".
        summary : the :class:`pipeline.engine.summary.DataSummary` of X if the caller already made that pass
            (row count, moments, finiteness check); else the fit makes it.
        """
        with single_threaded_blas():
            self._fit(X, callback=callback, resume=resume, data_name=data_name, summary=summary)
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).predict(X)

    def _fit(self, X, callback=None, resume=None, data_name=None, summary=None):
        t_start = time.perf_counter()
        name = data_name or "X"
        X, was_dask = check_array(X, name=name, chunk_rows=self.chunk_rows)
        self._validate_params(X.shape[0])
        self._validate_inits(X.shape[1])
        X = self._maybe_cache(X, was_dask)
        if summary is None:
            summary = summarize(X, name)
        self.n_features_in_ = X.shape[1]
        rng = self._rng()
        state = FitState() if resume is None else resume
        for init in range(state.init, self.n_init):
            if self.verbose:
                print(f"Initialization {init}", file=sys.stderr)
            if resume is not None and init == resume.init and resume.params is not None:
                rng.bit_generator.state = resume.rng_state
                params0, history = resume.params, resume.history
            else:
                params0 = initialize(
                    X, summary, self.n_components, self.covariance_type, self.init_params, rng,
                    self.reg_covar, self.dtype, self.weights_init, self.means_init, self.precisions_init,
                )
                history = []
            state.init, state.rng_state = init, rng.bit_generator.state
            if self.max_iter == 0:
                result = EMResult(params0, [], False, 0)
            else:
                result = run_em(
                    X, params0, tol=self.tol, max_iter=self.max_iter, reg_covar=self.reg_covar,
                    dtype=str(self.dtype), scale=summary.scale, history=history, name=name,
                    callback=self._make_callback(callback, state),
                )
            state.init_history.append(result.history)
            if state.best is None or result.lower_bound > state.best.lower_bound:
                state.best, state.best_init = result, init
            state.params, state.history = None, []
        self._set_fitted(state.best)
        self.best_init_ = state.best_init
        self.init_history_ = state.init_history
        self.fit_seconds_ = time.perf_counter() - t_start
        warn_not_converged(state.best, self.max_iter)
        return X

    def _make_callback(self, user_callback, state):
        def cb(info: IterationInfo):
            state.params, state.history = info.params, list(info.history)
            info.state = state
            if self.verbose and (self.verbose >= 2 or info.n_iter % self.verbose_interval == 0):
                print(
                    f"  Iteration {info.n_iter}\t time lapse {info.seconds:.5f}s\t ll change {info.change:.5f}",
                    file=sys.stderr,
                )
            if user_callback is not None:
                user_callback(info)

        return cb

    def _set_fitted(self, result: EMResult):
        p = result.params
        self.weights_ = p.weights
        self.means_ = p.means
        self.covariances_ = p.covariances
        self.precisions_cholesky_ = p.precisions_cholesky
        self.precisions_ = p.family.precisions(p.precisions_cholesky)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bound_ = float(result.lower_bound)
        self.history_ = list(map(float, result.history))
        self.lower_bounds_ = self.history_

    def _params(self) -> MixtureParams:
        if not hasattr(self, "means_"):
            raise AttributeError(
                "This GaussianMixture instance is not fitted yet. Call 'fit' with appropriate arguments first."
            )
        return MixtureParams(self.weights_, self.means_, self.covariances_, self.precisions_cholesky_, self.covariance_type)

    # ------------------------------------------------------------------ prediction
    def _blockwise(self, X, fn, out_cols, dtype=np.float64):
        params = self._params()
        Xd, was_dask = check_array(X, n_features=self.n_features_in_, chunk_rows=self.chunk_rows)
        plan = params.plan(str(self.dtype))
        if not was_dask:
            return fn(np.asarray(X), plan)
        chunks = (Xd.chunks[0],) if out_cols is None else (Xd.chunks[0], (out_cols,))
        kwargs = {"drop_axis": 1} if out_cols is None else {}
        return Xd.map_blocks(
            fn, dask.delayed(plan, pure=True), chunks=chunks, dtype=dtype, meta=np.empty((0,) * len(chunks), dtype=dtype), **kwargs
        )

    def predict_proba(self, X):
        """Responsibilities (n_samples, n_components) float64."""
        return self._blockwise(X, proba_block, self.n_components)

    def predict(self, X):
        """Hard labels (n_samples,) int64: the component of highest responsibility."""
        return self._blockwise(X, labels_block, None, dtype=np.int64)

    def score_samples(self, X):
        """log p(x) per sample (n_samples,) float64."""
        return self._blockwise(X, score_block, None)

    def score(self, X, y=None):
        """Mean log-likelihood of X (a float), one pass over the data."""
        return self.information_criteria(X)["loglik"]

    def information_criteria(self, X) -> dict:
        """One pass: mean log-likelihood ``loglik``, ``n_samples``, ``bic`` and ``aic`` of X."""
        params = self._params()
        Xd, _ = check_array(X, n_features=self.n_features_in_, chunk_rows=self.chunk_rows)
        plan = params.plan(str(self.dtype))
        total, n = reduce_blocks(Xd, score_sum_block, 2, dask.delayed(plan, pure=True))
        loglik, p = float(total / n), params.n_parameters()
        return {
            "loglik": loglik,
            "n_samples": int(n),
            "n_parameters": p,
            "bic": -2 * loglik * n + p * np.log(n),
            "aic": -2 * loglik * n + 2 * p,
        }

    def _n_parameters(self):
        return self._params().n_parameters()

    def bic(self, X):
        """Bayesian information criterion of X (lower is better)."""
        return self.information_criteria(X)["bic"]

    def aic(self, X):
        """Akaike information criterion of X (lower is better)."""
        return self.information_criteria(X)["aic"]

    def sample(self, n_samples=1, random_state=None):
        """Draw ``n_samples`` points: returns (X (n, D), y (n,)) NumPy arrays."""
        if n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples}. The sampling requires at least one sample.")
        p = self._params()
        rng = np.random.default_rng(random_state if random_state is not None else self.random_state)
        counts = rng.multinomial(n_samples, p.weights / p.weights.sum())
        xs = p.family.sample(rng, p.means, p.covariances, counts)
        y = np.concatenate([np.full(c, k, dtype=np.int64) for k, c in enumerate(counts)])
        return np.vstack(xs), y

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Write the fitted model to ``path`` (.npz + JSON metadata, checksummed), atomically."""
        self._params()
        return persistence.save_model(self, path)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; raises ModelFileError if damaged or foreign."""
        return persistence.load_model(cls, path)


__all__ = ["GaussianMixture"]
