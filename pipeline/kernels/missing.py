"""The E step of rows with missing values (``nan_policy="marginalize"``): NumPy and numba.

EM for values missing at random (Little & Rubin, *Statistical Analysis with Missing Data*,
ch. 11; Ghahramani & Jordan 1994).  For a row with observed coordinates ``o`` and missing ones
``m``, and component k with mean ``mu`` and precision ``P = Sigma^-1``:

- the E step uses the marginal density of the observed values, ``N(x_o | mu_o, Sigma_oo)``;
- the M step uses the conditional expectation ``x^ = E[x | x_o, k]`` (``x^_o = x_o``,
  ``x^_m = mu_m + Sigma_mo Sigma_oo^-1 (x_o - mu_o)``) and the conditional covariance
  ``C = Cov[x_m | x_o, k]`` (zero outside the m x m block): the statistics are
  ``s0 = sum r``, ``s1 = sum r (x^ - c)``, ``s2 = sum r ((x^ - c)(x^ - c)^T + C)``, and every
  family's M step is unchanged (its objective, the expected complete-data log-likelihood,
  depends on the data only through them).

Everything is computed from the precision, in the missing coordinates only (|m| is small when
few values are missing): with the residual ``d = x - mu`` set to 0 at ``m`` and ``u = P d``,

- ``(x_o - mu_o)^T Sigma_oo^-1 (x_o - mu_o) = d^T u - |L^-1 u_m|^2`` with ``L`` the lower
  Cholesky factor of ``P_mm`` (the Schur complement: ``Sigma_oo^-1 = P_oo - P_om P_mm^-1 P_mo``),
- ``log det Sigma_oo = log det Sigma + log det P_mm``,
- ``x^_m - mu_m = -P_mm^-1 u_m`` and ``C_mm = P_mm^-1``,

so one Cholesky factor of ``P_mm`` per component and *missingness pattern* serves every row
with that pattern, and the per-row work is two triangular solves of size |m|.  Complete rows
keep the fast kernels of :mod:`pipeline.kernels.cpu`, and a chunk without NaN is computed
exactly as without missing values.  Rows with missing values are computed in float64 whatever
the compute dtype, by one of two kinds (:class:`pipeline.core.plan.MarginalPlan`): "features"
(rows sorted by pattern; GEMMs on their features plus compiled per-row corrections, see
below) or "centred" (NumPy, rows grouped by their number of missing values, then by pattern;
for components far from the data's centre, and where numba cannot be imported).
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

from pipeline.core.plan import LOG_2PI, MarginalPlan
from pipeline.core.stats import SuffStats
from pipeline.exceptions import CovarianceError, DataError
from pipeline.families import CHOLESKY_ADVICE
from pipeline.kernels.cpu import (
    chunk_stats,
    features,
    log_responsibilities,
    log_sum_exp,
    nan_mask,
    shifted_blocks,
    thread_buffer,
)

# Per-row quantities of a group of rows with j missing values are kept slot-first, (j, K, B)
# (and Cholesky factors (j, j, K, B)): every operation is then on contiguous (K, B) slices,
# where reductions over a trailing axis of length j cost NumPy ~20 ns per row and component.


def _forward(L, b):
    """``L^-1 b`` for lower-triangular ``L`` (j, j, ...) and ``b`` (j, ...), by forward
    substitution vectorised over the trailing axes."""
    j = L.shape[0]
    y = np.empty((j, *np.broadcast_shapes(L.shape[2:], b.shape[1:])))
    for i in range(j):
        s = b[i]
        for m in range(i):
            s = s - L[i, m] * y[m]
        np.divide(s, L[i, i], out=y[i])
    return y


def _backward(L, y):
    """``L^-T y`` for lower-triangular ``L`` (j, j, ...) and ``y`` (j, ...), by back
    substitution."""
    j = L.shape[0]
    x = np.empty((j, *np.broadcast_shapes(L.shape[2:], y.shape[1:])))
    for i in reversed(range(j)):
        s = y[i]
        for m in range(i + 1, j):
            s = s - L[m, i] * x[m]
        np.divide(s, L[i, i], out=x[i])
    return x


def _sum_of_products(a, b):
    """sum over the first (slot) axis of a * b."""
    out = a[0] * b[0]
    for i in range(1, a.shape[0]):
        out += a[i] * b[i]
    return out


#: rows per block of the missing-value kernels: their (K, rows, D) float64 temporaries stay
#: about cache-sized (measured on 2 cores, K = D = 16: 512 rows 2x faster than 2048)
MISSING_BLOCK_BYTES = 2**20


def _check_observed(counts, n_features):
    """A DataError if a row has every value missing (``counts``: missing values per row)."""
    if np.any(counts == n_features):
        raise DataError(
            f"{int(np.count_nonzero(counts == n_features))} rows have every value missing (NaN): "
            "nan_policy='marginalize' needs at least one observed value per row (use nan_policy='omit' "
            "to drop them)"
        )


def missing_groups(mask: np.ndarray):
    """Rows with missing values grouped by their number j of missing values, then by pattern.

    Yields (j, rows (R,), missing columns per row (R, j) sorted, patterns (U, j), pattern of
    each row (R,)).  A row with every value missing is a DataError.
    """
    counts = mask.sum(axis=1)
    _check_observed(counts, mask.shape[1])
    for j in np.unique(counts[counts > 0]):
        rows = np.nonzero(counts == j)[0]
        cols = np.nonzero(mask[rows])[1].reshape(-1, int(j))
        first, which = _unique_patterns(mask[rows])
        yield int(j), rows, cols, cols[first], which


def _unique_patterns(mask_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the first row of each distinct missingness pattern (U,), each row's pattern (R,)) of
    the rows' masks (R, D); patterns in the order of their bits read as an integer."""
    d = mask_rows.shape[1]
    if d <= 62:  # a pattern as the bits of one integer: a 1-D unique, 5x faster
        codes = mask_rows.astype(np.int64) @ (np.int64(1) << np.arange(d, dtype=np.int64))
        _, first, which = np.unique(codes, return_index=True, return_inverse=True)
    else:
        _, first, which = np.unique(mask_rows, axis=0, return_index=True, return_inverse=True)
    return first, which.reshape(-1)


