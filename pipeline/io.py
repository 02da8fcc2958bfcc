"""Zarr in and out, synthetic data, atomic writes.  No GMM numerics here.

Reading
-------
:func:`open_dataset` returns a *lazy* ``dask.array.Array`` of shape ``(n_samples, n_features)``
built with ``dask.array.from_zarr`` on the **absolute** path of the store: the graph holds a
``zarr.Array`` whose ``LocalStore`` root is absolute, so it pickles small (~1 kB) and each
distributed worker process re-opens the store and reads only its own chunks.  Workers must
therefore see the same path (shared filesystem, or a URL such as ``s3://...``).  Nothing is read
on the driver but the metadata.  Rows are re-chunked at read time to ``chunk_rows`` (features are
never split); integer data is returned as stored (cast it where the numerics need floats).
``chunk_rows="auto"`` (the run configuration's default) picks whole stored chunks adding up to
about 64 MiB and at most 262,144 rows, but at least 16 Dask chunks of 1 MiB or more (a stored
chunk larger than that is one Dask chunk; :func:`auto_chunk_rows`).

Writing
-------
Every writer publishes atomically: it writes to a hidden temporary sibling
(``.<name>.tmp-<random>``, same directory, hence same filesystem) and renames it into place, so a
reader never sees a half-written file or store; a crash leaves only a ``.tmp-`` sibling behind.
Files are fsync'ed before the rename; Zarr stores (directories) are renamed without fsync of every
chunk.  When a store is replaced, the old one is moved aside, the new one renamed in, then the old
one deleted.  Writers need a POSIX filesystem path (no URLs) shared by the workers that write.

Synthetic data
--------------
:func:`generate_mixture` writes a Gaussian mixture chunk by chunk; chunk ``i`` is drawn from
``np.random.default_rng([seed, i])``, so the data depends on ``(seed, chunk_rows)`` only, never on
the machine, and a 50 GB data set needs only one chunk of memory.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from pipeline.exceptions import DataError, OutputExistsError

__all__ = [
    "array_checksum",
    "atomic_write_bytes",
    "atomic_write_text",
    "auto_chunk_rows",
    "convert",
    "dataset_from_config",
    "generate_mixture",
    "open_dataset",
    "publish_dir",
    "read_archive",
    "tmp_sibling",
    "write_archive",
    "write_array_zarr",
]

#: dtype kinds accepted as data: signed/unsigned integers and floats
_NUMERIC_KINDS = "iuf"
#: parameters of :func:`generate_mixture` come from this stream, independent of every chunk's
_PARAMS_SPAWN_KEY = (1,)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

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


def open_dataset(
    path: str | os.PathLike, array: str | None = None, chunk_rows: int | str | None = None
) -> da.Array:
    """Lazily open a 2-D numeric Zarr (v2 or v3) array as a Dask array.

    Parameters
    ----------
    path : a Zarr array, or a Zarr group holding the array.
    array : name of the array inside a group.  If None and ``path`` is a group, the array named
        ``"X"`` is used, else the group's only 2-D array.
    chunk_rows : rows per Dask chunk; None keeps the store's row chunks (its shards if sharded);
        "auto" takes whole stored chunks (inner chunks if sharded) adding up to about 64 MiB and
        at most 262,144 rows, at least 16 Dask chunks of >= 1 MiB (:func:`auto_chunk_rows`).

    Returns
    -------
    X : dask array (n_samples, n_features), the stored dtype (integer or float); chunks are
        ``(chunk_rows, n_features)``: features are never split.

    Raises
    ------
    DataError
        The path is missing or not Zarr, the array is not found, not 2-D, not numeric
        (bool, complex, strings, objects) or has zero rows or columns.
    """
    where = _location(path)
    if "://" not in where and not os.path.exists(where):
        raise DataError(
            f"data path {where} does not exist; set data.generate in the config to create "
            f"synthetic demo data there, or convert a .npy/.csv file with pipeline.io.convert"
        )
    try:
        node = zarr.open(where, mode="r")
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{where} is not a Zarr array or group: {exc}") from exc

    if isinstance(node, zarr.Group):
        name = _pick_array(node, array, where)
        z = node[name]
        label = f"{where} (array '{name}')"
    else:
        if array is not None:
            raise DataError(
                f"{where} is a single Zarr array, not a group, so data.array: {array!r} cannot "
                f"be looked up in it; remove data.array"
            )
        name, z, label = None, node, where

    _check_shape_dtype(z.shape, z.dtype, label)
    n_features = z.shape[1]
    if chunk_rows is None:
        store_chunks = getattr(z, "shards", None) or z.chunks
        chunk_rows = store_chunks[0]
    elif isinstance(chunk_rows, str):
        if chunk_rows != "auto":
            raise DataError(f"{label}: chunk_rows must be an integer, null or 'auto', got {chunk_rows!r}")
        chunk_rows = auto_chunk_rows(z.shape[0], n_features, z.dtype.itemsize, multiple=z.chunks[0])
    if chunk_rows < 1:
        raise DataError(f"{label}: chunk_rows must be >= 1, got {chunk_rows}")
    return da.from_zarr(where, component=name, chunks=(int(chunk_rows), n_features))


def dataset_from_config(data: Any) -> da.Array:
    """Open ``data.path`` as :func:`open_dataset` does, first generating it if asked to.

    ``data`` is a :class:`pipeline.config.DataConfig`; when ``data.generate`` is set and
    ``data.path`` does not exist, :func:`generate_mixture` creates it there.
    """
    if data.generate is not None and not os.path.exists(_location(data.path)):
        g = data.generate
        generate_mixture(
            data.path,
            n_samples=g.n_samples,
            n_features=g.n_features,
            n_components=g.n_components,
            seed=g.seed,
            chunk_rows=g.chunk_rows,
            dtype=g.dtype,
            separation=g.separation,
        )
    return open_dataset(data.path, array=data.array, chunk_rows=data.chunk_rows)


def _location(path: str | os.PathLike) -> str:
    p = os.fspath(path)
    return p if "://" in p else os.path.abspath(os.path.expanduser(p))


def _pick_array(group: zarr.Group, array: str | None, where: str) -> str:
    arrays = {name: a for name, a in group.arrays()}
    listing = ", ".join(f"'{n}' {a.shape} {a.dtype}" for n, a in sorted(arrays.items()))
    listing = listing or "none"
    if array is not None:
        try:
            node = group[array]
        except KeyError:
            raise DataError(
                f"{where} has no array named '{array}'; its arrays are: {listing}. "
                f"Set data.array to one of them"
            ) from None
        if not isinstance(node, zarr.Array):
            raise DataError(f"{where}: '{array}' is a group, not an array; arrays: {listing}")
        return array
    if "X" in arrays:
        return "X"
    two_d = [n for n, a in arrays.items() if a.ndim == 2]
    if len(two_d) == 1:
        return two_d[0]
    raise DataError(
        f"{where} is a Zarr group with {len(two_d)} 2-D arrays and none named 'X'; set "
        f"data.array to the one to fit. Arrays: {listing}"
    )


def _check_shape_dtype(shape: tuple[int, ...], dtype: Any, label: str) -> None:
    """Raise DataError unless ``shape`` is 2-D and non-empty and ``dtype`` integer or float."""
    if len(shape) != 2:
        hint = ""
        if len(shape) == 1:
            hint = (
                f"; a single feature must be stored as a column: reshape to ({shape[0]}, 1) "
                f"(e.g. x.reshape(-1, 1))"
            )
        elif len(shape) > 2:
            hint = f"; flatten the trailing axes, e.g. x.reshape({shape[0]}, -1)"
        raise DataError(
            f"{label}: expected a 2-D array (n_samples, n_features), got shape {shape}{hint}"
        )
    dtype = np.dtype(dtype)
    if dtype.kind not in _NUMERIC_KINDS:
        raise DataError(
            f"{label}: dtype {dtype} is not numeric; accepted are integer and floating-point "
            f"dtypes (not bool, complex, strings or objects). Convert the data first"
        )
    if shape[0] == 0 or shape[1] == 0:
        raise DataError(
            f"{label}: the array is empty, shape {shape}; need at least one row and one feature"
        )


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def _mixture_parameters(
    n_features: int, n_components: int, seed: int, separation: float
) -> dict[str, np.ndarray]:
    """True weights (K,), means (K, D) and full covariances (K, D, D), all float64.

    Weights ~ Dirichlet(5, ..., 5) (no vanishing component); means ~ N(0, separation^2 I), so
    two means are typically ``separation * sqrt(2 D)`` apart; covariance k is
    ``Q_k diag(s_k^2) Q_k^T`` with a random rotation ``Q_k`` and scales ``s_k ~ U(0.5, 1.5)``.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=_PARAMS_SPAWN_KEY))
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(0.0, separation, size=(n_components, n_features))
    covariances = np.empty((n_components, n_features, n_features))
    for k in range(n_components):
        q, r = np.linalg.qr(rng.normal(size=(n_features, n_features)))
        q *= np.sign(np.diag(r))  # uniform (Haar) rotation
        scales = rng.uniform(0.5, 1.5, size=n_features)
        covariances[k] = (q * scales**2) @ q.T
    covariances = 0.5 * (covariances + covariances.transpose(0, 2, 1))
    return {"weights": weights, "means": means, "covariances": covariances}


