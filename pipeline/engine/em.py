"""The EM loop over a row-chunked Dask array: one pass per iteration, the M step on the driver.

Per iteration the graph is one task per chunk (E step and partial statistics:
:func:`pipeline.kernels.cpu.chunk_stats`) plus a tree of sums over the flat statistics vectors
(:func:`pipeline.engine.graph.reduce_blocks`); the driver receives one float64 vector of
O(K*D^2) numbers and hands it to the updater (:mod:`pipeline.core.updaters`: the M step and
the objective).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import dask
import dask.array as da

from pipeline import exceptions
from pipeline.core.params import MixtureParams
from pipeline.core.state import EMResult
from pipeline.core.stats import SuffStats, vector_length
from pipeline.core.updaters import MaximumLikelihood
from pipeline.engine.graph import reduce_blocks
from pipeline.engine.summary import summarize
from pipeline.exceptions import DataError
from pipeline.families import warn_floored
from pipeline.kernels.cpu import chunk_stats
from pipeline.kernels.missing import marginal_chunk_stats


def _em_kernel(block, plan, centres, covariance_type):
    return chunk_stats(block, plan, centres, covariance_type).to_vector()


def _weighted_em_kernel(block, weights, plan, centres, covariance_type):
    return chunk_stats(block, plan, centres, covariance_type, weights=weights).to_vector()


def _marginal_em_kernel(block, plan, centres, covariance_type):
    return marginal_chunk_stats(block, plan, centres, covariance_type).to_vector()


def _weighted_marginal_em_kernel(block, weights, plan, centres, covariance_type):
    return marginal_chunk_stats(block, plan, centres, covariance_type, weights=weights).to_vector()


_KERNELS = {  # (weighted, marginalize): the chunk kernel of one E step
    (False, False): _em_kernel, (True, False): _weighted_em_kernel,
    (False, True): _marginal_em_kernel, (True, True): _weighted_marginal_em_kernel,
}


def e_step_stats(
    X: da.Array, params: MixtureParams, dtype="float64", weights: da.Array | None = None, marginalize: bool = False,
) -> SuffStats:
    """One pass: E step on every chunk and the reduced statistics, centred at the current means.

    ``weights``: optional (n,) sample weights with X's row chunks (validated by the caller):
    the statistics are then weighted sums and ``n`` the total weight.  ``marginalize``: NaN
    are missing values, marginalised in the E step and replaced by their conditional
    expectations in the statistics (:mod:`pipeline.kernels.missing`)."""
    plan = params.marginal_plan(dtype) if marginalize else params.plan(dtype)
    vec = reduce_blocks(
        X if weights is None else (X, weights),
        _KERNELS[weights is not None, bool(marginalize)],
        vector_length(params.covariance_type, params.n_components, params.n_features),
        dask.delayed(plan, pure=True),
        dask.delayed(params.means, pure=True),
        params.covariance_type,
    )
    return SuffStats.from_vector(vec, params.means, params.covariance_type)


@dataclass
class IterationInfo:
    """What the per-iteration callback receives."""

    n_iter: int
    mean_loglik: float
    change: float
    seconds: float
    rows_per_second: float
    params: MixtureParams
    history: list = field(default_factory=list)
    state: object = None  # the estimator's FitState, set by GaussianMixture before user callbacks
    m_step_seconds: float = 0.0  # the driver's M step, part of ``seconds``


def run_em(
    X: da.Array,
    params: MixtureParams,
    *,
    tol: float,
    max_iter: int,
    reg_covar: float = 1e-6,
    dtype: str = "float64",
    scale: float = 1.0,
    history=None,
    callback: Callable[[IterationInfo], None] | None = None,
    name: str = "data",
    updater=None,
    lower_bound: float | None = None,
    weights: da.Array | None = None,
    marginalize: bool = False,
) -> EMResult:
    """EM from ``params`` until ``|change of the objective| < tol`` or ``max_iter``.

    ``updater`` turns each pass's statistics into new parameters and the objective
    (default: :class:`pipeline.core.updaters.MaximumLikelihood` with ``reg_covar`` and
    ``scale``; the objective is then the mean log-likelihood).

    ``history`` (mean log-likelihoods of earlier iterations) resumes an interrupted run: the
    iteration count continues from ``len(history)``.  The mean log-likelihood of iteration i is
    computed under the parameters before its M step (as scikit-learn's ``lower_bounds_``).

    ``weights`` (n,) with X's row chunks: weighted EM (the objective is then the weighted mean
    log-likelihood), equal to EM on the data with row i repeated w_i times for integer w.

    ``marginalize``: EM for values missing at random, NaN being the missing values (the
    objective is then the mean observed-data log-likelihood); see
    :mod:`pipeline.kernels.missing`.

    ``lower_bound`` (without ``history``) is the objective the first change is measured from:
    scikit-learn's ``warm_start`` continues a previous fit from its ``lower_bound_``, counting
    iterations from 1 again.
    """
    if updater is None:
        updater = MaximumLikelihood(reg_covar, scale)
    history = list(history or [])
    if history:
        lower_bound = history[-1]
    elif lower_bound is None:
        lower_bound = -math.inf
    converged = False
    n_iter = len(history)
    if history and len(history) >= 2 and abs(history[-1] - history[-2]) < tol:
        return EMResult(params, history, True, n_iter)
    for n_iter in range(len(history) + 1, max_iter + 1):
        t0 = time.perf_counter()
        st = e_step_stats(X, params, dtype, weights, marginalize)
        if st.n_nonfinite:
            if not marginalize:  # (NaN are missing values there, and inf was refused by the summary)
                summarize(X, name)  # names the chunks holding NaN/inf, if that is the cause; raises
            raise DataError(
                f"{name}: {int(st.n_nonfinite)} rows have a non-finite log-likelihood although their "
                f"values are finite: values too large for the compute dtype {dtype}? Use dtype float64 "
                "or rescale the data"
            )
        mean_ll = updater.lower_bound(st)
        t_m = time.perf_counter()
        params, floored = updater.m_step(st, previous=params)
        t_m = time.perf_counter() - t_m
        warn_floored(floored, f"M step of iteration {n_iter}")
        history.append(mean_ll)
        change = mean_ll - lower_bound
        lower_bound = mean_ll
        seconds = time.perf_counter() - t0
        if callback is not None:
            callback(IterationInfo(n_iter, mean_ll, change, seconds, st.n / seconds, params, history, m_step_seconds=t_m))
        if abs(change) < tol:
            converged = True
            break
    return EMResult(params, history, converged, n_iter)


#: scikit-learn's wording, so that users' (and scikit-learn's tests') filters recognise it
NOT_CONVERGED = (
    "Best performing initialization did not converge. Try different init parameters, or "
    "increase max_iter, tol, or check for degenerate data."
)


def warn_not_converged(result: EMResult, max_iter: int) -> None:
    if not result.converged and max_iter > 0:
        last = result.history[-1] - result.history[-2] if len(result.history) > 1 else float("nan")
        warnings.warn(
            f"{NOT_CONVERGED} (EM stopped at max_iter={max_iter} iterations; last change of the "
            f"mean log-likelihood {last:.3g}.)",
            exceptions.ConvergenceWarning,  # made on first use (it imports scikit-learn)
            stacklevel=3,
        )
