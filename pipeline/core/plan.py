"""The E-step plan: what every chunk needs to evaluate all K weighted log-densities at once.

Driver-side NumPy (O(K*D^2)), no Dask.  :func:`make_plan` prepares, once per iteration, the
small arrays every chunk needs, so that the quadratic forms of all K components come from one
GEMM per block of rows on the rows' outer products, and the statistics from one more (see
:class:`EStepPlan`); rows are shifted by ``c`` near the data first, so that a large common
offset does not cancel.  The family decides the kernel's structure (ellipsoidal, diagonal,
scalar) through :meth:`pipeline.families.CovarianceFamily.plan_precisions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.families import get_family

LOG_2PI = math.log(2.0 * math.pi)


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

    - "outer" (ellipsoidal families), "diag" (diagonal) and "sphere" (scalar): the fast "features"
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
    family = get_family(covariance_type)
    const = log_w + family.log_det_cholesky(prec_chol, n_features) - 0.5 * n_features * LOG_2PI
    dt = np.dtype(dtype)
    # the kernels subtract the shift in the compute dtype: build everything from that same value
    shift = shift.astype(dt).astype(np.float64)
    diff = means - shift
    kind = family.kernel_kind
    prec = family.plan_precisions(prec_chol, n_components, n_features)
    if kind == "outer":  # (K, D, D) precision matrices
        whitened = np.einsum("kd,kde,ke->k", diff, prec, diff)  # |d_k|^2 in P_k's metric
        quadratic, linear = triu_weights(prec), -2.0 * np.einsum("kde,ke->dk", prec, diff)
    else:  # (K, D) diagonal precisions
        whitened = np.sum(prec * diff**2, axis=1)
        linear = -2.0 * (prec * diff).T
        # "sphere": one precision per component, weighting |xc|^2
        quadratic = prec[:, :1].T if kind == "sphere" else prec.T
    # components of negligible weight (emptied, collapsed) do not decide the kernel: their
    # distances barely move any responsibility
    worst = float(np.max(whitened[weights > 1e-8 * weights.max()], initial=0.0))
    if kernel == "auto" and worst * np.finfo(dt).eps > FAST_PATH_MAX_LOSS[dt.name] and dt != np.float64:
        dt = np.dtype(np.float64)
    if kernel == "features" or (kernel == "auto" and worst * np.finfo(dt).eps <= FAST_PATH_MAX_LOSS[dt.name]):
        wlin = np.ascontiguousarray(-0.5 * np.concatenate([quadratic, linear]).T, dtype=dt)
        return EStepPlan(kind, shift.astype(dt), const, dt.name, wlin=wlin, bias=const - 0.5 * whitened)
    prec_chol = family.component_cholesky(prec_chol, n_components, n_features)  # (K, D, D)
    lcat = np.ascontiguousarray(np.concatenate(list(prec_chol), axis=1))  # (D, K*D)
    offset = np.einsum("kd,kde->ke", diff, prec_chol).reshape(-1)
    return EStepPlan("centred", shift.astype(dt), const, dt.name, lcat=lcat.astype(dt), offset=offset.astype(dt))




@dataclass(frozen=True)
class MarginalPlan:
    """The E step of data with missing values (``nan_policy="marginalize"``).

    ``plan`` is the :class:`EStepPlan` of the complete rows (the fast kernels).  Rows with NaN
    use each component's full precision matrix (see :mod:`pipeline.kernels.missing`):
    ``means`` (K, D), ``precisions`` (K, D, D), ``log_det`` (K,) = log det of the precision
    Cholesky factor (half log det P_k) and ``log_weights`` (K,), all float64.

    ``kind`` is "features" or "centred".  "features": incomplete rows, shifted by ``shift``
    with their missing values set to 0, go through one GEMM on their outer-product features
    (``wext`` (K, Q + D + 1): the weighted log-densities of the rows so filled, as the
    "outer" kernel of :class:`EStepPlan`) and one with the stacked precisions ``pcat``
    (D, K*D); the missing coordinates are then corrected with ``pm`` (K, D) = ``P_k (mu_k -
    shift)`` and ``mus`` (K, D) = ``mu_k - shift``.  Taken while the expanded form loses no
    more than :data:`FAST_PATH_MAX_LOSS` in float64; "centred" (components far from the
    shift) computes per component from the residuals ``x - mu_k``.
    """

    plan: EStepPlan
    means: np.ndarray
    precisions: np.ndarray
    log_det: np.ndarray
    log_weights: np.ndarray
    kind: str = "centred"
    shift: np.ndarray | None = None
    wext: np.ndarray | None = None
    pcat: np.ndarray | None = None
    pm: np.ndarray | None = None
    mus: np.ndarray | None = None

    @property
    def n_components(self) -> int:
        return self.means.shape[0]


def make_marginal_plan(weights, means, prec_chol, covariance_type, dtype="float64", kernel="auto") -> MarginalPlan:
    """:class:`MarginalPlan` of the given parameters (driver side, O(K*D^2)); ``kernel`` as
    in :func:`make_plan` ("auto", "features" or "centred") for the rows with missing values."""
    if kernel not in ("auto", "features", "centred"):
        raise ValueError(f"kernel must be 'auto', 'features' or 'centred'; got {kernel!r}")
    weights = np.asarray(weights, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    k, d = means.shape
    family = get_family(covariance_type)
    prec = np.asarray(family.plan_precisions(prec_chol, k, d), dtype=np.float64)
    if prec.ndim == 2:  # diagonal and scalar structures: (K, D) diagonals
        prec = np.einsum("kd,de->kde", prec, np.eye(d))
    prec = np.ascontiguousarray(prec)
    log_det = np.broadcast_to(family.log_det_cholesky(prec_chol, d), (k,)).astype(np.float64)
    log_w = np.log(np.maximum(weights, np.finfo(np.float64).tiny))
    common = (make_plan(weights, means, prec_chol, covariance_type, dtype), means, prec, log_det, log_w)
    shift = weights @ means / max(weights.sum(), np.finfo(np.float64).tiny)
    mus = means - shift
    pm = np.einsum("kde,ke->kd", prec, mus)
    whitened = np.einsum("kd,kd->k", mus, pm)
    worst = float(np.max(whitened[weights > 1e-8 * weights.max()], initial=0.0))
    if kernel == "centred" or (kernel == "auto" and worst * np.finfo(np.float64).eps > FAST_PATH_MAX_LOSS["float64"]):
        return MarginalPlan(*common)
    const = log_w + log_det - 0.5 * d * LOG_2PI
    # log-densities of rows x - shift (filled with 0): -(x^T P x)/2 + (P mus) . x + bias
    wext = np.concatenate([-0.5 * triu_weights(prec).T, pm, (const - 0.5 * whitened)[:, None]], axis=1)
    pcat = np.ascontiguousarray(np.concatenate(list(prec), axis=1))  # (D, K*D)
    return MarginalPlan(*common, kind="features", shift=shift, wext=np.ascontiguousarray(wext), pcat=pcat, pm=pm, mus=mus)


@dataclass(frozen=True)
class OmitPlan:
    """Predictions under ``nan_policy="omit"``: rows with a NaN get label -1 and NaN
    probabilities and log-densities, and are left out of sums; the others use ``plan``."""

    plan: EStepPlan
