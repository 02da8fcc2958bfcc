"""The data summary: one cheap pass for row count, moments, finiteness and a fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import dask.array as da
import numpy as np

from pipeline.engine.graph import per_block
from pipeline.exceptions import DataError


@dataclass
class DataSummary:
    n_samples: int
    n_features: int
    mean: np.ndarray  # (D,)
    var: np.ndarray  # (D,)
    chunk_rows: tuple
    per_chunk: np.ndarray  # (n_chunks, 3 + 2D): rows, NaN, inf, mean (D), centred sum of squares (D)

    def fingerprint(self) -> str:
        """SHA-256 of the per-chunk counts, means and sums of squares: changes with the data."""
        return hashlib.sha256(np.ascontiguousarray(self.per_chunk).tobytes()).hexdigest()

    @property
    def scale(self) -> float:
        """A typical variance of the data (mean over features), for floors."""
        v = float(np.mean(self.var))
        return v if v > 0 else 1.0


def _summary_kernel(block):
    x = np.asarray(block)
    n_nan = np.count_nonzero(np.isnan(x)) if x.dtype.kind == "f" else 0
    n_inf = np.count_nonzero(np.isinf(x)) if x.dtype.kind == "f" else 0
    x = x.astype(np.float64, copy=False)
    if n_nan or n_inf or x.shape[0] == 0:
        mean = np.zeros(x.shape[1])
        m2 = np.zeros(x.shape[1])
    else:
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
    return np.concatenate([[x.shape[0], n_nan, n_inf], mean, m2])


def summarize(X: da.Array, name: str = "data") -> DataSummary:
    """One pass: row count, per-feature mean and variance, and a finiteness check.

    Raises DataError naming the chunks (and their rows) that hold NaN or inf values.
    """
    n_features = X.shape[1]
    rows = per_block(X, _summary_kernel, 3 + 2 * n_features)
    counts, nans, infs = rows[:, 0], rows[:, 1], rows[:, 2]
    bad = np.nonzero((nans > 0) | (infs > 0))[0]
    if bad.size:
        starts = np.concatenate([[0], np.cumsum(X.chunks[0])])
        where = "; ".join(
            f"row chunk {i} (rows {int(starts[i])}-{int(starts[i + 1]) - 1}): "
            f"{int(nans[i])} NaN, {int(infs[i])} inf"
            for i in bad[:5]
        )
        more = f"; and {bad.size - 5} more chunks" if bad.size > 5 else ""
        raise DataError(
            f"{name}: {int(nans.sum())} NaN and {int(infs.sum())} inf values in {bad.size} of "
            f"{len(counts)} row chunks: {where}{more}. Remove or impute them before fitting."
        )
    n = counts.sum()
    means, m2s = rows[:, 3 : 3 + n_features], rows[:, 3 + n_features :]
    mean = (counts[:, None] * means).sum(axis=0) / n
    # Chan et al.: combine per-chunk centred sums of squares
    m2 = m2s.sum(axis=0) + (counts[:, None] * (means - mean) ** 2).sum(axis=0)
    return DataSummary(int(n), n_features, mean, m2 / n, tuple(X.chunks[0]), rows)
