"""The E step of rows with missing values (``nan_policy="marginalize"``), pure NumPy.

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
with that pattern, and the per-row work is two triangular solves of size |m|, vectorised over
rows and components.  Rows are grouped inside a chunk by their number of missing values and
then by pattern; complete rows keep the fast kernels of :mod:`pipeline.kernels.cpu`, and a
chunk without NaN is computed exactly as without missing values.  Rows with missing values
are computed in float64 whatever the compute dtype.
"""

from __future__ import annotations

import threading

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
    n_features = mask.shape[1]
    for j in np.unique(counts[counts > 0]):
        rows = np.nonzero(counts == j)[0]
        cols = np.nonzero(mask[rows])[1].reshape(-1, int(j))
        if n_features <= 62:  # a pattern as the bits of one integer: a 1-D unique, 5x faster
            codes = (np.int64(1) << cols.astype(np.int64)).sum(axis=1)
            _, first, which = np.unique(codes, return_index=True, return_inverse=True)
            patterns = cols[first]
        else:
            patterns, which = np.unique(cols, axis=0, return_inverse=True)
        yield int(j), rows, cols, patterns, which.reshape(-1)


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
# ``pcols[poff[u]:poff[u + 1]]`` (j_u of them) and its j_u x j_u factors start at ``poff2[u]``.

#: rows per block of the "features" kind
ROW_BLOCK_FEATURES = 2048
#: floating-point reassociation lets the compiler vectorise the short dot products (results
#: change in the last bits only); no assumption about NaN or inf
_FASTMATH = {"reassoc", "contract"}


_COMPILED: dict = {}
_COMPILE_LOCK = threading.Lock()


def _compiled() -> dict:
    """The compiled kernels, made on first use: numba is imported only by a process that meets
    a row with missing values (its import alone takes ~110 MB of resident memory), and loads
    them from numba's on-disk cache after the first compilation (``cache=True``)."""
    if not _COMPILED:
        with _COMPILE_LOCK:
            if not _COMPILED:
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
        if d <= 62:  # a pattern as the bits of one integer: a 1-D unique, 5x faster
            codes = mask_rows.astype(np.int64) @ (np.int64(1) << np.arange(d, dtype=np.int64))
            _, first, which = np.unique(codes, return_index=True, return_inverse=True)
        else:
            _, first, which = np.unique(mask_rows, axis=0, return_index=True, return_inverse=True)
        pmask = mask_rows[first]
        lengths = pmask.sum(axis=1)
        _check_observed(lengths, d)
        self.which = np.ascontiguousarray(which.reshape(-1), dtype=np.int64)
        self.pcols = np.ascontiguousarray(np.nonzero(pmask)[1], dtype=np.int64)
        self.poff = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.poff2 = np.concatenate([[0], np.cumsum(lengths**2)]).astype(np.int64)
        self.n_patterns = len(first)
        self.max_missing = int(lengths.max())


def _pattern_factors(prec, mus, pcols, poff, poff2, chol, log_det, pg, gpg):  # pragma: no cover - compiled
    """Per component k and pattern u: the lower Cholesky factor of P_mm (into ``chol[k,
    poff2[u]:]``, row-major j x j), its log det, ``P_mm g`` and ``g^T P_mm g`` with ``g = mu -
    shift`` at the missing coordinates.  Returns False if a P_mm is not positive definite."""
    k_count = prec.shape[0]
    for k in range(k_count):
        for u in range(poff.shape[0] - 1):
            o, base = poff[u], poff2[u]
            j = poff[u + 1] - o
            gpg[k, u] = 0.0
            for a in range(j):
                v = 0.0
                for b in range(j):
                    v += prec[k, pcols[o + a], pcols[o + b]] * mus[k, pcols[o + b]]
                pg[k, o + a] = v
                gpg[k, u] += mus[k, pcols[o + a]] * v
            ld = 0.0
            for a in range(j):  # Cholesky-Banachiewicz, row by row
                for b in range(a + 1):
                    v = prec[k, pcols[o + a], pcols[o + b]]
                    for m in range(b):
                        v -= chol[k, base + a * j + m] * chol[k, base + b * j + m]
                    if a == b:
                        if v <= 0.0:
                            return False
                        chol[k, base + a * j + a] = np.sqrt(v)
                        ld += np.log(chol[k, base + a * j + a])
                    else:
                        chol[k, base + a * j + b] = v / chol[k, base + b * j + b]
            log_det[k, u] = ld
    return True


