"""The data summary: one cheap pass for row count, moments, finiteness and a fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import dask.array as da
import numpy as np

from pipeline.engine.graph import per_block, per_block_and_rows
from pipeline.exceptions import DataError
from pipeline.kernels.cpu import nan_mask


@dataclass
class DataSummary:
    """What the first pass learns of the data.

    Without missing values (``nan_policy="raise"``): ``n_samples`` rows, per-feature ``mean``
    and ``var`` (weighted by the sample weights when ``weighted``).  With ``nan_policy="omit"`` they describe the complete rows (those without
    NaN, the ones the fit uses); with ``"marginalize"`` every row, ``mean`` and ``var`` over
    each feature's observed values.  ``n_incomplete`` rows hold ``n_missing`` NaN values in
    all; ``complete`` describes the complete rows alone (see :meth:`complete_rows`).
    """

    n_samples: int
    n_features: int
    mean: np.ndarray  # (D,)
    var: np.ndarray  # (D,)
    chunk_rows: tuple
    per_chunk: np.ndarray  # (n_chunks, columns): the summary kernel's vector per chunk (see the kernels)
    nan_policy: str = "raise"
    n_rows: int | None = None  # every row of the data (n_samples unless rows are omitted)
    n_incomplete: int = 0
    n_missing: int = 0
    complete: "DataSummary | None" = None  # the summary of the complete rows (with missing values)
    weighted: bool = False  # mean and var weighted by the sample weights (n_samples stays the row count)
    #: (rows (m, D) float64, their weights (m,)): the uniform sample drawn in the same pass, if asked
    sample: tuple | None = None

    def complete_rows(self) -> "DataSummary":
        """The summary of the rows without NaN (this one when every row is complete)."""
        return self if self.complete is None else self.complete

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


def _weighted_moments(x, w):
    """(total weight, weighted mean (D,), weighted centred sum of squares (D,)) of rows x."""
    total = float(w.sum())
    if total <= 0:
        return total, np.zeros(x.shape[1]), np.zeros(x.shape[1])
    mean = w @ x / total
    return total, mean, w @ (x - mean) ** 2


def _weighted_summary_kernel(block, weights):
    """:func:`_summary_kernel` with the moments weighted, and the total weight last."""
    x = np.asarray(block)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    n_nan = np.count_nonzero(np.isnan(x)) if x.dtype.kind == "f" else 0
    n_inf = np.count_nonzero(np.isinf(x)) if x.dtype.kind == "f" else 0
    if n_nan or n_inf:
        return np.concatenate([[x.shape[0], n_nan, n_inf], np.zeros(2 * x.shape[1] + 1)])
    total, mean, m2 = _weighted_moments(x.astype(np.float64, copy=False), w)
    return np.concatenate([[x.shape[0], n_nan, n_inf], mean, m2, [total]])


def _missing_summary_kernel(block, weights=None):
    """[rows, NaN, inf, complete rows, rows all NaN, then mean and centred sum of squares of
    the complete rows (2D), then count, mean and centred sum of squares of each feature's
    observed values (3D)]; with ``weights`` the moments are weighted, the counts of observed
    values are their total weights, and the complete rows' total weight comes last."""
    x = np.asarray(block)
    d = x.shape[1]
    nan = nan_mask(x)
    n_inf = np.count_nonzero(np.isinf(x)) if x.dtype.kind == "f" else 0
    x = x.astype(np.float64, copy=False)
    incomplete = nan.any(axis=1)
    head = [x.shape[0], np.count_nonzero(nan), n_inf, np.count_nonzero(~incomplete), np.count_nonzero(nan.all(axis=1))]
    if n_inf:
        return np.concatenate([head, np.zeros(5 * d + (weights is not None))])
    if weights is None:
        xc = x[~incomplete]
        mean_c = xc.mean(axis=0) if xc.shape[0] else np.zeros(d)
        m2_c = ((xc - mean_c) ** 2).sum(axis=0)
        wo, tail = (~nan).astype(np.float64), []
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        total_c, mean_c, m2_c = _weighted_moments(x[~incomplete], w[~incomplete])
        wo, tail = np.where(nan, 0.0, w[:, None]), [total_c]  # each observed value's weight
    # observed values, weighted by wo (1.0 unweighted: exactly the unweighted sums)
    count = wo.sum(axis=0)
    mean_o = np.divide((wo * np.where(nan, 0.0, x)).sum(axis=0), count, out=np.zeros(d), where=count > 0)
    m2_o = (wo * np.where(nan, 0.0, x - mean_o) ** 2).sum(axis=0)
    return np.concatenate([head, mean_c, m2_c, count, mean_o, m2_o, tail])


