"""Object stores (S3 and S3-compatible, through fsspec and s3fs): locations, options, publication.

A location is a local path (:class:`pathlib.Path`) or a URL such as ``s3://bucket/prefix``
(:class:`StorePath`, which has the few pathlib operations the pipeline's readers and writers use).

Options
-------
A run's config names the store's options with four keys (:data:`STORAGE_OPTIONS`): ``endpoint``
(an S3-compatible server's URL), ``region``, ``anonymous`` (unsigned requests, for public
buckets) and ``profile`` (a profile of the standard credential files).  :func:`fsspec_options`
turns them into s3fs's keyword arguments, which is what the library functions take, as Dask's
``storage_options`` do.  Credentials are never options: they come from the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``) or the
standard files (``~/.aws/credentials``, ``~/.aws/config``), which each process (driver and
workers) reads itself, so they are in no config, report, log, checkpoint or task graph.  The
endpoint can come from the environment too (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``).

Publication without rename
--------------------------
An object store cannot rename a prefix, so a run's outputs at ``<out>`` are written under a new
*generation* prefix ``<out>/<generation>/`` and published by one final write: the manifest
``<out>/_gmm_manifest.json`` naming the generation and every file in it with its size
(:class:`StoreOutput`).  A single PUT is atomic on S3: readers see the previous manifest or the
new one, never part of one; an interrupted run leaves a generation that no manifest names, which
is never mistaken for a result.  While a run is in progress ``<out>/_gmm_staging.json`` names its
generation (where its checkpoint lives, for ``--resume``).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager

from pipeline.exceptions import ConfigError, DataError

#: the storage_options a run's config may set, and what each means
STORAGE_OPTIONS = {
    "endpoint": "the URL of an S3-compatible server (default: AWS, or AWS_ENDPOINT_URL_S3)",
    "region": "the bucket's region",
    "anonymous": "unsigned requests (public buckets), true or false",
    "profile": "a profile of ~/.aws/credentials and ~/.aws/config",
}
_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential")

MANIFEST_NAME = "_gmm_manifest.json"
STAGING_NAME = "_gmm_staging.json"
MANIFEST_FORMAT = "gmm-pipeline-run"
MANIFEST_VERSION = 1


def is_url(path) -> bool:
    """Whether ``path`` names an object in a store (``scheme://...``), not a local path."""
    return "://" in os.fspath(path)


def location(path: str | os.PathLike) -> str:
    """Absolute path against the CWD (``~`` expanded); URLs (``scheme://``) unchanged."""
    p = os.fspath(path)
    return p if is_url(p) else os.path.abspath(os.path.expanduser(p))


def check_storage_options(options, where: str) -> dict:
    """The config's ``storage_options`` (a mapping of :data:`STORAGE_OPTIONS` keys), checked;
    ConfigError naming ``where`` for an unknown key, a credential or a wrong type."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(STORAGE_OPTIONS)}, got {options!r}")
    out = {}
    for k, v in options.items():
        if any(w in str(k).lower() for w in _CREDENTIAL_WORDS):
            raise ConfigError(
                f"{where}.{k}: credentials are never read from a config; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment, or use a profile of ~/.aws/credentials (profile: name)"
            )
        if k not in STORAGE_OPTIONS:
            raise ConfigError(f"{where}: unknown key {k!r}; accepted: " + "; ".join(
                f"{name} ({what})" for name, what in STORAGE_OPTIONS.items()))
        if k == "anonymous" and not isinstance(v, bool):
            raise ConfigError(f"{where}.anonymous: expected true or false, got {v!r}")
        if k != "anonymous" and (not isinstance(v, str) or not v.strip()):
            raise ConfigError(f"{where}.{k}: expected a non-empty string, got {v!r}")
        out[k] = v
    return out


def fsspec_options(options: Mapping | None) -> dict:
    """s3fs's keyword arguments for checked config ``storage_options``."""
    options = options or {}
    out: dict = {}
    if "endpoint" in options:
        out["endpoint_url"] = options["endpoint"]
    if "region" in options:
        out["client_kwargs"] = {"region_name": options["region"]}
    if options.get("anonymous"):
        out["anon"] = True
    if "profile" in options:
        out["profile"] = options["profile"]
    return out


class StorePath:
    """A key or prefix in an fsspec file system, named by its URL, with the pathlib operations
    the pipeline uses (``/``, ``name``, ``parent``, ``exists``, ``is_file``, ``is_dir``,
    ``read_bytes``/``read_text``, ``write_bytes``/``write_text``, ``unlink``, ``mkdir``).

    Writing an object is one PUT: a reader sees the old object or the new one, never part of
    it.  ``mkdir`` does nothing (a prefix exists when a key under it does).  Listings are read
    afresh each time (other processes, the workers, write here too).
    """

    def __init__(self, url: str, storage_options: Mapping | None = None, fs=None):
        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        if fs is None:
            import fsspec

            fs, _ = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.fs = fs

    @property
    def key(self) -> str:
        return self.fs._strip_protocol(self.url)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> StorePath:
        return StorePath(self.url.rsplit("/", 1)[0], self.storage_options, self.fs)

    def __truediv__(self, name) -> StorePath:
        return StorePath(f"{self.url}/{os.fspath(name).strip('/')}", self.storage_options, self.fs)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"StorePath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, StorePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def _fresh(self):
        self.fs.invalidate_cache()
        return self.fs

    def exists(self) -> bool:
        return self._fresh().exists(self.key)

    def is_file(self) -> bool:
        return self._fresh().isfile(self.key)

    def is_dir(self) -> bool:
        return self._fresh().isdir(self.key)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists once a key under it does."""

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind("."):] if "." in name.lstrip(".") else ""

    def open(self, mode: str = "rb"):
        """A file object of the object (fsspec's: reads in blocks, seekable)."""
        return self.fs.open(self.key, mode)

    def size(self) -> int:
        return int(self._fresh().size(self.key))

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.key)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.key, bytes(data))

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def files(self) -> dict[str, int]:
        """Every object under this prefix: its key relative to the prefix -> its size in bytes."""
        found = self._fresh().find(self.key, detail=True)
        root = self.key.rstrip("/") + "/"
        return {k[len(root):]: int(v.get("size") or 0) for k, v in found.items() if k.startswith(root)}

    def rmtree(self) -> None:
        """Remove every object under this prefix (none: nothing to do)."""
        if self.files():
            self.fs.rm(self.key, recursive=True)
        self.fs.invalidate_cache()


