"""The parameters of a fitted (or initial) mixture: driver-side NumPy, no Dask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.plan import EStepPlan, MarginalPlan, make_marginal_plan, make_plan
from pipeline.families import CovarianceFamily, get_family


@dataclass
class MixtureParams:
    """weights (K,), means (K, D), covariances and their precision Cholesky factors (shapes by
    family: :meth:`pipeline.families.CovarianceFamily.covariance_shape`), all float64.
    ``covariance_type`` is the family's name."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str

    @property
    def family(self) -> CovarianceFamily:
        return get_family(self.covariance_type)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    def plan(self, dtype="float64", shift=None, kernel="auto") -> EStepPlan:
        return make_plan(self.weights, self.means, self.precisions_cholesky, self.covariance_type, dtype, shift, kernel)

    def marginal_plan(self, dtype="float64") -> MarginalPlan:
        """The E-step plan of data with missing values (``nan_policy="marginalize"``)."""
        return make_marginal_plan(self.weights, self.means, self.precisions_cholesky, self.covariance_type, dtype)

    def n_parameters(self) -> int:
        """Number of free parameters (for BIC/AIC), as scikit-learn counts them."""
        return self.family.n_parameters(*self.means.shape)

    @classmethod
    def from_precisions(cls, weights, means, precisions, covariance_type) -> "MixtureParams":
        """Parameters from given precisions (scikit-learn's ``precisions_init``)."""
        family = get_family(covariance_type)
        prec_chol = family.precision_cholesky_from_precisions(precisions)
        return cls(
            np.asarray(weights, dtype=np.float64), np.asarray(means, dtype=np.float64),
            family.covariances_from_cholesky(prec_chol), prec_chol, family.name,
        )
