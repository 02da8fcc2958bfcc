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

import numbers

import numpy as np
from sklearn.utils.validation import check_is_fitted

from pipeline.core.params import MixtureParams
from pipeline.core.plan import OmitPlan
from pipeline.core.state import EMResult
from pipeline.core.updaters import MaximumLikelihood
from pipeline.engine.init import initialize
from pipeline.estimators import persistence
from pipeline.estimators.base import BaseMixture
from pipeline.exceptions import DataError
from pipeline.families import COVARIANCE_TYPES, get_family, to_family_form
from pipeline.options import CACHE_MODES, DTYPES, INIT_PARAMS, NAN_POLICIES, check_chunk_rows
from pipeline.storage.stores import location_of


def criteria_from_sums(total: float, n, top: float, n_parameters: int) -> dict:
    """``loglik`` (mean), ``n_samples``, ``n_parameters``, ``bic``, ``aic`` and ``icl`` from the
    sums of one scoring pass: ``total`` = sum of log p(x), ``n`` the rows (or the total weight),
    ``top`` = sum of log max_k r_k(x) (see :meth:`GaussianMixture.information_criteria`)."""
    loglik, p = total / n, n_parameters
    bic = -2 * loglik * n + p * np.log(n)
    return {"loglik": loglik, "n_samples": n, "n_parameters": p, "bic": bic, "aic": -2 * loglik * n + 2 * p,
            "icl": bic - 2 * top}


