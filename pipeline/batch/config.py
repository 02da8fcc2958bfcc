"""Typed run configuration, loaded from YAML and validated once.

A run is described by a YAML file with six sections (every key is optional and has a default)::

    data:
      path: data/demo.zarr        # Zarr v2/v3 array, or a group (+ `array: name`)
      array: null
      chunk_rows: auto            # rows per Dask chunk when reading: auto = whole stored chunks,
                                  # ~64 MiB / <= 262,144 rows, >= 16 chunks; null = store chunks
      cache: auto                 # auto | memory | none
      generate: null              # or a mapping: make synthetic data at `path` if it is missing
      weights: null               # or the name of a 1-D array of per-row weights in the group
      storage_options: {}         # for s3://...: endpoint, region, anonymous, profile
    model: {n_components: 5, covariance_type: full, init_params: kmeans, n_init: 1,
            max_iter: 100, tol: 1.0e-3, reg_covar: 1.0e-6, dtype: float64, random_state: 0,
            nan_policy: raise,            # raise | omit | marginalize (NaN = missing values)
            init_sample: 20000}           # the candidates start from a sample; null: on the data
    cluster: {kind: local, n_workers: 2, threads_per_worker: 1, memory_limit: 4GiB,
              address: null, host: 127.0.0.1, dashboard: true, security: {}, jobqueue: {},
              timeout: 300}
    output: {dir: runs/demo, overwrite: false, labels: true, responsibilities: true, plots: true,
             storage_options: null}   # null: data.storage_options
    checkpoint: {every: 1}

Conventions
-----------
* YAML is read with ``yaml.SafeLoader`` only (no arbitrary Python objects).
* **Relative paths** (``data.path``, ``output.dir``) are resolved against the *current working
  directory at load time*, not against the YAML file's directory, and stored as absolute strings in
  the dataclasses and in :meth:`RunConfig.to_dict`.  URLs (``s3://...``) are kept as given.
* ``storage_options`` never hold credentials (a key naming one is an error): they come from the
  environment or the standard credential files (:mod:`pipeline.storage.stores`).
* ``model.n_components`` and ``model.covariance_type`` may be lists; then the run fits every
  combination and keeps the lowest BIC (see :meth:`ModelConfig.candidates`).  Lists are stored
  as tuples; a scalar stays a scalar.  ``covariance_type: all`` is mclust's 14 models (a tuple).
* ``model.init_sample`` (an integer >= 1 or null) is ``GaussianMixtureIC``'s ``init_sample``:
  the candidates start from a uniform sample of about that many rows drawn in the summary pass
  (in memory on the driver: ``10 * n_init`` short EM runs per candidate, the best of them on to
  the data; no pass over the data of its own); ``null``: each of a candidate's ``n_init``
  restarts is initialised on the data, as ``GaussianMixture.fit`` does.
* ``cluster.memory_limit`` is stored in bytes (int); ``"4GiB"``, ``"4GB"``, ``"512MiB"`` or an
  int are accepted (:func:`parse_memory`).
* Float keys also accept strings such as ``1e-3`` (PyYAML reads a float without a dot as a
  string); booleans are never accepted where a number is expected.
* ``--set key.path=value`` overrides (:func:`load_config`) parse ``value`` with
  ``yaml.safe_load``, so ``[2, 4, 8]``, ``null``, ``true`` and numbers work.

Every error is a :class:`~pipeline.exceptions.ConfigError` whose message names the file, the line
(when known), the key path (``model.covariance_type``), the bad value and what is accepted;
unknown keys also list the valid keys and suggest the closest one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.exceptions import ConfigError
from pipeline.families import COVARIANCE_TYPES, MCLUST_MODELS, get_family
from pipeline.options import (
    CACHE_MODES,
    CHUNK_ROWS_DEFAULT,
    CHUNK_ROWS_WORDS,
    CLUSTER_DEFAULTS,
    CLUSTER_KINDS,
    DTYPES,
    GENERATE_DEFAULTS,
    INIT_PARAMS,
    INIT_SAMPLE_DEFAULT,
    NAN_POLICIES,
)
from pipeline.storage.stores import check_storage_options, location

__all__ = [
    "CheckpointConfig",
    "ClusterConfig",
    "DataConfig",
    "GenerateConfig",
    "WeightsConfig",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "config_from_dict",
    "load_config",
    "parse_memory",
]



# --------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateConfig:
    """Synthetic mixture to create at ``data.path`` when it does not exist.

    Field names match the keyword arguments of :func:`pipeline.data.synthetic.generate_mixture`.
    """

    n_samples: int = 1_000_000
    n_features: int = 8
    n_components: int = 5
    seed: int = GENERATE_DEFAULTS["seed"]
    chunk_rows: int = GENERATE_DEFAULTS["chunk_rows"]
    dtype: str = GENERATE_DEFAULTS["dtype"]
    separation: float = GENERATE_DEFAULTS["separation"]


@dataclass(frozen=True)
class WeightsConfig:
    """Per-row sample weights: the 1-D array ``array`` in the data's Zarr group (``path``
    None), or in its own Zarr store at ``path`` (``array`` None: the store is the array, or
    its group's only 1-D array)."""

    path: str | None = None
    array: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to read it.

    ``path`` is absolute (or a URL) when built by :func:`load_config` / :func:`config_from_dict`.
    """

    path: str = "data/demo.zarr"
    array: str | None = None
    chunk_rows: int | str | None = CHUNK_ROWS_DEFAULT
    cache: str = "auto"
    generate: GenerateConfig | None = None
    weights: WeightsConfig | None = None
    #: how to reach an object store (endpoint, region, anonymous, profile; never credentials)
    storage_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """Estimator parameters (scikit-learn ``GaussianMixture`` names)."""

    n_components: int | tuple[int, ...] = 5
    covariance_type: str | tuple[str, ...] = "full"
    init_params: str = "kmeans"
    n_init: int = 1
    max_iter: int = 100
    tol: float = 1e-3
    reg_covar: float = 1e-6
    dtype: str = "float64"
    random_state: int | None = 0
    nan_policy: str = "raise"  # what NaN in the data mean: GaussianMixture's nan_policy
    #: rows of the sample the candidates start from (None: each restart starts on the data):
    #: GaussianMixtureIC's init_sample
    init_sample: int | None = INIT_SAMPLE_DEFAULT

    @property
    def is_search(self) -> bool:
        """True when several (n_components, covariance_type) models are to be compared by BIC."""
        return isinstance(self.n_components, tuple) or isinstance(self.covariance_type, tuple)

    def candidates(self) -> list[tuple[int, str]]:
        """All (n_components, covariance_type) pairs to fit, in file order."""
        ks = self.n_components if isinstance(self.n_components, tuple) else (self.n_components,)
        cts = (
            self.covariance_type
            if isinstance(self.covariance_type, tuple)
            else (self.covariance_type,)
        )
        return [(k, ct) for ct in cts for k in ks]


@dataclass(frozen=True)
class ClusterConfig:
    """How to get a Dask cluster.  ``memory_limit`` is in bytes, ``timeout`` in seconds."""

    kind: str = CLUSTER_DEFAULTS["kind"]
    n_workers: int = CLUSTER_DEFAULTS["n_workers"]
    threads_per_worker: int = CLUSTER_DEFAULTS["threads_per_worker"]
    memory_limit: int = CLUSTER_DEFAULTS["memory_limit"]
    address: str | None = CLUSTER_DEFAULTS["address"]
    host: str = CLUSTER_DEFAULTS["host"]
    dashboard: bool = CLUSTER_DEFAULTS["dashboard"]
    security: dict = field(default_factory=dict)
    jobqueue: dict = field(default_factory=dict)
    timeout: float = CLUSTER_DEFAULTS["timeout"]


@dataclass(frozen=True)
class OutputConfig:
    """Where results go.  ``dir`` is absolute when built by :func:`load_config`."""

    dir: str = "runs/demo"
    overwrite: bool = False
    labels: bool = True
    responsibilities: bool = True
    plots: bool = True
    #: as data.storage_options, for output.dir; None: the same as data.storage_options
    storage_options: dict | None = None


@dataclass(frozen=True)
class CheckpointConfig:
    """``every``: EM passes (iterations of the candidates' lockstep sweep) between checkpoints;
    0 disables checkpointing."""

    every: int = 1


@dataclass(frozen=True)
class RunConfig:
    """The fully resolved, validated configuration of one run."""

    data: DataConfig
    model: ModelConfig
    cluster: ClusterConfig
    output: OutputConfig
    checkpoint: CheckpointConfig
    source: str = "<dict>"

    def to_dict(self) -> dict:
        """Plain, JSON-able dict of every section (tuples become lists; no ``source``).

        ``config_from_dict(cfg.to_dict())`` gives back an equal config.
        """
        return {name: _plain(dataclasses.asdict(getattr(self, name))) for name in _SECTIONS}

    def to_yaml(self) -> str:
        """The resolved config as YAML text (for reports and checkpoints)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def parse_memory(value: str | int) -> int:
    """Bytes from ``"4GiB"``, ``"4GB"``, ``"512MiB"``, ``"1e9"`` or a positive int.

    Raises :class:`ConfigError` for booleans, non-positive values or unparsable strings.
    """
    from dask.utils import parse_bytes

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(
            f"memory size must be a string with units like '4GiB' or a number of bytes; "
            f"got {value!r}"
        )
    if isinstance(value, int):
        n = value
    else:
        try:
            n = int(parse_bytes(value.strip()))
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(
                f"cannot read memory size {value!r}; use a number with units such as "
                f"'512MiB', '4GiB' or '4GB', or a number of bytes"
            ) from exc
    if n <= 0:
        raise ConfigError(f"memory size must be positive; got {value!r}")
    return n


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> RunConfig:
    """Read, override and validate the YAML run config at ``path``.

    Parameters
    ----------
    path : YAML file.
    overrides : ``"key.path=value"`` strings (the CLI's ``--set``), applied in order after
        the file is read; ``value`` is parsed with ``yaml.safe_load``.

    Raises
    ------
    ConfigError
        For a missing or unreadable file, a YAML syntax error, or any invalid key or value.
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {source} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {source}: {exc}") from exc

    raw, lines = _parse_yaml(text, source)
    if raw is None:
        raise ConfigError(
            f"{source}: the config file is empty; it must be a mapping with sections "
            f"{', '.join(_SECTIONS)} (all optional), e.g. 'model: {{n_components: 5}}'"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}, line 1: the top level must be a mapping of sections "
            f"({', '.join(_SECTIONS)}); got a {type(raw).__name__}: {raw!r}"
        )
    where = {key: f"{source}, line {line}" for key, line in lines.items()}
    return _build(raw, source, where, overrides)


def config_from_dict(
    d: Mapping | None, source: str = "<dict>", overrides: Iterable[str] = ()
) -> RunConfig:
    """Validate a plain dict with the same schema as the YAML file (for tests and programs)."""
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: the config must be a mapping; got {type(d).__name__}")
    return _build(_deepcopy_plain(d), source, {}, overrides)


# --------------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------------


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Safe-load ``text`` and map each dotted key path to the 1-based line of its key."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        if exc.context_mark is not None and mark is not None and exc.context_mark.line != mark.line:
            problem += f" (the construct began on line {exc.context_mark.line + 1})"
        raise ConfigError(f"{source}{line}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    if node is not None:
        _record_lines(node, "", lines, source)
    return data, lines


def _record_lines(node: yaml.Node, prefix: str, lines: dict[str, int], source: str) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        path = f"{prefix}{key_node.value}"
        line = key_node.start_mark.line + 1
        if path in lines and key_node.value != "<<":
            raise ConfigError(
                f"{source}, line {line}: duplicate key '{path}' (first set on line "
                f"{lines[path]}); remove one of them"
            )
        lines[path] = line
        _record_lines(value_node, path + ".", lines, source)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


class _Ctx:
    """Where each key came from, to build error messages."""

    def __init__(self, source: str, where: dict[str, str]):
        self.source = source
        self.where = where

    def loc(self, keypath: str) -> str:
        # the key itself, else its closest ancestor, else just the file
        parts = re.sub(r"\[\d+\]", "", keypath).split(".")
        for i in range(len(parts), 0, -1):
            p = ".".join(parts[:i])
            if p in self.where:
                return self.where[p]
        return self.source

    def fail(self, keypath: str, value: Any, accepted: str, problem: str | None = None) -> None:
        problem = problem or "is not valid"
        raise ConfigError(
            f"{self.loc(keypath)}: {keypath} {problem}: got {value!r}; accepted: {accepted}"
        )


_MISSING = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(minimum: int, nullable: bool = False, words: tuple[str, ...] = ()):
    """An integer >= minimum; also null (kept as None) if ``nullable``, and the strings ``words``."""

    def check(v, key, ctx):
        if (v is None and nullable) or (isinstance(v, str) and v in words):
            return v
        alternatives = [f"an integer >= {minimum}", *map(repr, words)] + (["null"] if nullable else [])
        accepted = alternatives[0] if len(alternatives) == 1 else f"{', '.join(alternatives[:-1])} or {alternatives[-1]}"
        if not _is_int(v):
            kinds = " or ".join(["an integer", *map(repr, words)])
            ctx.fail(key, v, accepted, f"must be {kinds}, not {type(v).__name__}")
        if v < minimum:
            ctx.fail(key, v, accepted, "is too small")
        return v

    return check


def _float(minimum: float, strict: bool):
    """A finite number > minimum (strict) or >= minimum."""
    rel = ">" if strict else ">="

    def check(v, key, ctx):
        accepted = f"a number {rel} {minimum:g}"
        x = v
        if isinstance(v, str):  # PyYAML reads '1e-3' (no dot) as a string
            try:
                x = float(v)
            except ValueError:
                ctx.fail(key, v, accepted, "must be a number")
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            ctx.fail(key, v, accepted, f"must be a number, not {type(v).__name__}")
        x = float(x)
        if not math.isfinite(x):
            ctx.fail(key, v, accepted, "must be finite")
        if (x <= minimum) if strict else (x < minimum):
            ctx.fail(key, v, accepted, "is out of range")
        return x

    return check


def _choice(options: tuple[str, ...], nullable_as: str | None = None):
    def check(v, key, ctx):
        if v is None and nullable_as is not None:
            return nullable_as
        accepted = ", ".join(repr(o) for o in options)
        if not isinstance(v, str) or v not in options:
            hint = ""
            if isinstance(v, str):
                close = difflib.get_close_matches(v, options, n=1)
                if close:
                    hint = f" (did you mean {close[0]!r}?)"
            ctx.fail(key, v, accepted + hint)
        return v

    return check


def _one_or_list(item_check, what: str):
    """A single item, or a non-empty list of items (stored as a tuple)."""

    def check(v, key, ctx):
        if isinstance(v, (list, tuple)):
            if not v:
                ctx.fail(key, v, f"{what}, or a non-empty list of them", "is an empty list")
            out = tuple(item_check(x, f"{key}[{i}]", ctx) for i, x in enumerate(v))
            if len(set(out)) != len(out):
                ctx.fail(key, v, "a list without repeated values", "has duplicates")
            return out
        try:
            return item_check(v, key, ctx)
        except ConfigError as exc:
            raise ConfigError(f"{exc}, or a non-empty list of them") from None

    return check


def _all_or(everything: tuple, check):
    """``all`` for every value of ``everything`` (a tuple, as a list would give), else
    ``check``; two names of one covariance family in a list (full and VVV) are an error."""

    def check_all(v, key, ctx):
        if v == "all":
            return tuple(everything)
        out = check(v, key, ctx)
        if isinstance(out, tuple):
            families = [get_family(x).name for x in out]
            if len(set(families)) != len(families):
                ctx.fail(key, v, "a list without two names of one model (full is VVV, tied EEE, diag VVI, "
                         "spherical VII)", "names one model twice")
        return out

    return check_all


def _bool(v, key, ctx):
    if not isinstance(v, bool):
        ctx.fail(key, v, "true or false", f"must be a boolean, not {type(v).__name__}")
    return v


def _string(nullable: bool = False):
    def check(v, key, ctx):
        if v is None and nullable:
            return None
        accepted = "a non-empty string" + (" or null" if nullable else "")
        if not isinstance(v, str) or not v.strip():
            ctx.fail(key, v, accepted, "must be a non-empty string")
        return v

    return check


def _path(v, key, ctx):
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    _string()(v, key, ctx)
    return location(v)


def _mapping(v, key, ctx):
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        ctx.fail(key, v, "a mapping of keyword arguments (or {})", "must be a mapping")
    return _deepcopy_plain(v)


def _memory(v, key, ctx):
    try:
        return parse_memory(v)
    except ConfigError:
        ctx.fail(
            key,
            v,
            "a positive size with units like '4GiB', '4GB', '512MiB', or a number of bytes",
            "is not a valid memory size",
        )


def _storage_options(nullable: bool = False):
    """``storage_options``: a mapping of endpoint/region/anonymous/profile (never credentials)."""

    def check(v, key, ctx):
        if v is None and nullable:
            return None
        try:
            return check_storage_options(v, key)
        except ConfigError as exc:
            raise ConfigError(f"{ctx.loc(key)}: {exc}") from None

    return check


def _optional_path(v, key, ctx):
    return None if v is None else _path(v, key, ctx)


def _weights(v, key, ctx):
    """``data.weights``: an array name in the data's group, or {path: ..., array: ...}."""
    if v is None:
        return None
    if isinstance(v, str):
        return WeightsConfig(None, _string()(v, key, ctx))
    w = _section(WeightsConfig, {"path": _optional_path, "array": _string(nullable=True)}, v, key, ctx)
    if w.path is None and w.array is None:
        ctx.fail(key, v, "an array name in the data's group, or {path: store, array: name}", "names no array")
    return w


def _generate(v, key, ctx):
    if v is None:
        return None
    return _section(GenerateConfig, _GENERATE_SCHEMA, v, key, ctx)


_GENERATE_SCHEMA = {
    "n_samples": _int(1),
    "n_features": _int(1),
    "n_components": _int(1),
    "seed": _int(0),
    "chunk_rows": _int(1),
    "dtype": _choice(DTYPES),
    "separation": _float(0.0, strict=True),
}

_SCHEMAS: dict[str, tuple[type, dict]] = {
    "data": (
        DataConfig,
        {
            "path": _path,
            "array": _string(nullable=True),
            "chunk_rows": _int(1, nullable=True, words=CHUNK_ROWS_WORDS),
            "cache": _choice(CACHE_MODES, nullable_as="none"),
            "generate": _generate,
            "weights": _weights,
            "storage_options": _storage_options(),
        },
    ),
    "model": (
        ModelConfig,
        {
            "n_components": _one_or_list(_int(1), "an integer >= 1"),
            "covariance_type": _all_or(MCLUST_MODELS, _one_or_list(
                _choice(COVARIANCE_TYPES), "one of " + ", ".join(COVARIANCE_TYPES) + " (or all)"
            )),
            "init_params": _choice(INIT_PARAMS),
            "n_init": _int(1),
            "max_iter": _int(1),
            "tol": _float(0.0, strict=False),
            "reg_covar": _float(0.0, strict=False),
            "dtype": _choice(DTYPES),
            "random_state": _int(0, nullable=True),
            "nan_policy": _choice(NAN_POLICIES),
            "init_sample": _int(1, nullable=True),
        },
    ),
    "cluster": (
        ClusterConfig,
        {
            "kind": _choice(CLUSTER_KINDS),
            "n_workers": _int(1),
            "threads_per_worker": _int(1),
            "memory_limit": _memory,
            "address": _string(nullable=True),
            "host": _string(),
            "dashboard": _bool,
            "security": _mapping,
            "jobqueue": _mapping,
            "timeout": _float(0.0, strict=True),
        },
    ),
    "output": (
        OutputConfig,
        {
            "dir": _path,
            "overwrite": _bool,
            "labels": _bool,
            "responsibilities": _bool,
            "plots": _bool,
            "storage_options": _storage_options(nullable=True),
        },
    ),
    "checkpoint": (CheckpointConfig, {"every": _int(0)}),
}
_SECTIONS = tuple(_SCHEMAS)
# keys whose values are free-form mappings: overrides may set any key below them
_FREE_FORM = {"cluster.security", "cluster.jobqueue"}


def _unknown_key(key: str, valid: Iterable[str], loc: str) -> ConfigError:
    """Error for a misspelt or unknown key, suggesting the closest valid one."""
    valid = list(valid)
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    parent = f"'{key.rsplit('.', 1)[0]}'" if "." in key else "the top level"
    return ConfigError(
        f"{loc}: unknown key '{key}'.{hint} Valid keys in {parent}: {', '.join(valid)}"
    )


def _section(cls, schema: dict, raw: Any, key: str, ctx: _Ctx):
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        ctx.fail(key, raw, f"a mapping with keys {', '.join(schema)}", "must be a mapping")
    kwargs = {}
    for k, v in raw.items():
        sub = f"{key}.{k}"
        if k not in schema:
            raise _unknown_key(sub, schema, ctx.loc(sub))
        kwargs[k] = schema[k](v, sub, ctx)
    # fill defaults, running them through the checks too (relative default paths -> absolute)
    for f in dataclasses.fields(cls):
        if f.name not in kwargs and f.name in schema:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if schema[f.name] is _path:
                kwargs[f.name] = location(default)
    return cls(**kwargs)


def _build(raw: dict, source: str, where: dict[str, str], overrides: Iterable[str]) -> RunConfig:
    for ov in overrides:
        _apply_override(raw, ov, source, where)
    ctx = _Ctx(source, where)
    for k in raw:
        if k not in _SCHEMAS:
            raise _unknown_key(str(k), _SECTIONS, ctx.loc(str(k)))
    sections = {}
    for name, (cls, schema) in _SCHEMAS.items():
        sections[name] = _section(cls, schema, raw.get(name), name, ctx)
    _check_cross_fields(sections, ctx)
    return RunConfig(**sections, source=source)


def _check_cross_fields(s: dict, ctx: _Ctx) -> None:
    cluster: ClusterConfig = s["cluster"]
    if cluster.kind == "address" and not cluster.address:
        ctx.fail(
            "cluster.address",
            cluster.address,
            "the scheduler address, e.g. 'tcp://10.0.0.5:8786' or 'tls://host:8786'",
            "is required when cluster.kind is 'address'",
        )
    gen = s["data"].generate
    if gen is not None and gen.n_components > gen.n_samples:
        ctx.fail(
            "data.generate.n_components",
            gen.n_components,
            f"at most data.generate.n_samples ({gen.n_samples})",
            "is larger than the number of samples",
        )


def _apply_override(raw: dict, text: str, source: str, where: dict[str, str]) -> None:
    """Set ``raw[a][b]... = yaml.safe_load(value)`` for ``text = "a.b...=value"``."""
    label = f"override --set {text}"
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(
            f"{label}: expected 'section.key=value', e.g. 'model.n_components=8' or "
            f"'model.covariance_type=[full, diag]'"
        )
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{label}: cannot parse the value {value_text!r} as YAML: {exc}"
        ) from None

    parts = key.split(".")
    # check the key path against the schema before touching raw
    if parts[0] not in _SCHEMAS:
        raise _unknown_key(parts[0], _SECTIONS, label)
    schema: dict | None = _SCHEMAS[parts[0]][1]  # None: inside a free-form mapping
    prefix = parts[0]
    for p in parts[1:]:
        full = f"{prefix}.{p}"
        if schema is not None:
            if p not in schema:
                raise _unknown_key(full, schema, label)
            if full == "data.generate":
                schema = _GENERATE_SCHEMA
            elif full in _FREE_FORM:
                schema = None
            elif full != key:
                raise ConfigError(f"{label}: '{full}' is a single value, it has no key '{key}'")
        prefix = full

    node = raw
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        elif not isinstance(child, dict):
            parent = ".".join(parts[: i + 1])
            raise ConfigError(
                f"{label}: cannot set '{key}' because '{parent}' is {child!r}, not a mapping"
            )
        node = child
    node[parts[-1]] = value
    where[key] = label
    # errors below the overridden key now come from the override
    for k in [k for k in where if k.startswith(key + ".")]:
        where[k] = label


def _deepcopy_plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _deepcopy_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deepcopy_plain(v) for v in obj]
    return obj
