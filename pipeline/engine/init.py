"""Initial parameters for EM, computed on the chunked data with the same chunk machinery.

Strategies (``init_params``):

- ``kmeans``: scalable k-means|| seeding (Bahmani et al. 2012: a few passes that oversample
  ``2K`` candidates each, then a weighted k-means++ of the candidates on the driver), then Lloyd
  iterations over the chunked data; the initial mixture comes from the hard k-means labels.
- ``k-means++``: k-means++ seeding on a uniform sample of at most ``KMEANS_PP_SAMPLE`` rows.
- ``random_from_data``: K distinct random rows as means.
- ``random``: random responsibilities for every row (from per-chunk seeded generators).
- ``means_init`` without ``init_params`` work: the labels come from the nearest given mean.

In every case one more pass turns labels (or random responsibilities) into weights, means and
covariances by the M step, as scikit-learn does; given ``weights_init``/``means_init``/
``precisions_init`` then replace what they give.  Random draws inside chunks come from
``np.random.default_rng([seed, chunk_index])``, so results are reproducible on any scheduler.
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np

from pipeline.core.params import MixtureParams
from pipeline.core.stats import SuffStats, vector_length
from pipeline.engine.graph import record_pass, reduce_blocks
from pipeline.engine.summary import DataSummary
from pipeline.exceptions import DataError
from pipeline.families import warn_floored
from pipeline.kernels.cpu import labels_stats, resp_stats
from pipeline.options import INIT_PARAMS

KMEANS_PARALLEL_ROUNDS = 5
KMEANS_MAX_ITER = 30
KMEANS_TOL = 1e-4
KMEANS_PP_SAMPLE = 100_000


# ------------------------------------------------------------------------------------------
# small kernels on one chunk
# ------------------------------------------------------------------------------------------


#: rows per block in the initialisation kernels: their (rows x centres) float64 temporaries stay
#: about this size whatever the chunk size (k-means|| has ~10K candidate centres)
INIT_BLOCK_BYTES = 8 * 2**20


def _row_blocks(n, width):
    """(start, stop) of row blocks whose (rows x width) float64 arrays are ~INIT_BLOCK_BYTES."""
    step = max(256, INIT_BLOCK_BYTES // (8 * max(width, 1)))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _shifted_sq_dist(x, centres, shift):
    """(x - shift, centres - shift, squared distances (n, K) >= 0), all float64."""
    xs = np.asarray(x, dtype=np.float64) - shift
    cs = centres - shift
    d2 = (xs * xs).sum(axis=1)[:, None] - 2.0 * (xs @ cs.T) + (cs * cs).sum(axis=1)[None, :]
    return xs, cs, np.maximum(d2, 0.0)


def _nearest(x, centres, shift):
    """(squared distance to the nearest centre (n,), its index (n,)), block by block."""
    n = x.shape[0]
    d2min, lab = np.empty(n), np.empty(n, dtype=np.intp)
    for a, b in _row_blocks(n, max(centres.shape[0], x.shape[1])):
        d2 = _shifted_sq_dist(x[a:b], centres, shift)[2]
        lab[a:b] = d2.argmin(axis=1)
        d2min[a:b] = d2[np.arange(b - a), lab[a:b]]
    return d2min, lab


# Every kernel below is called as ``kernel(block, w, *args)``: ``w`` is the block's sample
# weights, or None (unweighted, the same numbers as before weights existed); see _map.


def _map(reduce, X, weights, kernel, length, *args, **kwargs):
    """``reduce(X, kernel, length, *args)`` over the row chunks, with the weights' aligned
    blocks as the kernels' second argument (None for every block when unweighted)."""
    if weights is None:
        return reduce(X, kernel, length, None, *args, **kwargs)
    return reduce((X, weights), kernel, length, *args, **kwargs)


def _wb(w):
    return None if w is None else np.asarray(w, dtype=np.float64).reshape(-1)


def _cost_kernel(block, w, centres, shift):
    d2 = _nearest(block, centres, shift)[0]
    return np.array([d2.sum() if w is None else np.dot(_wb(w), d2)])