class GaussianMixture(BaseMixture):
    """Gaussian mixture model fitted by EM on chunked (possibly larger-than-memory) data.

    Parameters are scikit-learn's (see ``sklearn.mixture.GaussianMixture``, ``warm_start``
    included), with more covariance models, plus:

    covariance_type : str
        scikit-learn's "full", "tied", "diag", "spherical", or one of R mclust's 14 models
        "EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE", "EEV", "VEV",
        "EVV", "VVV" (:mod:`pipeline.families.mclust`; VVV, EEE, VVI and VII are full, tied,
        diag and spherical).  ``covariances_`` has the shape of the E-step structure: (K,)
        scalar, (K, D) diagonal, (K, D, D) ellipsoidal ((D, D) for tied/EEE).  For the mclust
        names ``precisions_init`` may also be given as (K, D, D) matrices.

    dtype : {None, "float64", "float32"}
        Compute precision of the E step and of the statistics' GEMMs.  None (default): the
        input's floating dtype (float32 data: float32; float64 and integer data: float64).
        The fitted attributes and ``predict_proba``/``score_samples`` are float32 when float32
        data is computed in float32, float64 otherwise.
        Statistics are always accumulated in float64 across blocks and chunks.
    cache : {"auto", "memory", "none"}
        Whether to keep the data in (worker) memory between iterations.  "auto" persists data
        that is already in memory (NumPy input, persisted Dask arrays) or small (< 1/4 of the
        available worker memory), and streams it from its source (e.g. Zarr) every iteration
        otherwise.
    chunk_rows : int, "auto" or None
        Rows per chunk when a NumPy array is given (Dask arrays keep their chunks): "auto"
        (default) about 64 MiB and at most 262,144 rows per chunk, at least 16 chunks of
        >= 1 MiB (:func:`pipeline.data.chunking.auto_chunk_rows`); None: one chunk.
    nan_policy : {"raise", "omit", "marginalize"}
        What NaN in X mean (inf is always an error).

        - "raise" (default): a NaN is an error naming its row chunks, as in scikit-learn.
        - "omit": rows with any NaN are left out of the fit (``n_incomplete_rows_`` says how
          many), and out of ``score``, ``bic``, ``aic`` and ``icl``; ``predict`` gives them
          the label -1, ``predict_proba`` and ``score_samples`` NaN.
        - "marginalize": NaN are values missing at random.  EM maximises the likelihood of
          the observed values: the E step uses each row's observed coordinates (the marginal
          Gaussian), the M step the conditional expectations ``E[x_m | x_o]`` and the
          conditional covariance of the missing values.  Complete rows keep the fast kernel;
          rows with NaN are grouped by missingness pattern in each chunk and computed in
          float64.  ``lower_bound_`` and ``score`` are the mean observed-data log-likelihood
          over every row, BIC's n the number of rows, and ``predict``, ``predict_proba`` and
          ``score_samples`` accept NaN (each row from its observed values).  The
          initialisation runs on the complete rows when there are at least
          ``n_components * (n_features + 1)`` of them, and otherwise on every row with its
          NaN replaced by the feature's observed mean.  A row with every value missing is an
          error.  With no NaN in X every result equals "raise"'s exactly.

        Fitted attributes ``n_incomplete_rows_`` and ``n_missing_values_`` count the rows
        with a NaN and the NaN values of the data ``fit`` saw.
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
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        dtype=None,
        cache="auto",
        chunk_rows="auto",
        nan_policy="raise",
    ):
        super().__init__(
            n_components, tol=tol, reg_covar=reg_covar, max_iter=max_iter, n_init=n_init,
            init_params=init_params, random_state=random_state, warm_start=warm_start,
            verbose=verbose, verbose_interval=verbose_interval,
        )
        self.covariance_type = covariance_type
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.dtype = dtype
        self.cache = cache
        self.chunk_rows = chunk_rows
        self.nan_policy = nan_policy

    # ------------------------------------------------------------------ validation
    def _check_parameters(self, n_samples, n_features):
        def err(name, msg):
            raise ValueError(f"GaussianMixture parameter {name!r} {msg}; got {getattr(self, name)!r}")

        def integer(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def real(v):
            return isinstance(v, numbers.Real) and not isinstance(v, bool)

        if not integer(self.n_components) or self.n_components < 1:
            err("n_components", "must be an integer >= 1")
        try:
            get_family(self.covariance_type)
        except ValueError:
            err("covariance_type", f"must be one of {', '.join(COVARIANCE_TYPES)}")
        if not real(self.tol) or self.tol < 0:
            err("tol", "must be a number >= 0")
        if not real(self.reg_covar) or self.reg_covar < 0:
            err("reg_covar", "must be a number >= 0")
        if not integer(self.max_iter) or self.max_iter < 0:
            err("max_iter", "must be an integer >= 0")
        if not integer(self.n_init) or self.n_init < 1:
            err("n_init", "must be an integer >= 1")
        if self.init_params not in INIT_PARAMS:
            err("init_params", f"must be one of {', '.join(INIT_PARAMS)}")
        if not isinstance(self.warm_start, (bool, np.bool_)):
            err("warm_start", "must be a boolean")
        if not (integer(self.verbose) or isinstance(self.verbose, (bool, np.bool_))) or self.verbose < 0:
            err("verbose", "must be an integer >= 0")
        if not integer(self.verbose_interval) or self.verbose_interval < 1:
            err("verbose_interval", "must be an integer >= 1")
        if self.dtype is not None and str(self.dtype) not in DTYPES:
            err("dtype", f"must be None or one of {', '.join(DTYPES)}")
        if self.cache not in CACHE_MODES:
            err("cache", f"must be one of {', '.join(CACHE_MODES)}")
        check_chunk_rows(self.chunk_rows)
        if self.nan_policy not in NAN_POLICIES:
            err("nan_policy", f"must be one of {', '.join(NAN_POLICIES)}")
        if n_samples < self.n_components:
            raise DataError(
                f"Expected n_samples >= n_components but got n_components = {self.n_components}, "
                f"n_samples = {n_samples}"
            )
        self._check_inits(n_features)

    def _check_inits(self, n_features):
        """weights_init/means_init/precisions_init, with scikit-learn's messages (after ours)."""
        k, d = self.n_components, n_features
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (k,):
                raise ValueError(
                    f"weights_init must have shape ({k},): The parameter 'weights' should have the "
                    f"shape of ({k},), but got {w.shape}"
                )
            if np.any(w < 0) or np.any(w > 1):
                raise ValueError(
                    "weights_init must be in [0, 1] and sum to 1: The parameter 'weights' should be "
                    f"in the range [0, 1], but got max value {np.min(w):.5f}, min value {np.max(w):.5f}"
                )
            if not np.allclose(np.abs(1.0 - np.sum(w)), 0.0, atol=1e-6 if w.dtype == np.float64 else 1e-5):
                raise ValueError(
                    "weights_init must sum to 1: The parameter 'weights' should be normalized, but got "
                    f"sum(weights) = {np.sum(w):.5f}"
                )
        if self.means_init is not None:
            m = np.asarray(self.means_init, dtype=np.float64)
            if m.shape != (k, d):
                raise ValueError(
                    f"means_init must have shape ({k}, {d}): The parameter 'means' should have the "
                    f"shape of ({k}, {d}), but got {m.shape}"
                )
        if self.precisions_init is not None:
            family = get_family(self.covariance_type)
            shape = family.covariance_shape(k, d)
            p = self._precisions_init(k, d)
            if p.shape != shape:
                raise ValueError(
                    f"precisions_init for covariance_type={self.covariance_type!r} must have shape "
                    f"{shape}: The parameter '{family.name} precision' should have the shape of "
                    f"{shape}, but got {p.shape}"
                )
            family.precision_cholesky_from_precisions(p)  # raises if not positive (definite)

    def _precisions_init(self, k, d):
        """``precisions_init`` in the family's form: for mclust's model names (K, D, D)
        matrices are accepted for every model and reduced to its storage (diagonals, scalars,
        the shared matrix) when they have its structure; scikit-learn's names keep its shapes."""
        return to_family_form(self.covariance_type, self.precisions_init, k, d, "precisions_init")

    def _compute_dtype(self, X) -> str:
        if self.dtype is not None:
            return str(np.dtype(self.dtype))
        return "float32" if X.dtype == np.float32 else "float64"

    # ------------------------------------------------------------------ the model
    def _initial_params(self, X, summary, rng, dtype, weights=None):
        return initialize(
            X, summary, self.n_components, self.covariance_type, self.init_params, rng,
            self.reg_covar, dtype, self.weights_init, self.means_init,
            None if self.precisions_init is None else self._precisions_init(self.n_components, X.shape[1]),
            weights=weights,
        )

    def _updater(self, summary):
        return MaximumLikelihood(self.reg_covar, summary.scale)

    def _set_fitted(self, result: EMResult, dtype="float64", out_dtype="float64"):
        """Fitted attributes from ``result``: computed in ``dtype``, attributes in ``out_dtype``
        (the exact float64 parameters stay in ``_mixture`` for predictions and saving)."""
        p = result.params
        self._mixture = p
        self._fit_dtype_, self._out_dtype_ = str(dtype), str(out_dtype)
        cast = np.dtype(out_dtype).type
        self.weights_ = np.asarray(p.weights, dtype=cast)
        self.means_ = np.asarray(p.means, dtype=cast)
        self.covariances_ = np.asarray(p.covariances, dtype=cast)
        self.precisions_cholesky_ = np.asarray(p.precisions_cholesky, dtype=cast)
        self.precisions_ = np.asarray(p.family.precisions(p.precisions_cholesky), dtype=cast)
        self._set_result(result)

    def _params(self) -> MixtureParams:
        check_is_fitted(self)
        if getattr(self, "_mixture", None) is not None:
            return self._mixture
        return MixtureParams(self.weights_, self.means_, self.covariances_, self.precisions_cholesky_, self.covariance_type)

    def _plan(self):
        dtype = self._fit_dtype_ if hasattr(self, "_fit_dtype_") else "float64"
        policy = getattr(self, "nan_policy", "raise")
        if policy == "marginalize":
            return self._params().marginal_plan(dtype)
        plan = self._params().plan(dtype)
        return OmitPlan(plan) if policy == "omit" else plan

    # ------------------------------------------------------------------ model selection
    def information_criteria(self, X, sample_weight=None) -> dict:
        """One pass: mean log-likelihood ``loglik``, ``n_samples``, ``n_parameters``, ``bic``,
        ``aic`` and ``icl`` of X (all three lower is better; see :meth:`icl`).

        With ``sample_weight`` every sum is weighted and ``n_samples`` (the n of BIC's
        ``p log n``) is the total weight, as for the data with row i repeated w_i times: use
        frequency weights (counts) for BIC, or rescale them so that they sum to the number of
        independent observations."""
        total, n, top = self._criteria_sums(X, sample_weight)
        return criteria_from_sums(total, n, top, self._params().n_parameters())

    def _n_parameters(self):
        return self._params().n_parameters()

    def bic(self, X, sample_weight=None):
        """Bayesian information criterion of X: ``-2 log L + p log n`` (lower is better;
        R's mclust reports ``-bic``, higher is better there).  ``p`` counts the free
        parameters: covariances (by model, as mclust's ``nVarParams``), means and weights."""
        return self.information_criteria(X, sample_weight)["bic"]

    def aic(self, X, sample_weight=None):
        """Akaike information criterion of X: ``-2 log L + 2 p`` (lower is better)."""
        return self.information_criteria(X, sample_weight)["aic"]

    def icl(self, X, sample_weight=None):
        """Integrated complete-data likelihood criterion of X (Biernacki, Celeux & Govaert
        2000): ``bic(X) - 2 sum_i log max_k r_ik``, BIC plus the entropy of the hard
        classification, so it favours well-separated components.  Lower is better, as
        :meth:`bic`; R's mclust's ``icl()`` is ``-icl`` (higher is better there).  One pass."""
        return self.information_criteria(X, sample_weight)["icl"]

    def sample(self, n_samples=1, random_state=None):
        """Draw ``n_samples`` points: returns (X (n, D), y (n,)) NumPy arrays."""
        p = self._params()
        if n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples}. The sampling requires at least one sample.")
        rs = random_state if random_state is not None else self.random_state
        if isinstance(rs, np.random.RandomState):
            rs = rs.randint(2**31)
        rng = np.random.default_rng(rs)
        counts = rng.multinomial(n_samples, p.weights / p.weights.sum())
        xs = p.family.sample(rng, p.means, p.covariances, counts)
        y = np.concatenate([np.full(c, k, dtype=np.int64) for k, c in enumerate(counts)])
        return np.vstack(xs), y

    # ------------------------------------------------------------------ persistence
    def save(self, path, storage_options=None):
        """Write the fitted model to ``path`` (.npz + JSON metadata, checksummed), atomically.
        ``path`` may be a URL (``s3://bucket/model.npz``, one PUT) with fsspec's ``storage_options``."""
        self._params()
        return persistence.save_model(self, location_of(path, storage_options))

    @classmethod
    def load(cls, path, storage_options=None):
        """Read a model written by :meth:`save` (a path, or a URL with fsspec's
        ``storage_options``); raises ModelFileError if damaged or foreign."""
        return persistence.load_model(cls, location_of(path, storage_options))


__all__ = ["GaussianMixture"]
