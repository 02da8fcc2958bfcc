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

**Incremental EM** (``blocks > 1``; Neal and Hinton 1998).  The chunks are split into
``blocks`` groups of consecutive chunks ("super-blocks", each still computed in parallel) and a
pass is one computation per group.  A run's first pass is an exact batch iteration whose
statistics are kept per group.  In its next passes, after each group the run replaces that
group's statistics by the ones under its current parameters and makes an M step on the sum of
all groups' (each moved to the current means exactly: :meth:`SuffStats.recentred`; the stored
groups are summed anew each time, never subtracted), so a pass makes ``blocks`` M steps.  Each
of them can only raise the free energy, and the fixed points are EM's.  When the objective of
an incremental pass (the sum of the groups' log-likelihoods, each under the parameters of its
own visit) changes by less than ``tol`` from the pass before, the run goes back to exact batch
iterations, and it stops only on those: the change (and the Aitken estimate) that stops it is
always between two exact iterations.  A run's history has one entry per pass (``n_iter``
counts passes); ``incremental`` lists the passes that were incremental.

**Stopping**: ``stopping="change"`` stops at ``|l_k - l_(k-1)| < tol`` (scikit-learn's rule);
``"aitken"`` (McNicholas 2010) also asks the Aitken estimate of the limit,
``l_inf = l_(k-1) + (l_k - l_(k-1)) / (1 - a)`` with ``a = (l_k - l_(k-1)) / (l_(k-1) - l_(k-2))``,
to be within ``tol`` of ``l_(k-1)`` when ``0 <= a < 1`` (a linear tail): a slow tail whose
steps are below ``tol`` but whose sum is not goes on.
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
from pipeline.engine.graph import counting_passes, record_pass, reduce_blocks
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
    #: incremental EM: the passes (indices into ``history``) that were incremental, the run's
    #: phase ("incremental" or "batch"), and its statistics per group of chunks
    incremental: list = field(default_factory=list)
    phase: str = "batch"
    block_stats: list | None = None

    @property
    def exact_from(self) -> int:
        """The first entry of ``history`` after the last incremental pass."""
        return self.incremental[-1] + 1 if self.incremental else 0

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
    blocks: int = 1,
    stopping: str = "change",
) -> int:
    """EM for every run of ``runs`` in lockstep (see the module docstring), until each has
    stopped or failed and been scored; updates the runs in place and returns the number of
    passes made over ``X``.  ``weights`` and ``marginalize`` as for :func:`run_em`;
    ``blocks`` (incremental EM over that many groups of chunks; 1: batch EM) and ``stopping``
    ("change" or "aitken") as in the module docstring."""
    if stopping not in STOPPING:
        raise ValueError(f"stopping must be one of {', '.join(STOPPING)}; got {stopping!r}")
    n_pass = 0
    data = [X] if weights is None else [X, weights]
    whole, groups = data[0] if len(data) == 1 else tuple(data), _groups(data, blocks)
    kernel = _tasks_kernel if weights is None else _weighted_tasks_kernel
    for run in runs:
        if max_iter == 0 and run.status == "running":
            run.status = "max_iter"
        elif len(groups) > 1 and run.status == "running" and not run.history:
            run.phase = "incremental"
    while True:
        em = [r for r in runs if r.status == "running"]
        score = [r for r in runs if r.status != "running" and r.status != "failed" and r.scores is None]
        if not em and not score:
            return n_pass
        t0 = time.perf_counter()
        incremental = any(r.phase == "incremental" for r in em)
        _pass(groups if incremental else [whole], kernel, em, score, tol, max_iter, dtype, marginalize, name, stopping)
        n_pass += 1
        if callback is not None:
            callback(PassInfo(n_pass, len(em), len(score), time.perf_counter() - t0, runs))


STOPPING = ("change", "aitken")


def _lengths(em, score) -> list[int]:
    p = [r.params for r in em]
    return [vector_length(q.covariance_type, q.n_components, q.n_features) for q in p] + [3] * len(score)


def _stats(run: LockstepRun, part) -> SuffStats:
    return SuffStats.from_vector(part, run.params.means, run.params.covariance_type)


def _groups(data: list, blocks: int) -> list:
    """The data split into ``blocks`` groups of consecutive chunks (fewer if there are fewer
    chunks), each the argument of one :func:`reduce_blocks` call."""
    n = data[0].numblocks[0]
    blocks = max(1, min(int(blocks), n))
    if blocks == 1:
        return [data[0] if len(data) == 1 else tuple(data)]
    bounds = np.linspace(0, n, blocks + 1).round().astype(int)
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        parts = [a.blocks[lo:hi] for a in data]
        out.append(parts[0] if len(parts) == 1 else tuple(parts))
    return out


