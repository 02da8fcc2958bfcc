"""Zarr in and out: lazy reading as a row-chunked Dask array, atomic writing of Dask arrays.

Reading
-------
:func:`open_dataset` returns a *lazy* ``dask.array.Array`` of shape ``(n_samples, n_features)``
built with ``dask.array.from_zarr`` on the **absolute** path of the store: the graph holds a
``zarr.Array`` whose ``LocalStore`` root is absolute, so it pickles small (~1 kB) and each
distributed worker process re-opens the store and reads only its own chunks.  Workers must
therefore see the same path (shared filesystem, or a URL such as ``s3://...``).  Nothing is read
on the driver but the metadata.  Rows are re-chunked at read time to ``chunk_rows`` (features are
never split); integer data is returned as stored (cast it where the numerics need floats).
``chunk_rows="auto"`` (the default) picks whole stored chunks adding up to about 64 MiB and at
most 262,144 rows, but at least 16 Dask chunks of 1 MiB or more (a stored chunk larger than
that is one Dask chunk; :func:`pipeline.data.chunking.auto_chunk_rows`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from pipeline.data.chunking import resolve_chunk_rows
from pipeline.data.synthetic import generate_mixture
from pipeline.exceptions import DataError, OutputExistsError
from pipeline.storage.atomic import tmp_sibling, write_dir_atomically
from pipeline.storage.stores import fsspec_options, is_url, location, location_of

#: dtype kinds accepted as data: signed/unsigned integers and floats
_NUMERIC_KINDS = "iuf"


def open_dataset(
    path: str | os.PathLike, array: str | None = None, chunk_rows: int | str | None = None,
    storage_options: dict | None = None,
) -> da.Array:
    """Lazily open a 2-D numeric Zarr (v2 or v3) array as a Dask array.

    Parameters
    ----------
    path : a Zarr array, or a Zarr group holding the array.
    array : name of the array inside a group.  If None and ``path`` is a group, the array named
        ``"X"`` is used, else the group's only 2-D array.
    chunk_rows : rows per Dask chunk; None keeps the store's row chunks (its shards if sharded);
        "auto" takes whole stored chunks (inner chunks if sharded) adding up to about 64 MiB and
        at most 262,144 rows, at least 16 Dask chunks of >= 1 MiB (:func:`pipeline.data.chunking.auto_chunk_rows`).
    storage_options : for a URL (``s3://bucket/x.zarr``), fsspec's options, as Dask's
        ``from_zarr`` takes them (e.g. ``{"endpoint_url": ...}``; credentials come from the
        environment, see :mod:`pipeline.storage.stores`).

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
    where, node = _open_node(path, storage_options)
    name, z, label = _resolve_array(node, array, where)
    check_shape_dtype(z.shape, z.dtype, label)
    rows = _dask_chunk_rows(z, chunk_rows, label)
    return da.from_array(
        NamedChunks(z, label, where), chunks=(rows, z.shape[1]), name=f"from-zarr-{tokenize(where, name, rows)}",
        asarray=False, fancy=False, meta=np.empty((0, 0), dtype=z.dtype),
    )


class NamedChunks:
    """A ``zarr.Array`` for :func:`dask.array.from_array` whose read errors name the array, the
    rows, the stored chunks and their keys under the store's path: a corrupted or unreadable
    chunk file (a truncated one fails its decompression) becomes one :class:`DataError` line
    instead of a codec's message such as "Zstd decompression error: invalid input data".
    Pickles as the zarr array does (the store's absolute root and the path inside it)."""

    def __init__(self, z: zarr.Array, label: str, where: str):
        self.z, self.label, self.where = z, label, where
        self.shape, self.dtype, self.ndim = z.shape, z.dtype, z.ndim

    def __getitem__(self, key):
        try:
            return self.z[key]
        except Exception as exc:  # noqa: BLE001 - any failure to read a stored chunk
            raise DataError(self._describe(key, exc)) from exc

    def _describe(self, key, exc) -> str:
        rows = key[0] if isinstance(key, tuple) else key
        start, stop = (rows.start or 0, rows.stop or self.shape[0]) if isinstance(rows, slice) else (0, self.shape[0])
        step = self.z.chunks[0]
        first, last = start // step, max(start, stop - 1) // step
        try:
            keys = [self.z.metadata.encode_chunk_key((i, 0)) for i in (first, last)]
            prefix = f"{self.where.rstrip('/')}/{self.z.path + '/' if self.z.path else ''}"
            files = prefix + keys[0] + (f" .. {keys[1]}" if last != first else "")
        except Exception:  # noqa: BLE001 - a description without the keys, then
            files = self.where
        chunks = f"stored chunk {first}" if first == last else f"stored chunks {first}-{last}"
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        return f"{self.label}: cannot read rows {start}-{stop - 1} ({chunks}, {files}): {reason}"


def _open_node(path: str | os.PathLike, storage_options: dict | None = None) -> tuple[str, Any]:
    """(absolute location, the Zarr array or group there); DataError if missing or not Zarr."""
    where = location(path)
    if not is_url(where) and not os.path.exists(where):
        raise DataError(
            f"data path {where} does not exist; set data.generate in the config to create "
            f"synthetic demo data there, or convert a .npy/.parquet/.csv file with gmm-pipeline convert"
        )
    kw = {"storage_options": storage_options or {}} if is_url(where) else {}
    try:
        return where, zarr.open(where, mode="r", **kw)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        missing = is_url(where) and isinstance(exc, FileNotFoundError)
        raise DataError(f"{where} does not exist (no Zarr array or group there)" if missing
                        else f"{where} is not a Zarr array or group: {exc}") from exc
    except PermissionError as exc:
        raise DataError(f"{where}: access denied ({exc}); check the credentials in the environment "
                        "or ~/.aws/credentials") from exc


def _resolve_array(node, array: str | None, where: str) -> tuple[str | None, zarr.Array, str]:
    """Node resolution: (name in the group or None, the array, its label in messages)."""
    if isinstance(node, zarr.Group):
        name = _pick_array(node, array, where)
        return name, node[name], f"{where} (array '{name}')"
    if array is not None:
        raise DataError(
            f"{where} is a single Zarr array, not a group, so data.array: {array!r} cannot "
            f"be looked up in it; remove data.array"
        )
    return None, node, where


def _dask_chunk_rows(z: zarr.Array, chunk_rows: int | str | None, label: str) -> int:
    """Chunk resolution: rows per Dask chunk for ``chunk_rows`` (see :func:`open_dataset`)."""
    try:
        return resolve_chunk_rows(chunk_rows, z.shape[0], z.shape[1], z.dtype.itemsize,
                                  source_rows=(getattr(z, "shards", None) or z.chunks)[0], multiple=z.chunks[0])
    except ValueError as exc:
        raise DataError(f"{label}: {exc}") from None


def dataset_from_config(data: Any) -> da.Array:
    """Open ``data.path`` as :func:`open_dataset` does, first generating it if asked to.

    ``data`` is a :class:`pipeline.batch.config.DataConfig`; when ``data.generate`` is set and
    ``data.path`` does not exist, :func:`generate_mixture` creates it there.
    """
    options = fsspec_options(data.storage_options)
    if data.generate is not None and not _exists(data.path, options):
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
            storage_options=options,
        )
    return open_dataset(data.path, array=data.array, chunk_rows=data.chunk_rows, storage_options=options)


