"""Missing values (NaN) on the chunked data: the views ``nan_policy`` fits and initialises on.

- ``"omit"``: :func:`complete_rows` drops the rows with a NaN chunk by chunk (lazily, on every
  pass; the row counts per chunk come from the summary pass, so the view has known chunks).
- ``"marginalize"``: EM runs on the data as it is (:mod:`pipeline.kernels.missing`); the
  initialisation (:func:`initialisation_data`) runs on the complete rows when there are at
  least ``INIT_MIN_COMPLETE_PER_PARAMETER`` per component and feature, and otherwise on every
  row with its missing values replaced by the feature's observed mean (a start only: EM then
  marginalises them).
"""

from __future__ import annotations

from dataclasses import replace

import dask.array as da
import numpy as np

from pipeline.engine.summary import DataSummary
from pipeline.kernels.cpu import nan_mask

#: the complete rows start the fit under "marginalize" when there are at least this many per
#: component and feature, K * (D + 1): enough to estimate every component's mean and
#: covariance; with fewer, the rows with mean-imputed values do
INIT_MIN_COMPLETE_PER_PARAMETER = 1


def _complete(block) -> np.ndarray:
    """(n,) bool: the rows of ``block`` without NaN."""
    return ~nan_mask(np.asarray(block)).any(axis=1)


def _drop_incomplete(block):
    return np.asarray(block)[_complete(block)]


def _drop_incomplete_weights(weights, block):
    return np.asarray(weights)[_complete(block)]


def _impute(block, mean):
    x = np.asarray(block)
    if x.dtype.kind != "f":
        return x
    nan = np.isnan(x)
    return np.where(nan, mean.astype(x.dtype), x) if nan.any() else x


def complete_rows(X: da.Array, summary: DataSummary, weights: da.Array | None = None):
    """(the rows of ``X`` without NaN, their weights or None): lazy views with known chunks."""
    if not summary.n_incomplete:
        return X, weights
    chunks = summary.complete_rows().chunk_rows
    Xc = X.map_blocks(_drop_incomplete, chunks=(chunks, X.chunks[1]), dtype=X.dtype, meta=np.empty((0, 0), X.dtype))
    if weights is None:
        return Xc, None
    wc = da.map_blocks(_drop_incomplete_weights, weights[:, None], X, chunks=(chunks, (1,)), dtype=weights.dtype)
    return Xc, wc[:, 0]


def initialisation_data(X: da.Array, summary: DataSummary, n_components: int, weights: da.Array | None = None):
    """(data, summary, weights) the initialisation of a ``"marginalize"`` fit runs on (see the
    module docstring)."""
    if not summary.n_incomplete:
        return X, summary, weights
    complete = summary.complete_rows()
    if complete.n_samples >= INIT_MIN_COMPLETE_PER_PARAMETER * n_components * (summary.n_features + 1):
        Xc, wc = complete_rows(X, summary, weights)
        return Xc, complete, wc
    mean = np.asarray(summary.mean, dtype=np.float64)
    Xi = X.map_blocks(_impute, mean, dtype=X.dtype, meta=np.empty((0, 0), X.dtype))
    return Xi, replace(summary, n_incomplete=0, n_missing=0), weights
