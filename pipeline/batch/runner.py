"""One batch run from a :class:`pipeline.config.RunConfig`: cluster, data, fits, outputs, report.

Nothing is lost:

- all outputs are written into a staging directory beside ``output.dir``
  (``.<name>.partial``) and published by renames only when everything succeeded; a failed run
  leaves an earlier run's outputs untouched;
- an existing ``output.dir`` is never replaced unless ``output.overwrite: true``, and that is
  checked before any work starts;
- the candidates (``model.n_components`` x ``model.covariance_type``) are fitted in lockstep
  (:func:`pipeline.engine.sweep.run_lockstep`): one pass over the data per EM iteration serves
  every run still going, and the criteria come from the pass after a run stopped.  They start
  as ``GaussianMixtureIC`` starts them (:class:`pipeline.estimators.selection.SweepStart`, the
  same preparation): from the sample of about ``model.init_sample`` rows drawn in the summary
  pass (one start per candidate, no pass of its own), or, with ``init_sample: null``, each of
  its ``model.n_init`` restarts on the data, and then every candidate's figures are those of
  ``GaussianMixture(...).fit`` + ``information_criteria``;
- the staging directory holds the checkpoint (every ``checkpoint.every`` passes, written
  atomically: the state of every run, :class:`pipeline.estimators.persistence.SweepState`):
  ``run(cfg, resume=True)`` recreates every run from it after the driver was killed (no
  initialisation again), and refuses a checkpoint whose config or data differ from the current ones;
- on an object store (``output.dir: s3://...``), which cannot rename, the staging directory is a
  new generation prefix inside ``output.dir``, published by one final write of its manifest
  (:class:`pipeline.storage.stores.StoreOutput`); the same rules hold there.  Two runs must not
  share a store's ``output.dir`` at once: no lock is taken there.
- a lost Dask scheduler (stopped, killed, unreachable) ends the run with one
  :class:`~pipeline.exceptions.SchedulerLostError` naming the checkpoint; the staging directory
  is kept, and ``resume=True`` continues on the same or another cluster (the ``cluster`` section
  is not part of the fingerprint a checkpoint is checked against).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from pipeline.batch import cluster as cluster_mod
from pipeline.batch.plots import write_plots
from pipeline.batch.report import build_report, write_report
from pipeline.core.state import EMResult
from pipeline.data.zarr_io import dataset_from_config, weights_from_config
from pipeline.engine.em import warn_not_converged
from pipeline.engine.graph import counting_passes, per_block, record_pass
from pipeline.engine.resources import should_cache, single_threaded_blas
from pipeline.engine.summary import summarize
from pipeline.engine.sweep import LockstepRun, PassInfo, run_lockstep
from pipeline.estimators.gaussian_mixture import GaussianMixture
from pipeline.estimators.persistence import SweepRunState, SweepState, load_sweep_checkpoint, save_sweep_checkpoint
from pipeline.estimators.selection import SAMPLE_STARTS_PER_INIT, SweepStart, settle_runs
from pipeline.exceptions import (
    CheckpointError,
    CovarianceError,
    GMMPipelineError,
    OutputExistsError,
    OutputWriteError,
    SchedulerLostError,
)
from pipeline.storage.atomic import atomic_write_text, publish_dir
from pipeline.storage.stores import MANIFEST_NAME, StoreOutput, StorePath, fsspec_options, location_of, zarr_kwargs

CHECKPOINT_NAME = "checkpoint.npz"
PROGRESS_NAME = "progress.json"
#: config sections that may differ between a run and its resumption
_RESUME_IGNORES = ("cluster", "output", "checkpoint")

#: progress lines (INFO) under the package's logger "pipeline"; the command prints them on stdout
logger = logging.getLogger(__name__)


def staging_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def output_location(cfg) -> Path | StorePath:
    """``output.dir`` as a local path or a store location; a store takes
    ``output.storage_options``, or ``data.storage_options`` when that is null."""
    options = cfg.output.storage_options if cfg.output.storage_options is not None else cfg.data.storage_options
    return location_of(cfg.output.dir, fsspec_options(options))


def candidate_name(k: int, covariance_type: str) -> str:
    return f"k{k}-{covariance_type}"


@dataclass
class RunResult:
    out_dir: Path
    report: dict
    model: GaussianMixture
    candidates: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# fingerprints
# ------------------------------------------------------------------------------------------


def config_fingerprint(cfg) -> dict:
    d = cfg.to_dict()
    # how the data is reached is not what it is (its content is fingerprinted)
    d["data"] = {k: v for k, v in d["data"].items() if k != "storage_options"}
    if d.get("model", {}).get("nan_policy") == "raise":  # the default: as checkpoints written before the key
        d["model"] = {k: v for k, v in d["model"].items() if k != "nan_policy"}
    return {k: v for k, v in d.items() if k not in _RESUME_IGNORES}


def data_fingerprint(X: da.Array, summary, weights=None) -> dict:
    """Shape, dtype, row chunks and a hash of every chunk's count, mean and sum of squares
    (from the summary pass the fit needs anyway): a change anywhere in the data shows.  With
    sample weights also a hash of every weights chunk's sum and sum of squares (one pass over
    the weights), so that resuming with other weights is refused too."""
    out = {
        "shape": list(X.shape),
        "dtype": str(X.dtype),
        "row_chunks": [int(c) for c in X.chunks[0]][:3] + [len(X.chunks[0])],
        "sha256_chunk_moments": summary.fingerprint(),
    }
    if weights is not None:
        sums = per_block(weights.astype(np.float64)[:, None], _weight_moments, 2)
        out["sha256_weight_moments"] = hashlib.sha256(np.ascontiguousarray(sums).tobytes()).hexdigest()
    return out


def _weight_moments(block):
    w = np.asarray(block, dtype=np.float64)
    return np.array([w.sum(), (w * w).sum()])


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {b!r} in the checkpoint, {a!r} now"]


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------


def check_output_dir(cfg, resume: bool) -> tuple[Path, Path]:
    """Refuse, before any work, a run that would lose an earlier run's results; returns the
    output location and the staging one (on a store: the generation to resume, or None)."""
    out = output_location(cfg)
    if isinstance(out, StorePath):
        return _check_store_output(cfg, out, resume)
    stage = staging_dir(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output.dir {out} exists and is a file")
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty directory holds nothing to lose; the published run takes its place
    if out.is_dir() and not cfg.output.overwrite:
        raise OutputExistsError(
            f"output.dir {out} already holds an earlier run's results; set output.overwrite: true "
            "(or --set output.overwrite=true) to replace them, or choose another output.dir"
        )
    if resume and not (stage / CHECKPOINT_NAME).is_file():
        raise CheckpointError(f"--resume: no checkpoint at {stage / CHECKPOINT_NAME}; run without --resume")
    if not resume and (stage / CHECKPOINT_NAME).is_file() and not cfg.output.overwrite:
        raise OutputExistsError(
            f"an interrupted run left a checkpoint at {stage}; pass --resume to continue it, or set "
            "output.overwrite: true to discard it and start again"
        )
    return out, stage


def _check_store_output(cfg, out: StorePath, resume: bool) -> tuple[StorePath, StorePath | None]:
    """:func:`check_output_dir` on an object store: a published manifest is an earlier run's
    results; a staging generation with a checkpoint is an interrupted run."""
    store = StoreOutput(out)
    if store.manifest() is not None and not cfg.output.overwrite:
        raise OutputExistsError(
            f"output.dir {out} already holds an earlier run's results (published by {out / MANIFEST_NAME}); "
            "set output.overwrite: true (or --set output.overwrite=true) to replace them, or choose another output.dir"
        )
    stage = store.staging()
    interrupted = stage is not None and (stage / CHECKPOINT_NAME).is_file()
    if resume and not interrupted:
        raise CheckpointError(f"--resume: no checkpoint of an interrupted run at {out}; run without --resume")
    if not resume and interrupted and not cfg.output.overwrite:
        raise OutputExistsError(
            f"an interrupted run left a checkpoint at {stage}; pass --resume to continue it, or set "
            "output.overwrite: true to discard it and start again"
        )
    return out, stage if resume else None


def run(cfg, resume: bool = False, client=None, debug: bool = False) -> RunResult:
    """Execute the run described by ``cfg``; returns the outputs' location and the report.

    Progress goes to the logger ``pipeline.batch.runner`` at INFO (silent unless the caller
    configures logging, as the command does).  Unless ``debug``, the workers do not log failed
    tasks' tracebacks (:class:`pipeline.batch.cluster.QuietTaskErrors`): the error is raised
    here, once."""
    t0 = time.perf_counter()
    out = output_location(cfg)
    try:
        with run_lock(out):
            return _run_locked(cfg, resume, client, t0, debug)
    except OSError as exc:
        if isinstance(exc, GMMPipelineError) or not _is_output_failure(exc, out):
            raise
        raise _output_write_error(exc, out) from exc


#: errors of writing that no retry fixes: the disk is full, the file system read-only
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _is_output_failure(exc: OSError, out: Path) -> bool:
    """Whether ``exc`` is a failure to write the run's outputs (its staging, lock or results),
    not, say, to read the data."""
    if isinstance(out, StorePath):
        return False  # the run's own errors of a store name their keys
    if exc.errno in _WRITE_ERRNOS:
        return True
    if exc.errno in (errno.EACCES, errno.EPERM) and exc.filename:
        path, out = Path(os.path.abspath(exc.filename)), Path(os.path.abspath(out))
        if path in out.parents:  # making the output's parent directories
            return True
        try:
            first = path.relative_to(out.parent).parts[0]
        except (ValueError, IndexError):
            return False
        return first in (out.name, staging_dir(out).name, f".{out.name}.lock")
    return False


def _output_write_error(exc: OSError, out: Path) -> OutputWriteError:
    """The one-line error of a failed write, after removing the staging directory (an earlier
    run's published outputs are never touched: publication is the last step)."""
    stage = staging_dir(out)
    written = 0
    if stage.is_dir():
        written = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file())
        shutil.rmtree(stage, ignore_errors=True)
    what = f" ({exc.filename})" if exc.filename else ""
    gone = (f"the staging directory {stage} could not be removed" if stage.exists()
            else f"the staging directory {stage} ({written:,} bytes written) was removed")
    err = OutputWriteError(
        f"output.dir {out}: {exc.strerror or exc}{what}; nothing was published, earlier outputs are unchanged "
        f"and {gone}. Free space, fix the permissions or choose another output.dir"
    )
    err.errno = exc.errno
    return err


