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
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        yield



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
    try:
        import psutil

        return 0.25 * psutil.virtual_memory().available
    except ImportError:  # pragma: no cover
        return 0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")

