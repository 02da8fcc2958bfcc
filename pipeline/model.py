"""The :class:`GaussianMixture` estimator: scikit-learn's interface over out-of-core, distributed EM.

``fit`` accepts a NumPy array or a Dask array (read from Zarr with :func:`pipeline.io.open_dataset`,
say).  All heavy work runs chunk by chunk on the active Dask scheduler: the threaded scheduler
by default, or a ``distributed`` cluster when a ``Client`` is active.  For Dask input,
``predict``/``predict_proba``/``score_samples`` return lazy Dask arrays with the input's row
chunks; for NumPy input they return NumPy arrays.

Saved models (:meth:`GaussianMixture.save`) are a ``.npz`` archive of plain arrays plus JSON
metadata with a SHA-256 checksum of each array: no pickle, loading never executes code.
"""

from __future__ import annotations

import inspect
import numbers
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from pipeline.em import (
    EMResult,
    IterationInfo,
    reduce_blocks,
    run_em,
    single_threaded_blas,
    summarize,
    warn_not_converged,
)
from pipeline.exceptions import DataError, ModelFileError
from pipeline.gaussian import (
    COVARIANCE_TYPES,
    MixtureParams,
    log_responsibilities,
    precisions_from_cholesky,
)
from pipeline.init import INIT_PARAMS, initialize
from pipeline.io import auto_chunk_rows
from pipeline.stats import shifted_blocks

MODEL_FORMAT = "gmm-pipeline-model"
MODEL_FORMAT_VERSION = 1


def _is_dask(X) -> bool:
    return isinstance(X, da.Array)


def check_array(X, name="X", n_features=None, chunk_rows=None) -> tuple[da.Array, bool]:
    """Validate and wrap input as a row-chunked Dask array; returns (array, input_was_dask).

    Raises DataError for wrong ndim, non-numeric dtype, no rows or features, or a feature count
    other than ``n_features``.  Values are checked for NaN/inf by the first pass over the data.
    """
    was_dask = _is_dask(X)
    if not was_dask and not isinstance(X, np.ndarray):
        try:
            X = np.asarray(X)
        except Exception as exc:  # ragged lists and the like
            raise DataError(f"{name} cannot be converted to an array: {exc}") from exc
    if X.dtype.kind not in "iuf":
        raise DataError(
            f"{name} has dtype {X.dtype}; expected a real numeric dtype (float or integer)"
        )
    if X.ndim != 2:
        hint = " (use X.reshape(-1, 1) for a single feature)" if X.ndim == 1 else ""
        raise DataError(f"{name} must be 2-D (n_samples, n_features); got shape {X.shape}{hint}")
    if was_dask and any(math_isnan(c) for c in X.chunks[0]):
        X = X.compute_chunk_sizes()
    if X.shape[0] == 0:
        raise DataError(f"{name} has 0 samples (shape {X.shape}); at least one is required")
    if X.shape[1] == 0:
        raise DataError(f"{name} has 0 features (shape {X.shape})")
    if n_features is not None and X.shape[1] != n_features:
        raise DataError(
            f"{name} has {X.shape[1]} features, but the GaussianMixture was fitted with {n_features} features"
        )
    if not was_dask:
        if chunk_rows is None or (isinstance(chunk_rows, str) and chunk_rows == "auto"):
            rows = auto_chunk_rows(X.shape[0], X.shape[1], X.dtype.itemsize)
        elif isinstance(chunk_rows, (int, np.integer)) and not isinstance(chunk_rows, bool) and chunk_rows >= 1:
            rows = int(chunk_rows)
        else:
            raise ValueError(f"chunk_rows must be None, 'auto' or an integer >= 1, got {chunk_rows!r}")
        X = da.from_array(X, chunks=(min(rows, X.shape[0]), -1))
    elif X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return X, was_dask


def math_isnan(v) -> bool:
    return isinstance(v, float) and v != v


def _distributed_client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


