"""Saved models and checkpoints: checksummed ``.npz`` archives of plain arrays + JSON, no pickle.

Models (:func:`save_model`/:func:`load_model`, behind ``GaussianMixture.save``/``load``) hold the
fitted parameters, the estimator's parameters and its scalar fitted attributes.  Checkpoints
(:func:`save_checkpoint`/:func:`load_checkpoint`) hold a :class:`pipeline.core.state.FitState`,
written atomically by the run driver every ``checkpoint.every`` EM iterations; ``gmm-pipeline
run CONFIG --resume`` reads it back.  The archive holds only numeric arrays and JSON (the
random generator's state included), never pickle.  ``meta`` carries what the caller needs to
refuse a checkpoint of another run (config and data fingerprints).

Sweep checkpoints (:func:`save_sweep_checkpoint`/:func:`load_sweep_checkpoint`, format
``gmm-pipeline-sweep-checkpoint``) hold a :class:`SweepState`: every EM run of a batch run's
lockstep sweep (each candidate's restarts), which ``gmm-pipeline run CONFIG --resume`` recreates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.params import MixtureParams
from pipeline.core.state import EMResult, FitState
from pipeline.exceptions import CheckpointError, ModelFileError
from pipeline.storage.archive import read_archive, write_archive

MODEL_FORMAT = "gmm-pipeline-model"
MODEL_FORMAT_VERSION = 1


def _json_value(v):
    """NumPy scalars and dtypes as plain Python values (e.g. n_components=np.int64(3))."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.dtype):
        return v.name
    return v


_PARAM_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")


def _key(prefix: str, name: str) -> str:
    """Archive name of a parameter array: ``name`` in model files, ``prefix.name`` in checkpoints."""
    return f"{prefix}.{name}" if prefix else name


def _put_params(arrays: dict, prefix: str, p: MixtureParams) -> None:
    for name in _PARAM_ARRAYS:
        arrays[_key(prefix, name)] = np.asarray(getattr(p, name), dtype=np.float64)


def _get_params(arrays: dict, prefix: str, covariance_type: str) -> MixtureParams:
    return MixtureParams(*(arrays[_key(prefix, n)] for n in _PARAM_ARRAYS), covariance_type)


def save_model(model, path) -> Path:
    """Write a fitted estimator to ``path`` (.npz + JSON metadata, checksummed), atomically."""
    arrays = {"history": np.asarray(model.history_, dtype=np.float64)}
    _put_params(arrays, "", model._params())  # the exact (float64) parameters, whatever the attributes' dtype
    params = {
        k: _json_value(v)
        for k, v in model.get_params().items()
        if k not in ("weights_init", "means_init", "precisions_init")
    }
    if not isinstance(params["random_state"], (int, type(None))):
        params["random_state"] = None  # a Generator/RandomState object has no portable form
    meta = {
        "params": params,
        "attributes": {
            "converged_": model.converged_,
            "n_iter_": model.n_iter_,
            "lower_bound_": model.lower_bound_,
            "n_features_in_": int(model.n_features_in_),
            "fit_dtype": str(getattr(model, "_fit_dtype_", "float64")),
            "out_dtype": str(getattr(model, "_out_dtype_", "float64")),
        },
    }
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    return write_archive(path, arrays, meta, MODEL_FORMAT, MODEL_FORMAT_VERSION)


