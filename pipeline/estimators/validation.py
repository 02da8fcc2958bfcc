"""Input validation: NumPy, lists and Dask arrays become one row-chunked Dask array."""

from __future__ import annotations

import dask.array as da
import numpy as np

from pipeline.data.chunking import resolve_chunk_rows
from pipeline.exceptions import DataError


def _is_dask(X) -> bool:
    return isinstance(X, da.Array)


def _problem(X, name="X"):
    """Our description of what is wrong with in-memory ``X`` (None if we see nothing)."""
    try:
        check_array(np.asarray(X), name=name, chunk_rows=None)
    except DataError as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - only a description is wanted here
        return None
    return None


def validate_input(estimator, X, *, reset, name="X", chunk_rows="auto", n_features=None, as_dask=True):
    """Validate input of a scikit-learn-facing estimator; returns (row-chunked Dask array,
    input_was_dask).  ``as_dask=False`` returns validated in-memory input as the NumPy array
    itself (for kernels run in this process: no chunks to concatenate back into a copy).

    In-memory input (NumPy, lists, pandas, ...) goes through scikit-learn's
    :func:`sklearn.utils.validation.validate_data`: it sets (``reset=True``) or checks
    ``n_features_in_``/``feature_names_in_`` and converts to float64 (float32 stays float32).
    Its ValueErrors become :class:`DataError` carrying our description first, then
    scikit-learn's own message; its TypeErrors (sparse input, objects that are not numbers)
    are raised as they are.  Values are not checked for NaN/inf here: the first pass does it
    and names the chunks.

    Dask input is checked on its metadata only (dtype, ndim, feature count; nothing is
    computed) by :func:`check_array`; ``reset=True`` sets ``n_features_in_``.
    """
    if _is_dask(X):
        expected = None if reset else getattr(estimator, "n_features_in_", n_features)
        Xd, was_dask = check_array(X, name=name, n_features=expected, chunk_rows=chunk_rows)
        if reset:
            estimator.n_features_in_ = Xd.shape[1]
            if hasattr(estimator, "feature_names_in_"):
                del estimator.feature_names_in_
        return Xd, was_dask
    from sklearn.utils.validation import validate_data

    try:
        arr = validate_data(
            estimator, X, reset=reset, dtype=[np.float64, np.float32], ensure_all_finite=False,
            ensure_min_samples=1,
        )
    except ValueError as exc:
        ours = _problem(X, name)
        if ours is None and not reset and hasattr(estimator, "n_features_in_"):
            try:
                width = np.shape(X)[1]
            except Exception:  # noqa: BLE001
                width = None
            if width is not None and width != estimator.n_features_in_:
                ours = (
                    f"{name} has {width} features, but the {type(estimator).__name__} was fitted "
                    f"with {estimator.n_features_in_} features"
                )
        raise DataError(f"{ours}. {exc}" if ours else str(exc)) from exc
    return check_array(arr, name=name, chunk_rows=chunk_rows, wrap=as_dask)


def check_array(X, name="X", n_features=None, chunk_rows="auto", wrap=True) -> tuple[da.Array, bool]:
    """Validate and wrap input as a row-chunked Dask array; returns (array, input_was_dask).
    ``wrap=False`` returns in-memory input as the checked NumPy array.

    NumPy input is chunked by ``chunk_rows`` (:data:`pipeline.options.CHUNK_ROWS_ACCEPTED`:
    "auto" sizes chunks from the data, None keeps it in one chunk); Dask input keeps its row
    chunks and gets one chunk along features.

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
        if wrap:
            rows = resolve_chunk_rows(chunk_rows, X.shape[0], X.shape[1], X.dtype.itemsize, source_rows=X.shape[0])
            X = da.from_array(X, chunks=(min(rows, X.shape[0]), -1))
    elif X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return X, was_dask


def math_isnan(v) -> bool:
    return isinstance(v, float) and v != v



def _weight_problems(block):
    w = np.asarray(block, dtype=np.float64)
    return np.array([np.count_nonzero(w < 0), np.count_nonzero(np.isnan(w)), np.count_nonzero(np.isinf(w)), w[np.isfinite(w)].sum()])


def validate_weights(sample_weight, X: da.Array, name: str = "X") -> da.Array:
    """``sample_weight`` as a float64 Dask array (n,) with X's row chunks (NumPy input is
    chunked, Dask input rechunked to them), checked in one pass over the weights: a length
    other than X's, negative, NaN or inf weights (named with their row chunk and rows) and a
    total of zero are :class:`DataError`.  A weight of zero drops its row."""
    from pipeline.engine.graph import per_block

    n = X.shape[0]
    w = sample_weight if _is_dask(sample_weight) else np.asarray(sample_weight)
    if w.ndim != 1 or w.shape[0] != n:
        raise DataError(f"sample_weight must have shape ({n},), one weight per row of {name}; got shape {tuple(w.shape)}")
    if not np.issubdtype(w.dtype, np.number) or np.issubdtype(w.dtype, np.complexfloating):
        raise DataError(f"sample_weight must be real numbers; got dtype {w.dtype}")
    wd = (w if _is_dask(w) else da.from_array(w, chunks=(X.chunks[0],))).astype(np.float64)
    if wd.chunks[0] != X.chunks[0]:
        wd = wd.rechunk((X.chunks[0],))
    checks = per_block(wd[:, None], _weight_problems, 4)
    starts = np.concatenate([[0], np.cumsum(X.chunks[0])])
    for what, col in (("negative", 0), ("NaN", 1), ("inf", 2)):
        bad = np.nonzero(checks[:, col])[0]
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"sample_weight has {int(checks[:, col].sum())} {what} values, first in row chunk {i} "
                f"(rows {starts[i]}-{starts[i + 1] - 1}): weights must be finite and >= 0"
            )
    if checks[:, 3].sum() <= 0:
        raise DataError("sample_weight sums to 0 (every weight is zero): at least one row needs a positive weight")
    return wd