def _mixture_chunk(
    params: dict[str, np.ndarray], n: int, rng: np.random.Generator, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` samples: X (n, D) of ``dtype`` and labels (n,) int32."""
    weights, means, covs = params["weights"], params["means"], params["covariances"]
    labels = rng.choice(len(weights), size=n, p=weights).astype(np.int32)
    z = rng.standard_normal(size=(n, means.shape[1]))
    x = np.empty_like(z)
    for k in range(len(weights)):
        rows = labels == k
        chol = np.linalg.cholesky(covs[k])
        x[rows] = means[k] + z[rows] @ chol.T
    return x.astype(dtype, copy=False), labels


def generate_mixture(
    out_path: str | os.PathLike,
    n_samples: int,
    n_features: int,
    n_components: int,
    seed: int = 0,
    chunk_rows: int = 65536,
    dtype: str = "float32",
    separation: float = 8.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic Gaussian mixture to a new Zarr v3 group at ``out_path``.

    The group holds ``X`` (n_samples, n_features) ``dtype`` chunked ``(chunk_rows,
    n_features)``, ``labels`` (n_samples,) int32 (the true component of each row), and the true
    parameters ``weights`` (K,), ``means`` (K, D), ``covariances`` (K, D, D) as float64 arrays;
    the group attributes record the generator's arguments.  Chunk ``i`` is drawn from
    ``np.random.default_rng([seed, i])`` and written before the next is made, so memory is one
    chunk; the result is reproducible given ``(seed, chunk_rows)``.  Written to a temporary
    sibling and renamed into place.

    Returns
    -------
    dict with ``weights``, ``means``, ``covariances`` (NumPy float64) and ``seed``,
    ``n_samples``, ``n_features``, ``n_components``, ``separation``, ``path``.

    Raises
    ------
    OutputExistsError if ``out_path`` exists and ``overwrite`` is False; ValueError for bad sizes.
    """
    final = Path(_location(out_path))
    for name, v in (("n_samples", n_samples), ("n_features", n_features),
                    ("n_components", n_components), ("chunk_rows", chunk_rows)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"generate_mixture: {name} must be an integer >= 1, got {v!r}")
    if n_components > n_samples:
        raise ValueError(
            f"generate_mixture: n_components ({n_components}) > n_samples ({n_samples})"
        )
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"{final} already exists; delete it, choose another path, or pass overwrite=True"
        )
    dtype = np.dtype(dtype)
    params = _mixture_parameters(n_features, n_components, seed, float(separation))
    attrs = {
        "generator": "pipeline.io.generate_mixture",
        "seed": int(seed),
        "n_samples": int(n_samples),
        "n_features": int(n_features),
        "n_components": int(n_components),
        "chunk_rows": int(chunk_rows),
        "separation": float(separation),
        "dtype": dtype.name,
    }

    def write(tmp: Path) -> None:
        group = zarr.open_group(tmp, mode="w-", zarr_format=3, attributes=attrs)
        X = group.create_array("X", shape=(n_samples, n_features),
                               chunks=(min(chunk_rows, n_samples), n_features), dtype=dtype)
        labels = group.create_array("labels", shape=(n_samples,),
                                    chunks=(min(chunk_rows, n_samples),), dtype=np.int32)
        for name, value in params.items():
            group.create_array(name, data=value)
        for i, start in enumerate(range(0, n_samples, chunk_rows)):
            stop = min(start + chunk_rows, n_samples)
            x, lab = _mixture_chunk(params, stop - start, np.random.default_rng([seed, i]), dtype)
            X[start:stop] = x
            labels[start:stop] = lab

    _write_dir_atomically(final, write, overwrite=overwrite)
    return {**params, **{k: v for k, v in attrs.items() if k != "generator"}, "path": str(final)}


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def convert(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    chunk_rows: int = 65536,
    dtype: str | None = None,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Copy a ``.npy`` or ``.csv``/``.tsv``/``.txt`` file into a new Zarr v3 array, chunk by chunk.

    * ``.npy`` is memory-mapped and copied ``chunk_rows`` rows at a time (stored dtype kept
      unless ``dtype`` is given).
    * Text is streamed ``chunk_rows`` lines at a time and stored as float64 (or ``dtype``).
      The delimiter is detected from the first data line (``,``, tab, ``;``, else whitespace).
      If the first non-blank line does not parse as numbers it is a header (its names are
      stored in the array attribute ``columns``).  Blank lines are skipped.

    The array is chunked ``(chunk_rows, n_features)`` and written to a temporary sibling, then
    renamed to ``out_path``; :func:`open_dataset` can open it directly.

    Returns
    -------
    (n_samples, n_features) written.

    Raises
    ------
    DataError for an unknown extension, a bad or ragged row (with its line number), a
    non-numeric / not 2-D / empty array.  OutputExistsError if ``out_path`` exists and
    ``overwrite`` is False.
    """
    src = Path(_location(in_path))
    final = Path(_location(out_path))
    if not src.exists():
        raise DataError(f"{src} does not exist")
    if chunk_rows < 1:
        raise ValueError(f"convert: chunk_rows must be >= 1, got {chunk_rows}")
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"{final} already exists; delete it, choose another path, or pass overwrite=True"
        )
    suffix = src.suffix.lower()
    if suffix == ".npy":
        writer, shape = _npy_writer(src, chunk_rows, dtype)
    elif suffix in (".csv", ".tsv", ".txt"):
        writer, shape = _text_writer(src, chunk_rows, dtype)
    else:
        raise DataError(
            f"{src}: cannot convert files of type '{suffix or '(none)'}'; accepted are .npy "
            f"(NumPy array) and .csv/.tsv/.txt (delimited text)"
        )
    _write_dir_atomically(final, writer, overwrite=overwrite)
    return shape()


def _npy_writer(src: Path, chunk_rows: int, dtype: str | None):
    try:
        arr = np.load(src, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle
        raise DataError(f"{src}: cannot read as a numeric .npy array: {exc}") from exc
    _check_shape_dtype(arr.shape, arr.dtype, str(src))
    out_dtype = np.dtype(dtype) if dtype is not None else arr.dtype

    def write(tmp: Path) -> None:
        z = zarr.create_array(tmp, shape=arr.shape, dtype=out_dtype, zarr_format=3,
                              chunks=(min(chunk_rows, arr.shape[0]), arr.shape[1]))
        for start in range(0, arr.shape[0], chunk_rows):
            stop = min(start + chunk_rows, arr.shape[0])
            z[start:stop] = np.asarray(arr[start:stop], dtype=out_dtype)

    return write, lambda: tuple(arr.shape)


def _split(line: str, delimiter: str | None) -> list[str]:
    return line.split(delimiter) if delimiter is not None else line.split()


def _detect_delimiter(line: str) -> str | None:
    for d in (",", "\t", ";"):
        if d in line:
            return d
    return None


def _parse_row(line: str, delimiter: str | None) -> list[float] | None:
    """Floats of one line, or None if a field is not a number."""
    try:
        return [float(f) for f in _split(line, delimiter)]
    except ValueError:
        return None


def _text_lines(src: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line."""
    with open(src, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if line:
                yield lineno, line


def _text_writer(src: Path, chunk_rows: int, dtype: str | None):
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float64)
    _check_shape_dtype((1, 1), out_dtype, str(src))
    shape = [0, 0]

    def write(tmp: Path) -> None:
        lines = _text_lines(src)
        first = next(lines, None)
        if first is None:
            raise DataError(f"{src}: the file has no data rows")
        lineno, line = first
        delimiter = _detect_delimiter(line)
        columns = None
        values = _parse_row(line, delimiter)
        if values is None:  # a header
            header_line = lineno
            columns = [c.strip().strip('"').strip("'") for c in next(csv.reader(
                [line], delimiter=delimiter or " ", skipinitialspace=True))]
            first = next(lines, None)
            if first is None:
                raise DataError(f"{src}: the file has a header (line {lineno}) but no data rows")
            lineno, line = first
            delimiter = _detect_delimiter(line) if delimiter is None else delimiter
            values = _parse_row(line, delimiter)
            if values is None:
                raise DataError(
                    f"{src}, line {lineno}: cannot parse {line[:80]!r} as numbers (line "
                    f"{header_line} was taken as the header)"
                )
        n_features = len(values)
        if columns is not None and len(columns) != n_features:
            raise DataError(
                f"{src}, line {lineno}: {n_features} values but the header has "
                f"{len(columns)} columns"
            )
        z = zarr.create_array(tmp, shape=(0, n_features), dtype=out_dtype, zarr_format=3,
                              chunks=(chunk_rows, n_features),
                              attributes={"columns": columns} if columns is not None else None)
        batch = [values]

        def flush() -> None:
            z.append(np.asarray(batch, dtype=out_dtype), axis=0)
            batch.clear()

        for lineno, line in lines:
            row = _parse_row(line, delimiter)
            if row is None:
                raise DataError(
                    f"{src}, line {lineno}: cannot parse {line[:80]!r} as {n_features} numbers "
                    f"separated by {delimiter or 'whitespace'!r}"
                )
            if len(row) != n_features:
                raise DataError(
                    f"{src}, line {lineno}: ragged row: {len(row)} value(s) where "
                    f"{n_features} were expected (as in the first data row)"
                )
            batch.append(row)
            if len(batch) == chunk_rows:
                flush()
        if batch:
            flush()
        shape[:] = z.shape

    return write, lambda: tuple(shape)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def tmp_sibling(final: Path, tag: str | None = None) -> Path:
    """A hidden, unique path beside ``final`` (same filesystem, so a rename publishes it)."""
    return final.parent / f".{tag or final.name}.tmp-{uuid.uuid4().hex[:12]}"


def _write_dir_atomically(final: Path, write, overwrite: bool) -> None:
    """Run ``write(tmp)`` on a temporary sibling directory path, then rename it to ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(final)
    try:
        write(tmp)
        publish_dir(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename directory ``tmp`` to ``final``; if ``final`` exists, replace it (if allowed)."""
    if not os.path.lexists(final):
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if not os.path.lexists(final):
                raise
    if not overwrite:
        raise OutputExistsError(f"{final} appeared while it was being written; not replacing it")
    old = tmp_sibling(final, tag=f"{final.name}.old")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same dir, fsync, ``os.replace``.

    Parent directories are created.  An existing file keeps its permission bits; a new one
    gets 0o644.  Returns the absolute path.
    """
    final = Path(_location(path))
    final.parent.mkdir(parents=True, exist_ok=True)
    mode = final.stat().st_mode & 0o7777 if final.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)
    return final


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _regular_chunks(chunks: tuple[tuple[int, ...], ...]) -> bool:
    """True if every chunk along each axis has the same size except possibly the last."""
    return all(len(set(c[:-1])) <= 1 and (len(c) < 2 or c[-1] <= c[0]) for c in chunks)


def write_array_zarr(
    x: da.Array | np.ndarray,
    path: str | os.PathLike,
    name: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Store a Dask array as a new Zarr v3 array, computing its chunks in parallel.

    Parameters
    ----------
    x : the array; its chunks become the Zarr chunks (NumPy input is one chunk).  Zarr needs
        regular chunks (all equal but the last): irregular ones are rechunked to their per-axis
        maximum first.
    path : the Zarr array to write if ``name`` is None; else a Zarr group (created, as v3, if
        missing) that receives the array ``name`` in the group's own Zarr format.
    overwrite : replace an existing array at the destination (atomically).  Otherwise raise
        :class:`OutputExistsError`.

    The chunks are computed on the active Dask scheduler (the distributed Client if one is
    registered), and each worker writes its chunks directly to a temporary store next to the
    destination, which is renamed into place when all are written: with a multi-machine cluster,
    ``path`` must be on a filesystem shared by the workers.

    Returns
    -------
    The absolute path of the written array.
    """
    if not isinstance(x, da.Array):
        x = np.asarray(x)
        x = da.from_array(x, chunks=tuple(max(s, 1) for s in x.shape) or ())
    if not _regular_chunks(x.chunks):
        x = x.rechunk(tuple(max(c) for c in x.chunks))
    root = Path(_location(path))
    zarr_format = 3
    if name is None:
        final = root
        tmp_tag = root.name
    else:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"write_array_zarr: bad array name {name!r}")
        if root.exists() and not (root / "zarr.json").exists() and not (root / ".zgroup").exists():
            raise DataError(f"{root} exists but is not a Zarr group; cannot add array '{name}'")
        # the new member must have the group's format (v2 groups do not list v3 arrays)
        zarr_format = zarr.open_group(root, mode="a").metadata.zarr_format
        final = root / name
        tmp_tag = f"{root.name}.{name}"
    if os.path.lexists(final) and not overwrite:
        raise OutputExistsError(f"{final} already exists; pass overwrite=True to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    # a sibling of the group (not inside it), so the group never lists a half-written member
    tmp = tmp_sibling(root, tag=tmp_tag)
    try:
        da.to_zarr(x, str(tmp), mode="w-", zarr_format=zarr_format)
        publish_dir(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final




# --------------------------------------------------------------------------------------------
# Checksummed archives of arrays + JSON metadata (saved models, checkpoints): never pickle
# --------------------------------------------------------------------------------------------


def array_checksum(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def write_archive(path: str | os.PathLike, arrays: dict, meta: dict, kind: str, version: int) -> Path:
    """Write ``arrays`` (name -> numeric ndarray) and JSON ``meta`` to one ``.npz``, atomically.

    The metadata records ``format`` (= ``kind``), ``version`` and a checksum of every array, so
    :func:`read_archive` detects truncation and tampering.  No object arrays, no pickle.
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.kind not in "biuf":
            raise TypeError(f"archive array {k!r} has non-numeric dtype {v.dtype}")
    meta = {**meta, "format": kind, "version": version, "checksums": {k: array_checksum(v) for k, v in arrays.items()}}
    buf = io.BytesIO()
    np.savez(buf, __metadata__=np.array(json.dumps(meta)), **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def read_archive(path: str | os.PathLike, kind: str, version: int, error=DataError) -> tuple[dict, dict]:
    """Read an archive written by :func:`write_archive`: returns (arrays, meta).

    Raises ``error`` (a subclass of Exception taking a message) naming the file when it is
    missing, not an archive, truncated, of another kind or version, or an array does not match
    its checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not a .npz archive")
        with z:
            files = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as exc:
        raise error(f"cannot read {path}: truncated, corrupted or not a .npz archive ({exc})") from exc
    try:
        meta = json.loads(str(files.pop("__metadata__")))
    except (KeyError, json.JSONDecodeError) as exc:
        raise error(f"{path} has no valid metadata: not a gmm-pipeline {kind}") from exc
    if not isinstance(meta, dict) or meta.get("format") != kind:
        raise error(f"{path} is not a gmm-pipeline {kind}")
    if meta.get("version") != version:
        raise error(f"{path} has {kind} format version {meta.get('version')}; this gmm-pipeline reads version {version}")
    checksums = meta.get("checksums") or {}
    if set(checksums) != set(files):
        raise error(f"{path}: arrays {sorted(set(checksums) ^ set(files))} are missing or unexpected; the file was modified")
    for name, value in files.items():
        if array_checksum(value) != checksums[name]:
            raise error(f"{path}: array {name!r} does not match its checksum; the file was modified or corrupted")
    return files, meta