def _pass(groups, kernel, em, score, tol, max_iter, dtype, marginalize, name, stopping) -> None:
    """One pass as ``len(groups)`` computations (one for a batch pass; see the module
    docstring): the E steps of ``em``, the scores of ``score``.  A run in its
    incremental passes makes an M step after each group; every other run (a batch run, an
    incremental run's first pass, a run to score) adds up the groups' statistics under its fixed
    parameters, and an incremental run's first pass keeps them by group."""
    totals = [0.0] * (len(em) + len(score))
    first = {id(r): [] for r in em if r.phase == "incremental" and r.block_stats is None}
    with counting_passes():  # the groups' computations are one pass, recorded below
        for g, group in enumerate(groups):
            tasks = [_task(r, "em", dtype, marginalize) for r in em]
            tasks += [_task(r, "score", dtype, marginalize) for r in score]
            lengths = _lengths(em, score)
            vec = reduce_blocks(group, kernel, sum(lengths), dask.delayed(tasks, pure=True))
            for i, (run, part) in enumerate(zip(em + score, np.split(vec, np.cumsum(lengths)[:-1]))):
                if i < len(em) and run.status != "running":
                    continue  # failed in an M step of this pass
                if i < len(em) and run.block_stats is not None:
                    run.block_stats[g] = _stats(run, part)
                    _incremental_step(run, name, dtype)
                    continue
                if id(run) in first:
                    first[id(run)].append(_stats(run, part))
                totals[i] = totals[i] + part
    record_pass()
    for run, total in zip(score, totals[len(em):]):
        run.scores = tuple(float(v) for v in total)
    for run, total in zip(em, totals):
        if run.status != "running":
            continue
        if run.block_stats is not None:
            _end_incremental_pass(run, tol, max_iter)
            continue
        if id(run) in first:
            run.block_stats = first[id(run)]
        _advance(run, _stats(run, total), tol, max_iter, name, dtype, stopping)


def _check_finite(st: SuffStats, name: str, dtype: str) -> None:
    if st.n_nonfinite:  # (the summary pass refused NaN and inf, unless they are missing values)
        raise DataError(
            f"{name}: {int(st.n_nonfinite)} rows have a non-finite log-likelihood although their values are "
            f"finite: values too large for the compute dtype {dtype}? Use dtype float64 or rescale the data"
        )


def _incremental_step(run: LockstepRun, name: str, dtype: str) -> None:
    """An M step of an incremental run on the sum of its groups' statistics, each moved to the
    current means (one group has just been replaced by its statistics under them)."""
    means = run.params.means
    total = run.block_stats[0].recentred(means)
    for st in run.block_stats[1:]:
        total = total.merge(st.recentred(means))
    _check_finite(total, name, dtype)
    try:
        run.params, floored = run.updater.m_step(total, previous=run.params)
    except CovarianceError as exc:
        run.status, run.reason = "failed", f"incremental EM: {exc}"
        return
    warn_floored(floored, f"M step of incremental pass {run.n_iter + 1}")


def _end_incremental_pass(run: LockstepRun, tol: float, max_iter: int) -> None:
    """The pass's objective (the groups' log-likelihoods, each under the parameters of its visit)
    in the history; the run goes back to batch iterations once it changes by less than ``tol``,
    or when only one pass is left before ``max_iter``."""
    n = sum(st.n for st in run.block_stats)
    objective = sum(st.loglik for st in run.block_stats) / n
    change = objective - run.history[-1]
    run.n_iter += 1
    run.history.append(objective)
    run.incremental.append(len(run.history) - 1)
    if abs(change) < tol or run.n_iter + 1 >= max_iter:
        run.phase, run.block_stats = "batch", None


def _advance(run: LockstepRun, st: SuffStats, tol: float, max_iter: int, name: str, dtype: str,
             stopping: str = "change") -> None:
    """One exact EM iteration of ``run`` from its statistics ``st`` (as :func:`run_em`'s loop
    body), and the stopping rule on the exact iterations since its last incremental pass."""
    _check_finite(st, name, dtype)
    mean_ll = run.updater.lower_bound(st)
    try:
        params, floored = run.updater.m_step(st, previous=run.params)
    except CovarianceError as exc:
        run.status, run.reason = "failed", str(exc)
        return
    run.n_iter += 1
    warn_floored(floored, f"M step of iteration {run.n_iter}")
    exact = run.history[run.exact_from:]
    lower_bound = exact[-1] if exact else -math.inf
    run.history.append(mean_ll)
    run.params = params
    change = mean_ll - lower_bound
    if abs(change) < tol and (stopping == "change" or _aitken_settled(exact[-2:] + [mean_ll], tol)):
        run.status = "converged"
    elif run.n_iter >= max_iter:
        run.status = "max_iter"


def _aitken_settled(last: list, tol: float) -> bool:
    """With the last three exact objectives, whether Aitken's estimate of the limit is within
    ``tol`` of the one before the last (True when the rate is not that of a linear tail,
    ``0 <= a < 1``, or there are fewer than three: the change rule then decides alone)."""
    if len(last) < 3 or last[1] == last[0]:
        return True
    a = (last[2] - last[1]) / (last[1] - last[0])
    if not 0.0 <= a < 1.0:
        return True
    return abs(last[2] - last[1]) / (1.0 - a) < tol
