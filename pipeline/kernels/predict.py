"""Prediction: per-row outputs of one chunk, and the sums of score and the criteria.

Every function takes the chunk and a plan: an :class:`pipeline.core.plan.EStepPlan` (rows
with NaN/inf are an error), a :class:`pipeline.core.plan.MarginalPlan` (NaN are missing values,
each row predicted from its observed values) or a :class:`pipeline.core.plan.OmitPlan` (rows
with NaN get label -1 and NaN outputs, and are left out of sums).
"""

from __future__ import annotations

import numpy as np

from pipeline.core.plan import MarginalPlan, OmitPlan
from pipeline.exceptions import DataError
from pipeline.kernels.cpu import log_responsibilities, nan_mask, shifted_blocks
from pipeline.kernels.missing import marginal_log_resp


def iter_log_resp(x, plan):
    """(log p(x) (B,), log-responsibilities (B, K)) block by block, for an EStepPlan or a
    MarginalPlan (then one block: the chunk)."""
    if isinstance(plan, MarginalPlan):
        if x.shape[0]:
            yield marginal_log_resp(x, plan)
        return
    for xc in shifted_blocks(x, plan.shift, plan.dtype):
        lpx, log_resp = log_responsibilities(xc, plan)
        if not np.all(np.isfinite(lpx)):
            raise DataError(
                f"{int(np.count_nonzero(~np.isfinite(lpx)))} rows to predict have NaN/inf values "
                "(or values too large for the model's dtype); remove or impute them first"
            )
        yield lpx, log_resp


def _kept(x, plan):
    """(the rows to compute, their plan, the mask of those rows or None for all of them)."""
    if not isinstance(plan, OmitPlan):
        return x, plan, None
    x = np.asarray(x)
    keep = ~nan_mask(x).any(axis=1)
    return x[keep], plan.plan, keep


def _spread(values, keep, fill, shape_tail=()):
    """``values`` of the kept rows back at their places among all rows, ``fill`` elsewhere."""
    if keep is None:
        return values
    out = np.full((keep.shape[0], *shape_tail), fill, dtype=values.dtype)
    out[keep] = values
    return out


def proba_block(x, plan):
    x, plan, keep = _kept(x, plan)
    out = np.empty((x.shape[0], plan.n_components))  # filled block by block: no second copy
    start = 0
    for _, lr in iter_log_resp(x, plan):
        np.exp(lr, out=out[start : start + lr.shape[0]])
        start += lr.shape[0]
    return _spread(out, keep, np.nan, (plan.n_components,))


def labels_block(x, plan):
    x, plan, keep = _kept(x, plan)
    if x.shape[0] == 0:
        labels = np.empty((0,), dtype=np.int64)
    else:
        labels = np.concatenate([lr.argmax(axis=1) for _, lr in iter_log_resp(x, plan)]).astype(np.int64)
    return _spread(labels, keep, -1)


def score_block(x, plan):
    x, plan, keep = _kept(x, plan)
    lpx = np.empty((0,)) if x.shape[0] == 0 else np.concatenate([lpx for lpx, _ in iter_log_resp(x, plan)])
    return _spread(lpx, keep, np.nan)


def score_sum_block(x, plan):
    """[sum log p(x), rows summed] (rows with NaN left out under "omit")."""
    x, plan, _ = _kept(x, plan)
    return np.array([score_block(x, plan).sum(), x.shape[0]])


def criteria_sum_block(x, plan):
    """[sum log p(x), n rows, sum log max_k r_k(x)]: the log-likelihood and the
    classification term of ICL in one pass."""
    return weighted_criteria_sum_block(x, None, plan)


def weighted_criteria_sum_block(x, weights, plan):
    """:func:`criteria_sum_block` with each row weighted (``weights`` (n,) or None); the
    second entry is then the total weight."""
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    x, plan, keep = _kept(x, plan)
    if keep is not None and w is not None:
        w = w[keep]
    total, top, start = 0.0, 0.0, 0
    for lpx, lr in iter_log_resp(x, plan):
        best = lr.max(axis=1) if lr.shape[0] else np.zeros(0)
        if w is None:
            total += float(lpx.sum())
            top += float(best.sum())
        else:
            wb = w[start : start + lpx.shape[0]]
            total += float(np.dot(wb, lpx))
            top += float(np.dot(wb, best))
        start += lpx.shape[0]
    return np.array([total, x.shape[0] if w is None else float(w.sum()), top])