def _sample_kernel(block, w, centres, shift, factor, seed, index):
    """Rows kept with probability min(1, factor * w * d^2) (k-means|| oversampling)."""
    d2 = _nearest(block, centres, shift)[0]
    if w is not None:
        d2 = d2 * _wb(w)
    rng = np.random.default_rng([seed, index])
    keep = rng.random(d2.shape[0]) < factor * d2
    return np.asarray(block[keep], dtype=np.float64)


def _uniform_sample_kernel(block, w, fraction, seed, index):
    """A uniform sample of the rows (of positive weight), with their weights as a last column."""
    rng = np.random.default_rng([seed, index])
    keep = rng.random(block.shape[0]) < fraction
    w = np.ones(block.shape[0]) if w is None else _wb(w)
    keep &= w > 0
    return np.column_stack([np.asarray(block, dtype=np.float64)[keep], w[keep]])


def _gumbel_top_kernel(block, w, k, seed, index):
    """The k rows of largest ``log w + Gumbel`` noise, as [key, row...]: merged over chunks,
    the top k are a weighted sample without replacement (Efraimidis & Spirakis 2006)."""
    rng = np.random.default_rng([seed, index])
    with np.errstate(divide="ignore"):
        keys = np.log(_wb(w)) + rng.gumbel(size=block.shape[0])
    top = np.argsort(-keys)[:k]
    return np.column_stack([keys[top], np.asarray(block, dtype=np.float64)[top]])


def _count_kernel(block, w, centres, shift):
    lab = _nearest(block, centres, shift)[1]
    return np.bincount(lab, weights=_wb(w), minlength=centres.shape[0]).astype(np.float64)


def _lloyd_kernel(block, w, centres, shift):
    """[inertia, counts (K), sums of x - c_k (K*D)] of the nearest-centre assignment (weighted
    by ``w`` when given).

    The per-centre sums are one GEMM (per block of rows) of the one-hot assignment with the
    shifted rows.
    """
    k, d = centres.shape
    inertia, counts, sums = 0.0, np.zeros(k), np.zeros((k, d))
    cs = centres - shift
    w = _wb(w)
    for a, b in _row_blocks(block.shape[0], max(k, d)):
        xs, _, d2 = _shifted_sq_dist(block[a:b], centres, shift)
        lab = d2.argmin(axis=1)
        onehot = np.zeros((b - a, k))
        onehot[np.arange(b - a), lab] = 1.0 if w is None else w[a:b]
        nearest = d2[np.arange(b - a), lab]
        inertia += nearest.sum() if w is None else np.dot(w[a:b], nearest)
        counts += onehot.sum(axis=0)
        sums += onehot.T @ xs
    return np.concatenate([[inertia], counts, (sums - counts[:, None] * cs).ravel()])


def _labels_stats_kernel(block, w, centres, shift, covariance_type, dtype):
    lab = _nearest(block, centres, shift)[1]
    return labels_stats(block, lab, centres, covariance_type, shift, dtype, weights=_wb(w)).to_vector()


def _random_resp_stats_kernel(block, w, centres, shift, covariance_type, dtype, seed, block_id=None):
    """Statistics of random responsibilities, drawn block by block from one generator (the same
    numbers as one (n, K) draw)."""
    rng = np.random.default_rng([seed, block_id[0]])
    k = centres.shape[0]
    st = SuffStats.zeros(centres, covariance_type)
    for a, b in _row_blocks(block.shape[0], k):
        resp = rng.uniform(size=(b - a, k))
        resp /= resp.sum(axis=1, keepdims=True)
        wb = None if w is None else _wb(w)[a:b]
        st = st.merge(resp_stats(block[a:b], resp, centres, covariance_type, shift, dtype, weights=wb))
    return st.to_vector()


def _per_chunk(X, weights, fn, *args):
    """Run ``fn(block, w, *args, index)`` on each row chunk (``w`` its weights or None);
    returns the list of results."""
    blocks = X.to_delayed().ravel()
    wblocks = [None] * len(blocks) if weights is None else weights.to_delayed().ravel()
    tasks = [dask.delayed(fn)(b, wb, *args, i) for i, (b, wb) in enumerate(zip(blocks, wblocks))]
    out = list(dask.compute(*tasks))
    record_pass()
    return out


