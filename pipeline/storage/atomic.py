"""Atomic writes: nothing half-written is ever visible, nothing earlier is lost.

Every writer publishes atomically: it writes to a hidden temporary sibling
(``.<name>.tmp-<random>``, same directory, hence same filesystem) and renames it into place, so a
reader never sees a half-written file or store; a crash leaves only a ``.tmp-`` sibling behind.
Files are fsync'ed before the rename; directories (Zarr stores) are renamed without fsync of
every chunk.  When a directory is replaced, the old one is moved aside, the new one renamed in,
then the old one deleted.  On an object store (a :class:`pipeline.storage.stores.StorePath`)
writing a file is one PUT, which S3 makes atomic; publishing a directory there takes a manifest
(:class:`pipeline.storage.stores.StoreOutput`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from pipeline.exceptions import OutputExistsError


def tmp_sibling(final: Path, tag: str | None = None) -> Path:
    """A hidden, unique path beside ``final`` (same filesystem, so a rename publishes it)."""
    return final.parent / f".{tag or final.name}.tmp-{uuid.uuid4().hex[:12]}"


def write_dir_atomically(final: Path, write, overwrite: bool, tmp: Path | None = None) -> None:
    """Run ``write(tmp)`` on a temporary directory path (by default a hidden sibling of
    ``final``), then rename it to ``final``; on any failure the temporary one is removed.  On a
    store (a :class:`~pipeline.storage.stores.StorePath`): :func:`~pipeline.storage.stores.write_on_store`."""
    from pipeline.storage.stores import StorePath, write_on_store

    if isinstance(final, StorePath):
        return write_on_store(final, write, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(final) if tmp is None else tmp
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


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` atomically: temp file in the same dir, fsync, ``os.replace``.

    Parent directories are created.  An existing file keeps its permission bits; a new one
    gets 0o644.  Returns the absolute path.  A :class:`~pipeline.storage.stores.StorePath` is
    written by one PUT (atomic on S3) and returned.
    """
    from pipeline.storage.stores import StorePath, location

    if isinstance(path, StorePath):
        path.write_bytes(data)
        return path
    final = Path(location(path))
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


def atomic_write_text(path, text: str, encoding: str = "utf-8"):
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

