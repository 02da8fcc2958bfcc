"""scikit-learn's four covariance types, which are mclust's VVV, EEE, VVI and VII.

=========  ======  ======================  =========================
name       mclust  covariances             precisions_cholesky
=========  ======  ======================  =========================
full       VVV     (K, D, D)               (K, D, D)
tied       EEE     (D, D)                  (D, D)
diag       VVI     (K, D)                  (K, D)
spherical  VII     (K,)                    (K,)
=========  ======  ======================  =========================
"""

from __future__ import annotations

import numpy as np

from pipeline.families.base import AxisAlignedFamily, EllipsoidalFamily


class Full(EllipsoidalFamily):
    """Every component has its own covariance matrix (mclust VVV)."""

    name, mclust_name = "full", "VVV"

    def covariance_shape(self, n_components, n_features):
        return (n_components, n_features, n_features)

    def n_covariance_parameters(self, n_components, n_features):
        return n_components * n_features * (n_features + 1) / 2

    def _matrices(self, a):
        return a

    def _from_matrices(self, mats):
        return mats

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        e = s1 / s0[:, None]
        n_features = s1.shape[1]
        cov = s2 / s0[:, None, None] - np.einsum("ki,kj->kij", e, e)
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        cov[:, np.arange(n_features), np.arange(n_features)] += reg_covar
        return cov


class Tied(EllipsoidalFamily):
    """All components share one covariance matrix (mclust EEE)."""

    name, mclust_name = "tied", "EEE"

    def covariance_shape(self, n_components, n_features):
        return (n_features, n_features)

    def n_covariance_parameters(self, n_components, n_features):
        return n_features * (n_features + 1) / 2

    def _matrices(self, a):
        return a[None]

    def _from_matrices(self, mats):
        return mats[0]

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        e = s1 / s0[:, None]
        n_features = s1.shape[1]
        cov = (s2.sum(axis=0) - np.einsum("k,ki,kj->ij", s0, e, e)) / s0.sum()
        cov = 0.5 * (cov + cov.T)
        cov[np.arange(n_features), np.arange(n_features)] += reg_covar
        return cov


class Diag(AxisAlignedFamily):
    """Every component has its own diagonal covariance (mclust VVI)."""

    name, mclust_name = "diag", "VVI"
    structure, kernel_kind, statistic = "diagonal", "diag", "diagonal"

    def covariance_shape(self, n_components, n_features):
        return (n_components, n_features)

    def n_covariance_parameters(self, n_components, n_features):
        return n_components * n_features

    def log_det_cholesky(self, prec_chol, n_features):
        return np.sum(np.log(prec_chol), axis=1)

    def plan_precisions(self, prec_chol, n_components, n_features):
        return prec_chol**2

    def full_covariances(self, covariances, n_components, n_features):
        return np.stack([np.diag(v) for v in covariances])

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        e = s1 / s0[:, None]
        return np.maximum(s2 / s0[:, None] - e * e, 0.0) + reg_covar


class Spherical(AxisAlignedFamily):
    """Every component has its own variance, the same in every direction (mclust VII)."""

    name, mclust_name = "spherical", "VII"
    structure, kernel_kind, statistic = "scalar", "sphere", "trace"

    def covariance_shape(self, n_components, n_features):
        return (n_components,)

    def n_covariance_parameters(self, n_components, n_features):
        return n_components

    def log_det_cholesky(self, prec_chol, n_features):
        return n_features * np.log(prec_chol)

    def plan_precisions(self, prec_chol, n_components, n_features):
        return np.repeat((prec_chol**2)[:, None], n_features, axis=1)

    def full_covariances(self, covariances, n_components, n_features):
        return np.stack([np.eye(n_features) * v for v in covariances])

    def m_step(self, s0, s1, s2, reg_covar, previous=None):
        # s2 (K,) = sum r |x - c_k|^2; the variance is the mean over features
        e = s1 / s0[:, None]
        n_features = s1.shape[1]
        return np.maximum(s2 / s0 - np.sum(e * e, axis=1), 0.0) / n_features + reg_covar
