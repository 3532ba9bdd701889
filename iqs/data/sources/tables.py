"""Reading annotation files exactly as distributed, reporting bad rows by file and line.

Rows are read with the :mod:`csv` module (C-implemented) rather than ``pandas.read_csv`` because
a bad row must be reported with its line number in the file, and pandas loses those once it
skips a line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping, Sequence
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
    ranges: Mapping[str, tuple[float, float]] | None = None,
    unique: str | None = None,
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
        ranges: the allowed ``(low, high)`` of numeric columns; rows outside are left out and
            reported (a lost decimal point must not become a top score).
        unique: a column naming each row's image; a row repeating an earlier one's value is
            left out and reported.

    Returns:
        The needed columns (numbers as float) and :data:`LINE`, the line number of each row.

    Raises:
        SourceError: the file is missing or holds no rows, or lacks a needed column (with a
            hint when another delimiter would have found it).
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
        names = [c.strip() for c in first[2]]
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
    lines, rows, seen = [], [], False
    for line, end, fields in records:
        seen = True
        if len(fields) != width:
            problems.append(
                f"{path}:{line}: expected {width} fields, found {len(fields)}"
                + (f" (a quoted field runs from line {line} to {end})" if end > line else "")
            )
            continue
        lines.append(line)
        rows.append([fields[i] for i in keep])
        if len(rows) == _CHUNK:
            _add_chunk(parts, rows, lines, columns, numeric, path, problems, ranges)
            lines, rows = [], []
    if not seen:
        raise SourceError(f"{path}: no rows" + (" below the header" if header else ", empty file"))
    if rows or not parts[LINE]:
        _add_chunk(parts, rows, lines, columns, numeric, path, problems, ranges)
    # Each column's chunks are freed as soon as it is joined: all of them at once beside the
    # joined table would double the peak.
    df = pd.DataFrame({c: np.concatenate(parts.pop(c)) for c in list(parts)})
    return drop_repeats(df, unique, path, problems) if unique else df


_CHUNK = 8_192


def _add_chunk(
    parts: dict[str, list],
    rows: list[list[str]],
    lines: list[int],
    columns: Sequence[str],
    numeric: Sequence[str],
    path: Path,
    problems: list[str],
    ranges: Mapping[str, tuple[float, float]] | None,
) -> None:
    """Convert one chunk of rows (numbers checked and reported) and add its columns to parts."""
    df = pd.DataFrame(rows, columns=list(columns), dtype=object)
    df[LINE] = np.asarray(lines, dtype=np.int64)
    df = to_numbers(df, numeric, path, problems, ranges)
    for c in parts:  # a copy: a view would keep the chunk's whole block of strings alive
        parts[c].append(df[c].to_numpy(copy=True))


def _records(path: Path, delimiter: str | None) -> Iterator[tuple[int, int, list[str]]]:
    """The non-empty rows of ``path`` with the lines they start and end on, one at a time."""
    # utf-8-sig drops the byte-order mark some exports (SPAQ, EVA) start with.
    with open(path, encoding="utf-8-sig", newline="") as f:
        end = 0
        try:
            if delimiter is None:
                for end, line in enumerate(f, start=1):
                    fields = line.split()
                    if fields:
                        yield end, end, fields
                return
            reader = csv.reader(f, delimiter=delimiter)
            for row in reader:
                start, end = end + 1, reader.line_num
                if row:
                    yield start, end, row
        except UnicodeDecodeError:
            raise SourceError(_not_utf8(path)) from None
        except csv.Error as e:  # e.g. a field over the csv module's size limit (an unclosed quote)
            raise SourceError(
                f"{path}:{end + 1}: {e}; is a quote opened on this line never closed?"
            ) from None


def _not_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 is: the decoder's own offset counts from the block
    it was decoding, not from the start of the file."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):  # a UTF-8 sequence never holds b"\n"
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return (
                    f"{path}:{number}: not UTF-8 text (byte {e.start + 1} of the line: "
                    f"{e.reason}); save the file as UTF-8"
                )
    return f"{path}: not UTF-8 text; save the file as UTF-8"


def drop_repeats(
    df: pd.DataFrame, column: str, path: str | os.PathLike, problems: list[str]
) -> pd.DataFrame:
    """Leave out and report rows whose ``column`` repeats an earlier row's (one image, two
    rows: which score is meant is anyone's guess, and the first is kept)."""
    again = df[column].duplicated().to_numpy()
    if not again.any():
        return df
    first = df.loc[~again].set_index(column)[LINE]
    for line, value in df.loc[again, [LINE, column]].itertuples(index=False):
        problems.append(
            f"{path}:{line}: {column} {value!r} already on line {first[value]}, left out"
        )
    return df.loc[~again].reset_index(drop=True)


def to_numbers(
    df: pd.DataFrame,
    numeric: Sequence[str],
    path: str | os.PathLike,
    problems: list[str],
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> pd.DataFrame:
    """Convert ``numeric`` columns to float; drop and report rows where one is missing, not a
    finite number, or outside its ``ranges`` entry."""
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
        if ranges and col in ranges:
            lo, hi = ranges[col]
            outside = ~nan & ((values < lo) | (values > hi)).to_numpy()
            for line, value in zip(df.loc[outside, LINE], values[outside]):
                problems.append(f"{path}:{line}: {col} {value:g} outside {lo:g}..{hi:g}, left out")
            bad |= outside
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
    except UnicodeDecodeError:
        raise SourceError(_not_utf8(path)) from None
