"""Input validation: NumPy, lists and Dask arrays become one row-chunked Dask array."""

from __future__ import annotations

import dask.array as da
import numpy as np

from pipeline.data.chunking import resolve_chunk_rows
from pipeline.exceptions import DataError


def _is_dask(X) -> bool:
    return isinstance(X, da.Array)


def check_array(X, name="X", n_features=None, chunk_rows="auto") -> tuple[da.Array, bool]:
    """Validate and wrap input as a row-chunked Dask array; returns (array, input_was_dask).

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
        rows = resolve_chunk_rows(chunk_rows, X.shape[0], X.shape[1], X.dtype.itemsize, source_rows=X.shape[0])
        X = da.from_array(X, chunks=(min(rows, X.shape[0]), -1))
    elif X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return X, was_dask


def math_isnan(v) -> bool:
    return isinstance(v, float) and v != v

