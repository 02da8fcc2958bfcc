"""Resources of the active scheduler: BLAS threads, worker memory, what to keep in memory."""

from __future__ import annotations

import os
from contextlib import contextmanager

import dask.array as da
from threadpoolctl import ThreadpoolController

_BLAS = None


@contextmanager
def single_threaded_blas():
    """BLAS limited to one thread in this process while the block is running.

    Dask provides the parallelism (one task per chunk per thread); multithreaded BLAS inside
    each task oversubscribes the cores (measured: 4x slower per EM iteration with the threaded
    scheduler on 2 cores).  Distributed workers already start with OPENBLAS_NUM_THREADS=1.
    """
    with _controller().limit(limits=1, user_api="blas"):
        yield


@contextmanager
def single_threaded():
    """Every thread pool of this process (BLAS and OpenMP) limited to one thread while the block
    runs: for small in-memory work on the driver, such as scikit-learn's ``KMeans`` on the
    initialisation sample, whose OpenMP threads cost more than they give there (measured on 2
    cores under load: 0.44 s per KMeans fit of 20,000 x 8 rows with 2 threads, 0.036 s with one)."""
    with _controller().limit(limits=1):
        yield


def _controller() -> ThreadpoolController:
    """This process's thread pools, inspected once (it loads every BLAS and OpenMP library's
    information)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS



def distributed_client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None



def worker_memory_limits(client) -> list[int]:
    """Memory limit of each worker in bytes, ordered by worker address; 0 means no limit.

    The out-of-core logic compares these with the size of the data per worker to decide
    whether to persist the data or re-read it from Zarr on every EM iteration.
    """
    info = client.scheduler_info(n_workers=-1)
    return [int(w.get("memory_limit") or 0) for _, w in sorted(info.get("workers", {}).items())]



def should_cache(X: da.Array, mode: str = "auto", was_dask: bool = True) -> bool:
    """Whether to keep X in (worker) memory between passes: ``mode`` "memory"/"none" decide;
    "auto" keeps NumPy input (on a cluster: sent to the workers once) and Dask data under a
    quarter of the workers' (or this host's) memory.

    Streamed data is re-read from its source (e.g. Zarr) on every pass, one chunk at a time per
    worker thread, so worker memory stays O(chunk + K*D^2) whatever n_samples is.
    """
    if mode != "auto":
        return mode == "memory"
    client = distributed_client()
    if not was_dask:
        return client is not None
    return X.nbytes <= _memory_budget(client)


def _memory_budget(client) -> float:
    """Bytes of data we are willing to persist: a quarter of the workers' (or host's) memory."""
    if client is not None:
        limits = worker_memory_limits(client)
        if limits and all(limits):
            return 0.25 * sum(limits)
    return 0.25 * host_available_memory()


def host_available_memory() -> int:
    """Bytes of memory available on this host."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


#: a worker pauses at 80% of its memory limit (distributed's default worker.memory.pause)
WORKER_PAUSE_FRACTION = 0.8


def sweep_memory(X: da.Array, vector_floats: int, threads_per_worker: int, fan_in: int) -> int:
    """Bytes a worker holds at most in one pass of a lockstep sweep (:mod:`pipeline.engine.sweep`):
    per thread one chunk (and its float64 copy), the E-step's row-block temporaries
    (``pipeline.kernels.cpu.FEATURES_BLOCK_BYTES``, three of them) and the chunk's statistics of
    every run (``vector_floats`` float64, twice while they are concatenated), plus a tree sum's
    ``fan_in`` vectors of statistics and its result."""
    from pipeline.kernels.cpu import FEATURES_BLOCK_BYTES

    chunk = max(X.chunks[0]) * X.shape[1] * (X.dtype.itemsize + 8)
    stats = 8 * vector_floats
    return threads_per_worker * (chunk + 3 * FEATURES_BLOCK_BYTES + 2 * stats) + (fan_in + 1) * stats


def check_sweep_memory(X: da.Array, vector_floats: int, driver_bytes: int, fan_in: int) -> dict:
    """Refuse, before any pass, a sweep whose worker or driver memory (:func:`sweep_memory`,
    ``driver_bytes``) exceeds what it may use: the workers' smallest memory limit (up to the
    fraction where distributed pauses them) on a cluster, else this host's available memory.
    Returns the figures (bytes) for the report."""
    client = distributed_client()
    threads, limit, where = os.cpu_count() or 1, 0, "this host's available memory"
    if client is not None:
        info = client.scheduler_info(n_workers=-1).get("workers", {})
        limits = [int(w.get("memory_limit") or 0) for w in info.values()]
        threads = max([int(w.get("nthreads") or 1) for w in info.values()] or [1])
        if limits and all(limits):
            limit, where = int(WORKER_PAUSE_FRACTION * min(limits)), "the smallest worker memory limit (80%: pause)"
    host = host_available_memory()
    worker = sweep_memory(X, vector_floats, threads, fan_in)
    from pipeline.exceptions import MemoryBudgetError

    budget = limit or host
    if worker > budget:
        raise MemoryBudgetError(
            f"a pass of this sweep needs about {worker / 2**20:,.0f} MiB per worker ({threads} threads x (a chunk of "
            f"{max(X.chunks[0]):,} rows + statistics of every candidate) + the tree sum of {fan_in} statistics vectors "
            f"of {8 * vector_floats / 2**20:,.1f} MiB), more than {where}, {budget / 2**20:,.0f} MiB: use smaller "
            "chunks, fewer candidates per sweep, or workers with more memory"
        )
    if driver_bytes > host:
        raise MemoryBudgetError(
            f"the sweep needs about {driver_bytes / 2**20:,.0f} MiB on the driver (the initialisation sample and every "
            f"candidate's parameters and statistics), more than this host's available {host / 2**20:,.0f} MiB: "
            "lower init_sample or use fewer candidates per sweep"
        )
    return {"worker_bytes": worker, "worker_budget": budget, "driver_bytes": driver_bytes, "driver_budget": host}
