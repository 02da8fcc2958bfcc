"""Conversion of .npy and delimited text files into Zarr arrays, streamed chunk by chunk."""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import zarr

from pipeline.data.zarr_io import check_shape_dtype
from pipeline.exceptions import DataError, OutputExistsError
from pipeline.options import STORE_CHUNK_ROWS
from pipeline.storage.atomic import location, write_dir_atomically


def convert(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    chunk_rows: int = STORE_CHUNK_ROWS,
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
    src = Path(location(in_path))
    final = Path(location(out_path))
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
    write_dir_atomically(final, writer, overwrite=overwrite)
    return shape()


def _npy_writer(src: Path, chunk_rows: int, dtype: str | None):
    try:
        arr = np.load(src, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle
        raise DataError(f"{src}: cannot read as a numeric .npy array: {exc}") from exc
    check_shape_dtype(arr.shape, arr.dtype, str(src))
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
    check_shape_dtype((1, 1), out_dtype, str(src))
    shape = [0, 0]

    def write(tmp: Path) -> None:
        lines = _text_lines(src)
        columns, values, delimiter = _first_data_row(src, lines)
        n_features = len(values)
        z = zarr.create_array(tmp, shape=(0, n_features), dtype=out_dtype, zarr_format=3,
                              chunks=(chunk_rows, n_features),
                              attributes={"columns": columns} if columns is not None else None)
        rows = itertools.chain([values], _data_rows(src, lines, delimiter, n_features))  # streamed
        _append_in_batches(z, rows, chunk_rows, out_dtype)
        shape[:] = z.shape

    return write, lambda: tuple(shape)


def _first_data_row(src: Path, lines: Iterator[tuple[int, str]]) -> tuple[list[str] | None, list[float], str | None]:
    """Header detection: (column names or None, the first data row's values, the delimiter).
    The first line is a header when it does not parse as numbers."""
    first = next(lines, None)
    if first is None:
        raise DataError(f"{src}: the file has no data rows")
    lineno, line = first
    delimiter = _detect_delimiter(line)
    columns = None
    values = _parse_row(line, delimiter)
    if values is None:  # a header
        header_line = lineno
        columns = _header_columns(line, delimiter)
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
    if columns is not None and len(columns) != len(values):
        raise DataError(
            f"{src}, line {lineno}: {len(values)} values but the header has "
            f"{len(columns)} columns"
        )
    return columns, values, delimiter


def _header_columns(line: str, delimiter: str | None) -> list[str]:
    """Column names of a header line, unquoted."""
    fields = next(csv.reader([line], delimiter=delimiter or " ", skipinitialspace=True))
    return [c.strip().strip('"').strip("'") for c in fields]


def _data_rows(src: Path, lines: Iterator[tuple[int, str]], delimiter: str | None, n_features: int) -> Iterator[list[float]]:
    """Row parsing: the values of each remaining line, which must be ``n_features`` numbers."""
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
        yield row


def _append_in_batches(z, rows: Iterable[list[float]], chunk_rows: int, dtype: np.dtype) -> None:
    """Append ``rows`` to the Zarr array ``z``, ``chunk_rows`` at a time."""
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == chunk_rows:
            z.append(np.asarray(batch, dtype=dtype), axis=0)
            batch.clear()
    if batch:
        z.append(np.asarray(batch, dtype=dtype), axis=0)
