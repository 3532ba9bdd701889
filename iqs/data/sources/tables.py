"""Reading annotation files exactly as distributed, reporting bad rows by file and line.

Rows are read with the :mod:`csv` module (C-implemented) rather than ``pandas.read_csv`` because
a bad row must be reported with its line number in the file, and pandas loses those once it
skips a line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from iqs.data.sources.base import SourceError

LINE = "_line"  # column holding each row's line number in its file (1-based)
_DELIMITERS = [",", ";", "\t", "=", "|", " "]


def read_table(
    path: str | os.PathLike,
    columns: Sequence[str] | None,
    numeric: Sequence[str] = (),
    delimiter: str | None = ",",
    header: bool = True,
    problems: list[str] | None = None,
    usecols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read a delimited text file into strings, checking the columns this source needs.

    Args:
        path: the annotation file.
        columns: the columns needed (named in the header, or the positional names when
            ``header`` is false; then every row must have exactly that many fields);
            ``None``: every column of the header.
        numeric: columns converted to numbers; rows where one is missing or not a number are
            left out and reported.
        delimiter: field separator; ``None`` splits on runs of whitespace.
        problems: bad rows are appended here as ``"<file>:<line>: <what>"``.
        usecols: the columns returned (default: ``columns``); the others are only checked.

    Returns:
        The needed columns (numbers as float) and :data:`LINE`, the line number of each row.

    Raises:
        SourceError: the file is missing, or lacks a needed column (with a hint when another
            delimiter would have found it).
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"annotation file not found: {path}")
    problems = problems if problems is not None else []
    records = _records(path, delimiter)
    if header:
        first = next(records, None)
        if first is None:
            raise SourceError(f"{path}: empty file, expected a header line")
        names = [c.strip() for c in first[1]]
        # Every named column; unnamed ones (trailing delimiters of a spreadsheet export) are not.
        columns = [c for c in dict.fromkeys(names) if c] if columns is None else columns
        missing = [c for c in columns if c not in names]
        if missing:
            raise SourceError(
                f"{path}: missing column(s) {missing}; the header has {names[:12]}"
                + _delimiter_hint(names, columns, delimiter)
            )
        twice = [c for c in columns if names.count(c) > 1]
        if twice:  # which of the two is meant is anyone's guess
            raise SourceError(f"{path}: column(s) {twice} appear more than once in the header")
    elif columns is None:
        raise ValueError("read_table: a file without a header needs its column names")
    else:
        names = list(columns)

    # In chunks, converting numbers as it goes: an AVA-sized table held as strings at once
    # would take several hundred MB at its peak.
    columns = list(columns if usecols is None else usecols)
    width, keep = len(names), [names.index(c) for c in columns]
    parts: dict[str, list] = {c: [] for c in [*columns, LINE]}
    lines, rows = [], []
    for line, fields in records:
        if len(fields) != width:
            problems.append(f"{path}:{line}: expected {width} fields, found {len(fields)}")
            continue
        lines.append(line)
        rows.append([fields[i] for i in keep])
        if len(rows) == _CHUNK:
            _add_chunk(parts, rows, lines, columns, numeric, path, problems)
            lines, rows = [], []
    if rows or not parts[LINE]:
        _add_chunk(parts, rows, lines, columns, numeric, path, problems)
    # Each column's chunks are freed as soon as it is joined: all of them at once beside the
    # joined table would double the peak.
    return pd.DataFrame({c: np.concatenate(parts.pop(c)) for c in list(parts)})


_CHUNK = 8_192


def _add_chunk(
    parts: dict[str, list],
    rows: list[list[str]],
    lines: list[int],
    columns: Sequence[str],
    numeric: Sequence[str],
    path: Path,
    problems: list[str],
) -> None:
    """Convert one chunk of rows (numbers checked and reported) and add its columns to parts."""
    df = pd.DataFrame(rows, columns=list(columns), dtype=object)
    df[LINE] = np.asarray(lines, dtype=np.int64)
    df = to_numbers(df, numeric, path, problems)
    for c in parts:  # a copy: a view would keep the chunk's whole block of strings alive
        parts[c].append(df[c].to_numpy(copy=True))


def _records(path: Path, delimiter: str | None) -> Iterator[tuple[int, list[str]]]:
    """The non-empty rows of ``path`` with their line numbers, one at a time."""
    # utf-8-sig drops the byte-order mark some exports (SPAQ, EVA) start with.
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            if delimiter is None:
                for i, line in enumerate(f, start=1):
                    fields = line.split()
                    if fields:
                        yield i, fields
                return
            reader = csv.reader(f, delimiter=delimiter)
            for row in reader:
                if row:
                    yield reader.line_num, row
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: {_not_utf8(e)}") from None
        except csv.Error as e:  # e.g. a field over the csv module's size limit (an unclosed quote)
            raise SourceError(f"{path}:{reader.line_num}: {e}") from None


def _not_utf8(e: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8"


def to_numbers(
    df: pd.DataFrame, numeric: Sequence[str], path: str | os.PathLike, problems: list[str]
) -> pd.DataFrame:
    """Convert ``numeric`` columns to float; drop and report rows where one is missing or not a
    finite number (``inf``, or ``1e400``, would pass any range check after clipping)."""
    bad = np.zeros(len(df), dtype=bool)
    for col in numeric:
        values = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
        nan = ~np.isfinite(values.to_numpy())
        if nan.any():  # a second chance for numbers padded with spaces
            values[nan] = pd.to_numeric(df.loc[nan, col].astype(str).str.strip(), errors="coerce")
            nan = ~np.isfinite(values.to_numpy())
        for line, raw in zip(df.loc[nan, LINE], df.loc[nan, col]):
            what = "is missing" if str(raw).strip() == "" else f"is {str(raw)!r}, not a number"
            problems.append(f"{path}:{line}: {col} {what}")
        bad |= nan
        df[col] = values
    return df.loc[~bad].reset_index(drop=True)


def join_counts(counts: pd.DataFrame | np.ndarray) -> pd.Series:
    """Vote counts (a column per bin) as the manifest's space-separated histogram text."""
    values = np.asarray(counts, dtype=np.float64)
    # Row by row, a chunk at a time (checks and integer copies too): column-wise strings, one
    # big list or whole-table temporaries peak at several times the text's size.
    # Whole numbers print as integers, unless too big for int64 (a damaged file).
    whole = all(
        np.array_equal(c, np.round(c)) and np.abs(c).max(initial=0) < 2**62 for c in _chunks(values)
    )
    if whole:
        text = [" ".join(map(str, row)) for chunk in _chunks(values)
                for row in chunk.astype(np.int64).tolist()]  # fmt: skip
    else:
        text = [" ".join(f"{v:g}" for v in row) for chunk in _chunks(values)
                for row in chunk.tolist()]  # fmt: skip
    return pd.Series(text, dtype=object)


def _chunks(values: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _delimiter_hint(names: list[str], columns: Sequence[str], delimiter: str | None) -> str:
    joined = (delimiter or " ").join(names)
    for other in _DELIMITERS:
        if other != delimiter and all(c in joined.split(other) for c in columns):
            return f" (the file looks {other!r}-delimited, expected {delimiter!r})"
    return ""


def read_id_list(path: str | os.PathLike) -> list[str]:
    """One id per line (e.g. AVA's ``*.jpgl`` lists), blank lines ignored."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"id list not found: {path}")
    try:
        return [s for s in path.read_text(encoding="utf-8-sig").split() if s]
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: {_not_utf8(e)}") from None
