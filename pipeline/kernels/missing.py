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

import numpy as np

from pipeline.core.plan import LOG_2PI, MarginalPlan
from pipeline.core.stats import SuffStats
from pipeline.exceptions import DataError
from pipeline.kernels.cpu import ROW_BLOCK, chunk_stats, log_responsibilities, log_sum_exp, shifted_blocks


def _forward(L, b):
    """``L^-1 b`` for lower-triangular ``L`` (..., j, j) and ``b`` (..., j, m), by forward
    substitution vectorised over the leading axes."""
    y = np.empty(np.broadcast_shapes(L.shape[:-2], b.shape[:-2]) + b.shape[-2:])
    for i in range(L.shape[-1]):
        s = b[..., i, :]
        if i:
            s = s - np.einsum("...l,...lm->...m", L[..., i, :i], y[..., :i, :])
        y[..., i, :] = s / L[..., i, i, None]
    return y


def _backward(L, y):
    """``L^-T y`` for lower-triangular ``L`` (..., j, j) and ``y`` (..., j, m), by back
    substitution."""
    j = L.shape[-1]
    x = np.empty(np.broadcast_shapes(L.shape[:-2], y.shape[:-2]) + y.shape[-2:])
    for i in reversed(range(j)):
        s = y[..., i, :]
        if i < j - 1:
            s = s - np.einsum("...l,...lm->...m", L[..., i + 1 :, i], x[..., i + 1 :, :])
        x[..., i, :] = s / L[..., i, i, None]
    return x


def missing_groups(mask: np.ndarray):
    """Rows with missing values grouped by their number j of missing values, then by pattern.

    Yields (j, rows (R,), missing columns per row (R, j) sorted, patterns (U, j), pattern of
    each row (R,)).  A row with every value missing is a DataError.
    """
    counts = mask.sum(axis=1)
    n_features = mask.shape[1]
    if np.any(counts == n_features):
        raise DataError(
            f"{int(np.count_nonzero(counts == n_features))} rows have every value missing (NaN): "
            "nan_policy='marginalize' needs at least one observed value per row (use nan_policy='omit' "
            "to drop them)"
        )
    for j in np.unique(counts[counts > 0]):
        rows = np.nonzero(counts == j)[0]
        cols = np.nonzero(mask[rows])[1].reshape(-1, int(j))
        patterns, which = np.unique(cols, axis=0, return_inverse=True)
        yield int(j), rows, cols, patterns, which.reshape(-1)


class _Pattern:
    """Per (component, pattern): the Cholesky factor of P_mm and its log det (K, U)."""

    def __init__(self, mp: MarginalPlan, patterns):
        pmm = mp.precisions[:, patterns[:, :, None], patterns[:, None, :]]  # (K, U, j, j)
        self.chol = np.linalg.cholesky(pmm)
        self.log_det = np.log(np.diagonal(self.chol, axis1=-2, axis2=-1)).sum(axis=-1)

    def conditional_covariances(self):
        """P_mm^-1 = L^-T L^-1 (K, U, j, j): Cov[x_m | x_o] per component and pattern."""
        eye = np.broadcast_to(np.eye(self.chol.shape[-1]), self.chol.shape)
        return _backward(self.chol, _forward(self.chol, eye))


def _block_e_step(x, mp: MarginalPlan, pat: _Pattern, cols, which, conditional: bool):
    """The E step of rows ``x`` (B, D) whose missing columns are ``cols`` (B, j), of patterns
    ``which`` (B,): (log p(x_o) (B,), log-responsibilities (K, B), and with ``conditional`` the
    residuals ``x^ - mu`` (K, B, D) with the conditional expectations filled in)."""
    b, d = x.shape
    j = cols.shape[1]
    observed = ~np.isnan(x)
    with np.errstate(invalid="ignore"):
        resid = np.where(observed[None], x[None] - mp.means[:, None, :], 0.0)  # (K, B, D)
    u = np.matmul(resid, mp.precisions)  # P symmetric: d P = (P d)^T
    quad = np.einsum("kbd,kbd->kb", resid, u)
    um = np.take_along_axis(u, np.broadcast_to(cols[None], (u.shape[0], b, j)), axis=2)
    chol = pat.chol[:, which]  # (K, B, j, j)
    w = _forward(chol, um[..., None])  # (K, B, j, 1)
    maha = quad - np.einsum("kbj,kbj->kb", w[..., 0], w[..., 0])
    wlp = (mp.log_weights + mp.log_det)[:, None] - pat.log_det[:, which] - 0.5 * (d - j) * LOG_2PI - 0.5 * maha
    lpx = log_sum_exp(wlp)
    log_resp = wlp - lpx
    if not conditional:
        return lpx, log_resp, None
    filled = -_backward(chol, w)[..., 0]  # x^_m - mu_m = -P_mm^-1 u_m
    np.put_along_axis(resid, np.broadcast_to(cols[None], filled.shape), filled, axis=2)
    return lpx, log_resp, resid


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
    delta = mp.means - centres  # statistics are centred at c_k: x^ - c = (x^ - mu) + (mu - c)
    s1 = np.zeros((k, d))
    s2 = np.zeros((k, d, d))
    x64 = np.asarray(x, dtype=np.float64)
    for j, rows, cols, patterns, which in missing_groups(mask):
        pat = _Pattern(mp, patterns)
        resp_sum = np.zeros((patterns.shape[0], k))  # sum of w r per pattern and component
        for a in range(0, rows.size, ROW_BLOCK):
            sl = slice(a, a + ROW_BLOCK)
            lpx, log_resp, resid = _block_e_step(x64[rows[sl]], mp, pat, cols[sl], which[sl], True)
            r = np.exp(log_resp)  # (K, B)
            if w is None:
                st.n += lpx.shape[0]
                st.loglik += float(lpx.sum())
            else:
                wb = w[rows[sl]]
                st.n += float(wb.sum())
                st.loglik += float(np.dot(wb, lpx))
                r *= wb
            resid += delta[:, None, :]
            st.s0 += r.sum(axis=1)
            s1 += np.einsum("kb,kbd->kd", r, resid)
            s2 += np.matmul(np.swapaxes(resid * r[..., None], 1, 2), resid)
            np.add.at(resp_sum, which[sl], r.T)
        # the conditional covariances, once per pattern: sum_rows r C = (sum_rows r) C
        cov = pat.conditional_covariances() * resp_sum.T[:, :, None, None]  # (K, U, j, j)
        kk = np.arange(k)[:, None, None, None]
        np.add.at(s2, (kk, patterns[None, :, :, None], patterns[None, :, None, :]), cov)
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
        for _, rows, cols, patterns, which in missing_groups(mask):
            pat = _Pattern(mp, patterns)
            for a in range(0, rows.size, ROW_BLOCK):
                sl = slice(a, a + ROW_BLOCK)
                lp, lr, _ = _block_e_step(x64[rows[sl]], mp, pat, cols[sl], which[sl], False)
                lpx[rows[sl]], log_resp[rows[sl]] = lp, lr.T
    return lpx, log_resp