@contextmanager
def run_lock(out: Path):
    """An exclusive lock on ``out`` (a hidden file beside it), held for the whole run, so two
    runs never share a staging directory.  The kernel releases it if the process dies.  None on
    an object store (see the module's docstring)."""
    if isinstance(out, StorePath):
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_name(f".{out.name}.lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise OutputExistsError(
                f"another gmm-pipeline run is using output.dir {out} (lock {path}, held by pid "
                f"{f.read().strip() or '?'}); wait for it or choose another output.dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


@dataclass
class RunContext:
    """What the steps of one run share: its config, output and staging directories, start time,
    the timings gathered so far and the fingerprints a checkpoint is checked against."""

    cfg: object
    out: Path
    stage: Path
    t0: float
    timings: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)
    weights: object = None  # data.weights as a Dask array, or None
    missing: dict = field(default_factory=dict)  # NaN in the data, for the report
    resumable: bool = False  # the staging directory holds this run's checkpoint, if any (not an older run's)
    passes: dict = field(default_factory=dict)  # passes over the data by step, for the report
    sweep: SweepStart | None = None  # the candidates' start: validation, memory, sample, starts


def _run_locked(cfg, resume, client, t0, debug=False) -> RunResult:
    out, stage = check_output_dir(cfg, resume)
    ctx = RunContext(cfg, out, stage, t0)
    X = _open_data(ctx)
    ctx.weights = weights_from_config(cfg.data, X.shape[0])
    # outermost: the client's own records of a lost scheduler come until it is closed
    with nullcontext() if debug else cluster_mod.quiet_reconnect_errors():
        if client is not None:
            return _run_on(ctx, X, resume, client)
        t = time.perf_counter()
        with cluster_mod.connect(cfg.cluster) as c:
            ctx.timings["connect_s"] = time.perf_counter() - t
            return _run_on(ctx, X, resume, c, quiet=not debug)


