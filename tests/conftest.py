"""Shared pytest fixtures.

Cluster fixtures (stable names, used by the cluster tests and by the GMM tests that run on them):

- ``dask_processes`` (module scope): a real ``dask scheduler`` and two ``dask worker`` processes
  on 127.0.0.1; yields the scheduler address, e.g. ``"tcp://127.0.0.1:40123"``.
- ``start_dask_processes`` (function scope): a function starting such a cluster (each call a new
  one, on a new port) and returning its processes, for tests that kill them; all stopped at teardown.
- ``slurm`` (session scope): a real single-node SLURM made by ``scripts/setup_slurm``; yields the
  partition name.  Skips when it cannot be set up, unless ``GMM_REQUIRE_SLURM=1`` (CI), where it
  fails with the script's output.
- ``rscript`` (session scope): the path of ``Rscript`` with R's mclust, installed if missing by
  ``scripts/setup_mclust``.  Skips when that fails, unless ``GMM_REQUIRE_MCLUST=1`` (CI).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.helpers import set_up_or_skip

REPO = Path(__file__).resolve().parents[1]
DASK_CLI = Path(sys.executable).parent / "dask"
SETUP_SLURM = REPO / "scripts" / "setup_slurm"
SETUP_MCLUST = REPO / "scripts" / "setup_mclust"
SLURM_PID_FILE = Path(os.environ.get("GMM_SLURM_STATE_DIR", "/run/gmm-pipeline-slurm")) / "started.pids"


# --------------------------------------------------------------------------------------------
# dask_processes: scheduler + 2 workers as separate OS processes


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    # Own session, so that teardown can end the process *and* the worker it spawned (nanny).
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:  # whatever is left of each process group we started
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.wait(timeout=5)


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in paths if p.exists())


class DaskProcesses:
    """A running ``dask scheduler`` and its ``dask worker`` processes (each under a nanny, which
    restarts a worker that dies), every one in its own session; :meth:`stop` ends them all."""

    def __init__(self, address: str, scheduler: subprocess.Popen, workers: list, logs: list[Path]):
        self.address, self.scheduler, self.workers, self.logs = address, scheduler, workers, logs

    def stop(self) -> None:
        _stop_cluster([self.scheduler, *self.workers])

    def log_text(self) -> str:
        return _logs(self.logs)


@contextmanager
def running_dask_processes(tmp: Path, n_workers: int = 2):
    """Start a scheduler (a new port) and ``n_workers`` 1-thread, 1 GiB workers, all on
    127.0.0.1 (the scheduler's HTTP server too); yield a :class:`DaskProcesses` once the workers
    have joined; stop every process on exit, also when the body raised."""
    from distributed import Client

    tmp.mkdir(parents=True, exist_ok=True)
    scheduler_file = tmp / "scheduler.json"
    logs = [tmp / "scheduler.log", *(tmp / f"worker-{i}.log" for i in range(n_workers))]
    procs = [
        _start(
            [str(DASK_CLI), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
            logs[0],
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dask scheduler did not start\n{_logs(logs)}")
            time.sleep(0.1)
        for i in range(n_workers):
            procs.append(
                _start(
                    [str(DASK_CLI), "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                     "--memory-limit", "1GiB", "--host", "127.0.0.1", "--no-dashboard",
                     "--local-directory", str(tmp / f"worker-{i}")],
                    logs[1 + i],
                )
            )
        with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
            try:
                client.wait_for_workers(n_workers, timeout=60)
            except TimeoutError:
                pytest.fail(f"dask workers did not connect\n{_logs(logs)}")
            address = client.scheduler.address
        yield DaskProcesses(address, procs[0], procs[1:], logs)
    finally:
        _stop_cluster(procs)


def _stop_cluster(procs: list[subprocess.Popen]) -> None:
    """Stop the workers (``procs[1:]``), then the scheduler (``procs[0]``): about 2 s, where all
    at once takes about 8 s (workers whose scheduler is gone wait for it while closing)."""
    _stop(procs[1:])
    _stop(procs[:1])


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    """Address (``tcp://127.0.0.1:<port>``) of a running scheduler with two 1-thread, 1 GiB workers."""
    with running_dask_processes(tmp_path_factory.mktemp("dask_processes")) as cluster:
        yield cluster.address


@pytest.fixture
def start_dask_processes(tmp_path):
    """``start(n_workers=2)`` starts a new scheduler and workers (:func:`running_dask_processes`,
    a new address each call) and returns its :class:`DaskProcesses`; all are stopped at teardown."""
    started = []
    with ExitStack() as stack:
        def start(n_workers: int = 2) -> DaskProcesses:
            started.append(stack.enter_context(running_dask_processes(tmp_path / f"dask-{len(started)}", n_workers)))
            return started[-1]

        yield start


# --------------------------------------------------------------------------------------------
# slurm: a real single-node SLURM


def _pid_lines() -> list[str]:
    try:
        return SLURM_PID_FILE.read_text().splitlines()
    except OSError:
        return []


@pytest.fixture(scope="session")
def slurm():
    """Name of the default partition of a running single-node SLURM (``scripts/setup_slurm``)."""
    before = _pid_lines()
    partition = set_up_or_skip(SETUP_SLURM, "set up SLURM", "GMM_REQUIRE_SLURM", timeout=900)
    started_here = _pid_lines() != before  # the script records the daemons it started
    try:
        yield partition
    finally:
        if started_here:
            subprocess.run([str(SETUP_SLURM), "--stop"], capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------------------------
# rscript: R with mclust (the oracle of the mclust models)


@pytest.fixture(scope="session")
def rscript():
    """Path of ``Rscript`` with mclust and jsonlite loadable (``scripts/setup_mclust``)."""
    return set_up_or_skip(SETUP_MCLUST, "provide R's mclust", "GMM_REQUIRE_MCLUST", timeout=1200)
