"""How many rows per Dask chunk: sized in bytes from the data alone, never from the cluster."""

from __future__ import annotations

from pipeline.options import check_chunk_rows

#: automatic chunking: about this many bytes per Dask chunk ...
CHUNK_TARGET_BYTES = 64 * 2**20
#: ... but at least this many chunks, so that small data still keeps a few threads busy, ...
MIN_AUTO_CHUNKS = 16
#: ... unless that makes chunks smaller than this (tiny data stays in one chunk) ...
MIN_CHUNK_BYTES = 2**20
#: ... and at most this many rows: per-row outputs (responsibilities, N x K float64 per task)
#: and narrow data (a few bytes per row) must not make tasks of many millions of rows
MAX_AUTO_ROWS = 2**18


def auto_chunk_rows(
    n_samples: int,
    n_features: int,
    itemsize: int,
    multiple: int = 1,
    target_bytes: int = CHUNK_TARGET_BYTES,
    min_chunks: int = MIN_AUTO_CHUNKS,
    max_rows: int = MAX_AUTO_ROWS,
) -> int:
    """Rows per Dask chunk chosen from the data alone (never from the cluster).

    ``ceil(nbytes / target_bytes)`` chunks, or ``min_chunks`` if that is more but none under
    1 MiB, of equal rows, at most ``max_rows``; then rounded up to a whole ``multiple`` (the
    store's chunk rows, so no stored chunk is split between tasks: a stored chunk larger than
    that wins) and to at most ``n_samples``.  Every chunk is one task per EM pass: on a
    distributed cluster each costs a few ms of scheduling and communication on top of the
    kernel (2-core machine, N = 1e7, D = 16, float64: the LocalCluster took 1.11-1.22x the
    threaded time with 153 chunks of 8 MiB), so chunks are sized in tens of MB, like Dask's own
    ``"auto"`` chunks.  The result depends only on the arguments, so a re-opened data set
    (``run --resume``) gets the same chunks.
    """
    if n_samples < 1 or n_features < 1 or itemsize < 1 or multiple < 1 or max_rows < 1:
        raise ValueError(
            f"auto_chunk_rows needs positive sizes, got n_samples={n_samples}, "
            f"n_features={n_features}, itemsize={itemsize}, multiple={multiple}, max_rows={max_rows}"
        )
    nbytes = n_samples * n_features * itemsize
    n_chunks = max(-(-nbytes // target_bytes), min(min_chunks, max(1, nbytes // MIN_CHUNK_BYTES)))
    rows = min(-(-n_samples // n_chunks), max_rows)
    rows = -(-rows // multiple) * multiple
    return int(min(rows, n_samples))



def resolve_chunk_rows(chunk_rows, n_samples: int, n_features: int, itemsize: int, source_rows: int,
                       multiple: int = 1, name: str = "chunk_rows") -> int:
    """Rows per Dask chunk for ``chunk_rows`` (see :data:`pipeline.options.CHUNK_ROWS_ACCEPTED`).

    ``source_rows``: the rows per chunk of the source (a store's chunks or shards, a Dask
    array's first chunk, all rows of a NumPy array), used for None; ``multiple``: "auto" sizes
    are rounded up to whole stored chunks of this many rows.
    """
    chunk_rows = check_chunk_rows(chunk_rows, name)
    if chunk_rows is None:
        return int(source_rows)
    if chunk_rows == "auto":
        return auto_chunk_rows(n_samples, n_features, itemsize, multiple=multiple)
    return chunk_rows
