"""Checkpoints of a running fit: a :class:`pipeline.model.FitState` as a checksummed archive.

Written atomically (temp file + rename) by the run driver every ``checkpoint.every`` EM
iterations; ``gmm-pipeline run CONFIG --resume`` reads it back.  The archive holds only numeric
arrays and JSON (the random generator's state included), never pickle.  ``meta`` carries what
the caller needs to refuse a checkpoint of another run (config and data fingerprints).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.em import EMResult
from pipeline.exceptions import CheckpointError
from pipeline.gaussian import MixtureParams
from pipeline.io import read_archive, write_archive

CHECKPOINT_FORMAT = "gmm-pipeline-checkpoint"
CHECKPOINT_VERSION = 1
_PARAM_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")


def _put_params(arrays: dict, prefix: str, p: MixtureParams) -> None:
    for name in _PARAM_ARRAYS:
        arrays[f"{prefix}.{name}"] = np.asarray(getattr(p, name), dtype=np.float64)


def _get_params(arrays: dict, prefix: str, covariance_type: str) -> MixtureParams:
    return MixtureParams(*(arrays[f"{prefix}.{n}"] for n in _PARAM_ARRAYS), covariance_type)


def save_checkpoint(path, state, meta: dict) -> Path:
    """Write ``state`` (a FitState) and JSON-able ``meta`` to ``path`` atomically."""
    arrays: dict = {}
    info = {
        "init": state.init,
        "history": [float(v) for v in state.history],
        "rng_state": state.rng_state,
        "best_init": state.best_init,
        "init_history": [[float(v) for v in h] for h in state.init_history],
        "has_params": state.params is not None,
        "best": None,
    }
    ct = None
    if state.params is not None:
        _put_params(arrays, "params", state.params)
        ct = state.params.covariance_type
    if state.best is not None:
        _put_params(arrays, "best", state.best.params)
        ct = state.best.params.covariance_type
        info["best"] = {
            "history": [float(v) for v in state.best.history],
            "converged": bool(state.best.converged),
            "n_iter": int(state.best.n_iter),
        }
    info["covariance_type"] = ct
    return write_archive(path, arrays, {**meta, "state": info}, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)


def load_checkpoint(path):
    """Read a checkpoint: returns (FitState, meta).  Raises CheckpointError if unusable."""
    from pipeline.model import FitState

    arrays, meta = read_archive(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, error=CheckpointError)
    try:
        info = meta.pop("state")
        ct = info["covariance_type"]
        state = FitState(
            init=int(info["init"]),
            params=_get_params(arrays, "params", ct) if info["has_params"] else None,
            history=list(info["history"]),
            rng_state=info["rng_state"],
            best_init=int(info["best_init"]),
            init_history=[list(h) for h in info["init_history"]],
        )
        if info["best"] is not None:
            b = info["best"]
            state.best = EMResult(_get_params(arrays, "best", ct), list(b["history"]), bool(b["converged"]), int(b["n_iter"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has inconsistent contents: {exc}") from exc
    return state, meta