def _run_on(ctx: RunContext, X, resume: bool, client, quiet: bool = False) -> RunResult:
    """:func:`_run_with_client`, with a lost scheduler turned into one SchedulerLostError."""
    address = getattr(client.scheduler, "address", None) or "?"
    try:
        if quiet:
            cluster_mod.quiet_task_errors(client)
        return _run_with_client(ctx, X, resume, client)
    except Exception as exc:
        if not cluster_mod.scheduler_lost(exc, client):
            raise
        raise _scheduler_lost_error(ctx, address, exc, resume) from exc


def _scheduler_lost_error(ctx: RunContext, address: str, exc: Exception, resume: bool) -> SchedulerLostError:
    """The one-line error of a run whose scheduler went away: the staging directory is kept, and
    with it the checkpoint (named with its candidate and iteration) that --resume continues from."""
    again = "start a Dask scheduler and workers again (a new address: --set cluster.address=...)"
    state = None
    # else an older run's checkpoint, which this fresh run had yet to remove (or, on a store, no stage yet)
    if (resume or ctx.resumable) and ctx.stage is not None:
        path = ctx.stage / CHECKPOINT_NAME
        try:
            state, _ = load_sweep_checkpoint(path)
        except CheckpointError:  # none yet (or checkpoint.every: 0)
            pass
    if state is None:
        then = f"no checkpoint had been written yet: {again} and run again"
    else:
        then = (f"the checkpoint {path} (candidate {state.candidate}, restart {state.init}, iteration "
                f"{len(state.history)}) is kept: {again} and run again with --resume to continue from it")
    reason = getattr(exc, "reason", None)
    if reason in (None, "unknown"):  # (work submitted after the loss, cancelled after cluster.timeout)
        reason = type(exc).__name__
    return SchedulerLostError(
        f"lost the Dask scheduler at {address}: it stopped or cannot be reached ({reason}); nothing was "
        f"published; {then}"
    )


