"""Sufficient statistics of a Gaussian mixture as a mergeable value: pure NumPy, no Dask.

One chunk of rows gives a :class:`SuffStats` (``from_chunk``); two are combined with the
associative :meth:`SuffStats.merge` (addition: every field is a sum over rows); the M step
(:meth:`SuffStats.m_step`) turns the totals into new parameters.  Statistics are centred at
per-component centres ``c_k`` (the previous means in EM), accumulated in float64 whatever the
compute dtype, so a large common offset in the data does not cancel catastrophically.

On the wire a statistic is one flat float64 vector (``to_vector``/``from_vector``):
``[n_rows, sum log p(x), n_nonfinite, s0 (K), s1 (K*D), s2 (K*D*D, K*D or K)]``.  Adding
vectors is merging statistics, so a tree of sums (:func:`pipeline.em.reduce_blocks`) does the
reduction.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from pipeline.gaussian import (
    EXP_FLOOR,
    EStepPlan,
    MixtureParams,
    covariances_from_stats,
    floor_covariances,
    log_responsibilities,
    features,
    responsibilities,
    responsibilities_scratch_size,
)

#: rows per block inside a chunk (for the centred kernel and initialisation): keeps the per-block
#: temporaries cache-sized.
ROW_BLOCK = 2048
#: the features kernel sizes its blocks so that the features buffer holds about this many bytes
#: (measured best on 2 cores with 2 Dask threads: 4096-8192 rows for D=16 full, 8192 for diag
#: and spherical; smaller blocks run faster on one thread, where the two small GEMMs of diag
#: and spherical keep their operands in L2, but lose more to GIL hand-offs between the threads)
FEATURES_BLOCK_BYTES = 4 * 2**20


def features_block_rows(n_features_total: int, itemsize: int, n_components: int = 0) -> int:
    """Rows per block of the features kernel: a power of two in [1024, 8192], so that the
    features and the (K, rows) log-densities take about FEATURES_BLOCK_BYTES."""
    rows = FEATURES_BLOCK_BYTES / ((n_features_total + n_components) * itemsize)
    return int(2 ** min(13, max(10, round(np.log2(rows)))))
#: added to every N_k, as scikit-learn does, so empty components never divide by zero.
NK_FLOOR = 10 * np.finfo(np.float64).eps
_HEADER = 3


_THREAD_BUFFERS = threading.local()
#: buffers above this size are not kept per thread
THREAD_BUFFER_MAX_BYTES = 16 * 2**20


def thread_buffer(name: str, size: int, dtype) -> np.ndarray:
    """A 1-D scratch array of ``size`` elements, reused by the calling thread across calls.

    Dask workers run with MALLOC_TRIM_THRESHOLD_ set (distributed's default), which pins glibc's
    mmap threshold at 128 KiB: buffers allocated per chunk or per block are then mmapped,
    page-faulted in and unmapped every time (measured: the full float32 kernel 15-35% slower per
    chunk, allocator churn per block 2-3x).  Each thread keeps the largest of each named buffer
    it has needed, up to THREAD_BUFFER_MAX_BYTES (larger ones are allocated per call and not
    kept; blocks are sized to ~FEATURES_BLOCK_BYTES, so that is only reached with very many
    components).  Contents are garbage; callers must not keep views across calls.
    """
    dt = np.dtype(dtype)
    if size * dt.itemsize > THREAD_BUFFER_MAX_BYTES:
        return np.empty(size, dtype=dt)
    cache = _THREAD_BUFFERS.__dict__
    key = (name, dt.str)
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype=dt)
    return buf[:size]


def second_order_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    """Shape of s2: outer products (full, tied), their diagonals (diag), traces (spherical)."""
    if covariance_type in ("full", "tied"):
        return (n_components, n_features, n_features)
    if covariance_type == "spherical":
        return (n_components,)
    return (n_components, n_features)


def vector_length(covariance_type: str, n_components: int, n_features: int) -> int:
    k, d = n_components, n_features
    return _HEADER + k + k * d + int(np.prod(second_order_shape(covariance_type, k, d)))


@dataclass
class SuffStats:
    """Sums over rows: n, sum log p(x), s0 = sum r, s1 = sum r (x - c), s2 = sum r (x-c)(x-c)^T
    (full, tied), its diagonal (diag) or its trace (spherical).

    ``n_nonfinite`` counts rows left out because their log-density is not finite (NaN or inf in
    the row, or values too large for the compute dtype); the EM driver refuses such data.
    """

    covariance_type: str
    centres: np.ndarray  # (K, D) float64, the c_k the sums are centred at
    n: float
    loglik: float
    n_nonfinite: float
    s0: np.ndarray
    s1: np.ndarray
    s2: np.ndarray

    # ---------------------------------------------------------------- construction
    @classmethod
    def zeros(cls, centres, covariance_type) -> "SuffStats":
        centres = np.asarray(centres, dtype=np.float64)
        k, d = centres.shape
        return cls(
            covariance_type,
            centres,
            0.0,
            0.0,
            0.0,
            np.zeros(k),
            np.zeros((k, d)),
            np.zeros(second_order_shape(covariance_type, k, d)),
        )

    @classmethod
    def from_chunk(cls, x, plan: EStepPlan, centres, covariance_type) -> "SuffStats":
        """E step on one chunk: responsibilities from ``plan`` and the partial statistics.

        x : (n, D) numeric array (any float/int dtype; converted block by block to the plan's
        dtype).  centres : (K, D) float64, normally the current means.
        """
        st = cls.zeros(centres, covariance_type)
        if plan.kind != "centred":
            return st._add_features_chunk(x, plan)
        for xc in shifted_blocks(x, plan.shift, plan.dtype):
            lpx, log_resp = log_responsibilities(xc, plan)
            if not np.all(np.isfinite(lpx)):
                st.n_nonfinite += float(np.count_nonzero(~np.isfinite(lpx)))
                ok = np.isfinite(lpx)
                lpx, log_resp, xc = lpx[ok], log_resp[ok], xc[ok]
            st.loglik += float(lpx.sum())
            st._accumulate(xc, np.exp(log_resp), plan.shift)
        return st

    @classmethod
    def from_labels(cls, x, labels, centres, covariance_type, shift, dtype="float64") -> "SuffStats":
        """Statistics of a hard assignment (one-hot responsibilities), e.g. from k-means."""
        st = cls.zeros(centres, covariance_type)
        k = st.s0.shape[0]
        start = 0
        for xc in shifted_blocks(x, shift, dtype):
            lab = labels[start : start + xc.shape[0]]
            start += xc.shape[0]
            resp = np.zeros((xc.shape[0], k))
            resp[np.arange(xc.shape[0]), lab] = 1.0
            st._accumulate(xc, resp, shift)
        return st

    @classmethod
    def from_resp(cls, x, resp, centres, covariance_type, shift, dtype="float64") -> "SuffStats":
        """Statistics of given responsibilities ``resp`` (n, K)."""
        st = cls.zeros(centres, covariance_type)
        start = 0
        for xc in shifted_blocks(x, shift, dtype):
            st._accumulate(xc, np.asarray(resp[start : start + xc.shape[0]], dtype=np.float64), shift)
            start += xc.shape[0]
        return st

    def _add_features_chunk(self, x, plan: EStepPlan) -> "SuffStats":
        """The fast path (plan kinds "outer", "diag", "sphere"), block by block in reused buffers.

        Per block: ``z`` = features(x - shift) with a row of ones appended; the weighted
        log-densities ``[W | bias] @ z`` (one GEMM, the bias riding on the ones); responsibilities
        ``r`` in place; ``G += z @ r^T`` (one GEMM), whose last row (from the ones) is sum r.

        G (Q + D + 1, K) holds sum r z: the second moments about the shift (upper triangles,
        diagonals or squared norms), sum r (x - shift) and sum r.  Per-block partials are in the
        compute dtype, G in float64; G is re-centred at the per-component centres once per chunk.
        All per-block arrays are views of per-thread buffers reused across chunks (see
        :func:`thread_buffer`), and every call is long enough to release the GIL, through
        ``np.dot`` rather than ``np.matmul`` (which holds it for these shapes): Dask runs two
        such kernels in threads.
        """
        k, d = self.s1.shape
        n = x.shape[0]
        q = plan.n_quadratic
        p = q + d + 1
        dt = np.dtype(plan.dtype)
        block = features_block_rows(p, dt.itemsize, k)
        bmax = max(1, min(block, n))
        wext = np.ascontiguousarray(np.concatenate([plan.wlin, plan.bias[:, None]], axis=1), dtype=dt)
        z_buf = thread_buffer("features", p * bmax, dt)
        # log-densities and responsibilities in the compute dtype: float32 exp is much cheaper,
        # and its ~1e-7 relative error is far below what float32 data carries anyway
        w_buf = thread_buffer("log_prob", k * bmax, dt)
        scratch = thread_buffer("responsibilities", responsibilities_scratch_size(k, bmax), dt)
        g_part = np.empty((p, k), dtype=dt)
        g = np.zeros((p, k))
        clamp = None  # decided on the chunk's first block: do responsibilities underflow?
        for start in range(0, n, block):
            m = min(block, n - start)
            z = z_buf[: p * m].reshape(p, m)  # contiguous views: np.dot writes only into those
            if start == 0 or m != block:
                z[-1] = 1.0
            # x - shift: subtracted in the wider dtype, then rounded (float64 data at a large
            # offset keeps its precision in a float32 computation)
            features(x[start : start + m], plan.kind, out=z[:-1], shift=plan.shift)
            w = np.dot(wext, z, out=w_buf[: k * m].reshape(k, m))
            if clamp is None:
                with np.errstate(invalid="ignore"):  # inf - inf in rows no component explains
                    clamp = bool(np.any(w.max(axis=0) - w.min(axis=0) > -EXP_FLOOR[dt.name]))
            lpx, resp = responsibilities(w, scratch, clamp)  # resp (K, m), in w
            if not np.all(np.isfinite(lpx)):
                self.n_nonfinite += float(np.count_nonzero(~np.isfinite(lpx)))
                ok = np.isfinite(lpx)
                lpx, resp, z = lpx[ok], resp[:, ok], z[:, ok]
            self.n += lpx.shape[0]
            self.loglik += float(lpx.sum(dtype=np.float64))
            g += np.dot(z, resp.T, out=g_part)
        self.s0 = g[-1].copy()
        dk = self.centres - np.asarray(plan.shift, dtype=np.float64)
        r1 = g[q:-1].T
        self.s1 = r1 - self.s0[:, None] * dk
        if plan.kind == "outer":
            iu, ju = np.triu_indices(d)
            r2 = np.zeros((k, d, d))
            r2[:, iu, ju] = g[:q].T
            r2[:, ju, iu] = g[:q].T
            self.s2 = (
                r2
                - np.einsum("ki,kj->kij", dk, r1)
                - np.einsum("ki,kj->kij", r1, dk)
                + self.s0[:, None, None] * np.einsum("ki,kj->kij", dk, dk)
            )
        elif plan.kind == "sphere":
            self.s2 = g[0] - 2.0 * np.sum(dk * r1, axis=1) + self.s0 * np.sum(dk * dk, axis=1)
        else:
            self.s2 = g[:q].T - 2.0 * dk * r1 + self.s0[:, None] * dk * dk
        return self

    def _accumulate(self, xc, resp, shift) -> None:
        """Add the rows ``xc = x - shift`` (B, D) with responsibilities ``resp`` (B, K) float64."""
        self.n += xc.shape[0]
        nk = resp.sum(axis=0)
        self.s0 += nk
        d = self.centres - np.asarray(shift, dtype=np.float64)  # c_k - shift, (K, D)
        if self.covariance_type in ("full", "tied"):
            dt = xc.dtype
            d_c = d.astype(dt)
            resp_c = resp.astype(dt, copy=False)
            for k in range(d.shape[0]):
                if nk[k] == 0.0:
                    continue
                dk = xc - d_c[k]  # x - c_k, (B, D)
                w = dk * resp_c[:, k : k + 1]
                self.s1[k] += w.sum(axis=0, dtype=np.float64)
                self.s2[k] += w.T @ dk
        else:
            x64 = xc.astype(np.float64, copy=False)
            rx = resp.T @ x64
            rxx = resp.T @ (x64 * x64)
            self.s1 += rx - nk[:, None] * d
            s2 = rxx - 2.0 * d * rx + nk[:, None] * d * d
            self.s2 += s2.sum(axis=1) if self.covariance_type == "spherical" else s2

    # ---------------------------------------------------------------- merging
    def merge(self, other: "SuffStats") -> "SuffStats":
        """Associative, commutative merge (sums); both must share centres and type."""
        if other.covariance_type != self.covariance_type or not np.array_equal(other.centres, self.centres):
            raise ValueError("cannot merge statistics centred differently")
        return SuffStats(
            self.covariance_type,
            self.centres,
            self.n + other.n,
            self.loglik + other.loglik,
            self.n_nonfinite + other.n_nonfinite,
            self.s0 + other.s0,
            self.s1 + other.s1,
            self.s2 + other.s2,
        )

    def to_vector(self) -> np.ndarray:
        return np.concatenate(
            [[self.n, self.loglik, self.n_nonfinite], self.s0, self.s1.ravel(), self.s2.ravel()]
        )

    @classmethod
    def from_vector(cls, vec, centres, covariance_type) -> "SuffStats":
        centres = np.asarray(centres, dtype=np.float64)
        k, d = centres.shape
        vec = np.asarray(vec, dtype=np.float64)
        if vec.shape != (vector_length(covariance_type, k, d),):
            raise ValueError(f"statistics vector has shape {vec.shape}, expected ({vector_length(covariance_type, k, d)},)")
        i = _HEADER
        s0 = vec[i : i + k]
        i += k
        s1 = vec[i : i + k * d].reshape(k, d)
        i += k * d
        s2 = vec[i:].reshape(second_order_shape(covariance_type, k, d))
        return cls(covariance_type, centres, vec[0], vec[1], vec[2], s0.copy(), s1.copy(), s2.copy())

    # ---------------------------------------------------------------- M step
    @property
    def mean_loglik(self) -> float:
        return self.loglik / self.n if self.n else float("nan")

    def m_step(self, reg_covar: float, scale: float = 1.0) -> tuple[MixtureParams, list[int]]:
        """New parameters from the totals; returns (params, indices of floored components).

        pi_k = N_k / N, mu_k = c_k + s1_k / N_k, Sigma_k = s2_k / N_k - e e^T + reg_covar I.
        """
        nk = self.s0 + NK_FLOOR
        weights = nk / nk.sum()
        means = self.centres + self.s1 / nk[:, None]
        cov = covariances_from_stats(nk, self.s1, self.s2, reg_covar, self.covariance_type)
        cov, prec_chol, floored = floor_covariances(cov, self.covariance_type, scale, reg_covar)
        return MixtureParams(weights, means, cov, prec_chol, self.covariance_type), floored


def shifted_blocks(x, shift, dtype):
    """Yield ``x[i:i+B] - shift`` as contiguous arrays of ``dtype``, B = ROW_BLOCK rows."""
    dt = np.dtype(dtype)
    shift = np.asarray(shift).astype(dt)
    for start in range(0, x.shape[0], ROW_BLOCK):
        xb = np.asarray(x[start : start + ROW_BLOCK])
        # subtract in the wider of the two dtypes, then round: float64 data at a large offset
        # keeps its precision in a float32 computation
        yield np.subtract(xb, shift, out=np.empty(xb.shape, dtype=dt), casting="unsafe")