def weighted_rows(X, weights, k, rng) -> np.ndarray:
    """k distinct rows drawn with probability proportional to their weights, one pass."""
    parts = _per_chunk(X, weights, _gumbel_top_kernel, k, int(rng.integers(2**31)))
    cand = np.concatenate(parts)
    cand = cand[np.isfinite(cand[:, 0])]  # rows of weight 0 are never drawn
    return cand[np.argsort(-cand[:, 0])[:k], 1:]


# ------------------------------------------------------------------------------------------
# k-means on the chunked data
# ------------------------------------------------------------------------------------------


def _kmeans_pp_local(points, weights, k, rng):
    """Weighted k-means++ seeding of a small (m, D) array on the driver."""
    m = points.shape[0]
    if m <= k:
        extra = rng.choice(m, size=k - m, replace=True) if m else []
        return np.concatenate([points, points[extra]]) if m else points
    p = weights / weights.sum()
    centres = [points[rng.choice(m, p=p)]]
    d2 = ((points - centres[0]) ** 2).sum(axis=1)
    n_trials = 2 + int(math.log(k))
    for _ in range(1, k):
        pot = d2 * weights
        if pot.sum() <= 0:
            idx = rng.choice(m, size=n_trials, p=p)
        else:
            idx = rng.choice(m, size=n_trials, p=pot / pot.sum())
        cand_d2 = np.minimum(d2[None, :], ((points[None, :, :] - points[idx][:, None, :]) ** 2).sum(axis=2))
        best = int(np.argmin((cand_d2 * weights).sum(axis=1)))
        centres.append(points[idx[best]])
        d2 = cand_d2[best]
    return np.array(centres)