def _open_data(ctx: RunContext) -> da.Array:
    """Open (and if asked, generate) the data before starting a cluster: bad paths fail fast."""
    data = ctx.cfg.data
    if data.generate is not None and not os.path.exists(data.path):
        logger.info(f"generating demo data at {data.path} ...")
    X = dataset_from_config(data)
    ctx.timings["open_s"] = time.perf_counter() - ctx.t0
    logger.info(
        f"data: {data.path} shape {X.shape} {X.dtype}, {len(X.chunks[0])} row chunks of "
        f"{X.chunks[0][0]} rows ({X.nbytes / 2**20:.1f} MiB)"
    )
    return X


def _run_with_client(ctx: RunContext, X, resume: bool, client) -> RunResult:
    _log_cluster(ctx.cfg, client)
    cfg = ctx.cfg
    cands = [_Candidate(candidate_name(k, ct), k, ct, _estimator(ctx, k, ct)) for k, ct in cfg.model.candidates()]
    ctx.sweep = SweepStart([c.est for c in cands], cfg.model.init_sample, name=cfg.data.path)
    with single_threaded_blas(), _logged_warnings():
        # before any pass: the data against every candidate's parameters, the memory of the passes
        X, _, weights = ctx.sweep.validate(cands[0].est, X, ctx.weights)
        ctx.sweep.check_memory(X, sample=not resume)
        if should_cache(X, cfg.data.cache):  # once, for the whole sweep: filled by the summary pass's read
            X = _own_keys(X).persist()
            weights = None if weights is None else _own_keys(weights).persist()
        with counting_passes() as passes:
            # one pass: moments, NaN/inf check (or count, with a nan_policy), fingerprint, and the
            # initialisation sample (not when resuming: the checkpoint holds every run)
            sample = None if resume else ctx.sweep.sample(X.shape[0])
            summary = summarize(X, cfg.data.path, cfg.model.nan_policy, weights, sample=sample)
            ctx.fingerprints = {"config": config_fingerprint(cfg), "data": data_fingerprint(X, summary, ctx.weights)}
    ctx.passes["summary"] = passes.n  # (with data.weights, one more over the weights for their fingerprint)
    ctx.missing = _missing_values(cfg, summary)
    resumed = _prepare_stage(ctx, resume)
    results = _fit_candidates(ctx, cands, X, weights, summary, resumed)
    return _select_and_publish(ctx, X, results, client)


def _own_keys(a: da.Array) -> da.Array:
    """``a`` under chunk keys of this run's own: the keys of the data's graph come from its path,
    not its content, and a scheduler does not recompute a key it holds, so data persisted by
    another run on the same client (still referenced, e.g. by its traceback) would otherwise be
    taken, as it was then, for this run's."""
    return a.map_blocks(_same_block, dtype=a.dtype, name=f"gmm-run-{a.name}-{uuid.uuid4().hex}")


def _same_block(block):
    return block


