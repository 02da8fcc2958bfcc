"""Updaters: what EM does with the reduced statistics of a pass.

The EM loop (:func:`pipeline.engine.em.run_em`) makes a pass, hands the totals to its updater
and gets back new parameters and the objective it tracks.  Maximum likelihood is the only one
today; a variational (Bayesian) or incremental variant is another class with the same two
methods (``lower_bound(stats)``, ``m_step(stats, previous=None)``, ``previous`` being the
parameters the statistics were computed under), not an edit of the loop (scikit-learn's ``BayesianGaussianMixture`` reuses its EM loop
the same way through ``_m_step``/``_compute_lower_bound``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.params import MixtureParams
from pipeline.core.stats import SuffStats


@dataclass(frozen=True)
class MaximumLikelihood:
    """The maximum-likelihood M step; the objective is the mean log-likelihood.

    ``reg_covar`` is added to every covariance's diagonal; ``scale`` (a typical variance of the
    data) sizes the floor of collapsed components.  ``floor=False`` makes a covariance that is
    not positive definite an error (:class:`pipeline.exceptions.CovarianceError`, a ValueError
    with scikit-learn's wording) instead.  The default, ``None``, floors when ``reg_covar > 0``
    and raises when ``reg_covar == 0`` (scikit-learn's behaviour: who asks for no
    regularisation gets told that a component collapsed, not a silently floored one).
    """

    reg_covar: float = 1e-6
    scale: float = 1.0
    floor: bool | None = None

    def lower_bound(self, stats: SuffStats) -> float:
        """The objective of the parameters that made ``stats`` (before their update)."""
        return stats.mean_loglik

    def m_step(self, stats: SuffStats, previous: MixtureParams | None = None) -> tuple[MixtureParams, list[int]]:
        """(new parameters, indices of floored components).  ``previous``: the parameters
        ``stats`` were computed under (iterative M steps warm-start from them)."""
        floor = self.reg_covar > 0 if self.floor is None else self.floor
        prev = None if previous is None else previous.covariances
        return stats.m_step(self.reg_covar, self.scale, floor=floor, previous=prev)
