"""Reading annotation files exactly as distributed, reporting bad rows by file and line.

Rows are read with the :mod:`csv` module (C-implemented) rather than ``pandas.read_csv`` because
a bad row must be reported with its line number in the file, and pandas loses those once it
skips a line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
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
        if not records:
            raise SourceError(f"{path}: empty file, expected a header line")
        names = [c.strip() for c in records[0][1]]
        records = records[1:]
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

    width = len(names)
    good_lines, good_rows = [], []
    for line, fields in records:
        if len(fields) != width:
            problems.append(f"{path}:{line}: expected {width} fields, found {len(fields)}")
            continue
        good_lines.append(line)
        good_rows.append(fields)
    df = pd.DataFrame(good_rows, columns=names, dtype=object)[list(columns)]
    df[LINE] = np.asarray(good_lines, dtype=np.int64)
    return to_numbers(df, numeric, path, problems)


def _records(path: Path, delimiter: str | None) -> list[tuple[int, list[str]]]:
    """The non-empty rows of ``path`` with their line numbers."""
    # utf-8-sig drops the byte-order mark some exports (SPAQ, EVA) start with.
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            if delimiter is None:
                split = [line.split() for line in f.read().splitlines()]
                return [(i, fields) for i, fields in enumerate(split, start=1) if fields]
            reader = csv.reader(f, delimiter=delimiter)
            return [(reader.line_num, row) for row in reader if row]
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


def join_counts(counts: pd.DataFrame) -> pd.Series:
    """Vote counts per column as the manifest's space-separated histogram text."""
    values = counts.to_numpy(np.float64)
    # Whole numbers print as integers, unless too big for int64 (a damaged file).
    if np.array_equal(values, np.round(values)) and np.abs(values).max(initial=0) < 2**62:
        text = [c.astype(np.int64).astype(str) for _, c in counts.items()]
    else:
        text = [c.map("{:g}".format) for _, c in counts.items()]
    out = text[0]
    for t in text[1:]:
        out = out + " " + t
    return out.reset_index(drop=True)


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