def load_model(cls, path):
    """Read a model written by :func:`save_model` as an instance of ``cls``; raises
    ModelFileError if damaged or foreign."""
    files, meta = read_archive(path, MODEL_FORMAT, MODEL_FORMAT_VERSION, error=ModelFileError)
    try:
        model = cls(**meta["params"])
        attrs = meta["attributes"]
        model.n_features_in_ = int(attrs["n_features_in_"])
        params = _get_params(files, "", meta["params"]["covariance_type"])
        fit_dtype = attrs.get("fit_dtype") or meta["params"].get("dtype") or "float64"
        result = EMResult(params, list(files["history"]), bool(attrs["converged_"]), int(attrs["n_iter_"]))
        model._set_fitted(result, fit_dtype, attrs.get("out_dtype") or "float64")
        model.lower_bound_ = float(attrs["lower_bound_"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model file {path} has inconsistent metadata: {exc}") from exc
    return model


CHECKPOINT_FORMAT = "gmm-pipeline-checkpoint"
CHECKPOINT_VERSION = 1


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


SWEEP_CHECKPOINT_FORMAT = "gmm-pipeline-sweep-checkpoint"
SWEEP_CHECKPOINT_VERSION = 1


@dataclass
class SweepRunState:
    """One EM run of a lockstep sweep, as checkpointed: its candidate and restart index, and
    what :class:`pipeline.engine.sweep.LockstepRun` holds (parameters, history, status, reason,
    scores, iterations)."""

    candidate: str
    restart: int
    params: MixtureParams | None
    history: list = field(default_factory=list)
    status: str = "running"
    reason: str | None = None
    scores: tuple | None = None
    n_iter: int = 0


@dataclass
class SweepState:
    """Every run of a lockstep sweep (a batch run's candidates x restarts) after ``n_pass`` EM
    passes, ``elapsed`` seconds into it; ``seconds``: candidate -> seconds from the sweep's
    start to its last run stopping (for the candidates stopped so far).

    ``candidate``, ``init`` and ``history`` are those of the *lead* run (the first one still
    running, else the last one): what messages name ("candidate k3-full, restart 0, iteration 6")."""

    runs: list = field(default_factory=list)
    n_pass: int = 0
    elapsed: float = 0.0
    seconds: dict = field(default_factory=dict)

    def lead(self) -> SweepRunState | None:
        running = [r for r in self.runs if r.status == "running"]
        return running[0] if running else (self.runs[-1] if self.runs else None)

    @property
    def candidate(self):
        lead = self.lead()
        return None if lead is None else lead.candidate

    @property
    def init(self) -> int:
        lead = self.lead()
        return 0 if lead is None else lead.restart

    @property
    def history(self) -> list:
        lead = self.lead()
        return [] if lead is None else lead.history


def save_sweep_checkpoint(path, state: SweepState, meta: dict) -> Path:
    """Write ``state`` (every run of the sweep) and JSON-able ``meta`` to ``path`` atomically
    (a local path or a :class:`~pipeline.storage.stores.StorePath`)."""
    arrays: dict = {}
    runs = []
    for i, r in enumerate(state.runs):
        if r.params is not None:
            _put_params(arrays, f"run{i}", r.params)
        runs.append({
            "candidate": r.candidate, "restart": int(r.restart),
            "covariance_type": None if r.params is None else r.params.covariance_type,
            "history": [float(v) for v in r.history], "status": r.status, "reason": r.reason,
            "scores": None if r.scores is None else [float(v) for v in r.scores], "n_iter": int(r.n_iter),
        })
    info = {"runs": runs, "n_pass": int(state.n_pass), "elapsed": float(state.elapsed),
            "seconds": {k: float(v) for k, v in state.seconds.items()}}
    return write_archive(path, arrays, {**meta, "sweep": info}, SWEEP_CHECKPOINT_FORMAT, SWEEP_CHECKPOINT_VERSION)


def load_sweep_checkpoint(path) -> tuple[SweepState, dict]:
    """Read a checkpoint written by :func:`save_sweep_checkpoint`: returns (SweepState, meta).
    Raises CheckpointError if unusable, and for a checkpoint of the earlier one-candidate-at-a-time
    format (:func:`save_checkpoint`), which a sweep cannot continue."""
    try:
        arrays, meta = read_archive(path, SWEEP_CHECKPOINT_FORMAT, SWEEP_CHECKPOINT_VERSION, error=CheckpointError)
    except CheckpointError:
        try:
            read_archive(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, error=CheckpointError)
        except CheckpointError:
            raise
        raise CheckpointError(
            f"checkpoint {path} was written by an earlier gmm-pipeline, which fitted the candidates one after "
            "another; this one fits them in lockstep and cannot continue it: run without --resume (with "
            "output.overwrite: true, which discards it) to start again"
        ) from None
    try:
        info = meta.pop("sweep")
        runs = []
        for i, r in enumerate(info["runs"]):
            ct = r["covariance_type"]
            runs.append(SweepRunState(
                candidate=str(r["candidate"]), restart=int(r["restart"]),
                params=None if ct is None else _get_params(arrays, f"run{i}", ct),
                history=[float(v) for v in r["history"]], status=str(r["status"]), reason=r["reason"],
                scores=None if r["scores"] is None else tuple(float(v) for v in r["scores"]), n_iter=int(r["n_iter"]),
            ))
        state = SweepState(runs, int(info["n_pass"]), float(info["elapsed"]),
                           {str(k): float(v) for k, v in info["seconds"].items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has inconsistent contents: {exc}") from exc
    return state, meta