@contextmanager
def _logged_warnings():
    """Warnings raised in the block (floors, convergence) as progress lines, once it is done."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        logger.info(f"warning: {w.message}")


def _missing_values(cfg, summary) -> dict:
    """What the summary pass found of missing values (NaN), logged and kept for the report."""
    policy = cfg.model.nan_policy
    rows = summary.n_rows if summary.n_rows is not None else summary.n_samples
    info = {"nan_policy": policy, "n_missing_values": int(summary.n_missing),
            "n_incomplete_rows": int(summary.n_incomplete), "n_rows": int(rows)}
    if summary.n_incomplete:
        what = {"omit": "left out of the fit", "marginalize": "fitted from their observed values"}[policy]
        logger.info(f"missing values: {summary.n_missing:,} NaN in {summary.n_incomplete:,} of {rows:,} rows "
                    f"({summary.n_incomplete / rows:.1%}); nan_policy {policy}: those rows are {what}")
    return info


def _log_cluster(cfg, client) -> None:
    info = cluster_mod.describe(client)
    logger.info(
        f"cluster: {cfg.cluster.kind}, {info['n_workers']} workers, {info['total_threads']} threads, "
        f"scheduler {info['scheduler_address']}"
    )
    if info.get("dashboard_link"):
        logger.info(f"dashboard: {info['dashboard_link']}")


def _prepare_stage(ctx: RunContext, resume: bool) -> SweepState | None:
    """The staging directory, ready: resumed from its checkpoint (returned), or emptied for a fresh run."""
    if resume:
        resumed = _load_resume_state(ctx)
    elif isinstance(ctx.out, StorePath):
        ctx.stage = StoreOutput(ctx.out).new_staging()
        resumed = None
    else:
        if ctx.stage.exists():
            shutil.rmtree(ctx.stage)
        resumed = None
    ctx.stage.mkdir(parents=True, exist_ok=True)
    (ctx.stage / "candidates").mkdir(exist_ok=True)
    ctx.resumable = True
    return resumed


def _load_resume_state(ctx: RunContext) -> SweepState:
    """The checkpoint in the staging directory, refused if it was written for another config or data."""
    path = ctx.stage / CHECKPOINT_NAME
    state, meta = load_sweep_checkpoint(path)
    diffs = _differences(ctx.fingerprints, {"config": meta.get("config"), "data": meta.get("data")})
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: it was written for a different run: " + "; ".join(diffs[:8])
        )
    names = [candidate_name(k, ct) for k, ct in ctx.cfg.model.candidates()]
    restarts = [(name, i) for name in names for i in range(ctx.sweep.runs_per_candidate)]
    if [(r.candidate, r.restart) for r in state.runs] != restarts:
        raise CheckpointError(f"cannot resume from {path}: its runs are not this config's candidates x restarts")
    live = sum(r.status == "running" for r in state.runs)
    logger.info(f"resuming from checkpoint: candidate {state.candidate}, restart {state.init}, "
                f"iteration {len(state.history)} (pass {state.n_pass}, {live} of {len(state.runs)} runs still going)")
    return state


@dataclass
class _Candidate:
    """One candidate of the sweep: its estimator (the parameters ``GaussianMixture.fit`` would
    have), its runs (restarts), and, once settled, its report entry."""

    name: str
    k: int
    ct: str
    est: GaussianMixture
    runs: list = field(default_factory=list)
    entry: dict | None = None
    model: GaussianMixture | None = None

    @property
    def stopped(self) -> bool:
        return all(r.status != "running" for r in self.runs)

    @property
    def settled_ok(self) -> bool:
        return all(r.status == "failed" or r.scores is not None for r in self.runs)


def _estimator(ctx: RunContext, k: int, ct: str) -> GaussianMixture:
    m = ctx.cfg.model
    return GaussianMixture(
        k, covariance_type=ct, init_params=m.init_params, n_init=m.n_init, max_iter=m.max_iter,
        tol=m.tol, reg_covar=m.reg_covar, dtype=m.dtype, random_state=m.random_state, cache=ctx.cfg.data.cache,
        nan_policy=m.nan_policy,
    )


def _fit_candidates(ctx: RunContext, cands: list[_Candidate], X, weights, summary,
                    resumed: SweepState | None) -> list[dict]:
    """Every candidate (k, covariance_type) of the config fitted in lockstep
    (:func:`pipeline.engine.sweep.run_lockstep`): one pass per EM iteration serves every run
    still going, and each candidate's criteria come from the pass after its runs stopped.  The
    runs start as :class:`pipeline.estimators.selection.SweepStart` starts them (see
    :func:`_start_runs`); a candidate with a failed run is failed, as such a fit raises.  From a
    checkpoint, every run is recreated as it was and the initialisation skipped."""
    t_fit = time.perf_counter()
    m, name, dtype = ctx.cfg.model, ctx.cfg.data.path, ctx.sweep.dtype
    with single_threaded_blas(), _logged_warnings():
        with counting_passes() as init_passes:
            X, weights, marginalize = _start_runs(ctx, cands, X, summary, weights, resumed)
        ctx.passes["initialisation"] = init_passes.n
        sweep = _Sweep(ctx, cands, X, dtype, resumed)
        with counting_passes() as em_passes:
            run_lockstep(X, [r for c in cands for r in c.runs], tol=m.tol, max_iter=m.max_iter, dtype=dtype,
                         weights=weights, marginalize=marginalize, name=name, callback=sweep.after_pass)
        ctx.passes["em"] = em_passes.n
        sweep.finish()
    ctx.timings["fit_s"] = time.perf_counter() - t_fit
    return [{**c.entry, "model": c.model} for c in cands]


def _start_runs(ctx, cands, X, summary, weights, resumed):
    """Each candidate's runs: from the checkpoint, or as ``GaussianMixtureIC`` starts them
    (:meth:`SweepStart.runs`: from the summary's sample, or with ``init_sample: null`` each
    restart initialised on the data as its ``GaussianMixture.fit`` would).  Returns the data
    and weights the EM passes run on (the complete rows under nan_policy omit), and whether
    they marginalize missing values."""
    m, sweep = ctx.cfg.model, ctx.sweep
    X, weights, marginalize = sweep.em_data(X, summary, weights)
    if resumed is not None:
        by_name = {}
        for r in resumed.runs:
            by_name.setdefault(r.candidate, []).append(r)
        for c in cands:
            updater = c.est._updater(summary)
            c.runs = [LockstepRun(r.params, updater, history=list(r.history), status=r.status, reason=r.reason,
                                  scores=r.scores, n_iter=r.n_iter) for r in by_name[c.name]]
        return X, weights, marginalize
    t = time.perf_counter()
    if sweep.init_sample is None:
        logger.info(f"initialising {len(cands)} candidate(s) on the data ({m.init_params} init, {m.n_init} "
                    f"restart(s) each, dtype {m.dtype})")
    for c, runs in zip(cands, sweep.runs(X, summary, weights)):
        c.runs = runs
    if sweep.init_sample is not None:
        logger.info(f"initialised {len(cands)} candidate(s) on a sample of {sweep.sample_rows:,} rows drawn in the "
                    f"summary pass ({m.init_params} init, {SAMPLE_STARTS_PER_INIT * m.n_init} starts each, the best "
                    f"on to the data; dtype {m.dtype}) in {time.perf_counter() - t:.1f} s")
    return X, weights, marginalize


class _Sweep:
    """What happens after each lockstep pass: the progress lines and progress.json, the
    checkpoint, and the candidates that finished settled, saved and logged."""

    def __init__(self, ctx: RunContext, cands: list[_Candidate], X, dtype, resumed: SweepState | None):
        self.ctx, self.cands, self.dtype = ctx, cands, dtype
        self.out_dtype = "float32" if X.dtype == np.float32 and dtype == "float32" else "float64"
        self.n_rows = X.shape[0]
        self.pass0 = 0 if resumed is None else resumed.n_pass
        self.t0 = time.perf_counter() - (0.0 if resumed is None else resumed.elapsed)
        self.seconds = {} if resumed is None else dict(resumed.seconds)
        self.n_iter = {id(r): r.n_iter for c in cands for r in c.runs}
        self.n_pass = self.pass0
        self.reported = {id(r) for c in cands for r in c.runs if r.status == "failed"}
        for c in cands:
            for i, r in enumerate(c.runs):
                if r.status == "failed" and resumed is None:
                    logger.info(f"  {c.name} restart {i} failed: {r.reason}")
        for c in cands:  # done before the interruption (or failed at the start)
            if c.stopped:
                self.seconds.setdefault(c.name, time.perf_counter() - self.t0)
            if c.stopped and c.settled_ok:
                self._settle(c, resumed=resumed is not None)

    def after_pass(self, info: PassInfo) -> None:
        self.n_pass = self.pass0 + info.n_pass
        now = time.perf_counter() - self.t0
        advanced, failed = [], []
        for c in self.cands:
            for i, r in enumerate(c.runs):
                if r.n_iter != self.n_iter[id(r)]:
                    advanced.append((c, i, r))
                    self.n_iter[id(r)] = r.n_iter
                elif r.status == "failed" and id(r) not in self.reported:
                    failed.append((c, i, r))
                    self.reported.add(id(r))
        for c in self.cands:
            if c.entry is None and c.stopped:
                self.seconds.setdefault(c.name, now)
        live = sum(r.status == "running" for c in self.cands for r in c.runs)
        # state first, then the lines: whoever sees "iter N" can rely on N being checkpointed
        lead = self._lead(advanced)
        if lead is not None:
            c, i, r = lead
            change = r.history[-1] - r.history[-2] if len(r.history) > 1 else math.inf
            progress = {"candidate": c.name, "restart": i, "iteration": r.n_iter, "mean_loglik": r.history[-1],
                        "change": change if np.isfinite(change) else None, "time": time.time(),
                        "pass": self.n_pass, "live": live}
            atomic_write_text(self.ctx.stage / PROGRESS_NAME, json.dumps(progress))
        every = self.ctx.cfg.checkpoint.every
        if every and self.n_pass % every == 0:
            self.checkpoint()
        rate = self.n_rows / info.seconds if info.seconds > 0 else math.inf
        for c, i, r in advanced:
            change = r.history[-1] - r.history[-2] if len(r.history) > 1 else math.inf
            logger.info(f"  {c.name} restart {i} iter {r.n_iter:4d}  loglik {r.history[-1]:.8f}  "
                        f"change {change:+.3e}  {info.seconds:.2f} s  {rate:,.0f} rows/s  EM pass {self.n_pass}")
        for c, i, r in failed:
            logger.info(f"  {c.name} restart {i} failed: {r.reason}")
        for c in self.cands:
            if c.entry is None and c.stopped and c.settled_ok:
                self._settle(c)

    def _lead(self, advanced):
        """The first run still going (else the first advanced in this pass): what progress.json names."""
        for c in self.cands:
            for i, r in enumerate(c.runs):
                if r.status == "running" and r.history:
                    return c, i, r
        return advanced[0] if advanced else None

    def state(self) -> SweepState:
        runs = [SweepRunState(c.name, i, r.params, list(r.history), r.status, r.reason, r.scores, r.n_iter)
                for c in self.cands for i, r in enumerate(c.runs)]
        return SweepState(runs, self.n_pass, time.perf_counter() - self.t0, dict(self.seconds))

    def checkpoint(self) -> None:
        save_checkpoint(self.ctx.stage / CHECKPOINT_NAME, self.state(), dict(self.ctx.fingerprints))

    def finish(self) -> None:
        """After the last pass: every candidate settled, and a last checkpoint that holds them all."""
        for c in self.cands:
            if c.entry is None:
                self.seconds.setdefault(c.name, time.perf_counter() - self.t0)
                self._settle(c)
        if self.ctx.cfg.checkpoint.every:
            self.checkpoint()

    def _settle(self, c: _Candidate, resumed: bool = False) -> None:
        seconds = self.seconds.get(c.name, time.perf_counter() - self.t0)
        bad = next((r for r in c.runs if r.status == "failed"), None)
        if bad is not None:
            c.entry = _failed_entry(c.name, c.k, c.ct, bad.reason, seconds=seconds)
            logger.info(f"candidate {c.name}: " + ("failed before the interruption" if resumed else "failed")
                        + (f" ({bad.reason})" if resumed else f": {bad.reason}"))
            return
        settled = settle_runs(c.est, c.runs, self.dtype, self.out_dtype)
        est = c.est
        c.entry = _candidate_entry(c.name, c.k, c.ct, est, settled, seconds)
        c.model = est
        warn_not_converged(EMResult(est._mixture, est.history_, est.converged_, est.n_iter_), est.max_iter)
        if resumed and (self.ctx.stage / "candidates" / f"{c.name}.npz").is_file():
            logger.info(f"candidate {c.name}: done before the interruption (BIC {c.entry['bic']:.6g})")
            return
        est.save(self.ctx.stage / "candidates" / f"{c.name}.npz")
        e = c.entry
        logger.info(f"candidate {c.name}: log-likelihood {e['loglik']:.6f}, BIC {e['bic']:.6g}, ICL {e['icl']:.6g}, "
                    f"{est.n_iter_} iterations, converged {est.converged_}, {e['seconds']:.1f} s")


def save_checkpoint(path, state: SweepState, meta: dict):
    """The run's checkpoint: every run of the sweep and the fingerprints (one name to intercept)."""
    return save_sweep_checkpoint(path, state, meta)