def _incomplete_rows(xs, which, pcols, poff, poff2, jmax, wlp, prec, pm, mus, chol, pg, gpg, log_det_mm, weights,
                     resp, lpx, s1, cross, hh, resp_sum, stats):  # pragma: no cover - compiled (results tested)
    """The per-row part of the "features" kind (see :func:`_features_rows`): for every row b
    and component k, ``(P e)_m`` from the precision's rows at the missing columns, the forward
    solve ``w = L^-1 u_m``, the log-density correction (added to ``wlp`` (K, B), which ends
    as the log-responsibilities), the log-sum-exp over components (``lpx``) and ``resp`` = r
    times the row's weight; with ``stats`` the back solve of the conditional mean ``h`` and
    the sums ``s1`` (sum r h), ``cross`` (sum r h x^T), ``hh`` (sum r h h^T) and ``resp_sum``
    (sum r per pattern).  O(K j (D + j)) per row."""
    n, d = xs.shape
    k_count = prec.shape[0]
    g = np.empty((k_count, jmax))
    w = np.empty((k_count, jmax))
    pe = np.empty(jmax)
    f = np.empty(jmax)
    h = np.empty(jmax)
    e = np.empty(k_count)
    for b in range(n):
        xrow = xs[b]
        u = which[b]
        o, base = poff[u], poff2[u]
        j = poff[u + 1] - o
        top = -np.inf
        for k in range(k_count):
            corr = gpg[k, u]
            for a in range(j):
                c = pcols[o + a]
                acc = 0.0
                for i in range(d):
                    acc += prec[k, c, i] * xrow[i]
                pe[a] = acc - pm[k, c]
                g[k, a] = mus[k, c]
            for a in range(j):
                v = pe[a] + pg[k, o + a]
                for m in range(a):
                    v -= chol[k, base + a * j + m] * w[k, m]
                w[k, a] = v / chol[k, base + a * j + a]
                corr += 2.0 * g[k, a] * pe[a] - w[k, a] * w[k, a]
            wlp[k, b] += 0.5 * j * LOG_2PI - log_det_mm[k, u] - 0.5 * corr
            if wlp[k, b] > top:
                top = wlp[k, b]
        total = 0.0
        for k in range(k_count):
            e[k] = np.exp(wlp[k, b] - top)
            total += e[k]
        lp = top + np.log(total)
        lpx[b] = lp
        scale = weights[b] / total
        for k in range(k_count):
            wlp[k, b] -= lp
            resp[k, b] = e[k] * scale
        if not stats:
            continue
        for k in range(k_count):
            rk = resp[k, b]
            if rk == 0.0:
                continue
            resp_sum[k, u] += rk
            for a in range(j - 1, -1, -1):  # L^T f = w: f = P_mm^-1 u_m
                v = w[k, a]
                for m in range(a + 1, j):
                    v -= chol[k, base + m * j + a] * f[m]
                f[a] = v / chol[k, base + a * j + a]
            for a in range(j):
                h[a] = g[k, a] - f[a]  # x^_m - shift_m
            for a in range(j):
                c = pcols[o + a]
                rh = rk * h[a]
                s1[k, c] += rh
                for i in range(d):
                    cross[k, c, i] += rh * xrow[i]
                for a2 in range(j):
                    hh[k, c, pcols[o + a2]] += rh * h[a2]