def _lloyd_local(points, weights, centres, n_iter=100):
    for _ in range(n_iter):
        lab = ((points[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        new = centres.copy()
        for j in range(centres.shape[0]):
            w = weights[lab == j]
            if w.sum() > 0:
                new[j] = (points[lab == j] * w[:, None]).sum(axis=0) / w.sum()
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def kmeans_parallel_seeds(X, k, summary: DataSummary, rng, weights=None) -> np.ndarray:
    """k-means|| seeding: (k, D) centres from a few oversampling passes over the data (with
    ``weights``: the first centre drawn by weight, oversampling by weight x distance^2)."""
    shift = summary.mean
    seed = int(rng.integers(2**31))
    if weights is None:
        first = int(rng.integers(summary.n_samples))
        centres = np.asarray(X[first : first + 1].compute(), dtype=np.float64)
    else:
        centres = weighted_rows(X, weights, 1, rng)
    oversampling = 2 * k
    for r in range(KMEANS_PARALLEL_ROUNDS):
        phi = _map(reduce_blocks, X, weights, _cost_kernel, 1, centres, shift)[0]
        if phi <= 0:
            break
        new = _per_chunk(X, weights, _sample_kernel, centres, shift, oversampling / phi, seed + r)
        new = [a for a in new if a.size]
        if new:
            centres = np.concatenate([centres, *new])
    counts = _map(reduce_blocks, X, weights, _count_kernel, centres.shape[0], centres, shift)
    if centres.shape[0] <= k:
        return _kmeans_pp_local(centres, np.maximum(counts, 1e-12), k, rng)
    w = np.maximum(counts, 1e-12)
    return _lloyd_local(centres, w, _kmeans_pp_local(centres, w, k, rng))


def kmeans_lloyd(X, centres, summary: DataSummary, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL, weights=None):
    """Lloyd iterations (weighted means with ``weights``), one pass each; stops when the squared
    centre shift <= tol * mean var."""
    k, d = centres.shape
    threshold = tol * float(np.mean(summary.var))
    for _ in range(max_iter):
        vec = _map(reduce_blocks, X, weights, _lloyd_kernel, 1 + k + k * d, centres, summary.mean)
        counts, sums = vec[1 : 1 + k], vec[1 + k :].reshape(k, d)
        step = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
        centres = centres + step
        if (step**2).sum() <= threshold:
            break
    return centres


def sample_rows(X, m, summary: DataSummary, rng, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """About ``m`` uniformly sampled rows (all rows when m >= n) and their weights (ones
    without ``weights``; rows of weight 0 left out), float64 on the driver."""
    if m >= summary.n_samples:
        if weights is None:
            rows, w = np.asarray(X.compute(), dtype=np.float64), np.ones(X.shape[0])
        else:
            rows, w = (np.asarray(a, dtype=np.float64) for a in dask.compute(X, weights))
        record_pass()
        return rows[w > 0], w[w > 0]
    parts = _per_chunk(X, weights, _uniform_sample_kernel, m / summary.n_samples, int(rng.integers(2**31)))
    both = np.concatenate(parts)
    return both[:, :-1], both[:, -1]


# ------------------------------------------------------------------------------------------
# initial mixture parameters
# ------------------------------------------------------------------------------------------


def initial_centres(X, k, init_params, summary: DataSummary, rng, weights=None) -> np.ndarray:
    if init_params == "kmeans":
        seeds = kmeans_parallel_seeds(X, k, summary, rng, weights)
        return kmeans_lloyd(X, seeds, summary, weights=weights)
    if init_params == "k-means++":
        pts, w = sample_rows(X, max(KMEANS_PP_SAMPLE, 0), summary, rng, weights)
        return _kmeans_pp_local(pts, w, k, rng)
    if init_params == "random_from_data":
        if weights is not None:
            rows = weighted_rows(X, weights, k, rng)
            if len(rows) < k:
                raise DataError(f"init_params='random_from_data' needs {k} rows of positive weight; got {len(rows)}")
            return rows
        idx = np.sort(rng.choice(summary.n_samples, size=k, replace=False))
        return np.asarray(X[idx].compute(), dtype=np.float64)
    raise ValueError(f"init_params must be one of {', '.join(INIT_PARAMS)}; got {init_params!r}")


def initialize(
    X: da.Array,
    summary: DataSummary,
    n_components: int,
    covariance_type: str,
    init_params: str,
    rng: np.random.Generator,
    reg_covar: float,
    dtype: str = "float64",
    weights_init=None,
    means_init=None,
    precisions_init=None,
    weights: da.Array | None = None,
) -> MixtureParams:
    """Initial :class:`MixtureParams` (see the module docstring); ``weights``: the sample
    weights (aligned with X's row chunks), which every strategy then uses."""
    k, d = n_components, summary.n_features
    given = weights_init is not None and means_init is not None and precisions_init is not None
    if given:
        return MixtureParams.from_precisions(weights_init, means_init, precisions_init, covariance_type)
    length = vector_length(covariance_type, k, d)
    if init_params == "random" and means_init is None:
        centres = np.repeat(summary.mean[None, :], k, axis=0)
        vec = _map(
            reduce_blocks, X, weights, _random_resp_stats_kernel, length, centres, summary.mean, covariance_type,
            dtype, int(rng.integers(2**31)), pass_block_id=True,
        )
    else:
        if means_init is not None:
            centres = np.asarray(means_init, dtype=np.float64)
        else:
            centres = initial_centres(X, k, init_params, summary, rng, weights)
        vec = _map(
            reduce_blocks, X, weights, _labels_stats_kernel, length, dask.delayed(centres, pure=True), summary.mean,
            covariance_type, dtype,
        )
    params, floored = SuffStats.from_vector(vec, centres, covariance_type).m_step(
        reg_covar, summary.scale, floor=reg_covar > 0,  # as MaximumLikelihood: reg_covar=0 raises
    )
    warn_floored(floored, "initialisation")
    if weights_init is not None:
        params.weights = np.asarray(weights_init, dtype=np.float64)
    if means_init is not None:
        params.means = np.asarray(means_init, dtype=np.float64)
    if precisions_init is not None:
        params = MixtureParams.from_precisions(params.weights, params.means, precisions_init, covariance_type)
    return params