def _candidate_entry(name: str, k: int, ct: str, est: GaussianMixture, settled: dict, seconds: float) -> dict:
    """A fitted candidate's line in the report, from its runs' scoring pass
    (:func:`pipeline.estimators.selection.settle_runs`); with sample weights the criteria are
    weighted (BIC's n the total weight)."""
    return {
        "name": name,
        "n_components": k,
        "covariance_type": ct,
        "status": "ok",
        "loglik": settled["loglik"],
        "bic": settled["bic"],
        "aic": settled["aic"],
        "icl": settled["icl"],
        "n_parameters": settled["n_parameters"],
        "n_iter": est.n_iter_,
        "converged": est.converged_,
        "lower_bound": est.lower_bound_,
        "best_init": est.best_init_,
        "seconds": seconds,
        "history": est.history_,
    }


def _failed_entry(name: str, k: int, ct: str, reason: str, seconds: float) -> dict:
    """A candidate whose fit degenerated (a collapsed component without regularisation)."""
    return {
        "name": name, "n_components": k, "covariance_type": ct, "status": "failed", "reason": reason,
        "loglik": None, "bic": None, "aic": None, "icl": None, "n_parameters": None, "n_iter": None,
        "converged": False, "lower_bound": None, "best_init": None, "seconds": seconds, "history": [],
    }


