"""The sample table every source produces and the data module consumes.

One row per image: where it is, where it came from, which split it belongs to and what it is
worth. New sources only have to produce this table.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from iqs.data.labels import NUM_CLASSES
from iqs.utils import atomic_write

SPLITS: tuple[str, ...] = ("train", "val", "test")
# A source's mark for "not test, carve validation from these" (AVA's official protocol).
TRAINVAL = "trainval"

# Column -> meaning. ``group`` is the identity a split is made by: a photo family, a reference
# image, a source photograph; two rows with one group never sit in different splits.
COLUMNS: dict[str, str] = {
    "path": "absolute path of the image file",
    "source": "name of the source that produced the row",
    "image_id": "identity of the image, '<family>:<id>'",
    "group": "split unit: rows sharing it always share a split",
    "split": "train, val, test; empty or trainval when the data module assigns it",
    "score": "normalised quality score in [0, 1], higher is better",
    "label": "class index: 0 rejected, 1 pending, 2 accepted",
    "histogram": "optional vote histogram, space-separated counts (empty when none)",
}


class ManifestError(ValueError):
    """A manifest that breaks the contract above; the message names the column and rows."""


def validate(df: pd.DataFrame, where: str = "manifest") -> pd.DataFrame:
    """Check the contract and return the table with canonical dtypes and column order."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {missing}; expected {list(COLUMNS)}")
    df = df.copy(deep=False)  # copy-on-write: columns replaced below are new, the rest shared
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    bad = df.index[~df["score"].between(0.0, 1.0)]
    if len(bad):
        raise ManifestError(f"{where}: score outside [0, 1] or not a number in rows {_rows(bad)}")
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = df.index[~labels.isin(range(NUM_CLASSES))]
    if len(bad):
        raise ManifestError(f"{where}: label not in 0..{NUM_CLASSES - 1} in rows {_rows(bad)}")
    df["label"] = labels.astype(np.int64)
    df["split"] = df["split"].fillna("").astype(str)
    bad = df.index[~df["split"].isin((*SPLITS, "", TRAINVAL))]
    if len(bad):
        raise ManifestError(f"{where}: split not in {SPLITS} in rows {_rows(bad)}")
    # One image may come from two sources (AVA and EVA), but only once from each.
    dupes = df.index[df.duplicated(["source", "image_id"])]
    if len(dupes):
        ids = list(dict.fromkeys(df.loc[dupes, "image_id"]))[:5]
        raise ManifestError(
            f"{where}: duplicate image_id(s) {ids} within a source (rows {_rows(dupes)})"
        )
    df["histogram"] = df["histogram"].fillna("").astype(str)
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra].reset_index(drop=True)


def check_no_leak(df: pd.DataFrame) -> None:
    """Raise if one group or one image identity appears in more than one split."""
    for key in ("group", "image_id"):
        per_key = df.groupby(key)["split"].nunique()
        leaked = per_key.index[per_key > 1]
        if len(leaked):
            raise ManifestError(
                f"{len(leaked)} {key}(s) appear in more than one split, e.g. {list(leaked[:5])}"
            )


def save(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the manifest as CSV atomically: a crash never leaves a half-written file."""
    with atomic_write(path) as f:
        df.to_csv(f, index=False)
    return Path(path)


def load(path: str | os.PathLike) -> pd.DataFrame:
    # surrogateescape: paths that are not UTF-8 come back as the names they were written as
    df = pd.read_csv(path, keep_default_na=False, dtype={"split": str, "histogram": str},
                     encoding_errors="surrogateescape")  # fmt: skip
    return validate(df, where=str(path))


def _rows(index: pd.Index, most: int = 5) -> str:
    shown = ", ".join(str(i) for i in list(index[:most]))
    return f"{shown}{' ...' if len(index) > most else ''} ({len(index)} in all)"