def _aligned_weights(weights, X):
    """``weights`` (n,) as a Dask array with X's row chunks."""
    w = weights if isinstance(weights, da.Array) else da.from_array(np.asarray(weights), chunks=(X.chunks[0],))
    return w if w.chunks[0] == X.chunks[0] else w.rechunk((X.chunks[0],))


def _pooled(counts, means, m2s):
    """Mean and variance (D,) from per-chunk counts (n_chunks,) or (n_chunks, D), means and
    centred sums of squares (Chan et al.)."""
    counts = counts if counts.ndim == 2 else counts[:, None]
    n = counts.sum(axis=0)
    safe = np.where(n > 0, n, 1.0)
    mean = (counts * means).sum(axis=0) / safe
    m2 = m2s.sum(axis=0) + (counts * (means - mean) ** 2).sum(axis=0)
    return mean, m2 / safe


def _chunk_list(bad, starts, describe):
    where = "; ".join(f"row chunk {i} (rows {int(starts[i])}-{int(starts[i + 1]) - 1}): {describe(i)}" for i in bad[:5])
    return where + (f"; and {bad.size - 5} more chunks" if bad.size > 5 else "")


def _sample_kernel(block, fraction, seed, omit, block_id=None):
    """Each row kept with probability ``fraction`` (from ``default_rng([seed, chunk])``), as
    float64 with a last column of ones (its weight); with ``omit`` rows with a NaN are left out."""
    return _weighted_sample_kernel(block, None, fraction, seed, omit, block_id)


def _weighted_sample_kernel(block, weights, fraction, seed, omit, block_id=None):
    """:func:`_sample_kernel` with the rows' weights last (rows of weight 0 left out)."""
    x = np.asarray(block)
    keep = np.random.default_rng([seed, block_id[0]]).random(x.shape[0]) < fraction
    w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    keep &= w > 0
    if omit:
        keep &= ~nan_mask(x).any(axis=1)
    return np.column_stack([x[keep].astype(np.float64), w[keep]])


def _one_pass(X, weights, kernel, length, sample):
    """``per_block`` of the summary kernel, and the sample's rows from the same pass if asked."""
    data = X if weights is None else (X, weights)
    if sample is None:
        return per_block(data, kernel, length), None
    fraction, seed, omit = sample
    rows, parts = per_block_and_rows(data, kernel, length, (), _sample_kernel if weights is None
                                     else _weighted_sample_kernel, (fraction, seed, omit))
    both = np.concatenate(parts) if parts else np.zeros((0, X.shape[1] + 1))
    return rows, (both[:, :-1], both[:, -1])