def _select_and_publish(ctx: RunContext, X, results: list[dict], client) -> RunResult:
    """The candidate with the lowest BIC; its outputs, the report and plots; then publication."""
    fitted = [r for r in results if r.get("status", "ok") == "ok"]  # entries of older checkpoints lack it
    if not fitted:
        raise CovarianceError(
            f"every candidate failed ({', '.join(r['name'] for r in results)}): {results[0]['reason']}"
        )
    best = min(fitted, key=lambda r: r["bic"])
    model = best["model"]
    if len(results) > 1:
        failed = len(results) - len(fitted)
        logger.info(f"selected by BIC: {best['name']}" + (f" ({failed} candidate(s) failed)" if failed else ""))
    model.save(ctx.stage / "model.npz")
    t = time.perf_counter()
    with counting_passes() as outputs:
        _write_point_outputs(ctx.cfg, model, X, ctx.stage)
    ctx.timings["outputs_s"] = time.perf_counter() - t
    ctx.timings["total_s"] = time.perf_counter() - ctx.t0
    ctx.passes["outputs"] = outputs.n
    ctx.passes["total"] = sum(ctx.passes.get(k, 0) for k in ("summary", "initialisation", "em", "outputs"))
    report = build_report(ctx.cfg, X, results, best, ctx.timings, cluster_info=_describe_safe(client),
                          fingerprints=ctx.fingerprints, missing=ctx.missing, passes=ctx.passes)
    write_report(ctx.stage, report)
    if ctx.cfg.output.plots:
        _write_plots_unless_missing(ctx.stage, model, X, results, best)
    _publish(ctx)
    p = ctx.passes
    logger.info(f"passes over the data: {p['total']} (summary {p.get('summary', 0)}, initialisation "
                f"{p.get('initialisation', 0)}, EM {p.get('em', 0)} for {len(results)} candidate(s) in lockstep, "
                f"outputs {p['outputs']})")
    logger.info(f"outputs: {ctx.out}" + (f" (generation {ctx.stage.name}, published by its manifest)"
                                         if isinstance(ctx.out, StorePath) else ""))
    return RunResult(ctx.out, report, model, results)