def _add_conditional_covariances(chol, pcols, poff, poff2, jmax, resp_sum, cond):  # pragma: no cover - compiled
    """``cond[k]`` += sum over patterns u of ``resp_sum[k, u] * P_mm^-1`` (embedded at the
    pattern's missing coordinates), ``P_mm^-1 = L^-T L^-1`` by forward substitution."""
    inv = np.empty((jmax, jmax))
    for k in range(chol.shape[0]):
        for u in range(poff.shape[0] - 1):
            rs = resp_sum[k, u]
            if rs == 0.0:
                continue
            o, base = poff[u], poff2[u]
            j = poff[u + 1] - o
            for col in range(j):  # inv = L^-1, lower triangular, column by column
                for a in range(j):
                    if a < col:
                        inv[a, col] = 0.0
                        continue
                    v = 1.0 if a == col else 0.0
                    for m in range(col, a):
                        v -= chol[k, base + a * j + m] * inv[m, col]
                    inv[a, col] = v / chol[k, base + a * j + a]
            for a in range(j):
                for b in range(j):
                    v = 0.0
                    for m in range(max(a, b), j):
                        v += inv[m, a] * inv[m, b]
                    cond[k, pcols[o + a], pcols[o + b]] += rs * v


class _FeatureSums:
    """Sums of the "features" kind over a chunk's incomplete rows, about the plan's shift:
    ``g`` (Q + D + 1, K) = sum r z (z the rows' features with missing values 0, as in
    :func:`pipeline.kernels.cpu._add_features_chunk`), and the terms of the filled-in values
    ``h`` (x^ - shift at the missing coordinates): ``s1`` (K, D) sum r h, ``cross`` (K, D, D)
    sum r h x^T, ``hh`` (K, D, D) sum r h h^T; ``resp_sum`` (K, U) sum r per pattern; ``n``
    and ``loglik`` the rows' (weighted) count and log-likelihood."""

    def __init__(self, k, d, n_patterns):
        q = d * (d + 1) // 2
        self.g = np.zeros((q + d + 1, k))
        self.s1 = np.zeros((k, d))
        self.cross = np.zeros((k, d, d))
        self.hh = np.zeros((k, d, d))
        self.resp_sum = np.zeros((k, n_patterns))


_NO_SUMS = (np.zeros((1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1)))


