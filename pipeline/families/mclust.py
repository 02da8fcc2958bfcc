"""R mclust's ten other covariance models (Celeux & Govaert 1995), fitted from (N_k, W_k) only.

``Sigma_k = lambda_k D_k A_k D_k^T``: the volume ``lambda_k = |Sigma_k|^(1/d)``, the shape
``A_k`` (diagonal, ``|A_k| = 1``) and the orientation ``D_k`` (orthogonal).  In a name XYZ the
letters give volume, shape and orientation: E equal across components, V varying, I identity.
The other four models are scikit-learn's (:mod:`pipeline.families.sklearn`: VVV full, EEE
tied, VVI diag, VII spherical); the registry accepts both names for them.

=====  ===========================  ===================  ===========  =========================
name   Sigma_k                      E-step structure     statistic    M step
=====  ===========================  ===================  ===========  =========================
EII    lambda I                     scalar (K,)          trace        closed form
EEI    lambda A                     diagonal (K, D)      diagonal     closed form
VEI    lambda_k A                   diagonal (K, D)      diagonal     iterative (convex)
EVI    lambda A_k                   diagonal (K, D)      diagonal     closed form
VEE    lambda_k D A D^T             ellipsoidal          outer        iterative
EVE    lambda D A_k D^T             ellipsoidal          outer        iterative (MM on D)
VVE    lambda_k D A_k D^T           ellipsoidal          outer        iterative (MM on D)
EEV    lambda D_k A D_k^T           ellipsoidal          outer        closed form (eigen)
VEV    lambda_k D_k A D_k^T         ellipsoidal          outer        iterative (eigenvalues)
EVV    lambda D_k A_k D_k^T         ellipsoidal          outer        closed form
=====  ===========================  ===================  ===========  =========================

Every M step maximises ``Q = -1/2 sum_k [N_k log|Sigma_k| + tr(Sigma_k^-1 W_k)]`` given the
scatter ``W_k = sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T`` (not divided by N_k) and ``N_k``; no
M step needs another pass over the data.  ``reg_covar`` enters as ``N_k * reg_covar * I``
added to every scatter (as if every row carried isotropic noise of that variance), which for
the closed forms linear in W (EII, EEI) is scikit-learn's ``reg_covar`` on the diagonal
exactly, and for the others keeps every scatter positive definite.  With ``reg_covar = 0`` a
degenerate scatter (a zero variance, a singular matrix where the model needs its
determinant) raises :class:`pipeline.exceptions.CovarianceError`.

The iterative M steps (VEI, VEE, EVE, VVE, VEV) warm-start from the covariances of the
previous EM iteration (their volumes, shape or orientation are read back from those
matrices, so no state is kept besides the parameters, and a resumed fit warm-starts the same
way) and iterate until the objective per row, ``-2 Q / n``, changes by at most
:attr:`IterativeMixin.inner_tol` (1e-12 by default) or for :attr:`IterativeMixin.inner_max_iter`
(100) iterations; each inner iteration increases Q, so a capped M step makes EM a generalised
EM with the same fixed points, continued by the next M step.

VVE is the exact conditional maximiser: its orientation step is Browne & McNicholas's
majorisation-minimisation (MM) with the weights ``C_k = (lambda_k A_k)^-1``.  R's mclust
(5.x, 6.0, 6.1) uses ``C_k = A_k^-1`` there, leaving the volumes out, so that its VVE M step
does not maximise Q when the volumes differ and its VVE log-likelihoods are lower than ours
from the same start (README, "mclust models").
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from pipeline.exceptions import CovarianceError
from pipeline.families.base import CHOLESKY_ADVICE
from pipeline.families.sklearn import Diag, Full, Spherical


# ------------------------------------------------------------------------------ scatters
def diagonal_scatter(s0, s1, s2, reg_covar):
    """(K, D) diagonals of W_k + N_k reg_covar I from the "diagonal" statistic."""
    e = s1 / s0[:, None]
    return np.maximum(s2 - s0[:, None] * e * e, 0.0) + s0[:, None] * reg_covar


def trace_scatter(s0, s1, s2, reg_covar):
    """(K,) traces of W_k + N_k reg_covar I from the "trace" statistic."""
    e = s1 / s0[:, None]
    d = s1.shape[1]
    return np.maximum(s2 - s0 * np.sum(e * e, axis=1), 0.0) + s0 * d * reg_covar


def outer_scatter(s0, s1, s2, reg_covar):
    """(K, D, D) W_k + N_k reg_covar I from the "outer" statistic (symmetrised)."""
    e = s1 / s0[:, None]
    w = s2 - s0[:, None, None] * np.einsum("ki,kj->kij", e, e)
    w = 0.5 * (w + np.swapaxes(w, 1, 2))
    idx = np.arange(w.shape[-1])
    w[:, idx, idx] += s0[:, None] * reg_covar
    return w


def _require(ok) -> None:
    if not np.all(ok):
        raise CovarianceError(CHOLESKY_ADVICE)


def _log_geomean(v: np.ndarray) -> np.ndarray:
    """log |diag(v)|^(1/d) along the last axis (v > 0)."""
    return np.mean(np.log(v), axis=-1)


def _unit_det(v: np.ndarray) -> np.ndarray:
    """v / |diag(v)|^(1/d) along the last axis."""
    return v / np.exp(_log_geomean(v))[..., None]


def _eigh_decreasing(w: np.ndarray):
    """Eigenvalues (K, D), decreasing, and eigenvectors (K, D, D) of symmetric matrices."""
    vals, vecs = np.linalg.eigh(w)
    return np.maximum(vals[:, ::-1], 0.0), vecs[:, :, ::-1]


def _compose(vecs: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """(K, D, D) ``V_k diag(vals_k) V_k^T`` (vecs (K, D, D) or (D, D), vals (K, D))."""
    if vecs.ndim == 2:
        vecs = np.broadcast_to(vecs, (vals.shape[0],) + vecs.shape)
    out = np.einsum("kij,kj,klj->kil", vecs, vals, vecs)
    return 0.5 * (out + np.swapaxes(out, 1, 2))


def _usable(previous, shape) -> bool:
    return previous is not None and np.shape(previous) == tuple(shape) and bool(np.all(np.isfinite(previous)))


# ------------------------------------------------------------------------------ iteration
class IterativeMixin:
    """The inner iteration of an iterative M step: its tolerance and cap.

    Every inner iteration increases Q (coordinate ascent or majorisation-minimisation), so an
    M step stopped by the cap still increases it: EM is then a generalised EM, monotone with
    the same fixed points, and the next M step continues from where this one stopped (warm
    start); near convergence the inner iteration starts at its optimum and stops at once.
    """

    iterative = True
    #: stop when the objective per row (-2 Q / n) changes by at most this
    inner_tol: float = 1e-12
    #: at most this many inner iterations per M step
    inner_max_iter: int = 100

    def _volumes_and_shape(self, values, s0, shape):
        """VEI's and VEV's iteration on per-component values (K, D) (diag W_k, or the
        decreasing eigenvalues of W_k), from the shape ``shape`` (D,): alternate
        ``lambda_k = sum_j v_kj / a_j / (d N_k)`` and ``a = M / |M|^(1/d)``,
        ``M = sum_k v_k / lambda_k``; returns (lambda (K,), a (D,))."""
        d = values.shape[1]
        n = s0.sum()
        old = np.inf
        for _ in range(self.inner_max_iter):
            lam = (values / shape).sum(axis=1) / (d * s0)
            _require(lam > 0)
            m = (values / lam[:, None]).sum(axis=0)
            _require(m > 0)
            shape = _unit_det(m)
            obj = (d * np.dot(s0, np.log(lam)) + np.sum(values / (lam[:, None] * shape))) / n
            if abs(old - obj) <= self.inner_tol:
                break
            old = obj
        return (values / shape).sum(axis=1) / (d * s0), shape

    @staticmethod
    def _shared_shape(values):
        """The shape all rows of positive ``values`` (K, D) share best: the geometric mean of
        their unit-determinant forms (exact when they do share one)."""
        return np.exp(np.mean(np.log(_unit_det(values)), axis=0))


# ------------------------------------------------------------------------------ scalar
class EII(Spherical):
    """One variance shared by every component and direction: ``Sigma_k = lambda I``."""

    name = mclust_name = "EII"

    def n_covariance_parameters(self, n_components, n_features):
        return 1

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        t = trace_scatter(s0, s1, s2, reg_covar)
        lam = t.sum() / (s0.sum() * s1.shape[1])
        return np.full(s0.shape, lam)


# ------------------------------------------------------------------------------ diagonal
class EEI(Diag):
    """One diagonal covariance shared by every component: ``Sigma_k = lambda A``."""

    name = mclust_name = "EEI"

    def n_covariance_parameters(self, n_components, n_features):
        return n_features

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        b = diagonal_scatter(s0, s1, s2, reg_covar)
        return np.broadcast_to(b.sum(axis=0) / s0.sum(), b.shape).copy()


class EVI(Diag):
    """Equal volumes, varying axis-aligned shapes: ``Sigma_k = lambda A_k``."""

    name = mclust_name = "EVI"

    def n_covariance_parameters(self, n_components, n_features):
        return 1 + n_components * (n_features - 1)

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        b = diagonal_scatter(s0, s1, s2, reg_covar)
        _require(b > 0)
        g = np.exp(_log_geomean(b))  # |B_k|^(1/d)
        lam = g.sum() / s0.sum()
        return lam * b / g[:, None]


class VEI(IterativeMixin, Diag):
    """Varying volumes, one axis-aligned shape: ``Sigma_k = lambda_k A``.

    Alternates ``lambda_k = tr(B_k A^-1) / (d N_k)`` and ``A = M / |M|^(1/d)``,
    ``M = sum_k B_k / lambda_k`` (B_k = diag W_k); convex in the log-parameters, so the
    iteration reaches the one optimum.
    """

    name = mclust_name = "VEI"

    def n_covariance_parameters(self, n_components, n_features):
        return n_components + n_features - 1

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        b = diagonal_scatter(s0, s1, s2, reg_covar)  # a zero in one component is fine: A is shared
        if _usable(previous, b.shape) and np.all(previous > 0):
            a = self._shared_shape(previous)
        else:
            a = np.ones(b.shape[1])
        lam, a = self._volumes_and_shape(b, s0, a)
        return lam[:, None] * a[None, :]


# ------------------------------------------------------------------------------ ellipsoidal
class EEV(Full):
    """Equal volumes and shapes, varying orientations: ``Sigma_k = lambda D_k A D_k^T``."""

    name = mclust_name = "EEV"

    def n_covariance_parameters(self, n_components, n_features):
        d = n_features
        return d + n_components * d * (d - 1) // 2

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        w = outer_scatter(s0, s1, s2, reg_covar)
        vals, vecs = _eigh_decreasing(w)  # the j-th largest eigenvalues of all W_k are paired
        omega = vals.sum(axis=0) / s0.sum()
        _require(omega > 0)
        return _compose(vecs, np.broadcast_to(omega, vals.shape))


class EVV(Full):
    """Equal volumes, varying shapes and orientations: ``Sigma_k = lambda C_k``, |C_k| = 1."""

    name = mclust_name = "EVV"

    def n_covariance_parameters(self, n_components, n_features):
        d = n_features
        return 1 - n_components + n_components * d * (d + 1) // 2

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        w = outer_scatter(s0, s1, s2, reg_covar)
        sign, logdet = np.linalg.slogdet(w)
        _require((sign > 0) & np.isfinite(logdet))
        g = np.exp(logdet / w.shape[-1])  # |W_k|^(1/d)
        lam = g.sum() / s0.sum()
        return lam * w / g[:, None, None]


class VEV(IterativeMixin, Full):
    """Varying volumes and orientations, one shape: ``Sigma_k = lambda_k D_k A D_k^T``.

    ``D_k`` are the eigenvectors of W_k (exact: A is decreasing, so they are optimal for any
    A); then the VEI iteration on the eigenvalues ``Omega_k``.  Cold start: EEV's shape.
    """

    name = mclust_name = "VEV"

    def n_covariance_parameters(self, n_components, n_features):
        k, d = n_components, n_features
        return k + d - 1 + k * d * (d - 1) // 2

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        w = outer_scatter(s0, s1, s2, reg_covar)
        omega, vecs = _eigh_decreasing(w)
        prev_vals = np.linalg.eigvalsh(previous)[:, ::-1] if _usable(previous, w.shape) else None
        if prev_vals is not None and np.all(prev_vals > 0):
            a = self._shared_shape(prev_vals)
        else:
            total = omega.sum(axis=0)
            _require(total > 0)
            a = _unit_det(total)
        lam, a = self._volumes_and_shape(omega, s0, a)
        return _compose(vecs, lam[:, None] * a[None, :])


class VEE(IterativeMixin, Full):
    """Varying volumes, one shape and orientation: ``Sigma_k = lambda_k C``, |C| = 1.

    Alternates ``C = M / |M|^(1/d)``, ``M = sum_k W_k / lambda_k`` and
    ``lambda_k = tr(W_k C^-1) / (d N_k)`` (Cholesky solves, no inverse).
    """

    name = mclust_name = "VEE"

    def n_covariance_parameters(self, n_components, n_features):
        k, d = n_components, n_features
        return k + d - 1 + d * (d - 1) // 2

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        w = outer_scatter(s0, s1, s2, reg_covar)
        k, d, _ = w.shape
        n = s0.sum()
        lam = np.ones(k)
        if _usable(previous, w.shape):
            sign, logdet = np.linalg.slogdet(previous)
            if np.all(sign > 0):
                lam = np.exp(logdet / d)
        stacked = np.ascontiguousarray(w.transpose(1, 0, 2).reshape(d, k * d))  # [W_1 ... W_K]
        old = np.inf
        for _ in range(self.inner_max_iter):
            c = self._unit_matrix(np.tensordot(1.0 / lam, w, axes=1))
            t = self._traces(c, stacked, k, d)
            lam = t / (d * s0)
            _require(lam > 0)
            obj = d * np.dot(s0, np.log(lam)) / n + d
            if abs(old - obj) <= self.inner_tol:
                break
            old = obj
        return lam[:, None, None] * c[None]

    @staticmethod
    def _unit_matrix(m):
        sign, logdet = np.linalg.slogdet(m)
        _require((sign > 0) & np.isfinite(logdet))
        return m / np.exp(logdet / m.shape[0])

    @staticmethod
    def _traces(c, stacked, k, d):
        """tr(C^-1 W_k) for every k, by one Cholesky solve against [W_1 ... W_K]."""
        try:
            x = linalg.cho_solve(linalg.cho_factor(c, lower=True), stacked)
        except linalg.LinAlgError as exc:
            raise CovarianceError(CHOLESKY_ADVICE) from exc
        return np.einsum("iki->k", x.reshape(d, k, d))


class _CommonOrientation(IterativeMixin, Full):
    """EVE and VVE: one orientation D for every component, found by Browne & McNicholas's
    majorisation-minimisation of ``f(D) = sum_k tr(D^T W_k D C_k)`` (C_k diagonal), two
    MM steps (one around the largest eigenvalue of W_k, one around that of C_k) per inner
    iteration, then the shapes (and volumes) for that D in closed form."""

    def _weights(self, b, s0):
        """C_k (K, D) of the D step for the scatter diagonals ``b = diag(D^T W_k D)``."""
        raise NotImplementedError

    def _objective(self, b, s0, n):
        """-2 Q / n once shapes and volumes are optimal for the current D."""
        raise NotImplementedError

    def _covariances(self, d_mat, b, s0):
        raise NotImplementedError

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        w = outer_scatter(s0, s1, s2, reg_covar)
        k, d, _ = w.shape
        n = s0.sum()
        d_mat = self._warm_orientation(previous, w.shape)
        top = np.linalg.eigvalsh(w)[:, -1]  # omega_k, largest eigenvalue of W_k
        b = self._diagonals(d_mat, w)
        old = self._objective(b, s0, n)
        for _ in range(self.inner_max_iter):
            c = self._weights(b, s0)
            # MM1: linearise tr((W_k - omega_k I) D C_k D^T), concave in D:
            # F = sum_k C_k D^T (W_k - omega_k I)
            f = np.einsum("ki,kil->il", c, np.matmul(d_mat.T, w)) - (c * top[:, None]).sum(axis=0)[:, None] * d_mat.T
            u, _, vh = np.linalg.svd(f)
            d_mat = vh.T @ u.T
            # MM2: linearise tr(D^T W_k D (C_k - alpha_k I)), alpha_k = max_j C_kj:
            # F = sum_k W_k D (C_k - alpha_k I)
            wd = np.matmul(w, d_mat)
            u, _, vh = np.linalg.svd(np.einsum("kij,kj->ij", wd, c - c.max(axis=1, keepdims=True)))
            d_mat = u @ vh
            b = self._diagonals(d_mat, w)
            obj = self._objective(b, s0, n)
            if abs(old - obj) <= self.inner_tol:
                break
            old = obj
        return self._covariances(d_mat, b, s0)

    @staticmethod
    def _diagonals(d_mat, w):
        b = np.einsum("ji,kji->ki", d_mat, np.matmul(w, d_mat))  # diag(D^T W_k D)
        _require(b > 0)
        return b

    @staticmethod
    def _warm_orientation(previous, shape):
        """The common eigenvectors of the previous covariances (D I at a cold start): the
        eigenvectors of a combination with distinct weights, which all the commuting
        ``Sigma_k = D Lambda_k D^T`` share."""
        if not _usable(previous, shape):
            return np.eye(shape[-1])
        k = shape[0]
        traces = np.einsum("kii->k", previous)
        if not np.all(traces > 0):
            return np.eye(shape[-1])
        coef = (1.0 + np.arange(k) / k) / traces
        return np.linalg.eigh(np.tensordot(coef, previous, axes=1))[1]


class EVE(_CommonOrientation):
    """Equal volumes, varying shapes, one orientation: ``Sigma_k = lambda D A_k D^T``."""

    name = mclust_name = "EVE"

    def n_covariance_parameters(self, n_components, n_features):
        k, d = n_components, n_features
        return 1 + k * (d - 1) + d * (d - 1) // 2

    def _weights(self, b, s0):
        return 1.0 / _unit_det(b)  # C_k = A_k^-1

    def _objective(self, b, s0, n):
        d = b.shape[1]
        lam = np.exp(_log_geomean(b)).sum() / n
        return d * np.log(lam) + d

    def _covariances(self, d_mat, b, s0):
        g = np.exp(_log_geomean(b))
        lam = g.sum() / s0.sum()
        return _compose(d_mat, lam * b / g[:, None])


class VVE(_CommonOrientation):
    """Varying volumes and shapes, one orientation: ``Sigma_k = lambda_k D A_k D^T``.

    The D step weighs component k by ``C_k = (lambda_k A_k)^-1 = N_k / diag(D^T W_k D)``: the
    exact conditional maximiser (mclust drops the volumes there; see the module docstring).
    """

    name = mclust_name = "VVE"

    def n_covariance_parameters(self, n_components, n_features):
        k, d = n_components, n_features
        return k * d + d * (d - 1) // 2

    def _weights(self, b, s0):
        return s0[:, None] / b

    def _objective(self, b, s0, n):
        d = b.shape[1]
        return (np.dot(s0, np.log(b / s0[:, None]).sum(axis=1)) + d * n) / n

    def _covariances(self, d_mat, b, s0):
        return _compose(d_mat, b / s0[:, None])
