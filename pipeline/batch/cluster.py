"""Make or connect to a Dask cluster from the ``cluster`` section of a run configuration.

One entry point, :func:`connect`, a context manager yielding a :class:`distributed.Client`:

==============================  =============================================================
``kind``                        what :func:`connect` does
==============================  =============================================================
``local``                       starts a :class:`distributed.LocalCluster` of worker
                                *processes* bound to ``host`` (default ``127.0.0.1``)
``address``                     connects to a running scheduler at ``address`` (optionally
                                with TLS); the remote cluster is left running on exit
``slurm`` ``pbs`` ``sge``       submits ``n_workers`` batch jobs through dask-jobqueue, each
``lsf`` ``htcondor``            running one worker; the jobs are cancelled on exit
==============================  =============================================================

On exit everything :func:`connect` started is closed (client, scheduler, worker processes,
batch jobs), also when the body raised.  :func:`describe` and :func:`worker_memory_limits`
report what the client is connected to; the EM driver uses the latter to decide whether the
data fits in worker memory and can be persisted.

This module knows nothing of the numerics.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.engine.resources import worker_memory_limits
from pipeline.exceptions import ClusterError, ConfigError
from pipeline.options import CLUSTER_DEFAULTS, CLUSTER_KINDS

__all__ = ["KINDS", "JOBQUEUE_CLASSES", "connect", "describe", "worker_memory_limits"]

logger = logging.getLogger(__name__)

#: ``cluster.kind`` -> name of the dask-jobqueue class that submits the workers.
JOBQUEUE_CLASSES = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
}
KINDS = CLUSTER_KINDS

#: Command (argv prefix) that shows the queue state of given job ids, per batch system.
_QUEUE_COMMANDS = {
    "slurm": ["squeue", "-o", "%.12i %.10T %.20r %R", "-j"],
    "pbs": ["qstat"],
    "sge": ["qstat", "-j"],
    "lsf": ["bjobs"],
    "htcondor": ["condor_q"],
}

#: defaults of missing or None attributes: the same as the YAML cluster section's
_DEFAULTS = CLUSTER_DEFAULTS
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _get(cfg: Any, name: str) -> Any:
    """``cfg.<name>``, or the default when the attribute is missing or None."""
    value = getattr(cfg, name, None)
    return _DEFAULTS[name] if value is None else value


@contextmanager
def connect(cfg: Any) -> Iterator["distributed.Client"]:  # noqa: F821
    """Start or reach the Dask cluster described by ``cfg`` and yield a client connected to it.

    Parameters
    ----------
    cfg : object with attributes
        ``kind`` (one of :data:`KINDS`), ``n_workers`` (int), ``threads_per_worker`` (int),
        ``memory_limit`` (per worker: str such as ``"4GiB"`` or int bytes), ``address``
        (str, for ``kind="address"``), ``host`` (interface the scheduler binds to, default
        ``"127.0.0.1"``), ``dashboard`` (bool), ``security`` (dict of
        :class:`distributed.security.Security` arguments: ``tls_ca_file``, ``tls_client_cert``,
        ``tls_client_key``, ``require_encryption``), ``jobqueue`` (dict of keyword arguments
        for the dask-jobqueue class, overriding the defaults made from the fields above),
        ``timeout`` (seconds to wait for the scheduler and the workers).
        Missing or ``None`` attributes take :data:`pipeline.options.CLUSTER_DEFAULTS`.

    Yields
    ------
    distributed.Client
        Connected, with at least ``n_workers`` workers running (``kind="address"``: at least
        one worker, since a remote cluster's size is not ours to choose).

    Raises
    ------
    ConfigError
        Unknown ``kind``, missing ``address``, bad ``memory_limit``/``security``/``jobqueue``.
    ClusterError
        The scheduler cannot be reached, workers or batch jobs did not start within
        ``timeout``, or dask-jobqueue is not installed.  Whatever was started is cleaned up first.
    """
    kind = getattr(cfg, "kind", None)
    if kind == "local":
        manager = _local(cfg)
    elif kind == "address":
        manager = _address(cfg)
    elif kind in JOBQUEUE_CLASSES:
        manager = _jobqueue(cfg, kind)
    else:
        raise ConfigError(f"cluster.kind: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    with manager as client:
        yield client


def describe(client) -> dict:
    """Summarise what ``client`` is connected to (JSON-serialisable, for run reports and logs).

    Returns
    -------
    dict
        ``scheduler_address`` (str), ``dashboard_link`` (str, or None when the scheduler serves
        no HTTP at all; with ``dashboard: false`` it still serves health and metrics pages
        there, bound to the scheduler's host), ``n_workers`` (int),
        ``total_threads`` (int), ``worker_memory_limit`` (int bytes: the smallest limit of any
        worker, 0 if a worker has no limit or there are no workers), and ``workers``: a list of
        ``{"address", "nthreads", "memory_limit"}`` sorted by address.
    """
    info = client.scheduler_info(n_workers=-1)
    workers = [
        {
            "address": address,
            "nthreads": int(w.get("nthreads", 0)),
            "memory_limit": int(w.get("memory_limit") or 0),
        }
        for address, w in sorted(info.get("workers", {}).items())
    ]
    limits = [w["memory_limit"] for w in workers]
    dashboard = None
    if "dashboard" in info.get("services", {}):
        try:
            dashboard = client.dashboard_link
        except Exception:  # no dashboard link template for this scheduler
            dashboard = None
    return {
        "scheduler_address": client.scheduler.address,
        "dashboard_link": dashboard,
        "n_workers": len(workers),
        "total_threads": sum(w["nthreads"] for w in workers),
        "worker_memory_limit": min(limits) if limits and all(limits) else 0,
        "workers": workers,
    }


# ---------------------------------------------------------------------------------------------
# kind = local


def _memory_limit(cfg: Any) -> Any:
    """``cfg.memory_limit`` checked: int bytes, a size string such as ``"4GiB"``, or ``"auto"``."""
    from dask.utils import parse_bytes

    value = _get(cfg, "memory_limit")
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        parsed = parse_bytes(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"cluster.memory_limit: cannot read {value!r} as a size ({exc}); "
            f"use bytes or a string such as '4GiB'"
        ) from None
    if parsed <= 0:
        raise ConfigError(f"cluster.memory_limit: must be positive, got {value!r}")
    return value


def _positive_int(cfg: Any, name: str) -> int:
    value = _get(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"cluster.{name}: must be a positive integer, got {value!r}")
    return value


@contextmanager
def _local(cfg: Any):
    from distributed import Client, LocalCluster

    n_workers = _positive_int(cfg, "n_workers")
    host = _get(cfg, "host")
    timeout = float(_get(cfg, "timeout"))
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=_positive_int(cfg, "threads_per_worker"),
        memory_limit=_memory_limit(cfg),
        processes=True,
        host=host,
        dashboard_address=f"{host}:0" if _get(cfg, "dashboard") else None,
    )
    client = None
    try:
        client = Client(cluster, timeout=timeout)
        try:
            client.wait_for_workers(n_workers, timeout=timeout)
        except TimeoutError:
            raise ClusterError(
                f"local cluster: {n_workers} worker processes did not start within {timeout:g} s; "
                f"check free memory and cluster.memory_limit, or raise cluster.timeout"
            ) from None
        yield client
    finally:
        _quiet_heartbeats(client)
        _close(client, cluster)


class _DropHeartbeatErrors(logging.Filter):
    """Drops the worker's "Failed to communicate with scheduler during heartbeat" record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "during heartbeat" not in record.getMessage()


def _install_heartbeat_filter(dask_worker=None) -> None:
    logging.getLogger("distributed.worker").addFilter(_DropHeartbeatErrors())


def _quiet_heartbeats(client) -> None:
    """Before a local cluster we own shuts down: a worker whose heartbeat races with the
    scheduler's exit logs an ERROR with two tracebacks (seen at the end of a demo run) that says
    nothing about the user's run.  Only that record is dropped, only at shutdown."""
    if client is None:
        return
    try:
        client.run(_install_heartbeat_filter)
    except Exception:  # pragma: no cover - best effort on the way out
        pass


# ---------------------------------------------------------------------------------------------
# kind = address


def _security(cfg: Any):
    options = _get(cfg, "security")
    if not options:
        return None
    from distributed.security import Security

    try:
        return Security(**dict(options))
    except TypeError as exc:  # unknown keys
        raise ConfigError(f"cluster.security: {exc}; expected Security arguments such as "
                          f"tls_ca_file, tls_client_cert, tls_client_key, require_encryption") from None


@contextmanager
def _address(cfg: Any):
    from distributed import Client

    address = getattr(cfg, "address", None)
    if not address:
        raise ConfigError("cluster.address: required when cluster.kind is 'address' "
                          "(e.g. 'tcp://scheduler:8786')")
    timeout = float(_get(cfg, "timeout"))
    security = _security(cfg)
    try:
        client = Client(address, security=security, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"cannot connect to the Dask scheduler at {address} within {timeout:g} s ({exc}); "
            f"check that the scheduler is running and reachable, and cluster.address / cluster.security"
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise ClusterError(
                f"connected to the Dask scheduler at {address}, but no worker joined it "
                f"within {timeout:g} s; start workers with: dask worker {address}"
            ) from None
        yield client
    finally:
        # Only our client: the remote scheduler and workers belong to someone else.
        _close(client, None)


# ---------------------------------------------------------------------------------------------
# kind = slurm | pbs | sge | lsf | htcondor


def _jobqueue_kwargs(cfg: Any) -> dict:
    """Keyword arguments for the dask-jobqueue class: defaults from ``cfg``, then ``cfg.jobqueue``.

    The defaults make one job = one worker process with ``threads_per_worker`` threads and
    ``memory_limit`` memory, running this very Python (``sys.executable``).  The scheduler binds
    to ``cfg.host``; when that is a loopback address the workers use interface ``lo`` too, so that
    a single-node batch system works without any network configuration.
    """
    host = _get(cfg, "host")
    memory = _memory_limit(cfg)
    if memory == "auto":
        raise ConfigError("cluster.memory_limit: batch jobs need an explicit size such as '4GiB', not 'auto'")
    kwargs: dict[str, Any] = {
        "cores": _positive_int(cfg, "threads_per_worker"),
        "processes": 1,
        "memory": memory,
        "python": sys.executable,
    }
    scheduler_options: dict[str, Any] = {
        "host": host,
        "dashboard": bool(_get(cfg, "dashboard")),
        "dashboard_address": f"{host}:0",
    }
    if host in _LOOPBACK:
        kwargs["interface"] = "lo"
    security = _security(cfg)
    if security is not None:
        kwargs["security"] = security
    extra = dict(_get(cfg, "jobqueue") or {})
    scheduler_options.update(extra.pop("scheduler_options", None) or {})
    kwargs.update(extra)
    kwargs["scheduler_options"] = scheduler_options
    return kwargs


def _queue_state(kind: str, job_ids: list[str]) -> str:
    """What the batch system says about ``job_ids`` (best effort; '' if it cannot be asked)."""
    command = _QUEUE_COMMANDS.get(kind)
    if not command or not job_ids:
        return ""
    argv = command + ([",".join(job_ids)] if kind == "slurm" else job_ids)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.stdout + out.stderr).strip()


def _job_ids(cluster) -> list[str]:
    return [str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]


@contextmanager
def _jobqueue(cfg: Any, kind: str):
    try:
        import dask_jobqueue
    except ImportError:
        raise ClusterError(
            f"cluster.kind {kind!r} needs dask-jobqueue, which is not installed; "
            f"install it with: pip install 'gmm-pipeline[jobqueue]'"
        ) from None
    from distributed import Client

    cls = getattr(dask_jobqueue, JOBQUEUE_CLASSES[kind])
    n_workers = _positive_int(cfg, "n_workers")
    timeout = float(_get(cfg, "timeout"))
    kwargs = _jobqueue_kwargs(cfg)
    try:
        cluster = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cluster.jobqueue: {cls.__name__} rejected the settings {kwargs!r}: {exc}") from None
    client = None
    try:
        client = Client(cluster, timeout=timeout)
        _scale_and_submit(cluster, kind, n_workers)
        try:
            client.wait_for_workers(n_workers, timeout=timeout)
        except TimeoutError:
            raise ClusterError(_jobs_did_not_start(cluster, kind, n_workers, timeout)) from None
        yield client
    finally:
        # Closing the cluster cancels its jobs (scancel/qdel/...), pending ones included.
        _close(client, cluster)


def _scale_and_submit(cluster, kind: str, n_workers: int) -> None:
    """Ask for ``n_workers`` workers and wait until their jobs are submitted (not running).

    ``SpecCluster.scale`` submits jobs in a background task and only logs a failing submit
    command (e.g. ``sbatch: error: invalid partition specified``).  Scaling from inside the event
    loop and awaiting that task turns such a rejection into a ClusterError at once, carrying the
    batch system's message, instead of a timeout later.  (``_correct_state`` is a private but
    long-standing method of distributed's SpecCluster; without it we just scale.)
    """
    correct_state = getattr(cluster, "_correct_state", None)
    if correct_state is None:
        cluster.scale(n=n_workers)
        return

    async def scale_and_submit():
        cluster.scale(n=n_workers)
        await correct_state()

    try:
        cluster.sync(scale_and_submit)
    except Exception as exc:
        raise ClusterError(
            f"{kind}: submitting the worker jobs failed: {exc}\n"
            f"job script:\n{_excerpt(cluster.job_script())}\n"
            f"Fix cluster.jobqueue (queue/partition, memory, cores, account, walltime)."
        ) from None


def _excerpt(text: str, max_lines: int = 25) -> str:
    lines = text.strip().splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
    return "\n".join("    " + line for line in lines)


def _jobs_did_not_start(cluster, kind: str, n_workers: int, timeout: float) -> str:
    job_ids = _job_ids(cluster)
    try:
        running = len(cluster.scheduler_info.get("workers", {}))
    except Exception:
        running = "?"
    state = _queue_state(kind, job_ids)
    message = [
        f"{kind}: the worker jobs did not start: {running} of {n_workers} workers running after "
        f"{timeout:g} s (jobs {', '.join(job_ids) or 'none submitted'}; they have been cancelled).",
    ]
    if state:
        message.append(f"queue state before cancelling:\n{_excerpt(state)}")
    message.append(f"job script:\n{_excerpt(cluster.job_script())}")
    message.append(
        "Is the queue/partition right and idle, do the memory/cores fit a node, "
        "and can the compute nodes reach the scheduler? Or raise cluster.timeout."
    )
    return "\n".join(message)


def _mark_unsubmitted_jobs_failed(cluster) -> None:
    """Let ``cluster.close()`` finish when some job submissions failed.

    A job whose submission failed stays in status "created", which makes ``SpecCluster.close``
    fail an assertion half-way (leaving its event-loop thread running).  It never started, so
    there is nothing to cancel: mark it failed.  (No reference to a job may outlive this
    function: the cluster tracks its jobs in a WeakSet, and a live reference during ``close``
    trips the same assertion.)
    """
    from distributed.core import Status

    created = getattr(cluster, "_created", ())
    for job in [j for j in created if getattr(j, "status", None) == Status.created]:
        job.status = Status.failed


def _close(client, cluster) -> None:
    """Close ``client`` then ``cluster`` (either may be None), logging rather than masking errors."""
    if cluster is not None:
        _mark_unsubmitted_jobs_failed(cluster)
    for thing in (client, cluster):
        if thing is None:
            continue
        try:
            thing.close()
        except Exception as exc:  # pragma: no cover - best effort on the way out
            logger.warning("closing %s failed: %s", type(thing).__name__, exc)


def _drop_compute_failed(record) -> bool:
    return not str(record.msg).startswith("Compute Failed")


class QuietTaskErrors(WorkerPlugin):
    """A worker plugin that drops the workers' "Compute Failed" log records (a failed task's
    exception and traceback, which workers write to their stderr, the terminal of a local
    cluster): the error itself reaches the client, and the command prints it as one line (with
    the traceback under ``--debug``, which does not install this plugin).  Registered on every
    present and future worker of the run's cluster."""

    name = "gmm-pipeline-quiet-task-errors"

    def setup(self, worker):
        logging.getLogger("distributed.worker").addFilter(_drop_compute_failed)

    def teardown(self, worker):
        logging.getLogger("distributed.worker").removeFilter(_drop_compute_failed)


def quiet_task_errors(client) -> None:
    """Install :class:`QuietTaskErrors` on the client's workers."""
    client.register_plugin(QuietTaskErrors(), name=QuietTaskErrors.name)


# ---------------------------------------------------------------------------------------------
# a lost scheduler

#: the reason distributed gives the futures it cancels when a client loses its scheduler
_CONNECTION_LOST = "scheduler-connection-lost"


def scheduler_lost(exc: BaseException, client) -> bool:
    """Whether ``exc``, raised while a run was using ``client``, means that the client lost its
    scheduler (the scheduler was stopped, killed or became unreachable) rather than that the run
    itself failed.

    What distributed raises then (seen with a ``dask scheduler`` SIGKILLed or SIGTERMed mid-run):
    the futures pending at that moment are cancelled at once (``FutureCancelledError``, reason
    ``"scheduler-connection-lost"``); work submitted after it waits for a reconnection (up to
    the client's timeout, ``cluster.timeout``), then is cancelled without a reason; other calls
    fail with ``CommClosedError`` (an OSError), OSError, TimeoutError or RuntimeError
    ("ConnectionPool is closed").  Those also have other causes, so they count only when the
    client is no longer "running" (it is "connecting", "closing" or "closed" after the loss).
    Our own errors (e.g. a DataError a task raised before) never count.
    """
    from concurrent.futures import CancelledError

    from pipeline.exceptions import GMMPipelineError

    if isinstance(exc, GMMPipelineError):
        return False
    if isinstance(exc, CancelledError) and getattr(exc, "reason", None) == _CONNECTION_LOST:
        return True
    return isinstance(exc, (CancelledError, OSError, TimeoutError, RuntimeError)) and (
        getattr(client, "status", "running") != "running"
    )


class _DropReconnectErrors(logging.Filter):
    """Drops the driver's records of a scheduler that went away: ``distributed.client``'s ERROR
    "Failed to reconnect to scheduler ..." and the traceback of the reconnection attempt that
    closing the client cancels, ``distributed.batched``'s "Batched Comm Closed" traceback (a
    stopping scheduler closed the connection).  They come with or after the run's own error,
    which says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        import asyncio

        from distributed.comm import CommClosedError

        if record.getMessage().startswith("Failed to reconnect to scheduler"):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, (asyncio.CancelledError, CommClosedError))


#: the loggers (of the driver process) that :class:`_DropReconnectErrors` quiets
_RECONNECT_LOGGERS = ("distributed.client", "distributed.batched")


@contextmanager
def quiet_reconnect_errors():
    """While the body runs (a run, until its client is closed), :class:`_DropReconnectErrors`
    on the loggers of :data:`_RECONNECT_LOGGERS` of this process."""
    f = _DropReconnectErrors()
    for name in _RECONNECT_LOGGERS:
        logging.getLogger(name).addFilter(f)
    try:
        yield
    finally:
        for name in _RECONNECT_LOGGERS:
            logging.getLogger(name).removeFilter(f)
