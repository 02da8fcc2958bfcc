"""Checksummed archives of arrays + JSON metadata (saved models, checkpoints): never pickle."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from pipeline.exceptions import DataError
from pipeline.storage.atomic import atomic_write_bytes


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


def read_archive(path, kind: str, version: int, error=DataError) -> tuple[dict, dict]:
    """Read an archive written by :func:`write_archive`: returns (arrays, meta).

    ``path`` is a local path or a :class:`~pipeline.storage.stores.StorePath`.
    Raises ``error`` (a subclass of Exception taking a message) naming the file when it is
    missing, not an archive, truncated, of another kind or version, or an array does not match
    its checksum.
    """
    from pipeline.storage.stores import StorePath

    path = path if isinstance(path, StorePath) else Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    try:
        z = np.load(io.BytesIO(path.read_bytes()) if isinstance(path, StorePath) else path, allow_pickle=False)
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