def _features_rows(x, mp: MarginalPlan, weights=None, sums_wanted=True):
    """The E step of incomplete rows ``x`` (R, D) float64 by the "features" kind: returns (log
    p(x_o) (R,), log-responsibilities (K, R), responsibilities times the weights (K, R), and
    the sums (:class:`_FeatureSums`, with the conditional covariances ``cond`` (K, D, D)) or
    None).  With ``sums_wanted`` the per-row results are in the order of the rows sorted by
    pattern (only their sums are meant to be used), else in the order of ``x``.

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
    mask = np.isnan(x)
    table = _PatternTable(mask)
    # rows sorted by pattern: consecutive rows then read the same factors (from cache)
    order = np.argsort(table.which, kind="stable")
    x, mask, table.which = x[order], mask[order], table.which[order]
    weights = None if weights is None else np.asarray(weights, dtype=np.float64)[order]
    u_count = table.n_patterns
    chol = np.empty((k, int(table.poff2[-1])))
    log_det = np.empty((k, u_count))
    pg = np.empty((k, int(table.poff[-1])))
    gpg = np.empty((k, u_count))
    kernels = _compiled()
    if not kernels["factors"](mp.precisions, mp.mus, table.pcols, table.poff, table.poff2, chol, log_det, pg, gpg):
        raise CovarianceError(CHOLESKY_ADVICE)
    sums = _FeatureSums(k, d, u_count) if sums_wanted else None
    s1, cross, hh, resp_sum = _NO_SUMS if sums is None else (sums.s1, sums.cross, sums.hh, sums.resp_sum)
    lpx, log_resp, resp = np.empty(n), np.empty((k, n)), np.empty((k, n))
    wts = np.ones(n) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    for start in range(0, n, ROW_BLOCK_FEATURES):
        sl = slice(start, min(n, start + ROW_BLOCK_FEATURES))
        b = sl.stop - start
        xs = x[sl] - mp.shift
        xs[mask[sl]] = 0.0
        z = thread_buffer("missing_features", (q + d + 1) * b, np.float64).reshape(q + d + 1, b)
        features(xs, "outer", out=z[:-1])
        z[-1] = 1.0
        wlp = np.dot(mp.wext, z, out=log_resp[:, sl] if b == n else np.empty((k, b)))
        r = resp[:, sl] if b == n else np.empty((k, b))
        kernels["rows"](xs, table.which[sl], table.pcols, table.poff, table.poff2, table.max_missing, wlp,
                         mp.precisions, mp.pm, mp.mus, chol, pg, gpg, log_det, wts[sl], r, lpx[sl],
                         s1, cross, hh, resp_sum, sums is not None)
        if b != n:
            log_resp[:, sl], resp[:, sl] = wlp, r
        if sums is not None:
            sums.g += z @ r.T
    if sums is not None:
        sums.cond = np.zeros((k, d, d))
        kernels["conditional"](chol, table.pcols, table.poff, table.poff2, table.max_missing, resp_sum, sums.cond)
    if sums is not None:  # sums do not depend on the order of the rows
        sums.n = float(n) if weights is None else float(weights.sum())
        sums.loglik = float(lpx.sum()) if weights is None else float(np.dot(weights, lpx))
        return lpx, log_resp, resp, sums
    back = np.empty_like(order)
    back[order] = np.arange(n)
    return lpx[back], log_resp[:, back], resp[:, back], sums


def _features_statistics(sums: _FeatureSums, mp: MarginalPlan, centres):
    """(s0 (K,), s1 (K, D), s2 (K, D, D)) of the incomplete rows from their sums, centred at
    ``centres`` (conditional covariances included)."""
    k, d = mp.means.shape
    q = d * (d + 1) // 2
    g = sums.g
    s0 = g[-1].copy()
    r1 = g[q:-1].T + sums.s1
    iu, ju = np.triu_indices(d)
    r2 = np.zeros((k, d, d))
    r2[:, iu, ju] = g[:q].T
    r2[:, ju, iu] = g[:q].T
    r2 += sums.cross + np.swapaxes(sums.cross, 1, 2) + sums.hh  # cross[k, a, i] = sum r h_a x_i
    dk = np.asarray(centres, dtype=np.float64) - mp.shift
    s1 = r1 - s0[:, None] * dk
    s2 = (r2 - np.einsum("ki,kj->kij", dk, r1) - np.einsum("ki,kj->kij", r1, dk)
          + s0[:, None, None] * np.einsum("ki,kj->kij", dk, dk))
    return s0, s1, s2 + sums.cond


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
    mask = np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, dtype=bool)
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
    if mp.kind == "features":
        sums = _features_rows(np.asarray(x[rows], dtype=np.float64), mp, wb)[3]
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
    mask = np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, dtype=bool)
    incomplete = mask.any(axis=1)
    lpx = np.empty(n)
    log_resp = np.empty((n, mp.n_components))
    complete = np.nonzero(~incomplete)[0]
    start = 0
    for xc in shifted_blocks(x[complete], mp.plan.shift, mp.plan.dtype):
        rows = complete[start : start + xc.shape[0]]
        lpx[rows], log_resp[rows] = log_responsibilities(xc, mp.plan)
        start += xc.shape[0]
    if incomplete.any():
        x64 = np.asarray(x, dtype=np.float64)
        if mp.kind == "features":
            rows = np.nonzero(incomplete)[0]
            lp, lr, _, _ = _features_rows(x64[rows], mp, sums_wanted=False)
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
