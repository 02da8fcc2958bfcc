"""What the benchmark scripts share: the counting identity that counts passes over the data, and
the lines that say which BLAS kernel and which versions ran.

Imported by ``scripts/bench_sweep.py`` and ``scripts/bench_outofcore.py`` (``scripts/`` is on
``sys.path`` when a script of it runs; worker processes that LocalCluster spawns inherit it, so
they unpickle :class:`Reads` from here too).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections import Counter

#: reads of chunk 0 in this process, by counter token (a task of a distributed worker gets its own
#: unpickled copy of the counter, so the count lives here, not on the instance)
_COUNTS: Counter = Counter()
_LOCK = threading.Lock()


def _reads_here(token: str) -> int:
    return _COUNTS[token]


class Reads:
    """A counting identity over the row chunks of a data set (``X.map_blocks(reads, dtype=...)``):
    counts the reads of chunk 0, one per pass, and sleeps ``cost`` seconds per chunk read (as an
    object store adds latency).

    On the threaded scheduler the count is :attr:`n`; on a distributed cluster each worker process
    counts its own reads: :meth:`total` adds them up (``client.run``) with this process's.
    """

    def __init__(self, cost: float = 0.0):
        self.cost, self.token = cost, uuid.uuid4().hex

    def __call__(self, block, block_info=None):
        if block_info is not None and block_info[0]["chunk-location"][0] == 0:
            with _LOCK:
                _COUNTS[self.token] += 1
        if self.cost:
            time.sleep(self.cost)
        return block

    @property
    def n(self) -> int:
        """Reads counted in this process (all of them on the threaded scheduler)."""
        return _COUNTS[self.token]

    def total(self, client=None) -> int:
        """Reads counted in this process and, with a distributed ``client``, in every worker."""
        workers = 0 if client is None else sum(client.run(_reads_here, self.token).values())
        return self.n + workers


def blas_kernel() -> str:
    """The BLAS libraries threadpoolctl sees in this process (NumPy's and SciPy's, loaded here
    first): API, version, CPU kernel (the library's folder: numpy.libs, scipy.libs)."""
    try:
        import numpy  # noqa: F401
        import scipy.linalg  # noqa: F401
        from threadpoolctl import threadpool_info

        found = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                 f"({os.path.basename(os.path.dirname(i.get('filepath', '')))})"
                 for i in threadpool_info() if i.get("user_api") == "blas"]
        return ", ".join(found) or "none loaded"
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc})"


def blas_line() -> str:
    """This process's BLAS kernel and ``OPENBLAS_CORETYPE`` (which overrides OpenBLAS's choice)."""
    return f"BLAS: {blas_kernel()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"


def versions_line() -> str:
    """Python and the versions of the libraries a benchmark's figures depend on."""
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {sys.version.split()[0]}", pipeline_version()]
    for name in ("numpy", "scipy", "scikit-learn", "dask", "distributed", "zarr", "threadpoolctl"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return "versions: " + ", ".join(parts)


def pipeline_version() -> str:
    """``pipeline`` as imported: its version, checkout and commit (``git describe``)."""
    import subprocess

    import pipeline

    root = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"pipeline {pipeline.__version__} ({root}{', git ' + commit if commit else ''})"