@dataclass
class FitState:
    """Where a fit is: enough to resume it with the same result as an uninterrupted fit.

    ``init`` is the restart being run, ``params``/``history`` its EM state after the last
    completed iteration (None/[] before its first), ``rng_state`` the random generator's state
    after its initialisation, ``best``/``best_init`` the best finished restart so far and
    ``init_history`` the histories of finished restarts.
    """

    init: int = 0
    params: MixtureParams | None = None
    history: list = field(default_factory=list)
    rng_state: dict | None = None
    best: EMResult | None = None
    best_init: int = 0
    init_history: list = field(default_factory=list)


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
        Rows per chunk when a NumPy array is given (Dask arrays keep their chunks); None or
        "auto": about 64 MiB and at most 262,144 rows per chunk, at least 16 chunks of >= 1 MiB
        (:func:`pipeline.io.auto_chunk_rows`).
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
        chunk_rows=None,
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
        if self.covariance_type not in COVARIANCE_TYPES:
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
        if str(self.dtype) not in ("float32", "float64"):
            err("dtype", "must be 'float32' or 'float64'")
        if self.cache not in ("auto", "memory", "none"):
            err("cache", "must be 'auto', 'memory' or 'none'")
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
            from pipeline.gaussian import covariance_shape

            shape = covariance_shape(self.covariance_type, k, d)
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
            :class:`pipeline.em.IterationInfo` whose ``state`` (a :class:`FitState`) is enough to
            resume the fit later (the CLI checkpoints it).
        resume : a :class:`FitState` from such a callback: the fit continues from it, with the
            same result as an uninterrupted fit.
        data_name : what to call the data in error messages (e.g. its path); default "X".
        summary : the :class:`pipeline.em.DataSummary` of X if the caller already made that pass
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
        self.precisions_ = precisions_from_cholesky(p.precisions_cholesky, p.covariance_type)
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
        return self._blockwise(X, _proba_block, self.n_components)

    def predict(self, X):
        """Hard labels (n_samples,) int64: the component of highest responsibility."""
        return self._blockwise(X, _labels_block, None, dtype=np.int64)

    def score_samples(self, X):
        """log p(x) per sample (n_samples,) float64."""
        return self._blockwise(X, _score_block, None)

    def score(self, X, y=None):
        """Mean log-likelihood of X (a float), one pass over the data."""
        return self.information_criteria(X)["loglik"]

    def information_criteria(self, X) -> dict:
        """One pass: mean log-likelihood ``loglik``, ``n_samples``, ``bic`` and ``aic`` of X."""
        params = self._params()
        Xd, _ = check_array(X, n_features=self.n_features_in_, chunk_rows=self.chunk_rows)
        plan = params.plan(str(self.dtype))
        total, n = reduce_blocks(Xd, _score_sum_block, 2, dask.delayed(plan, pure=True))
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
        d = p.n_features
        xs = []
        for k, (mean, c) in enumerate(zip(p.means, counts)):
            if self.covariance_type == "full":
                xs.append(rng.multivariate_normal(mean, p.covariances[k], int(c), method="cholesky"))
            elif self.covariance_type == "tied":
                xs.append(rng.multivariate_normal(mean, p.covariances, int(c), method="cholesky"))
            elif self.covariance_type == "diag":
                xs.append(mean + rng.standard_normal((int(c), d)) * np.sqrt(p.covariances[k]))
            else:
                xs.append(mean + rng.standard_normal((int(c), d)) * np.sqrt(p.covariances[k]))
        y = np.concatenate([np.full(c, k, dtype=np.int64) for k, c in enumerate(counts)])
        return np.vstack(xs), y

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Write the fitted model to ``path`` (.npz + JSON metadata, checksummed), atomically."""
        from pipeline.io import write_archive

        self._params()
        arrays = {
            "weights": self.weights_,
            "means": self.means_,
            "covariances": self.covariances_,
            "precisions_cholesky": self.precisions_cholesky_,
            "history": np.asarray(self.history_, dtype=np.float64),
        }
        params = {
            k: _json_value(v)
            for k, v in self.get_params().items()
            if k not in ("weights_init", "means_init", "precisions_init")
        }
        if not isinstance(params["random_state"], (int, type(None))):
            params["random_state"] = None  # a Generator/RandomState object has no portable form
        meta = {
            "params": params,
            "attributes": {
                "converged_": self.converged_,
                "n_iter_": self.n_iter_,
                "lower_bound_": self.lower_bound_,
                "n_features_in_": int(self.n_features_in_),
            },
        }
        return write_archive(path, {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}, meta, MODEL_FORMAT, MODEL_FORMAT_VERSION)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; raises ModelFileError if damaged or foreign."""
        from pipeline.io import read_archive

        files, meta = read_archive(path, MODEL_FORMAT, MODEL_FORMAT_VERSION, error=ModelFileError)
        try:
            model = cls(**meta["params"])
            attrs = meta["attributes"]
            model.n_features_in_ = int(attrs["n_features_in_"])
            params = MixtureParams(
                files["weights"], files["means"], files["covariances"], files["precisions_cholesky"],
                meta["params"]["covariance_type"],
            )
            model._set_fitted(EMResult(params, list(files["history"]), bool(attrs["converged_"]), int(attrs["n_iter_"])))
            model.lower_bound_ = float(attrs["lower_bound_"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"model file {path} has inconsistent metadata: {exc}") from exc
        return model


def should_cache(X: da.Array, mode: str = "auto", was_dask: bool = True) -> bool:
    """Whether to keep X in (worker) memory between passes: ``mode`` "memory"/"none" decide;
    "auto" keeps NumPy input (on a cluster: sent to the workers once) and Dask data under a
    quarter of the workers' (or this host's) memory.

    Streamed data is re-read from its source (e.g. Zarr) on every pass, one chunk at a time per
    worker thread, so worker memory stays O(chunk + K*D^2) whatever n_samples is.
    """
    if mode != "auto":
        return mode == "memory"
    client = _distributed_client()
    if not was_dask:
        return client is not None
    return X.nbytes <= _memory_budget(client)


def _memory_budget(client) -> float:
    """Bytes of data we are willing to persist: a quarter of the workers' (or host's) memory."""
    if client is not None:
        from pipeline.cluster import worker_memory_limits

        limits = worker_memory_limits(client)
        if limits and all(limits):
            return 0.25 * sum(limits)
    try:
        import psutil

        return 0.25 * psutil.virtual_memory().available
    except ImportError:  # pragma: no cover
        return 0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ---------------------------------------------------------------------- block kernels


def _json_value(v):
    """NumPy scalars and dtypes as plain Python values (e.g. n_components=np.int64(3))."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.dtype):
        return v.name
    return v


def _iter_log_resp(x, plan):
    for xc in shifted_blocks(x, plan.shift, plan.dtype):
        lpx, log_resp = log_responsibilities(xc, plan)
        if not np.all(np.isfinite(lpx)):
            raise DataError(
                f"{int(np.count_nonzero(~np.isfinite(lpx)))} rows to predict have NaN/inf values "
                "(or values too large for the model's dtype); remove or impute them first"
            )
        yield lpx, log_resp


def _proba_block(x, plan):
    out = np.empty((x.shape[0], plan.n_components))  # filled block by block: no second copy
    start = 0
    for _, lr in _iter_log_resp(x, plan):
        np.exp(lr, out=out[start : start + lr.shape[0]])
        start += lr.shape[0]
    return out


def _labels_block(x, plan):
    if x.shape[0] == 0:
        return np.empty((0,), dtype=np.int64)
    return np.concatenate([lr.argmax(axis=1) for _, lr in _iter_log_resp(x, plan)]).astype(np.int64)


def _score_block(x, plan):
    if x.shape[0] == 0:
        return np.empty((0,))
    return np.concatenate([lpx for lpx, _ in _iter_log_resp(x, plan)])


def _score_sum_block(x, plan):
    return np.array([_score_block(x, plan).sum(), x.shape[0]])


__all__ = ["GaussianMixture", "FitState", "check_array"]
