"""Conversion of .npy, Parquet and delimited text files into Zarr, streamed batch by batch.

* ``.npy`` is memory-mapped and copied ``chunk_rows`` rows at a time.
* ``.parquet`` is read with :meth:`pyarrow.parquet.ParquetFile.iter_batches`, one row group at a
  time (pyarrow decodes a whole row group of the selected columns), in batches of about
  ``BATCH_BYTES`` of values.
* ``.csv``/``.tsv``/``.txt`` go through pyarrow's streaming reader :func:`pyarrow.csv.open_csv` in
  blocks of ``BATCH_BYTES`` of text.

Batches are buffered into whole stored chunks of ``chunk_rows`` rows before they are written, so a
batch that ends inside a chunk is completed by the next one, and memory stays at about one batch,
one chunk (and, for Parquet, one row group) whatever the file's size.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import zarr

from pipeline.data.zarr_io import check_shape_dtype
from pipeline.exceptions import DataError, OutputExistsError
from pipeline.options import STORE_CHUNK_ROWS
from pipeline.storage.atomic import write_dir_atomically
from pipeline.storage.stores import StorePath, location_of, zarr_destination

#: bytes of values per Parquet batch, and of text per CSV block
BATCH_BYTES = 4 << 20
#: the text of a missing value: pyarrow's default null markers ("", "NA", "null", "NaN", ...)
_NULL_TEXTS = sorted(pa_csv.ConvertOptions().null_values)

Batches = Iterator[tuple[np.ndarray, np.ndarray | None]]


class _Source(NamedTuple):
    """A Parquet or text file, its columns selected: what :func:`_table_writer` writes."""

    names: list[str] | None  # the names of X's columns, if the file has names
    n_features: int
    batches: Callable[[], Batches]  # (X rows as float64, their weights or None), batch by batch
    header_line: int | None = None  # the line of a text file's header


def convert(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    chunk_rows: int = STORE_CHUNK_ROWS,
    dtype: str | None = None,
    overwrite: bool = False,
    columns: Sequence[str | int] | None = None,
    weights: str | int | None = None,
    storage_options: dict | None = None,
) -> tuple[int, int]:
    """Copy a ``.npy``, ``.parquet`` or ``.csv``/``.tsv``/``.txt`` file into new Zarr v3 storage.

    * ``.npy`` is memory-mapped; the stored dtype is kept unless ``dtype`` is given.
    * Parquet: integer, floating-point and decimal columns are stored as float64 (or ``dtype``, a
      floating-point dtype); a null becomes NaN, a missing value for the fit's ``nan_policy``.
    * Text is stored as float64 (or ``dtype``).  The delimiter is detected from the first
      non-blank line (``,``, tab, ``;``, else runs of whitespace); that line is a header if a
      field of it is neither a number nor a null marker.  Empty lines are skipped (in
      whitespace-separated text also lines of spaces).  An empty or blank field, or a null
      marker (``NA``, ``null``, ``NaN``, ``N/A``, ...: pyarrow's defaults) becomes NaN.

    ``columns`` selects and orders the columns of ``X`` (Parquet and text only), by name or by
    0-based number when no column has that name; a text file without a header has the names
    ``"0"``, ``"1"``, ...  By default every column but ``weights`` is taken.  ``weights`` names a
    column of sample weights: the output is then a Zarr group holding ``X`` and the 1-D float64
    array ``w`` (read by the YAML ``data.weights: w``); a missing weight is an error.  Without
    ``weights`` the output is a single array.  The header names or Parquet names of ``X``'s
    columns are stored in its attribute ``columns``.

    Arrays are chunked ``(chunk_rows, n_features)`` (``w``: ``(chunk_rows,)``), written to a
    temporary sibling and renamed to ``out_path``; :func:`open_dataset` opens the result directly.
    ``out_path`` may be a URL (``s3://bucket/x.zarr``, with fsspec's ``storage_options``): the
    Zarr is written in place there, its metadata last (:func:`pipeline.storage.stores.zarr_destination`).

    Returns
    -------
    (n_samples, n_features) of ``X``.

    Raises
    ------
    DataError, in one line naming the file, the Parquet row group or the text line, and the
    column: an unknown extension or column (listing the columns), a non-numeric column or value,
    a missing weight, a ragged text line, an empty file, or a .npy array not numeric and 2-D.
    OutputExistsError if ``out_path`` exists and ``overwrite`` is False.
    """
    src = location_of(in_path, storage_options)
    final = location_of(out_path, storage_options)
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
        if isinstance(src, StorePath):
            raise DataError(f"{src}: a .npy file is memory-mapped, so it must be a local file; copy it here first")
        if columns is not None or weights is not None:
            raise DataError(f"{src}: columns and weights can be chosen in Parquet and text files only; "
                            f"slice a .npy array with NumPy first (x[:, [0, 2]])")
        writer, shape = _npy_writer(src, chunk_rows, dtype)
    elif suffix in (".parquet", ".csv", ".tsv", ".txt"):
        out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float64)
        if out_dtype.kind != "f":
            raise ValueError(f"convert: dtype must be a floating-point dtype for {suffix} input "
                             f"(missing values are NaN), got {out_dtype}")
        source = (_parquet_source if suffix == ".parquet" else _text_source)(src, columns, weights)
        writer, shape = _table_writer(src, source, chunk_rows, out_dtype, weights is not None)
    else:
        raise DataError(
            f"{src}: cannot convert files of type '{suffix or '(none)'}'; accepted are .npy "
            f"(NumPy array), .parquet and .csv/.tsv/.txt (delimited text)"
        )
    write_dir_atomically(final, writer, overwrite=overwrite)
    return shape()


def _npy_writer(src: Path, chunk_rows: int, dtype: str | None):
    try:
        arr = np.load(src, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle
        raise DataError(f"{src}: cannot read as a numeric .npy array: {exc}") from exc
    check_shape_dtype(arr.shape, arr.dtype, str(src))
    out_dtype = np.dtype(dtype) if dtype is not None else arr.dtype

    def write(tmp) -> None:
        with zarr_destination(tmp) as store:
            z = zarr.create_array(store, shape=arr.shape, dtype=out_dtype, zarr_format=3,
                                  chunks=(min(chunk_rows, arr.shape[0]), arr.shape[1]))
            for start in range(0, arr.shape[0], chunk_rows):
                stop = min(start + chunk_rows, arr.shape[0])
                z[start:stop] = np.asarray(arr[start:stop], dtype=out_dtype)

    return write, lambda: tuple(arr.shape)


# ---------------------------------------------------------------------------- writing


def _table_writer(src: Path, source: _Source, chunk_rows: int, dtype: np.dtype, weighted: bool):
    """(write(tmp), shape()) for :func:`write_dir_atomically`: ``source``'s batches as the array
    ``tmp``, or as the arrays ``X`` and ``w`` of the group ``tmp`` when ``weighted``."""
    shape = [0, source.n_features]

    def write(tmp) -> None:
        attributes = {"columns": source.names} if source.names is not None else None
        spec = dict(shape=(0, source.n_features), dtype=dtype, chunks=(chunk_rows, source.n_features),
                    attributes=attributes)
        with zarr_destination(tmp) as store:
            if weighted:
                group = zarr.open_group(store, mode="w", zarr_format=3)
                X = group.create_array("X", **spec)
                w = group.create_array("w", shape=(0,), dtype=np.float64, chunks=(chunk_rows,))
            else:
                X, w = zarr.create_array(store, zarr_format=3, **spec), None
            out = _ChunkWriter(X, w, chunk_rows)
            for x_rows, w_rows in source.batches():
                out.add(x_rows, w_rows)
            out.close()
            if X.shape[0] == 0:
                only = "" if source.header_line is None else f" (only its header, line {source.header_line})"
                raise DataError(f"{src}: the file has no data rows{only}")
        shape[0] = X.shape[0]

    return write, lambda: tuple(shape)


class _ChunkWriter:
    """Appends row blocks to the Zarr array ``X`` (and their weights to ``w``) in whole chunks of
    ``chunk_rows`` rows: a block that ends inside a chunk waits for the next block, so every
    stored chunk is written once, and at most one block plus one chunk is held."""

    def __init__(self, X: zarr.Array, w: zarr.Array | None, chunk_rows: int):
        self.X, self.w, self.chunk_rows = X, w, chunk_rows
        self.pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.n_pending = 0

    def add(self, x: np.ndarray, w: np.ndarray | None) -> None:
        self.pending.append((x, w))
        self.n_pending += len(x)
        if self.n_pending >= self.chunk_rows:
            self._flush(self.n_pending - self.n_pending % self.chunk_rows)

    def close(self) -> None:
        if self.n_pending:
            self._flush(self.n_pending)

    def _flush(self, n: int) -> None:
        """Write the first ``n`` pending rows (rows X.shape[0] .. + n), keep the others."""
        x = np.concatenate([p[0] for p in self.pending])
        self.X.append(x[:n].astype(self.X.dtype, copy=False), axis=0)
        rest_w = None
        if self.w is not None:
            w = np.concatenate([p[1] for p in self.pending])
            self.w.append(w[:n], axis=0)
            rest_w = w[n:]
        self.pending = [(x[n:], rest_w)] if n < len(x) else []
        self.n_pending = len(x) - n


# ---------------------------------------------------------------------------- columns


def _select(src: Path, names: list[str], columns, weights, header: bool) -> tuple[list[int], int | None]:
    """Column selection: (the indices of X's columns in ``names``, in order; the index of the
    weights column or None).  A column is given by name, else by 0-based number."""

    def index(c, option: str) -> int:
        if str(c) in names:
            return names.index(str(c))
        if str(c).isdigit() and int(c) < len(names):
            return int(c)
        listing = ", ".join(names) if header else f"0-{len(names) - 1} (no header: numbered from 0)"
        raise DataError(f"{src}: no column {c!r} ({option}); the columns are: {listing}")

    w = None if weights is None else index(weights, "weights")
    x = [i for i in range(len(names)) if i != w] if columns is None else [index(c, "columns") for c in columns]
    if len(set(x)) < len(x) or w in x:
        raise DataError(f"{src}: a column is chosen twice: columns {list(columns)}, weights {weights!r}")
    if not x:
        raise DataError(f"{src}: no columns left for X (the file's only column is the weights)")
    return x, w


def _column(names: list[str], i: int, header: bool) -> str:
    """A column as messages name it."""
    return f"column {names[i]!r}" if header else f"column {i} (0-based)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _rows(values: list[pa.Array], n_x: int, weighted: bool,
          missing_weight: Callable[[int], DataError]) -> tuple[np.ndarray, np.ndarray | None]:
    """(X, the weights or None) of a batch's float64 columns, X's first and the weights last; a
    null weight raises ``missing_weight(its row in the batch)``."""
    if weighted and values[-1].null_count:
        raise missing_weight(pc.index(pc.is_null(values[-1]), True).as_py())
    arrays = [v.to_numpy(zero_copy_only=False) for v in values]
    return np.column_stack(arrays[:n_x]), (arrays[-1] if weighted else None)


# ---------------------------------------------------------------------------- Parquet


def _parquet_source(src: Path, columns, weights) -> _Source:
    """The selected columns of a Parquet file, checked numeric; nulls become NaN in X, a null
    weight is an error naming the row group and row."""
    try:
        with src.open("rb") as f, pq.ParquetFile(f) as pf:
            schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{src}: cannot read as Parquet: {_one_line(exc)}") from None
    x, w = _select(src, schema.names, columns, weights, header=True)
    chosen = x + ([] if w is None else [w])
    numeric = [f.name for f in schema if _is_numeric(f.type)]
    for i in chosen:
        if not _is_numeric(schema.field(i).type):
            raise DataError(
                f"{src}, column {schema.names[i]!r} (every row group): type {schema.field(i).type} "
                f"is not numeric; the numeric columns are: {', '.join(numeric) or 'none'}"
            )
    wanted = [schema.names[i] for i in chosen]
    batch_rows = max(1, BATCH_BYTES // (8 * len(wanted)))

    def batches() -> Batches:
        row = 0
        with src.open("rb") as f, pq.ParquetFile(f) as pf:
            for group in range(pf.num_row_groups):
                reader = pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=wanted)
                while (batch := _next_batch(reader, f"{src}, row group {group}")) is not None:
                    values = [pc.cast(batch.column(name), pa.float64()) for name in wanted]
                    yield _rows(values, len(x), w is not None, lambda i: DataError(
                        f"{src}, row group {group}, column {wanted[-1]!r}: null weight in row {row + i} "
                        f"(0-based); every row needs a weight"))
                    row += batch.num_rows

    return _Source([schema.names[i] for i in x], len(x), batches)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _next_batch(reader: Iterator[pa.RecordBatch], where: str) -> pa.RecordBatch | None:
    """The reader's next batch, None at the end; a read failure (a corrupted page) as a DataError."""
    try:
        return next(reader, None)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{where}: cannot read: {_one_line(exc)}") from None


# ---------------------------------------------------------------------------- text


def _text_source(src: Path, columns, weights) -> _Source:
    """The selected columns of a delimited text file (see :class:`_TextFile`)."""
    text = _TextFile(src)
    x, w = _select(src, text.names, columns, weights, text.header)
    if not text.header:
        return _Source(None, len(x), lambda: text.batches(x, w))
    return _Source([text.names[i] for i in x], len(x), lambda: text.batches(x, w), text.first_line)


class _TextFile:
    """A delimited text file as pyarrow's streaming CSV reader sees it: its first non-blank line
    is read here (the delimiter, the header, the number of columns), and pyarrow reads every line
    after the header (or from the first line if there is none) as strings, which are parsed
    here so that an error can name the value's line and column."""

    def __init__(self, src: Path):
        self.src = src
        first = _first_content_line(src)
        if first is None:
            raise DataError(f"{src}: the file has no data rows (it is empty)")
        self.first_line, begin, end, line = first
        self.delimiter = _detect_delimiter(line)
        fields = next(csv.reader([line], delimiter=self.delimiter or " ", skipinitialspace=True))
        fields = [f.strip().strip('"').strip("'") for f in fields]
        self.header = not all(_is_number(f) or f in _NULL_TEXTS for f in fields)
        self.names = fields if self.header else [str(i) for i in range(len(fields))]
        # pyarrow reads from byte `start`; its row r is the r-th non-blank line after `base`
        self.start, self.base = (end, self.first_line) if self.header else (begin, self.first_line - 1)

    def batches(self, x: list[int], w: int | None) -> Batches:
        """X's columns ``x`` and the weights column ``w`` of each block of rows."""
        if self.start == _size(self.src):  # nothing after the header: pyarrow refuses an empty stream
            return
        invalid: list[pa_csv.InvalidRow] = []
        chosen = [str(i) for i in x + ([] if w is None else [w])]
        read = pa_csv.ReadOptions(column_names=[str(i) for i in range(len(self.names))],
                                  block_size=BATCH_BYTES, use_threads=False)  # serial: row numbers known
        parse = pa_csv.ParseOptions(delimiter=self.delimiter or "\t",
                                    invalid_row_handler=lambda row: invalid.append(row) or "error")
        convert_options = pa_csv.ConvertOptions(include_columns=chosen, column_types={c: pa.string() for c in chosen})
        with self.src.open("rb") as f:
            f.seek(self.start)
            stream = f if self.delimiter else _SpacesToTabs(f)
            try:
                reader = pa_csv.open_csv(stream, read_options=read, parse_options=parse,
                                         convert_options=convert_options)
                rows = 0  # rows read before the batch
                for batch in reader:
                    values = [self._floats(batch.column(c), int(c), rows) for c in chosen]
                    yield _rows(values, len(x), w is not None, lambda i: self._missing_weight(rows + i + 1, w))
                    rows += batch.num_rows
            except pa.ArrowInvalid as exc:
                if invalid:
                    raise self._ragged(invalid[0]) from None
                raise DataError(f"{self.src}: cannot read as delimited text: {_one_line(exc)}") from None

    def _floats(self, strings: pa.Array, i: int, rows: int) -> pa.Array:
        """The strings of column ``i`` (rows ``rows``.. of the file) as float64; blank fields and
        null markers (surrounding spaces allowed) are null."""
        trimmed = pc.utf8_trim_whitespace(strings)
        trimmed = pc.if_else(pc.is_in(trimmed, value_set=pa.array(_NULL_TEXTS)), None, trimmed)
        try:
            return pc.cast(trimmed, pa.float64())
        except pa.ArrowInvalid:
            bad = _first_unparseable(trimmed)
            line, text = self._line(rows + bad + 1)
            raise DataError(
                f"{self.src}, line {line}: cannot parse {text[:80]!r} as numbers: "
                f"{_column(self.names, i, self.header)} holds {trimmed[bad].as_py()!r}"
            ) from None

    def _missing_weight(self, row: int, w: int) -> DataError:
        line, text = self._line(row)
        return DataError(
            f"{self.src}, line {line}, {_column(self.names, w, self.header)}: missing weight (an empty "
            f"field or a null marker such as NA); every row needs a weight: {text[:80]!r}"
        )

    def _ragged(self, row: pa_csv.InvalidRow) -> DataError:
        where = f"the header, line {self.first_line}" if self.header else f"line {self.first_line}, the first row"
        line, text = self._line(row.number) if row.number is not None else ("?", row.text)
        return DataError(
            f"{self.src}, line {line}: ragged row: {row.actual_columns} value(s) where "
            f"{row.expected_columns} were expected (as in {where}): {text[:80]!r}"
        )

    def _line(self, row: int) -> tuple[int, str]:
        """(line number, text) of pyarrow's 1-based row ``row``: the ``row``-th line after the
        header that pyarrow does not skip (empty lines; lines of spaces in whitespace-separated text)."""
        with self.src.open("rb") as f:
            f.seek(self.start)
            kept = ((n, raw) for n, raw in enumerate(f, start=self.base + 1)
                    if (raw.strip() if self.delimiter is None else raw.rstrip(b"\r\n")))
            n, raw = next(itertools.islice(kept, row - 1, None))
        return n, raw.decode("utf-8", "replace").strip()


def _first_content_line(src: Path) -> tuple[int, int, int, str] | None:
    """(line number, byte offsets of its start and end, stripped text) of the first line that is
    not blank, or None."""
    offset = 0
    with src.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                return lineno, offset, offset + len(raw), raw.decode("utf-8", "replace").strip().lstrip("\ufeff")
            offset += len(raw)
    return None


def _size(src) -> int:
    """Bytes in a local file or a store's object."""
    return src.size() if isinstance(src, StorePath) else src.stat().st_size


def _detect_delimiter(line: str) -> str | None:
    for d in (",", "\t", ";"):
        if d in line:
            return d
    return None


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _first_unparseable(strings: pa.Array) -> int:
    """Index of the first value of ``strings`` that does not cast to float64 (bisection by
    casting slices; ``strings`` holds one)."""
    lo, hi = 0, len(strings)  # the first bad value is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(strings.slice(lo, mid - lo), pa.float64())
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


class _SpacesToTabs(io.RawIOBase):
    """A binary stream of whitespace-separated lines as tab-separated ones (pyarrow splits on
    one character): a line of spaces becomes empty, which pyarrow skips."""

    def __init__(self, f):
        self.f, self.pending = f, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.pending:
            lines = self.f.readlines(max(len(buffer), 1 << 16))
            self.pending = memoryview(b"".join(b"\t".join(line.split()) + b"\n" for line in lines))
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n
