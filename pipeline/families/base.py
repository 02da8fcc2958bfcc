"""The covariance-family protocol: everything EM needs to know about one covariance model.

A family is one object (an instance of a :class:`CovarianceFamily` subclass) that owns the
shapes of its covariances, statistics and precision Cholesky factors, its M step from the
centred statistics, its free-parameter count, its log-determinants and its sampling.  Nothing
outside :mod:`pipeline.families` tests a ``covariance_type`` string: callers ask the registry
(:func:`pipeline.families.get_family`) for the family and call its methods.

Conventions (K components, D features):

- ``prec_chol`` holds ``L`` with ``precision = L @ L.T`` where ``L`` is the transposed inverse
  of the lower Cholesky factor of the covariance (upper-triangular, as scikit-learn's
  ``precisions_cholesky_``), obtained by a triangular solve, never by inverting a covariance.
- The E step sees a family through :attr:`CovarianceFamily.structure`: ``"ellipsoidal"`` (the
  outer-product kernel, ``kernel_kind = "outer"``), ``"diagonal"`` (squares, ``"diag"``) or
  ``"scalar"`` (squared norms, ``"sphere"``), and :meth:`CovarianceFamily.plan_precisions`.
- The M step sees it through :attr:`CovarianceFamily.statistic`, the second-order statistic
  it needs: ``"outer"`` (K, D, D) centred outer products, ``"diagonal"`` (K, D) their diagonals or
  ``"trace"`` (K,) their traces; :meth:`CovarianceFamily.m_step` turns
  ``(N_k, s1_k, s2_k)`` into covariances.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from pipeline.exceptions import CovarianceError

#: the message of a failed Cholesky factorisation (scikit-learn's wording, so users and their
#: tests recognise it)
CHOLESKY_ADVICE = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)


def precision_cholesky_matrix(cov: np.ndarray) -> np.ndarray:
    """``L`` (D, D) with ``inv(cov) = L @ L.T`` from one covariance matrix, via Cholesky."""
    cov_chol = linalg.cholesky(cov, lower=True)
    return linalg.solve_triangular(cov_chol, np.eye(cov.shape[0]), lower=True).T


def upper_precision_cholesky(precision: np.ndarray) -> np.ndarray:
    """Upper-triangular ``L`` (D, D) with ``precision = L @ L.T`` from a precision matrix.

    The same factor :func:`precision_cholesky_matrix` gives for ``inv(precision)``: the
    transposed inverse of the lower Cholesky factor of the covariance, computed from the
    precision alone (the lower Cholesky factor of the index-reversed precision, reversed back),
    so that ``precisions_cholesky_`` is upper-triangular however the parameters were given.
    """
    rev = precision[::-1, ::-1]
    return linalg.cholesky(rev, lower=True)[::-1, ::-1]


def _inverse_gram(L: np.ndarray) -> np.ndarray:
    """``inv(L @ L.T) = inv(L)^T inv(L)`` for a triangular ``L``, by a triangular solve."""
    lower = not np.triu(L, 1).any()
    inv_l = linalg.solve_triangular(L, np.eye(L.shape[0]), lower=lower)
    return inv_l.T @ inv_l


def floor_start(reg_covar: float, scale: float) -> float:
    """The first regularisation tried on a collapsed component, raised by factors of 10 until
    it factorises: ``max(reg_covar, 1e-10 * scale)`` (``scale`` a typical variance of the data)."""
    return max(float(reg_covar), 1e-10 * float(scale), np.finfo(np.float64).tiny)


class CovarianceFamily:
    """One covariance model.  Subclasses set the class attributes and implement the methods.

    Attributes
    ----------
    name : the ``covariance_type`` string (scikit-learn's name where it has one).
    mclust_name : the three-letter name of R's mclust (volume, shape, orientation).
    structure : "ellipsoidal", "diagonal" or "scalar": the E-step kernel's view of a component.
    kernel_kind : "outer", "diag" or "sphere": the features kernel of that structure.
    statistic : "outer", "diagonal" or "trace": the second-order statistic the M step needs.
    """

    name: str
    mclust_name: str
    structure: str
    kernel_kind: str
    statistic: str
    #: whether the M step iterates (then warm-started from the previous covariances)
    iterative: bool = False

    def __repr__(self) -> str:
        return f"<covariance family {self.name} ({self.mclust_name})>"

    @property
    def own_scatter(self) -> bool:
        """Whether a component's covariance has a volume or shape of its own (a V in the first
        two letters of mclust's name), so that a collapsed component makes the fit degenerate;
        with E or I there the other components' scatter keeps it positive definite."""
        return "V" in self.mclust_name[:2]

    # ------------------------------------------------------------------ shapes and counts
    def covariance_shape(self, n_components: int, n_features: int) -> tuple:
        """Shape of ``covariances_`` (and of ``precisions_cholesky_``, ``precisions_``)."""
        raise NotImplementedError

    def statistic_shape(self, n_components: int, n_features: int) -> tuple:
        """Shape of the second-order statistic ``s2``."""
        k, d = n_components, n_features
        return {"outer": (k, d, d), "diagonal": (k, d), "trace": (k,)}[self.statistic]

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        raise NotImplementedError

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters: covariances + means + weights (for BIC/AIC)."""
        k, d = n_components, n_features
        return int(self.n_covariance_parameters(k, d) + k * d + k - 1)

    # ------------------------------------------------------------------ Cholesky factors
    def precision_cholesky(self, covariances: np.ndarray) -> np.ndarray:
        """Precision Cholesky factors from covariances; raises :class:`CovarianceError`."""
        raise NotImplementedError

    def precision_cholesky_from_precisions(self, precisions: np.ndarray) -> np.ndarray:
        """Upper-triangular precision Cholesky factors from user-given precisions."""
        raise NotImplementedError

    def precisions(self, prec_chol: np.ndarray) -> np.ndarray:
        """Precisions ``L @ L.T`` from their Cholesky factors."""
        raise NotImplementedError

    def from_full_matrices(self, mats: np.ndarray, what: str = "precisions_init") -> np.ndarray:
        """The family's form of (K, D, D) matrices (precisions or covariances) that have its
        structure (diagonal, scalar, shared); a ValueError naming ``what`` otherwise."""
        raise NotImplementedError

    def covariances_from_cholesky(self, prec_chol: np.ndarray) -> np.ndarray:
        """Covariances ``inv(L)^T inv(L)`` by triangular solves."""
        raise NotImplementedError

    def log_det_cholesky(self, prec_chol: np.ndarray, n_features: int) -> np.ndarray:
        """(K,) log det of each component's precision Cholesky factor (half its log det)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ E step
    def plan_precisions(self, prec_chol: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        """Per-component precisions in the E-step structure: (K, D, D) matrices
        ("ellipsoidal"), (K, D) diagonals ("diagonal"), or (K, D) equal diagonals ("scalar")."""
        raise NotImplementedError

    def component_cholesky(self, prec_chol: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        """(K, D, D) precision Cholesky factor of every component (the centred E-step kernel)."""
        raise NotImplementedError

    def full_covariances(self, covariances: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        """(K, D, D) covariance matrix of every component (plots, sampling, reports)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ M step
    def m_step(
        self, s0: np.ndarray, s1: np.ndarray, s2: np.ndarray, reg_covar: float, previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """Covariances from statistics centred at per-component centres ``c_k``.

        s0 (K,) = N_k (sum of responsibilities, floored), s1 (K, D) = sum r (x - c_k),
        s2 = sum r (x - c_k)(x - c_k)^T in :attr:`statistic` form.  With the mean shift
        ``e = s1 / N_k`` (small, as ``c_k`` is the previous mean) the centred scatter is
        ``W_k = s2_k - N_k e e^T``; nothing large cancels.  ``previous``: the covariances of
        the parameters the statistics were computed under (or None), where families whose
        M step is iterative warm-start their inner iteration.
        """
        raise NotImplementedError

    def floor(self, covariances: np.ndarray, scale: float, reg_covar: float):
        """Make every covariance positive definite, flooring collapsed components.

        Returns (covariances, precisions_cholesky, floored component indices).  A component
        whose Cholesky factorisation fails (or is not finite) gets ``jitter * I`` added, the
        jitter growing from ``max(reg_covar, 1e-10 * scale)`` by factors of 10; ``scale`` is a
        typical variance of the data.  Healthy components are untouched.
        """
        try:
            return covariances, self.precision_cholesky(covariances), []
        except CovarianceError:
            pass
        return self._floor_collapsed(np.array(covariances, dtype=np.float64, copy=True), floor_start(reg_covar, scale))

    def _floor_collapsed(self, covariances: np.ndarray, base: float):
        """:meth:`floor` once the factorisation failed: ``covariances`` is a copy to edit."""
        raise NotImplementedError

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator, means: np.ndarray, covariances: np.ndarray, counts) -> list:
        """One (counts[k], D) array of draws per component."""
        raise NotImplementedError


class EllipsoidalFamily(CovarianceFamily):
    """Families whose components are general ellipsoids (full matrices, shared or not)."""

    structure = "ellipsoidal"
    kernel_kind = "outer"
    statistic = "outer"

    def _matrices(self, a: np.ndarray) -> np.ndarray:
        """(K', D, D) view of a covariance-shaped array (K' = 1 for shared matrices)."""
        raise NotImplementedError

    def _from_matrices(self, mats: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def precision_cholesky(self, covariances):
        covariances = np.asarray(covariances, dtype=np.float64)
        try:
            return self._from_matrices(np.stack([precision_cholesky_matrix(c) for c in self._matrices(covariances)]))
        except linalg.LinAlgError as exc:
            raise CovarianceError(CHOLESKY_ADVICE) from exc

    def precision_cholesky_from_precisions(self, precisions):
        precisions = np.asarray(precisions, dtype=np.float64)
        try:
            mats = self._matrices(precisions)
            if not all(np.allclose(p, p.T) for p in mats):
                raise linalg.LinAlgError("not symmetric")
            return self._from_matrices(np.stack([upper_precision_cholesky(p) for p in mats]))
        except linalg.LinAlgError as exc:
            raise ValueError(
                f"precisions_init must be symmetric positive definite: '{self.name} precision' should be "
                "symmetric, positive-definite"
            ) from exc

    def precisions(self, prec_chol):
        mats = self._matrices(prec_chol)
        return self._from_matrices(np.einsum("kij,klj->kil", mats, mats))

    def from_full_matrices(self, mats, what="precisions_init"):
        mats = np.asarray(mats, dtype=np.float64)
        k = len(mats)
        if len(self.covariance_shape(k, mats.shape[-1])) == 3:  # one matrix per component
            return mats
        if not np.allclose(mats, mats[:1], rtol=1e-12, atol=0.0):
            raise ValueError(f"{what}: covariance_type {self.name!r} has one matrix shared by all components; "
                             f"got {k} different (D, D) matrices")
        return mats[0]

    def covariances_from_cholesky(self, prec_chol):
        return self._from_matrices(np.stack([_inverse_gram(L) for L in self._matrices(prec_chol)]))

    def log_det_cholesky(self, prec_chol, n_features):
        mats = self._matrices(prec_chol)
        return self._from_matrices(np.sum(np.log(np.diagonal(mats, axis1=1, axis2=2)), axis=1))

    def plan_precisions(self, prec_chol, n_components, n_features):
        mats = np.broadcast_to(self._matrices(prec_chol), (n_components, n_features, n_features))
        return np.einsum("kij,klj->kil", mats, mats)

    def component_cholesky(self, prec_chol, n_components, n_features):
        return np.broadcast_to(self._matrices(prec_chol), (n_components, n_features, n_features))

    def full_covariances(self, covariances, n_components, n_features):
        return np.broadcast_to(self._matrices(covariances), (n_components, n_features, n_features))

    def _floor_collapsed(self, covariances, base):
        mats = self._matrices(covariances)
        chols, floored = [], []
        for k, cov in enumerate(mats):
            cov = np.where(np.isfinite(cov), cov, 0.0)
            jitter = 0.0
            for _ in range(40):
                try:
                    chols.append(precision_cholesky_matrix(cov + jitter * np.eye(cov.shape[0])))
                    break
                except (linalg.LinAlgError, ValueError):
                    jitter = base if jitter == 0.0 else jitter * 10.0
            else:  # pragma: no cover - 40 decades of jitter always succeed
                raise CovarianceError(CHOLESKY_ADVICE)
            if jitter:
                floored.append(k)
                mats[k] = cov + jitter * np.eye(cov.shape[0])
        return self._from_matrices(mats), self._from_matrices(np.stack(chols)), floored

    def sample(self, rng, means, covariances, counts):
        mats = self.full_covariances(covariances, *means.shape)
        return [rng.multivariate_normal(m, c, int(n), method="cholesky") for m, c, n in zip(means, mats, counts)]


class AxisAlignedFamily(CovarianceFamily):
    """Families whose components are axis-aligned (diagonal or scalar covariances)."""

    def precision_cholesky(self, covariances):
        covariances = np.asarray(covariances, dtype=np.float64)
        if np.any(~np.isfinite(covariances)) or np.any(covariances <= 0.0):
            raise CovarianceError(CHOLESKY_ADVICE)
        return 1.0 / np.sqrt(covariances)

    def precision_cholesky_from_precisions(self, precisions):
        precisions = np.asarray(precisions, dtype=np.float64)
        if np.any(precisions <= 0.0):
            raise ValueError(f"precisions_init must be positive: '{self.name} precision' should be positive")
        return np.sqrt(precisions)

    def precisions(self, prec_chol):
        return prec_chol**2

    def covariances_from_cholesky(self, prec_chol):
        return 1.0 / prec_chol**2

    def from_full_matrices(self, mats, what="precisions_init"):
        mats = np.asarray(mats, dtype=np.float64)
        diag = np.diagonal(mats, axis1=1, axis2=2)
        if np.any(mats - np.einsum("ki,ij->kij", diag, np.eye(mats.shape[-1])) != 0.0):
            raise ValueError(f"{what}: covariance_type {self.name!r} has diagonal matrices; got off-diagonal values")
        if self.structure == "diagonal":
            return diag.copy()
        if not np.allclose(diag, diag[:, :1], rtol=1e-12, atol=0.0):
            raise ValueError(f"{what}: covariance_type {self.name!r} has multiples of the identity; "
                             "got unequal diagonal values")
        return diag[:, 0].copy()

    def component_cholesky(self, prec_chol, n_components, n_features):
        return np.stack([np.diag(np.sqrt(p)) for p in self.plan_precisions(prec_chol, n_components, n_features)])

    def _floor_collapsed(self, covariances, base):
        bad = ~np.isfinite(covariances) | (covariances <= 0.0)
        covariances[bad] = base
        floored = sorted(set(np.nonzero(bad)[0].tolist()))
        return covariances, 1.0 / np.sqrt(covariances), floored

    def sample(self, rng, means, covariances, counts):
        d = means.shape[1]
        return [m + rng.standard_normal((int(n), d)) * np.sqrt(c) for m, c, n in zip(means, covariances, counts)]


def warn_floored(floored, where="M step"):
    """RuntimeWarning naming the components whose covariances were floored."""
    if floored:
        warnings.warn(
            f"components {floored} collapsed (covariance not positive definite) in the {where}; "
            "their covariances were floored. Consider fewer components or a larger reg_covar.",
            RuntimeWarning,
            stacklevel=3,
        )
