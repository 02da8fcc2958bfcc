"""What runs on a chunk: the E step and partial statistics, pure NumPy (no Dask, no files).

Numerical kernels are functions of (chunk, plan) -> small float64 results, testable without
Dask.  The fast "features" kernels map each row to its quadratic features and evaluate all K
log-densities with one GEMM per block of rows and the statistics with one more (see
:class:`pipeline.core.plan.EStepPlan`); every call is long enough to release the GIL, so two
Dask threads run them in parallel.  Statistics are accumulated in float64 whatever the compute
dtype.  (Room for an array-API/CuPy twin of this module.)
"""

from __future__ import annotations

import threading

import numpy as np

from pipeline.core.plan import EStepPlan, n_quadratic
from pipeline.core.stats import SuffStats

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



def nan_mask(x: np.ndarray) -> np.ndarray:
    """(n, D) bool: where ``x`` holds NaN (missing values); all False for integer data."""
    return np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, dtype=bool)


def features(x: np.ndarray, kind: str, out: np.ndarray | None = None, shift=None) -> np.ndarray:
    """Features of a block of rows, transposed: (Q + D, B) with Q quadratic rows.

    "outer": the upper triangles of the rows' outer products (Q = D(D+1)/2); "diag": their
    squares (Q = D); "sphere": their squared norms (Q = 1); then the rows themselves.  ``x``
    holds shifted rows, or raw rows when ``shift`` is given: the subtraction is then fused with
    the transposition (one pass; computed in the wider of the two dtypes, then rounded to
    ``out``'s).  Built from the transposed rows (the last D rows of the result), each product a
    contiguous vector operation.  ``out`` (at least (Q + D, B)) avoids allocating: hot loops
    reuse one buffer.
    """
    b, d = x.shape
    q = n_quadratic(kind, d)
    z = np.empty((q + d, b), dtype=x.dtype) if out is None else out[:, :b]
    xt = z[q:]
    if shift is None:
        xt[...] = x.T
    else:
        np.subtract(x.T, np.asarray(shift)[:, None], out=xt, casting="unsafe")
    if kind == "outer":
        o = 0
        for i in range(d):
            np.multiply(xt[i], xt[i:], out=z[o : o + d - i])
            o += d - i
    elif kind == "sphere":
        np.einsum("ij,ij->j", xt, xt, out=z[0])
    else:
        np.multiply(xt, xt, out=z[:q])
    return z



def weighted_log_prob(xc: np.ndarray, plan: EStepPlan) -> np.ndarray:
    """``log pi_k + log N(x | mu_k, Sigma_k)`` for a block of shifted rows ``xc = x - plan.shift``,
    component-major: returns (K, B) float64.

    The (K, B) layout makes the per-row max/sum over components of the responsibilities
    elementwise operations between rows of length B (5x faster than reducing rows of length K).
    xc : (B, D) in the plan's dtype.  (The E step's hot loop, :func:`_add_features_chunk`,
    computes the features kernels' log-densities itself, in reused buffers.)
    """
    if plan.kind == "centred":
        y = xc @ plan.lcat  # (B, K*D): all K whitening transforms in one GEMM
        y -= plan.offset
        y *= y
        maha = np.ascontiguousarray(y.reshape(xc.shape[0], plan.n_components, -1).sum(axis=2, dtype=np.float64).T)
    else:
        z = features(xc, plan.kind)
        # log pi_k + log det L_k - D/2 log 2pi - maha_k / 2, as one GEMM and one add
        wlp = np.matmul(plan.wlin, z, out=np.empty((plan.n_components, xc.shape[0])))
        wlp += plan.bias[:, None]
        return wlp
    maha *= -0.5
    maha += plan.const[:, None]
    return maha


def log_sum_exp(a: np.ndarray) -> np.ndarray:
    """log(sum(exp(a), axis=0)) of a (K, B) array, stable (column-wise, component-major)."""
    amax = np.max(a, axis=0)
    amax = np.where(np.isfinite(amax), amax, 0.0)
    with np.errstate(divide="ignore"):
        return amax + np.log(np.sum(np.exp(a - amax), axis=0))


def log_responsibilities(xc: np.ndarray, plan: EStepPlan) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x) (B,), log r (B, K)) for a block of shifted rows."""
    wlp = weighted_log_prob(xc, plan)
    lpx = log_sum_exp(wlp)
    return lpx, (wlp - lpx).T


def column_max(a: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Max over axis 0 of a (K, B) array into ``out`` (B,), by pairwise halving.

    A handful of long elementwise calls, each releasing the GIL: ``np.max(axis=0)`` holds it
    (two Dask threads running it at once were slower than one).  ``scratch``: at least
    (max(K // 2, 1), B) of ``a``'s dtype.
    """
    src, k = a, a.shape[0]
    while k > 1:
        h = k // 2
        dst = scratch[:h]
        np.maximum(src[:h], src[h : 2 * h], out=dst)
        if k % 2:
            np.maximum(dst[0], src[2 * h], out=dst[0])
        src, k = dst, h
    out[...] = src[0]
    return out