def location_of(path, storage_options: Mapping | None = None):
    """``path`` as a :class:`StorePath` (a URL, with s3fs's ``storage_options``) or an absolute
    :class:`pathlib.Path` (``~`` expanded)."""
    if isinstance(path, StorePath):
        return path
    from pathlib import Path

    p = os.fspath(path)
    return StorePath(p, storage_options) if is_url(p) else Path(location(p))


class StoreOutput:
    """A run's outputs at a store prefix ``out``: generations published by a manifest (see the
    module's docstring).  ``out / MANIFEST_NAME`` is the only object whose writing publishes."""

    def __init__(self, out: StorePath):
        self.out = out

    def manifest(self) -> dict | None:
        """The published manifest, or None if nothing was ever published here."""
        path = self.out / MANIFEST_NAME
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            m = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not a gmm-pipeline manifest: {exc}") from None
        if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("generation"), str):
            raise DataError(f"{path} is not a gmm-pipeline manifest")
        if m.get("version") != MANIFEST_VERSION:
            raise DataError(f"{path} has manifest version {m.get('version')}; this gmm-pipeline reads {MANIFEST_VERSION}")
        return m

    def published(self) -> StorePath | None:
        """The prefix of the published generation, or None."""
        m = self.manifest()
        return None if m is None else self.out / m["generation"]

    def verified(self) -> StorePath:
        """The published generation, after checking that every file the manifest names is there
        with its size; DataError naming the first missing or changed one (or no manifest)."""
        m = self.manifest()
        if m is None:
            raise DataError(f"{self.out} holds no published run ({MANIFEST_NAME} is missing)")
        gen = self.out / m["generation"]
        have = gen.files()
        for name, size in sorted(m.get("files", {}).items()):
            if have.get(name) != size:
                what = "is missing" if name not in have else f"has {have[name]} bytes, the manifest says {size}"
                raise DataError(f"{gen / name} {what}: the published run at {self.out} was modified")
        return gen

    def staging(self) -> StorePath | None:
        """The generation of a run in progress (or interrupted) here, or None."""
        try:
            gen = json.loads((self.out / STAGING_NAME).read_text()).get("generation")
        except (FileNotFoundError, json.JSONDecodeError, AttributeError):
            return None
        m = self.manifest()
        if not isinstance(gen, str) or (m is not None and m["generation"] == gen):
            return None  # published already (the pointer outlived a crash just after publication)
        return self.out / gen

    def new_staging(self) -> StorePath:
        """A new, empty generation for a fresh run, recorded as the one in progress (an earlier
        unpublished one is removed first)."""
        old = self.staging()
        if old is not None:
            old.rmtree()
        gen = f"run-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        (self.out / STAGING_NAME).write_text(json.dumps({"generation": gen, "started": time.time()}))
        return self.out / gen

    def publish(self, stage: StorePath, leave_out: tuple[str, ...] = ()) -> None:
        """Publish generation ``stage`` by writing the manifest (its files but ``leave_out``),
        then remove ``leave_out``, the staging pointer and the generation published before."""
        old = self.published()
        files = {k: v for k, v in stage.files().items() if k not in leave_out}
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "generation": stage.name,
                    "files": files, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (self.out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        for name in leave_out:
            (stage / name).unlink(missing_ok=True)
        (self.out / STAGING_NAME).unlink(missing_ok=True)
        if old is not None and old != stage:
            old.rmtree()

    def discard(self, stage: StorePath) -> int:
        """Remove an unpublished generation and the staging pointer; the bytes it held."""
        written = sum(stage.files().values())
        stage.rmtree()
        (self.out / STAGING_NAME).unlink(missing_ok=True)
        return written


def zarr_kwargs(path) -> dict:
    """The keyword Zarr's and Dask's openers take for ``path``: a store's fsspec options."""
    return {"storage_options": path.storage_options} if isinstance(path, StorePath) else {}


#: Zarr's metadata documents at the root of a group or array (v3, then v2)
_ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray", ".zattrs")


@contextmanager
def metadata_last(target):
    """While the body writes the chunks of the Zarr group or array at ``target`` (its arrays all
    created already), hold back its root metadata and write it back when the body succeeds: a
    store without rename then never shows a half-written Zarr (no reader opens it without its
    root metadata).  For a local path nothing is needed (the writer renames)."""
    if not isinstance(target, StorePath):
        yield
        return
    saved = {n: (target / n).read_bytes() for n in _ZARR_METADATA if (target / n).is_file()}
    for n in saved:
        (target / n).unlink()
    yield
    for n, data in saved.items():
        (target / n).write_bytes(data)


def write_on_store(final: StorePath, write, overwrite: bool) -> None:
    """:func:`pipeline.storage.atomic.write_dir_atomically` on a store: ``write(final)`` writes
    in place (its Zarr chunks inside :func:`metadata_last`); on any failure everything under
    ``final`` is removed.  ``overwrite`` removes what is there first (a store cannot keep the
    old version until the new one is complete)."""
    if overwrite:
        final.rmtree()
    try:
        write(final)
    except BaseException:
        final.rmtree()
        raise


def held_metadata_store(target: StorePath):
    """A Zarr store over ``target`` that keeps every metadata document (``zarr.json``) in memory
    until its ``publish()``, which writes them, the root last: a writer that resizes as it goes
    (appends rewrite the metadata) still never shows a half-written Zarr on a store without
    rename.  Chunks go straight to the store."""
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype
    from zarr.storage import FsspecStore, WrapperStore

    class HeldMetadataStore(WrapperStore):
        def __init__(self, store):
            super().__init__(store)
            self.held: dict[str, Buffer] = {}

        def _with_store(self, store):
            other = type(self)(store)
            other.held = self.held
            return other

        @staticmethod
        def _is_metadata(key: str) -> bool:
            return key.rsplit("/", 1)[-1] in _ZARR_METADATA

        async def set(self, key: str, value: Buffer) -> None:
            if self._is_metadata(key):
                self.held[key] = value
            else:
                await self._store.set(key, value)

        async def set_if_not_exists(self, key: str, value: Buffer) -> None:
            if not self._is_metadata(key):
                await self._store.set_if_not_exists(key, value)
            elif not await self.exists(key):
                self.held[key] = value

        async def _set_many(self, values) -> None:
            for key, value in values:
                await self.set(key, value)

        async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None):
            if key in self.held:
                return prototype.buffer.from_bytes(self.held[key].to_bytes())
            return await self._store.get(key, prototype, byte_range)

        async def exists(self, key: str) -> bool:
            return key in self.held or await self._store.exists(key)

        def publish(self) -> None:
            """Write the held metadata documents, the deepest first and the root's last."""
            for key in sorted(self.held, key=lambda k: -k.count("/")):
                (target / key).write_bytes(self.held[key].to_bytes())

    return HeldMetadataStore(FsspecStore.from_url(target.url, storage_options=target.storage_options))


@contextmanager
def zarr_destination(target):
    """What Zarr's creators take to write at ``target`` (a path, or a :class:`StorePath`): the
    path, or on a store a :func:`held_metadata_store` whose metadata is written when the block
    succeeds (so a failed write never opens as Zarr; :func:`write_on_store` removes it)."""
    if not isinstance(target, StorePath):
        yield str(target)
        return
    store = held_metadata_store(target)
    yield store
    store.publish()
