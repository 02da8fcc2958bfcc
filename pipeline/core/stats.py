"""Sufficient statistics of a Gaussian mixture as a mergeable value: driver-side NumPy, no Dask.

A chunk of rows gives a :class:`SuffStats` (computed on the workers by
:func:`pipeline.kernels.cpu.chunk_stats`); two are combined with the associative
:meth:`SuffStats.merge` (addition: every field is a sum over rows); the M step
(:meth:`SuffStats.m_step`, through the family) turns the totals into new parameters.
Statistics are centred at per-component centres ``c_k`` (the previous means in EM),
accumulated in float64 whatever the compute dtype, so a large common offset in the data does
not cancel catastrophically.  :meth:`SuffStats.recentred` moves them to other centres exactly
(so statistics of different iterations can be combined) and :meth:`SuffStats.scaled` weighs
them (incremental and stepwise EM, sample weights).

On the wire a statistic is one flat float64 vector (``to_vector``/``from_vector``):
``[n_rows, sum log p(x), n_nonfinite, s0 (K), s1 (K*D), s2 (K*D*D, K*D or K)]``.  Adding
vectors is merging statistics, so a tree of sums (:func:`pipeline.engine.graph.reduce_blocks`)
does the reduction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.core.params import MixtureParams
from pipeline.exceptions import CovarianceError
from pipeline.families import CHOLESKY_ADVICE, CovarianceFamily, get_family
from pipeline.families.base import floor_start

#: added to every N_k, as scikit-learn does, so empty components never divide by zero.
NK_FLOOR = 10 * np.finfo(np.float64).eps
_HEADER = 3


def second_order_shape(covariance_type, n_components: int, n_features: int) -> tuple:
    """Shape of s2: outer products (ellipsoidal families), their diagonals (diagonal) or
    traces (scalar)."""
    return get_family(covariance_type).statistic_shape(n_components, n_features)


def vector_length(covariance_type, n_components: int, n_features: int) -> int:
    k, d = n_components, n_features
    return _HEADER + k + k * d + int(np.prod(second_order_shape(covariance_type, k, d)))


@dataclass
class SuffStats:
    """Sums over rows: n, sum log p(x), s0 = sum r, s1 = sum r (x - c), s2 = sum r (x-c)(x-c)^T
    in the family's statistic form (outer products, their diagonals or their traces).

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

    @property
    def family(self) -> CovarianceFamily:
        return get_family(self.covariance_type)

    # ---------------------------------------------------------------- construction
    @classmethod
    def zeros(cls, centres, covariance_type) -> "SuffStats":
        """The identity of :meth:`merge`: statistics of no rows, centred at ``centres``."""
        centres = np.asarray(centres, dtype=np.float64)
        k, d = centres.shape
        return cls(
            get_family(covariance_type).name, centres, 0.0, 0.0, 0.0,
            np.zeros(k), np.zeros((k, d)), np.zeros(second_order_shape(covariance_type, k, d)),
        )

    # ---------------------------------------------------------------- algebra
    def merge(self, other: "SuffStats", recentre: bool = False) -> "SuffStats":
        """Associative, commutative merge (sums).  Both must share the family; statistics
        centred elsewhere are refused unless ``recentre`` (then ``other`` is moved to these
        centres first, exactly)."""
        if other.family is not self.family:
            raise ValueError("cannot merge statistics of different covariance families")
        if not np.array_equal(other.centres, self.centres):
            if not recentre:
                raise ValueError("cannot merge statistics centred differently (pass recentre=True)")
            other = other.recentred(self.centres)
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

    def recentred(self, centres) -> "SuffStats":
        """The same sums centred at ``centres`` (K, D) instead: with ``delta = c_old - c_new``,
        ``s1' = s1 + N delta`` and ``s2' = s2 + s1 delta^T + delta s1^T + N delta delta^T``
        (its diagonal or trace for those statistics)."""
        centres = np.asarray(centres, dtype=np.float64)
        delta = self.centres - centres
        n, s1 = self.s0, self.s1
        statistic = self.family.statistic
        if statistic == "outer":
            s2 = (self.s2 + np.einsum("ki,kj->kij", s1, delta) + np.einsum("ki,kj->kij", delta, s1)
                  + n[:, None, None] * np.einsum("ki,kj->kij", delta, delta))
        elif statistic == "diagonal":
            s2 = self.s2 + 2.0 * delta * s1 + n[:, None] * delta * delta
        else:
            s2 = self.s2 + 2.0 * np.sum(delta * s1, axis=1) + n * np.sum(delta * delta, axis=1)
        return replace(self, centres=centres, s1=s1 + n[:, None] * delta, s2=s2)

    def scaled(self, factor: float) -> "SuffStats":
        """Every sum multiplied by ``factor`` (row counts included)."""
        f = float(factor)
        return replace(self, n=self.n * f, loglik=self.loglik * f, n_nonfinite=self.n_nonfinite * f,
                       s0=self.s0 * f, s1=self.s1 * f, s2=self.s2 * f)

    # ---------------------------------------------------------------- wire format
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
        name = get_family(covariance_type).name
        return cls(name, centres, vec[0], vec[1], vec[2], s0.copy(), s1.copy(), s2.copy())

    # ---------------------------------------------------------------- M step
    @property
    def mean_loglik(self) -> float:
        return self.loglik / self.n if self.n else float("nan")

    def m_step(
        self, reg_covar: float, scale: float = 1.0, floor: bool = True, previous: np.ndarray | None = None,
    ) -> tuple[MixtureParams, list[int]]:
        """New parameters from the totals; returns (params, indices of floored components).

        pi_k = N_k / N, mu_k = c_k + s1_k / N_k, Sigma_k from the family's M step (for full
        covariances s2_k / N_k - e e^T + reg_covar I).  ``floor``: collapsed components get
        their covariances floored (see :meth:`CovarianceFamily.floor`); otherwise a
        covariance that is not positive definite raises
        :class:`pipeline.exceptions.CovarianceError`.  ``previous``: the covariances the
        statistics were computed under, where iterative M steps warm-start.
        """
        family = self.family
        nk = self.s0 + NK_FLOOR
        weights = nk / nk.sum()
        means = self.centres + self.s1 / nk[:, None]
        if floor:
            cov, raised = self._regularised_m_step(family, nk, reg_covar, scale, previous)
        else:
            cov, raised = family.m_step(nk, self.s1, self.s2, reg_covar, previous), []
        if floor:
            cov, prec_chol, floored = family.floor(cov, scale, reg_covar)
            floored = sorted(set(floored) | set(raised))
        else:
            prec_chol, floored = family.precision_cholesky(cov), []
        return MixtureParams(weights, means, cov, prec_chol, family.name), floored

    def _regularised_m_step(self, family, nk, reg_covar, scale, previous):
        """The family's M step; where it finds a scatter degenerate (a model that needs a
        determinant or a positive variance of a collapsed component, or rounding at a large
        data scale), again with ``reg_covar`` raised from ``max(reg_covar, 1e-10 * scale)``
        by factors of 10.  Returns (covariances, the components whose smallest variance is
        below the regularisation that worked) -- ([] when the first try succeeds)."""
        try:
            return family.m_step(nk, self.s1, self.s2, reg_covar, previous), []
        except CovarianceError:
            pass
        reg = floor_start(reg_covar, scale)
        for _ in range(40):
            try:
                cov = family.m_step(nk, self.s1, self.s2, reg, previous)
                break
            except CovarianceError:
                reg *= 10.0
        else:  # pragma: no cover - 40 decades of regularisation always succeed
            raise CovarianceError(CHOLESKY_ADVICE)
        low = self.smallest_variances(nk) <= reg
        return cov, (np.nonzero(low)[0].tolist() or list(range(len(nk))))

    def smallest_variances(self, nk=None) -> np.ndarray:
        """(K,) the smallest variance of each component about its new mean: the smallest
        eigenvalue of W_k / N_k ("outer"), its smallest diagonal ("diagonal") or its mean
        diagonal ("trace")."""
        nk = self.s0 + NK_FLOOR if nk is None else nk
        e = self.s1 / nk[:, None]
        if self.s2.ndim == 3:
            cov = self.s2 / nk[:, None, None] - np.einsum("ki,kj->kij", e, e)
            return np.linalg.eigvalsh(0.5 * (cov + np.swapaxes(cov, 1, 2)))[:, 0]
        if self.s2.ndim == 2:
            return np.min(self.s2 / nk[:, None] - e * e, axis=1)
        return (self.s2 / nk - np.sum(e * e, axis=1)) / e.shape[1]