#: log-responsibilities are clamped here before exp where some are lower: exp of what would
#: underflow takes NumPy's slow path (float64: 5x slower per element below -708, common with
#: separated clusters), and denormals are slow in multiplies and GEMMs.  e^floor stays normal
#: also once divided by K; r >= e^floor changes sum r by < K e^floor relative, far below the
#: dtype's resolution.
EXP_FLOOR = {"float64": -600.0, "float32": -75.0}


def responsibilities_scratch_size(n_components: int, n_rows: int) -> int:
    return (max(n_components // 2, 1) + 3) * n_rows + n_components


def responsibilities(wlp: np.ndarray, scratch=None, clamp: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x) (B,), r (K, B)) from component-major weighted log-probabilities (K, B), with
    a single exp pass, in place: ``wlp`` (C-contiguous) is overwritten by the responsibilities.

    Built for two Dask threads sharing a process: every step is a few long calls that release
    the GIL (the max by :func:`column_max`; the sum over components as a GEMV through
    ``np.dot``, where ``np.matmul`` and ``np.sum(axis=0)`` hold it).  ``scratch``: optional
    buffer of ``wlp``'s dtype, at least ``responsibilities_scratch_size(K, B)`` long, reused by
    hot loops (the returned log p(x) is a view into it).  ``clamp``: floor the
    log-responsibilities at EXP_FLOOR before exp (see there); a pass that only pays off where
    some of them are below it.
    """
    k, b = wlp.shape
    h = max(k // 2, 1)
    if scratch is None:
        scratch = np.empty(responsibilities_scratch_size(k, b), dtype=wlp.dtype)
    halves = scratch[: h * b].reshape(h, b)
    amax, s, lpx = (scratch[(h + i) * b : (h + i + 1) * b] for i in range(3))
    ones = scratch[(h + 3) * b : (h + 3) * b + k]
    column_max(wlp, halves, amax)
    nonfinite = None
    if not np.all(np.isfinite(amax)):  # rows no component explains (-inf), or NaN/inf in them
        nonfinite = ~np.isfinite(amax)
        bad_max = amax[nonfinite]
        amax[nonfinite] = 0.0
    r = np.subtract(wlp, amax, out=wlp)
    if clamp:
        np.maximum(r, EXP_FLOOR[r.dtype.name], out=r)
    np.exp(r, out=r)
    ones[...] = 1.0
    np.dot(ones, r, out=s)
    # rows with s = 0 (none of the components) come out non-finite: callers drop them
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log(s, out=lpx)
        lpx += amax
        r *= np.reciprocal(s, out=s)  # one division per row, not per component
    if nonfinite is not None:
        lpx[nonfinite] = bad_max  # such rows stay non-finite (the clamp would make them finite)
    return lpx, r



# --------------------------------------------------------------------------------------------
# Statistics of one chunk
# --------------------------------------------------------------------------------------------


def chunk_stats(x, plan: EStepPlan, centres, covariance_type, weights=None) -> "SuffStats":
    """E step on one chunk: responsibilities from ``plan`` and the partial statistics.

    x : (n, D) numeric array (any float/int dtype; converted block by block to the plan's
    dtype).  centres : (K, D) float64, normally the current means.  weights : optional (n,)
    non-negative sample weights: every statistic is then a weighted sum (``n`` the total
    weight, ``loglik`` sum w log p(x), ``s0..s2`` with ``w r`` for ``r``), as if row i were
    repeated w_i times.
    """
    st = SuffStats.zeros(centres, covariance_type)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if plan.kind != "centred":
        return _add_features_chunk(st, x, plan, w)
    start = 0
    for xc in shifted_blocks(x, plan.shift, plan.dtype):
        wb = None if w is None else w[start : start + xc.shape[0]]
        start += xc.shape[0]
        lpx, log_resp = log_responsibilities(xc, plan)
        if not np.all(np.isfinite(lpx)):
            st.n_nonfinite += float(np.count_nonzero(~np.isfinite(lpx)))
            ok = np.isfinite(lpx)
            lpx, log_resp, xc = lpx[ok], log_resp[ok], xc[ok]
            wb = None if wb is None else wb[ok]
        resp = np.exp(log_resp)
        if wb is None:
            st.loglik += float(lpx.sum())
            _accumulate(st, xc, resp, plan.shift)
        else:
            st.loglik += float(np.dot(wb, lpx))
            _accumulate(st, xc, resp * wb[:, None], plan.shift, n_rows=float(wb.sum()))
    return st

def labels_stats(x, labels, centres, covariance_type, shift, dtype="float64", weights=None) -> "SuffStats":
    """Statistics of a hard assignment (one-hot responsibilities), e.g. from k-means
    (weighted by ``weights`` (n,) when given)."""
    st = SuffStats.zeros(centres, covariance_type)
    k = st.s0.shape[0]
    start = 0
    for xc in shifted_blocks(x, shift, dtype):
        lab = labels[start : start + xc.shape[0]]
        resp = np.zeros((xc.shape[0], k))
        if weights is None:
            resp[np.arange(xc.shape[0]), lab] = 1.0
            _accumulate(st, xc, resp, shift)
        else:
            wb = weights[start : start + xc.shape[0]]
            resp[np.arange(xc.shape[0]), lab] = wb
            _accumulate(st, xc, resp, shift, n_rows=float(wb.sum()))
        start += xc.shape[0]
    return st

def resp_stats(x, resp, centres, covariance_type, shift, dtype="float64", weights=None) -> "SuffStats":
    """Statistics of given responsibilities ``resp`` (n, K) (weighted by ``weights`` (n,))."""
    st = SuffStats.zeros(centres, covariance_type)
    start = 0
    for xc in shifted_blocks(x, shift, dtype):
        r = np.asarray(resp[start : start + xc.shape[0]], dtype=np.float64)
        if weights is None:
            _accumulate(st, xc, r, shift)
        else:
            wb = weights[start : start + xc.shape[0]]
            _accumulate(st, xc, r * wb[:, None], shift, n_rows=float(wb.sum()))
        start += xc.shape[0]
    return st

def _add_features_chunk(st: SuffStats, x, plan: EStepPlan, weights=None) -> "SuffStats":
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
    k, d = st.s1.shape
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
        wb = None if weights is None else weights[start : start + m]
        if not np.all(np.isfinite(lpx)):
            st.n_nonfinite += float(np.count_nonzero(~np.isfinite(lpx)))
            ok = np.isfinite(lpx)
            lpx, resp, z = lpx[ok], resp[:, ok], z[:, ok]
            wb = None if wb is None else wb[ok]
        if wb is None:
            st.n += lpx.shape[0]
            st.loglik += float(lpx.sum(dtype=np.float64))
        else:  # weighted rows: w r in place of r (one multiply per entry of resp)
            st.n += float(wb.sum())
            st.loglik += float(np.dot(wb, lpx.astype(np.float64)))
            resp *= wb.astype(resp.dtype, copy=False)
        g += np.dot(z, resp.T, out=g_part)
    st.s0 = g[-1].copy()
    dk = st.centres - np.asarray(plan.shift, dtype=np.float64)
    r1 = g[q:-1].T
    st.s1 = r1 - st.s0[:, None] * dk
    if plan.kind == "outer":
        iu, ju = np.triu_indices(d)
        r2 = np.zeros((k, d, d))
        r2[:, iu, ju] = g[:q].T
        r2[:, ju, iu] = g[:q].T
        st.s2 = (
            r2
            - np.einsum("ki,kj->kij", dk, r1)
            - np.einsum("ki,kj->kij", r1, dk)
            + st.s0[:, None, None] * np.einsum("ki,kj->kij", dk, dk)
        )
    elif plan.kind == "sphere":
        st.s2 = g[0] - 2.0 * np.sum(dk * r1, axis=1) + st.s0 * np.sum(dk * dk, axis=1)
    else:
        st.s2 = g[:q].T - 2.0 * dk * r1 + st.s0[:, None] * dk * dk
    return st

def _accumulate(st: SuffStats, xc, resp, shift, n_rows=None) -> None:
    """Add the rows ``xc = x - shift`` (B, D) with responsibilities ``resp`` (B, K) float64
    (already multiplied by the rows' weights, whose sum is then ``n_rows``)."""
    st.n += xc.shape[0] if n_rows is None else n_rows
    nk = resp.sum(axis=0)
    st.s0 += nk
    d = st.centres - np.asarray(shift, dtype=np.float64)  # c_k - shift, (K, D)
    statistic = st.family.statistic
    if statistic == "outer":
        dt = xc.dtype
        d_c = d.astype(dt)
        resp_c = resp.astype(dt, copy=False)
        for k in range(d.shape[0]):
            if nk[k] == 0.0:
                continue
            dk = xc - d_c[k]  # x - c_k, (B, D)
            w = dk * resp_c[:, k : k + 1]
            st.s1[k] += w.sum(axis=0, dtype=np.float64)
            st.s2[k] += w.T @ dk
    else:
        x64 = xc.astype(np.float64, copy=False)
        rx = resp.T @ x64
        rxx = resp.T @ (x64 * x64)
        st.s1 += rx - nk[:, None] * d
        s2 = rxx - 2.0 * d * rx + nk[:, None] * d * d
        st.s2 += s2.sum(axis=1) if statistic == "trace" else s2


def shifted_blocks(x, shift, dtype):
    """Yield ``x[i:i+B] - shift`` as contiguous arrays of ``dtype``, B = ROW_BLOCK rows."""
    dt = np.dtype(dtype)
    shift = np.asarray(shift).astype(dt)
    for start in range(0, x.shape[0], ROW_BLOCK):
        xb = np.asarray(x[start : start + ROW_BLOCK])
        # subtract in the wider of the two dtypes, then round: float64 data at a large offset
        # keeps its precision in a float32 computation
        yield np.subtract(xb, shift, out=np.empty(xb.shape, dtype=dt), casting="unsafe")