def summarize(X: da.Array, name: str = "data", nan_policy: str = "raise", weights=None, sample=None) -> DataSummary:
    """One pass: row count, per-feature mean and variance, and a finiteness check.

    ``sample=(fraction, seed)``: the same pass also draws each row with probability ``fraction``
    (reproducibly: ``default_rng([seed, chunk index])``; rows of weight 0, and under "omit" rows
    with a NaN, left out) into ``summary.sample``, (rows, weights) as float64 on the driver.

    ``weights`` (n,) (validated by the caller; rechunked to X's rows): the mean and variance
    are weighted, as for the data with row i repeated w_i times (``n_samples`` stays the
    number of rows).

    ``nan_policy="raise"`` (the default) raises DataError naming the chunks (and their rows)
    that hold NaN or inf values.  With "omit" or "marginalize" NaN are missing values: inf is
    still an error, and so is a row with every value missing under "marginalize", a feature
    with no observed value, or (under "omit") no complete row.
    """
    if weights is not None:
        weights = _aligned_weights(weights, X)
    sample = None if sample is None else (*sample, nan_policy == "omit")
    if nan_policy != "raise":
        return _summarize_missing(X, name, nan_policy, weights, sample)
    n_features = X.shape[1]
    if weights is None:
        rows, drawn = _one_pass(X, None, _summary_kernel, 3 + 2 * n_features, sample)
    else:
        rows, drawn = _one_pass(X, weights, _weighted_summary_kernel, 4 + 2 * n_features, sample)
    counts, nans, infs = rows[:, 0], rows[:, 1], rows[:, 2]
    bad = np.nonzero((nans > 0) | (infs > 0))[0]
    if bad.size:
        starts = np.concatenate([[0], np.cumsum(X.chunks[0])])
        where = _chunk_list(bad, starts, lambda i: f"{int(nans[i])} NaN, {int(infs[i])} inf")
        raise DataError(
            f"{name}: {int(nans.sum())} NaN and {int(infs.sum())} inf values in {bad.size} of "
            f"{len(counts)} row chunks: {where}. Remove or impute them before fitting, or set "
            "nan_policy to 'omit' or 'marginalize' for NaN (missing values)."
        )
    means, m2s = rows[:, 3 : 3 + n_features], rows[:, 3 + n_features : 3 + 2 * n_features]
    mean, var = _pooled(counts if weights is None else rows[:, -1], means, m2s)
    return DataSummary(int(counts.sum()), n_features, mean, var, tuple(X.chunks[0]), rows, weighted=weights is not None,
                       sample=drawn)


def _summarize_missing(X: da.Array, name: str, nan_policy: str, weights=None, sample=None) -> DataSummary:
    d = X.shape[1]
    rows, drawn = _one_pass(X, weights, _missing_summary_kernel, 5 + 5 * d + (weights is not None), sample)
    counts, nans, infs, complete, all_nan = (rows[:, i] for i in range(5))
    starts = np.concatenate([[0], np.cumsum(X.chunks[0])])
    bad = np.nonzero(infs > 0)[0]
    if bad.size:
        raise DataError(
            f"{name}: {int(infs.sum())} inf values in {bad.size} of {len(counts)} row chunks: "
            f"{_chunk_list(bad, starts, lambda i: f'{int(infs[i])} inf')}. NaN are missing values under "
            f"nan_policy={nan_policy!r}; inf is not: remove them before fitting."
        )
    bad = np.nonzero(all_nan > 0)[0]
    if nan_policy == "marginalize" and bad.size:
        raise DataError(
            f"{name}: {int(all_nan.sum())} rows have every value missing (NaN), in {bad.size} row chunks: "
            f"{_chunk_list(bad, starts, lambda i: f'{int(all_nan[i])} such rows')}. nan_policy='marginalize' "
            "needs an observed value in every row: drop them, or use nan_policy='omit'."
        )
    n_rows, n_complete = int(counts.sum()), int(complete.sum())
    weighted = weights is not None
    mean_c, var_c = _pooled(rows[:, -1] if weighted else complete, rows[:, 5 : 5 + d], rows[:, 5 + d : 5 + 2 * d])
    kept = tuple(int(c) for c in complete)
    complete_summary = DataSummary(n_complete, d, mean_c, var_c, kept, rows, nan_policy, n_complete, weighted=weighted)
    common = dict(nan_policy=nan_policy, n_rows=n_rows, n_incomplete=n_rows - n_complete, n_missing=int(nans.sum()),
                  complete=complete_summary, weighted=weighted, sample=drawn)
    if nan_policy == "omit":
        if n_complete == 0:
            raise DataError(f"{name}: every one of its {n_rows} rows has a missing value (NaN): nan_policy='omit' "
                            "leaves no row to fit; use nan_policy='marginalize'")
        return DataSummary(n_complete, d, mean_c, var_c, kept, rows, **common)
    observed = rows[:, 5 + 2 * d : 5 + 3 * d]
    empty = np.nonzero(observed.sum(axis=0) == 0)[0]
    if empty.size:
        raise DataError(f"{name}: features {empty.tolist()[:10]} have no observed value (every value NaN): "
                        "nothing can be estimated for them; drop those columns")
    mean_o, var_o = _pooled(observed, rows[:, 5 + 3 * d : 5 + 4 * d], rows[:, 5 + 4 * d : 5 + 5 * d])
    return DataSummary(n_rows, d, mean_o, var_o, tuple(X.chunks[0]), rows, **common)
