"""Per-covariance-type numerics of Gaussian mixtures: pure NumPy, no Dask, no files.

Shapes by covariance type (K components, D features):

=========  ======================  ==========================
type       covariances             precisions_cholesky
=========  ======================  ==========================
full       (K, D, D)               (K, D, D)
tied       (D, D)                  (D, D)
diag       (K, D)                  (K, D)
spherical  (K,)                    (K,)
=========  ======================  ==========================

As in scikit-learn, ``precisions_cholesky`` holds ``L`` with ``precision = L @ L.T`` where ``L``
is the transposed inverse of the lower Cholesky factor of the covariance (an upper-triangular
matrix).  It is obtained by a triangular solve of the Cholesky factor, never by inverting a
covariance matrix.  All log-densities are computed from ``L`` in log space.

The E step is organised for speed: :class:`EStepPlan` prepares, once per iteration, the small
arrays every chunk needs, so that the quadratic forms of all K components come from one GEMM
per block of rows on the rows' outer products, and the statistics from one more (see
:class:`EStepPlan`); rows are shifted by ``c`` near the data first, so that a large common
offset does not cancel.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
LOG_2PI = math.log(2.0 * math.pi)


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]


# --------------------------------------------------------------------------------------------
# Cholesky factors of the precisions
# --------------------------------------------------------------------------------------------


class CovarianceError(ValueError):
    """A covariance matrix is not positive definite (a collapsed or degenerate component)."""


_CHOLESKY_ADVICE = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or check the data for duplicated points."
)


def _precision_cholesky_matrix(cov: np.ndarray) -> np.ndarray:
    """``L`` (D, D) with ``inv(cov) = L @ L.T`` from one covariance matrix, via Cholesky."""
    cov_chol = linalg.cholesky(cov, lower=True)
    return linalg.solve_triangular(cov_chol, np.eye(cov.shape[0]), lower=True).T


def precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors of the precisions from covariances; raises :class:`CovarianceError`."""
    covariances = np.asarray(covariances, dtype=np.float64)
    try:
        if covariance_type == "full":
            return np.stack([_precision_cholesky_matrix(c) for c in covariances])
        if covariance_type == "tied":
            return _precision_cholesky_matrix(covariances)
    except linalg.LinAlgError as exc:
        raise CovarianceError(_CHOLESKY_ADVICE) from exc
    if np.any(~np.isfinite(covariances)) or np.any(covariances <= 0.0):
        raise CovarianceError(_CHOLESKY_ADVICE)
    return 1.0 / np.sqrt(covariances)


def precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors from user-given precisions (as scikit-learn's ``precisions_init``)."""
    precisions = np.asarray(precisions, dtype=np.float64)
    try:
        if covariance_type == "full":
            return np.stack([linalg.cholesky(p, lower=True) for p in precisions])
        if covariance_type == "tied":
            return linalg.cholesky(precisions, lower=True)
    except linalg.LinAlgError as exc:
        raise ValueError("precisions_init must be symmetric positive definite") from exc
    if np.any(precisions <= 0.0):
        raise ValueError("precisions_init must be positive")
    return np.sqrt(precisions)


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", prec_chol, prec_chol)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def covariances_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances from precision Cholesky factors: ``cov = inv(L)^T inv(L)`` by triangular solves."""

    def one(L):
        # L is triangular (upper for factors from covariances, lower from precisions): solve with
        # the triangle it has.
        lower = not np.triu(L, 1).any()
        inv_l = linalg.solve_triangular(L, np.eye(L.shape[0]), lower=lower)
        return inv_l.T @ inv_l

    if covariance_type == "full":
        return np.stack([one(L) for L in prec_chol])
    if covariance_type == "tied":
        return one(prec_chol)
    return 1.0 / prec_chol**2


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """log det of the precision Cholesky factor (half the log det of the precision)."""
    if covariance_type == "full":
        return np.sum(np.log(np.diagonal(prec_chol, axis1=1, axis2=2)), axis=1)
    if covariance_type == "tied":
        return np.sum(np.log(np.diag(prec_chol)))
    if covariance_type == "diag":
        return np.sum(np.log(prec_chol), axis=1)
    return n_features * np.log(prec_chol)


# --------------------------------------------------------------------------------------------
# The E step of one block of rows
# --------------------------------------------------------------------------------------------


#: the fast "features" kernels are used while ``eps(dtype) * max_k |mu_k - shift|^2_{P_k}`` (the
#: relative precision lost to cancellation) stays below this bound for the compute dtype; beyond
#: it (components very many standard deviations from the shift) float32 is promoted to float64,
#: and beyond that the per-component centred kernel is used.  float32 results are only ~1e-4
#: accurate to begin with, hence its looser bound (about 90 standard deviations).
FAST_PATH_MAX_LOSS = {"float32": 1e-3, "float64": 1e-8}


@dataclass(frozen=True)
class EStepPlan:
    """Everything a chunk needs to compute weighted log-densities of all components.

    ``kind`` selects the kernel:

    - "outer" (full, tied), "diag" (diag) and "sphere" (spherical): the fast "features"
      kernels.  With ``xc = x - shift``, each row is mapped to features ``z``: for "outer" the
      upper triangle of ``xc xc^T`` (D(D+1)/2 values), for "diag" the squares ``xc**2`` (D
      values), for "sphere" the squared norm ``|xc|^2`` (one value), followed by ``xc`` itself.
      Every Mahalanobis distance is then linear in ``z``:
      ``maha_k = z . w_k + d_k^T P_k d_k``, with ``w_k`` holding ``P_k`` (off-diagonals
      doubled) and ``-2 P_k d_k`` (``d_k = mu_k - shift``), so the weighted log-densities are
      ``wlin @ z + bias`` with ``wlin`` (K, Q + D) = ``-w / 2`` and ``bias = const - d^T P d / 2``;
      the statistics are ``z^T @ resp``.  One GEMM each way per block, for all components.
    - "centred" (any type; components far from the shift in whitened units, where the
      expanded form would cancel): ``lcat`` (D, K*D) = [L_1 ... L_K] and ``offset`` (K*D,)
      = concat ``d_k @ L_k``; ``maha_k = |xc @ L_k - d_k @ L_k|^2``, statistics per component.

    ``const`` (K,) is ``log pi_k + log det L_k - D/2 log(2 pi)``.  GEMM operands are in the
    compute ``dtype``; constants stay float64.
    """

    kind: str
    shift: np.ndarray
    const: np.ndarray
    dtype: str = "float64"
    wlin: np.ndarray | None = None
    bias: np.ndarray | None = None
    lcat: np.ndarray | None = None
    offset: np.ndarray | None = None

    @property
    def n_components(self) -> int:
        return self.const.shape[0]

    @property
    def n_features(self) -> int:
        return self.shift.shape[0]

    @property
    def n_quadratic(self) -> int:
        """Number of quadratic features (columns of ``wlin`` before the linear ones)."""
        return n_quadratic(self.kind, self.n_features)


def n_quadratic(kind: str, n_features: int) -> int:
    """Quadratic features per row: D(D+1)/2 outer-product terms ("outer"), D squares ("diag")
    or the squared norm ("sphere")."""
    if kind == "outer":
        return n_features * (n_features + 1) // 2
    return 1 if kind == "sphere" else n_features


def triu_weights(precisions: np.ndarray) -> np.ndarray:
    """(D(D+1)/2, K) weights so that ``z_triu @ w[:, k] = x^T P_k x`` (off-diagonals doubled)."""
    d = precisions.shape[-1]
    iu, ju = np.triu_indices(d)
    return (precisions[:, iu, ju] * np.where(iu == ju, 1.0, 2.0)).T


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


def make_plan(weights, means, prec_chol, covariance_type, dtype="float64", shift=None, kernel="auto") -> EStepPlan:
    """Prepare the E step for the given parameters (driver side, O(K*D^2)).

    ``kernel`` ("auto", "features" or "centred"): "auto" takes the fast features kernel unless
    cancellation would cost precision (see FAST_PATH_MAX_LOSS).
    """
    if kernel not in ("auto", "features", "centred"):
        raise ValueError(f"kernel must be 'auto', 'features' or 'centred'; got {kernel!r}")
    weights = np.asarray(weights, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    n_components, n_features = means.shape
    if shift is None:
        shift = weights @ means / max(weights.sum(), np.finfo(np.float64).tiny)
    shift = np.asarray(shift, dtype=np.float64)
    log_w = np.log(np.maximum(weights, np.finfo(np.float64).tiny))
    const = log_w + log_det_cholesky(prec_chol, covariance_type, n_features) - 0.5 * n_features * LOG_2PI
    dt = np.dtype(dtype)
    # the kernels subtract the shift in the compute dtype: build everything from that same value
    shift = shift.astype(dt).astype(np.float64)
    diff = means - shift
    if covariance_type in ("full", "tied"):
        if covariance_type == "tied":
            prec_chol = np.broadcast_to(prec_chol, (n_components, n_features, n_features))
        precisions = np.einsum("kij,klj->kil", prec_chol, prec_chol)
        whitened = np.einsum("kd,kde,ke->k", diff, precisions, diff)  # |d_k|^2 in P_k's metric
        quadratic, linear = triu_weights(precisions), -2.0 * np.einsum("kde,ke->dk", precisions, diff)
        kind = "outer"
    else:
        prec = np.repeat((prec_chol**2)[:, None], n_features, axis=1) if covariance_type == "spherical" else prec_chol**2
        whitened = np.sum(prec * diff**2, axis=1)
        linear = -2.0 * (prec * diff).T
        if covariance_type == "spherical":  # one precision per component: weights |xc|^2
            quadratic, kind = prec[:, :1].T, "sphere"
        else:
            quadratic, kind = prec.T, "diag"
        prec_chol = np.stack([np.diag(np.sqrt(p)) for p in prec])  # for the centred fallback
    # components of negligible weight (emptied, collapsed) do not decide the kernel: their
    # distances barely move any responsibility
    worst = float(np.max(whitened[weights > 1e-8 * weights.max()], initial=0.0))
    if kernel == "auto" and worst * np.finfo(dt).eps > FAST_PATH_MAX_LOSS[dt.name] and dt != np.float64:
        dt = np.dtype(np.float64)
    if kernel == "features" or (kernel == "auto" and worst * np.finfo(dt).eps <= FAST_PATH_MAX_LOSS[dt.name]):
        wlin = np.ascontiguousarray(-0.5 * np.concatenate([quadratic, linear]).T, dtype=dt)
        return EStepPlan(kind, shift.astype(dt), const, dt.name, wlin=wlin, bias=const - 0.5 * whitened)
    lcat = np.ascontiguousarray(np.concatenate(list(prec_chol), axis=1))  # (D, K*D)
    offset = np.einsum("kd,kde->ke", diff, prec_chol).reshape(-1)
    return EStepPlan("centred", shift.astype(dt), const, dt.name, lcat=lcat.astype(dt), offset=offset.astype(dt))


def weighted_log_prob(xc: np.ndarray, plan: EStepPlan) -> np.ndarray:
    """``log pi_k + log N(x | mu_k, Sigma_k)`` for a block of shifted rows ``xc = x - plan.shift``,
    component-major: returns (K, B) float64.

    The (K, B) layout makes the per-row max/sum over components of the responsibilities
    elementwise operations between rows of length B (5x faster than reducing rows of length K).
    xc : (B, D) in the plan's dtype.  (The E step's hot loop, ``SuffStats._add_features_chunk``,
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
# The M step: covariances from centred statistics
# --------------------------------------------------------------------------------------------


def covariances_from_stats(s0, s1, s2, reg_covar, covariance_type):
    """Covariances from statistics centred at per-component centres ``c_k``.

    s0 (K,) = sum r (plus the tiny floor), s1 (K, D) = sum r (x - c_k), s2 = sum r (x-c_k)(x-c_k)^T
    as (K, D, D) for full/tied, its diagonal (K, D) for diag, its trace (K,) for spherical.
    Uses ``Sigma_k = s2/s0 - e e^T`` with the mean shift ``e = s1/s0`` (small, as ``c_k`` is the
    previous mean), so nothing large cancels.
    """
    e = s1 / s0[:, None]
    n_features = s1.shape[1]
    if covariance_type == "full":
        cov = s2 / s0[:, None, None] - np.einsum("ki,kj->kij", e, e)
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        cov[:, np.arange(n_features), np.arange(n_features)] += reg_covar
        return cov
    if covariance_type == "tied":
        cov = (s2.sum(axis=0) - np.einsum("k,ki,kj->ij", s0, e, e)) / s0.sum()
        cov = 0.5 * (cov + cov.T)
        cov[np.arange(n_features), np.arange(n_features)] += reg_covar
        return cov
    if covariance_type == "diag":
        return np.maximum(s2 / s0[:, None] - e * e, 0.0) + reg_covar
    # spherical: s2 (K,) = sum r |x - c_k|^2; the variance is the mean over features
    return np.maximum(s2 / s0 - np.sum(e * e, axis=1), 0.0) / n_features + reg_covar


def floor_covariances(covariances, covariance_type, scale, reg_covar):
    """Make every covariance positive definite, flooring collapsed components.

    Returns (covariances, precisions_cholesky, floored component indices).  A component whose
    Cholesky factorisation fails (or is not finite) gets ``jitter * I`` added, the jitter growing
    from ``max(reg_covar, 1e-10 * scale)`` by factors of 10; ``scale`` is a typical variance of
    the data.  Healthy components are untouched, so results equal scikit-learn's whenever it
    succeeds.
    """
    try:
        return covariances, precision_cholesky(covariances, covariance_type), []
    except CovarianceError:
        pass
    covariances = np.array(covariances, dtype=np.float64, copy=True)
    floored = []
    base = max(float(reg_covar), 1e-10 * float(scale), np.finfo(np.float64).tiny)

    if covariance_type in ("full", "tied"):
        mats = covariances[None] if covariance_type == "tied" else covariances
        chols = []
        for k, cov in enumerate(mats):
            cov = np.where(np.isfinite(cov), cov, 0.0)
            jitter = 0.0
            for _ in range(40):
                try:
                    chols.append(_precision_cholesky_matrix(cov + jitter * np.eye(cov.shape[0])))
                    break
                except (linalg.LinAlgError, ValueError):
                    jitter = base if jitter == 0.0 else jitter * 10.0
            else:  # pragma: no cover - 40 decades of jitter always succeed
                raise CovarianceError(_CHOLESKY_ADVICE)
            if jitter:
                floored.append(k)
                mats[k] = cov + jitter * np.eye(cov.shape[0])
        prec = np.stack(chols)
        if covariance_type == "tied":
            return mats[0], prec[0], floored
        return mats, prec, floored
    bad = ~np.isfinite(covariances) | (covariances <= 0.0)
    covariances[bad] = base
    floored = sorted(set(np.nonzero(bad)[0].tolist()))
    return covariances, 1.0 / np.sqrt(covariances), floored


def warn_floored(floored, where="M step"):
    if floored:
        warnings.warn(
            f"components {floored} collapsed (covariance not positive definite) in the {where}; "
            "their covariances were floored. Consider fewer components or a larger reg_covar.",
            RuntimeWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# The parameters of a fitted (or initial) mixture
# --------------------------------------------------------------------------------------------


@dataclass
class MixtureParams:
    """weights (K,), means (K, D), covariances and their precision Cholesky factors (see table)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    def plan(self, dtype="float64", shift=None, kernel="auto") -> EStepPlan:
        return make_plan(self.weights, self.means, self.precisions_cholesky, self.covariance_type, dtype, shift, kernel)

    def n_parameters(self) -> int:
        """Number of free parameters (for BIC/AIC), as scikit-learn counts them."""
        k, d = self.means.shape
        cov = {"full": k * d * (d + 1) / 2, "tied": d * (d + 1) / 2, "diag": k * d, "spherical": k}
        return int(cov[self.covariance_type] + k * d + k - 1)
