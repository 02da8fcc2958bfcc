"""pipeline.batch.cluster: local process clusters, remote schedulers, and real SLURM batch jobs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import dask.array as da
import numpy as np
import psutil
import pytest
from distributed import Client

from pipeline.batch import cluster
from pipeline.exceptions import ClusterError, ConfigError

GiB = 2**30


def make_cfg(**overrides) -> SimpleNamespace:
    cfg = dict(kind="local", n_workers=2, threads_per_worker=1, memory_limit="1GiB", address=None,
               host="127.0.0.1", dashboard=False, security={}, jobqueue={}, timeout=60)
    cfg.update(overrides)
    return SimpleNamespace(**cfg)


def check_sum(client) -> None:
    x = np.arange(200_000, dtype=np.float64).reshape(20_000, 10)
    assert client.compute(da.from_array(x, chunks=(2_000, 10)).sum()).result() == pytest.approx(x.sum())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# kind = local


def test_local_workers_are_separate_loopback_processes_and_leave_nothing_behind():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with cluster.connect(make_cfg(kind="local", dashboard=True)) as client:
        pids = client.run(os.getpid)
        assert len(pids) == 2
        assert os.getpid() not in pids.values()
        assert len(set(pids.values())) == 2
        assert all(address.startswith("tcp://127.0.0.1:") for address in pids)
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        check_sum(client)
        info = cluster.describe(client)
        assert info["n_workers"] == 2 and info["total_threads"] == 2
        assert info["worker_memory_limit"] == GiB
        assert info["dashboard_link"].startswith("http://127.0.0.1:")  # the dashboard binds to loopback
        assert cluster.worker_memory_limits(client) == [GiB, GiB]
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    leaked = [pid for pid in pids.values() if psutil.pid_exists(pid)]
    assert not leaked, f"worker processes still alive: {leaked}"
    new_children = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()]
    assert not [p for p in new_children if "dask" in " ".join(p.cmdline()) or "distributed" in " ".join(p.cmdline())]


def test_local_dashboard_binds_to_loopback_when_asked():
    with cluster.connect(make_cfg(kind="local", n_workers=1, dashboard=True)) as client:
        assert cluster.describe(client)["dashboard_link"].startswith("http://127.0.0.1:")


def test_unknown_kind_and_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="cluster.kind"):
        with cluster.connect(make_cfg(kind="kubernetes")):
            pass
    with pytest.raises(ConfigError, match="cluster.address"):
        with cluster.connect(make_cfg(kind="address", address=None)):
            pass
    with pytest.raises(ConfigError, match="cluster.memory_limit"):
        with cluster.connect(make_cfg(kind="local", memory_limit="lots")):
            pass
    with pytest.raises(ConfigError, match="cluster.n_workers"):
        with cluster.connect(make_cfg(kind="local", n_workers=0)):
            pass
    with pytest.raises(ConfigError, match="cluster.security"):
        with cluster.connect(make_cfg(kind="address", address="tcp://127.0.0.1:1", security={"tls_cert": "x"})):
            pass


# --------------------------------------------------------------------------------------------
# kind = address


def test_address_connects_to_running_scheduler_and_leaves_it_running(dask_processes):
    with cluster.connect(make_cfg(kind="address", address=dask_processes, timeout=30)) as client:
        check_sum(client)
        info = cluster.describe(client)
        assert info["scheduler_address"] == dask_processes
        assert info["n_workers"] == 2 and info["total_threads"] == 2
        assert cluster.worker_memory_limits(client) == [GiB, GiB]
        assert os.getpid() not in client.run(os.getpid).values()
    with Client(dask_processes, timeout=30) as again:  # the remote cluster was not shut down
        assert len(again.scheduler_info(n_workers=-1)["workers"]) == 2


def test_unreachable_address_raises_cluster_error_naming_it_quickly():
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ClusterError, match=address.replace(".", r"\.")):
        with cluster.connect(make_cfg(kind="address", address=address, timeout=2)):
            pass
    assert time.monotonic() - start < 20


# --------------------------------------------------------------------------------------------
# kind = slurm | pbs | ... without a batch system


def test_jobqueue_defaults_run_one_loopback_worker_per_job_overridable_by_config():
    kwargs = cluster._jobqueue_kwargs(
        make_cfg(kind="slurm", threads_per_worker=3, memory_limit="2GiB",
                 jobqueue={"queue": "debug", "walltime": "01:00:00", "scheduler_options": {"port": 0}})
    )
    assert kwargs["cores"] == 3 and kwargs["processes"] == 1 and kwargs["memory"] == "2GiB"
    assert kwargs["python"] == sys.executable and kwargs["interface"] == "lo"
    assert kwargs["queue"] == "debug" and kwargs["walltime"] == "01:00:00"
    assert kwargs["scheduler_options"] == {"host": "127.0.0.1", "dashboard": False,
                                           "dashboard_address": "127.0.0.1:0", "port": 0}


def test_jobqueue_kind_without_dask_jobqueue_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # makes `import dask_jobqueue` fail
    with pytest.raises(ClusterError, match=r"pip install 'gmm-pipeline\[jobqueue\]'"):
        with cluster.connect(make_cfg(kind="pbs")):
            pass


# --------------------------------------------------------------------------------------------
# kind = slurm on a real single-node SLURM


def squeue_names(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def wait_queue_empty(name: str, timeout: float = 60) -> list[str]:
    """Jobs named ``name`` still in the queue after up to ``timeout`` s (cancelled jobs linger briefly)."""
    deadline = time.monotonic() + timeout
    while (left := squeue_names(name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def slurm_cfg(partition, tmp_path, **jobqueue):
    name = f"gmm-test-{uuid.uuid4().hex[:8]}"
    settings = {"queue": partition, "job_name": name, "log_directory": str(tmp_path / "slurm-logs"),
                "walltime": "00:10:00"}
    settings.update(jobqueue)
    return make_cfg(kind="slurm", n_workers=2, memory_limit="1GiB", jobqueue=settings, timeout=120), name


@pytest.mark.slurm
def test_slurm_jobs_run_workers_that_compute_and_are_gone_after_exit(slurm, tmp_path):
    cfg, name = slurm_cfg(slurm, tmp_path)
    with cluster.connect(cfg) as client:
        assert len(squeue_names(name)) == 2
        pids = client.run(os.getpid)
        assert len(pids) == 2 and os.getpid() not in pids.values()
        assert all(address.startswith("tcp://127.0.0.1:") for address in pids)
        check_sum(client)
        assert cluster.worker_memory_limits(client) == [GiB, GiB]
        script = client.cluster.job_script()
        assert f"-p {slurm}" in script and "--mem=1G" in script and sys.executable in script
    assert wait_queue_empty(name) == []


@pytest.mark.slurm
def test_slurm_jobs_that_never_start_raise_cluster_error_and_are_cancelled(slurm, tmp_path):
    # --begin keeps the jobs pending (reason BeginTime) for an hour: they can never start in time.
    cfg, name = slurm_cfg(slurm, tmp_path, job_extra_directives=["--begin=now+1hour"])
    cfg.timeout = 5
    start = time.monotonic()
    with pytest.raises(ClusterError, match="did not start") as info:
        with cluster.connect(cfg):
            pass
    assert time.monotonic() - start < 60
    message = str(info.value)
    assert "--begin=now+1hour" in message  # the job script excerpt
    assert "BeginTime" in message  # the queue's reason
    assert wait_queue_empty(name) == []


@pytest.mark.slurm
def test_slurm_rejected_submission_fails_fast_with_the_batch_system_message(slurm, tmp_path):
    cfg, name = slurm_cfg(slurm, tmp_path, queue="no-such-partition")
    start = time.monotonic()
    with pytest.raises(ClusterError, match="(?i)invalid partition"):
        with cluster.connect(cfg):
            pass
    assert time.monotonic() - start < 30
    assert wait_queue_empty(name) == []


def _heartbeat_records_dropped(dask_worker=None):
    import logging

    record = logging.LogRecord("distributed.worker", logging.ERROR, __file__, 0,
                               "Failed to communicate with scheduler during heartbeat.", None, None)
    other = logging.LogRecord("distributed.worker", logging.ERROR, __file__, 0, "a real worker error", None, None)
    log = logging.getLogger("distributed.worker")
    return (not log.filter(record), bool(log.filter(other)))


def test_local_cluster_shutdown_drops_only_the_heartbeat_race_error():
    with cluster.connect(make_cfg(kind="local", n_workers=1)) as client:
        assert set(client.run(_heartbeat_records_dropped).values()) == {(False, True)}
        cluster._quiet_heartbeats(client)
        assert set(client.run(_heartbeat_records_dropped).values()) == {(True, True)}