def _write_plots_unless_missing(stage: Path, model, X, results, best) -> None:
    try:
        write_plots(stage, model, X, results, best)
    except ImportError:
        logger.info("plots skipped: matplotlib is not installed (pip install gmm-pipeline[plots])")


def _publish(ctx: RunContext) -> None:
    """Publish with the checkpoint still inside: until the rename, a crash leaves a resumable run;
    an output.dir that appeared meanwhile is only replaced with overwrite: true."""
    if isinstance(ctx.out, StorePath):
        StoreOutput(ctx.out).publish(ctx.stage, leave_out=(CHECKPOINT_NAME, PROGRESS_NAME))
        return
    publish_dir(ctx.stage, ctx.out, overwrite=ctx.cfg.output.overwrite)
    (ctx.out / CHECKPOINT_NAME).unlink(missing_ok=True)
    (ctx.out / PROGRESS_NAME).unlink(missing_ok=True)


def _describe_safe(client):
    try:
        d = cluster_mod.describe(client)
        return {k: v for k, v in d.items() if k != "workers"} | {"workers": len(d.get("workers", []))}
    except Exception:  # pragma: no cover - reporting must not fail a finished run
        return {}


def _write_point_outputs(cfg, model, X, stage):
    """labels (int32, N) and responsibilities (float32, N x K) of the run, as Zarr arrays."""
    if not (cfg.output.labels or cfg.output.responsibilities):
        return
    write_point_outputs(
        model, X,
        labels_to=(stage / "labels.zarr", None) if cfg.output.labels else None,
        responsibilities_to=(stage / "responsibilities.zarr", None) if cfg.output.responsibilities else None,
    )
    logger.info("wrote " + ", ".join(n for n, on in (("labels.zarr", cfg.output.labels),
                                             ("responsibilities.zarr", cfg.output.responsibilities)) if on))


def write_point_outputs(model, X, labels_to=None, responsibilities_to=None, hold=None) -> None:
    """Write labels (int32, N) and/or responsibilities (float32, N x K) of X's rows to Zarr
    (-1 and NaN for rows a ``nan_policy="omit"`` model left out).

    Each target is ``(path, component)`` (component None: an array at ``path``; else an array of
    that name in the group at ``path``).  Both come from one graph (labels are the argmax of the
    responsibilities), so the data is read once; the workers write their own chunks, with X's
    row chunks.  ``hold``: a context manager entered once the arrays exist, around the writing
    of their chunks (:func:`pipeline.storage.stores.metadata_last` for a group on a store).
    """
    proba = model.predict_proba(X)
    rows = proba.chunks[0]
    if len(set(rows[:-1])) > 1 or (len(rows) > 1 and rows[-1] > rows[0]):
        proba = proba.rechunk({0: max(rows)})  # Zarr needs regular chunks
    targets = []
    if responsibilities_to is not None:
        path, component = responsibilities_to
        targets.append(da.to_zarr(proba.astype(np.float32), str(path), component=component, compute=False,
                                  overwrite=True, **zarr_kwargs(path)))
    if labels_to is not None:
        path, component = labels_to
        # rows left out under nan_policy="omit" have NaN responsibilities: label -1, as predict()
        labels = da.where(da.isnan(proba[:, 0]), -1, proba.argmax(axis=1)).astype(np.int32)
        targets.append(da.to_zarr(labels, str(path), component=component, compute=False, overwrite=True,
                                  **zarr_kwargs(path)))
    with hold if hold is not None else nullcontext():
        dask.compute(*targets)
    record_pass()  # both from one graph: one read of the data