def _block_rows(n_components, n_features):
    return int(max(64, MISSING_BLOCK_BYTES // (8 * n_components * n_features)))


class _Pattern:
    """The "centred" kind's factors per (component, pattern): the Cholesky factor of P_mm
    (K, U, j, j), slot-first as ``chol_slots`` (j, j, K, U), and its log det (K, U)."""

    def __init__(self, mp: MarginalPlan, patterns):
        pmm = mp.precisions[:, patterns[:, :, None], patterns[:, None, :]]  # (K, U, j, j)
        self.chol = np.ascontiguousarray(np.linalg.cholesky(pmm))
        self.log_det = np.ascontiguousarray(np.log(np.diagonal(self.chol, axis1=-2, axis2=-1)).sum(axis=-1))
        self.chol_slots = self.chol.transpose(2, 3, 0, 1)  # (j, j, K, U)

    def conditional_covariances(self):
        """P_mm^-1 = L^-T L^-1 (K, U, j, j): Cov[x_m | x_o] per component and pattern."""
        L = self.chol_slots
        j = L.shape[0]
        cols = [_backward(L, _forward(L, np.broadcast_to(e[:, None, None], (j, *L.shape[2:])))) for e in np.eye(j)]
        return np.stack(cols, axis=1).transpose(2, 3, 0, 1)  # (j, j, K, U) -> (K, U, j, j)


def _block_e_step(x, mp: MarginalPlan, pat: _Pattern, cols, which, conditional: bool):
    """The E step of rows ``x`` (B, D) whose missing columns are ``cols`` (B, j), of patterns
    ``which`` (B,), by the "centred" kind: (log p(x_o) (B,), log-responsibilities (K, B), and
    with ``conditional`` the residuals ``x^ - mu`` (K, B, D) with the conditional expectations
    filled in)."""
    b, d = x.shape
    k = mp.n_components
    j = cols.shape[1]
    missing = np.isnan(x)
    # (K, B, D) arrays live in per-thread buffers: allocated per block they would be mmapped
    # and page-faulted in every time on Dask workers (see pipeline.kernels.cpu.thread_buffer)
    resid = thread_buffer("missing_residuals", k * b * d, np.float64).reshape(k, b, d)
    np.subtract(np.where(missing, 0.0, x)[None], mp.means[:, None, :], out=resid)
    resid *= ~missing  # the residual is 0 at the missing coordinates
    u = np.matmul(resid, mp.precisions, out=thread_buffer("missing_u", k * b * d, np.float64).reshape(k, b, d))
    quad = np.einsum("kbd,kbd->kb", resid, u)  # P symmetric: u = d P = (P d)^T
    # flat indices of the missing coordinates in (K, B, D) arrays, slot-first (j, K, B):
    # gathers and scatters by one fancy index
    flat = (np.arange(k) * (b * d))[None, :, None] + (np.arange(b) * d)[None, None, :] + cols.T[:, None, :]
    chol = pat.chol_slots[..., which]  # (j, j, K, B)
    w = _forward(chol, u.reshape(-1)[flat])  # (j, K, B)
    maha = quad - _sum_of_products(w, w)
    wlp = (mp.log_weights + mp.log_det)[:, None] - pat.log_det[:, which] - 0.5 * (d - j) * LOG_2PI - 0.5 * maha
    lpx = log_sum_exp(wlp)
    log_resp = wlp - lpx
    if not conditional:
        return lpx, log_resp, None
    resid.reshape(-1)[flat] = -_backward(chol, w)  # x^_m - mu_m = -P_mm^-1 u_m
    return lpx, log_resp, resid


# ------------------------------------------------------------------ the "features" kind
# Incomplete rows in blocks of any mix of patterns: the GEMMs on their features in NumPy (BLAS),
# everything per pattern and per row compiled (numba, no temporaries, the GIL released so that
# two Dask threads run at once).  Patterns are stored ragged: pattern u's missing columns are
# ``pcols[poff[u]:poff[u + 1]]`` (j_u of them) and its j_u x j_u factors start at row
# ``poff2[u]``.  Every array the compiled loops touch has the K components last, so that each
# inner loop is one contiguous run over the components, which the compiler vectorises (2x
# faster than loops over the features, measured at K = D = 16).

#: rows per block of the "features" kind
ROW_BLOCK_FEATURES = 2048
#: floating-point reassociation lets the compiler vectorise the short dot products (results
#: change in the last bits only); no assumption about NaN or inf
_FASTMATH = {"reassoc", "contract"}


_COMPILED: dict = {}
_COMPILE_LOCK = threading.Lock()


def _features_kind(mp: MarginalPlan) -> bool:
    """Whether to use the "features" kind: the plan asks for it and numba imports (else the
    NumPy "centred" kind, with a warning once per process)."""
    if mp.kind != "features":
        return False
    try:
        _compiled()
    except ImportError as exc:  # pragma: no cover - numba is a dependency
        if not _COMPILED.get("warned"):
            _COMPILED["warned"] = True
            warnings.warn(f"numba is not available ({exc}): rows with missing values take the slower NumPy path",
                          RuntimeWarning, stacklevel=3)
        return False
    return True


def _compiled() -> dict:
    """The compiled kernels, made on first use: numba is imported only by a process that meets
    a row with missing values (its import alone takes ~110 MB of resident memory), and loads
    them from numba's on-disk cache after the first compilation (``cache=True``)."""
    if "rows" not in _COMPILED:
        with _COMPILE_LOCK:
            if "rows" not in _COMPILED:
                import numba

                jit = numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
                _COMPILED.update(
                    factors=jit(_pattern_factors), rows=jit(_incomplete_rows), conditional=jit(_add_conditional_covariances)
                )
    return _COMPILED


class _PatternTable:
    """The missingness patterns of a chunk's incomplete rows: ``which`` (R,) the pattern of
    each row, and the ragged column lists ``pcols``, ``poff``, ``poff2`` (see above)."""

    def __init__(self, mask_rows: np.ndarray):
        d = mask_rows.shape[1]
        first, which = _unique_patterns(mask_rows)
        pmask = mask_rows[first]
        lengths = pmask.sum(axis=1)
        _check_observed(lengths, d)
        self.which = np.ascontiguousarray(which, dtype=np.int64)
        self.pcols = np.ascontiguousarray(np.nonzero(pmask)[1], dtype=np.int64)
        self.poff = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.poff2 = np.concatenate([[0], np.cumsum(lengths**2)]).astype(np.int64)
        self.n_patterns = len(first)
        self.max_missing = int(lengths.max())


def _pattern_factors(prec_t, mus_t, pcols, poff, poff2, chol, log_det, pg, gpg):  # pragma: no cover - compiled
    """Per pattern u and component k (innermost, contiguous): the lower Cholesky factor of
    P_mm (``chol[poff2[u] + a * j + m, k]``), its log det, ``P_mm g`` and ``g^T P_mm g`` with
    ``g = mu - shift`` at the missing coordinates.  ``prec_t`` (D, D, K), ``mus_t`` (D, K).
    Returns False if a P_mm is not positive definite."""
    k_count = prec_t.shape[2]
    for u in range(poff.shape[0] - 1):
        o, base = poff[u], poff2[u]
        j = poff[u + 1] - o
        for k in range(k_count):
            gpg[u, k] = 0.0
            log_det[u, k] = 0.0
        for a in range(j):
            ca = pcols[o + a]
            for k in range(k_count):
                pg[o + a, k] = 0.0
            for m in range(j):
                cm = pcols[o + m]
                for k in range(k_count):
                    pg[o + a, k] += prec_t[ca, cm, k] * mus_t[cm, k]
            for k in range(k_count):
                gpg[u, k] += mus_t[ca, k] * pg[o + a, k]
        for a in range(j):  # Cholesky-Banachiewicz, row by row, all components at once
            ca = pcols[o + a]
            for m in range(a + 1):
                cm = pcols[o + m]
                row = base + a * j + m
                for k in range(k_count):
                    chol[row, k] = prec_t[ca, cm, k]
                for q in range(m):
                    for k in range(k_count):
                        chol[row, k] -= chol[base + a * j + q, k] * chol[base + m * j + q, k]
                if a == m:
                    for k in range(k_count):
                        if chol[row, k] <= 0.0:
                            return False
                        chol[row, k] = np.sqrt(chol[row, k])
                        log_det[u, k] += np.log(chol[row, k])
                else:
                    for k in range(k_count):
                        chol[row, k] /= chol[base + m * j + m, k]
    return True


def _incomplete_rows(xs, which, pcols, poff, poff2, wlp, prec_t, pm_t, mus_t, chol, pg, gpg, log_det_mm, weights,
                     resp, lpx, s1, cross, hh, resp_sum, stats):  # pragma: no cover - compiled (results tested)
    """The per-row part of the "features" kind (see :func:`_features_rows`), every inner loop
    over the K components (contiguous, so it vectorises): for every row b, ``(P e)_m`` from
    the precision's rows at the missing columns, the forward solve ``w = L^-1 u_m``, the
    log-density correction (added to ``wlp`` (B, K), which ends as the log-responsibilities),
    the log-sum-exp over components (``lpx``) and ``resp`` (B, K) = r times the row's weight;
    with ``stats`` the back solve of the conditional mean ``h`` and the sums ``s1`` (D, K) sum
    r h, ``cross`` (D, D, K) sum r h x^T, ``hh`` (D, D, K) sum r h h^T and ``resp_sum`` (U, K)
    sum r per pattern.  O(K j (D + j)) per row."""
    n, d = xs.shape
    k_count = prec_t.shape[2]
    jmax = 0
    for u in range(poff.shape[0] - 1):
        jmax = max(jmax, poff[u + 1] - poff[u])
    pe = np.empty((jmax, k_count))
    w = np.empty((jmax, k_count))
    f = np.empty((jmax, k_count))
    rh = np.empty((jmax, k_count))
    corr = np.empty(k_count)
    e = np.empty(k_count)
    for b in range(n):
        u = which[b]
        o, base = poff[u], poff2[u]
        j = poff[u + 1] - o
        for k in range(k_count):
            corr[k] = gpg[u, k]
        for a in range(j):
            c = pcols[o + a]
            for k in range(k_count):
                pe[a, k] = -pm_t[c, k]
            for i in range(d):
                xi = xs[b, i]
                for k in range(k_count):
                    pe[a, k] += prec_t[c, i, k] * xi
        for a in range(j):
            c = pcols[o + a]
            for k in range(k_count):
                w[a, k] = pe[a, k] + pg[o + a, k]
            for m in range(a):
                for k in range(k_count):
                    w[a, k] -= chol[base + a * j + m, k] * w[m, k]
            for k in range(k_count):
                w[a, k] /= chol[base + a * j + a, k]
                corr[k] += 2.0 * mus_t[c, k] * pe[a, k] - w[a, k] * w[a, k]
        top = -np.inf
        for k in range(k_count):
            wlp[b, k] += 0.5 * j * LOG_2PI - log_det_mm[u, k] - 0.5 * corr[k]
            top = max(top, wlp[b, k])
        total = 0.0
        for k in range(k_count):
            e[k] = np.exp(wlp[b, k] - top)
            total += e[k]
        lp = top + np.log(total)
        lpx[b] = lp
        scale = weights[b] / total
        for k in range(k_count):
            wlp[b, k] -= lp
            resp[b, k] = e[k] * scale
        if not stats:
            continue
        for k in range(k_count):
            resp_sum[u, k] += resp[b, k]
        for a in range(j - 1, -1, -1):  # L^T f = w: f = P_mm^-1 u_m, then h = mus_m - f (x^_m - shift_m)
            for k in range(k_count):
                f[a, k] = w[a, k]
            for m in range(a + 1, j):
                for k in range(k_count):
                    f[a, k] -= chol[base + m * j + a, k] * f[m, k]
            for k in range(k_count):
                f[a, k] /= chol[base + a * j + a, k]
        for a in range(j):
            c = pcols[o + a]
            for k in range(k_count):
                f[a, k] = mus_t[c, k] - f[a, k]  # h, in place: the back solve is done
                rh[a, k] = resp[b, k] * f[a, k]
        for a in range(j):
            c = pcols[o + a]
            for k in range(k_count):
                s1[c, k] += rh[a, k]
            for i in range(d):
                xi = xs[b, i]
                for k in range(k_count):
                    cross[c, i, k] += rh[a, k] * xi
            for a2 in range(j):
                c2 = pcols[o + a2]
                for k in range(k_count):
                    hh[c, c2, k] += rh[a, k] * f[a2, k]


def _add_conditional_covariances(chol, pcols, poff, poff2, resp_sum, cond):  # pragma: no cover - compiled
    """``cond[c, c2, k]`` += sum over patterns u of ``resp_sum[u, k] * P_mm^-1`` (embedded at the
    pattern's missing coordinates), ``P_mm^-1 = L^-T L^-1`` by forward substitution, all
    components at once."""
    k_count = chol.shape[1]
    jmax = 0
    for u in range(poff.shape[0] - 1):
        jmax = max(jmax, poff[u + 1] - poff[u])
    inv = np.zeros((jmax, jmax, k_count))
    for u in range(poff.shape[0] - 1):
        o, base = poff[u], poff2[u]
        j = poff[u + 1] - o
        for col in range(j):  # inv = L^-1, lower triangular, column by column
            for a in range(j):
                for k in range(k_count):
                    inv[a, col, k] = 0.0
                if a < col:
                    continue
                if a == col:
                    for k in range(k_count):
                        inv[a, col, k] = 1.0
                for m in range(col, a):
                    for k in range(k_count):
                        inv[a, col, k] -= chol[base + a * j + m, k] * inv[m, col, k]
                for k in range(k_count):
                    inv[a, col, k] /= chol[base + a * j + a, k]
        for a in range(j):
            for b in range(j):
                ca, cb = pcols[o + a], pcols[o + b]
                for m in range(max(a, b), j):
                    for k in range(k_count):
                        cond[ca, cb, k] += resp_sum[u, k] * inv[m, a, k] * inv[m, b, k]


class _FeatureSums:
    """Sums of the "features" kind over a chunk's incomplete rows, about the plan's shift:
    ``g`` (Q + D + 1, K) = sum r z (z the rows' features with missing values 0, as in
    :func:`pipeline.kernels.cpu._add_features_chunk`), and the terms of the filled-in values
    ``h`` (x^ - shift at the missing coordinates), component last: ``s1`` (D, K) sum r h,
    ``cross`` (D, D, K) sum r h x^T, ``hh`` (D, D, K) sum r h h^T, ``cond`` (D, D, K) sum r
    Cov[x_m | x_o]; ``resp_sum`` (U, K) sum r per pattern; ``n`` and ``loglik`` the rows'
    (weighted) count and log-likelihood."""

    def __init__(self, k, d, n_patterns):
        q = d * (d + 1) // 2
        self.g = np.zeros((q + d + 1, k))
        self.s1 = np.zeros((d, k))
        self.cross = np.zeros((d, d, k))
        self.hh = np.zeros((d, d, k))
        self.cond = np.zeros((d, d, k))
        self.resp_sum = np.zeros((n_patterns, k))


_NO_SUMS = (np.zeros((1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1)))


def _features_rows(x, mask, mp: MarginalPlan, weights=None, sums_wanted=True):
    """The E step of incomplete rows ``x`` (R, D) float64, NaN where ``mask`` (R, D), by the
    "features" kind.  With
    ``sums_wanted``: returns (log p(x_o) (R,) in the order of the rows sorted by pattern, None,
    the sums (:class:`_FeatureSums`)); else (log p(x_o) (R,), log-responsibilities (K, R),
    None) in the order of ``x``.

    With ``xs = x - shift`` (0 at the missing coordinates), ``e = xs - mus`` and ``g = mus``
    at the missing coordinates, the residual with 0 there is ``d = e + g``: ``d^T P d = e^T P
    e + 2 g^T (P e)_m + g_m^T P_mm g_m`` and ``(P d)_m = (P e)_m + P_mm g_m``.  ``e^T P e``
    comes with every component's constants from one GEMM on the features of ``xs`` (as for
    complete rows), the rest from the precision's rows at the missing columns
    (:func:`_incomplete_rows`); the statistics are ``sum r z`` (one more GEMM) plus the sums
    of the filled-in values.
    """
    n, d = x.shape
    k = mp.n_components
    q = d * (d + 1) // 2
    table = _PatternTable(mask)
    # rows sorted by pattern: consecutive rows then read the same factors (from cache)
    order = np.argsort(table.which, kind="stable")
    x, mask, table.which = x[order], mask[order], table.which[order]
    weights = None if weights is None else np.asarray(weights, dtype=np.float64)[order]
    u_count = table.n_patterns
    # component-last layouts: the compiled loops run over the K components, contiguous
    prec_t = np.ascontiguousarray(mp.precisions.transpose(1, 2, 0))
    pm_t, mus_t = np.ascontiguousarray(mp.pm.T), np.ascontiguousarray(mp.mus.T)
    chol = np.empty((int(table.poff2[-1]), k))
    log_det = np.empty((u_count, k))
    pg = np.empty((int(table.poff[-1]), k))
    gpg = np.empty((u_count, k))
    kernels = _compiled()
    if not kernels["factors"](prec_t, mus_t, table.pcols, table.poff, table.poff2, chol, log_det, pg, gpg):
        raise CovarianceError(CHOLESKY_ADVICE)
    sums = _FeatureSums(k, d, u_count) if sums_wanted else None
    s1, cross, hh, resp_sum = _NO_SUMS if sums is None else (sums.s1, sums.cross, sums.hh, sums.resp_sum)
    lpx = np.empty(n)
    log_resp = None if sums_wanted else np.empty((n, k))
    wts = np.ones(n) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    wext_t = np.ascontiguousarray(mp.wext.T)
    for start in range(0, n, ROW_BLOCK_FEATURES):
        sl = slice(start, min(n, start + ROW_BLOCK_FEATURES))
        b = sl.stop - start
        xs = x[sl] - mp.shift
        xs[mask[sl]] = 0.0
        z = thread_buffer("missing_features", (q + d + 1) * b, np.float64).reshape(q + d + 1, b)
        features(xs, "outer", out=z[:-1])
        z[-1] = 1.0
        wlp = np.dot(z.T, wext_t, out=log_resp[sl] if log_resp is not None else np.empty((b, k)))  # (B, K)
        r = thread_buffer("missing_resp", b * k, np.float64).reshape(b, k)
        kernels["rows"](xs, table.which[sl], table.pcols, table.poff, table.poff2, wlp, prec_t, pm_t, mus_t, chol, pg,
                        gpg, log_det, wts[sl], r, lpx[sl], s1, cross, hh, resp_sum, sums is not None)
        if sums is not None:
            sums.g += z @ r
    if sums is not None:  # sums do not depend on the order of the rows
        kernels["conditional"](chol, table.pcols, table.poff, table.poff2, resp_sum, sums.cond)
        sums.n = float(n) if weights is None else float(weights.sum())
        sums.loglik = float(lpx.sum()) if weights is None else float(np.dot(weights, lpx))
        return lpx, None, sums
    back = np.empty_like(order)
    back[order] = np.arange(n)
    return lpx[back], log_resp[back].T, None


def _features_statistics(sums: _FeatureSums, mp: MarginalPlan, centres):
    """(s0 (K,), s1 (K, D), s2 (K, D, D)) of the incomplete rows from their sums, centred at
    ``centres`` (conditional covariances included)."""
    k, d = mp.means.shape
    q = d * (d + 1) // 2
    g = sums.g
    s0 = g[-1].copy()
    r1 = g[q:-1].T + sums.s1.T
    iu, ju = np.triu_indices(d)
    r2 = np.zeros((k, d, d))
    r2[:, iu, ju] = g[:q].T
    r2[:, ju, iu] = g[:q].T
    cross = sums.cross.transpose(2, 0, 1)  # (K, D, D): cross[k, a, i] = sum r h_a x_i
    r2 += cross + np.swapaxes(cross, 1, 2) + sums.hh.transpose(2, 0, 1)
    dk = np.asarray(centres, dtype=np.float64) - mp.shift
    s1 = r1 - s0[:, None] * dk
    s2 = (r2 - np.einsum("ki,kj->kij", dk, r1) - np.einsum("ki,kj->kij", r1, dk)
          + s0[:, None, None] * np.einsum("ki,kj->kij", dk, dk))
    return s0, s1, s2 + sums.cond.transpose(2, 0, 1)


def _centred_statistics(st: SuffStats, x64, mask, mp: MarginalPlan, centres, w):
    """The "centred" kind over a chunk's incomplete rows, grouped by their number of missing
    values and pattern: adds n, log-likelihood and s0 to ``st``; returns (s1 (K, D), s2 (K,
    D, D)) centred at ``centres``, conditional covariances included."""
    k, d = mp.means.shape
    cond = np.zeros((k, d, d))  # sum r C: the conditional covariances
    s1, s2 = np.zeros((k, d)), np.zeros((k, d, d))
    delta = mp.means - centres  # statistics are centred at c_k: x^ - c = (x^ - mu) + (mu - c)
    shifted = bool(np.any(delta))
    step = _block_rows(k, d)
    for _, rows, cols, patterns, which in missing_groups(mask):
        pat = _Pattern(mp, patterns)
        r_rows = np.empty((k, rows.size))  # w r of every row of the group
        for a in range(0, rows.size, step):
            sl = slice(a, a + step)
            wb = None if w is None else w[rows[sl]]
            lpx, log_resp, resid = _block_e_step(x64[rows[sl]], mp, pat, cols[sl], which[sl], True)
            r = np.exp(log_resp, out=r_rows[:, sl])  # (K, B)
            if wb is not None:
                r *= wb
            if shifted:
                resid += delta[:, None, :]
            s1 += np.matmul(r[:, None, :], resid)[:, 0]
            scaled = thread_buffer("missing_scaled", resid.size, np.float64).reshape(resid.shape)
            s2 += np.matmul(np.swapaxes(np.multiply(resid, r[..., None], out=scaled), 1, 2), resid)
            st.n += lpx.shape[0] if wb is None else float(wb.sum())
            st.loglik += float(lpx.sum()) if wb is None else float(np.dot(wb, lpx))
        st.s0 += r_rows.sum(axis=1)
        # the conditional covariances, once per pattern: sum_rows r C = (sum_rows r) C
        resp_sum = np.stack([np.bincount(which, weights=rk, minlength=patterns.shape[0]) for rk in r_rows])
        cov = pat.conditional_covariances() * resp_sum[:, :, None, None]  # (K, U, j, j)
        where = (np.arange(k) * (d * d))[:, None, None, None] + (patterns[:, :, None] * d + patterns[:, None, :])[None]
        cond += np.bincount(where.reshape(-1), cov.reshape(-1), minlength=k * d * d).reshape(k, d, d)
    return s1, s2 + cond


def marginal_chunk_stats(x, mp: MarginalPlan, centres, covariance_type, weights=None) -> SuffStats:
    """:func:`pipeline.kernels.cpu.chunk_stats` for a chunk that may hold NaN (missing values).

    Complete rows go through the fast kernels (the whole chunk, unchanged, when it has no NaN);
    rows with missing values through the marginal E step and the conditional statistics (see
    the module docstring), in float64.  ``weights`` (n,): as in ``chunk_stats``.
    """
    x = np.asarray(x)
    mask = nan_mask(x)
    incomplete = mask.any(axis=1)
    if not incomplete.any():
        return chunk_stats(x, mp.plan, centres, covariance_type, weights=weights)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    complete = ~incomplete
    st = chunk_stats(x[complete], mp.plan, centres, covariance_type, weights=None if w is None else w[complete])
    k, d = mp.means.shape
    centres = np.asarray(centres, dtype=np.float64)
    rows = np.nonzero(incomplete)[0]
    wb = None if w is None else w[rows]
    if _features_kind(mp):
        sums = _features_rows(np.asarray(x[rows], dtype=np.float64), mask[rows], mp, wb)[2]
        s0, s1, s2 = _features_statistics(sums, mp, centres)
        st.s0 += s0
        st.n += sums.n
        st.loglik += sums.loglik
    else:
        s1, s2 = _centred_statistics(st, np.asarray(x, dtype=np.float64), mask, mp, centres, w)
    st.s1 += s1
    statistic = st.family.statistic
    if statistic == "outer":
        st.s2 += s2
    elif statistic == "diagonal":
        st.s2 += np.diagonal(s2, axis1=1, axis2=2)
    else:
        st.s2 += np.trace(s2, axis1=1, axis2=2)
    return st


def marginal_log_resp(x, mp: MarginalPlan):
    """(log p(x_o) (n,), log-responsibilities (n, K)) of rows that may hold NaN: complete rows
    by the plan's kernel (block by block, as without missing values), the others from their
    observed values."""
    x = np.asarray(x)
    n = x.shape[0]
    mask = nan_mask(x)
    incomplete = mask.any(axis=1)
    lpx = np.empty(n)
    log_resp = np.empty((n, mp.n_components))
    complete = np.nonzero(~incomplete)[0]
    start = 0
    for xc in shifted_blocks(x[complete], mp.plan.shift, mp.plan.dtype):
        rows = complete[start : start + xc.shape[0]]
        lpx[rows], log_resp[rows] = log_responsibilities(xc, mp.plan)
        start += xc.shape[0]
    if not np.all(np.isfinite(lpx[complete])):
        raise DataError(
            f"{int(np.count_nonzero(~np.isfinite(lpx[complete])))} rows to predict have inf values (or values "
            "too large for the model's dtype); remove them first"
        )
    if incomplete.any():
        x64 = np.asarray(x, dtype=np.float64)
        if np.isinf(x64[incomplete]).any():
            raise DataError(
                f"{int(np.isinf(x64[incomplete]).any(axis=1).sum())} rows to predict have inf values; NaN are "
                "missing values under nan_policy='marginalize', inf is not: remove them first"
            )
        if _features_kind(mp):
            rows = np.nonzero(incomplete)[0]
            lp, lr, _ = _features_rows(x64[rows], mask[rows], mp, sums_wanted=False)
            lpx[rows], log_resp[rows] = lp, lr.T
        else:
            for _, rows, cols, patterns, which in missing_groups(mask):
                pat = _Pattern(mp, patterns)
                step = _block_rows(*mp.means.shape)
                for a in range(0, rows.size, step):
                    sl = slice(a, a + step)
                    lp, lr, _ = _block_e_step(x64[rows[sl]], mp, pat, cols[sl], which[sl], False)
                    lpx[rows[sl]], log_resp[rows[sl]] = lp, lr.T
    return lpx, log_resp
