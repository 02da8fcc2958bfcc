"""Many EM runs in lockstep: one pass over the data serves every run still going.

A model-selection sweep fits many candidates (G components x covariance model, each with its
``n_init`` restarts).  Their E steps depend only on their own parameters, so each chunk task
computes the statistics of every live run from one read of the chunk and returns their
concatenation; the tree of sums adds them all at once, and the driver splits the total and
runs each run's M step.  Reading and scheduling are shared; the runs' own arithmetic adds up.

A run stops as :func:`pipeline.engine.em.run_em` stops (``|change| < tol``, or ``max_iter``)
or fails (a collapsed component without regularisation: :class:`CovarianceError`, recorded
with its reason; the others go on).  A run that stopped is *scored* in the next pass that is
made anyway for the others (or in one last pass): the log-likelihood, the weight and
``sum log max_k r`` of its final parameters, from which BIC and ICL follow, so the criteria
need no pass of their own.

Every run gives exactly what ``run_em`` gives from the same start: the same statistics from the
same chunk kernels, summed over the same tree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import numpy as np

from pipeline.core.params import MixtureParams
from pipeline.core.state import EMResult
from pipeline.core.stats import SuffStats, vector_length
from pipeline.engine.em import _KERNELS
from pipeline.engine.graph import reduce_blocks
from pipeline.exceptions import CovarianceError, DataError
from pipeline.families import warn_floored
from pipeline.kernels.predict import criteria_sum_block, weighted_criteria_sum_block


@dataclass
class LockstepRun:
    """One EM run of a sweep: its start, updater and what became of it.

    ``status`` is "running", "converged", "max_iter" (stopped there) or "failed" (``reason``
    says why); ``scores`` (sum of log p(x), n, sum of log max_k r) of the final parameters are
    set by the pass after it stopped.
    """

    params: MixtureParams | None  # None: a run that failed before it started
    updater: object
    history: list = field(default_factory=list)
    status: str = "running"
    reason: str | None = None
    scores: tuple | None = None
    n_iter: int = 0

    @property
    def result(self) -> EMResult:
        return EMResult(self.params, list(self.history), self.status == "converged", self.n_iter)


@dataclass
class PassInfo:
    """What the per-pass callback receives: the pass number (from 1), how many runs it served
    (``n_em``: E steps, ``n_scored``: runs scored), its seconds, and the runs."""

    n_pass: int
    n_em: int
    n_scored: int
    seconds: float
    runs: list


def _tasks_kernel(block, tasks):
    """Every task's vector on one chunk, concatenated (an E step's statistics, or the three
    scores of final parameters)."""
    return np.concatenate([_one(block, None, t) for t in tasks])


def _weighted_tasks_kernel(block, weights, tasks):
    return np.concatenate([_one(block, weights, t) for t in tasks])


def _one(block, weights, task):
    kind, plan, centres, covariance_type, marginalize = task
    if kind == "score":
        return criteria_sum_block(block, plan) if weights is None else weighted_criteria_sum_block(block, weights, plan)
    kernel = _KERNELS[weights is not None, marginalize]
    return kernel(block, plan, centres, covariance_type) if weights is None else kernel(
        block, weights, plan, centres, covariance_type)


def _task(run: LockstepRun, kind: str, dtype: str, marginalize: bool):
    p = run.params
    plan = p.marginal_plan(dtype) if marginalize else p.plan(dtype)
    return kind, plan, p.means, p.covariance_type, marginalize


def run_lockstep(
    X,
    runs: list[LockstepRun],
    *,
    tol: float,
    max_iter: int,
    dtype: str = "float64",
    weights=None,
    marginalize: bool = False,
    name: str = "data",
    callback: Callable[[PassInfo], None] | None = None,
) -> int:
    """EM for every run of ``runs`` in lockstep (see the module docstring), until each has
    stopped or failed and been scored; updates the runs in place and returns the number of
    passes made over ``X``.  ``weights`` and ``marginalize`` as for :func:`run_em`."""
    n_pass = 0
    data = X if weights is None else (X, weights)
    kernel = _tasks_kernel if weights is None else _weighted_tasks_kernel
    for run in runs:
        if max_iter == 0 and run.status == "running":
            run.status = "max_iter"
    while True:
        em = [r for r in runs if r.status == "running"]
        score = [r for r in runs if r.status != "running" and r.status != "failed" and r.scores is None]
        if not em and not score:
            return n_pass
        t0 = time.perf_counter()
        tasks = [_task(r, "em", dtype, marginalize) for r in em] + [_task(r, "score", dtype, marginalize) for r in score]
        lengths = [vector_length(r.params.covariance_type, r.params.n_components, r.params.n_features) for r in em]
        lengths += [3] * len(score)
        vec = reduce_blocks(data, kernel, sum(lengths), dask.delayed(tasks, pure=True))
        n_pass += 1
        parts = np.split(vec, np.cumsum(lengths)[:-1])
        for run, part in zip(score, parts[len(em):]):
            run.scores = tuple(float(v) for v in part)
        for run, part in zip(em, parts[: len(em)]):
            _advance(run, SuffStats.from_vector(part, run.params.means, run.params.covariance_type),
                     tol, max_iter, name, dtype)
        if callback is not None:
            callback(PassInfo(n_pass, len(em), len(score), time.perf_counter() - t0, runs))


def _advance(run: LockstepRun, st: SuffStats, tol: float, max_iter: int, name: str, dtype: str) -> None:
    """One EM iteration of ``run`` from its statistics ``st`` (as :func:`run_em`'s loop body)."""
    if st.n_nonfinite:  # (the summary pass refused NaN and inf, unless they are missing values)
        raise DataError(
            f"{name}: {int(st.n_nonfinite)} rows have a non-finite log-likelihood although their values are "
            f"finite: values too large for the compute dtype {dtype}? Use dtype float64 or rescale the data"
        )
    mean_ll = run.updater.lower_bound(st)
    try:
        params, floored = run.updater.m_step(st, previous=run.params)
    except CovarianceError as exc:
        run.status, run.reason = "failed", str(exc)
        return
    run.n_iter += 1
    warn_floored(floored, f"M step of iteration {run.n_iter}")
    lower_bound = run.history[-1] if run.history else -math.inf
    run.history.append(mean_ll)
    run.params = params
    if abs(mean_ll - lower_bound) < tol:
        run.status = "converged"
    elif run.n_iter >= max_iter:
        run.status = "max_iter"