def _exists(path: str, storage_options: dict) -> bool:
    return location_of(path, storage_options).exists()


def weights_from_config(data: Any, n_rows: int) -> da.Array | None:
    """The sample weights of ``data.weights`` (a :class:`pipeline.batch.config.DataConfig`)
    as a lazy 1-D Dask array, or None.  DataError (naming ``data.weights`` and the store) if
    the array is missing, not 1-D, not numeric or not one weight per row; the values are
    checked by the fit (:func:`pipeline.estimators.validation.validate_weights`)."""
    w = data.weights
    if w is None:
        return None
    options = fsspec_options(data.storage_options)
    where, node = _open_node(data.path if w.path is None else w.path, options)
    if isinstance(node, zarr.Group):
        arrays = {n: a for n, a in node.arrays()}
        one_d = [n for n, a in arrays.items() if a.ndim == 1]
        name = w.array if w.array is not None else (one_d[0] if len(one_d) == 1 else None)
        if name is None or name not in arrays:
            listing = ", ".join(f"'{n}' {a.shape} {a.dtype}" for n, a in sorted(arrays.items())) or "none"
            raise DataError(
                f"data.weights: {where} has no array {name or ''!r} of weights"
                f"{'' if w.array else ' (and not exactly one 1-D array)'}; its arrays are: {listing}"
            )
        z, label = node[name], f"data.weights: {where} (array '{name}')"
    elif w.path is None:
        raise DataError(
            f"data.weights: {w.array!r} names an array in the data's group, but {where} is a single "
            "array; give data.weights: {path: <store>, array: <name>}"
        )
    else:
        name, z, label = None, node, f"data.weights: {where}"
    if z.ndim != 1 or np.dtype(z.dtype).kind not in _NUMERIC_KINDS:
        raise DataError(f"{label}: expected a 1-D numeric array of one weight per row, got shape {z.shape} {z.dtype}")
    if z.shape[0] != n_rows:
        raise DataError(f"{label}: {z.shape[0]} weights for {n_rows} rows of {data.path}")
    return da.from_zarr(where, component=name, **({"storage_options": options} if is_url(where) else {}))


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


def check_shape_dtype(shape: tuple[int, ...], dtype: Any, label: str) -> None:
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
    root = Path(location(path))
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
    # a sibling of the group (not inside it), so the group never lists a half-written member
    write_dir_atomically(final, lambda tmp: da.to_zarr(x, str(tmp), mode="w-", zarr_format=zarr_format),
                         overwrite, tmp=tmp_sibling(root, tag=tmp_tag))
    return final


