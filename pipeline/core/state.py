"""Where a fit is: the result of one EM run and the state that resumes a fit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.core.params import MixtureParams


@dataclass
class EMResult:
    """The outcome of one EM run: final parameters, mean log-likelihood per iteration."""

    params: MixtureParams
    history: list
    converged: bool
    n_iter: int

    @property
    def lower_bound(self) -> float:
        return self.history[-1] if self.history else -math.inf


@dataclass
class FitState:
    """Where a fit is: enough to resume it with the same result as an uninterrupted fit.

    ``init`` is the restart being run, ``params``/``history`` its EM state after the last
    completed iteration (None/[] before its first), ``rng_state`` the random generator's state
    after its initialisation, ``best``/``best_init`` the best finished restart so far and
    ``init_history`` the histories of finished restarts.
    """

    init: int = 0
    params: MixtureParams | None = None
    history: list = field(default_factory=list)
    rng_state: dict | None = None
    best: EMResult | None = None
    best_init: int = 0
    init_history: list = field(default_factory=list)
